"""The pure gossip core: ``GossipNode``, one member of a SWIM pool with the Lifeguard refinements.

No IO, no clock, no threads.  Time arrives as the ``now`` argument of every call (seconds from any
monotonic origin); randomness comes only from the ``random.Random`` passed in; messages arrive through
``receive`` and ``handle_stream`` and leave through ``take_outbox``.  The protocol is hashicorp/memberlist's
(state.go, net.go) with Serf's membership on top (tags, leave, reconnecting to failed members, reaping);
facts and design, not code.  docs/gossip.md describes the protocol and its timings.

Driver contract
===============

The driver owns the sockets and the clock.  It loops::

    node.tick(now)                      # at node.next_deadline() (and never much later: see below)
    node.receive(now, messages)         # for every UDP packet received (decode_packet() first)
    reply = node.handle_stream(now, m)  # for every stream (TCP) request; write back the reply if not None
    node.stream_response(now, token, reply_or_None)  # when an outgoing StreamRequest finishes or fails
    then, after any of these:
        for out in node.take_outbox():
            Packet         -> one UDP packet to out.to (encode_packet of its messages)
            StreamRequest  -> open TCP to out.to, send out.message, read one reply, then stream_response
                              (None on any failure or after config.tcp_timeout)
        node.take_events()  -> membership events (join, update, suspect, alive, failed, left, reap)
        node.take_pings()   -> round-trip times of direct probes, with the peer's ack payload
        node.take_queries() -> queries to answer (``respond(now, q.id, q.origin, payload)`` before q.deadline)
        node.take_query_results() -> answers and acks to our own queries, then QueryDone at their deadline

Losing, delaying, duplicating or reordering packets is fine (UDP).  Calling ``tick`` late is what a
stalled process does: when a call comes more than ``config.stall_tolerance`` after a due timer, the core
concludes it did not run (GC, SIGSTOP, a starved loop) and does not blame others for the silence it
caused: the probe in flight is abandoned without suspicion and running suspicion timers are extended by
the stall (Lifeguard's local health awareness, taken one step further than memberlist).

Design decisions
================

* Probing is memberlist's: every ``probe_interval`` the next member of a shuffled list (reshuffled after
  each full pass) gets a ping; without an ack within ``probe_timeout``, ``indirect_checks`` random members
  are asked to ping it (ping-req, with nacks) and a TCP ping goes to it directly; without any ack by the
  end of the interval it is suspected.  Both timings are multiplied by the health score + 1 (Lifeguard's
  local health awareness: missed nacks, failed probes and refutations raise it, successful probes lower
  it), so a struggling member probes less and accuses later.
* A suspicion is refuted by the suspect with a higher incarnation.  The prober of a suspect member sends
  the suspicion along with its ping (Lifeguard's buddy system), so a suspect hears of it at the next probe
  instead of waiting for gossip.  The timeout shrinks from ``suspicion_max_timeout_mult`` times the minimum
  down to the minimum as independent members confirm it (Lifeguard's dogpile, ``Suspicion``).
* Membership news is piggybacked on every packet sent and gossiped to ``gossip_nodes`` random members every
  ``gossip_interval`` while any is queued (``BroadcastQueue``).  Push-pull exchanges the full member list
  with one random member every ``push_pull_interval`` (scaled up with the pool's size) and on join.
* A dead or suspect state heard in a push-pull is taken as a suspicion only (memberlist's mergeState), so
  a stale list cannot kill a live member.  A leave is a ``Dead`` from the member itself with ``left``.
* Serf's queries (query.go): ``query`` disseminates a request through the broadcast queue like membership
  news; every member handles it once (deduplicated by origin and id, bounded), answers it if it passes
  the filters, acks it if asked, and sends the answer straight to the origin (UDP, or TCP when larger than
  a packet).  The origin collects answers until the deadline; each member's deadline is its receipt time
  plus the query's relative timeout.
* Serf's parts: tags travel with alive messages; failed members are retried now and then (Serf's
  reconnect, which heals a partition whose sides declared each other dead); failed and left members are
  forgotten after ``reconnect_timeout`` / ``tombstone_timeout`` (a ``REAP`` event).
"""

from __future__ import annotations

import heapq
import random
import re
import zlib
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final

from registry.gossip.broadcast import BroadcastQueue
from registry.gossip.config import GossipConfig, push_pull_interval, query_timeout, retransmit_limit
from registry.gossip.messages import (
    MAX_PAYLOAD_BYTES,
    MAX_QUERY_FILTERS,
    MAX_QUERY_NAME_BYTES,
    MAX_QUERY_PAYLOAD_BYTES,
    MAX_QUERY_TIMEOUT_MS,
    MAX_RELAY_FACTOR,
    MAX_RESPONSE_BYTES,
    MAX_U32,
    Ack,
    Address,
    Alive,
    Broadcast,
    Dead,
    IndirectPing,
    MemberState,
    Message,
    Nack,
    Ping,
    PushPull,
    PushState,
    Query,
    QueryResponse,
    Relay,
    StreamMessage,
    Suspect,
    encoded_size,
    validate_name,
    validate_tags,
)
from registry.gossip.suspicion import Suspicion

__all__ = [
    "GossipNode",
    "Member",
    "EventKind",
    "MemberEvent",
    "Packet",
    "StreamRequest",
    "Outgoing",
    "PingResult",
    "QueryEvent",
    "QueryAnswer",
    "QueryDone",
    "QueryError",
    "PACKET_OVERHEAD",
    "MAX_PENDING_QUERIES",
    "MAX_SEEN_QUERIES",
]

# The version byte and the largest msgpack array header of a packet.
PACKET_OVERHEAD: Final = 1 + 5
_REAP_INTERVAL: Final = 15.0  # Serf's ReapInterval
MAX_PENDING_QUERIES: Final = 64  # our own queries awaiting answers at once
MAX_SEEN_QUERIES: Final = 4096  # queries remembered for deduplication (Serf's QueryBuffer keeps 512 clocks)
# A query is remembered this long past its deadline: copies still travelling in the pool's gossip are not
# handled again.
QUERY_SEEN_GRACE: Final = 60.0
_UNSAFE_PATTERN: Final = re.compile(r"\)[*+?{]|\\[1-9]")


class QueryError(ValueError):
    """A query or response refused, in Serf's words (query.go)."""


class EventKind(Enum):
    """What happened to a member (Serf's EventMemberJoin/Update/Failed/Leave/Reap, plus memberlist's
    suspicion and its refutation, which Serf does not report)."""

    JOIN = "join"
    UPDATE = "update"
    SUSPECT = "suspect"
    ALIVE = "alive"
    FAILED = "failed"
    LEFT = "left"
    REAP = "reap"


@dataclass(frozen=True, slots=True)
class Member:
    """A member as this node currently sees it."""

    name: str
    addr: Address
    tags: Mapping[str, str]
    state: MemberState
    incarnation: int
    state_change: float
    version: int = 1

    @property
    def status(self) -> str:
        """Serf's member status (``consul members``): a suspect member is still alive to Serf."""
        return {MemberState.ALIVE: "alive", MemberState.SUSPECT: "alive", MemberState.DEAD: "failed",
                MemberState.LEFT: "left"}[self.state]  # fmt: skip


@dataclass(frozen=True, slots=True)
class MemberEvent:
    kind: EventKind
    member: Member
    at: float


@dataclass(frozen=True, slots=True)
class Packet:
    """One UDP packet: a compound of messages (the first ones addressed, the rest piggybacked news)."""

    to: Address
    messages: tuple[Message, ...]


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """One TCP exchange: send ``message``, read one reply, report it with ``stream_response(token)``."""

    token: int
    to: Address
    message: StreamMessage


Outgoing = Packet | StreamRequest


@dataclass(frozen=True, slots=True)
class PingResult:
    """A direct probe's round trip, and the payload of the peer's ack (Serf: its network coordinate)."""

    node: str
    rtt: float
    payload: bytes


@dataclass(frozen=True, slots=True)
class QueryEvent:
    """A query for this member to answer (Serf's EventQuery); ``deadline`` is in this member's time."""

    id: int
    origin: str
    name: str
    payload: bytes
    deadline: float


@dataclass(frozen=True, slots=True)
class QueryAnswer:
    """An answer (or, ``ack``, an acknowledgement) from ``node`` to this member's query ``id``."""

    id: int
    node: str
    ack: bool
    payload: bytes


@dataclass(frozen=True, slots=True)
class QueryDone:
    """This member's query ``id`` reached its deadline: no more answers are taken."""

    id: int
    responses: int
    acks: int


@dataclass(slots=True)
class _OwnQuery:
    query: Query
    deadline: float
    resend_at: float
    expected: frozenset[str]  # the live members that pass the filters when it was asked
    responded: set[str]
    acked: set[str]


@dataclass(slots=True)
class _SeenQuery:
    origin_addr: Address
    deadline: float
    forget_at: float
    relay_factor: int = 0
    responded: bool = False


@dataclass(slots=True)
class _Node:
    name: str
    addr: Address
    tags: Mapping[str, str]
    incarnation: int
    state: MemberState
    state_change: float
    version: int = 1

    def snapshot(self) -> Member:
        return Member(self.name, self.addr, self.tags, self.state, self.incarnation, self.state_change,
                      self.version)  # fmt: skip


@dataclass(slots=True)
class _Probe:
    seq: int
    target: str
    incarnation: int
    sent: float
    timeout_at: float
    end_at: float
    indirect: bool = False
    expected_nacks: int = 0
    nacks: int = 0


@dataclass(slots=True)
class _Forward:
    """An indirect ping we run for ``source``: its ack goes back under ``orig_seq``."""

    source_addr: Address
    orig_seq: int
    nack: bool
    deadline: float


@dataclass(slots=True)
class _Call:
    kind: str  # "push-pull" | "join" | "ping" | "response"
    started: float
    seq: int = 0


class _Timer(Enum):
    PROBE = 0
    PROBE_TIMEOUT = 1
    PROBE_END = 2
    FORWARD = 3
    SUSPICION = 4
    GOSSIP = 5
    PUSH_PULL = 6
    RECONNECT = 7
    REAP = 8
    QUERY = 9
    QUERY_RESEND = 10


class GossipNode:
    """One member's protocol engine.  See the module docstring for the driver contract."""

    def __init__(
        self,
        name: str,
        addr: Address,
        *,
        now: float,
        rng: random.Random,
        config: GossipConfig | None = None,
        tags: Mapping[str, str] | None = None,
        packet_overhead: int = 0,
    ) -> None:
        """``packet_overhead``: bytes the driver's packet codec adds (encryption), taken off every packet's
        budget so a sealed packet still fits ``config.udp_buffer_size``."""
        self.config = config or GossipConfig()
        self.name = validate_name(name)
        self.addr = addr
        self._rng = rng
        self._now = now
        self._budget = self.config.udp_buffer_size - PACKET_OVERHEAD - packet_overhead
        self._nodes: dict[str, _Node] = {}
        self._order: list[str] = []  # memberlist's nodes slice: the probe order, reshuffled each pass
        self._probe_index = 0
        self._live = 0  # members alive or suspect, this one included
        self._seq = 0
        self._incarnation = 0
        self._score = 0  # Lifeguard's local health score, 0..awareness_max_multiplier - 1
        self._leaving = False
        self._leave_done = False
        self._ack_payload = b""
        self._suspicions: dict[str, Suspicion] = {}
        self._probe: _Probe | None = None
        self._forwards: dict[int, _Forward] = {}
        self._calls: dict[int, _Call] = {}
        self._next_token = 0
        self._queue = BroadcastQueue()
        self._outbox: list[Outgoing] = []
        self._events: list[MemberEvent] = []
        self._pings: list[PingResult] = []
        self._timers: list[tuple[float, int, _Timer, str | int]] = []
        self._timer_serial = 0
        self._next_probe = 0.0
        self._next_gossip: float | None = None
        self._gossip_phase = now + rng.random() * self.config.gossip_interval
        self._next_push_pull = 0.0
        self._next_reconnect = 0.0
        self._next_reap = 0.0
        self._stall_mark = now
        self._states: tuple[PushState, ...] | None = None  # _local_states(), until membership changes
        self._push_pull_span = self.config.push_pull_interval
        self._join_synced_at = float("-inf")  # the last full exchange after a sampled join (_sync_after_join)
        self._queries: dict[int, _OwnQuery] = {}
        self._seen_queries: OrderedDict[tuple[str, int], _SeenQuery] = OrderedDict()
        self._query_events: list[QueryEvent] = []
        self._query_results: list[QueryAnswer | QueryDone] = []
        self.stats: Counter[str] = Counter()

        self._incarnation = 1
        self._on_alive(Alive(1, self.name, addr, dict(validate_tags(dict(tags or {}))), 1), bootstrap=True)
        # memberlist staggers each periodic task by a random fraction of its interval.
        self._next_probe = now + rng.random() * self.config.probe_interval
        self._push(self._next_probe, _Timer.PROBE, 0)
        self._next_push_pull = now + rng.random() * self.config.push_pull_interval
        self._push(self._next_push_pull, _Timer.PUSH_PULL, 0)
        # Serf's reconnect and reap tickers walk the whole member list. Their phase comes from the member's
        # name, so that servers started together (whose walks of a 10,000-member list take milliseconds each)
        # do not walk at the same instant on a shared core for as long as they run; from the name rather
        # than ``rng``, so a seeded run draws the same numbers as before.
        phase = zlib.crc32(name.encode()) / 2**32
        self._next_reconnect = now + (0.5 + phase) * self.config.reconnect_interval
        self._push(self._next_reconnect, _Timer.RECONNECT, 0)
        self._next_reap = now + (0.5 + phase) * _REAP_INTERVAL
        self._push(self._next_reap, _Timer.REAP, 0)

    # -- the driver's entry points -------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Run every timer due by ``now``."""
        self._enter(now)
        while self._timers and self._timers[0][0] <= now:
            when, _, kind, key = heapq.heappop(self._timers)
            self._fire(now, when, kind, key)

    def next_deadline(self) -> float:
        """When ``tick`` must next be called."""
        self._purge()
        return self._timers[0][0] if self._timers else float("inf")

    def receive(self, now: float, messages: Iterable[Message]) -> None:
        """Handle the messages of one UDP packet."""
        self._enter(now)
        for msg in messages:
            self.stats[type(msg).__name__] += 1
            match msg:
                case Ping():
                    self._on_ping(msg)
                case Ack():
                    self._on_ack(now, msg)
                case Alive():
                    self._on_alive(msg)
                case Suspect():
                    self._on_suspect(msg)
                case Dead():
                    self._on_dead(msg)
                case IndirectPing():
                    self._on_indirect(now, msg)
                case Nack():
                    if self._probe is not None and self._probe.seq == msg.seq:
                        self._probe.nacks += 1
                case Query():
                    self._on_query(msg)
                case QueryResponse():
                    self._on_query_response(msg)
                case Relay():
                    self.stats["query_relayed"] += 1
                    self._send(msg.to, [msg.response])

    def handle_stream(self, now: float, message: StreamMessage) -> StreamMessage | None:
        """Answer a stream request: a push-pull with our state (then merge theirs), a TCP ping with an ack."""
        self._enter(now)
        match message:
            case PushPull():
                self.stats["push_pull_in"] += 1
                k = self.config.join_sample
                if message.join and k and self._live > 2 * k:
                    # A join into a large pool: a sample, not the whole list (GossipConfig.join_sample).
                    self.stats["joins_sampled"] += 1
                    reply = PushPull(False, self.name, self._join_sample(k))
                else:
                    reply = PushPull(False, self.name, self._local_states())
                self._merge(message.states, message.source)
                return reply
            case Ping():
                if message.target != self.name:
                    self.stats["ping_wrong_node"] += 1
                    return None
                return Ack(message.seq, self._ack_payload)
            case QueryResponse():
                self._on_query_response(message)
                return Ack(message.id)
        return None

    def stream_response(self, now: float, token: int, reply: StreamMessage | None) -> bool:
        """The outcome of a ``StreamRequest``; True if it succeeded (a join counts its contacts by this)."""
        self._enter(now)
        call = self._calls.pop(token, None)
        if call is None:
            return False
        if call.kind == "response":
            if not isinstance(reply, Ack):
                self.stats["query_responses_failed"] += 1
            return isinstance(reply, Ack)
        if call.kind == "ping":
            ok = isinstance(reply, Ack) and reply.seq == call.seq
            if ok and self._probe is not None and self._probe.seq == call.seq:
                self.stats["tcp_ping_rescued"] += 1
                self._probe_succeeded(now)
            return ok
        if not isinstance(reply, PushPull):
            self.stats["push_pull_failed"] += 1
            return False
        self._merge(reply.states, reply.source)
        if call.kind == "join" and self.config.join_sample and len(reply.states) > self.config.join_sample:
            self._sync_after_join(now, reply.source)
        return True

    def _sync_after_join(self, now: float, seed: str) -> None:
        """After a join answered with a sample (or by a pool that may be larger than it said), exchange
        full state once with a random member other than the seed: the joiner learns the whole pool from a
        random member rather than from the seed (a server, in a fleet whose retry_join names the servers).
        Once per push-pull interval: a join through three seeds makes one exchange, not three."""
        if now - self._join_synced_at < self.config.push_pull_interval:
            return
        peers = self._k_random(1, lambda n: n.state is MemberState.ALIVE and n.name != seed)
        if not peers:
            return
        self._join_synced_at = now
        self.stats["join_syncs"] += 1
        self._stream(peers[0].addr, PushPull(False, self.name, self._local_states()), _Call("push-pull", now))

    def join(self, now: float, seeds: Sequence[Address]) -> list[int]:
        """Start a push-pull join with each seed; returns the stream tokens (memberlist Join)."""
        self._enter(now)
        tokens = []
        for seed in seeds:
            tokens.append(self._stream(seed, PushPull(True, self.name, self._local_states()), _Call("join", now)))
        return tokens

    def leave(self, now: float) -> None:
        """Announce a graceful leave: a dead message from ourself with the left flag, gossiped at once.

        ``leave_propagated`` turns true once the announcement has been sent its full number of times (or at
        once, with nobody to tell); the driver waits for it, bounded, before closing (memberlist Leave)."""
        self._enter(now)
        if self._leaving:
            return
        self._leaving = True
        me = self._nodes[self.name]
        if self._live <= 1:
            self._leave_done = True
        self._on_dead(Dead(me.incarnation, self.name, self.name, True))
        self._gossip(now)

    @property
    def leave_propagated(self) -> bool:
        return self._leave_done

    def force_leave(self, now: float, name: str, prune: bool = False) -> bool:
        """Serf's RemoveFailedNode: a failed member becomes left, here and (gossiped as its leave) everywhere,
        so nobody tries to reconnect to it; an alive member is left alone (it would refute).  ``prune`` also
        forgets a left member at once instead of after ``tombstone_timeout`` (Serf's prune; here on this
        member only, the others forget it when their tombstone runs out).  False: no such member."""
        self._enter(now)
        node = self._nodes.get(name)
        if node is None or name == self.name:
            return node is not None
        if node.state is MemberState.DEAD:
            self._on_dead(Dead(node.incarnation, name, name, True))
        if prune and node.state is MemberState.LEFT:
            self._erase([node])
        return True

    def set_tags(self, now: float, tags: Mapping[str, str]) -> None:
        """Change our tags: a new incarnation, an update event everywhere (memberlist UpdateNode)."""
        self._enter(now)
        tags = dict(validate_tags(dict(tags)))
        me = self._nodes[self.name]
        self._incarnation += 1
        self._broadcast_self(me, tags)
        old = me.tags
        me.tags = tags
        me.incarnation = self._incarnation
        self._states = None
        if old != tags:
            self._event(EventKind.UPDATE, me)

    def set_ack_payload(self, payload: bytes) -> None:
        """What our acks carry (Serf's ping delegate: the local network coordinate)."""
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"an ack payload is at most {MAX_PAYLOAD_BYTES} bytes")
        self._ack_payload = bytes(payload)

    # -- queries (Serf's query.go) --------------------------------------------------------------------

    def query(self, now: float, name: str, payload: bytes = b"", *, timeout: float | None = None,
              ack: bool = False, filter_nodes: Sequence[str] = (), filter_tags: Mapping[str, str] | None = None,
              relay_factor: int = 0) -> int:  # fmt: skip
        """Ask the pool: returns the query's id.  Answers and acks come out of ``take_query_results`` until
        a ``QueryDone`` at the deadline (``timeout``, by default Serf's DefaultQueryTimeout for the pool's
        size).  This member handles its own query too (it appears in ``take_queries``), as Serf's does.
        ``relay_factor`` (0-5): answers also travel through that many random members.  Raises QueryError
        for an oversized query or too many in flight."""
        self._enter(now)
        if self._leaving:  # no member would answer to a left one: refuse now rather than wait out a timeout
            raise QueryError("this member has left the pool")
        if not name or len(name.encode()) > MAX_QUERY_NAME_BYTES:
            raise QueryError(f"query name must be 1 to {MAX_QUERY_NAME_BYTES} bytes")
        if len(payload) > MAX_QUERY_PAYLOAD_BYTES:
            raise QueryError(f"query exceeds limit of {MAX_QUERY_PAYLOAD_BYTES} bytes")
        if len(filter_nodes) > MAX_QUERY_FILTERS or len(filter_tags or {}) > MAX_QUERY_FILTERS:
            raise QueryError(f"a query has at most {MAX_QUERY_FILTERS} filters of each kind")
        if not 0 <= relay_factor <= MAX_RELAY_FACTOR:
            raise QueryError(f"relay factor must be 0 to {MAX_RELAY_FACTOR}")
        if len(self._queries) >= MAX_PENDING_QUERIES:
            raise QueryError(f"too many queries in flight (at most {MAX_PENDING_QUERIES})")
        if timeout is None:
            timeout = query_timeout(self.config.gossip_interval, self.config.query_timeout_mult, self._live)
        timeout_ms = min(MAX_QUERY_TIMEOUT_MS, max(1, int(timeout * 1000)))
        qid = self._rng.getrandbits(32)
        while qid in self._queries or (self.name, qid) in self._seen_queries:
            qid = self._rng.getrandbits(32)
        q = Query(qid, name, bytes(payload), self.name, self.addr, timeout_ms, ack,
                  tuple(validate_name(n, "filter node") for n in filter_nodes), dict(filter_tags or {}),
                  relay_factor)  # fmt: skip
        if encoded_size(q) > self._budget:
            raise QueryError(f"query exceeds limit of {self._budget} bytes")
        deadline = now + timeout_ms / 1000
        expected = frozenset(n.name for n in self._nodes.values()
                             if n.state in (MemberState.ALIVE, MemberState.SUSPECT) and _matches(q, n.name, n.tags))  # fmt: skip
        own = _OwnQuery(q, deadline, now + timeout_ms / 2000, expected, set(), set())
        self._queries[qid] = own
        self._push(deadline, _Timer.QUERY, qid)
        self._push(own.resend_at, _Timer.QUERY_RESEND, qid)
        self.stats["queries_out"] += 1
        self._on_query(q)
        return qid

    def respond(self, now: float, query_id: int, origin: str, payload: bytes = b"") -> None:
        """Answer a query from ``take_queries`` (Serf's Query.Respond): once, before its deadline, at most
        ``MAX_RESPONSE_BYTES``; in one UDP packet when it fits, else over TCP."""
        self._enter(now)
        seen = self._seen_queries.get((origin, query_id))
        if seen is None:
            raise QueryError("unknown query")
        if seen.responded:
            raise QueryError("response already sent")
        if now > seen.deadline:
            raise QueryError("response is past the deadline")
        if len(payload) > MAX_RESPONSE_BYTES:
            raise QueryError(f"response exceeds limit of {MAX_RESPONSE_BYTES} bytes")
        seen.responded = True
        self._answer(origin, seen.origin_addr, QueryResponse(query_id, self.name, False, bytes(payload)),
                     seen.relay_factor)  # fmt: skip

    def take_queries(self) -> list[QueryEvent]:
        out, self._query_events = self._query_events, []
        return out

    def take_query_results(self) -> list[QueryAnswer | QueryDone]:
        out, self._query_results = self._query_results, []
        return out

    @property
    def pending_queries(self) -> int:
        return len(self._queries)

    def query_expected(self, query_id: int) -> frozenset[str]:
        """The members expected to answer our query: those alive (or suspect) that pass its filters."""
        q = self._queries.get(query_id)
        return q.expected if q is not None else frozenset()

    def _query_resend(self, qid: int) -> None:
        """Halfway to the deadline, the query goes straight to each expected member that has neither
        answered nor acknowledged.  Gossip reaches each member with high probability, not certainty
        (each copy is sent a limited number of times); Serf leaves the rest to chance, an operation that
        must reach every member (a key rotation) should not."""
        q = self._queries[qid]
        for name in sorted(q.expected - q.responded - q.acked - {self.name}):
            node = self._nodes.get(name)
            if node is not None and node.state in (MemberState.ALIVE, MemberState.SUSPECT):
                self.stats["queries_resent"] += 1
                self._send(node.addr, [q.query])

    def _answer(self, origin: str, addr: Address, msg: QueryResponse, relay_factor: int) -> None:
        if origin == self.name:
            self._on_query_response(msg)
            return
        self.stats["query_acks_out" if msg.ack else "query_responses_out"] += 1
        if 64 + len(msg.source) * 4 + len(msg.payload) + len(addr.host) > self._budget:
            self._stream(addr, msg, _Call("response", self._now))
            return
        self._send(addr, [msg])
        if relay_factor and len(msg.payload) <= MAX_PAYLOAD_BYTES:
            # Serf's relayResponse: the same answer through random live members, to the origin.
            relay = Relay(addr, msg)
            for peer in self._k_random(relay_factor, lambda n: n.name != origin and n.state is MemberState.ALIVE):
                self._send(peer.addr, [relay])

    def _on_query(self, q: Query) -> None:
        """Serf's handleQuery: once per (origin, id); rebroadcast; ack and hand over if the filters pass."""
        key = (q.source, q.id)
        seen = self._seen_queries
        if key in seen:
            self.stats["queries_duplicate"] += 1
            return
        while seen and (len(seen) >= MAX_SEEN_QUERIES or next(iter(seen.values())).forget_at < self._now):
            seen.popitem(last=False)
        timeout = q.timeout_ms / 1000
        deadline = self._now + timeout
        seen[key] = _SeenQuery(q.source_addr, deadline, deadline + QUERY_SEEN_GRACE, q.relay_factor)
        if q.source != self.name:
            self.stats["queries_in"] += 1
        self._broadcast(key, q)
        if self._leaving or not self._passes(q):
            return
        if q.ack:
            self._answer(q.source, q.source_addr, QueryResponse(q.id, self.name, True), q.relay_factor)
        self._query_events.append(QueryEvent(q.id, q.source, q.name, q.payload, deadline))

    def _passes(self, q: Query) -> bool:
        """Serf's shouldProcessQuery: named in the node filter (if any), and every tag filter's regular
        expression found in our tag's value.  Patterns that could backtrack without end (a quantified
        group, a back reference) never match: Go's RE2 has no such case, Python's re has."""
        return _matches(q, self.name, self._nodes[self.name].tags)

    def _on_query_response(self, r: QueryResponse) -> None:
        q = self._queries.get(r.id)
        if q is None:
            self.stats["query_responses_late"] += 1
            return
        seen = q.acked if r.ack else q.responded
        if r.source in seen:
            self.stats["query_responses_duplicate"] += 1
            return
        seen.add(r.source)
        self.stats["query_acks_in" if r.ack else "query_responses_in"] += 1
        self._query_results.append(QueryAnswer(r.id, r.source, r.ack, r.payload))

    def _query_ended(self, qid: int) -> None:
        q = self._queries.pop(qid)
        self._query_results.append(QueryDone(qid, len(q.responded), len(q.acked)))

    def take_outbox(self) -> list[Outgoing]:
        out, self._outbox = self._outbox, []
        return out

    def take_events(self) -> list[MemberEvent]:
        out, self._events = self._events, []
        return out

    def take_pings(self) -> list[PingResult]:
        out, self._pings = self._pings, []
        return out

    # -- views ---------------------------------------------------------------------------------------

    def members(self) -> list[Member]:
        return [n.snapshot() for n in self._nodes.values()]

    def member(self, name: str) -> Member | None:
        n = self._nodes.get(name)
        return n.snapshot() if n is not None else None

    @property
    def local_member(self) -> Member:
        return self._nodes[self.name].snapshot()

    @property
    def num_live(self) -> int:
        """Members alive or suspect, this one included (memberlist's estNumNodes)."""
        return self._live

    @property
    def health_score(self) -> int:
        return self._score

    @property
    def incarnation(self) -> int:
        return self._incarnation

    @property
    def queued_broadcasts(self) -> int:
        return len(self._queue)

    # -- timers --------------------------------------------------------------------------------------

    def _push(self, when: float, kind: _Timer, key: str | int) -> None:
        self._timer_serial += 1
        heapq.heappush(self._timers, (when, self._timer_serial, kind, key))

    def _valid(self, when: float, kind: _Timer, key: str | int) -> bool:
        match kind:
            case _Timer.PROBE:
                return when == self._next_probe
            case _Timer.PROBE_TIMEOUT:
                p = self._probe
                return p is not None and p.seq == key and not p.indirect and p.timeout_at == when
            case _Timer.PROBE_END:
                p = self._probe
                return p is not None and p.seq == key and p.end_at == when
            case _Timer.FORWARD:
                f = self._forwards.get(key)  # type: ignore[call-overload]
                return f is not None and f.deadline == when
            case _Timer.SUSPICION:
                s = self._suspicions.get(key)  # type: ignore[call-overload]
                return s is not None and s.deadline == when
            case _Timer.GOSSIP:
                return when == self._next_gossip
            case _Timer.PUSH_PULL:
                return when == self._next_push_pull
            case _Timer.RECONNECT:
                return when == self._next_reconnect
            case _Timer.REAP:
                return when == self._next_reap
            case _Timer.QUERY:
                q = self._queries.get(key)  # type: ignore[call-overload]
                return q is not None and q.deadline == when
            case _Timer.QUERY_RESEND:
                q = self._queries.get(key)  # type: ignore[call-overload]
                return q is not None and q.resend_at == when
        return False

    def _purge(self) -> None:
        while self._timers and not self._valid(self._timers[0][0], self._timers[0][2], self._timers[0][3]):
            heapq.heappop(self._timers)

    def _enter(self, now: float) -> None:
        if now < self._now:
            now = self._now
        self._purge()
        if self._timers:
            # A stall is noticed once: the backlog read right after it (and its timers) come after the mark.
            due = max(self._timers[0][0], self._stall_mark)
            if now - due > self.config.stall_tolerance:
                self._stalled(now, now - due)
        self._now = now

    def _stalled(self, now: float, gap: float) -> None:
        """We did not run for ``gap`` seconds: what we did not hear in that time says nothing of others."""
        self.stats["stalls"] += 1
        self._stall_mark = now
        if self._probe is not None:
            self._probe = None
            self.stats["probes_abandoned"] += 1
        self._forwards.clear()
        self._awareness(1)
        for name, s in self._suspicions.items():
            s.postpone(gap)
            self._push(s.deadline, _Timer.SUSPICION, name)

    def _fire(self, now: float, when: float, kind: _Timer, key: str | int) -> None:
        if not self._valid(when, kind, key):
            return
        match kind:
            case _Timer.PROBE:
                self._probe_tick(now)
            case _Timer.PROBE_TIMEOUT:
                self._probe_timed_out(now)
            case _Timer.PROBE_END:
                self._probe_ended(now)
            case _Timer.FORWARD:
                f = self._forwards.pop(key)  # type: ignore[call-overload]
                if f.nack:
                    self._send(f.source_addr, [Nack(f.orig_seq)])
            case _Timer.SUSPICION:
                self._suspicion_expired(now, key)  # type: ignore[arg-type]
            case _Timer.GOSSIP:
                self._next_gossip = None
                self._gossip(now)
            case _Timer.PUSH_PULL:
                self._push_pull_tick(now)
            case _Timer.RECONNECT:
                self._reconnect_tick(now)
            case _Timer.REAP:
                self._reap_tick(now)
            case _Timer.QUERY:
                self._query_ended(key)  # type: ignore[arg-type]
            case _Timer.QUERY_RESEND:
                self._query_resend(key)  # type: ignore[arg-type]

    # -- probing -------------------------------------------------------------------------------------

    def _scaled(self, t: float) -> float:
        return t * (self._score + 1)

    def _awareness(self, delta: int) -> None:
        self._score = max(0, min(self.config.awareness_max_multiplier - 1, self._score + delta))

    def _next_seq(self) -> int:
        self._seq = self._seq + 1 if self._seq < MAX_U32 else 1
        return self._seq

    def _probe_tick(self, now: float) -> None:
        if self._probe is not None:  # the previous probe's end is due at this same instant
            self._probe_ended(now)
        interval = self._scaled(self.config.probe_interval)
        self._next_probe = now + interval
        self._push(self._next_probe, _Timer.PROBE, 0)
        target = self._next_probe_target()
        if target is None:
            return
        seq = self._next_seq()
        msgs: list[Message] = [Ping(seq, target.name, self.name, self.addr)]
        if target.state is MemberState.SUSPECT:
            msgs.append(Suspect(target.incarnation, target.name, self.name))  # the buddy system
        self._send(target.addr, msgs)
        p = _Probe(seq, target.name, target.incarnation, now, now + self._scaled(self.config.probe_timeout),
                   now + interval)  # fmt: skip
        self._probe = p
        self._push(p.timeout_at, _Timer.PROBE_TIMEOUT, seq)
        self._push(p.end_at, _Timer.PROBE_END, seq)
        self.stats["probes"] += 1

    def _next_probe_target(self) -> _Node | None:
        checked = 0
        while checked < len(self._order):
            if self._probe_index >= len(self._order):
                self._rng.shuffle(self._order)
                self._probe_index = 0
            node = self._nodes[self._order[self._probe_index]]
            self._probe_index += 1
            checked += 1
            if node.name != self.name and node.state in (MemberState.ALIVE, MemberState.SUSPECT):
                return node
        return None

    def _probe_timed_out(self, now: float) -> None:
        p = self._probe
        assert p is not None
        p.indirect = True
        target = self._nodes.get(p.target)
        if target is None:
            return
        peers = self._k_random(self.config.indirect_checks, lambda n: n.name != p.target and n.state is MemberState.ALIVE)
        msg = IndirectPing(p.seq, target.name, target.addr, True, self.name, self.addr)
        for peer in peers:
            self._send(peer.addr, [msg])
        p.expected_nacks = len(peers)
        if self.config.tcp_pings:
            self._stream(target.addr, Ping(p.seq, target.name, self.name, self.addr), _Call("ping", now, p.seq))

    def _probe_succeeded(self, now: float) -> None:
        self._probe = None
        self._awareness(-1)

    def _probe_ended(self, now: float) -> None:
        p = self._probe
        assert p is not None
        self._probe = None
        if p.expected_nacks > 0:
            self._awareness(max(0, p.expected_nacks - p.nacks))
        else:
            self._awareness(1)
        self.stats["probes_failed"] += 1
        self._on_suspect(Suspect(p.incarnation, p.target, self.name))

    def _on_ping(self, msg: Ping) -> None:
        if msg.target != self.name:
            self.stats["ping_wrong_node"] += 1
            return
        self._send(msg.source_addr, [Ack(msg.seq, self._ack_payload)])

    def _on_ack(self, now: float, msg: Ack) -> None:
        p = self._probe
        if p is not None and p.seq == msg.seq:
            if not p.indirect:
                self._pings.append(PingResult(p.target, now - p.sent, msg.payload))
            self._probe_succeeded(now)
            return
        f = self._forwards.pop(msg.seq, None)
        if f is not None:
            self._send(f.source_addr, [Ack(f.orig_seq)])

    def _on_indirect(self, now: float, msg: IndirectPing) -> None:
        seq = self._next_seq()
        f = _Forward(msg.source_addr, msg.seq, msg.nack, now + self.config.probe_timeout)
        self._forwards[seq] = f
        self._push(f.deadline, _Timer.FORWARD, seq)
        self._send(msg.target_addr, [Ping(seq, msg.target, self.name, self.addr)])

    # -- membership state ----------------------------------------------------------------------------

    def _set_state(self, node: _Node, state: MemberState, now: float) -> None:
        was_live = node.state in (MemberState.ALIVE, MemberState.SUSPECT)
        is_live = state in (MemberState.ALIVE, MemberState.SUSPECT)
        self._live += is_live - was_live
        node.state = state
        node.state_change = now
        self._states = None

    def _event(self, kind: EventKind, node: _Node) -> None:
        self._events.append(MemberEvent(kind, node.snapshot(), self._now))

    def _on_alive(self, a: Alive, bootstrap: bool = False, news: bool = True) -> None:
        """memberlist aliveNode.  ``news=False``: a member we did not know, learned from a full state
        exchange; it is old news to the pool, so it is not re-broadcast (memberlist re-broadcasts every
        member a joiner learns, n broadcasts per join)."""
        if self._leaving and a.node == self.name:
            return
        node = self._nodes.get(a.node)
        is_new = updates_addr = False
        if node is None:
            node = _Node(a.node, a.addr, a.tags, 0, MemberState.DEAD, self._now, a.version)
            self._nodes[a.node] = node
            self._insert_in_order(a.node)
            is_new = True
        elif node.addr != a.addr:
            reclaim = self.config.dead_node_reclaim_time
            can_reclaim = reclaim > 0 and self._now - node.state_change > reclaim
            if node.state is MemberState.LEFT or (node.state is MemberState.DEAD and can_reclaim):
                updates_addr = True
            else:
                self.stats["address_conflicts"] += 1
                return
        is_local = a.node == self.name
        if a.incarnation <= node.incarnation and not is_local and not updates_addr and not is_new:
            return
        if a.incarnation < node.incarnation and is_local:
            return
        self._suspicions.pop(a.node, None)
        old_state, old_tags = node.state, node.tags
        if not bootstrap and is_local:
            if a.incarnation == node.incarnation and a.tags == node.tags and a.addr == node.addr:
                return
            self._refute(node, a.incarnation)
            return
        if news or not is_new:
            self._broadcast(a.node, a)
        self._states = None
        node.incarnation = a.incarnation
        node.tags = a.tags
        node.addr = a.addr
        node.version = a.version
        if node.state is not MemberState.ALIVE:
            self._set_state(node, MemberState.ALIVE, self._now)
        if old_state in (MemberState.DEAD, MemberState.LEFT):
            self._event(EventKind.JOIN, node)
        else:
            if old_state is MemberState.SUSPECT:
                self._event(EventKind.ALIVE, node)
            if old_tags != node.tags:
                self._event(EventKind.UPDATE, node)

    def _on_suspect(self, s: Suspect) -> None:
        node = self._nodes.get(s.node)
        if node is None or s.incarnation < node.incarnation:
            return
        timer = self._suspicions.get(s.node)
        if timer is not None:
            if timer.confirm(s.source, self._now):
                self._broadcast(s.node, s)
                self._push(timer.deadline, _Timer.SUSPICION, s.node)
            return
        if node.state is not MemberState.ALIVE:
            return
        if s.node == self.name:
            self.stats["refuted_suspect"] += 1
            self._refute(node, s.incarnation)
            return
        self._broadcast(s.node, s)
        node.incarnation = s.incarnation
        self._states = None
        self._set_state(node, MemberState.SUSPECT, self._now)
        # memberlist: k = SuspicionMult - 2 confirmations expected, none in a pool too small to give them.
        k = self.config.suspicion_mult - 2
        if self._live - 2 < k:
            k = 0
        lo = self.config.suspicion_min(self._live)
        hi = self.config.suspicion_max_timeout_mult * lo
        timer = Suspicion.begin(s.source, self._now, k, lo, hi)
        self._suspicions[s.node] = timer
        self._push(timer.deadline, _Timer.SUSPICION, s.node)
        self._event(EventKind.SUSPECT, node)

    def _suspicion_expired(self, now: float, name: str) -> None:
        timer = self._suspicions.pop(name)
        node = self._nodes.get(name)
        if node is None or node.state is not MemberState.SUSPECT:
            return
        if timer.k > 0 and timer.n < timer.k:
            self.stats["degraded_timeouts"] += 1
        self._on_dead(Dead(node.incarnation, name, self.name, False))

    def _on_dead(self, d: Dead) -> None:
        node = self._nodes.get(d.node)
        if node is None or d.incarnation < node.incarnation:
            return
        self._suspicions.pop(d.node, None)
        left = d.left and d.source == d.node
        if node.state is MemberState.LEFT or (node.state is MemberState.DEAD and not left):
            return  # a failed member still becomes left on its leave (Serf's leave intent, force-leave)
        if d.node == self.name:
            if not self._leaving:
                self.stats["refuted_dead"] += 1
                self._refute(node, d.incarnation)
                return
            self._broadcast(d.node, d, self._mark_left)
        else:
            self._broadcast(d.node, d)
        node.incarnation = d.incarnation
        self._states = None
        self._set_state(node, MemberState.LEFT if left else MemberState.DEAD, self._now)
        self._event(EventKind.LEFT if left else EventKind.FAILED, node)

    def _mark_left(self) -> None:
        self._leave_done = True

    def _refute(self, me: _Node, accused: int) -> None:
        """Answer an accusation with a higher incarnation (memberlist refute); it costs health score."""
        inc = self._incarnation + 1
        if accused >= inc:
            inc = accused + 1
        self._incarnation = inc
        me.incarnation = inc
        self._states = None
        self._awareness(1)
        self._broadcast_self(me, me.tags)

    def _broadcast_self(self, me: _Node, tags: Mapping[str, str]) -> None:
        self._broadcast(self.name, Alive(self._incarnation, self.name, self.addr, tags, me.version))

    def _merge(self, states: Iterable[PushState], source: str) -> None:
        """memberlist mergeState: alive as alive, left as left, dead or suspect only as a suspicion.

        Members first heard of here are news only if they are the exchange's ``source`` (a joiner)."""
        for st in states:
            if st.state is MemberState.ALIVE:
                node = self._nodes.get(st.name)
                if node is not None and st.incarnation <= node.incarnation and st.name != self.name:
                    continue  # the common case, decided without building a message
                if node is None and st.name != self.name and st.name != source:
                    self._learn(st)  # what _on_alive does for a member it never heard of, without news
                    continue
                alive = Alive(st.incarnation, st.name, st.addr, st.tags)
                self._on_alive(alive, news=st.name == source)
            elif st.state is MemberState.LEFT:
                self._on_dead(Dead(st.incarnation, st.name, st.name, True))
            else:
                self._on_suspect(Suspect(st.incarnation, st.name, self.name))

    def _learn(self, st: PushState) -> None:
        node = _Node(st.name, st.addr, st.tags, st.incarnation, MemberState.ALIVE, self._now)
        self._nodes[st.name] = node
        self._insert_in_order(st.name)
        self._live += 1
        self._states = None
        self._event(EventKind.JOIN, node)

    def _insert_in_order(self, name: str) -> None:
        """memberlist inserts a new node at a random place in the probe order."""
        order = self._order
        order.append(name)
        i = int(self._rng.random() * len(order))
        order[i], order[-1] = order[-1], order[i]

    def _join_sample(self, k: int) -> tuple[PushState, ...]:
        """This member and ``k`` random live members, as push-pull states (a join's answer in a large pool)."""
        picked = [self._nodes[self.name], *self._k_random(k, lambda n: n.state is MemberState.ALIVE)]
        return tuple(PushState(n.name, n.addr, n.tags, n.incarnation, n.state) for n in picked)

    def _local_states(self) -> tuple[PushState, ...]:
        if self._states is None:
            self._states = tuple(PushState(n.name, n.addr, n.tags, n.incarnation, n.state)
                                 for n in self._nodes.values())  # fmt: skip
        return self._states

    # -- dissemination -------------------------------------------------------------------------------

    def _broadcast(self, node: str | tuple[str, int], msg: Broadcast, on_done: Callable[[], None] | None = None) -> None:
        self._queue.queue(node, msg, encoded_size(msg), on_done)
        if self._next_gossip is None:
            interval = self.config.gossip_interval
            steps = max(0.0, (self._now - self._gossip_phase) // interval + 1)
            self._next_gossip = self._gossip_phase + steps * interval
            self._push(self._next_gossip, _Timer.GOSSIP, 0)

    def _send(self, to: Address, msgs: list[Message]) -> None:
        """One packet with ``msgs`` and as much queued news as fits (memberlist piggybacks on every send)."""
        used = sum(_approx_size(m) for m in msgs)
        if self._queue:
            msgs.extend(self._queue.take(self._budget - used, 0, self._limit()))
        self._outbox.append(Packet(to, tuple(msgs)))

    def _limit(self) -> int:
        return retransmit_limit(self.config.retransmit_mult, self._live)

    def _gossip(self, now: float) -> None:
        if not self._queue:
            return
        dead_time = self.config.gossip_to_the_dead_time

        def eligible(n: _Node) -> bool:
            return n.state in (MemberState.ALIVE, MemberState.SUSPECT) or (
                n.state is MemberState.DEAD and now - n.state_change <= dead_time
            )

        for peer in self._k_random(self.config.gossip_nodes, eligible):
            msgs = self._queue.take(self._budget, 0, self._limit())
            if not msgs:
                break
            self._outbox.append(Packet(peer.addr, tuple(msgs)))
        if self._queue and self._next_gossip is None:
            self._next_gossip = now + self.config.gossip_interval
            self._push(self._next_gossip, _Timer.GOSSIP, 0)

    def _k_random(self, k: int, accept: Callable[[_Node], bool]) -> list[_Node]:
        """Up to ``k`` distinct random members other than us that ``accept`` (memberlist kRandomNodes)."""
        n = len(self._order)
        out: list[_Node] = []
        if k <= 0 or n == 0:
            return out
        if n < 3 * k:
            names = list(self._order)
            self._rng.shuffle(names)
            for name in names:
                node = self._nodes[name]
                if name != self.name and accept(node):
                    out.append(node)
                    if len(out) == k:
                        break
            return out
        seen: set[str] = set()
        for _ in range(3 * n):
            name = self._order[self._rng.randrange(n)]
            if name in seen or name == self.name:
                continue
            seen.add(name)
            node = self._nodes[name]
            if accept(node):
                out.append(node)
                if len(out) == k:
                    break
        return out

    # -- push-pull, reconnect, reap ------------------------------------------------------------------

    def _stream(self, to: Address, msg: StreamMessage, call: _Call) -> int:
        self._next_token += 1
        self._calls[self._next_token] = call
        self._outbox.append(StreamRequest(self._next_token, to, msg))
        return self._next_token

    def _push_pull_tick(self, now: float) -> None:
        span = push_pull_interval(self.config.push_pull_interval, self._live)
        if span > self._push_pull_span:
            # The pool grew since this exchange was scheduled (a fresh member learns the pool on join):
            # spread it over the longer interval too, or a pool started together would exchange its
            # whole state all at once at the unscaled rate.
            self._next_push_pull = now + self._rng.random() * (span - self._push_pull_span)
            self._push_pull_span = span
            self._push(self._next_push_pull, _Timer.PUSH_PULL, 0)
            return
        self._push_pull_span = span
        self._next_push_pull = now + span
        self._push(self._next_push_pull, _Timer.PUSH_PULL, 0)
        # A driver that lost a stream without answering must not leak its call.
        stale = now - 2 * self.config.tcp_timeout
        for token in [t for t, c in self._calls.items() if c.started < stale]:
            del self._calls[token]
        peers = self._k_random(1, lambda n: n.state is MemberState.ALIVE)
        if peers:
            self.stats["push_pull_out"] += 1
            self._stream(peers[0].addr, PushPull(False, self.name, self._local_states()), _Call("push-pull", now))

    def _reconnect_tick(self, now: float) -> None:
        """Serf's reconnect: now and then try a failed member again, with a chance of failed / alive."""
        self._next_reconnect = now + self.config.reconnect_interval
        self._push(self._next_reconnect, _Timer.RECONNECT, 0)
        failed = [n for n in self._nodes.values() if n.state is MemberState.DEAD]
        if not failed:
            return
        alive = max(1, self._live - 1)
        if self._rng.random() > len(failed) / alive:
            return
        target = self._rng.choice(failed)
        self.stats["reconnects"] += 1
        self._stream(target.addr, PushPull(True, self.name, self._local_states()), _Call("join", now))

    def _reap_tick(self, now: float) -> None:
        self._next_reap = now + _REAP_INTERVAL
        self._push(self._next_reap, _Timer.REAP, 0)
        gone = [n for n in self._nodes.values()
                if (n.state is MemberState.DEAD and now - n.state_change > self.config.reconnect_timeout)
                or (n.state is MemberState.LEFT and now - n.state_change > self.config.tombstone_timeout)]  # fmt: skip
        if gone:
            self._erase(gone)

    def _erase(self, gone: list[_Node]) -> None:
        """Forget members that are failed or left (never live ones: ``_live`` does not count them)."""
        self._states = None
        for n in gone:
            del self._nodes[n.name]
            self._suspicions.pop(n.name, None)
            self._event(EventKind.REAP, n)
        names = {n.name for n in gone}
        self._order = [name for name in self._order if name not in names]
        self._probe_index = min(self._probe_index, len(self._order))


def _matches(q: Query, name: str, tags: Mapping[str, str]) -> bool:
    """Serf's shouldProcessQuery for the member ``name`` with ``tags``."""
    if q.filter_nodes and name not in q.filter_nodes:
        return False
    for tag, pattern in q.filter_tags.items():
        if len(pattern) > 256 or _UNSAFE_PATTERN.search(pattern):
            return False
        try:
            if re.search(pattern, tags.get(tag, "")) is None:
                return False
        except re.error:
            return False
    return True


def _approx_size(msg: Message) -> int:
    """An upper bound of a direct message's encoded size, without encoding it."""
    match msg:
        case Ping():
            return 32 + len(msg.target) * 4 + len(msg.source) * 4 + len(msg.source_addr.host)
        case IndirectPing():
            return 48 + (len(msg.target) + len(msg.source)) * 4 + len(msg.target_addr.host) + len(msg.source_addr.host)
        case Ack():
            return 16 + len(msg.payload)
        case Nack():
            return 8
    return encoded_size(msg)

