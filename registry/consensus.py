"""The seam between the API and replication.

Every write goes ``propose(command) -> log -> FSM -> store`` through an object with this shape. The
single-node log (``LocalLog``) is what ``-dev`` runs; the Raft driver implements the same protocol for a
cluster, so the API and the store never know which one they talk to.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from registry.fsm import FSM, CommandError, encode_command


class RPCError(Exception):
    """A call to another server failed: the peer answered with an error, or the connection failed."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class NotLeaderError(Exception):
    def __init__(self, leader: str | None) -> None:
        super().__init__("No cluster leader" if not leader else f"not the leader; leader is {leader}")
        self.leader = leader


class Consensus(Protocol):
    fsm: FSM

    async def propose(self, cmd: dict[str, Any]) -> Any: ...

    async def barrier_read(self, consistency: str) -> None:
        """Wait until a read in this consistency mode ("default", "consistent", "stale") may be served."""

    def leader_address(self) -> str: ...

    def peers(self) -> list[str]: ...

    def known_leader(self) -> bool: ...

    def last_contact_ms(self) -> int: ...

    def is_leader(self) -> bool: ...


class LocalLog:
    """A single-server log: each proposal is encoded, appended and applied in order.

    It keeps the same discipline as the replicated log (entries are bytes, applied through the FSM in index
    order) but holds no entries after applying them: in ``-dev`` the store is the whole state.
    """

    def __init__(self, fsm: FSM, server_address: str) -> None:
        self.fsm = fsm
        self._address = server_address
        self.last_index = fsm.store.index
        self.started = time.monotonic()

    async def propose(self, cmd: dict[str, Any]) -> Any:
        data = encode_command(cmd)
        self.last_index += 1
        return self.fsm.apply(self.last_index, data)

    async def barrier_read(self, consistency: str) -> None:
        return None

    def leader_address(self) -> str:
        return self._address

    def peers(self) -> list[str]:
        return [self._address]

    def known_leader(self) -> bool:
        return True

    def last_contact_ms(self) -> int:
        return 0

    def is_leader(self) -> bool:
        return True

    def fast_read_ok(self) -> bool:
        return True  # a single-node log is always current


def raise_for(result: Any) -> Any:
    """Turn a CommandError result into an exception for callers that want one."""
    if isinstance(result, CommandError):
        from registry.api.errors import HTTPError

        raise HTTPError(result.status, result.message)
    return result
