"""The query engine: request bytes in, response bytes (or a request to forward) out, with the answer cache.

No sockets, no event loop, no clock: the server passes ``now`` and owns the IO, so tests drive the engine
directly and the hot path is plain Python.

Two cache levels:

- packets: the request bytes after the 2-byte ID (flags, counts, question, OPT) map to what parsing them
  produced, so a repeated query is not parsed again. The ID is patched into each response; RD, CD and the
  EDNS parameters are part of the key because they change the response.
- answers: the question bytes (name as sent, type, class) map to the encoded answer, its dependencies and
  the store it was built from. An answer is used while the store object is the same (a snapshot restore
  replaces it) and, if anything at all was written since, while every per-name index it read is unchanged.
  So a hot name costs two dictionary lookups, an integer compare and a shuffle; a write to another service
  costs it one walk over its few dependencies.

Both are bounded (oldest entries go first), so a flood of random names cannot grow memory.

Under ACLs (``set_acl``) the catalog is read through ``dns.acl.ACLView`` with the agent's default token's
authorizer: one authorizer answers every query, so the caches stay keyed by the question alone and are
dropped whole when the authorizer changes (an ACL write, a new default token). With ACLs off nothing on the
hit path changes: the filter is applied only when an answer is computed.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Callable
from dataclasses import dataclass

from dnslib import DNSRecord

from dns.acl import ACLUnavailable, ACLView
from dns.answer import UDP_ANSWER_CAP, Prepared, all_renderings, prepare, render
from dns.catalog import Dep, FoldIndex, RecordingView, deps_valid
from dns.config import DNSConfig
from dns.resolver import CatalogReader, Question, Resolution, Rng, resolve
from dns.wire import (
    BADVERS,
    NOERROR,
    NXDOMAIN,
    QR,
    REFUSED,
    SERVFAIL,
    TC,
    BadQuery,
    Query,
    error_reply,
    header,
    opt_record,
    parse_query,
)
from registry.acl.authorizer import Authorizer
from registry.state.store import StateStore

__all__ = ["Engine", "Forward", "MAX_UDP_PAYLOAD", "MAX_TCP_MESSAGE"]

MAX_UDP_PAYLOAD = 65535 - 68  # Consul's maxUDPDatagramSize: the most an EDNS client can ask for over UDP
MAX_TCP_MESSAGE = 65535  # the two-byte length prefix


@dataclass(frozen=True, slots=True)
class Forward:
    """A question outside our domain, for the recursors. The server does the IO."""

    query: Query  # as parsed from the first packet with these bytes: its ID is not this request's
    qid: int  # this request's ID
    data: bytes
    tcp: bool
    max_size: int


# An answer whose dependencies changed is rebuilt on its next query. A big one (a service with a thousand
# instances costs over ten milliseconds to rebuild) may be served stale for up to GRACE_PER_RECORD per record
# it holds, at most MAX_GRACE, so a big service whose health churns many times a second is rebuilt a bounded
# number of times rather than on every query. Answers under GRACE_FROM records are always rebuilt at once.
GRACE_FROM = 100
GRACE_PER_RECORD = 20e-6
MAX_GRACE = 0.05


class _Entry:
    __slots__ = ("prepared", "deps", "store", "index", "expires", "built", "grace", "dead")

    def __init__(self, prepared: Prepared, deps: tuple[Dep, ...], store: StateStore, now: float,
                 max_age: float) -> None:  # fmt: skip
        self.prepared = prepared
        self.deps = deps
        self.store = store
        self.index = store.index
        self.built = now
        self.expires = now + max_age
        records = prepared.records
        self.grace = min(MAX_GRACE, records * GRACE_PER_RECORD) if records >= GRACE_FROM else 0.0
        self.dead = False


class _Packet:
    __slots__ = ("query", "opt", "max_size", "udp_cap", "entry", "tail", "tails", "cumulative", "memo_bytes")

    def __init__(self, query: Query, tcp: bool, udp_answer_limit: int) -> None:
        self.query = query
        edns = query.edns
        self.opt = opt_record(edns) if edns is not None else b""
        if tcp:
            self.max_size = MAX_TCP_MESSAGE
        elif edns is None:
            self.max_size = 512
        else:
            self.max_size = min(max(edns.udp_size, 512), MAX_UDP_PAYLOAD)
        self.udp_cap = min(UDP_ANSWER_CAP, udp_answer_limit) if not tcp and edns is None else 0
        self.entry: _Entry | None = None
        self.tail: bytes | None = None  # a deterministic response minus its ID, once rendered
        # or every response the query can get (minus the ID), and their cumulative probabilities
        self.tails: list[bytes] | None = None
        self.cumulative: list[float] | None = None
        self.memo_bytes = 0


class Engine:
    def __init__(
        self,
        cfg: DNSConfig,
        get_store: Callable[[], StateStore],
        rng: Rng,
        *,
        max_answers: int = 10_000,
        max_packets: int = 20_000,
        max_age: float = 10.0,
        max_memo_bytes: int = 32 << 20,
    ) -> None:
        self.cfg = cfg
        self._get_store = get_store
        self._rng = rng
        self._folds = FoldIndex()
        self._answers: dict[bytes, _Entry] = {}
        self._udp: dict[bytes, _Packet] = {}
        self._tcp: dict[bytes, _Packet] = {}
        self._max_answers = max_answers
        self._max_packets = max_packets
        # Even a valid answer is rebuilt after this long: it refreshes the SOA serial (the time) and bounds
        # how stale anything the dependencies do not cover (a config reload) can get.
        self._max_age = max_age
        self._store: StateStore | None = None
        self._max_memo_bytes = max_memo_bytes
        self._memo_bytes = 0  # rendered responses held by packets, bounded so memory is too
        # ACLs: off until ``set_acl`` is called; then the authorizer every answer is filtered through (None:
        # the token could not be resolved, and catalog questions answer SERVFAIL).
        self._acl_on = False
        self._authz: Authorizer | None = None
        self._token_authz: Callable[[str], Authorizer | None] | None = None
        self.stats = {"hits": 0, "misses": 0, "malformed": 0, "forwarded": 0}

    # ------------------------------------------------------------------ ACLs

    def set_acl(self, authz: Authorizer | None) -> None:
        """Answer from now on as ``authz`` may read (None: as a token that cannot be resolved), and forget
        every answer built for the previous one."""
        self._acl_on = True
        self._authz = authz
        self.drop_answers()

    def set_token_resolver(self, resolve: Callable[[str], Authorizer | None]) -> None:
        """How a prepared query's own token becomes an authorizer (None: unknown), synchronously: the
        query's instances are filtered as that token may read them. Without one, such a query answers
        SERVFAIL under ACLs."""
        self._token_authz = resolve
        self.drop_answers()

    def drop_answers(self) -> None:
        """Forget every cached answer (each packet's next query builds its answer again)."""
        for e in self._answers.values():
            e.dead = True
        self._answers.clear()
        for packets in (self._udp, self._tcp):
            for pk in packets.values():
                if pk.entry is not None:
                    pk.entry.dead = True

    # ------------------------------------------------------------------ queries

    def handle(self, data: bytes, tcp: bool, now: float) -> bytes | Forward | None:
        """The response to one request, a Forward, or None to drop it."""
        packets = self._tcp if tcp else self._udp
        pk = packets.get(data[2:])
        if pk is None:
            try:
                query = parse_query(data)
            except BadQuery as exc:
                self.stats["malformed"] += 1
                if exc.rcode is None:
                    return None
                return error_reply(exc.qid, exc.flags, exc.rcode, exc.question)
            if query.edns is not None and query.edns.version != 0:
                # RFC 6891 6.1.3: we speak EDNS version 0 only.
                return error_reply(query.qid, query.flags, BADVERS, query.question, query.edns)
            pk = _Packet(query, tcp, self.cfg.udp_answer_limit)
            if len(packets) >= self._max_packets:
                self._forget(packets.pop(next(iter(packets))))
            packets[data[2:]] = pk
        store = self._get_store()
        entry = pk.entry
        if (
            entry is None
            or entry.dead
            or entry.store is not store
            or now >= entry.expires
            or (entry.index != store.index and not self._still_valid(entry, store, now))
        ):
            entry = self._answer(pk.query, store, now)
            pk.entry = entry
            self._forget(pk)
        else:
            self.stats["hits"] += 1
        p = entry.prepared
        if p.forward:
            self.stats["forwarded"] += 1
            return Forward(pk.query, _qid(data), data, tcp, pk.max_size)
        if pk.tail is not None:
            return data[:2] + pk.tail
        tails = pk.tails
        if tails is not None:
            cumulative = pk.cumulative
            if cumulative is None:
                return data[:2] + tails[int(self._rng.random() * len(tails))]
            i = bisect.bisect_left(cumulative, self._rng.random() * cumulative[-1])
            return data[:2] + tails[min(i, len(tails) - 1)]
        q = pk.query
        out = render(p, _qid(data), q.flags, q.question, pk.opt, pk.max_size, pk.udp_cap, self._rng)
        if p.deterministic:
            pk.tail = out[2:]
        elif self._memo_bytes < self._max_memo_bytes:
            self._memoize(pk, p)
        return out

    def _memoize(self, pk: _Packet, p: Prepared) -> None:
        q = pk.query
        listed = all_renderings(p, q.flags, q.question, pk.opt, pk.max_size, pk.udp_cap)
        if listed is None:
            return
        pk.tails, pk.cumulative = listed
        pk.memo_bytes = sum(map(len, pk.tails))
        self._memo_bytes += pk.memo_bytes

    def _forget(self, pk: _Packet) -> None:
        self._memo_bytes -= pk.memo_bytes
        pk.memo_bytes = 0
        pk.tail = None
        pk.tails = pk.cumulative = None

    def _still_valid(self, entry: _Entry, store: StateStore, now: float) -> bool:
        if deps_valid(entry.deps, store, self._folds):
            entry.index = store.index
            return True
        if now - entry.built < entry.grace:
            return True  # changed, but rebuilt moments ago and expensive to build: serve it a little longer
        entry.dead = True
        return False

    def _answer(self, q: Query, store: StateStore, now: float) -> _Entry:
        if store is not self._store:
            # A snapshot restore replaced the store: nothing built from the old one is any use.
            for e in self._answers.values():
                e.dead = True
            self._answers.clear()
            self._store = store
        key = q.question
        entry = self._answers.get(key)
        if (
            entry is not None
            and not entry.dead
            and now < entry.expires
            and (entry.index == store.index or self._still_valid(entry, store, now))
        ):
            self.stats["hits"] += 1
            return entry
        self.stats["misses"] += 1
        view = RecordingView(store, self._folds)
        reader: CatalogReader = ACLView(view, self._authz, self._token_authz) if self._acl_on else view
        try:
            res = resolve(Question(q.labels, q.qtype, q.qclass), reader, self.cfg, now, self._rng)
        except ACLUnavailable:
            res = Resolution(SERVFAIL)  # Consul: the catalog RPC failed ("ACL not found")
        if res.forward and not self.cfg.recursors:
            res = Resolution(REFUSED, authoritative=False)  # not our name, and nobody to ask
        prepared = prepare(
            res,
            q.question,
            q.labels,
            recursion_available=bool(self.cfg.recursors),
            enable_truncate=self.cfg.enable_truncate,
            compress=not self.cfg.disable_compression,
            reuse=entry.prepared.encoded if entry is not None and entry.store is store else None,
        )
        if entry is not None:
            entry.dead = True
            del self._answers[key]
        entry = _Entry(prepared, tuple(view.deps), store, now, self._max_age)
        if len(self._answers) >= self._max_answers:
            oldest = next(iter(self._answers))
            self._answers.pop(oldest).dead = True
        self._answers[key] = entry
        return entry

    # ------------------------------------------------------------------ forwarding

    @staticmethod
    def forward_request(fw: Forward, upstream_id: int) -> bytes:
        """The client's request under our own ID (so a spoofed or stray reply is recognisable)."""
        return struct.pack("!H", upstream_id) + fw.data[2:]

    @staticmethod
    def forward_reply(fw: Forward, reply: bytes, upstream_id: int) -> bytes | None:
        """The upstream's reply as the client's response, or None if it is unusable (try the next one):
        malformed, not a reply to what we sent, or an rcode other than NOERROR/NXDOMAIN (as Consul)."""
        if len(reply) < 12:
            return None
        rid, flags, qd = struct.unpack_from("!HHH", reply)
        q = fw.query
        if rid != upstream_id or not flags & QR or qd != 1 or (flags & 0xF) not in (NOERROR, NXDOMAIN):
            return None
        if reply[12 : 12 + len(q.question)].lower() != q.question.lower():
            return None
        try:
            DNSRecord.parse(reply)
        except Exception:  # noqa: BLE001 - whatever dnslib objects to, we do not pass it on
            return None
        out = struct.pack("!H", fw.qid) + reply[2:]
        if len(out) > fw.max_size:
            # Bigger than the client can take over UDP: an empty truncated reply sends it to TCP.
            opt = opt_record(q.edns) if q.edns is not None else b""
            return header(fw.qid, flags | TC, 1, 0, 0, 1 if opt else 0) + q.question + opt
        return out

    @staticmethod
    def servfail(fw: Forward) -> bytes:
        q = fw.query
        return error_reply(fw.qid, q.flags, SERVFAIL, q.question, q.edns, recursion_available=True)


def _qid(data: bytes) -> int:
    return (data[0] << 8) | data[1]
