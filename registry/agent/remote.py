"""A client agent's view of the servers: no Raft state; its calls go to one server, which forwards to the
leader what only the leader answers.

The client learns the servers from ``retry_join`` addresses (their server ports) with the same ``hello``
RPC servers use among themselves, and from the gossip pool (every server member's RPC address). Reads of
the catalog, health and KV are forwarded by the HTTP layer to a server's HTTP API (``http_target``), so
blocking queries block on the server that has the data.

Which server: as Consul's router does (``registry.agent.router.ServerPicker``), one server picked at
random, kept until the rebalance interval runs out or a call to it fails, so a fleet's requests spread
over all servers instead of converging on the leader. Only live servers are picked
(``registry.agent.router.ServerHealth``): one the gossip pool reports failed or left is dropped until the
pool sees it alive again (Consul's router removes it on Serf's failed and left events), and one a call
could not reach is skipped for a while; with none known alive, one is still tried. Any server answers any read: a default or
``consistent`` read is confirmed with the leader by the server that serves it, a ``stale`` one is
answered from its replica. The RPCs (writes of anti-entropy, session renewals, ACL resolution, events,
certificates) go to the picked server too, never to the leader looked up: a server that does not lead
forwards them (``registry.agent.forward``). So the client never needs to know who leads, and a leader change
costs nothing but the forwarding servers' own look-up: no storm of leader look-ups from the fleet. A call
that certainly reached no leader (the server could not be dialled, or answered 503: no leader within its
hold time) is sent to another server, with a growing jittered pause, for up to ``RPC_HOLD`` (Consul's
``rpc_hold_timeout``).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

import structlog

from registry.agent.forward import may_resend
from registry.agent.router import ServerHealth, ServerPicker
from registry.consensus import CommandResults, NotLeaderError, RPCError
from registry.fsm import FSM
from registry.metrics import NO_COUNTER, Metrics
from registry.raft.driver import LEADER_WAIT, PROPOSAL_TIMEOUT
from registry.raft.transport import RPCClient

log = structlog.get_logger("proconsul.client")

# A client agent's writes (its anti-entropy): a server vets each against the token the call carries
# before proposing it (``Agent._rpc_client_apply``); ``apply`` itself is served to servers only.
RPC_CLIENT_APPLY = "client_apply"
# The Raft layer's own operator methods, which followers do not forward: these are sent to the leader.
LEADER_DIRECT = frozenset({"remove_server", "transfer_leader"})
RPC_HOLD = 7.0  # Consul's performance.rpc_hold_timeout: how long a call keeps trying servers
RETRY_PAUSE = 0.1  # the first pause between two tries, doubled each time up to 1 s, with jitter


class RemoteServers:
    """The ``Consensus`` of a client agent: it is never the leader and holds no Raft configuration."""

    def __init__(self, join: list[str], fsm: FSM, ssl_ctx: Any = None, server_hostname: str | None = None,
                 token: Callable[[], str] = lambda: "", metrics: Metrics | None = None,
                 cluster_size: Callable[[], int] = lambda: 1, rng: random.Random | None = None) -> None:  # fmt: skip
        """``cluster_size``: the agents in the datacenter (the LAN pool's), which stretches the rebalance
        interval in a large cluster."""
        self.fsm = fsm
        # Consul's consul.client.rpc and .failed: every call this client agent makes to the servers.
        self._rpc = metrics.counter("client.rpc") if metrics is not None else NO_COUNTER
        self._rpc_failed = metrics.counter("client.rpc.failed") if metrics is not None else NO_COUNTER
        self.token = token  # carried by every call to the servers, which check it (Consul's agent token)  # an empty local store: a client agent keeps no catalog
        self._results = CommandResults()
        self.join = list(join)
        self._ssl = ssl_ctx
        self._hostname = server_hostname
        self.servers: dict[str, dict[str, str]] = {}  # id -> {address, http, name}
        self.leader: dict[str, str] | None = None
        self._clients: dict[str, RPCClient] = {}
        self._last_contact = 0.0
        self._cluster_size = cluster_size
        self._rng = rng or random.Random()
        self._picker = ServerPicker(self._rng)  # HTTP forwarding: a server that has told us its HTTP address
        self._rpc_picker = ServerPicker(self._rng)  # RPCs: any known server's RPC address
        self.learned: set[str] = set()  # server RPC addresses heard of in the gossip pool
        self.health = ServerHealth()  # which of them the pool reports gone, or calls could not reach
        self.resent = 0  # calls sent again to another server after one certainly did not take them

    def _client(self, address: str) -> RPCClient:
        c = self._clients.get(address)
        if c is None:
            c = self._clients[address] = RPCClient(address, self._ssl, self._hostname)
        return c

    async def start(self) -> None:
        await self.refresh()

    async def stop(self) -> None:
        for c in self._clients.values():
            await c.close()

    async def refresh(self) -> bool:
        """Ask known servers who leads; returns True when a leader is known."""
        addresses = list(dict.fromkeys([s["address"] for s in self.servers.values()] + self.join))
        random.shuffle(addresses)
        live = set(self.health.live(addresses, time.monotonic()))
        addresses.sort(key=lambda a: a not in live)  # the live ones first: a dead one costs a dial timeout
        for addr in addresses:
            try:
                reply = await self._client(addr).call("hello", None, timeout=2)
            except RPCError as exc:
                if _unreachable(exc):
                    self.health.call_failed(addr, time.monotonic())
                continue
            self.health.call_ok(addr)
            if not isinstance(reply, dict):
                continue
            for info in (reply.get("known") or {}).values():
                if isinstance(info, dict) and isinstance(info.get("id"), str):
                    self.servers[info["id"]] = {k: str(info.get(k, "")) for k in ("address", "http", "name")}
            leader = reply.get("leader")
            if isinstance(leader, dict) and leader.get("address"):
                self.leader = {k: str(leader.get(k, "")) for k in ("id", "address", "http", "name")}
                self._last_contact = time.monotonic()
                return True
        return False

    async def _leader(self) -> dict[str, str]:
        deadline = time.monotonic() + LEADER_WAIT
        while True:
            if self.leader is not None:
                return self.leader
            if await self.refresh():
                assert self.leader is not None
                return self.leader
            if time.monotonic() > deadline:
                if not self.servers and not self.join:
                    raise NotLeaderError(None)
                raise NotLeaderError(None)
            await asyncio.sleep(0.1)

    def learn(self, address: str) -> None:
        """A server's RPC address, heard of in the gossip pool (Consul's router learns servers from Serf)."""
        self.learned.add(address)
        self.health.alive(address)
        if address not in self.join:
            self.join.append(address)

    def server_gone(self, address: str) -> None:
        """The gossip pool reports the server at this RPC address failed or left: it is not picked again
        until the pool sees it alive (Consul's router RemoveServer)."""
        self.health.failed(address)

    def _rpc_servers(self) -> list[str]:
        """The servers' RPC addresses: those ``hello`` named and those the pool named; the configured join
        addresses only while neither has named any."""
        known = {s["address"] for s in self.servers.values() if s.get("address")} | self.learned
        return self.health.live(sorted(known) if known else list(dict.fromkeys(self.join)), time.monotonic())

    def rpc_target(self) -> str | None:
        """The server this agent's RPCs go to now (the router's pick)."""
        return self._rpc_picker.pick(self._rpc_servers(), time.monotonic(), self._cluster_size())

    async def call_leader(self, method: str, args: Any, timeout: float = PROPOSAL_TIMEOUT) -> Any:
        """Have the leader answer ``method(args)``: sent to the picked server, which forwards it (Consul's
        client RPC). A call that certainly reached no leader moves to another server and is tried again,
        up to ``RPC_HOLD``; a write whose connection broke mid-call is not sent twice (its error says so)."""
        if method in LEADER_DIRECT:
            return await self._call_the_leader(method, args, timeout)
        deadline = time.monotonic() + RPC_HOLD
        pause = RETRY_PAUSE
        while True:
            server = self.rpc_target()
            if server is None:
                await self.refresh()
                server = self.rpc_target()
                if server is None:
                    raise NotLeaderError(None)
            self._rpc.inc()
            try:
                result = await self._client(server).call(method, args, timeout=timeout, token=self.token())
            except RPCError as exc:
                self._rpc_failed.inc()
                if exc.status == 503 or _unreachable(exc):
                    # This server is down or has no leader: the next call goes to another one (Consul's
                    # NotifyFailedServer), whether or not this one is sent again; one that could not be
                    # reached is left out of the picks for a while.
                    if _unreachable(exc):
                        self.health.call_failed(server, time.monotonic())
                    self._rpc_picker.failed(server, self._rpc_servers(), time.monotonic(), self._cluster_size())
                if not may_resend(method, exc) or time.monotonic() + pause > deadline:
                    if exc.status == 503:
                        raise NotLeaderError(None) from exc  # nothing was done: Consul's "No cluster leader"
                    raise
                self.resent += 1
                log.debug("rpc failed, trying another server", method=method, server=server, error=exc.message)
                await asyncio.sleep(pause * (0.5 + self._rng.random()))
                pause = min(1.0, pause * 2)
                continue
            self._last_contact = time.monotonic()
            self.health.call_ok(server)
            return result

    async def _call_the_leader(self, method: str, args: Any, timeout: float) -> Any:
        """The Raft layer's operator methods, which only the leader serves and no follower forwards."""
        for _ in range(3):
            leader = await self._leader()
            self._rpc.inc()
            try:
                result = await self._client(leader["address"]).call(method, args, timeout=timeout,
                                                                    token=self.token())  # fmt: skip
                self._last_contact = time.monotonic()
                return result
            except RPCError as exc:
                self._rpc_failed.inc()
                if exc.status not in (503, 500) or "not the leader" not in exc.message and "cannot reach" not in exc.message \
                        and "lost" not in exc.message:  # fmt: skip
                    raise
                self.leader = None
        raise NotLeaderError(None)

    async def propose(self, cmd: dict[str, Any]) -> Any:
        return self._results.decode_result(await self.call_leader(RPC_CLIENT_APPLY, cmd))

    async def barrier_read(self, consistency: str) -> None:
        return None  # reads are forwarded to a server, which applies the barrier

    def _http_servers(self) -> list[str]:
        """The live servers' HTTP addresses (the leader's while no server has told its own)."""
        with_http = {s["address"]: s["http"] for s in self.servers.values() if s.get("http")}
        if not with_http and self.leader and self.leader.get("http"):
            with_http = {self.leader.get("address", ""): self.leader["http"]}
        return [with_http[a] for a in self.health.live(list(with_http), time.monotonic())]

    def http_target(self) -> str | None:
        """The server this agent's forwarded requests go to now (Consul's router: a random server,
        rebalanced now and then, changed when a request to it fails)."""
        return self._picker.pick(self._http_servers(), time.monotonic(), self._cluster_size())

    def leader_address(self) -> str:
        return self.leader["address"] if self.leader else ""

    def peers(self) -> list[str]:
        return sorted(s["address"] for s in self.servers.values())

    def known_servers(self) -> int:
        """The servers this client may pick (Consul's router NumServers): those known, less those the pool
        reports failed or left."""
        known = {s["address"] for s in self.servers.values() if s.get("address")} | self.learned
        return len(known - self.health.gone)

    def known_leader(self) -> bool:
        return self.leader is not None

    def last_contact_ms(self) -> int:
        return int((time.monotonic() - self._last_contact) * 1000) if self._last_contact else 0

    def is_leader(self) -> bool:
        return False

    def fast_read_ok(self) -> bool:
        return False

    def on_leader_change(self, callback: Callable[[bool], None]) -> None:
        return None  # never the leader

    def configuration(self) -> list[dict[str, Any]]:
        return []  # a client is in no Raft configuration (its HTTP API forwards the operator's reads)

    async def remove_server(self, server_id: str = "", address: str = "") -> None:
        if not server_id:
            raise RPCError("a client agent removes a server by its ID only", 400)
        await self.call_leader("remove_server", server_id, 10.0)

    async def transfer_leadership(self, target: str | None) -> str:
        return str(await self.call_leader("transfer_leader", target, 10.0))

    def advertise_http(self, address: str) -> None:
        return None  # servers forward nothing to a client

    def forget_leader(self) -> None:
        """A request to the servers failed: look the leader up again, and move forwarded requests to
        another server (Consul's NotifyFailedServer)."""
        self.leader = None
        current = self._picker.current
        if current is not None:
            now = time.monotonic()
            for s in self.servers.values():
                if s.get("http") == current and s.get("address"):
                    self.health.call_failed(s["address"], now)
            self._picker.failed(current, self._http_servers(), now, self._cluster_size())


def _unreachable(exc: RPCError) -> bool:
    """The call could not reach the server (``RPCClient``'s "cannot reach ..." and "connection ... lost")."""
    return exc.status == 500 and exc.message.startswith(("cannot reach", "connection"))
