"""The errors the Raft server raises to its callers.

They belong to the library, not to the application: whoever embeds the server (the agent, the HTTP API)
maps them to its own answers, as Consul maps hashicorp/raft's ``ErrNotLeader`` and ``ErrLeadershipLost``
to "No cluster leader" and retries. ``registry.raft.node`` has its own ``NotLeaderError`` for the pure
core's refusals; the driver turns those into the one below.
"""

from __future__ import annotations


class NotLeaderError(Exception):
    """No leader could take the request in time, or leadership moved while it was in flight."""

    def __init__(self, leader: str | None) -> None:
        super().__init__("No cluster leader" if not leader else f"not the leader; leader is {leader}")
        self.leader = leader


class RPCError(Exception):
    """A call to another server failed: the peer answered with an error, or the connection failed."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
