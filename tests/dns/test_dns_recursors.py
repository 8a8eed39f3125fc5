"""Names outside the domain go to the recursors: tested against local fake upstreams that answer, fail,
stay silent or misbehave."""

from __future__ import annotations

import selectors
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSRecord
from dnstest import addresses, ask, rcode

from registry.testing.agent import dev_agent


class FakeUpstream:
    """A tiny DNS server in a thread, UDP and TCP on one port. ``behaviour``: answer, nxdomain, servfail,
    silent (never replies), wrong-id (replies under another ID), big (60 A records)."""

    def __init__(self, behaviour: str = "answer", address: str = "192.0.2.1") -> None:
        self.behaviour = behaviour
        self.address = address
        self.seen: list[tuple[str, str]] = []  # (transport, name)
        for _ in range(20):
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp.bind(("127.0.0.1", 0))
            self.port = self.udp.getsockname()[1]
            self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                self.tcp.bind(("127.0.0.1", self.port))
                break
            except OSError:
                self.udp.close()
                self.tcp.close()
        self.tcp.listen(16)
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def reply(self, data: bytes) -> bytes | None:
        q = DNSRecord.parse(data)
        if self.behaviour == "silent":
            return None
        r = q.reply()
        if self.behaviour == "servfail":
            r.header.rcode = RCODE.SERVFAIL
        elif self.behaviour == "nxdomain":
            r.header.rcode = RCODE.NXDOMAIN
        else:
            count = 60 if self.behaviour == "big" else 1
            for i in range(count):
                r.add_answer(RR(q.q.qname, QTYPE.A, rdata=A(f"192.0.2.{i + 1}" if count > 1 else self.address),
                                ttl=60))  # fmt: skip
        if self.behaviour == "wrong-id":
            r.header.id = (q.header.id + 1) & 0xFFFF
        return bytes(r.pack())

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.udp, selectors.EVENT_READ)
        sel.register(self.tcp, selectors.EVENT_READ)
        while not self._stop:
            for key, _ in sel.select(timeout=0.05):
                if key.fileobj is self.udp:
                    data, peer = self.udp.recvfrom(65535)
                    self.seen.append(("udp", str(DNSRecord.parse(data).q.qname)))
                    out = self.reply(data)
                    if out is not None:
                        self.udp.sendto(out, peer)
                else:
                    conn, _ = self.tcp.accept()
                    with conn:
                        conn.settimeout(2)
                        (n,) = struct.unpack("!H", conn.recv(2))
                        data = b""
                        while len(data) < n:
                            data += conn.recv(n - len(data))
                        self.seen.append(("tcp", str(DNSRecord.parse(data).q.qname)))
                        out = self.reply(data)
                        if out is not None:
                            conn.sendall(struct.pack("!H", len(out)) + out)
        sel.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=5)
        self.udp.close()
        self.tcp.close()


@pytest.fixture
def upstreams() -> Iterator[dict[str, FakeUpstream]]:
    made = {b: FakeUpstream(b) for b in ("answer", "nxdomain", "servfail", "silent", "wrong-id", "big")}
    yield made
    for u in made.values():
        u.close()


def dead_address() -> str:
    """A loopback port nobody listens on: the kernel answers with ICMP port unreachable."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_forwarding_over_udp_and_tcp(upstreams: dict[str, FakeUpstream]) -> None:
    good = upstreams["answer"]
    with dev_agent(recursors=[good.addr]) as a:
        assert a.dns_port is not None
        resp = ask(a.dns_port, "www.example.com", "A")
        assert rcode(resp) == "NOERROR" and addresses(resp) == ["192.0.2.1"] and resp.header.ra == 1
        resp = ask(a.dns_port, "www.example.com", "A", tcp=True)
        assert addresses(resp) == ["192.0.2.1"]
        assert good.seen == [("udp", "www.example.com."), ("tcp", "www.example.com.")]
        # Our own names are still answered here, authoritatively, now with RA set.
        resp = ask(a.dns_port, "nosuch.service.consul")
        assert rcode(resp) == "NXDOMAIN" and resp.header.aa == 1 and resp.header.ra == 1
        assert len(good.seen) == 2
        # A reverse name we do not know goes upstream too.
        assert addresses(ask(a.dns_port, "4.3.2.1.in-addr.arpa", "PTR")) == ["192.0.2.1"]


def test_nxdomain_from_upstream_is_an_answer(upstreams: dict[str, FakeUpstream]) -> None:
    with dev_agent(recursors=[upstreams["nxdomain"].addr, upstreams["answer"].addr]) as a:
        assert a.dns_port is not None
        assert rcode(ask(a.dns_port, "gone.example.com")) == "NXDOMAIN"
        assert upstreams["answer"].seen == []


def test_each_failing_recursor_is_skipped(upstreams: dict[str, FakeUpstream]) -> None:
    chain = [dead_address(), upstreams["silent"].addr, upstreams["servfail"].addr, upstreams["wrong-id"].addr,
             upstreams["answer"].addr]  # fmt: skip
    with dev_agent(recursors=chain, dns_config={"recursor_timeout": "300ms"}) as a:
        assert a.dns_port is not None
        start = time.monotonic()
        resp = ask(a.dns_port, "www.example.com", timeout=5)
        elapsed = time.monotonic() - start
        assert addresses(resp) == ["192.0.2.1"]
        # the silent one and the one replying under the wrong ID each cost one timeout, no more
        assert 0.55 <= elapsed < 2.0
        for name in ("silent", "servfail", "wrong-id", "answer"):
            assert upstreams[name].seen == [("udp", "www.example.com.")]


def test_servfail_when_every_recursor_fails(upstreams: dict[str, FakeUpstream]) -> None:
    chain = [dead_address(), upstreams["servfail"].addr, upstreams["silent"].addr]
    with dev_agent(recursors=chain, dns_config={"recursor_timeout": "200ms"}) as a:
        assert a.dns_port is not None
        for tcp in (False, True):
            resp = ask(a.dns_port, "www.example.com", tcp=tcp, timeout=5)
            assert rcode(resp) == "SERVFAIL" and resp.header.ra == 1 and not resp.rr


def test_an_upstream_answer_too_big_for_udp_sends_the_client_to_tcp(upstreams: dict[str, FakeUpstream]) -> None:
    with dev_agent(recursors=[upstreams["big"].addr]) as a:
        assert a.dns_port is not None
        q = DNSRecord.question("big.example.com")
        raw = q.send("127.0.0.1", a.dns_port, timeout=3)
        assert len(raw) <= 512
        resp = DNSRecord.parse(raw)
        assert resp.header.tc == 1 and resp.header.id == q.header.id
        resp = ask(a.dns_port, "big.example.com", tcp=True)
        assert len(resp.rr) == 60


def test_random_strategy_still_answers(upstreams: dict[str, FakeUpstream]) -> None:
    with dev_agent(recursors=[upstreams["servfail"].addr, upstreams["answer"].addr],
                   dns_config={"recursor_strategy": "random"}) as a:  # fmt: skip
        assert a.dns_port is not None
        for _ in range(5):
            assert addresses(ask(a.dns_port, "www.example.com")) == ["192.0.2.1"]
