"""The asyncio driver around the pure Raft core: disk, network, clock and the FSM.

It implements the ``Consensus`` protocol the API uses (``propose``, ``barrier_read``, leader and peer
status), so a server cluster and the single-node dev log are interchangeable behind the API.

The loop follows the core's contract (see ``registry.raft.node``): for each Ready, persist (WAL append +
one fsync for the whole batch: group commit; term and vote through the stable store), then send, then
apply committed entries to the FSM and answer the proposals and reads waiting on them, then advance.
Proposals arriving while the loop works are batched into the next Ready.

Reads: ``?stale`` is served from local state. The default mode is a lease read on the leader (no network
round while a quorum acknowledged a heartbeat within the lease; see the clock assumption in node.py), and
on a follower a read index fetched from the leader. ``?consistent`` is always a ReadIndex quorum round.
Either way the read waits until this server has applied the read index, so a new leader never answers
before it has applied everything committed before its term.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import msgpack
import structlog

from registry.raft import node as raftnode
from registry.raft.errors import NotLeaderError, RPCError
from registry.raft.fsm import BytesCommands, CommandCodec, StateMachine
from registry.raft.messages import (
    AppendEntries,
    ConfChange,
    ConfChangeKind,
    Configuration,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    Message,
    Snapshot,
    SnapshotMeta,
    decode_config_entry,
)
from registry.raft.snapshots import SnapshotStore
from registry.raft.stable import StableStore
from registry.raft.transport import PeerSender, RPCClient, ServerTransport
from registry.raft.wal import WAL

log = structlog.get_logger("proconsul.raft")

TICK_SECONDS = 0.05  # election timeout 10 ticks = 0.5-1.0 s randomized; heartbeats every tick
SNAPSHOT_THRESHOLD = 8192  # applied entries between snapshots
TRAILING_LOGS = 2048  # entries kept behind a snapshot so slightly-behind followers avoid a snapshot
LEADER_WAIT = 5.0  # how long a write waits for a leader to appear before failing (Consul: RPCHoldTimeout)
PROPOSAL_TIMEOUT = 30.0
ELECTION_TICKS = 10


@dataclass
class _Proposal:
    term: int
    future: asyncio.Future[Any]


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
    trailing_logs: int = TRAILING_LOGS
    ssl_client: Any = None  # for dialing peers; the listening side's TLS is the transport's
    server_hostname: str | None = None
    leader_wait: float = LEADER_WAIT
    fork_snapshots: bool = True  # serialize snapshots in a forked child (off: on the event loop)
    source_ip: str | None = None  # connect to peers from this address (multi-homed hosts; fault-injection tests)


SM = TypeVar("SM", bound=StateMachine)


class RaftServer(Generic[SM]):
    """One Raft server: built from its options, the state machine, the server port and a command codec,
    as hashicorp/raft's ``NewRaft(conf, fsm, logs, stable, snaps, trans)`` is."""

    def __init__(self, opts: RaftOptions, fsm: SM, transport: ServerTransport,
                 codec: CommandCodec | None = None) -> None:  # fmt: skip
        self.opts = opts
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
        self._proposals: dict[int, _Proposal] = {}
        self._reads: dict[bytes, asyncio.Future[int]] = {}
        self._apply_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._read_ids = itertools.count(1)
        self._snapshot_index = 0
        self._snapshotting = False
        self._leader_since: float | None = None
        self._leader_callbacks: list[Callable[[bool], None]] = []
        self._was_leader = False
        self._rng = random.Random()
        self._tick_due = 0.0  # loop time the node's latest tick stands for (catch-up ticks come late)
        self._lease_embargo_until = 0.0  # no lease reads before this loop time (the node's clock fell behind)
        self._register_rpc()

    # ------------------------------------------------------------------ lifecycle

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        task.add_done_callback(_log_task_failure)
        self._tasks.append(task)

    async def start(self) -> None:
        self._open_storage()
        self._transport.inbox.attach(self._on_message)
        await self._transport.port.start(*self.opts.bind)
        state = self._load_state()
        if state is not None:
            self._build_node(state)
        self._spawn(self._ticker(), "raft-ticker")
        self._spawn(self._loop(), "raft-loop")
        if self.node is None:
            self._spawn(self._bootstrap_loop(), "raft-bootstrap")
        self._spawn(self._membership_loop(), "raft-membership")

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        await self._transport.port.close()
        for s in self._senders.values():
            await s.close()
        for c in self._rpc.values():
            await c.close()
        self._fail_all(NotLeaderError(None))
        if self._wal is not None:
            self._wal.close()

    # ------------------------------------------------------------------ storage

    def _open_storage(self) -> None:
        if self.opts.data_dir is None:
            return
        base = self.opts.data_dir / "raft"
        base.mkdir(parents=True, exist_ok=True)
        self._stable = StableStore.open(base)
        self._wal = WAL.open(base / "wal")
        self._snaps = SnapshotStore.open(base / "snapshots")
        raw_servers = self._stable.metadata.get("servers")
        known = msgpack.unpackb(raw_servers, raw=False) if isinstance(raw_servers, bytes) else {}
        for sid, info in (known if isinstance(known, dict) else {}).items():
            if isinstance(info, dict) and sid != self.id:
                self.servers[sid] = ServerInfo(sid, str(info.get("address", "")), str(info.get("name", "")),
                                               str(info.get("http", "")))  # fmt: skip
        self._recover_peers_json(base)

    def _save_servers(self) -> None:
        if self._stable is not None:
            blob = msgpack.packb({s.id: s.wire() for s in self.servers.values()})
            if self._stable.metadata.get("servers") != blob:
                self._stable.set_metadata("servers", blob)

    def _load_state(self) -> raftnode.PersistentState | None:
        """Rebuild the node's PersistentState from disk (None: never bootstrapped or joined)."""
        if self._snaps is None or self._wal is None or self._stable is None:
            return None
        latest = self._snaps.latest()
        snap_meta: SnapshotMeta | None = None
        index = 0
        if latest is not None:
            meta, data = latest
            index = meta.index
            snap_meta = SnapshotMeta(meta.index, meta.term, _config_from_dict(meta.configuration))
            self.fsm.restore(data)
        self._snapshot_index = index
        if 0 < self._wal.last_index <= index:
            # Every entry on disk is covered by the snapshot: a crash came between installing a snapshot
            # and discarding the log it replaced. Discard it now, or the next entry (index + 1) could not
            # follow the stale tail.
            log.warning("dropping log entries the snapshot covers (an install was interrupted)",
                        log_last=self._wal.last_index, snapshot_index=index)  # fmt: skip
            self._wal.truncate_suffix(0)
        entries = tuple(
            Entry(e.term, e.index, EntryKind(e.kind), e.data) for e in self._wal.iter_entries() if e.index > index
        )
        if entries and entries[0].index != index + 1:
            raise RuntimeError(
                f"Raft data in {self.opts.data_dir} is inconsistent: the log starts at index {entries[0].index} but "
                f"the newest usable snapshot ends at {index}. Restore the data directory from a backup, or remove "
                "it and let this server rejoin from the leader (proconsul operator raft remove-peer first)."
            )
        if snap_meta is None and not entries and self._stable.term == 0:
            return None  # never bootstrapped, never joined
        hs = HardState(self._stable.term, self._stable.vote, index)
        return raftnode.PersistentState(hs, snap_meta, entries)

    def _recover_peers_json(self, base: Path) -> None:
        """Consul-style outage recovery: <data-dir>/raft/peers.json lists the servers that remain. Every
        entry in the local log is applied, a snapshot is taken with the new configuration, and the file is
        removed. Run it on every surviving server with the same peers.json, then start them."""
        path = base / "peers.json"
        if not path.exists():
            return
        try:
            peers = json.loads(path.read_text())
            ids = {str(p["id"]): str(p["address"]) for p in peers}
        except (ValueError, KeyError, TypeError) as exc:
            raise RuntimeError(f"{path} is not valid: expected [{{\"id\": ..., \"address\": ...}}, ...]: {exc}") from exc
        assert self._snaps is not None and self._wal is not None
        latest = self._snaps.latest()
        if latest is not None and latest[1]:
            self.fsm.restore(latest[1])
        index = latest[0].index if latest else 0
        term = latest[0].term if latest else 0
        for e in self._wal.iter_entries():
            if e.index <= index:
                continue
            if e.kind == EntryKind.NORMAL:
                self.fsm.apply(e.index, e.data)
            else:
                self.fsm.advance(e.index)
            index, term = e.index, e.term
        for sid, addr in ids.items():
            self.servers.setdefault(sid, ServerInfo(sid, addr)).address = addr
        conf = Configuration(frozenset(ids))
        self._snaps.create(index, term, _config_to_dict(conf), self.fsm.snapshot())
        self._wal.truncate_suffix(0)
        self._save_servers()
        path.rename(path.with_suffix(".json.applied"))
        log.warning("recovered from peers.json", index=index, voters=sorted(ids))

    def _persist(self, rd: raftnode.Ready) -> None:
        if rd.snapshot is not None:
            snap = rd.snapshot
            if self._snaps is not None and snap.meta.index > 0:
                self._snaps.create(snap.meta.index, snap.meta.term, _config_to_dict(snap.meta.configuration),
                                   snap.data)  # fmt: skip
            if self._wal is not None:
                self._wal.truncate_suffix(0)
            self._mem_entries.clear()
            if snap.data:
                self.fsm.restore(snap.data)
            self._snapshot_index = snap.meta.index
        if rd.entries:
            first = rd.entries[0].index
            if self._wal is not None:
                if self._wal.last_index >= first:
                    self._wal.truncate_suffix(first)
                self._wal.append((e.index, e.term, int(e.kind), e.data) for e in rd.entries)
            else:
                while self._mem_entries and self._mem_entries[-1].index >= first:
                    self._mem_entries.pop()
                self._mem_entries.extend(rd.entries)
        if self._stable is not None and rd.hard_state is not None:
            hs = rd.hard_state
            if hs.term != self._stable.term or hs.vote != self._stable.vote:
                self._stable.save(hs.term, hs.vote)

    def _snapshot_source(self) -> Snapshot | None:
        if self._snaps is None:
            return None
        latest = self._snaps.latest()
        if latest is None:
            return None
        meta, data = latest
        return Snapshot(SnapshotMeta(meta.index, meta.term, _config_from_dict(meta.configuration)), data)

    def _maybe_snapshot(self) -> None:
        node = self.node
        if node is None or self._snaps is None or self._wal is None or self._snapshotting:
            return
        applied = node.applied_index
        if applied - self._snapshot_index < self.opts.snapshot_threshold:
            return
        meta = node.snapshot_meta(applied)
        self._snapshotting = True
        if hasattr(os, "fork") and self.opts.fork_snapshots:
            asyncio.get_running_loop().create_task(self._snapshot_in_child(meta))
        else:
            started = time.monotonic()
            try:
                self._snaps.create(meta.index, meta.term, _config_to_dict(meta.configuration), self.fsm.snapshot())
            finally:
                self._snapshotting = False
            self._snapshot_done(meta, time.monotonic() - started)

    async def _snapshot_in_child(self, meta: SnapshotMeta) -> None:
        """Serialize the state machine in a forked child, as Redis does: the child sees a copy-on-write image
        of the store exactly as of ``meta.index`` while this process keeps serving and replicating. A big
        catalog takes a noticeable fraction of a second to serialize; doing that on the event loop would
        stall heartbeats and invite needless elections."""
        assert self._snaps is not None
        started = time.monotonic()
        conf = _config_to_dict(meta.configuration)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, which only writes the file and exits
            code = 1
            try:
                self._snaps.create(meta.index, meta.term, conf, self.fsm.snapshot())
                code = 0
            finally:
                os._exit(code)
        try:
            _, status = await asyncio.to_thread(os.waitpid, pid, 0)
        finally:
            self._snapshotting = False
        if os.waitstatus_to_exitcode(status) != 0:
            log.error("snapshot child failed; the log is kept until the next attempt", index=meta.index)
            return
        self._snapshot_done(meta, time.monotonic() - started)

    def _snapshot_done(self, meta: SnapshotMeta, seconds: float) -> None:
        node = self.node
        if node is None or self._wal is None:
            return
        self._snapshot_index = meta.index
        keep_from = max(0, meta.index - self.opts.trailing_logs)
        if keep_from > node.log.snapshot_index:
            node.compact(keep_from)
            self._wal.compact(keep_from)
        log.info("snapshot taken", index=meta.index, seconds=round(seconds, 3))

    # ------------------------------------------------------------------ node

    def _build_node(self, state: raftnode.PersistentState) -> None:
        cfg = raftnode.RaftConfig(election_tick=ELECTION_TICKS, heartbeat_tick=1, check_quorum=True, pre_vote=True)
        self.node = raftnode.RaftNode(self.id, cfg, self._rng, state, snapshot_source=self._snapshot_source,
                                      applied=state.snapshot.index if state.snapshot else 0)  # fmt: skip
        self._wake.set()

    def _bootstrap(self, voters: list[str]) -> None:
        state = raftnode.PersistentState.bootstrap(voters)
        # Persist the founding state (the initial configuration is log entry 1) before the first Ready.
        if self._wal is not None:
            self._wal.append((e.index, e.term, int(e.kind), e.data) for e in state.entries)
            self._wal.sync()
        else:
            self._mem_entries.extend(state.entries)
        if self._stable is not None:
            self._stable.save(state.hard_state.term, state.hard_state.vote)
        self._save_servers()
        log.info("bootstrapping cluster", voters=sorted(voters))
        self._build_node(state)

    def _join_empty(self) -> None:
        """Become a server that waits for a leader to add it (state persisted once a snapshot arrives)."""
        self._build_node(raftnode.PersistentState.empty())

    async def _ticker(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += self.opts.tick
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            if loop.time() - next_at > 5 * self.opts.tick:
                next_at = loop.time()  # the loop stalled; do not fire a burst of catch-up ticks
                # ...but then the node's clock lags real time, and a lease counted in its ticks could
                # outlive the followers' election timeout: no lease reads for one election timeout.
                self._lease_embargo_until = next_at + ELECTION_TICKS * self.opts.tick
            if self.node is not None:
                self.node.tick()
                self._tick_due = next_at
                self._wake.set()

    def _lease_clock_ok(self) -> bool:
        """Trust the lease (counted in ticks) only while the node's clock keeps pace with real time: its
        latest tick is at most two intervals behind, and no ticks were skipped within an election timeout.
        After a stall or a SIGSTOP the loop may serve a queued read before the ticker catches up, and a
        deposed leader cut off from the new one would answer from stale state; a ReadIndex round instead
        cannot complete there."""
        now = asyncio.get_running_loop().time()
        return now - self._tick_due <= 2 * self.opts.tick and now >= self._lease_embargo_until

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._process()
            except Exception:  # noqa: BLE001 - a storage failure must stop this server, loudly
                log.exception("raft loop failed; this server stops participating")
                self._fail_all(RuntimeError("raft storage failure"))
                raise

    async def _process(self) -> None:
        node = self.node
        if node is None:
            return
        if self._pending:
            pending, self._pending = self._pending, []
            if node.role is raftnode.Role.LEADER:
                try:
                    indexes = node.propose_batch(d for d, _ in pending)
                except raftnode.RaftError as exc:
                    for _, fut in pending:
                        if not fut.done():
                            fut.set_exception(NotLeaderError(self.leader_address() or None) if isinstance(
                                exc, raftnode.NotLeaderError) else exc)  # fmt: skip
                else:
                    for i, (_, fut) in zip(indexes, pending, strict=True):
                        self._proposals[i] = _Proposal(node.term, fut)
            else:
                for data, fut in pending:
                    asyncio.get_running_loop().create_task(self._forward(data, fut))
        while node.has_ready():
            rd = node.ready()
            self._persist(rd)
            # A leader's AppendEntries promise nothing about its own disk (the core counts its own entries
            # only once advance() says they are durable), so they go out before the fsync: followers write
            # while the leader writes. Votes and acknowledgements wait for the fsync.
            later = []
            for msg in rd.messages:
                if isinstance(msg, AppendEntries | Heartbeat):
                    self._send(msg)
                else:
                    later.append(msg)
            if rd.must_sync and self._wal is not None:
                # In a thread, so the event loop keeps parsing requests that join the next batch.
                await asyncio.to_thread(self._wal.sync)
            for msg in later:
                self._send(msg)
            for e in rd.committed_entries:
                self._apply(e)
            for rs in rd.read_states:
                fut = self._reads.pop(rs.context, None)
                if fut is not None and not fut.done():
                    fut.set_result(rs.index)
            for ctx in rd.dropped_reads:
                fut = self._reads.pop(ctx, None)
                if fut is not None and not fut.done():
                    fut.set_exception(NotLeaderError(None))
            node.advance(rd)
        self._wake_appliers(node.applied_index)
        is_leader = node.role is raftnode.Role.LEADER
        if is_leader != self._was_leader:
            self._was_leader = is_leader
            self._leader_since = time.monotonic() if is_leader else None
            log.info("raft role changed", role=node.role.value, term=node.term)
            if not is_leader:
                # Proposals may still commit under the new leader: keep waiting for them (their entries'
                # terms tell), but reads in flight on this leader are gone.
                for fut in list(self._reads.values()):
                    if not fut.done():
                        fut.set_exception(NotLeaderError(None))
                self._reads.clear()
            for cb in self._leader_callbacks:
                cb(is_leader)
        self._maybe_snapshot()

    def _apply(self, e: Entry) -> None:
        if e.kind == EntryKind.NORMAL:
            result = self.fsm.apply(e.index, e.data)
        else:
            self.fsm.advance(e.index)
            result = None
            if e.kind == EntryKind.CONFIG:
                conf, change = decode_config_entry(e.data)
                if change.context:
                    with contextlib.suppress(ValueError, TypeError, msgpack.UnpackException):
                        info = msgpack.unpackb(change.context, raw=False)
                        self.servers[change.node_id] = ServerInfo(change.node_id, str(info["a"]), str(info.get("n", "")),
                                                                  str(info.get("h", "")))  # fmt: skip
                        self._save_servers()
                if change.kind is ConfChangeKind.REMOVE_NODE and change.node_id != self.id:
                    sender = self._senders.pop(change.node_id, None)
                    if sender is not None:
                        asyncio.get_running_loop().create_task(sender.close())
        prop = self._proposals.pop(e.index, None)
        if prop is not None and not prop.future.done():
            if prop.term == e.term:
                prop.future.set_result(result)
            else:
                prop.future.set_exception(NotLeaderError(None))  # overwritten by another leader's entry

    def _wake_appliers(self, applied: int) -> None:
        if not self._apply_waiters:
            return
        keep = []
        for index, fut in self._apply_waiters:
            if applied >= index:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((index, fut))
        self._apply_waiters = keep

    def _fail_all(self, exc: Exception) -> None:
        for p in self._proposals.values():
            if not p.future.done():
                p.future.set_exception(exc)
        self._proposals.clear()
        for _, fut in self._pending:
            if not fut.done():
                fut.set_exception(exc)
        self._pending.clear()

    # ------------------------------------------------------------------ network

    def _send(self, msg: Message) -> None:
        sender = self._senders.get(msg.dst)
        if sender is None:
            dst = msg.dst
            sender = self._senders[dst] = PeerSender(
                dst, lambda: self.servers[dst].address if dst in self.servers else None,
                self.opts.ssl_client, self.opts.server_hostname, self.opts.source_ip,
            )  # fmt: skip
        sender.send(msg)

    def _on_message(self, msg: Message) -> None:
        if self.node is None:
            if self.opts.bootstrap_expect or self.opts.join:
                # A leader is reaching out: we were added to an existing cluster while bootstrapping.
                self._join_empty()
            else:
                return
        assert self.node is not None
        if msg.dst != self.id:
            return
        try:
            self.node.step(msg)
        except raftnode.RaftError as exc:
            log.warning("raft message refused", error=str(exc), type=type(msg).__name__)
            return
        self._wake.set()

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

    async def _forward(self, data: bytes, fut: asyncio.Future[Any]) -> None:
        """Send a follower's proposal to the leader. Retried only when it certainly did not reach a leader
        (connection refused, or "not the leader"): a call that may have been delivered is never resent,
        its outcome is reported unknown instead."""
        deadline = time.monotonic() + self.opts.leader_wait
        try:
            while True:
                leader = await self._await_leader()
                if leader.id == self.id:
                    self._pending.append((data, fut))
                    self._wake.set()
                    return
                try:
                    reply = await self.rpc_client(leader.address).call("apply", data, timeout=PROPOSAL_TIMEOUT)
                except RPCError as exc:
                    retryable = exc.status == 503 or exc.message.startswith("cannot reach server")
                    if not retryable or time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)
                    continue
                if not fut.done():
                    fut.set_result(self.codec.decode_result(reply))
                return
        except RPCError as exc:
            if not fut.done():
                fut.set_exception(NotLeaderError(None) if exc.status == 503 else exc)
        except Exception as exc:  # noqa: BLE001
            if not fut.done():
                fut.set_exception(exc)

    # ------------------------------------------------------------------ RPC server

    def _register_rpc(self) -> None:
        """Serve the server-to-server methods on the port's router (the application adds its own)."""
        register = self._transport.router.register
        register("apply", self._rpc_apply)
        register("hello", self._rpc_hello)
        register("join", self._rpc_join)
        register("read_index", self._rpc_read_index)
        register("raft_configuration", self._rpc_configuration)
        register("transfer_leader", self._rpc_transfer_leader)
        register("remove_server", self._rpc_remove_server)

    def _require_leader(self) -> raftnode.RaftNode:
        node = self.node
        if node is None or node.role is not raftnode.Role.LEADER:
            # Let the caller re-resolve the leader (no forwarding chains).
            raise RPCError("not the leader", 503)
        return node

    async def _rpc_apply(self, args: Any) -> Any:
        if not isinstance(args, bytes):
            raise RPCError("apply needs a command", 400)
        self._require_leader()
        return self.codec.encode_result(await self._propose_bytes(args))

    async def _rpc_hello(self, args: Any) -> Any:
        if isinstance(args, dict):
            self._learn(args)
            for info in (args.get("known") or {}).values():
                if isinstance(info, dict):
                    self._learn(info)
        return self._hello_payload()

    async def _rpc_join(self, args: Any) -> Any:
        if not isinstance(args, dict):
            raise RPCError("join needs server info", 400)
        return await self._handle_join(args)

    async def _rpc_read_index(self, args: Any) -> Any:
        self._require_leader()
        return await self._leader_read_index(bool(args))

    async def _rpc_configuration(self, args: Any) -> Any:
        self._require_leader()
        return self.configuration()

    async def _rpc_transfer_leader(self, args: Any) -> Any:
        return await self.transfer_leadership(args if isinstance(args, str) else None)

    async def _rpc_remove_server(self, args: Any) -> Any:
        if not isinstance(args, str):
            raise RPCError("remove_server needs a server id", 400)
        await self.remove_server(args)
        return True

    def _learn(self, info: dict[str, Any]) -> None:
        sid, addr = info.get("id"), info.get("address")
        if not isinstance(sid, str) or not isinstance(addr, str) or not sid or not addr:
            return
        current = self.servers.get(sid)
        if current is None or current.address != addr or (info.get("http") and current.http != info.get("http")):
            self.servers[sid] = ServerInfo(sid, addr, str(info.get("name", "")), str(info.get("http", "")))
            self._save_servers()

    def _hello_payload(self) -> dict[str, Any]:
        me = self.servers[self.id]
        leader = self._leader_info()
        return {
            **me.wire(),
            "known": {s.id: s.wire() for s in self.servers.values()},
            "configured": self.node is not None and bool(self.node.configuration.members()),
            "leader": leader.wire() if leader else None,
        }

    async def _handle_join(self, info: dict[str, Any]) -> Any:
        node = self.node
        if node is None or node.role is not raftnode.Role.LEADER:
            raise RPCError("not the leader", 503)
        self._learn(info)
        sid = str(info["id"])
        if sid in node.configuration.members():
            return True
        ctx = msgpack.packb({"a": info["address"], "n": info.get("name", ""), "h": info.get("http", "")})
        try:
            node.propose_config_change(ConfChange(ConfChangeKind.ADD_LEARNER, sid, ctx))
        except raftnode.ConfigChangeError as exc:
            raise RPCError(str(exc), 409) from exc
        self._wake.set()
        log.info("adding server as learner", server=sid, address=info["address"])
        return True

    # ------------------------------------------------------------------ bootstrap and membership

    async def _bootstrap_loop(self) -> None:
        """Find the other servers (retry_join) and either bootstrap together or join a running cluster."""
        opts = self.opts
        if opts.bootstrap or (opts.bootstrap_expect == 1 and not opts.join):
            self._bootstrap([self.id])
            return
        delay = 0.1
        while self.node is None:
            joined = await self._try_join()
            if joined or self.node is not None:
                return
            known = sorted(self.servers)
            if opts.bootstrap_expect and len(known) == opts.bootstrap_expect and await self._peers_unconfigured():
                self._bootstrap(known)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 2.0)

    async def _peers_unconfigured(self) -> bool:
        for s in list(self.servers.values()):
            if s.id == self.id:
                continue
            try:
                reply = await self.rpc_client(s.address).call("hello", self._hello_payload(), timeout=2)
            except RPCError:
                return False
            if reply.get("configured"):
                return False
        return True

    async def _try_join(self) -> bool:
        for addr in self.opts.join + [s.address for s in self.servers.values() if s.id != self.id]:
            if addr == self.opts.address:
                continue
            try:
                reply = await self.rpc_client(addr).call("hello", self._hello_payload(), timeout=2)
            except RPCError:
                continue
            if not isinstance(reply, dict):
                continue
            self._learn(reply)
            for info in (reply.get("known") or {}).values():
                if isinstance(info, dict):
                    self._learn(info)
            if reply.get("configured") and reply.get("leader"):
                leader = reply["leader"]
                try:
                    await self.rpc_client(leader["address"]).call("join", self.servers[self.id].wire(), timeout=5)
                except RPCError as exc:
                    log.info("join not accepted yet", leader=leader.get("address"), error=exc.message)
                    continue
                if self.node is None:
                    self._join_empty()
                return True
        return False

    async def _membership_loop(self) -> None:
        """On the leader: promote caught-up learners (non-voters catch up before they vote)."""
        while True:
            await asyncio.sleep(0.5)
            node = self.node
            if node is None or node.role is not raftnode.Role.LEADER:
                continue
            for learner in sorted(node.configuration.learners):
                try:
                    node.propose_config_change(ConfChange(ConfChangeKind.PROMOTE_LEARNER, learner))
                    log.info("promoting learner to voter", server=learner)
                    self._wake.set()
                    break
                except raftnode.RaftError:
                    continue

    # ------------------------------------------------------------------ Consensus protocol

    async def _propose_bytes(self, data: bytes) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((data, fut))
        self._wake.set()
        try:
            return await asyncio.wait_for(fut, PROPOSAL_TIMEOUT)
        except TimeoutError as exc:
            raise NotLeaderError(None) from exc

    async def propose(self, cmd: Any) -> Any:
        if self.node is None:
            raise NotLeaderError(None)
        return await self._propose_bytes(self.codec.encode_command(cmd))

    async def _wait_applied(self, index: int, timeout: float = 10.0) -> None:
        assert self.node is not None
        if self.node.applied_index >= index:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._apply_waiters.append((index, fut))
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError as exc:
            raise NotLeaderError(None) from exc

    async def _leader_read_index(self, consistent: bool) -> int:
        node = self.node
        assert node is not None
        if not consistent and self._lease_clock_ok():
            idx = node.lease_read_index()
            if idx is not None:
                return idx
        return await self._read_index_round()

    def fast_read_ok(self) -> bool:
        """True when a default-mode read may be answered from local state right now with no waiting: this
        server leads, its lease holds, its clock keeps pace, and it has applied everything the lease covers.
        The HTTP layer's hot cache serves only under this condition."""
        node = self.node
        if node is None or node.role is not raftnode.Role.LEADER or not self._lease_clock_ok():
            return False
        idx = node.lease_read_index()
        return idx is not None and node.applied_index >= idx

    async def _read_index_round(self) -> int:
        """A ReadIndex round (thesis 6.4): on the leader a heartbeat round acknowledged by a quorum; on a
        follower the core forwards the request to the leader. Returns the index the read must wait for."""
        node = self.node
        assert node is not None
        ctx = next(self._read_ids).to_bytes(8, "big") + os.urandom(4)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._reads[ctx] = fut
        try:
            node.read_index(ctx)
        except raftnode.RaftError as exc:
            self._reads.pop(ctx, None)
            raise NotLeaderError(None) from exc
        self._wake.set()
        try:
            return await asyncio.wait_for(fut, 5.0)
        except TimeoutError as exc:
            self._reads.pop(ctx, None)
            raise NotLeaderError(None) from exc

    async def barrier_read(self, consistency: str) -> None:
        node = self.node
        if consistency == "stale":
            return
        if node is None:
            raise NotLeaderError(None)
        if node.role is raftnode.Role.LEADER:
            index = await self._leader_read_index(consistency == "consistent")
        elif consistency == "consistent":
            index = await self._follower_read_index()
        else:
            leader = await self._await_leader()
            if leader.id == self.id:
                index = await self._leader_read_index(False)
            else:
                try:
                    index = int(await self.rpc_client(leader.address).call("read_index", False, timeout=5))
                except RPCError as exc:
                    raise NotLeaderError(None) from exc
        await self._wait_applied(index)

    async def _follower_read_index(self) -> int:
        await self._await_leader()
        return await self._read_index_round()

    def leader_address(self) -> str:
        info = self._leader_info()
        return info.address if info else ""

    def peers(self) -> list[str]:
        if self.node is None:
            return []
        return [self.servers[v].address for v in sorted(self.node.configuration.voters) if v in self.servers]

    def known_leader(self) -> bool:
        return self._leader_info() is not None

    def last_contact_ms(self) -> int:
        if self.node is None:
            return 0
        if self.node.role is raftnode.Role.LEADER:
            return 0
        return int(self.node.status().ticks_since_leader_contact * self.opts.tick * 1000)

    def is_leader(self) -> bool:
        return self.node is not None and self.node.role is raftnode.Role.LEADER

    def on_leader_change(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(leading)`` from the loop whenever this server gains or loses leadership (as
        hashicorp/raft's ``LeaderCh``)."""
        self._leader_callbacks.append(callback)

    async def call_leader(self, method: str, args: Any, timeout: float) -> Any:
        """Call an RPC method on the leader, waiting up to ``leader_wait`` for one to be known."""
        leader = await self._await_leader()
        return await self.rpc_client(leader.address).call(method, args, timeout=timeout)

    def advertise_http(self, address: str) -> None:
        """This server's HTTP address once its listener is bound (port 0 picks one), told in ``hello``."""
        self.servers[self.id].http = address

    def http_target(self) -> str | None:
        info = self._leader_info()
        return info.http if info is not None and info.http else None

    async def refresh(self) -> bool:
        return self.known_leader()

    def forget_leader(self) -> None:
        return None  # the core tracks the leader from its messages

    # ------------------------------------------------------------------ operator

    def configuration(self) -> list[dict[str, Any]]:
        node = self.node
        if node is None:
            return []
        conf = node.configuration
        leader = node.leader_id
        status = node.status()
        out = []
        for sid in conf.sorted_members():
            info = self.servers.get(sid, ServerInfo(sid, ""))
            last = status.last_index if sid == self.id else (status.peers[sid].match_index if sid in status.peers else 0)
            out.append({"ID": sid, "Node": info.name or sid, "Address": info.address, "Leader": sid == leader,
                        "Voter": sid in conf.voters, "ProtocolVersion": "3", "LastIndex": last})  # fmt: skip
        return out

    async def remove_server(self, server_id: str = "", address: str = "") -> None:
        """Remove a server from the configuration, named by ID or by address (Consul's
        RemoveRaftPeerByID/ByAddress). A follower checks the name against its configuration and asks the
        leader, which proposes the change."""
        servers = self.configuration()
        if address and not server_id:
            match = [s for s in servers if s["Address"] == address]
            if not match:
                raise RPCError(f"address {address!r} was not found in the Raft configuration", 400)
            server_id = match[0]["ID"]
        if server_id not in {s["ID"] for s in servers}:
            raise RPCError(f"id {server_id!r} was not found in the Raft configuration", 400)
        sid = server_id
        node = self.node
        if node is None or node.role is not raftnode.Role.LEADER:
            leader = await self._await_leader()
            await self.rpc_client(leader.address).call("remove_server", sid, timeout=10)
            return
        # A change still committing (a learner's promotion, this leader's first entry) only delays us.
        deadline = time.monotonic() + 10
        while True:
            try:
                node.propose_config_change(ConfChange(ConfChangeKind.REMOVE_NODE, sid))
                break
            except raftnode.ConfigChangeError as exc:
                if "retry" not in str(exc) or time.monotonic() > deadline:
                    raise RPCError(str(exc), 400) from exc
            except raftnode.NotLeaderError as exc:
                raise RPCError("not the leader", 503) from exc
            await asyncio.sleep(0.05)
        self._wake.set()

    async def transfer_leadership(self, target: str | None) -> str:
        node = self.node
        if node is None or node.role is not raftnode.Role.LEADER:
            raise RPCError("Cannot transfer leadership: this server is not the leader", 500)
        if target is None:
            candidates = [v for v in sorted(node.configuration.voters) if v != self.id]
            if not candidates:
                raise RPCError("Cannot transfer leadership: no other voter", 500)
            status = node.status()
            target = max(candidates, key=lambda v: status.peers[v].match_index if v in status.peers else 0)
        try:
            node.transfer_leadership(target)
        except raftnode.RaftError as exc:
            raise RPCError(str(exc), 400) from exc
        self._wake.set()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            if node.leader_id == target:
                return target
        raise RPCError("leadership transfer did not complete in time", 500)


def _log_task_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("raft background task failed", task=task.get_name(), error=repr(task.exception()))


def _config_to_dict(conf: Configuration) -> dict[str, Any]:
    return {"voters": sorted(conf.voters), "learners": sorted(conf.learners)}


def _config_from_dict(d: Any) -> Configuration:
    return Configuration(frozenset(d.get("voters") or ()), frozenset(d.get("learners") or ()))

