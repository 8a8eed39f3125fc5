"""DNS wire format: a strict parser for incoming queries and the few header/OPT builders answers need.

Queries come from anyone, so they are parsed here rather than by dnslib, whose parser follows compression
pointers recursively, accepts names longer than 255 bytes and rejects labels that are not UTF-8. The rules
(RFC 1035, RFC 6891, and the anti-patterns RFC 9267 lists from NAME:WRECK and friends):

- a message shorter than the 12-byte header, or one with QR set (a response), is dropped: answering either
  could start a packet loop between two servers;
- an opcode other than QUERY gets NOTIMP; QDCOUNT != 1, answer or authority records, more than two
  additional records or more than one OPT get FORMERR;
- every length is checked against the buffer; a label is at most 63 bytes (the 0b01/0b10 label types are
  refused); a name is at most 255 bytes on the wire; compression pointers must point strictly before the
  lowest offset already visited in that name (so loops are impossible), into the message after the header,
  and at most ``MAX_POINTERS`` of them are followed;
- bytes after the last record are FORMERR: a well-formed query has none, and a cache keyed by the question
  must not be fooled by trailing junk.

Everything here is pure (bytes in, values out) and raises only ``BadQuery``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "BadQuery", "Edns", "Query", "parse_query", "header", "opt_record", "error_reply",
    "QR", "AA", "TC", "RD", "RA", "AD", "CD",
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "BADVERS",
    "T_A", "T_NS", "T_CNAME", "T_SOA", "T_PTR", "T_TXT", "T_AAAA", "T_SRV", "T_OPT", "T_IXFR", "T_AXFR",
    "T_ANY", "C_IN", "C_ANY", "MAX_POINTERS", "MAX_NAME",
]  # fmt: skip

QR, AA, TC, RD, RA, AD, CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080, 0x0020, 0x0010
OPCODE_MASK = 0x7800
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16  # extended rcode: 4 low bits in the header, the rest in OPT

T_A, T_NS, T_CNAME, T_SOA, T_PTR, T_TXT, T_AAAA, T_SRV, T_OPT = 1, 2, 5, 6, 12, 16, 28, 33, 41
T_IXFR, T_AXFR, T_ANY = 251, 252, 255
C_IN, C_ANY = 1, 255

MAX_NAME = 255  # RFC 1035 2.3.4, counted on the wire (length bytes and the final zero included)
MAX_POINTERS = 16  # a legitimate name needs one; 16 is generous and bounds the work per name
EDNS_OPT_ECS = 8

_HDR = struct.Struct("!HHHHHH")
_TYPE_CLASS = struct.Struct("!HH")
_RR_FIXED = struct.Struct("!HHIH")


class BadQuery(Exception):
    """A query we will not answer normally. ``rcode`` None means drop it silently."""

    def __init__(self, reason: str, rcode: int | None, qid: int = 0, flags: int = 0, question: bytes = b"") -> None:
        super().__init__(reason)
        self.reason = reason
        self.rcode = rcode
        self.qid = qid
        self.flags = flags
        self.question = question  # the raw question section if it parsed, else b""


@dataclass(frozen=True, slots=True)
class Edns:
    udp_size: int  # as advertised (already raised to 512 if smaller, RFC 6891 6.2.5)
    version: int
    do: bool
    ecs: bytes | None  # the client-subnet option payload, echoed back with scope 0


@dataclass(frozen=True, slots=True)
class Query:
    qid: int
    flags: int
    labels: tuple[bytes, ...]  # as sent: case preserved, answers echo it
    qtype: int
    qclass: int
    question: bytes  # raw question section (name, type, class)
    edns: Edns | None


def _read_name(data: bytes, pos: int, end: int) -> tuple[list[bytes], int]:
    """Read a possibly compressed name at ``pos``; return (labels, offset just after the name in place)."""
    labels: list[bytes] = []
    wire_len = 0
    floor = pos  # pointers must land strictly below every offset visited so far
    after = -1  # where the name ends in the original position (set at the first pointer)
    jumps = 0
    while True:
        if pos >= end:
            raise ValueError("name runs past the end of the message")
        length = data[pos]
        kind = length & 0xC0
        if kind == 0xC0:
            if pos + 1 >= end:
                raise ValueError("truncated compression pointer")
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if after < 0:
                after = pos + 2
            jumps += 1
            if jumps > MAX_POINTERS:
                raise ValueError("too many compression pointers")
            if target < 12 or target >= floor:
                raise ValueError("compression pointer is not strictly backwards into the message")
            floor = target
            pos = target
            continue
        if kind:
            raise ValueError("unsupported label type")
        wire_len += length + 1
        if wire_len > MAX_NAME:
            raise ValueError("name longer than 255 bytes")
        if length == 0:
            return labels, (after if after >= 0 else pos + 1)
        if pos + 1 + length > end:
            raise ValueError("label runs past the end of the message")
        labels.append(data[pos + 1 : pos + 1 + length])
        pos += 1 + length


def _parse_opt(data: bytes, pos: int, end: int, udp: int, ttl: int, rdlen: int) -> Edns:
    ext_rcode, version, zflags = ttl >> 24, (ttl >> 16) & 0xFF, ttl & 0xFFFF
    del ext_rcode  # meaningless in a query
    ecs: bytes | None = None
    stop = pos + rdlen
    while pos < stop:
        if pos + 4 > stop:
            raise ValueError("truncated EDNS option header")
        code, olen = struct.unpack_from("!HH", data, pos)
        pos += 4
        if pos + olen > stop:
            raise ValueError("EDNS option runs past its record")
        if code == EDNS_OPT_ECS:
            ecs = _check_ecs(data[pos : pos + olen])
        pos += olen
    return Edns(udp_size=max(udp, 512), version=version, do=bool(zflags & 0x8000), ecs=ecs)


def _check_ecs(payload: bytes) -> bytes:
    """RFC 7871 6: a malformed client-subnet option is FORMERR."""
    if len(payload) < 4:
        raise ValueError("short client-subnet option")
    family, source, scope = struct.unpack_from("!HBB", payload)
    width = {1: 32, 2: 128}.get(family)
    if width is None or source > width or scope != 0 or len(payload) - 4 != (source + 7) // 8:
        raise ValueError("malformed client-subnet option")
    return payload


def parse_query(data: bytes) -> Query:
    end = len(data)
    if end < 12:
        raise BadQuery("shorter than a DNS header", None)
    qid, flags, qd, an, ns, ar = _HDR.unpack_from(data)
    if flags & QR:
        raise BadQuery("a response, not a query", None, qid, flags)
    if flags & OPCODE_MASK:
        raise BadQuery("opcode is not QUERY", NOTIMP, qid, flags)
    if qd != 1:
        raise BadQuery(f"QDCOUNT is {qd}, not 1", FORMERR, qid, flags)
    if an or ns or ar > 2:
        raise BadQuery("unexpected records in a query", FORMERR, qid, flags)
    try:
        labels, pos = _read_name(data, 12, end)
        if pos + 4 > end:
            raise ValueError("question type and class missing")
        qtype, qclass = _TYPE_CLASS.unpack_from(data, pos)
        pos += 4
    except ValueError as exc:
        raise BadQuery(str(exc), FORMERR, qid, flags) from None
    question = data[12:pos]
    edns: Edns | None = None
    try:
        for _ in range(ar):
            rr_start = pos
            rr_labels, pos = _read_name(data, pos, end)
            if pos + 10 > end:
                raise ValueError("truncated resource record")
            rtype, rclass, ttl, rdlen = _RR_FIXED.unpack_from(data, pos)
            pos += 10
            if pos + rdlen > end:
                raise ValueError("RDLENGTH runs past the end of the message")
            if rtype == T_OPT:
                if edns is not None:
                    raise ValueError("more than one OPT record")
                if rr_labels or data[rr_start] != 0:
                    raise ValueError("OPT record owner is not the root")
                edns = _parse_opt(data, pos, end, rclass, ttl, rdlen)
            pos += rdlen
        if pos != end:
            raise ValueError("trailing bytes after the last record")
    except ValueError as exc:
        raise BadQuery(str(exc), FORMERR, qid, flags, question) from None
    return Query(qid, flags, tuple(labels), qtype, qclass, question, edns)


def header(qid: int, flags: int, qd: int, an: int, ns: int, ar: int) -> bytes:
    return _HDR.pack(qid, flags, qd, an, ns, ar)


def response_flags(query_flags: int, rcode: int, authoritative: bool, recursion_available: bool) -> int:
    """QR set, opcode QUERY, RD and CD copied from the query (RFC 1035 4.1.1, RFC 6840 5.9)."""
    flags = QR | (query_flags & (RD | CD)) | (rcode & 0xF)
    if authoritative:
        flags |= AA
    if recursion_available:
        flags |= RA
    return flags


def opt_record(edns: Edns, ext_rcode: int = 0) -> bytes:
    """The response OPT: the requester's UDP size echoed (as Consul does), DO copied (RFC 3225), client
    subnet echoed with scope 0 because no answer here depends on the client's address."""
    rdata = b""
    if edns.ecs is not None:
        payload = edns.ecs[:3] + b"\x00" + edns.ecs[4:]
        rdata = struct.pack("!HH", EDNS_OPT_ECS, len(payload)) + payload
    ttl = ((ext_rcode >> 4) << 24) | (0x8000 if edns.do else 0)
    return b"\x00" + struct.pack("!HHIH", T_OPT, min(edns.udp_size, 65535), ttl, len(rdata)) + rdata


def error_reply(qid: int, query_flags: int, rcode: int, question: bytes = b"", edns: Edns | None = None,
                recursion_available: bool = False) -> bytes:  # fmt: skip
    """A reply with no records: FORMERR, NOTIMP, REFUSED, SERVFAIL, BADVERS."""
    opt = opt_record(edns, rcode) if edns is not None else b""
    flags = response_flags(query_flags, rcode, False, recursion_available)
    return header(qid, flags, 1 if question else 0, 0, 0, 1 if opt else 0) + question + opt
