"""Deterministic simulator of a Proconsul Raft cluster (in the spirit of TigerBeetle's VOPR and
FoundationDB's simulator).

One ``random.Random(seed)`` decides everything: message delays (hence reordering), drops, duplicates,
symmetric and asymmetric partitions, crashes (including in the middle of persisting a Ready, with torn
writes), restarts from exactly what was persisted, client writes, ReadIndex and lease reads, membership
changes, leadership transfers and log compaction.  Every message goes through encode_message /
decode_message, so the codec is exercised by real traffic.

A partition either drops messages (as a path that resets connections does) or is *silent*: each server's
outbound stream to a peer across it (``Stream``) keeps what it sends as unacknowledged bytes and delivers
them late, all at once and in order, at TCP's next retransmission after the path comes back (200 ms,
doubling for as long as the path is down), with everything sent after them queued behind.  The
transport's policy runs against that model as the driver runs it: ``registry.raft.links.LinkPolicy``
resets the stream to a silent peer that holds unacknowledged bytes, the kernel's user timeout aborts a
stream whose bytes have waited ``user_timeout_ticks``, and a reset stream drops its backlog and redials
every ``REDIAL_TICKS`` until the path works (``links=None`` models the transport without either: the
stream just waits for the retransmission).

After every tick the simulator checks election safety, log matching, leader completeness, state-machine
safety, that every commit rests on a durable quorum of the committing leader's configuration, that each
server's active configuration is the one its log says (config changes take effect on append), and that
no read returns state older than a write completed before the read began.  Then the faults heal and the
cluster must elect a leader and commit a write within a bound.

A failure raises ``SimFailure`` whose message names the seed and a one-line replay command::

    .venv/bin/python -m tests.raft.sim --seed 17 --nodes 5 [--trace]
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import random
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from registry.raft.links import LinkPolicy
from registry.raft.messages import (
    ConfChange,
    ConfChangeKind,
    Configuration,
    Entry,
    EntryKind,
    HardState,
    Snapshot,
    decode_config_entry,
    decode_message,
    encode_message,
)
from registry.raft.node import (
    ConfigChangeError,
    NotLeaderError,
    PersistentState,
    ProposalDroppedError,
    RaftConfig,
    RaftNode,
    Ready,
    Role,
    TransferError,
)

HEAL_BOUND_TICKS = 400
_NO_CONFIG = Configuration(frozenset())
# The transport, in ticks of the driver's 50 ms (registry.raft.transport.LinkTimeouts):
RTO_TICKS = 4  # TCP's first retransmission timeout, 200 ms; it doubles on every retransmission...
RTO_MAX_TICKS = 2400  # ...up to 120 s
REDIAL_TICKS = 7  # a dial that has not connected in 0.25 s is abandoned, the next begins within 0.1 s
DEFAULT_LINKS = "default"  # Simulator(links=...): the policy for the cluster's election timeout


class SimFailure(AssertionError):
    pass


@dataclass
class Faults:
    """Per-seed fault intensities, themselves drawn from the seed so the sweep covers many mixes."""

    drop: float
    duplicate: float
    max_delay: int
    long_delay: float  # probability of a very late (stale) delivery
    crash: float  # per tick
    crash_in_ready: float  # per Ready processed
    partition: float  # per tick
    propose: float
    read: float
    config_change: float
    transfer: float
    compact: float
    compact_threshold: int
    pre_vote: bool
    silent: float = 0.0  # share of partitions that stall streams silently instead of dropping messages

    @staticmethod
    def draw(rng: random.Random) -> Faults:
        return Faults(
            drop=rng.choice([0.0, 0.02, 0.1, 0.25]),
            duplicate=rng.choice([0.0, 0.02, 0.1]),
            max_delay=rng.choice([1, 2, 4, 8]),
            long_delay=rng.choice([0.0, 0.01, 0.05]),
            crash=rng.choice([0.0, 0.005, 0.02]),
            crash_in_ready=rng.choice([0.0, 0.002, 0.01]),
            partition=rng.choice([0.0, 0.01, 0.04]),
            propose=rng.choice([0.3, 0.7, 1.0]),  # per tick while faults run; 0.2 once healed
            read=rng.choice([0.1, 0.4]),
            config_change=rng.choice([0.0, 0.02, 0.08]),
            transfer=rng.choice([0.0, 0.01, 0.03]),
            compact=rng.choice([0.0, 0.05, 0.3]),
            compact_threshold=rng.choice([3, 10, 40]),
            pre_vote=rng.random() < 0.8,
            silent=rng.choice([0.0, 0.5, 1.0]),
        )

    @staticmethod
    def none() -> Faults:
        """No faults at all (scripted scenarios inject their own): a steady trickle of writes only."""
        return Faults(drop=0.0, duplicate=0.0, max_delay=1, long_delay=0.0, crash=0.0, crash_in_ready=0.0,
                      partition=0.0, propose=0.0, read=0.0, config_change=0.0, transfer=0.0, compact=0.0,
                      compact_threshold=40, pre_vote=True)  # fmt: skip


@dataclass
class Stream:
    """One server's outbound connection to a peer, as the transport keeps it."""

    connected_at: int = 0
    dialing: bool = False
    next_dial: int = 0  # while dialing: when the current attempt ends
    backlog: list[bytes] = field(default_factory=list)  # sent and not acknowledged (the path drops them)
    unacked_since: int = 0  # when the oldest of them was sent
    queued: list[bytes] = field(default_factory=list)  # sent while dialing: they go out once connected

    def retransmits_at(self, now: int) -> bool:
        """Does TCP retransmit the backlog at ``now`` (RTO_TICKS after the first send, doubling)?"""
        due, rto = self.unacked_since + RTO_TICKS, RTO_TICKS
        while due < now:
            rto = min(2 * rto, RTO_MAX_TICKS)
            due += rto
        return due == now


@dataclass
class Storage:
    """A server's disk: only what a Ready asked it to persist (and a crash did not tear off)."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)

    def snapshot_index(self) -> int:
        return self.snapshot.meta.index if self.snapshot else 0

    def last_index(self) -> int:
        return self.entries[-1].index if self.entries else self.snapshot_index()

    def term_at(self, index: int) -> int | None:
        si = self.snapshot_index()
        if index == si:
            return self.snapshot.meta.term if self.snapshot else 0
        if index < si or not self.entries or index < self.entries[0].index or index > self.entries[-1].index:
            return None
        return self.entries[index - self.entries[0].index].term

    def holds(self, index: int, term: int) -> bool:
        """Is entry (index, term), or a snapshot covering it, durable here?"""
        return index <= self.snapshot_index() or self.term_at(index) == term

    def write_entries(self, entries: tuple[Entry, ...]) -> None:
        if not entries:
            return
        first = entries[0].index
        if first > self.last_index() + 1:
            raise SimFailure(f"Ready entries start at {first}, leaving a gap after {self.last_index()}")
        # Writing index i discards every persisted entry with index >= i (the driver contract).
        if self.entries and first <= self.entries[-1].index:
            keep = max(0, first - self.entries[0].index)
            del self.entries[keep:]
        self.entries.extend(entries)

    def install(self, snap: Snapshot, discard: bool = True) -> None:
        self.snapshot = snap
        if discard:
            self.entries = []

    def compact(self, snap: Snapshot) -> None:
        self.snapshot = snap
        self.entries = [e for e in self.entries if e.index > snap.meta.index]

    def persistent_state(self) -> PersistentState:
        return PersistentState(self.hard_state, self.snapshot.meta if self.snapshot else None, tuple(self.entries))


def _fsm_step(digest: bytes, e: Entry) -> bytes:
    h = hashlib.blake2b(digest, digest_size=16)
    h.update(b"%d:%d:%d:" % (e.term, e.index, e.kind))
    h.update(e.data)
    return h.digest()


def _fsm_snapshot_data(index: int, digest: bytes) -> bytes:
    return index.to_bytes(8, "big") + digest


class SimServer:
    """One server: its disk (survives crashes), its RaftNode (does not), and its state machine."""

    def __init__(self, sim: Simulator, node_id: str, storage: Storage) -> None:
        self.sim = sim
        self.id = node_id
        self.storage = storage
        self.node: RaftNode | None = None
        self.down_until = 0
        self.retired = False
        self.fsm_index = 0
        self.fsm_digest = b""
        self.join_index = 0  # for servers added by the simulator: index of the config entry adding them
        self.start()

    def start(self) -> None:
        st = self.storage
        if st.entries and st.entries[-1].index <= st.snapshot_index():
            # As the driver does at start-up: a log wholly covered by the snapshot is what an install
            # interrupted before discarding the old log left behind; it is dropped.
            st.entries = []
        self.fsm_index = st.snapshot_index()
        self.fsm_digest = st.snapshot.data[8:] if st.snapshot else b""
        self.node = RaftNode(
            self.id,
            self.sim.raft_config,
            random.Random(self.sim.rng.getrandbits(64)),
            st.persistent_state(),
            snapshot_source=self._snapshot_source,
        )

    def _snapshot_source(self) -> Snapshot | None:
        snap = self.storage.snapshot
        return snap if snap is not None and snap.meta.index > 0 else None

    @property
    def up(self) -> bool:
        return self.node is not None and not self.retired


class Simulator:
    def __init__(self, seed: int, nodes: int = 3, fault_ticks: int = 250, heal_bound: int = HEAL_BOUND_TICKS,
                 trace: bool = False, faults: Faults | None = None, raft_config: RaftConfig | None = None,
                 links: LinkPolicy | str | None = DEFAULT_LINKS, write_rate: float = 0.2) -> None:  # fmt: skip
        """A cluster drawn from ``seed``; ``faults`` and ``raft_config`` replace the drawn ones (scripted
        scenarios), ``links`` is the transport's policy (None: no resets, no user timeout) and
        ``write_rate`` the chance of a client write per tick once faults have healed."""
        self.seed = seed
        self.n = nodes
        self.rng = random.Random(seed)
        self.faults = Faults.draw(self.rng)
        if faults is not None:
            self.faults = faults
        self.write_rate = write_rate
        self.fault_ticks = fault_ticks
        self.heal_bound = heal_bound
        self.trace_enabled = trace
        # Short election timeouts next to slow messages make contested elections (split votes, crossing
        # vote requests) common; long ones make stable leadership common.  Both matter.
        self.election_tick = self.rng.choice([4, 6, 10])
        self.raft_config = RaftConfig(
            election_tick=self.election_tick,
            heartbeat_tick=1 if self.election_tick < 6 else self.rng.choice([1, 2]),
            max_entries_per_msg=self.rng.choice([1, 3, 64]),
            max_bytes_per_msg=self.rng.choice([64, 4096]),
            max_inflight_msgs=self.rng.choice([1, 4, 64]),
            max_committed_entries_per_ready=self.rng.choice([1, 8, 4096]),
            max_uncommitted_entries=self.rng.choice([16, 64]),
            pre_vote=self.faults.pre_vote,
            check_quorum=True,
            lease_margin_ticks=2,
        )
        if raft_config is not None:
            self.raft_config = raft_config
            self.election_tick = raft_config.election_tick
        self.links = LinkPolicy.for_election(self.election_tick) if links == DEFAULT_LINKS else links
        assert self.links is None or isinstance(self.links, LinkPolicy)
        self.now = 0
        ids = [f"n{i}" for i in range(1, nodes + 1)]
        self.next_id = nodes + 1
        boot = PersistentState.bootstrap(ids)
        self.servers: dict[str, SimServer] = {}
        for i in ids:
            self.servers[i] = SimServer(self, i, Storage(hard_state=boot.hard_state, entries=list(boot.entries)))
        self.network: list[tuple[int, float, int, str, str, bytes]] = []
        self.seq = 0
        self.link_last: dict[tuple[str, str], int] = {}
        self.blocked: set[tuple[str, str]] = set()  # links whose messages are dropped
        self.stalled: set[tuple[str, str]] = set()  # links whose packets vanish silently (streams stall)
        self.streams: dict[tuple[str, str], Stream] = {}
        self.last_leader: dict[str, str | None] = {}
        self.partition_until = 0
        self.trace: deque[str] = deque(maxlen=400)
        self.digest = hashlib.blake2b(digest_size=16)
        # Invariant bookkeeping.
        self.leader_of_term: dict[int, str] = {}
        self.entry_seen: dict[tuple[int, int], tuple[int, bytes, int | None]] = {}
        self.applied: dict[int, tuple[int, int, bytes]] = {}  # index -> (term, kind, data) of the committed entry
        self.digest_at: dict[int, bytes] = {0: b""}
        self.commit_term: dict[int, int] = {}
        self.max_commit = (0, 0)
        self.committed_configs: list[tuple[int, Configuration]] = []
        self.leader_commit_seen: dict[tuple[str, int], int] = {}
        self.pending_writes: dict[tuple[str, int], tuple[int, bytes]] = {}
        self.completed_writes: list[tuple[int, bytes]] = []
        self.max_completed_write = 0
        self.write_counter = 0
        self.reads: dict[bytes, tuple[str, int]] = {}  # context -> (server, required index)
        self.awaiting_apply: list[tuple[str, bytes, int, int]] = []  # (server, context, index, required)
        self.read_counter = 0
        self.stats = {"writes": 0, "reads": 0, "lease_reads": 0, "crashes": 0, "snapshots_sent": 0,
                      "config_changes": 0, "transfers": 0, "stalls": 0, "late_deliveries": 0,
                      "link_resets": 0}  # fmt: skip

    # ============================================================================ diagnostics

    def log(self, text: str) -> None:
        self.trace.append(f"t={self.now} {text}")
        if self.trace_enabled:
            print(f"t={self.now} {text}")

    def fail(self, what: str) -> SimFailure:
        tail = "\n".join(list(self.trace)[-60:])
        return SimFailure(
            f"{what}\n  seed={self.seed} nodes={self.n} tick={self.now}\n"
            f"  replay: .venv/bin/python -m tests.raft.sim --seed {self.seed} --nodes {self.n} --trace\n"
            f"  last events:\n{tail}"
        )

    # ============================================================================ network

    def send(self, src: str, data: bytes, dst: str) -> None:
        if self.hold(src, dst, data):
            return
        f = self.faults
        healing = self.now >= self.fault_ticks
        if not healing and self.rng.random() < f.drop:
            return
        copies = 2 if not healing and self.rng.random() < f.duplicate else 1
        for _ in range(copies):
            self.seq += 1
            if healing:
                # A healed network behaves like a LAN under TCP: fast, and in order on each link.
                at = max(self.now + 1 + self.rng.randint(0, 1), self.link_last.get((src, dst), 0))
                self.link_last[(src, dst)] = at
                heapq.heappush(self.network, (at, 0.0, self.seq, src, dst, data))
                continue
            at = self.now + 1 + self.rng.randint(0, f.max_delay)
            if self.rng.random() < f.long_delay:
                at += self.rng.randint(self.election_tick, 4 * self.election_tick)
            heapq.heappush(self.network, (at, self.rng.random(), self.seq, src, dst, data))

    def deliver_due(self) -> None:
        net = self.network
        while net and net[0][0] <= self.now:
            _, _, _, src, dst, data = heapq.heappop(net)
            if (src, dst) in self.blocked:
                continue
            if (src, dst) in self.stalled:
                self.hold(src, dst, data, stalled=True)  # in flight when the path died: now unacknowledged
                continue
            server = self.servers.get(dst)
            if server is None or not server.up:
                continue
            msg = decode_message(data)
            self.digest.update(data)
            assert server.node is not None
            server.node.step(msg)
            self.check_leader(server)

    # ============================================================================ streams

    def stream(self, src: str, dst: str) -> Stream:
        st = self.streams.get((src, dst))
        if st is None:
            st = self.streams[(src, dst)] = Stream(connected_at=self.now)
        return st

    def path_works(self, src: str, dst: str) -> bool:
        """A TCP stream needs both directions: data one way, acknowledgements the other."""
        return (src, dst) not in self.stalled and (dst, src) not in self.stalled

    def hold(self, src: str, dst: str, data: bytes, stalled: bool = False) -> bool:
        """Keep a message on its stream instead of the network, if the stream cannot carry it now: it is
        redialling (the message waits for the connection), its path drops packets, or earlier bytes
        still wait for their retransmission (TCP delivers in order)."""
        st = self.streams.get((src, dst))
        if st is None and not stalled and (src, dst) not in self.stalled:
            return False
        st = st or self.stream(src, dst)
        if st.dialing:
            if not stalled:  # (a message in flight on the connection that was reset is gone with it)
                st.queued.append(data)
            return True
        if stalled or (src, dst) in self.stalled or st.backlog:
            if not st.backlog:
                st.unacked_since = self.now
            st.backlog.append(data)
            return True
        return False

    def reset_stream(self, src: str, dst: str, why: str) -> None:
        """Drop the connection with everything unacknowledged on it (also what is still in flight), and
        redial at once."""
        st = self.stream(src, dst)
        st.backlog.clear()
        st.queued.clear()
        st.dialing, st.next_dial = True, self.now + 1
        before = len(self.network)
        self.network = [m for m in self.network if (m[3], m[4]) != (src, dst)]
        if len(self.network) != before:
            heapq.heapify(self.network)
        self.stats["link_resets"] += 1
        self.log(f"{src}->{dst} stream reset: {why}")

    def links_step(self) -> None:
        """Once a tick, after the servers ticked: dials, retransmissions, the kernel's user timeout and the
        link policy, in that order per stream."""
        now = self.now
        policy = self.links
        for (src, dst), st in sorted(self.streams.items()):
            if st.dialing:
                if now >= st.next_dial:
                    if self.path_works(src, dst):
                        st.dialing, st.connected_at = False, now
                        queued, st.queued = st.queued, []
                        for data in queued:
                            self.send(src, data, dst)
                    else:
                        st.queued.clear()  # a failed dial drops what waited for it
                        st.next_dial = now + REDIAL_TICKS
                continue
            if not st.backlog:
                continue
            if policy is not None and now - st.unacked_since >= policy.user_timeout_ticks:
                self.reset_stream(src, dst, "user timeout")
            elif self.path_works(src, dst) and st.retransmits_at(now):
                backlog, st.backlog = st.backlog, []
                self.stats["late_deliveries"] += len(backlog)
                self.log(f"{src}->{dst} backlog of {len(backlog)} delivered {now - st.unacked_since} ticks late")
                for data in backlog:
                    self.seq += 1
                    at = max(now + 1, self.link_last.get((src, dst), 0))
                    self.link_last[(src, dst)] = at
                    heapq.heappush(self.network, (at, 0.0, self.seq, src, dst, data))
        if policy is None:
            return
        for s in sorted(self.live(), key=lambda s: s.id):
            node = s.node
            assert node is not None
            last = self.last_leader[s.id] = policy.followed(node.leader_id, s.id, self.last_leader.get(s.id))
            if not any(st.backlog for (src, _), st in self.streams.items() if src == s.id):
                continue  # nothing unacknowledged: no reset is due whatever the silence (spares status())
            status = node.status()
            for peer in policy.silent_peers(status, last):
                st = self.streams.get((s.id, peer))
                if st is not None and not st.dialing and policy.should_reset(bool(st.backlog), now - st.connected_at):
                    self.reset_stream(s.id, peer, "silent peer")

    def stall(self, links: set[tuple[str, str]]) -> None:
        """Make these links drop packets silently (streams across them stall)."""
        self.stalled = set(links)
        self.stats["stalls"] += 1
        self.log(f"silent partition: {sorted(links)}")

    # ============================================================================ ready processing

    def process_ready(self, server: SimServer) -> None:
        node = server.node
        assert node is not None
        rd = node.ready()
        self.check_ready_entries(server, rd)
        phase = None
        if self.now < self.fault_ticks and self.rng.random() < self.faults.crash_in_ready:
            phase = self.rng.choice(["before", "torn", "persisted", "sent"])
        st = server.storage
        if phase == "before":
            self.crash(server, "before persisting a Ready")
            return
        if phase == "torn":
            # Written in order (snapshot, entries, HardState); the crash cuts the sequence anywhere, and the
            # snapshot's discarding of old entries may not have happened yet.
            snapshot_done = rd.snapshot is None or self.rng.random() < 0.5
            if rd.snapshot is not None and snapshot_done:
                st.install(rd.snapshot, discard=self.rng.random() < 0.5)
            keep = self.rng.randint(0, len(rd.entries)) if snapshot_done else 0
            st.write_entries(rd.entries[:keep])
            if snapshot_done and keep == len(rd.entries) and rd.hard_state is not None and self.rng.random() < 0.5:
                st.hard_state = rd.hard_state
            self.crash(server, f"torn write ({keep}/{len(rd.entries)} entries)")
            return
        # 1. persist
        if rd.snapshot is not None:
            st.install(rd.snapshot)
        st.write_entries(rd.entries)
        if rd.hard_state is not None:
            st.hard_state = rd.hard_state
        if st.hard_state.commit > st.last_index():
            raise self.fail(f"{server.id}: durable commit {st.hard_state.commit} beyond durable log {st.last_index()}")
        if phase == "persisted":
            self.crash(server, "after persisting, before sending")
            return
        # 2. send
        for msg in rd.messages:
            data = encode_message(msg)
            self.send(server.id, data, msg.dst)
            if type(msg).__name__ == "InstallSnapshot":
                self.stats["snapshots_sent"] += 1
        if phase == "sent":
            self.crash(server, "after sending, before applying")
            return
        # 3. apply
        if rd.snapshot is not None:
            self.restore_fsm(server, rd.snapshot)
        for e in rd.committed_entries:
            self.apply(server, e)
        for rs in rd.read_states:
            req = self.reads.pop(rs.context, None)
            if req is None:
                raise self.fail(f"{server.id}: ReadState for unknown context {rs.context!r}")
            self.awaiting_apply.append((server.id, rs.context, rs.index, req[1]))
        for ctx in rd.dropped_reads:
            self.reads.pop(ctx, None)
        node.advance(rd)
        self.check_leader(server)

    def check_ready_entries(self, server: SimServer, rd: Ready) -> None:
        node = server.node
        assert node is not None
        for e in rd.entries:
            prev_term = node.log.term(e.index - 1)
            key = (e.index, e.term)
            seen = self.entry_seen.get(key)
            value = (int(e.kind), e.data, prev_term)
            if seen is None:
                self.entry_seen[key] = value
                if e.kind is EntryKind.CONFIG:
                    self.check_config_entry(server, e)
            elif seen[:2] != value[:2] or (seen[2] is not None and prev_term is not None and seen[2] != prev_term):
                raise self.fail(f"log matching: entry {key} differs between servers: {seen} vs {value}")

    def check_config_entry(self, server: SimServer, e: Entry) -> None:
        """A new config entry must differ from the configuration before it by exactly one server."""
        node = server.node
        assert node is not None
        new, change = decode_config_entry(e.data)
        old = self.config_before(node, e.index)
        if old is None:
            return
        if change.kind is ConfChangeKind.BOOTSTRAP:
            ok = e.index == 1 and old == _NO_CONFIG
        elif change.kind is ConfChangeKind.ADD_LEARNER:
            ok = new.voters == old.voters and new.learners == old.learners | {change.node_id}
        elif change.kind is ConfChangeKind.PROMOTE_LEARNER:
            ok = new.voters == old.voters | {change.node_id} and new.learners == old.learners - {change.node_id}
        else:
            ok = new.voters == old.voters - {change.node_id} and new.learners == old.learners - {change.node_id}
        if not ok:
            raise self.fail(f"config entry {e.index} is not a single-server change of {old}: {new} ({change})")

    def config_before(self, node: RaftNode, index: int) -> Configuration | None:
        for e in node.log.reversed_entries():
            if e.index < index and e.kind is EntryKind.CONFIG:
                return decode_config_entry(e.data)[0]
        base = node.log.snapshot_index
        if base >= index:
            return None
        return self.committed_config_at(base)

    def committed_config_at(self, index: int) -> Configuration:
        config = _NO_CONFIG
        for i, c in self.committed_configs:
            if i > index:
                break
            config = c
        return config

    def restore_fsm(self, server: SimServer, snap: Snapshot) -> None:
        index = snap.meta.index
        digest = snap.data[8:]
        if int.from_bytes(snap.data[:8], "big") != index:
            raise self.fail(f"{server.id}: snapshot data for {index} describes another index")
        known = self.digest_at.get(index)
        if known is not None and known != digest:
            raise self.fail(f"state-machine safety: snapshot at {index} has a different state")
        server.fsm_index = index
        server.fsm_digest = digest
        for key in [k for k in self.pending_writes if k[0] == server.id and k[1] <= index]:
            del self.pending_writes[key]  # outcome unknown to this client
        self.log(f"{server.id} installed snapshot at {index}")

    def apply(self, server: SimServer, e: Entry) -> None:
        if e.index != server.fsm_index + 1:
            raise self.fail(f"{server.id}: applied {e.index} after {server.fsm_index}")
        value = (e.term, int(e.kind), e.data)
        seen = self.applied.get(e.index)
        if seen is None:
            self.applied[e.index] = value
            if e.kind is EntryKind.CONFIG:
                config = decode_config_entry(e.data)[0]
                self.committed_configs.append((e.index, config))
                self.committed_configs.sort(key=lambda x: x[0])
        elif seen != value:
            raise self.fail(f"state-machine safety: index {e.index} applied as {seen} and as {value}")
        server.fsm_digest = _fsm_step(server.fsm_digest, e)
        server.fsm_index = e.index
        known = self.digest_at.setdefault(e.index, server.fsm_digest)
        if known != server.fsm_digest:
            raise self.fail(f"state-machine safety: state after {e.index} differs between servers")
        pending = self.pending_writes.pop((server.id, e.index), None)
        if pending is not None and pending == (e.term, e.data):
            self.completed_writes.append((e.index, e.data))
            self.max_completed_write = max(self.max_completed_write, e.index)

    # ============================================================================ faults and clients

    def crash(self, server: SimServer, why: str) -> None:
        server.node = None
        # Its connections die with it (the peers' streams to it are reset when it comes back, or sooner).
        for key in [k for k in self.streams if server.id in k]:
            del self.streams[key]
        self.last_leader.pop(server.id, None)
        server.down_until = self.now + self.rng.randint(1, 5 * self.election_tick)
        self.stats["crashes"] += 1
        for key in [k for k in self.pending_writes if k[0] == server.id]:
            del self.pending_writes[key]
        for ctx in [c for c, (sid, _) in self.reads.items() if sid == server.id]:
            del self.reads[ctx]
        self.awaiting_apply = [a for a in self.awaiting_apply if a[0] != server.id]
        self.log(f"{server.id} CRASH {why}")

    def restart(self, server: SimServer) -> None:
        server.start()
        self.log(f"{server.id} restart (snapshot {server.storage.snapshot_index()}, last {server.storage.last_index()})")

    def live(self) -> list[SimServer]:
        return [s for s in self.servers.values() if s.up]

    def leaders(self) -> list[SimServer]:
        return [s for s in self.live() if s.node is not None and s.node.role is Role.LEADER]

    def random_events(self, healing: bool) -> None:
        f = self.faults
        rng = self.rng
        if not healing:
            if rng.random() < f.crash:
                victims = self.live()
                if victims:
                    self.crash(rng.choice(victims), "at random")
            if rng.random() < f.partition:
                self.partition()
            if (self.blocked or self.stalled) and self.now >= self.partition_until:
                self.blocked.clear()
                self.stalled.clear()
                self.log("partition healed")
        for s in self.servers.values():
            if s.node is None and not s.retired and (healing or self.now >= s.down_until):
                self.restart(s)
        if rng.random() < (self.write_rate if healing else f.propose):
            self.client_write()
        if rng.random() < f.read:
            self.client_read()
        if not healing:
            if rng.random() < f.config_change:
                self.change_membership()
            if rng.random() < f.transfer:
                self.transfer()
        for s in self.live():
            if rng.random() < f.compact:
                self.compact(s)

    def partition(self) -> None:
        rng = self.rng
        ids = sorted(s.id for s in self.servers.values() if not s.retired)
        kind = rng.choice(["split", "isolate", "asymmetric"])
        self.blocked.clear()
        if kind == "split":
            side = set(rng.sample(ids, rng.randint(1, len(ids) - 1)))
            for a in ids:
                for b in ids:
                    if (a in side) != (b in side):
                        self.blocked.add((a, b))
        elif kind == "isolate":
            leaders = self.leaders()
            victim = leaders[0].id if leaders and rng.random() < 0.7 else rng.choice(ids)
            for b in ids:
                if b != victim:
                    self.blocked.add((victim, b))
                    self.blocked.add((b, victim))
        else:
            for _ in range(rng.randint(1, len(ids))):
                a, b = rng.sample(ids, 2)
                self.blocked.add((a, b))
        self.partition_until = self.now + rng.randint(self.election_tick, 6 * self.election_tick)
        self.stalled.clear()
        if rng.random() < self.faults.silent:
            self.stall(self.blocked)
            self.blocked = set()
        self.log(f"partition {kind}: {sorted(self.blocked or self.stalled)}")

    def client_write(self) -> None:
        live = self.live()
        if not live:
            return
        leaders = [s for s in live if s.node is not None and s.node.role is Role.LEADER]
        target = self.rng.choice(leaders) if leaders and self.rng.random() < 0.9 else self.rng.choice(live)
        node = target.node
        assert node is not None
        self.write_counter += 1
        data = b"w%d" % self.write_counter
        try:
            batch = [data] if self.rng.random() < 0.7 else [data + b".%d" % i for i in range(self.rng.randint(2, 6))]
            indexes = node.propose_batch(batch)
        except (NotLeaderError, ProposalDroppedError):
            return
        for index, d in zip(indexes, batch, strict=True):
            self.pending_writes[(target.id, index)] = (node.term, d)
        self.stats["writes"] += len(batch)

    def client_read(self) -> None:
        live = self.live()
        if not live:
            return
        target = self.rng.choice(live)
        node = target.node
        assert node is not None
        if node.role is Role.LEADER and self.rng.random() < 0.3:
            index = node.lease_read_index()
            if index is not None:
                self.stats["lease_reads"] += 1
                self.awaiting_apply.append((target.id, b"lease", index, self.max_completed_write))
            return
        self.read_counter += 1
        ctx = b"r%d" % self.read_counter
        try:
            node.read_index(ctx)
        except NotLeaderError:
            return
        self.reads[ctx] = (target.id, self.max_completed_write)
        self.stats["reads"] += 1

    def finish_reads(self) -> None:
        still = []
        for sid, ctx, index, required in self.awaiting_apply:
            server = self.servers[sid]
            if server.fsm_index < index:
                still.append((sid, ctx, index, required))
                continue
            # The read returns the state machine as it is now; a write acknowledged before the read began
            # must be in it.  Checking the read index itself is the stronger statement.
            if index < required:
                raise self.fail(
                    f"stale read on {sid} ({ctx!r}): read index {index} misses a write completed at {required}"
                )
            if self.digest_at.get(server.fsm_index) != server.fsm_digest:
                raise self.fail(f"read on {sid} returned a state no other server had at {server.fsm_index}")
        self.awaiting_apply = still

    def change_membership(self) -> None:
        leaders = self.leaders()
        if not leaders:
            return
        leader = self.rng.choice(leaders)
        node = leader.node
        assert node is not None
        config = node.configuration
        rng = self.rng
        if config.learners:
            change = ConfChange(ConfChangeKind.PROMOTE_LEARNER, sorted(config.learners)[0])
            if rng.random() < 0.2:
                change = ConfChange(ConfChangeKind.REMOVE_NODE, sorted(config.learners)[0])
        elif len(config.voters) < self.n:
            change = ConfChange(ConfChangeKind.ADD_LEARNER, f"n{self.next_id}", b"addr")
        elif len(config.voters) >= 3:
            change = ConfChange(ConfChangeKind.REMOVE_NODE, rng.choice(sorted(config.voters)))
        else:
            return
        try:
            index = node.propose_config_change(change)
        except (ConfigChangeError, ProposalDroppedError):
            return
        self.stats["config_changes"] += 1
        self.check_leader(leader)
        self.log(f"{leader.id} proposes {change.kind.name} {change.node_id} at {index}")
        if change.kind is ConfChangeKind.ADD_LEARNER:
            self.next_id += 1
            server = SimServer(self, change.node_id, Storage())
            server.join_index = index
            self.servers[change.node_id] = server

    def transfer(self) -> None:
        leaders = self.leaders()
        if not leaders:
            return
        leader = leaders[0]
        node = leader.node
        assert node is not None
        others = [v for v in sorted(node.configuration.voters) if v != leader.id]
        if not others:
            return
        target = self.rng.choice(others)
        try:
            node.transfer_leadership(target)
        except TransferError:
            return
        self.stats["transfers"] += 1
        self.log(f"{leader.id} transfers leadership to {target}")

    def compact(self, server: SimServer) -> None:
        node = server.node
        assert node is not None
        index = server.fsm_index
        if index - node.log.snapshot_index < self.faults.compact_threshold or node.applied_index != index:
            return
        meta = node.snapshot_meta(index)
        server.storage.compact(Snapshot(meta, _fsm_snapshot_data(index, server.fsm_digest)))
        # Keep a few entries in memory sometimes, like a driver that retains a tail for slow followers.
        node.compact(max(node.log.snapshot_index, index - self.rng.randint(0, 3)))

    def retire_removed(self) -> None:
        """Shut down servers a committed configuration no longer includes (and joiners whose addition
        was lost)."""
        if not self.committed_configs:
            return
        latest_index, latest = self.committed_configs[-1]
        for s in self.servers.values():
            if s.retired:
                continue
            if s.join_index and s.join_index <= latest_index:
                entry = self.applied.get(s.join_index)
                if entry is None or entry[1] != EntryKind.CONFIG or decode_config_entry(entry[2])[1].node_id != s.id:
                    s.retired = True
                    self.log(f"{s.id} retired: its addition did not commit")
                    continue
            if s.id not in latest.members() and (not s.join_index or s.join_index <= latest_index):
                s.retired = True
                self.log(f"{s.id} retired: removed by config at {latest_index}")

    # ============================================================================ invariants

    def check_leader(self, s: SimServer) -> None:
        """Run after every single event on a server: election safety, and that a leader's commit rests on
        a durable quorum of the configuration it is using at that moment (config changes take effect on
        append, so that is the newest configuration in its log)."""
        node = s.node
        if node is None or node.role is not Role.LEADER:
            return
        term = node.term
        holder = self.leader_of_term.setdefault(term, s.id)
        if holder != s.id:
            raise self.fail(f"election safety: {holder} and {s.id} both lead term {term}")
        log = node.log
        c = log.commit
        key = (s.id, term)
        seen = self.leader_commit_seen.setdefault(key, c)  # commits from before its election are not its own
        if c > seen:
            self.leader_commit_seen[key] = c
            ct = log.term(c)
            assert ct is not None
            voters = node.configuration.voters
            durable = sum(1 for v in voters if v in self.servers and self.servers[v].storage.holds(c, ct))
            if durable < len(voters) // 2 + 1:
                raise self.fail(f"{s.id} committed ({c}, {ct}) held durably by {durable} of voters {sorted(voters)}")

    def check_lease(self, s: SimServer) -> None:
        """While a leader's lease is valid (the simulator's clocks are perfect, so the lease's assumption
        holds), no newer leader may exist, and a read served from its state at its commit index would
        include every write already acknowledged to a client."""
        node = s.node
        assert node is not None
        for other in self.leaders():
            assert other.node is not None
            if other.node.term > node.term:
                raise self.fail(f"lease: {s.id} holds a lease in term {node.term} while {other.id} leads term {other.node.term}")
        if node.commit_index < self.max_completed_write:
            raise self.fail(
                f"lease: {s.id} holds a lease at commit {node.commit_index} but a write completed at {self.max_completed_write}"
            )

    def check(self) -> None:
        for s in self.live():
            node = s.node
            assert node is not None
            log = node.log
            term = node.term
            if node.role is Role.LEADER:
                self.check_leader(s)
                # Leader completeness: the leader holds the highest committed entry (and, by log
                # matching, everything before it).
                ci, ct = self.max_commit
                if ci > log.snapshot_index and log.term(ci) != ct:
                    raise self.fail(f"leader completeness: leader {s.id} of term {term} lacks committed ({ci}, {ct})")
                if node.lease_valid():
                    self.check_lease(s)
            c = log.commit
            if c:
                t = log.term(c)
                assert t is not None
                known = self.commit_term.setdefault(c, t)
                if known != t:
                    raise self.fail(f"two servers committed different entries at {c}: terms {known} and {t}")
                if c > self.max_commit[0]:
                    self.max_commit = (c, t)
            # Config changes take effect on append: the active configuration is the newest in the log.
            expected = None
            for e in log.reversed_entries():
                if e.kind is EntryKind.CONFIG:
                    expected = decode_config_entry(e.data)[0]
                    break
            if expected is None:
                # Nothing in the retained log: the configuration covered by the snapshot (or none at all
                # for a joiner that has received nothing yet).
                expected = self.committed_config_at(log.snapshot_index)
            if node.configuration != expected:
                raise self.fail(f"{s.id} uses {node.configuration} but its log says {expected}")

    # ============================================================================ main loop

    def step(self, healing: bool) -> None:
        self.deliver_due()
        for s in sorted(self.servers.values(), key=lambda s: s.id):
            if s.up:
                assert s.node is not None
                s.node.tick()
                self.check_leader(s)
        self.links_step()
        self.random_events(healing)
        for _ in range(4):
            busy = False
            for s in sorted(self.servers.values(), key=lambda s: s.id):
                if s.up:
                    assert s.node is not None
                    if s.node.has_ready():
                        busy = True
                        self.process_ready(s)
            if not busy:
                break
        self.finish_reads()
        self.retire_removed()
        self.check()
        for s in self.leaders():
            assert s.node is not None
            self.digest.update(b"L%s:%d" % (s.id.encode(), s.node.term))

    def run(self) -> SimResult:
        try:
            return self._run()
        except SimFailure:
            raise
        except Exception as exc:
            # The core refusing an operation (say, truncating a committed entry) is a finding too; report
            # it with the seed like any other.
            raise self.fail(f"unexpected {type(exc).__name__}: {exc}") from exc

    def _run(self) -> SimResult:
        while self.now < self.fault_ticks:
            self.step(healing=False)
            self.now += 1
        self.blocked.clear()
        self.stalled.clear()
        self.log("=== faults healed")
        heal_start = self.now
        marker: tuple[str, int, int] | None = None
        first_leader_at = None
        while True:
            if self.now - heal_start > self.heal_bound:
                raise self.fail(
                    f"liveness: no committed write {self.heal_bound} ticks after faults healed "
                    f"(leader seen at {first_leader_at}, marker {marker})"
                )
            self.step(healing=True)
            self.now += 1
            leaders = self.leaders()
            if leaders and first_leader_at is None:
                first_leader_at = self.now
            if marker is not None:
                _, index, term = marker
                entry = self.applied.get(index)
                if entry is not None and entry[0] != term:
                    marker = None  # lost to a leader change; write again
                elif entry is not None and self.committed_configs:
                    members = self.committed_configs[-1][1].members()
                    if all(self.servers[m].fsm_index >= index for m in members):
                        break
            if marker is None and leaders:
                node = leaders[0].node
                assert node is not None
                try:
                    index = node.propose(b"liveness")
                except (NotLeaderError, ProposalDroppedError):
                    continue
                marker = (leaders[0].id, index, node.term)
        self.final_checks()
        stats = {**self.stats, "terms": max(self.leader_of_term, default=0)}
        return SimResult(self.seed, self.n, self.now, self.now - heal_start, self.digest.hexdigest(), stats)

    def final_checks(self) -> None:
        for index, data in self.completed_writes:
            entry = self.applied.get(index)
            if entry is None or entry[2] != data:
                raise self.fail(f"acknowledged write {data!r} at {index} is not in the committed log")
        for s in self.live():
            if self.digest_at.get(s.fsm_index) != s.fsm_digest:
                raise self.fail(f"{s.id} ended with a state no other server had at {s.fsm_index}")


@dataclass(frozen=True)
class SimResult:
    seed: int
    nodes: int
    ticks: int
    recovery_ticks: int
    trace_digest: str
    stats: dict[str, Any]


def run_seed(seed: int, nodes: int = 3, trace: bool = False) -> SimResult:
    return Simulator(seed, nodes, trace=trace).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Replay one seed of the Raft simulator.")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--trace", action="store_true", help="print every event")
    args = parser.parse_args(argv)
    sim = Simulator(args.seed, args.nodes, trace=args.trace)
    print(f"faults: {sim.faults}")
    try:
        result = sim.run()
    except SimFailure as exc:
        print(exc, file=sys.stderr)
        return 1
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
