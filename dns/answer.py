"""From a Resolution to response bytes: encode once (``prepare``), then order, cap and fit per query (``render``).

Per query, ``render`` does only list work and a join: pick the order (uniform shuffle, or for SRV an
RFC 2782-style weighted order), apply the caps, fit the size, write the header. The size rules:

- the limit is 512 bytes without EDNS, the advertised size with EDNS (never below 512), 65535 over TCP;
- answers are kept in order while they fit; if any answer record is left out the response carries TC, so
  the client retries over TCP and gets it whole (Consul trims silently; its users have long complained);
- glue and other additional records are added while they fit, and leaving them out does not set TC
  (RFC 2181 9: the additional section is optional);
- ``udp_answer_limit`` (UDP without EDNS only, at most 8, as in Consul) is a policy cap: it trims the way
  Consul does, and sets TC only if ``enable_truncate`` is on. ``a_record_limit`` and the three-server
  cap of NS answers never set TC.

SRV and the UDP cap: returning the first k of a weighted order would skew load (the heavy instance is in
almost every answer, and then the client weights it again among those k). Instead the first record is one
draw with probability weight/total, and it carries almost all the weight (65535 - (k - 1)); the other k - 1
are distinct fallbacks, in weighted order among the rest, with weight 1 each. A client that takes the first
record, and an RFC 2782 client (to within 2 in 65535), pick instance i with probability weight_i/total,
and every capped answer still names k distinct instances to fail over to, as Consul's does. Uncapped
answers carry the configured weights unchanged.
"""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from dns.encode import Encoder
from dns.records import RR
from dns.resolver import FIXED, SHUFFLE, WEIGHTED, Resolution, Rng
from dns.wire import AA, QR, RA, TC, header

__all__ = ["Prepared", "prepare", "render", "all_renderings", "UDP_ANSWER_CAP"]

UDP_ANSWER_CAP = 8  # Consul's maxUDPAnswerLimit: udp_answer_limit can lower it, never raise it
_WEIGHT = struct.Struct("!H")

# A unit, encoded: (answer bytes, answer count, glue chunks, glue bytes, weight, weight offset or -1)
PUnit = tuple[bytes, int, tuple[bytes, ...], int, int, int]


@dataclass(frozen=True, slots=True)
class Prepared:
    flags: int  # QR, AA, RA and the rcode: the query's RD/CD are added per query
    units: tuple[PUnit, ...]
    order: int
    pick: int
    authority: tuple[bytes, ...]
    additional: tuple[bytes, ...]
    enable_truncate: bool
    shared_glue: bool  # two units carry the same glue record: de-duplicate when joining
    deterministic: bool  # the same query always renders to the same bytes (safe to memoize)
    forward: bool = False
    encoded: dict[RR, bytes] | None = None  # record -> chunk, handed to the next build of this question
    records: int = 0  # how many records were encoded: the cost of building this answer again


def prepare(res: Resolution, question: bytes, qlabels: tuple[bytes, ...], *, recursion_available: bool,
            enable_truncate: bool, compress: bool = True, reuse: dict[RR, bytes] | None = None) -> Prepared:  # fmt: skip
    """Encode a Resolution. ``reuse`` is the ``encoded`` map of the previous answer to the same question:
    when one instance of a big service changes, the others are not encoded again."""
    encoder = Encoder(question, qlabels, compress)
    old = reuse or {}
    encoded: dict[RR, bytes] = {}

    def encode(rr: RR) -> bytes:
        chunk = encoded.get(rr)
        if chunk is None:
            chunk = old.get(rr)
            if chunk is None:
                chunk = encoder.encode(rr)
            encoded[rr] = chunk
        return chunk

    owner_len = 2 if compress else len(question) - 4
    units: list[PUnit] = []
    glue_seen: set[bytes] = set()
    shared = False
    for unit in res.units:
        answers = b"".join(encode(rr) for rr in unit.answers)
        glue = tuple(dict.fromkeys(encode(rr) for rr in unit.glue))
        for g in glue:
            if g in glue_seen:
                shared = True
            glue_seen.add(g)
        # The weight field of a lone SRV answer: owner, 10 bytes of type/class/TTL/length, 2 of priority.
        woff = owner_len + 12 if res.order == WEIGHTED and len(unit.answers) == 1 else -1
        units.append((answers, len(unit.answers), glue, sum(map(len, glue)), unit.weight, woff))
    flags = QR | (res.rcode & 0xF)
    if res.authoritative:
        flags |= AA
    if recursion_available:
        flags |= RA
    return Prepared(
        flags=flags,
        units=tuple(units),
        order=res.order,
        pick=res.pick,
        authority=tuple(encode(rr) for rr in res.authority),
        additional=tuple(encode(rr) for rr in res.additional),
        enable_truncate=enable_truncate,
        shared_glue=shared,
        deterministic=len(units) <= 1 or res.order == FIXED,
        forward=res.forward,
        encoded=encoded,
        records=len(encoded),
    )


def weighted_order(units: list[PUnit], rng: Rng) -> list[PUnit]:
    """A random order where each position goes to unit i with probability weight_i over the weights left
    (Efraimidis-Spirakis keys); weight-0 units come last, in random order."""
    keyed = []
    for u in units:
        w = u[4]
        keyed.append((rng.random() ** (1.0 / w) if w > 0 else -rng.random(), u))
    keyed.sort(key=lambda k: k[0], reverse=True)
    return [u for _, u in keyed]


def primary_and_fallbacks(units: list[PUnit], k: int, rng: Rng) -> list[PUnit]:
    """k distinct units: the first drawn by weight (weight 0 units only when all are 0), then k - 1
    fallbacks in weighted order; weights rewritten so the first takes all but k - 1 of 65535."""
    weights = [u[4] for u in units]
    if sum(weights) > 0:
        first = rng.choices(range(len(units)), weights=weights, k=1)[0]
    else:
        first = rng.randrange(len(units))
    rest = weighted_order(units[:first] + units[first + 1 :], rng)[: k - 1]
    out = []
    for unit, weight in itertools.chain([(units[first], 0xFFFF - len(rest))], ((u, 1) for u in rest)):
        ans, count, glue, glen, _w, woff = unit
        if woff >= 0:
            ans = ans[:woff] + _WEIGHT.pack(weight) + ans[woff + 2 :]
        out.append((ans, count, glue, glen, weight, woff))
    return out


def _caps(p: Prepared, query_flags: int, udp_cap: int) -> tuple[int, bool, int]:
    """(how many units to keep, whether the UDP policy cap cut, header flags so far)."""
    flags = p.flags | (query_flags & 0x0110)  # RD and CD copied from the query
    n = len(p.units)
    cap = p.pick if 0 < p.pick < n else n
    policy_cut = n > 1 and 0 < udp_cap < cap
    if policy_cut:
        cap = udp_cap
        if p.enable_truncate:
            flags |= TC
    return cap, policy_cut, flags


def render(p: Prepared, qid: int, query_flags: int, question: bytes, opt: bytes, max_size: int, udp_cap: int,
           rng: Rng) -> bytes:  # fmt: skip
    """One response. ``udp_cap`` is the policy cap for UDP without EDNS (0: none)."""
    units: Sequence[PUnit] = p.units
    cap, policy_cut, flags = _caps(p, query_flags, udp_cap)
    if len(units) > 1:
        if p.order == WEIGHTED:
            units = list(units)
            units = primary_and_fallbacks(units, cap, rng) if policy_cut else weighted_order(units, rng)
        elif p.order == SHUFFLE:
            units = list(units)
            rng.shuffle(units)
    if cap < len(units):
        units = units[:cap]
    return assemble(p, units, flags, qid, question, opt, max_size)


MAX_ENUMERATED = 120  # 5! orders


def all_renderings(p: Prepared, query_flags: int, question: bytes, opt: bytes, max_size: int,
                   udp_cap: int) -> tuple[list[bytes], list[float] | None] | None:  # fmt: skip
    """Every response a query can get, minus the 2-byte ID, with the cumulative probability of each (None:
    all equally likely); None when there are too many orders to list or the choice is not a permutation
    (SRV under the UDP cap: a weighted draw and fallbacks). With this list a cached query costs one random index, not a shuffle."""
    n = len(p.units)
    if n < 2 or p.order == FIXED or math.factorial(n) > MAX_ENUMERATED:
        return None
    cap, policy_cut, flags = _caps(p, query_flags, udp_cap)
    if p.order == WEIGHTED and policy_cut:
        return None
    outs: list[bytes] = []
    cumulative: list[float] | None = [] if p.order == WEIGHTED else None
    total = 0.0
    for order in itertools.permutations(p.units):
        outs.append(assemble(p, order[:cap], flags, 0, question, opt, max_size)[2:])
        if cumulative is not None:
            total += _order_probability(order)
            cumulative.append(total)
    return outs, cumulative


def _order_probability(order: Sequence[PUnit]) -> float:
    """The chance ``weighted_order`` produces this order: each place goes to a unit with probability its
    weight over the weights left; weight-0 units follow, all their orders equally likely."""
    weights = [u[4] for u in order]
    positive = [w for w in weights if w > 0]
    zeros = len(weights) - len(positive)
    if any(w > 0 for w in weights[len(positive) :]):
        return 0.0  # a weight-0 unit before a positive one: weighted_order never does that
    prob = 1.0 / math.factorial(zeros)
    left = float(sum(positive))
    for w in positive:
        prob *= w / left
        left -= w
    return prob


def assemble(p: Prepared, units: Sequence[PUnit], flags: int, qid: int, question: bytes, opt: bytes,
             max_size: int) -> bytes:  # fmt: skip
    """Header, question and as much of the answer as fits in ``max_size``, in the order given."""
    room = max_size - 12 - len(question) - len(opt)
    auth = p.authority
    auth_len = sum(map(len, auth))
    ans_len = sum(len(u[0]) for u in units)
    glue_len = sum(u[3] for u in units)
    extra_len = sum(map(len, p.additional))
    parts: list[bytes] = []
    an = 0
    if not p.shared_glue and ans_len + auth_len + glue_len + extra_len <= room:
        # Everything fits: the common case, no bookkeeping.
        glue: list[bytes] = []
        for u in units:
            parts.append(u[0])
            an += u[1]
            glue.extend(u[2])
        glue.extend(p.additional)
    else:
        if auth_len > room:
            auth, auth_len = (), 0
            flags |= TC
        budget = room - auth_len
        kept = []
        for u in units:
            if len(u[0]) > budget:
                flags |= TC  # an answer record does not fit: the client must retry over TCP
                break
            budget -= len(u[0])
            parts.append(u[0])
            an += u[1]
            kept.append(u)
        glue = []
        seen: set[bytes] = set()
        for u in kept:
            for g in u[2]:
                if g not in seen and len(g) <= budget:
                    seen.add(g)
                    glue.append(g)
                    budget -= len(g)
        for g in p.additional:
            if g not in seen and len(g) <= budget:
                seen.add(g)
                glue.append(g)
                budget -= len(g)
    ar = len(glue) + (1 if opt else 0)
    return b"".join((header(qid, flags, 1, an, len(auth), ar), question, *parts, *auth, *glue, opt))
