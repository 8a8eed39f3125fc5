"""The ``proconsul`` command line: ``app`` registers the commands, ``common`` holds what they share, and each
command family has its own module (agent, members, catalog, kv, operator, snapshot, intention, connect, tls,
lock). They talk to the agent through ``registry.client``."""

from registry.cli.app import main

__all__ = ["main"]
