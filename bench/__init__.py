"""Benchmarks: each module measures Proconsul against a peer in the same run (see docs/benchmarks.md)."""
