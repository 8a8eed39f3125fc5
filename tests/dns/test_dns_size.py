"""Response size: 512 bytes without EDNS, the advertised size with it, TC whenever an answer does not fit,
TCP for the whole answer; the udp_answer_limit / enable_truncate / a_record_limit policies."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dnslib import EDNS0, QTYPE, DNSRecord
from dnstest import addresses, ask, raw_udp, register

from registry.testing.agent import RunningAgent, dev_agent

MANY = 40  # instances of "many" in the shared catalog


def ask_with_retry(port: int, name: str, qtype: str) -> tuple[DNSRecord, DNSRecord]:
    """What a stub resolver does: UDP first, TCP again if the answer came back truncated."""
    first = ask(port, name, qtype)
    return first, (ask(port, name, qtype, tcp=True) if first.header.tc else first)


def udp_raw(port: int, name: str, qtype: str, edns: int | None) -> bytes:
    q = DNSRecord.question(name, qtype)
    if edns is not None:
        q.add_ar(EDNS0(udp_len=edns))
    reply = raw_udp(port, q.pack())
    assert reply is not None
    return reply


def test_without_edns_the_answer_count_is_capped_as_consul_does(port: int) -> None:
    seen: set[str] = set()
    for _ in range(30):
        resp = ask(port, "many.service.consul")
        assert len(resp.rr) == 3 and resp.header.tc == 0  # udp_answer_limit 3, enable_truncate off
        seen.update(addresses(resp))
    assert len(seen) > 10  # the cap takes a fresh random subset every time


def test_tcp_and_edns_get_every_address(port: int) -> None:
    assert len(ask(port, "many.service.consul", tcp=True).rr) == MANY
    resp = ask(port, "many.service.consul", edns=4096)
    assert len(resp.rr) == MANY and resp.header.tc == 0


@pytest.mark.parametrize("edns", [512, 700, 1232])
def test_srv_that_does_not_fit_sets_tc_and_tcp_returns_it_whole(port: int, edns: int) -> None:
    raw = udp_raw(port, "many.service.consul", "SRV", edns)
    assert len(raw) <= edns
    resp = DNSRecord.parse(raw)
    assert resp.header.tc == 1
    assert 0 < len(resp.rr) < MANY
    whole = ask(port, "many.service.consul", "SRV", tcp=True)
    assert whole.header.tc == 0 and len(whole.rr) == MANY
    glue = {str(rr.rname) for rr in whole.ar if rr.rtype == QTYPE.A}
    assert glue == {str(rr.rdata.target) for rr in whole.rr}


def test_srv_without_edns_is_capped_and_fits(port: int) -> None:
    for _ in range(50):  # a fresh draw every time: each one three distinct instances, with their glue
        raw = udp_raw(port, "many.service.consul", "SRV", None)
        assert len(raw) <= 512
        resp = DNSRecord.parse(raw)
        assert len(resp.rr) == 3 and resp.header.tc == 0
        assert len({str(rr.rdata.target) for rr in resp.rr}) == 3
        assert {str(rr.rname) for rr in resp.ar} == {str(rr.rdata.target) for rr in resp.rr}


def test_responses_never_exceed_the_limit(port: int) -> None:
    names = [("many.service.consul", "SRV"), ("many.service.consul", "A"), ("many.service.consul", "ANY"),
             ("web.service.consul", "SRV"), ("web-1.node.consul", "ANY"), ("consul", "SOA"),
             ("nosuch.service.consul", "A")]  # fmt: skip
    for name, qtype in names:
        for edns in (None, 512, 600, 1232, 4096):
            raw = udp_raw(port, name, qtype, edns)
            assert len(raw) <= (edns or 512), (name, qtype, edns, len(raw))
            DNSRecord.parse(raw)  # and it is a well-formed message


@pytest.fixture(scope="module")
def fat_agent() -> Iterator[RunningAgent]:
    with dev_agent() as a:
        register(a, "fat", "10.9.0.1", meta={f"key{i:02d}": "x" * 100 for i in range(20)})
        yield a


def test_truncated_answer_then_tcp_retry(fat_agent: RunningAgent) -> None:
    assert fat_agent.dns_port is not None
    first, final = ask_with_retry(fat_agent.dns_port, "fat.node.consul", "TXT")
    assert first.header.tc == 1  # 20 TXT records of ~110 bytes cannot fit in 512
    assert final.header.tc == 0 and len(final.rr) == 20
    assert {str(rr.rdata) for rr in final.rr} == {f'"key{i:02d}={"x" * 100}"' for i in range(20)}
    # With a big enough EDNS buffer it comes whole over UDP.
    resp = ask(fat_agent.dns_port, "fat.node.consul", "TXT", edns=4096)
    assert resp.header.tc == 0 and len(resp.rr) == 20
    # For an A query the TXT meta is optional extra data: it is dropped without TC when it does not fit.
    resp = ask(fat_agent.dns_port, "fat.node.consul", "A")
    assert resp.header.tc == 0 and addresses(resp) == ["10.9.0.1"]


def _many(a: RunningAgent, n: int) -> None:
    for i in range(n):
        register(a, f"m{i}", f"10.2.0.{i + 1}", {"ID": "many", "Service": "many", "Port": 2000 + i})


def test_enable_truncate_sets_tc_when_the_cap_trims() -> None:
    with dev_agent(dns_config={"enable_truncate": True, "udp_answer_limit": 5}) as a:
        _many(a, 12)
        assert a.dns_port is not None
        resp = ask(a.dns_port, "many.service.consul")
        assert len(resp.rr) == 5 and resp.header.tc == 1
        assert len(ask(a.dns_port, "many.service.consul", tcp=True).rr) == 12
        resp = ask(a.dns_port, "many.service.consul", edns=1232)
        assert len(resp.rr) == 12 and resp.header.tc == 0
        # a name that is not capped is not truncated
        _, one = ask_with_retry(a.dns_port, "m0.node.consul", "A")
        assert one.header.tc == 0


def test_udp_answer_limit_never_exceeds_consuls_eight() -> None:
    with dev_agent(dns_config={"udp_answer_limit": 20}) as a:
        _many(a, 12)
        assert a.dns_port is not None
        assert len(ask(a.dns_port, "many.service.consul").rr) == 8


def test_a_record_limit() -> None:
    with dev_agent(dns_config={"a_record_limit": 2}) as a:
        _many(a, 6)
        assert a.dns_port is not None
        port = a.dns_port
        for tcp, edns in ((True, None), (False, 1232), (False, None)):
            resp = ask(port, "many.service.consul", tcp=tcp, edns=edns)
            assert len(resp.rr) == 2 and resp.header.tc == 0
        seen = set()
        for _ in range(30):
            seen.update(addresses(ask(port, "many.service.consul", tcp=True)))
        assert len(seen) == 6  # shuffled before the limit, so every instance gets its turn
        assert len(ask(port, "many.service.consul", "SRV", tcp=True).rr) == 6  # SRV is not limited
