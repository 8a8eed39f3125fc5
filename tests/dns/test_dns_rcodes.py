"""Consul's response codes, and the SOA that negative answers carry, from a real server."""

from __future__ import annotations

import struct

import pytest
from dnslib import EDNS0, QTYPE, DNSRecord, EDNSOption
from dnstest import ask, raw_tcp, raw_udp, rcode, rtypes

TRANSPORTS = [pytest.param(False, id="udp"), pytest.param(True, id="tcp")]


def _assert_soa_authority(resp: DNSRecord, domain: str = "consul.") -> None:
    assert resp.header.aa == 1
    assert rtypes(resp.auth) == ["SOA"]
    (soa,) = resp.auth
    assert str(soa.rname) == domain
    assert str(soa.rdata.mname) == "ns." + domain and str(soa.rdata.rname) == "hostmaster." + domain


@pytest.mark.parametrize("tcp", TRANSPORTS)
@pytest.mark.parametrize(
    "name,qtype",
    [
        ("nosuch.service.consul", "A"),
        ("nosuch.service.consul", "SRV"),
        ("lonely.service.consul", "A"),  # only critical instances
        ("lonely.service.consul", "TXT"),
        ("nosuch.node.consul", "A"),
        ("web.service.dc2.consul", "A"),  # unknown datacenter
        ("web.service.dc2.dc.consul", "A"),
        ("web.service.peer1.peer.consul", "A"),  # no peerings
        ("web.service.a.b.c.consul", "A"),  # too many locality labels
        ("web-1.node.dc2.consul", "A"),
        ("foo.consul", "A"),  # no query kind and not a datacenter
        ("web.nosuchkind.consul", "A"),
        ("web.query.consul", "A"),  # no prepared query by that name
        ("web.ingress.consul", "A"),
        ("_nosuch._tcp.service.consul", "SRV"),
    ],
)
def test_nxdomain_with_soa(port: int, name: str, qtype: str, tcp: bool) -> None:
    resp = ask(port, name, qtype, tcp=tcp)
    assert rcode(resp) == "NXDOMAIN"
    assert not resp.rr
    _assert_soa_authority(resp)


@pytest.mark.parametrize("tcp", TRANSPORTS)
@pytest.mark.parametrize(
    "name,qtype",
    [
        ("six.service.consul", "A"),  # IPv6-only service asked for IPv4
        ("web.service.consul", "MX"),
        ("web.service.consul", "TXT"),
        ("web.service.consul", "SOA"),  # SOA and NS exist only at the apex
        ("web-1.node.consul", "SRV"),
        ("web-1.node.consul", "AAAA"),
        ("dotted.host.node.consul", "TXT"),  # a node without meta has no TXT
        # empty non-terminals: names above real ones exist, with no records of their own
        ("consul", "A"),
        ("service.consul", "A"),
        ("node.dc1.consul", "A"),
        ("dc1.consul", "A"),
        ("dc1.dc.consul", "A"),
        ("dc.consul", "A"),
    ],
)
def test_nodata_with_soa(port: int, name: str, qtype: str, tcp: bool) -> None:
    resp = ask(port, name, qtype, tcp=tcp)
    assert rcode(resp) == "NOERROR"
    assert not resp.rr
    _assert_soa_authority(resp)


def test_soa_serial_is_the_time(port: int) -> None:
    import time

    (soa,) = ask(port, "nosuch.service.consul").auth
    assert abs(soa.rdata.times[0] - time.time()) < 30


@pytest.mark.parametrize("tcp", TRANSPORTS)
def test_axfr_is_not_implemented(port: int, tcp: bool) -> None:
    resp = ask(port, "consul", "AXFR", tcp=tcp)
    assert rcode(resp) == "NOTIMP"


@pytest.mark.parametrize("tcp", TRANSPORTS)
def test_names_outside_the_domain_are_refused_without_recursors(port: int, tcp: bool) -> None:
    resp = ask(port, "example.com", "A", tcp=tcp)
    assert rcode(resp) == "REFUSED"
    assert resp.header.aa == 0 and resp.header.ra == 0
    assert not resp.rr and not resp.auth


def test_other_classes_are_refused(port: int) -> None:
    q = DNSRecord.question("web.service.consul", "A", "CH")
    resp = DNSRecord.parse(q.send("127.0.0.1", port, timeout=2))
    assert rcode(resp) == "REFUSED"


def test_opcode_other_than_query_is_notimp(port: int) -> None:
    q = DNSRecord.question("web.service.consul", "A")
    q.header.opcode = 2  # STATUS
    for reply in (raw_udp(port, q.pack()), raw_tcp(port, q.pack())):
        assert reply is not None
        resp = DNSRecord.parse(reply)
        assert rcode(resp) == "NOTIMP" and resp.header.id == q.header.id and resp.header.qr == 1


def test_rd_and_cd_are_echoed(port: int) -> None:
    q = DNSRecord.question("web.service.consul", "A")
    q.header.rd = 0
    resp = DNSRecord.parse(raw_udp(port, q.pack()) or b"")
    assert resp.header.rd == 0
    q.header.rd = 1
    q.header.cd = 1
    resp = DNSRecord.parse(raw_udp(port, q.pack()) or b"")
    assert resp.header.rd == 1 and resp.header.cd == 1 and resp.header.aa == 1


def test_edns_is_answered_with_edns(port: int) -> None:
    resp = ask(port, "web.service.consul", "A", edns=1232)
    opts = [rr for rr in resp.ar if rr.rtype == QTYPE.OPT]
    assert len(opts) == 1 and opts[0].rclass == 1232
    assert rtypes([rr for rr in ask(port, "web.service.consul").ar]) == []


def test_edns_version_other_than_zero_gets_badvers(port: int) -> None:
    q = DNSRecord.question("web.service.consul", "A")
    q.add_ar(EDNS0(udp_len=1232, version=1))
    reply = raw_udp(port, q.pack())
    assert reply is not None
    resp = DNSRecord.parse(reply)
    (opt,) = [rr for rr in resp.ar if rr.rtype == QTYPE.OPT]
    ext_rcode = opt.ttl >> 24
    assert (ext_rcode << 4) | resp.header.rcode == 16  # BADVERS
    assert struct.unpack("!H", reply[:2])[0] == q.header.id


def test_client_subnet_is_echoed_with_scope_zero(port: int) -> None:
    """RFC 7871: our answers do not depend on the client's address, so the scope is 0 (global)."""
    ecs = struct.pack("!HBB", 1, 24, 0) + bytes([192, 0, 2])
    q = DNSRecord.question("web.service.consul", "A")
    q.add_ar(EDNS0(udp_len=1232, opts=[EDNSOption(8, ecs)]))
    resp = DNSRecord.parse(raw_udp(port, bytes(q.pack())) or b"")
    (opt,) = [rr for rr in resp.ar if rr.rtype == QTYPE.OPT]
    (option,) = opt.rdata
    assert option.code == 8 and option.data == struct.pack("!HBB", 1, 24, 0) + bytes([192, 0, 2])
    assert rcode(resp) == "NOERROR"


def test_do_bit_is_copied(port: int) -> None:
    q = DNSRecord.question("web.service.consul", "A")
    q.add_ar(EDNS0(udp_len=1232, flags="do"))
    resp = DNSRecord.parse(raw_udp(port, bytes(q.pack())) or b"")
    (opt,) = [rr for rr in resp.ar if rr.rtype == QTYPE.OPT]
    assert opt.ttl & 0x8000
