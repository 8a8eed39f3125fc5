"""The seam between the API and replication.

Every write goes ``propose(command) -> log -> FSM -> store`` through an object with this shape, as every
write in Consul goes through ``raftApply``. Three implement it: the single-node log (``LocalLog``) that
``-dev`` runs, the Raft server (``registry.raft.driver.RaftServer``) of a server agent, and a client
agent's view of the servers (``registry.agent.remote.RemoteServers``), so the API, the agent and the
store never ask which one they talk to.

The Raft library's errors are the application's too: ``NotLeaderError`` answers "No cluster leader" and
``RPCError`` carries a peer's refusal with its status.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from registry.fsm import FSM, CommandError, encode_command
from registry.raft.errors import NotLeaderError, RPCError
from registry.raft.observe import NO_OBSERVER, Observer
from registry.raft.rpc import RPCRouter

__all__ = ["CommandResults", "Consensus", "LocalLog", "NotLeaderError", "RPCError"]


class Consensus(Protocol):
    fsm: FSM

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def propose(self, cmd: dict[str, Any]) -> Any:
        """Append a command, wait until it is applied, and answer the FSM's result (a ``CommandError``
        when the FSM refused it)."""

    async def barrier_read(self, consistency: str) -> None:
        """Wait until a read in this consistency mode ("default", "consistent", "stale") may be served."""

    def fast_read_ok(self) -> bool:
        """True when a default-mode read may be answered from local state right now, with no waiting."""

    def leader_address(self) -> str: ...

    def peers(self) -> list[str]: ...

    def known_leader(self) -> bool: ...

    def last_contact_ms(self) -> int: ...

    def is_leader(self) -> bool: ...

    def on_leader_change(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(leading)`` whenever this server gains or loses leadership."""

    async def call_leader(self, method: str, args: Any, timeout: float) -> Any:
        """Call an RPC method on the leader (Consul's RPC forwarding); raises ``RPCError``, or
        ``NotLeaderError`` when no leader is known in time."""

    # Operator calls (/v1/operator/raft/*).

    def configuration(self) -> list[dict[str, Any]]:
        """The servers of the Raft configuration, as /v1/operator/raft/configuration lists them."""

    async def remove_server(self, server_id: str = "", address: str = "") -> None:
        """Remove a server named by ID or by address (Consul's RemoveRaftPeerByID/ByAddress); raises
        ``RPCError`` with the status to answer."""

    async def transfer_leadership(self, target: str | None) -> str:
        """On the leader: hand leadership to ``target`` (None: the most caught-up voter); answers the new
        leader's ID or raises ``RPCError``."""

    # What this agent advertises, and what a client agent forwards HTTP reads to.

    def advertise_http(self, address: str) -> None:
        """This agent's HTTP address (host:port) once its listener is bound, for the others to forward to."""

    def http_target(self) -> str | None:
        """The HTTP address of a server to forward a request to (the leader's when known)."""

    async def refresh(self) -> bool:
        """Ask the servers who leads now; True when a leader is known."""

    def forget_leader(self) -> None:
        """The leader stopped answering: find it again before the next call."""


class CommandResults:
    """How the FSM's results travel between servers: a refusal (``CommandError``) becomes a map the
    follower that forwarded the proposal turns back into the same ``CommandError``, so the HTTP client
    sees the same status and message whichever server it asked. Every other result is a plain value."""

    def encode_command(self, cmd: Any) -> bytes:
        return encode_command(cmd)

    def encode_result(self, result: Any) -> Any:
        if isinstance(result, CommandError):
            return {"__error__": result.message, "status": result.status}
        return result

    def decode_result(self, wire: Any) -> Any:
        if isinstance(wire, dict) and "__error__" in wire:
            return CommandError(str(wire["__error__"]), int(wire.get("status", 500)))
        return wire


DEV_NO_PEERS = "this agent runs a single-node dev log; there are no peers to remove"
DEV_NO_TRANSFER = "Cannot transfer leadership: this agent runs a single-node dev log"


class LocalLog:
    """A single-server log: each proposal is encoded, appended and applied in order.

    It keeps the same discipline as the replicated log (entries are bytes, applied through the FSM in index
    order) but holds no entries after applying them: in ``-dev`` the store is the whole state. This server
    is always the leader; calls to the leader are served by the agent's own RPC router. It reports to the
    Raft observer what a single-server Raft would: one election won at start, and each entry appended,
    committed and applied at once (Consul's -dev agent runs a one-server Raft and reports the same).
    """

    def __init__(self, fsm: FSM, server_address: str, node_id: str, node_name: str, router: RPCRouter,
                 observer: Observer = NO_OBSERVER) -> None:  # fmt: skip
        self.fsm = fsm
        self._address = server_address
        self._node_id = node_id
        self._node_name = node_name
        self._router = router
        self._observer = observer
        self.last_index = fsm.store.index

    async def start(self) -> None:
        self._observer.role_changed("candidate")
        self._observer.role_changed("leader")

    async def stop(self) -> None:
        return None

    async def propose(self, cmd: dict[str, Any]) -> Any:
        data = encode_command(cmd)
        self.last_index += 1
        observer = self._observer
        observer.proposed(1)
        started = time.perf_counter()
        result = self.fsm.apply(self.last_index, data)
        took = time.perf_counter() - started
        observer.fsm_applied(took)
        observer.committed(took)
        return result

    async def barrier_read(self, consistency: str) -> None:
        return None

    def fast_read_ok(self) -> bool:
        return True  # a single-node log is always current

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

    def on_leader_change(self, callback: Callable[[bool], None]) -> None:
        return None  # always the leader: it never changes

    async def call_leader(self, method: str, args: Any, timeout: float) -> Any:
        return await self._router.dispatch(method, args)

    def configuration(self) -> list[dict[str, Any]]:
        return [{"ID": self._node_id, "Node": self._node_name, "Address": self._address, "Leader": True,
                 "Voter": True, "ProtocolVersion": "3", "LastIndex": self.fsm.store.index}]  # fmt: skip

    async def remove_server(self, server_id: str = "", address: str = "") -> None:
        raise RPCError(DEV_NO_PEERS, 400)

    async def transfer_leadership(self, target: str | None) -> str:
        raise RPCError(DEV_NO_TRANSFER, 500)

    def advertise_http(self, address: str) -> None:
        return None  # nobody forwards to a dev agent

    def http_target(self) -> str | None:
        return None

    async def refresh(self) -> bool:
        return True

    def forget_leader(self) -> None:
        return None
