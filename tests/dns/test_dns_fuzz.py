"""Property tests (Hypothesis): random and mutated packets never raise out of the engine, every reply is
well-formed, carries the request's ID and stays within the size the rules allow; the same, briefly, against
the real UDP and TCP listener, which must still answer afterwards."""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import Iterator

import pytest
from dnslib import DNSRecord
from dnstest import Catalog, addresses, ask, read_tcp_message, register
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dns.config import DNSConfig
from dns.engine import MAX_UDP_PAYLOAD, Engine, Forward
from dns.wire import BadQuery, parse_query
from registry.testing.agent import RunningAgent, dev_agent

QTYPES = [1, 2, 5, 6, 12, 15, 16, 28, 33, 41, 251, 252, 255, 0, 65535]
LABELS = [b"web", b"service", b"node", b"connect", b"addr", b"consul", b"dc1", b"dc", b"_web", b"_tcp", b"n1",
          b"c000020a", b"WEB", b"Consul", b"fat", b"many", b"query", b"virtual", b"in-addr", b"arpa", b"1",
          b"a" * 63]  # fmt: skip


def _catalog() -> Catalog:
    c = Catalog()
    for i in range(40):
        c.register(f"many-{i}", f"10.1.0.{i + 1}", "many", port=1000 + i, weights=(i % 5, 1))
    c.register("n1", "10.0.0.1", "web")
    c.register("v6", "2001:db8::1", "web")
    c.register("ext", "example.org", "ext")
    return c


CATALOG = _catalog()


def fresh_engine(**cfg: object) -> Engine:
    return Engine(DNSConfig(**cfg), lambda: CATALOG.store, random.Random(3))  # type: ignore[arg-type]


ENGINE = fresh_engine()
TRUNCATING = fresh_engine(enable_truncate=True, a_record_limit=5)


def size_limit(data: bytes, tcp: bool) -> int:
    if tcp:
        return 65535
    try:
        q = parse_query(data)
    except BadQuery:
        return 512
    if q.edns is None:
        return 512
    return min(max(q.edns.udp_size, 512), MAX_UDP_PAYLOAD)


def walk(msg: bytes) -> None:
    """A structural check of a whole message, independent of the code under test and of dnslib (which
    refuses labels that are not UTF-8, though DNS allows any bytes): every count is met, every name and
    record stays inside the message, and nothing follows the last record."""

    def skip_name(pos: int) -> int:
        end_at = -1
        hops = 0
        while True:
            length = msg[pos]
            if length & 0xC0 == 0xC0:
                target = ((length & 0x3F) << 8) | msg[pos + 1]
                assert target < pos and hops < 64
                hops += 1
                if end_at < 0:
                    end_at = pos + 2
                pos = target
                continue
            assert length <= 63
            if length == 0:
                return end_at if end_at >= 0 else pos + 1
            pos += 1 + length
            assert pos < len(msg)

    qd, an, ns, ar = struct.unpack_from("!HHHH", msg, 4)
    pos = 12
    for _ in range(qd):
        pos = skip_name(pos) + 4
    for _ in range(an + ns + ar):
        pos = skip_name(pos)
        (rdlen,) = struct.unpack_from("!H", msg, pos + 8)
        pos += 10 + rdlen
    assert pos == len(msg)


def check(engine: Engine, data: bytes, tcp: bool) -> bytes | None:
    out = engine.handle(data, tcp, 1_000_000.0)
    if out is None:
        return None
    assert not isinstance(out, Forward)  # no recursors configured: out-of-domain names are REFUSED
    assert 12 <= len(out) <= size_limit(data, tcp)
    assert out[:2] == data[:2]  # the request's ID
    assert out[2] & 0x80  # QR
    walk(out)
    return out


def encode_name(labels: list[bytes]) -> bytes:
    return b"".join(bytes([len(x)]) + x for x in labels) + b"\x00"


@st.composite
def valid_queries(draw: st.DrawFn) -> bytes:
    labels = draw(st.lists(st.one_of(st.sampled_from(LABELS), st.binary(min_size=1, max_size=20)), max_size=6))
    if draw(st.booleans()):
        labels = [*labels, b"consul"]
    qname = encode_name(labels)
    if len(qname) > 255:
        qname = encode_name([b"web", b"service", b"consul"])
    qtype = draw(st.sampled_from(QTYPES))
    flags = draw(st.sampled_from([0x0100, 0x0000, 0x0110, 0x0120]))
    additional = b""
    arcount = 0
    if draw(st.booleans()):
        size = draw(st.integers(0, 65535))
        do = draw(st.booleans())
        options = b""
        if draw(st.booleans()):
            prefix = draw(st.integers(0, 32))
            addr = bytes(draw(st.binary(min_size=(prefix + 7) // 8, max_size=(prefix + 7) // 8)))
            payload = struct.pack("!HBB", 1, prefix, 0) + addr
            options += struct.pack("!HH", 8, len(payload)) + payload
        if draw(st.booleans()):
            options += struct.pack("!HH", 10, 8) + b"cookie!!"
        additional = b"\x00" + struct.pack("!HHIH", 41, size, 0x8000 if do else 0, len(options)) + options
        arcount = 1
    qid = draw(st.integers(0, 65535))
    return struct.pack("!HHHHHH", qid, flags, 1, 0, 0, arcount) + qname + struct.pack("!HH", qtype, 1) + additional


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(valid_queries()))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "count", "pointer"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 8))]
        elif op == "count" and len(data) >= 12:
            field = draw(st.integers(2, 5)) * 2
            data[field : field + 2] = struct.pack("!H", draw(st.sampled_from([0, 1, 2, 3, 255, 65535])))
        elif op == "pointer":
            data[i : i + 2] = struct.pack("!H", 0xC000 | draw(st.integers(0, 0x3FFF)))
    return bytes(data)


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=700), st.booleans())
def test_random_bytes(data: bytes, tcp: bool) -> None:
    check(ENGINE, data, tcp)


@FUZZ
@given(st.binary(min_size=0, max_size=300))
def test_random_bodies_behind_a_plausible_header(body: bytes) -> None:
    for counts in ((1, 0, 0, 0), (1, 0, 0, 1), (1, 0, 0, 2), (2, 0, 0, 0), (1, 1, 0, 0)):
        check(ENGINE, struct.pack("!HHHHHH", 7, 0x0100, *counts) + body, False)


@FUZZ
@given(valid_queries(), st.booleans())
def test_valid_queries_are_answered_within_the_size_rules(data: bytes, tcp: bool) -> None:
    for engine in (ENGINE, TRUNCATING):
        out = check(engine, data, tcp)
        assert out is not None  # a well-formed query always gets an answer
        assert out[3] & 0x0F != 1  # and never FORMERR


@FUZZ
@given(mutated(), st.booleans())
def test_mutated_queries(data: bytes, tcp: bool) -> None:
    check(ENGINE, data, tcp)
    check(TRUNCATING, data, tcp)


# ---------------------------------------------------------------------- against the real listener


@pytest.fixture(scope="module")
def live() -> Iterator[RunningAgent]:
    with dev_agent() as a:
        for i in range(20):
            register(a, f"many-{i}", f"10.1.0.{i + 1}", {"ID": "many", "Service": "many", "Port": 1000 + i})
        yield a


SENTINEL_ID = 0xBEEF


def _sentinel() -> bytes:
    q = DNSRecord.question("many.service.consul")
    q.header.id = SENTINEL_ID
    return bytes(q.pack())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(mutated(), valid_queries(), st.binary(max_size=600)))
def test_live_udp_listener(live: RunningAgent, data: bytes) -> None:
    """Each fuzz packet is followed by a known-good query on the same socket; the server answers in order,
    so whatever arrives before the sentinel's answer is the reply to the fuzz packet (or there is none)."""
    assert live.dns_port is not None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(data, ("127.0.0.1", live.dns_port))
        s.sendto(_sentinel(), ("127.0.0.1", live.dns_port))
        replies = []
        while True:
            reply = s.recv(65535)
            if reply[:2] == struct.pack("!H", SENTINEL_ID) and (len(data) < 2 or data[:2] != reply[:2]
                                                                 or len(replies) == 1):  # fmt: skip
                break
            replies.append(reply)
        assert len(replies) <= 1
        for reply in replies:
            assert reply[:2] == data[:2]
            assert len(reply) <= size_limit(data, False)
            walk(reply)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(mutated(), valid_queries()), min_size=1, max_size=4))
def test_live_tcp_listener(live: RunningAgent, messages: list[bytes]) -> None:
    assert live.dns_port is not None
    with socket.create_connection(("127.0.0.1", live.dns_port), timeout=3) as s:
        stream = b"".join(struct.pack("!H", len(m)) + m for m in messages if len(m) < 65536)
        try:
            s.sendall(stream)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        while True:
            reply = read_tcp_message(s)
            if reply is None:
                break  # closed: all answered, or a length under 12 made the server hang up
            walk(reply)
    # and it keeps answering
    assert len(addresses(ask(live.dns_port, "many.service.consul", tcp=True))) == 20
