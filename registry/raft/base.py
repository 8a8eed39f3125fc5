"""What every part of the Raft server shares: its options, its state, and the few helpers all use.

``RaftServer`` (``registry.raft.driver``) is assembled from parts along the server's seams, each in its
own module over this base: storage and recovery (``storage``), membership (``membership``), reads
(``reads``), the RPC methods it serves (``handlers``), and the loop itself (``driver``).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Generic, TypeVar

import msgpack
import structlog

from registry.raft import node as raftnode
from registry.raft.errors import NotLeaderError
from registry.raft.fsm import BytesCommands, CommandCodec, StateMachine
from registry.raft.links import LinkPolicy
from registry.raft.messages import (
    Configuration,
    Entry,
)
from registry.raft.observe import NO_OBSERVER, Observer
from registry.raft.snapshots import SnapshotStore
from registry.raft.stable import StableStore
from registry.raft.transport import LINK, LinkTimeouts, PeerSender, RPCClient, ServerTransport
from registry.raft.wal import WAL

log = structlog.get_logger("proconsul.raft")

TICK_SECONDS = 0.05  # election timeout 10 ticks = 0.5-1.0 s randomized; heartbeats every tick
# Consul's performance.raft_multiplier (1..10) scales hashicorp/raft's timings: at multiplier m a follower
# that hears no leader for m x 1 s (randomized up to twice that) stands for election, the leader sends a
# heartbeat every m x 100 ms (its HeartbeatTimeout / 10) and holds its lease m x 500 ms. Here every timing
# is counted in ticks (ELECTION_TICKS to the election timeout, one to a heartbeat), so a tick of m x 100 ms
# gives Consul's election timeout and heartbeat interval at that multiplier, and the lease (and everything
# else counted in ticks) scales with them as Consul's does. Without the key the tick stays TICK_SECONDS,
# half of multiplier 1 (docs/operations.md, "Raft timings").
RAFT_MULTIPLIER_TICK = 0.1
MAX_RAFT_MULTIPLIER = 10  # Consul's consul.MaxRaftMultiplier


def raft_tick(multiplier: int | None) -> float:
    """The Raft tick for ``performance.raft_multiplier`` (None: not set, Proconsul's own default)."""
    if multiplier is None:
        return TICK_SECONDS
    if not 1 <= multiplier <= MAX_RAFT_MULTIPLIER:
        raise ValueError(
            f"performance.raft_multiplier cannot be {multiplier}. Must be between 1 and {MAX_RAFT_MULTIPLIER}"
        )
    return RAFT_MULTIPLIER_TICK * multiplier


def raft_timings(tick: float) -> tuple[float, float, float]:
    """Seconds, at ``tick``: the (shortest) election timeout, the heartbeat interval and the leader's read
    lease (the election timeout less the core's lease margin)."""
    margin = raftnode.RaftConfig().lease_margin_ticks
    return ELECTION_TICKS * tick, tick, (ELECTION_TICKS - margin) * tick

SNAPSHOT_THRESHOLD = 8192  # applied entries between snapshots
# How often a server looks whether SNAPSHOT_THRESHOLD entries have built up: each wait is drawn between
# one and two times this (hashicorp/raft's SnapshotInterval with its randomTimeout; Consul's
# raft_snapshot_interval, 30 s by default), so the servers of a cluster, which reach any given index
# together, do not all snapshot at once.
SNAPSHOT_INTERVAL = 30.0
TRAILING_LOGS = 2048  # entries kept behind a snapshot so slightly-behind followers avoid a snapshot
LEADER_WAIT = 5.0  # how long a write waits for a leader to appear before failing (Consul: RPCHoldTimeout)
PROPOSAL_TIMEOUT = 30.0
# How long a follower waits, after the leader answered a write it forwarded, for its own state machine to
# apply that write before it answers (read-your-writes on the server a client talks to); the write has
# succeeded either way.
FORWARD_CATCH_UP = 2.0
# A proposal's deadline sits in a queue until it is answered; a proposal stuck at the head keeps answered
# ones behind it, and past this many the queue is compacted.
EXPIRY_COMPACT = 4096
ELECTION_TICKS = 10


@dataclass
class Proposal:
    term: int
    future: asyncio.Future[Any]
    appended: float = 0.0  # perf_counter() when the leader appended it (for the observer's commit time)


@dataclass
class ServerInfo:
    id: str
    address: str  # raft/RPC address host:port
    name: str = ""
    http: str = ""  # host:port of its HTTP API

    def wire(self) -> dict[str, str]:
        return {"id": self.id, "address": self.address, "name": self.name, "http": self.http}


@dataclass
class RaftOptions:
    data_dir: Path | None  # None: in memory (tests); a real server always has one
    node_id: str
    address: str  # advertised server address host:port
    bind: tuple[str, int]
    name: str
    http: str
    bootstrap_expect: int = 0
    bootstrap: bool = False
    join: list[str] = field(default_factory=list)
    tick: float = TICK_SECONDS
    snapshot_threshold: int = SNAPSHOT_THRESHOLD
    snapshot_interval: float = SNAPSHOT_INTERVAL  # seconds; 0: look after every batch (tests)
    trailing_logs: int = TRAILING_LOGS
    ssl_client: Any = None  # for dialing peers; the listening side's TLS is the transport's
    server_hostname: str | None = None
    leader_wait: float = LEADER_WAIT
    fork_snapshots: bool = True  # serialize snapshots in a forked child (off: on the event loop)
    source_ip: str | None = None  # connect to peers from this address (multi-homed hosts; fault-injection tests)


SM = TypeVar("SM", bound=StateMachine)


class ServerBase(Generic[SM]):
    """The server's state, and the helpers every part uses (peer RPC clients, the leader, proposals)."""

    def __init__(self, opts: RaftOptions, fsm: SM, transport: ServerTransport,
                 codec: CommandCodec | None = None, observer: Observer = NO_OBSERVER) -> None:  # fmt: skip
        self.opts = opts
        self.observer = observer
        self.fsm = fsm
        self.codec: CommandCodec = codec if codec is not None else BytesCommands()
        self._transport = transport
        self.id = opts.node_id
        self.node: raftnode.RaftNode | None = None
        self.servers: dict[str, ServerInfo] = {opts.node_id: ServerInfo(opts.node_id, opts.address, opts.name, opts.http)}
        self._wal: WAL | None = None
        self._stable: StableStore | None = None
        self._snaps: SnapshotStore | None = None
        self._mem_entries: list[Entry] = []
        self._senders: dict[str, PeerSender] = {}
        self._rpc: dict[str, RPCClient] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._wake = asyncio.Event()
        self._pending: list[tuple[bytes, asyncio.Future[Any]]] = []
        self._deferred: list[tuple[bytes, asyncio.Future[Any]]] = []  # proposals refused during a leadership transfer
        self._proposals: dict[int, Proposal] = {}
        # (deadline, future) of every local proposal, in the order made: all share one timeout, so the
        # deadlines are in order too, and one sweep a tick fails the expired ones (``_expire_proposals``).
        self._expiry: deque[tuple[float, asyncio.Future[Any]]] = deque()
        self._reads: dict[bytes, asyncio.Future[int]] = {}
        self._apply_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._read_ids = itertools.count(1)
        self._snapshot_index = 0
        self._snapshotting = False
        self._next_snapshot_check: float | None = None  # monotonic; set at the first look (storage.py)
        self._snapshot_cap = 0  # entries behind the last snapshot that force one (storage.py)
        self._leader_since: float | None = None
        self._leader_callbacks: list[Callable[[bool], None]] = []
        self._was_leader = False
        self._rng = random.Random()
        self._tick_due = 0.0  # loop time the node's latest tick stands for (catch-up ticks come late)
        self._lease_embargo_until = 0.0  # no lease reads before this loop time (the node's clock fell behind)
        self._links = LinkPolicy.for_election(ELECTION_TICKS)  # when a silent peer's stream is reset
        # The kernel's give-up time on a peer stream is the policy's longest election timeout at this tick
        # (LINK's at the default tick): a larger raft_multiplier relaxes it with the election timeout.
        self._link_timeouts: LinkTimeouts = LINK if opts.tick == TICK_SECONDS else replace(
            LINK, user_timeout=self._links.user_timeout_ticks * opts.tick)  # fmt: skip
        self._last_leader: str | None = None  # the leader last followed (the core forgets it when campaigning)
        self._role: raftnode.Role | None = None  # the role last reported to the observer
        # peer -> (perf_counter() of the oldest AppendEntries with entries not yet acknowledged, entries since)
        self._unacked: dict[str, tuple[float, int]] = {}


    def _save_servers(self) -> None:
        if self._stable is not None:
            blob = msgpack.packb({s.id: s.wire() for s in self.servers.values()})
            if self._stable.metadata.get("servers") != blob:
                self._stable.set_metadata("servers", blob)

    def rpc_client(self, address: str) -> RPCClient:
        client = self._rpc.get(address)
        if client is None:
            client = self._rpc[address] = RPCClient(address, self.opts.ssl_client, self.opts.server_hostname,
                                                    self.opts.source_ip)  # fmt: skip
        return client

    def _leader_info(self) -> ServerInfo | None:
        if self.node is None or self.node.leader_id is None:
            return None
        return self.servers.get(self.node.leader_id)

    async def _await_leader(self) -> ServerInfo:
        deadline = time.monotonic() + self.opts.leader_wait
        while True:
            info = self._leader_info()
            if info is not None and info.address:
                return info
            if time.monotonic() > deadline:
                raise NotLeaderError(None)
            await asyncio.sleep(0.02)

    async def _propose_bytes(self, data: bytes) -> Any:
        """Submit one proposal and wait for its result; NotLeaderError after ``PROPOSAL_TIMEOUT``.

        The timeout is the ticker's sweep (``_expire_proposals``), not an ``asyncio.wait_for`` per
        proposal: that armed a timer, made a second future and added and removed a done-callback on every
        write, a cost the leader paid thousands of times a second for a timeout that almost never fires."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._pending.append((data, fut))
        self._expiry.append((loop.time() + PROPOSAL_TIMEOUT, fut))
        self._wake.set()
        return await fut

    def _expire_proposals(self, now: float) -> None:
        """Fail the proposals whose deadline has passed (the caller sees NotLeaderError, its outcome
        unknown), and forget the answered ones at the head of the queue."""
        expiry = self._expiry
        while expiry and (expiry[0][1].done() or expiry[0][0] <= now):
            _, fut = expiry.popleft()
            if not fut.done():
                fut.set_exception(NotLeaderError(None))
        if len(expiry) > EXPIRY_COMPACT:
            self._expiry = deque(e for e in expiry if not e[1].done())


def log_task_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("raft background task failed", task=task.get_name(), error=repr(task.exception()))


def config_to_dict(conf: Configuration) -> dict[str, Any]:
    return {"voters": sorted(conf.voters), "learners": sorted(conf.learners)}


def config_from_dict(d: Any) -> Configuration:
    return Configuration(frozenset(d.get("voters") or ()), frozenset(d.get("learners") or ()))
