"""A server's forwarding of client agents' calls to the leader (Consul's ``srv.forward``).

Consul's client agents send every RPC to the server their router picked, never to the leader they looked
up; a server that does not lead forwards what only the leader answers (writes, and reads in the default
consistency mode) and relays the answer. So a fleet's calls spread over the servers, a client never needs
to know who leads, and a leader change costs the servers one leader look-up each instead of one from every
client agent in the datacenter.

Here the methods the leader answers are registered ``leader=True`` on the server port's ``RPCRouter``; on a
server that does not lead, the router hands their calls to ``LeaderForwarder.forward``, which sends them to
the leader inside one server-only ``forward`` call carrying the original caller's token and role, so the
leader checks the token exactly as if the client had called it. The follower waits for a leader up to
``FORWARD_HOLD`` (Consul's ``rpc_hold_timeout``, 7 s), retrying only what certainly reached no leader (no
leader known, the leader unreachable, "not the leader" from a server that just lost it); when none turns up
it answers ``No cluster leader`` with status 503, which tells the client agent that nothing was done and
that another server may be tried. One hop only: the leader does not forward a forwarded call again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from registry.raft.errors import NotLeaderError, RPCError
from registry.raft.rpc import Caller, RPCRouter

__all__ = ["FORWARD_HOLD", "IDEMPOTENT_METHODS", "NO_LEADER", "RPC_FORWARD", "LeaderForwarder", "may_resend",
           "reached_no_leader"]

log = structlog.get_logger("proconsul.forward")

RPC_FORWARD = "forward"
FORWARD_HOLD = 7.0  # Consul's performance.rpc_hold_timeout: how long a call waits for a leader
FORWARD_TIMEOUT = 30.0  # the leader's answer to a forwarded call, beyond any blocking wait the call asks for
MAX_WAIT = 600.0  # the longest blocking wait a call may ask for (Consul's max_query_time)
NO_LEADER = "No cluster leader"  # Consul's structs.ErrNoLeader


class LeaderCaller(Protocol):
    def is_leader(self) -> bool: ...

    async def call_leader(self, method: str, args: Any, timeout: float) -> Any: ...


# The leader methods that change nothing, or whose repetition changes nothing (a session's TTL restarted
# twice, a node's latest coordinate given twice): sent again when the connection broke mid-call. The others
# (a client agent's catalog write, a fired event, a signed certificate) are never sent twice: a call that
# may have been delivered reports its error instead, as Consul's client retries only reads on a broken
# connection.
IDEMPOTENT_METHODS = frozenset({
    "node_state", "session_renew", "ACL.ResolveToken", "ACL.Index", "Event.Follow", "Coordinate.Update",
    "ConnectCA.Roots", "ConnectCA.Authorize", "autopilot_health", "autopilot_state",
})  # fmt: skip


def reached_no_leader(exc: RPCError) -> bool:
    """Whether a failed call certainly reached no leader, so that it may be sent again: the server could
    not be dialled, or it answered 503 (not the leader, or no leader to forward to) before doing anything."""
    return exc.status == 503 or exc.message.startswith("cannot reach server")


def may_resend(method: str, exc: RPCError) -> bool:
    """Whether a call that failed with ``exc`` may be sent again (to this server or another)."""
    if reached_no_leader(exc):
        return True
    # A connection that broke or a call that timed out: delivered or not, nobody knows.
    broken = exc.message.startswith(("connection to ", "rpc client closed")) or " timed out after " in exc.message
    return broken and method in IDEMPOTENT_METHODS


def _wait_of(args: Any) -> float:
    """The blocking wait a call asks for (``Wait`` seconds: ACL.Index, Event.Follow, ConnectCA.Roots)."""
    wait = args.get("Wait") if isinstance(args, dict) else None
    if isinstance(wait, int | float) and not isinstance(wait, bool) and wait > 0:
        return min(float(wait), MAX_WAIT)
    return 0.0


class LeaderForwarder:
    """Installed on a server's RPC router: forwards ``leader`` methods from a follower, serves ``forward``
    on the leader."""

    def __init__(self, router: RPCRouter, consensus: LeaderCaller, *, hold: float = FORWARD_HOLD,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self._router = router
        self._consensus = consensus
        self._hold = hold
        self._clock = clock
        self.forwarded = 0  # calls this server forwarded (for tests)
        self.served = 0  # forwarded calls this server answered as the leader (for tests)

    def install(self) -> None:
        self._router.register(RPC_FORWARD, self._rpc_forward, server_only=True, with_caller=True)
        self._router.forward_with(lambda: not self._consensus.is_leader(), self.forward)

    async def forward(self, method: str, args: Any, caller: Caller) -> Any:
        """Have the leader answer ``method(args)`` for ``caller``; retried while no leader took it."""
        envelope = {"Method": method, "Args": args, "Token": caller.token, "Server": caller.server}
        timeout = FORWARD_TIMEOUT + _wait_of(args)
        deadline = self._clock() + self._hold
        self.forwarded += 1
        while True:
            try:
                return await self._consensus.call_leader(RPC_FORWARD, envelope, timeout)
            except NotLeaderError:
                pass  # no leader known within the consensus's own wait
            except RPCError as exc:
                if not may_resend(method, exc):
                    raise
            if self._clock() >= deadline:
                log.info("no leader to forward a call to", method=method)
                raise RPCError(NO_LEADER, 503)
            await asyncio.sleep(0.05)

    async def _rpc_forward(self, args: Any, caller: Caller) -> Any:
        if not self._consensus.is_leader():
            raise RPCError("not the leader", 503)  # no chains: the follower looks the leader up again
        if not isinstance(args, dict) or not isinstance(args.get("Method"), str) or args.get("Method") == RPC_FORWARD \
                or not isinstance(args.get("Token", ""), str):  # fmt: skip
            raise RPCError("forward needs {Method, Args, Token, Server}", 400)
        self.served += 1
        # The original caller's token, and its role only as far as this connection's own role vouches.
        original = Caller(token=args.get("Token") or "", server=caller.server and bool(args.get("Server")))
        return await self._router.dispatch(args["Method"], args.get("Args"), original, forward=False)
