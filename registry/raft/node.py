"""The pure Raft core: ``RaftNode``.

No IO, no clock, no threads.  Time arrives as ``tick()`` calls; randomness comes only from the
``random.Random`` passed in; messages arrive through ``step()`` and leave through ``ready()``.  Shaped
after etcd-io/raft (facts and design, not code).

Driver contract
===============

The driver owns the disk, the network, the state machine and the clock.  It loops::

    node.tick()            # every tick interval, from a monotonic clock
    node.step(msg)         # for every message received (decode_message() first)
    node.propose(data)     # client writes (leader only)
    while node.has_ready():
        rd = node.ready()
        1. persist:  if rd.snapshot: store it durably, discard EVERY persisted log entry (the log now
                     starts after rd.snapshot.meta.index) and restore the state machine from it.
                     Then append rd.entries: writing an entry with index i first discards every
                     persisted entry with index >= i.  Then write rd.hard_state if it is not None.
                     fsync (when rd.must_sync) BEFORE step 2: a message may promise that these are
                     durable (a vote, an acknowledged entry), and the leader counts its own entries
                     only once advance() says they are durable.
        2. send:     rd.messages, in order (encode_message()).  Losing, delaying, duplicating or
                     reordering them is fine; sending them before step 1 is not.
        3. apply:    rd.committed_entries to the state machine, in order.  NORMAL entries carry client
                     data; NOOP entries carry nothing; CONFIG entries carry
                     decode_config_entry(data) -> (configuration, change) for the driver's own use
                     (addresses in change.context).  Answer rd.read_states (a read for ``context``
                     may be served once the state machine has applied ``index``) and fail
                     rd.dropped_reads (leadership was lost; retry elsewhere).
        4. node.advance(rd)
    Only one Ready is outstanding at a time; step/tick/propose may be called between ready() and
    advance() (their effects go into the next Ready).

Exception (thesis 10.2.1): a LEADER's AppendEntries and Heartbeat messages may go out while its own
write of the same entries is still in flight; it counts its own entries only after advance(), so no
commit rests on them early.  Every other message waits for the fsync.

Starting: every founding server of a new cluster starts from ``PersistentState.bootstrap(voters)`` (the
initial configuration is log entry 1, identical everywhere), persisted before the first Ready; a
server that will be added later starts from ``PersistentState.empty()`` and waits for a leader.

Crash recovery: construct a new RaftNode from exactly what step 1 persisted (``PersistentState``).
A crash in the middle of step 1 may lose any suffix of that Ready's entries and its HardState (nothing
of it was acknowledged to anyone yet), as long as a HardState is never durable without the snapshot
and entries written before it.  If entries of a newer term survived but the HardState did not, the
node adopts that term (without a vote).  A snapshot and the discarding of old entries need not be
atomic: loading applies Figure 13 (entries after the snapshot survive only if the entry at the
snapshot index has the snapshot's term).

Snapshots: after applying through index i the driver may write a snapshot of its state machine
with ``meta = node.snapshot_meta(i)``, persist it, and then call ``node.compact(j)`` for any j <= i
(and drop its own WAL entries <= j).  A node that compacts must be given ``snapshot_source``: a
callable returning the latest durable ``Snapshot`` (meta + data), or None if none is ready yet (the
leader retries after the next heartbeat).  The leader calls it when a follower needs entries it no
longer has and sends the result as one InstallSnapshot message; the follower's Ready then carries it
in ``rd.snapshot``.

Client operations: ``propose``/``propose_batch`` (leader only; the command took effect iff the entry
applied at the returned index has the term the leader had when proposing), ``propose_config_change``
(one ConfChange at a time), ``transfer_leadership``, ``read_index`` (linearizable reads, on any
server; answered through Ready.read_states), ``lease_valid``/``lease_read_index`` (default-mode reads on
the leader), ``status``.  Refusals raise typed errors: NotLeaderError (carries the known leader),
ProposalDroppedError (retry), ConfigChangeError, TransferError.

Design decisions
================

* Configuration changes take effect when the entry is APPENDED to a server's log (thesis 4.1), not when
  applied (etcd).  A server's quorums are then a function of its log alone, so the core decides them
  without waiting on how fast the driver applies, and the simulator can check every server's active
  configuration against its log.  The price: a truncated config entry reverts to the previous
  configuration, which ``_entries_replaced`` handles.  Changes are single-server, only one may be
  uncommitted at a time, and none is accepted until the leader's no-op of its term has committed
  (Ongaro's fix for the single-server change bug).  New servers join as learners and are promoted
  only once they hold everything committed.  A leader that removes itself keeps leading (without
  counting itself) until the new configuration commits, then steps down and hands over with
  TimeoutNow.
* Leader stickiness is time based: a server ignores (pre)votes for a higher term while it is leader,
  or within election_tick ticks of hearing from a leader, or within election_tick ticks of starting
  up (it may have acknowledged heartbeats just before a crash, and a leader's lease counts on those).
  Because the clock keeps running while a server campaigns, pre-candidates cannot deadlock each other
  by remembering a dead leader (etcd #8334).  TimeoutNow campaigns bypass stickiness.
* Lease reads (``lease_valid``) assume that no server's tick rate differs from another's by more than
  lease_margin_ticks / election_tick (20% with the defaults), that ticks come from a monotonic clock,
  and that a process pause is counted by ticks (a paused or stalled ticker breaks this, etcd #13527).
  The lease is measured from when a heartbeat was SENT, not when its ack arrived, and is forfeited
  for the rest of the term once the leader sends TimeoutNow (the target may win without waiting).
  ReadIndex (``read_index``) makes no timing assumption and is the linearizable path.
* The leader counts its own log only up to what the driver has persisted, so no commit decision ever
  rests on an entry that a leader crash could lose (etcd #14370 is the single-node version of that bug).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Final

from registry.raft.log import RaftLog
from registry.raft.messages import (
    MAX_CONTEXT_BYTES,
    MAX_ENTRY_BYTES,
    AppendEntries,
    AppendEntriesResponse,
    ConfChange,
    ConfChangeKind,
    Configuration,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    Message,
    PreVote,
    PreVoteResponse,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    Snapshot,
    SnapshotMeta,
    TimeoutNow,
    decode_config_entry,
    encode_config_entry,
    validate_node_id,
)

__all__ = [
    "RaftNode",
    "RaftConfig",
    "PersistentState",
    "Ready",
    "ReadState",
    "Role",
    "ProgressState",
    "PeerStatus",
    "Status",
    "RaftError",
    "NotLeaderError",
    "ProposalDroppedError",
    "ConfigChangeError",
    "TransferError",
    "ReadyError",
]

_EMPTY_CONFIG: Final = Configuration(frozenset(), frozenset())


class RaftError(Exception):
    """Base of the errors the core raises to its caller."""


class NotLeaderError(RaftError):
    """The operation needs the leader.  ``leader_id`` is the leader this node knows of, if any."""

    def __init__(self, leader_id: str | None) -> None:
        super().__init__(
            f"not the leader; the leader is {leader_id}" if leader_id else "not the leader, and no leader is known"
        )
        self.leader_id = leader_id


class ProposalDroppedError(RaftError):
    """The leader refused a proposal for now (leadership transfer in progress, or too many uncommitted
    entries); retry."""


class ConfigChangeError(RaftError):
    """A membership change was refused.  ``retryable`` is True when the same request can succeed later
    without anything else changing (the term's first commit, a pending change or a learner's catch-up
    is still under way), False when the request itself is wrong."""

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class TransferError(RaftError):
    """A leadership transfer request was invalid."""


class ReadyError(RaftError):
    """ready()/advance() were called out of order."""


class Role(Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class ProgressState(Enum):
    PROBE = "probe"  # one AppendEntries at a time until the follower's log position is found
    REPLICATE = "replicate"  # pipelined: next_index runs ahead optimistically, bounded by the inflight limit
    SNAPSHOT = "snapshot"  # an InstallSnapshot is in flight; nothing else is sent


@dataclass(frozen=True, slots=True)
class RaftConfig:
    election_tick: int = 10
    heartbeat_tick: int = 1
    max_entries_per_msg: int = 512
    max_bytes_per_msg: int = 1 << 20
    max_inflight_msgs: int = 256
    max_committed_entries_per_ready: int = 4096
    # Backpressure: the leader refuses proposals (ProposalDroppedError) while this many entries are
    # appended but not committed, so a slow quorum cannot make the log grow without bound.
    max_uncommitted_entries: int = 8192
    pre_vote: bool = True
    check_quorum: bool = True
    lease_margin_ticks: int = 2
    # How long a follower may sit in SNAPSHOT state without acknowledging before the leader retries.
    snapshot_retry_ticks: int | None = None

    def __post_init__(self) -> None:
        if self.heartbeat_tick < 1 or self.election_tick <= self.heartbeat_tick:
            raise ValueError("need 1 <= heartbeat_tick < election_tick")
        if not 0 <= self.lease_margin_ticks < self.election_tick:
            raise ValueError("lease_margin_ticks must be in [0, election_tick)")
        if min(self.max_entries_per_msg, self.max_bytes_per_msg, self.max_inflight_msgs) < 1:
            raise ValueError("message and inflight limits must be positive")
        if self.max_committed_entries_per_ready < 1 or self.max_uncommitted_entries < 1:
            raise ValueError("max_committed_entries_per_ready and max_uncommitted_entries must be positive")
        if self.snapshot_retry_ticks is not None and self.snapshot_retry_ticks < 1:
            raise ValueError("snapshot_retry_ticks must be positive")

    @property
    def snapshot_retry(self) -> int:
        return self.snapshot_retry_ticks or 2 * self.election_tick


@dataclass(frozen=True, slots=True)
class PersistentState:
    """What a node is built from: exactly what the driver persisted from Readies."""

    hard_state: HardState
    snapshot: SnapshotMeta | None  # None: a server that has never received anything (joining)
    entries: tuple[Entry, ...] = ()

    @staticmethod
    def bootstrap(voters: Iterable[str]) -> PersistentState:
        """Initial state of every founding server of a new cluster; all founders must pass the same
        voters, and the driver persists this state before the node's first Ready.

        The initial configuration is a real log entry (index 1, term 1, identical on every founder, and
        committed because every voter holds it), not out-of-band state: a server that joins later
        receives it like any other entry, so every server can tell the configuration at any index."""
        ids = frozenset(validate_node_id(v) for v in voters)
        if not ids:
            raise ValueError("a cluster needs at least one voter")
        config = Configuration(ids)
        data = encode_config_entry(config, ConfChange(ConfChangeKind.BOOTSTRAP, min(ids)))
        return PersistentState(HardState(1, None, 1), None, (Entry(1, 1, EntryKind.CONFIG, data),))

    @staticmethod
    def empty() -> PersistentState:
        """A server joining an existing cluster: it waits, without campaigning, until a leader adds it."""
        return PersistentState(HardState(), None, ())


@dataclass(frozen=True, slots=True)
class ReadState:
    """A ReadIndex read may be answered once the state machine has applied ``index``."""

    context: bytes
    index: int


@dataclass(frozen=True, slots=True)
class Ready:
    hard_state: HardState | None  # None when unchanged
    snapshot: Snapshot | None  # replaces the whole log and the state machine
    entries: tuple[Entry, ...]  # to append durably (overwriting from entries[0].index)
    messages: tuple[Message, ...]  # to send after persisting
    committed_entries: tuple[Entry, ...]  # to apply after persisting
    read_states: tuple[ReadState, ...]
    dropped_reads: tuple[bytes, ...]  # contexts of reads abandoned because leadership changed
    must_sync: bool  # entries, snapshot, term or vote changed: fsync before sending


@dataclass(frozen=True, slots=True)
class PeerStatus:
    match_index: int
    next_index: int
    state: ProgressState
    inflight: int
    ticks_since_heard: int


@dataclass(frozen=True, slots=True)
class Status:
    id: str
    role: Role
    term: int
    vote: str | None
    leader_id: str | None
    commit_index: int
    applied_index: int
    last_index: int
    last_term: int
    snapshot_index: int
    configuration: Configuration
    pending_config_index: int  # index of an uncommitted config entry, or 0
    ticks_since_leader_contact: int
    lead_transferee: str | None
    lease_valid: bool
    peers: Mapping[str, PeerStatus] = field(default_factory=dict)  # leader only


class _Progress:
    """The leader's view of one follower (mutable, internal)."""

    __slots__ = (
        "match",
        "next",
        "state",
        "probe_sent",
        "inflight",
        "pending_snapshot",
        "snapshot_sent_at",
        "last_heard",
        "acked_round",
        "commit_sent",
    )

    def __init__(self, next_index: int, now: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.inflight: deque[int] = deque()  # last index carried by each AppendEntries in flight
        self.pending_snapshot = 0
        self.snapshot_sent_at = 0
        self.last_heard = now  # a new leader gives everyone an election timeout before CheckQuorum counts
        self.acked_round = 0
        self.commit_sent = 0

    def become_probe(self) -> None:
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.inflight.clear()
        self.pending_snapshot = 0
        self.next = self.match + 1

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.probe_sent = False
        self.inflight.clear()
        self.pending_snapshot = 0
        self.next = self.match + 1

    def become_snapshot(self, index: int, now: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.probe_sent = False
        self.inflight.clear()
        self.pending_snapshot = index
        self.snapshot_sent_at = now

    def maybe_update(self, index: int) -> bool:
        if index > self.match:
            self.match = index
            if self.next <= index:
                self.next = index + 1
            return True
        return False

    def free_through(self, index: int) -> None:
        inflight = self.inflight
        while inflight and inflight[0] <= index:
            inflight.popleft()


@dataclass(slots=True)
class _PendingRead:
    context: bytes
    requester: str | None  # None: asked locally; else the follower that forwarded it
    index: int = 0
    round: int = 0


class RaftNode:
    def __init__(
        self,
        node_id: str,
        config: RaftConfig,
        rng: random.Random,
        state: PersistentState,
        snapshot_source: Callable[[], Snapshot | None] | None = None,
        applied: int | None = None,
    ) -> None:
        self.id = validate_node_id(node_id)
        self._cfg = config
        self._rng = rng
        self._snapshot_source = snapshot_source
        hs = state.hard_state
        meta = state.snapshot or SnapshotMeta(0, 0, _EMPTY_CONFIG)
        self._log = RaftLog.restore(meta.index, meta.term, state.entries, hs.commit)
        self._term = hs.term
        self._vote = hs.vote
        if self._log.last_term > hs.term:
            # A crash persisted entries (or a snapshot) from a newer term but not the HardState written
            # after them.  Adopting that term without a vote is always safe, and a server's term must never
            # be older than its log (else it could lead a term older than its own entries).  Any vote in
            # that term was in the lost HardState, so it was never sent.
            self._term = self._log.last_term
            self._vote = None
        self._prev_hs = hs
        # Configurations: the one covered by the snapshot, then one per CONFIG entry still in the log.
        self._snapshot_config = meta.configuration
        self._configs: list[tuple[int, Configuration]] = []
        self._scan_configs(self._log.first_index, self._log.last_index)
        self._config = _EMPTY_CONFIG
        self._voters: tuple[str, ...] = ()
        self._peers: tuple[str, ...] = ()
        start_applied = self._log.snapshot_index if applied is None else applied
        if not self._log.snapshot_index <= start_applied <= self._log.commit:
            raise RaftError(f"applied index {start_applied} outside [snapshot, commit]")
        self._applied = start_applied
        self._applying = start_applied  # highest index handed out in committed_entries

        self._role = Role.FOLLOWER
        self._leader: str | None = None
        self._now = 0
        self._election_elapsed = 0
        self._randomized_timeout = config.election_tick
        # Startup counts as leader contact: see "Leader stickiness" in the module docstring.
        self._leader_contact_elapsed = 0
        self._heartbeat_elapsed = 0
        self._votes: dict[str, bool] = {}
        self._progress: dict[str, _Progress] = {}
        self._transferee: str | None = None
        self._transfer_elapsed = 0
        self._lease_forfeited = False
        self._needs_flush = False

        # ReadIndex state (leader): reads waiting for this term's first commit, reads waiting for the next
        # heartbeat round, reads waiting for a round to be acknowledged by a quorum.
        self._round = 0
        self._round_ticks: deque[tuple[int, int]] = deque()  # (round, tick it was sent), recent only
        self._reads_awaiting_commit: list[_PendingRead] = []
        self._reads_unrounded: list[_PendingRead] = []
        self._reads_pending: deque[_PendingRead] = deque()
        self._forwarded_reads: dict[bytes, None] = {}  # follower: contexts sent to the leader

        self._msgs: list[Message] = []
        self._read_states: list[ReadState] = []
        self._dropped_reads: list[bytes] = []
        self._pending_snapshot: Snapshot | None = None
        self._outstanding: Ready | None = None

        self._config_changed()
        self._reset_election_timer()

    # ================================================================================= public API

    @property
    def role(self) -> Role:
        return self._role

    @property
    def term(self) -> int:
        return self._term

    @property
    def leader_id(self) -> str | None:
        return self._leader

    @property
    def commit_index(self) -> int:
        return self._log.commit

    @property
    def applied_index(self) -> int:
        return self._applied

    @property
    def last_index(self) -> int:
        return self._log.last_index

    @property
    def configuration(self) -> Configuration:
        """The configuration in effect: the newest in the log, committed or not (changes take effect on
        append).  See ``committed_configuration`` for the one a quorum has agreed on."""
        return self._config

    @property
    def committed_configuration(self) -> Configuration:
        return self._config_at(self._log.commit)

    @property
    def log(self) -> RaftLog:
        """Read-only use: tests and the simulator inspect it."""
        return self._log

    def tick(self) -> None:
        self._now += 1
        if self._role is Role.LEADER:
            self._tick_leader()
        else:
            self._tick_election()

    def propose(self, data: bytes) -> int:
        """Append a client command; returns its log index.  The command took effect iff the entry
        applied at that index has this node's current term (``self.term`` when proposing)."""
        return self.propose_batch((data,)).start

    def propose_batch(self, datas: Iterable[bytes]) -> range:
        """Append many commands at once (one message round for all of them); returns their indexes."""
        self._check_can_propose()
        first = self._log.last_index + 1
        entries = []
        index = first
        for data in datas:
            if type(data) is not bytes or len(data) > MAX_ENTRY_BYTES:
                raise ValueError(f"proposal must be bytes of at most {MAX_ENTRY_BYTES} bytes")
            entries.append(Entry(self._term, index, EntryKind.NORMAL, data))
            index += 1
        if index - 1 - self._log.commit > self._cfg.max_uncommitted_entries:
            raise ProposalDroppedError(
                f"too many uncommitted entries (limit {self._cfg.max_uncommitted_entries}); retry when the "
                "cluster catches up"
            )
        self._log.append(entries)
        self._needs_flush = True
        return range(first, index)

    def propose_config_change(self, change: ConfChange) -> int:
        """Propose one single-server membership change; returns the config entry's index.  Raises
        ConfigChangeError when refused (the reason says whether to retry)."""
        self._check_can_propose()
        validate_node_id(change.node_id)
        if len(change.context) > MAX_CONTEXT_BYTES:
            raise ConfigChangeError(f"change context is limited to {MAX_CONTEXT_BYTES} bytes")
        if not self._committed_in_term():
            raise ConfigChangeError(
                "this leader's term has not committed its first entry yet; retry shortly", retryable=True
            )
        if self._pending_config_index():
            raise ConfigChangeError(
                "another membership change is still uncommitted; retry when it commits", retryable=True
            )
        cur = self._config
        node = change.node_id
        if change.kind is ConfChangeKind.ADD_LEARNER:
            if node in cur.members():
                raise ConfigChangeError(f"{node} is already a member")
            new = Configuration(cur.voters, cur.learners | {node})
        elif change.kind is ConfChangeKind.PROMOTE_LEARNER:
            if node not in cur.learners:
                raise ConfigChangeError(f"{node} is not a learner; add it as a learner first")
            pr = self._progress[node]
            if pr.match < self._log.commit:
                raise ConfigChangeError(
                    f"learner {node} has not caught up (match {pr.match} < commit {self._log.commit}); retry later",
                    retryable=True,
                )
            new = Configuration(cur.voters | {node}, cur.learners - {node})
        elif change.kind is ConfChangeKind.REMOVE_NODE:
            if node not in cur.members():
                raise ConfigChangeError(f"{node} is not a member")
            if cur.voters == {node}:
                raise ConfigChangeError("cannot remove the last voter")
            new = Configuration(cur.voters - {node}, cur.learners - {node})
        else:
            raise ConfigChangeError(f"unknown change kind {change.kind!r}")
        index = self._log.last_index + 1
        self._log.append([Entry(self._term, index, EntryKind.CONFIG, encode_config_entry(new, change))])
        self._configs.append((index, new))
        self._config_changed()  # takes effect on append
        self._needs_flush = True
        return index

    def transfer_leadership(self, target: str) -> None:
        """Hand leadership to ``target`` (thesis 3.10): catch it up, then send TimeoutNow.  Proposals are
        refused while the transfer runs; it is abandoned after an election timeout."""
        if self._role is not Role.LEADER:
            raise NotLeaderError(self._leader)
        if target == self.id:
            return
        if target not in self._config.voters:
            raise TransferError(f"{target} is not a voter")
        if self._transferee == target:
            return
        self._transferee = target
        self._transfer_elapsed = 0
        pr = self._progress[target]
        if pr.match == self._log.last_index:
            self._send_timeout_now(target)
        else:
            self._send_append(target)

    def read_index(self, context: bytes) -> None:
        """Start a linearizable read (thesis 6.4).  The answer arrives as a ReadState with this context in
        a later Ready (or the context in dropped_reads).  On a follower the request is forwarded to the
        leader.  Contexts must be unique among outstanding reads."""
        if type(context) is not bytes or len(context) > MAX_CONTEXT_BYTES:
            raise ValueError(f"read context must be bytes of at most {MAX_CONTEXT_BYTES} bytes")
        if self._role is Role.LEADER:
            self._leader_read(_PendingRead(context, None))
        elif self._role is Role.FOLLOWER and self._leader is not None:
            self._forwarded_reads[context] = None
            self._send(ReadIndexRequest(self._term, self.id, self._leader, context))
        else:
            raise NotLeaderError(self._leader)

    def lease_valid(self) -> bool:
        """True while this leader may answer a default-mode read from local state without a quorum round:
        it has committed an entry in its term, has not offered leadership away, and a quorum acknowledged a
        heartbeat sent within the last election_tick - lease_margin_ticks ticks.  See the clock
        assumptions in the module docstring."""
        if (
            self._role is not Role.LEADER
            or not self._cfg.check_quorum
            or self._lease_forfeited
            or not self._committed_in_term()
        ):
            return False
        horizon = self._now - (self._cfg.election_tick - self._cfg.lease_margin_ticks)
        ticks = []
        for v in self._voters:
            if v == self.id:
                ticks.append(self._now)
            else:
                ticks.append(self._round_tick(self._progress[v].acked_round))
        if not ticks:
            return False
        ticks.sort(reverse=True)
        return ticks[len(ticks) // 2] > horizon

    def lease_read_index(self) -> int | None:
        """The index a lease read must wait to have applied, or None if the lease is not valid."""
        return self._log.commit if self.lease_valid() else None

    def step(self, msg: Message) -> None:
        if msg.dst != self.id:
            raise RaftError(f"message for {msg.dst} delivered to {self.id}")
        t = msg.term
        if t > self._term:
            if isinstance(msg, RequestVote | PreVote):
                forced = isinstance(msg, RequestVote) and msg.transfer
                if not forced and self._in_lease():
                    return  # leader stickiness: a leader is alive, ignore the disruptive campaign
                if isinstance(msg, RequestVote):
                    self._become_follower(t, None)
            elif isinstance(msg, PreVoteResponse) and msg.granted:
                pass  # granted for the term we would campaign in
            elif isinstance(msg, AppendEntries | Heartbeat | InstallSnapshot):
                self._become_follower(t, msg.src)
            else:
                self._become_follower(t, None)
        elif t < self._term:
            self._reply_stale(msg)
            return
        handler = _HANDLERS.get(type(msg))
        if handler is None:
            raise TypeError(f"not a Raft message: {type(msg).__name__}")
        handler(self, msg)

    def has_ready(self) -> bool:
        if self._outstanding is not None:
            return False
        p = self._prev_hs
        return bool(
            self._msgs
            or self._log.has_unstable()
            or self._pending_snapshot is not None
            or self._log.commit > self._applying
            or self._read_states
            or self._dropped_reads
            or self._term != p.term
            or self._vote != p.vote
            or self._log.commit != p.commit
            or (self._role is Role.LEADER and (self._needs_flush or self._reads_unrounded))
        )

    def ready(self) -> Ready:
        if self._outstanding is not None:
            raise ReadyError("advance() the previous Ready before asking for another")
        if self._role is Role.LEADER:
            self._flush()
        snapshot = self._pending_snapshot
        entries = self._log.take_unstable()
        hs = HardState(self._term, self._vote, self._log.commit)
        p = self._prev_hs
        committed: tuple[Entry, ...] = ()
        if self._log.commit > self._applying:
            committed = tuple(
                self._log.entries(
                    self._applying + 1, self._log.commit + 1, max_count=self._cfg.max_committed_entries_per_ready
                )
            )
            self._applying = committed[-1].index
        rd = Ready(
            hard_state=hs if hs != p else None,
            snapshot=snapshot,
            entries=entries,
            messages=tuple(self._msgs),
            committed_entries=committed,
            read_states=tuple(self._read_states),
            dropped_reads=tuple(self._dropped_reads),
            must_sync=bool(entries) or snapshot is not None or hs.term != p.term or hs.vote != p.vote,
        )
        self._msgs = []
        self._read_states = []
        self._dropped_reads = []
        self._pending_snapshot = None
        self._outstanding = rd
        return rd

    def advance(self, rd: Ready) -> None:
        if rd is not self._outstanding:
            raise ReadyError("advance() must be given the Ready returned by the last ready()")
        self._outstanding = None
        if rd.hard_state is not None:
            self._prev_hs = rd.hard_state
        if rd.snapshot is not None:
            self._applied = max(self._applied, rd.snapshot.meta.index)
        if rd.committed_entries:
            self._applied = max(self._applied, rd.committed_entries[-1].index)
        if rd.entries:
            self._log.stable_to(rd.entries[-1].index)
            if self._role is Role.LEADER:
                self._maybe_commit()  # our own entries are durable now and may complete a quorum

    def snapshot_meta(self, index: int) -> SnapshotMeta:
        """Metadata for a snapshot of the state machine as of applied ``index``."""
        if not self._log.snapshot_index <= index <= self._applied:
            raise RaftError(
                f"snapshot index {index} must be within [{self._log.snapshot_index}, applied {self._applied}]"
            )
        term = self._log.term(index)
        assert term is not None
        return SnapshotMeta(index, term, self._config_at(index))

    def compact(self, index: int) -> None:
        """Drop log entries up to ``index``; the driver has durably stored a snapshot at >= ``index``."""
        if self._snapshot_source is None:
            raise RaftError("a node that compacts its log needs a snapshot_source for lagging followers")
        if index > self._applied:
            raise RaftError(f"cannot compact past the applied index ({index} > {self._applied})")
        if index <= self._log.snapshot_index:
            return
        self._snapshot_config = self._config_at(index)
        self._configs = [(i, c) for i, c in self._configs if i > index]
        self._log.compact(index)

    def status(self) -> Status:
        peers: dict[str, PeerStatus] = {}
        if self._role is Role.LEADER:
            for p in self._peers:
                pr = self._progress[p]
                peers[p] = PeerStatus(pr.match, pr.next, pr.state, len(pr.inflight), self._now - pr.last_heard)
        return Status(
            id=self.id,
            role=self._role,
            term=self._term,
            vote=self._vote,
            leader_id=self._leader,
            commit_index=self._log.commit,
            applied_index=self._applied,
            last_index=self._log.last_index,
            last_term=self._log.last_term,
            snapshot_index=self._log.snapshot_index,
            configuration=self._config,
            pending_config_index=self._pending_config_index(),
            ticks_since_leader_contact=self._leader_contact_elapsed,
            lead_transferee=self._transferee,
            lease_valid=self.lease_valid(),
            peers=peers,
        )

    # ================================================================================= roles

    def _promotable(self) -> bool:
        return self.id in self._config.voters

    def _quorum(self) -> int:
        return len(self._voters) // 2 + 1

    def _reset_election_timer(self) -> None:
        self._election_elapsed = 0
        e = self._cfg.election_tick
        self._randomized_timeout = self._rng.randint(e, 2 * e - 1)

    def _in_lease(self) -> bool:
        return self._role is Role.LEADER or self._leader_contact_elapsed < self._cfg.election_tick

    def _become_follower(self, term: int, leader: str | None) -> None:
        was_leader = self._role is Role.LEADER
        if term > self._term:
            self._term = term
            self._vote = None
        if was_leader:
            self._abandon_leadership()
            # We know there is no leader right now: do not shield a campaign with our own stickiness.
            self._leader_contact_elapsed = self._cfg.election_tick
        self._role = Role.FOLLOWER
        self._set_leader(leader)
        self._reset_election_timer()

    def _set_leader(self, leader: str | None) -> None:
        if leader != self._leader and self._forwarded_reads:
            # The old leader may never answer; fail the reads fast so the driver can retry.
            self._dropped_reads.extend(self._forwarded_reads)
            self._forwarded_reads.clear()
        self._leader = leader
        if leader is not None and leader != self.id:
            self._leader_contact_elapsed = 0

    def _campaign(self, *, pre_vote_won: bool = False, transfer: bool = False) -> None:
        """Start an election: a PreVote round first (thesis 9.6) unless it already succeeded or this is a
        leadership transfer."""
        if not self._promotable():
            return
        if self._cfg.pre_vote and not (pre_vote_won or transfer):
            self._role = Role.PRE_CANDIDATE
            self._set_leader(None)
            self._reset_election_timer()
            self._votes = {}
            term = self._term + 1
            if self._poll(self.id, True) is True:
                self._campaign(pre_vote_won=True)
                return
            for v in self._voters:
                if v != self.id:
                    self._send(PreVote(term, self.id, v, self._log.last_index, self._log.last_term))
            return
        self._role = Role.CANDIDATE
        self._term += 1
        self._vote = self.id
        self._set_leader(None)
        self._reset_election_timer()
        self._votes = {}
        if self._poll(self.id, True) is True:
            self._become_leader()
            return
        for v in self._voters:
            if v != self.id:
                self._send(RequestVote(self._term, self.id, v, self._log.last_index, self._log.last_term, transfer))

    def _poll(self, voter: str, granted: bool) -> bool | None:
        """Record a vote; True if a quorum granted, False if a quorum refused, None while undecided."""
        if voter not in self._config.voters:
            return None
        self._votes.setdefault(voter, granted)
        yes = sum(1 for g in self._votes.values() if g)
        q = self._quorum()
        if yes >= q:
            return True
        if len(self._votes) - yes > len(self._voters) - q:
            return False
        return None

    def _become_leader(self) -> None:
        self._role = Role.LEADER
        self._set_leader(self.id)
        self._leader_contact_elapsed = 0
        self._transferee = None
        self._lease_forfeited = False
        self._heartbeat_elapsed = 0
        self._election_elapsed = 0
        last = self._log.last_index
        self._progress = {p: _Progress(last + 1, self._now) for p in self._peers}
        self._round_ticks.clear()
        # The no-op commits everything from earlier terms (they cannot be committed by counting replicas,
        # Figure 8) and gates config changes and reads until this leader knows the commit index.
        self._log.append([Entry(self._term, last + 1, EntryKind.NOOP)])
        self._needs_flush = True

    def _abandon_leadership(self) -> None:
        for read in [*self._reads_awaiting_commit, *self._reads_unrounded, *self._reads_pending]:
            self._fail_read(read)
        self._reads_awaiting_commit = []
        self._reads_unrounded = []
        self._reads_pending.clear()
        self._progress = {}
        self._transferee = None
        self._needs_flush = False

    # ================================================================================= ticks

    def _tick_election(self) -> None:
        self._election_elapsed += 1
        self._leader_contact_elapsed += 1
        if self._election_elapsed >= self._randomized_timeout and self._promotable():
            self._campaign()

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        if self._cfg.check_quorum and not self._quorum_recently_active():
            # CheckQuorum (thesis 6.2): a leader cut off from a majority stops pretending to lead.
            self._become_follower(self._term, None)
            return
        if self._transferee is not None:
            self._transfer_elapsed += 1
            if self._transfer_elapsed >= self._cfg.election_tick:
                self._transferee = None  # the target did not take over in time; keep leading
        retry = self._cfg.snapshot_retry
        for p in self._peers:
            pr = self._progress[p]
            if pr.state is ProgressState.SNAPSHOT and self._now - pr.snapshot_sent_at >= retry:
                pr.become_probe()  # the snapshot was probably lost; find the follower again
        if self._heartbeat_elapsed >= self._cfg.heartbeat_tick:
            self._heartbeat_elapsed = 0
            self._start_round()

    def _quorum_recently_active(self) -> bool:
        if not self._voters:
            return True
        horizon = self._now - self._cfg.election_tick
        heard = sorted(
            (self._now if v == self.id else self._progress[v].last_heard for v in self._voters), reverse=True
        )
        return heard[len(heard) // 2] > horizon

    # ================================================================================= messages in

    def _reply_stale(self, msg: Message) -> None:
        """A message from an older term.  Answer requests so the sender learns the newer term (a deposed
        leader steps down, a pre-candidate catches up); drop stale responses."""
        t = self._term
        if isinstance(msg, AppendEntries):
            self._send(AppendEntriesResponse(t, self.id, msg.src, msg.prev_index, True, 0, 0))
        elif isinstance(msg, Heartbeat):
            self._send(HeartbeatResponse(t, self.id, msg.src, msg.round))
        elif isinstance(msg, InstallSnapshot):
            self._send(InstallSnapshotResponse(t, self.id, msg.src, 0))
        elif isinstance(msg, PreVote):
            self._send(PreVoteResponse(t, self.id, msg.src, False))
        elif isinstance(msg, RequestVote):
            self._send(RequestVoteResponse(t, self.id, msg.src, False))
        elif isinstance(msg, ReadIndexRequest):
            self._send(ReadIndexResponse(t, self.id, msg.src, msg.context, 0, False))

    def _follow(self, leader: str) -> bool:
        """A message from the leader of our term arrived.  Returns False if we are that term's leader."""
        if self._role is Role.LEADER:
            return False  # two leaders in one term cannot happen; ignore a forged or corrupt message
        if self._role is not Role.FOLLOWER:
            self._become_follower(self._term, leader)
        else:
            self._set_leader(leader)
        self._election_elapsed = 0
        self._leader_contact_elapsed = 0
        return True

    def _on_append(self, msg: AppendEntries) -> None:
        if not self._follow(msg.src):
            return
        log = self._log
        commit = log.commit
        prev_index, prev_term, entries = msg.prev_index, msg.prev_term, msg.entries
        if prev_index < commit:
            # Our committed prefix matches every legitimate leader's log: skip it, so that entries we may
            # have compacted are never mistaken for a conflict (openraft #511), and answer with at least
            # our commit index.
            entries = entries[commit - prev_index :]
            prev_index, prev_term = commit, log.term(commit) or 0
        result = log.maybe_append(prev_index, prev_term, entries)
        if result is None:
            hint = log.find_conflict_by_term(min(msg.prev_index, log.last_index), msg.prev_term)
            self._send(
                AppendEntriesResponse(self._term, self.id, msg.src, msg.prev_index, True, hint, log.term(hint) or 0)
            )
            return
        last_new, first_written = result
        if first_written:
            self._entries_replaced(first_written)
        log.commit_to(min(msg.commit, last_new))
        self._send(AppendEntriesResponse(self._term, self.id, msg.src, last_new, False))

    def _on_heartbeat(self, msg: Heartbeat) -> None:
        if not self._follow(msg.src):
            return
        # The leader sends min(commit, our match), which we hold and which matches its log.
        self._log.commit_to(min(msg.commit, self._log.last_index))
        self._send(HeartbeatResponse(self._term, self.id, msg.src, msg.round))

    def _on_snapshot(self, msg: InstallSnapshot) -> None:
        if not self._follow(msg.src):
            return
        meta = msg.meta
        log = self._log
        if meta.index <= log.commit:
            # Stale (reordered or duplicated): we already have everything it covers.
            self._send(InstallSnapshotResponse(self._term, self.id, msg.src, log.commit))
            return
        if log.install_snapshot(meta.index, meta.term):
            # Figure 13: we hold the snapshot's last entry, so our log already agrees with it; keep the
            # whole log and simply commit through the snapshot.
            log.commit_to(meta.index)
        else:
            self._snapshot_config = meta.configuration
            self._configs = []
            self._config_changed()
            self._pending_snapshot = Snapshot(meta, msg.data)
            self._applying = meta.index
        self._send(InstallSnapshotResponse(self._term, self.id, msg.src, meta.index))

    def _on_vote_request(self, msg: RequestVote | PreVote) -> None:
        pre = isinstance(msg, PreVote)
        if pre:
            can_vote = msg.term > self._term
        else:
            can_vote = self._vote == msg.src or (self._vote is None and self._leader is None)
        if can_vote and self._log.is_up_to_date(msg.last_index, msg.last_term):
            if pre:
                self._send(PreVoteResponse(msg.term, self.id, msg.src, True))
            else:
                self._vote = msg.src
                self._election_elapsed = 0
                self._send(RequestVoteResponse(self._term, self.id, msg.src, True))
        elif pre:
            self._send(PreVoteResponse(self._term, self.id, msg.src, False))
        else:
            self._send(RequestVoteResponse(self._term, self.id, msg.src, False))

    def _on_vote_response(self, msg: RequestVoteResponse) -> None:
        if self._role is not Role.CANDIDATE:
            return
        result = self._poll(msg.src, msg.granted)
        if result is True:
            self._become_leader()
        elif result is False:
            self._become_follower(self._term, None)

    def _on_prevote_response(self, msg: PreVoteResponse) -> None:
        if self._role is not Role.PRE_CANDIDATE:
            return
        # Grants carry the term we would campaign in; refusals carry the responder's (equal) term.
        if msg.term != (self._term + 1 if msg.granted else self._term):
            return  # a response to an earlier campaign
        result = self._poll(msg.src, msg.granted)
        if result is True:
            self._campaign(pre_vote_won=True)
        elif result is False:
            self._become_follower(self._term, None)

    def _on_timeout_now(self, msg: TimeoutNow) -> None:
        if self._role is not Role.LEADER:
            self._campaign(transfer=True)

    def _on_read_request(self, msg: ReadIndexRequest) -> None:
        if self._role is Role.LEADER:
            self._leader_read(_PendingRead(msg.context, msg.src))
        else:
            self._send(ReadIndexResponse(self._term, self.id, msg.src, msg.context, 0, False))

    def _on_read_response(self, msg: ReadIndexResponse) -> None:
        if msg.context not in self._forwarded_reads:
            return  # duplicate, or already dropped
        del self._forwarded_reads[msg.context]
        if msg.ok:
            self._read_states.append(ReadState(msg.context, msg.index))
        else:
            self._dropped_reads.append(msg.context)

    # ---------------------------------------------------------------------------------- leader side

    def _peer(self, msg: Message) -> _Progress | None:
        if self._role is not Role.LEADER:
            return None
        pr = self._progress.get(msg.src)
        if pr is not None:
            pr.last_heard = self._now
        return pr

    def _on_append_response(self, msg: AppendEntriesResponse) -> None:
        pr = self._peer(msg)
        if pr is None:
            return
        if msg.reject:
            if self._maybe_decrease(pr, msg):
                if pr.state is ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(msg.src)
            return
        if msg.index > self._log.last_index:
            return  # acknowledges entries we never sent: not from a correct follower
        if pr.maybe_update(msg.index):
            if pr.state is ProgressState.PROBE:
                pr.become_replicate()
            elif pr.state is ProgressState.SNAPSHOT:
                if pr.match >= self._log.snapshot_index:
                    pr.become_replicate()
            else:
                pr.free_through(msg.index)
            self._maybe_commit()
            if msg.src == self._transferee and pr.match == self._log.last_index:
                self._send_timeout_now(msg.src)
        elif pr.state is ProgressState.REPLICATE:
            pr.free_through(msg.index)
        while self._send_append(msg.src):
            pass

    def _maybe_decrease(self, pr: _Progress, msg: AppendEntriesResponse) -> bool:
        """A rejection: move next_index back, unless the rejection is stale (answers an older message)."""
        rejected = msg.index
        if pr.state is ProgressState.REPLICATE:
            return rejected > pr.match  # if not stale, become_probe() restarts from match + 1
        if pr.state is ProgressState.SNAPSHOT or pr.next - 1 != rejected:
            return False
        probe = msg.hint_index
        if msg.hint_term:
            probe = self._log.find_conflict_by_term(msg.hint_index, msg.hint_term)
        pr.next = max(min(rejected, probe + 1), pr.match + 1)
        pr.probe_sent = False
        return True

    def _on_heartbeat_response(self, msg: HeartbeatResponse) -> None:
        pr = self._peer(msg)
        if pr is None:
            return
        if pr.acked_round < msg.round <= self._round:
            pr.acked_round = msg.round
            self._release_reads()
        if pr.state is ProgressState.PROBE:
            pr.probe_sent = False  # the probe may have been lost; allow another
        elif pr.state is ProgressState.REPLICATE and len(pr.inflight) >= self._cfg.max_inflight_msgs:
            pr.inflight.popleft()  # messages may have been lost; let one more through
        if pr.match < self._log.last_index:
            # If everything was already sent, an empty AppendEntries at next_index - 1 finds out whether it
            # arrived: a follower that lost it rejects, which drops us back to probing.
            self._send_append(msg.src, allow_empty=True)

    def _on_snapshot_response(self, msg: InstallSnapshotResponse) -> None:
        pr = self._peer(msg)
        if pr is None or msg.index > self._log.last_index:
            return
        pr.maybe_update(msg.index)
        if pr.state is ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
            pr.become_probe()
        self._maybe_commit()
        self._send_append(msg.src)

    def _send_append(self, peer: str, allow_empty: bool = False) -> bool:
        """Send the next AppendEntries to ``peer`` if flow control allows; returns whether one was sent.
        In REPLICATE state an empty message is only sent with ``allow_empty``."""
        pr = self._progress.get(peer)
        if pr is None or pr.state is ProgressState.SNAPSHOT:
            return False  # not (or no longer) a peer of ours, or a snapshot is in flight
        if pr.state is ProgressState.PROBE:
            if pr.probe_sent:
                return False
        elif len(pr.inflight) >= self._cfg.max_inflight_msgs:
            return False
        log = self._log
        prev = pr.next - 1
        prev_term = log.term(prev)
        if prev_term is None or prev < log.snapshot_index:
            return self._send_snapshot(peer, pr)
        if pr.next <= log.last_index:
            entries = tuple(
                log.entries(pr.next, log.last_index + 1, self._cfg.max_entries_per_msg, self._cfg.max_bytes_per_msg)
            )
        else:
            if pr.state is ProgressState.REPLICATE and not allow_empty:
                return False  # nothing new; commit updates go out in _flush / heartbeats
            entries = ()
        commit = log.commit
        self._send(AppendEntries(self._term, self.id, peer, prev, prev_term, entries, commit))
        pr.commit_sent = max(pr.commit_sent, min(commit, prev + len(entries)))
        if not entries:
            if pr.state is ProgressState.PROBE:
                pr.probe_sent = True
        elif pr.state is ProgressState.REPLICATE:
            pr.next = entries[-1].index + 1  # optimistic: pipeline the next batch without waiting
            pr.inflight.append(entries[-1].index)
        else:
            pr.probe_sent = True
        return True

    def _send_snapshot(self, peer: str, pr: _Progress) -> bool:
        snap = self._snapshot_source() if self._snapshot_source is not None else None
        if snap is None:
            pr.probe_sent = True  # temporarily unavailable: retry when the next heartbeat is answered
            return False
        if snap.meta.index < self._log.snapshot_index:
            raise RaftError(
                f"snapshot_source returned index {snap.meta.index}, older than the compacted log "
                f"({self._log.snapshot_index})"
            )
        pr.become_snapshot(snap.meta.index, self._now)
        self._send(InstallSnapshot(self._term, self.id, peer, snap.meta, snap.data))
        return True

    def _send_timeout_now(self, peer: str) -> None:
        # The target may now be elected without waiting out anyone's stickiness, so our lease no longer
        # means anything for the rest of this term.
        self._lease_forfeited = True
        self._send(TimeoutNow(self._term, self.id, peer))

    def _flush(self) -> None:
        """Batch point: send accumulated proposals, commit updates and the next ReadIndex round."""
        if self._reads_unrounded:
            self._start_round()
        if not self._needs_flush:
            return
        self._needs_flush = False
        log = self._log
        commit = log.commit
        for p in self._peers:
            pr = self._progress[p]
            sent = False
            while self._send_append(p):
                sent = True
            if sent or pr.state is not ProgressState.REPLICATE:
                continue
            # Nothing new to send, but the follower may not know the latest commit yet: an empty
            # AppendEntries anchored at its match index tells it without risking a rejection.
            target = min(commit, pr.match)
            if target > pr.commit_sent:
                match_term = log.term(pr.match)
                if match_term is not None:
                    self._send(AppendEntries(self._term, self.id, p, pr.match, match_term, (), commit))
                    pr.commit_sent = target

    def _maybe_commit(self) -> None:
        """Figure 2 / thesis 3.6.2: commit the highest index held durably by a quorum of the current
        configuration's voters, but only if it is from this term (Figure 8)."""
        if self._role is not Role.LEADER or not self._voters:
            return
        log = self._log
        matches = sorted(
            (log.stable_index if v == self.id else self._progress[v].match for v in self._voters), reverse=True
        )
        q = matches[len(matches) // 2]
        if q > log.commit and log.term(q) == self._term:
            log.commit_to(q)
            self._on_commit_advanced()

    def _on_commit_advanced(self) -> None:
        self._needs_flush = True
        if self._reads_awaiting_commit and self._committed_in_term():
            for read in self._reads_awaiting_commit:
                read.index = self._log.commit
                self._reads_unrounded.append(read)
            self._reads_awaiting_commit = []
        if self.id not in self._config.voters and not self._pending_config_index():
            # We removed ourselves and the new configuration is committed: step down (thesis 4.2.2), and
            # hand over to the most up-to-date voter rather than leaving the cluster to time out.
            best = max(
                (p for p in self._voters if self._progress[p].match == self._log.last_index),
                key=lambda p: self._progress[p].last_heard,
                default=None,
            )
            if best is not None:
                self._send(TimeoutNow(self._term, self.id, best))
            self._become_follower(self._term, None)

    # ---------------------------------------------------------------------------------- reads

    def _committed_in_term(self) -> bool:
        return self._log.term(self._log.commit) == self._term

    def _leader_read(self, read: _PendingRead) -> None:
        if not self._committed_in_term():
            self._reads_awaiting_commit.append(read)
            return
        read.index = self._log.commit
        self._reads_unrounded.append(read)

    def _start_round(self) -> None:
        """Send one heartbeat round.  It confirms leadership for every read queued before it (one round
        serves a whole batch) and renews the lease."""
        self._round += 1
        r = self._round
        now = self._now
        ticks = self._round_ticks
        ticks.append((r, now))
        horizon = now - self._cfg.election_tick
        while ticks and ticks[0][1] < horizon:
            ticks.popleft()  # too old to support a lease
        for read in self._reads_unrounded:
            read.round = r
            self._reads_pending.append(read)
        self._reads_unrounded = []
        commit = self._log.commit
        for p in self._peers:
            pr = self._progress[p]
            c = min(commit, pr.match)
            self._send(Heartbeat(self._term, self.id, p, c, r))
            if c > pr.commit_sent:
                pr.commit_sent = c
        self._release_reads()

    def _round_tick(self, r: int) -> int:
        ticks = self._round_ticks
        if not ticks or r < ticks[0][0]:
            return -(1 << 62)
        return ticks[r - ticks[0][0]][1]

    def _release_reads(self) -> None:
        pending = self._reads_pending
        if not pending or not self._voters:
            return
        rounds = sorted(
            (self._round if v == self.id else self._progress[v].acked_round for v in self._voters), reverse=True
        )
        confirmed = rounds[len(rounds) // 2]
        while pending and pending[0].round <= confirmed:
            read = pending.popleft()
            if read.requester is None:
                self._read_states.append(ReadState(read.context, read.index))
            else:
                self._send(ReadIndexResponse(self._term, self.id, read.requester, read.context, read.index, True))

    def _fail_read(self, read: _PendingRead) -> None:
        if read.requester is None:
            self._dropped_reads.append(read.context)
        else:
            self._send(ReadIndexResponse(self._term, self.id, read.requester, read.context, 0, False))

    # ================================================================================= configuration

    def _scan_configs(self, lo: int, hi: int) -> None:
        if lo > hi:
            return
        for e in self._log.entries(lo, hi + 1):
            if e.kind is EntryKind.CONFIG:
                self._configs.append((e.index, decode_config_entry(e.data)[0]))

    def _entries_replaced(self, first: int) -> None:
        """Entries from ``first`` on were (over)written: forget configurations that were truncated away and
        adopt any carried by the new entries (they take effect on append)."""
        configs = self._configs
        had = len(configs)
        while configs and configs[-1][0] >= first:
            configs.pop()
        truncated = len(configs) != had
        before = len(configs)
        self._scan_configs(first, self._log.last_index)
        if truncated or len(configs) != before:
            self._config_changed()

    def _config_at(self, index: int) -> Configuration:
        for i, c in reversed(self._configs):
            if i <= index:
                return c
        return self._snapshot_config

    def _pending_config_index(self) -> int:
        if self._configs and self._configs[-1][0] > self._log.commit:
            return self._configs[-1][0]
        return 0

    def _config_changed(self) -> None:
        cfg = self._configs[-1][1] if self._configs else self._snapshot_config
        self._config = cfg
        self._voters = cfg.sorted_voters()
        self._peers = tuple(p for p in cfg.sorted_members() if p != self.id)
        if self._role is not Role.LEADER:
            return
        progress = {}
        for p in self._peers:
            pr = self._progress.get(p)
            progress[p] = pr if pr is not None else _Progress(self._log.last_index + 1, self._now)
        self._progress = progress
        if self._transferee is not None and self._transferee not in cfg.voters:
            self._transferee = None
        self._needs_flush = True
        self._maybe_commit()
        self._release_reads()

    # ================================================================================= helpers

    def _check_can_propose(self) -> None:
        if self._role is not Role.LEADER:
            raise NotLeaderError(self._leader)
        if self._transferee is not None:
            raise ProposalDroppedError(f"leadership is being transferred to {self._transferee}; retry shortly")

    def _send(self, msg: Message) -> None:
        self._msgs.append(msg)


_HANDLERS: Final[dict[type, Callable[..., None]]] = {
    AppendEntries: RaftNode._on_append,
    AppendEntriesResponse: RaftNode._on_append_response,
    RequestVote: RaftNode._on_vote_request,
    PreVote: RaftNode._on_vote_request,
    RequestVoteResponse: RaftNode._on_vote_response,
    PreVoteResponse: RaftNode._on_prevote_response,
    InstallSnapshot: RaftNode._on_snapshot,
    InstallSnapshotResponse: RaftNode._on_snapshot_response,
    Heartbeat: RaftNode._on_heartbeat,
    HeartbeatResponse: RaftNode._on_heartbeat_response,
    TimeoutNow: RaftNode._on_timeout_now,
    ReadIndexRequest: RaftNode._on_read_request,
    ReadIndexResponse: RaftNode._on_read_response,
}
