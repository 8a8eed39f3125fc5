"""Proconsul: a Consul-compatible service registry with a built-in mesh certificate authority."""

__version__ = "0.1.0"
