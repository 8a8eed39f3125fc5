"""Proconsul: a Consul-compatible service registry with a built-in mesh certificate authority."""

__version__ = "0.1.0"
CONSUL_VERSION = "1.20.0"  # the Consul version whose API we follow (agent self, members, version)
