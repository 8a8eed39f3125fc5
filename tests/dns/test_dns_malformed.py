"""Hostile input, sent to a real server: malformed packets get FORMERR or are dropped, TCP abuse is cut
off, and through all of it the listener keeps answering everyone else."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import pytest
from dnslib import DNSRecord
from dnstest import addresses, ask, eventually, raw_tcp, raw_udp, read_tcp_message, register

from dns.server import DNSListener, DNSServer
from registry.testing.agent import RunningAgent, dev_agent

QID = 0x4242


def hdr(qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0, flags: int = 0x0100, qid: int = QID) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


def name(*labels: bytes) -> bytes:
    return b"".join(bytes([len(x)]) + x for x in labels) + b"\x00"


QNAME = name(b"web", b"service", b"consul")
QUESTION = QNAME + b"\x00\x01\x00\x01"
OPT = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)


@pytest.fixture(scope="module")
def agent() -> Iterator[RunningAgent]:
    with dev_agent() as a:
        register(a, "web-1", "10.0.1.1", {"ID": "web", "Service": "web", "Port": 80})
        yield a


@pytest.fixture(scope="module")
def port(agent: RunningAgent) -> int:
    assert agent.dns_port is not None
    return agent.dns_port


@pytest.fixture(scope="module")
def server(agent: RunningAgent) -> DNSServer:
    listener = agent.agent.dns_listener
    assert isinstance(listener, DNSListener)
    return listener.server


def still_serving(port: int) -> None:
    assert addresses(ask(port, "web.service.consul", timeout=2)) == ["10.0.1.1"]
    assert addresses(ask(port, "web.service.consul", tcp=True, timeout=2)) == ["10.0.1.1"]


def test_a_well_formed_raw_query_is_answered(port: int) -> None:
    reply = raw_udp(port, hdr() + QUESTION)
    assert reply is not None and DNSRecord.parse(reply).header.rcode == 0


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x42", id="one-byte"),
        pytest.param(hdr()[:11], id="short-header"),
        pytest.param(hdr(flags=0x8100) + QUESTION, id="a-response"),
    ],
)
def test_dropped(port: int, packet: bytes) -> None:
    assert raw_udp(port, packet, timeout=0.3) is None
    still_serving(port)


LONG_NAME = name(*([b"a" * 63] * 4)) + b"\x00\x01\x00\x01"  # 4*64+1 = 257 bytes on the wire
MAX_NAME = name(*([b"a" * 63] * 3 + [b"b" * 54, b"consul"])) + b"\x00\x01\x00\x01"  # exactly 255: legal
OVER_MAX = name(*([b"a" * 63] * 3 + [b"b" * 55, b"consul"])) + b"\x00\x01\x00\x01"  # 256


@pytest.mark.parametrize(
    "packet,echo_question",
    [
        pytest.param(hdr(qd=0), False, id="no-question"),
        pytest.param(hdr(qd=2) + QUESTION + QUESTION, False, id="two-questions"),
        pytest.param(hdr() + b"\xc0\x0c\x00\x01\x00\x01", False, id="pointer-to-itself"),
        pytest.param(hdr() + b"\x03web\xc0\x0c\x00\x01\x00\x01", False, id="compression-loop"),
        pytest.param(hdr() + b"\x03web\xc0\x40\x00\x01\x00\x01", False, id="forward-pointer"),
        pytest.param(hdr() + b"\x03web\xc3\xff\x00\x01\x00\x01", False, id="pointer-out-of-range"),
        pytest.param(hdr() + b"\xc0\x02\x00\x01\x00\x01", False, id="pointer-into-header"),
        pytest.param(hdr() + b"\x41" + b"a" * 65 + b"\x00\x00\x01\x00\x01", False, id="label-type-01"),
        pytest.param(hdr() + b"\x80abc\x00\x00\x01\x00\x01", False, id="label-type-10"),
        pytest.param(hdr() + LONG_NAME, False, id="name-of-257"),
        pytest.param(hdr() + OVER_MAX, False, id="name-of-256"),
        pytest.param(hdr() + b"\x3fabc", False, id="label-past-end"),
        pytest.param(hdr() + QNAME + b"\x00\x01", False, id="no-class"),
        pytest.param(hdr() + QNAME, False, id="no-type"),
        pytest.param(hdr() + QUESTION + b"garbage", True, id="trailing-garbage"),
        pytest.param(hdr(an=1) + QUESTION, False, id="answer-count-in-query"),
        pytest.param(hdr(ns=1) + QUESTION, False, id="authority-count-in-query"),
        pytest.param(hdr(ar=3) + QUESTION + OPT * 3, False, id="too-many-additional"),
        pytest.param(hdr(ar=1) + QUESTION, True, id="missing-additional"),
        pytest.param(hdr(ar=2) + QUESTION + OPT + OPT, True, id="two-opt"),
        pytest.param(hdr(ar=1) + QUESTION + b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 50), True, id="opt-rdlen"),
        pytest.param(hdr(ar=1) + QUESTION + b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 4) + b"\x00\x08\x00\x09",
                     True, id="opt-option-overflow"),  # fmt: skip
        pytest.param(hdr(ar=1) + QUESTION + b"\x00" + struct.pack("!HHIHHH", 41, 1232, 0, 8, 8, 4) + b"\x00\x05\x40\x00",
                     True, id="bad-client-subnet"),  # fmt: skip
        pytest.param(hdr(ar=1) + QUESTION + b"\xc0\x0c" + struct.pack("!HHIH", 41, 1232, 0, 0), True,
                     id="opt-not-root"),  # fmt: skip
        pytest.param(hdr(ar=1) + QUESTION + b"\x01x\xc0\x24" + struct.pack("!HHIH", 1, 1, 0, 0), True,
                     id="additional-pointer-loop"),  # fmt: skip
    ],
)
def test_formerr(port: int, packet: bytes, echo_question: bool) -> None:
    for reply in (raw_udp(port, packet), raw_tcp(port, packet) if len(packet) >= 12 else None):
        if reply is None and len(packet) < 12:
            continue
        assert reply is not None
        assert len(reply) <= 512
        resp = DNSRecord.parse(reply)
        assert resp.header.id == QID and resp.header.qr == 1 and resp.header.rcode == 1  # FORMERR
        assert len(resp.questions) == (1 if echo_question else 0)
    still_serving(port)


def test_the_longest_legal_name_and_backward_pointers_are_fine(port: int) -> None:
    assert len(MAX_NAME) - 4 == 255
    reply = raw_udp(port, hdr() + MAX_NAME)
    assert reply is not None and DNSRecord.parse(reply).header.rcode == 3  # parsed and looked up: NXDOMAIN
    # a non-OPT additional record whose name points back into the question is well-formed
    packet = hdr(ar=1) + QUESTION + b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 0, 4) + b"\x7f\x00\x00\x01"
    reply = raw_udp(port, packet)
    assert reply is not None and addresses(DNSRecord.parse(reply)) == ["10.0.1.1"]


# ---------------------------------------------------------------------- TCP abuse


def test_tcp_pipelining(port: int) -> None:
    queries = [DNSRecord.question(n) for n in ("web.service.consul", "nosuch.service.consul", "web-1.node.consul")]
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(b"".join(struct.pack("!H", len(q.pack())) + q.pack() for q in queries))
        replies = [DNSRecord.parse(read_tcp_message(s) or b"") for _ in queries]
    assert [r.header.id for r in replies] == [q.header.id for q in queries]
    assert [r.header.rcode for r in replies] == [0, 3, 0]


def test_tcp_length_shorter_than_a_header_closes_the_connection(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(b"\x00\x05hello")
        assert s.recv(10) == b""
    still_serving(port)


def test_slow_and_huge_tcp_clients_are_cut_off_without_blocking_anyone(port: int, server: DNSServer) -> None:
    old = server.tcp_idle_timeout
    server.tcp_idle_timeout = 0.5
    try:
        hogs = []
        for i in range(20):
            s = socket.create_connection(("127.0.0.1", port), timeout=3)
            # a 64 KiB message announced, a few bytes delivered, then nothing
            s.sendall(b"\xff\xff" + b"x" * (i + 1))
            hogs.append(s)
        start = time.monotonic()
        still_serving(port)  # others are answered at once
        assert time.monotonic() - start < 0.5
        time.sleep(0.8)
        for s in hogs:
            s.settimeout(2)
            try:
                assert s.recv(10) == b""  # closed by the server
            except ConnectionResetError:
                pass
            s.close()
    finally:
        server.tcp_idle_timeout = old
    still_serving(port)


def test_tcp_connection_limit(port: int, server: DNSServer) -> None:
    old = server.max_tcp_connections
    eventually(lambda: not server._conns)  # connections of earlier tests are gone
    server.max_tcp_connections = 3
    try:
        held = [socket.create_connection(("127.0.0.1", port), timeout=3) for _ in range(3)]
        eventually(lambda: len(server._conns) == 3)
        with socket.create_connection(("127.0.0.1", port), timeout=3) as extra:
            q = DNSRecord.question("web.service.consul").pack()
            try:
                extra.sendall(struct.pack("!H", len(q)) + q)
                assert read_tcp_message(extra) is None  # refused: closed without an answer
            except (ConnectionResetError, BrokenPipeError):
                pass
        for s in held:
            s.close()
        eventually(lambda: not server._conns)
    finally:
        server.max_tcp_connections = old
    still_serving(port)


def test_a_client_that_never_reads_does_not_stall_the_server(port: int, agent: RunningAgent) -> None:
    for i in range(30):
        register(agent, f"bulk-{i}", f"10.3.0.{i + 1}", {"ID": "bulk", "Service": "bulk", "Port": 1})
    q = DNSRecord.question("bulk.service.consul", "SRV").pack()
    framed = struct.pack("!H", len(q)) + q
    hog = socket.create_connection(("127.0.0.1", port), timeout=3)
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hog.setblocking(False)
    sent = 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # push queries until the server stops reading them
        try:
            sent += hog.send(framed * 50)
        except BlockingIOError:
            break
    assert sent > 0
    still_serving(port)
    hog.close()
    still_serving(port)
