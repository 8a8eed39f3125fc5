"""Every name form Consul answers, asked of a real server over UDP and over TCP with dnslib's client."""

from __future__ import annotations

import pytest
from dnslib import QTYPE, DNSRecord
from dnstest import addresses, ask, rcode, rtypes

TRANSPORTS = [pytest.param(False, id="udp"), pytest.param(True, id="tcp")]
WEB_HEALTHY = {"10.0.1.1", "10.0.1.2"}  # web-3 is critical, web-4's node is critical


def _answer_names(resp: DNSRecord) -> set[str]:
    return {str(rr.rname) for rr in resp.rr}


@pytest.mark.parametrize("tcp", TRANSPORTS)
@pytest.mark.parametrize(
    "name",
    [
        "web.service.consul",
        "web.service.dc1.consul",
        "web.service.dc1.dc.consul",
        "WEB.Service.CONSUL",
        "web.service.DC1.consul",
        "_web._tcp.service.consul",
        "_web._tcp.service.dc1.consul",
    ],
)
def test_service_a_forms(port: int, name: str, tcp: bool) -> None:
    resp = ask(port, name, "A", tcp=tcp)
    assert rcode(resp) == "NOERROR"
    assert resp.header.aa == 1 and resp.header.ra == 0
    assert set(addresses(resp)) == WEB_HEALTHY
    # Answers carry the question name exactly as asked (case included).
    assert _answer_names(resp) == {name + "."}
    assert all(rr.ttl == 0 for rr in resp.rr)  # no service_ttl configured: Consul's default 0


@pytest.mark.parametrize("tcp", TRANSPORTS)
def test_tag_lookup(port: int, tcp: bool) -> None:
    assert addresses(ask(port, "primary.web.service.consul", tcp=tcp)) == ["10.0.1.1"]
    assert set(addresses(ask(port, "V1.web.service.consul", tcp=tcp))) == WEB_HEALTHY
    assert rcode(ask(port, "nosuchtag.web.service.consul", tcp=tcp)) == "NXDOMAIN"


@pytest.mark.parametrize("tcp", TRANSPORTS)
@pytest.mark.parametrize(
    "name", ["web.service.consul", "_web._tcp.service.consul", "_web._tcp.consul", "_web._tcp.dc1.consul"]
)
def test_service_srv(port: int, name: str, tcp: bool) -> None:
    resp = ask(port, name, "SRV", tcp=tcp)
    assert rcode(resp) == "NOERROR"
    srvs = {str(rr.rdata.target): rr.rdata for rr in resp.rr}
    assert set(srvs) == {"web-1.node.dc1.consul.", "web-2.node.dc1.consul."}
    assert all(rr.rtype == QTYPE.SRV and str(rr.rname) == name + "." for rr in resp.rr)
    assert all(s.priority == 1 and s.port == 8080 for s in srvs.values())
    # Weight: Weights.Passing for a passing instance, Weights.Warning for a warning one.
    assert srvs["web-1.node.dc1.consul."].weight == 10
    assert srvs["web-2.node.dc1.consul."].weight == 3
    glue = {str(rr.rname): str(rr.rdata) for rr in resp.ar if rr.rtype == QTYPE.A}
    assert glue == {"web-1.node.dc1.consul.": "10.0.1.1", "web-2.node.dc1.consul.": "10.0.1.2"}
    # Node meta rides along as TXT in the additional section (enable_additional_node_meta_txt).
    txt = {str(rr.rdata) for rr in resp.ar if rr.rtype == QTYPE.TXT and str(rr.rname) == "web-1.node.dc1.consul."}
    assert txt == {'"raw text"', '"rack=r1"'}


def test_rfc2782_tag_and_srv_only_without_service_label(port: int) -> None:
    resp = ask(port, "_web._primary.service.consul", "SRV")
    assert [str(rr.rdata.target) for rr in resp.rr] == ["web-1.node.dc1.consul."]
    resp = ask(port, "_web._primary.consul", "SRV")
    assert [str(rr.rdata.target) for rr in resp.rr] == ["web-1.node.dc1.consul."]
    # Without the "service" label the RFC 2782 form exists only for SRV (as in Consul).
    assert rcode(ask(port, "_web._tcp.consul", "A")) == "NXDOMAIN"


@pytest.mark.parametrize("tcp", TRANSPORTS)
def test_service_with_explicit_address_uses_addr_target(port: int, tcp: bool) -> None:
    resp = ask(port, "db.service.consul", "SRV", tcp=tcp)
    (srv,) = resp.rr
    assert str(srv.rdata.target) == "0a000909.addr.dc1.consul." and srv.rdata.port == 5432
    assert [(str(rr.rname), str(rr.rdata)) for rr in resp.ar if rr.rtype == QTYPE.A] == [
        ("0a000909.addr.dc1.consul.", "10.0.9.9")
    ]
    assert addresses(ask(port, "db.service.consul", tcp=tcp)) == ["10.0.9.9"]
    # and the target resolves
    assert addresses(ask(port, "0a000909.addr.dc1.consul", tcp=tcp)) == ["10.0.9.9"]


@pytest.mark.parametrize("tcp", TRANSPORTS)
@pytest.mark.parametrize("name", ["web-1.node.consul", "web-1.node.dc1.consul", "WEB-1.node.dc1.dc.consul"])
def test_node_lookup(port: int, name: str, tcp: bool) -> None:
    resp = ask(port, name, "A", tcp=tcp)
    assert rcode(resp) == "NOERROR" and resp.header.aa == 1
    assert addresses(resp) == ["10.0.1.1"]
    assert {str(rr.rdata) for rr in resp.ar if rr.rtype == QTYPE.TXT} == {'"rack=r1"', '"raw text"'}


def test_node_txt_and_any(port: int) -> None:
    resp = ask(port, "web-1.node.consul", "TXT")
    assert rtypes(resp.rr) == ["TXT", "TXT"] and not resp.ar
    resp = ask(port, "web-1.node.consul", "ANY")
    assert sorted(rtypes(resp.rr)) == ["A", "TXT", "TXT"]


def test_node_names_with_dots_and_case(port: int) -> None:
    assert addresses(ask(port, "dotted.host.node.consul")) == ["10.0.6.1"]
    assert addresses(ask(port, "mixed-case.node.consul")) == ["10.0.3.1"]
    assert addresses(ask(port, "api.service.consul")) == ["10.0.3.1"]
    assert addresses(ask(port, "API.service.dc1.consul")) == ["10.0.3.1"]


@pytest.mark.parametrize("tcp", TRANSPORTS)
def test_connect_lookup(port: int, tcp: bool) -> None:
    resp = ask(port, "web.connect.consul", "SRV", tcp=tcp)
    assert [(str(rr.rdata.target), rr.rdata.port) for rr in resp.rr] == [("web-1.node.dc1.consul.", 21000)]
    assert addresses(ask(port, "web.connect.dc1.consul", tcp=tcp)) == ["10.0.1.1"]
    # the sidecar is not an instance of web, and a service without one has no Connect answer
    assert rcode(ask(port, "db.connect.consul", tcp=tcp)) == "NXDOMAIN"
    # a Connect-native service is its own Connect instance
    resp = ask(port, "native.connect.consul", "SRV", tcp=tcp)
    assert [(str(rr.rdata.target), rr.rdata.port) for rr in resp.rr] == [("native-1.node.dc1.consul.", 8443)]


@pytest.mark.parametrize("tcp", TRANSPORTS)
def test_addr_lookup(port: int, tcp: bool) -> None:
    assert addresses(ask(port, "c000020a.addr.consul", tcp=tcp)) == ["192.0.2.10"]
    v6 = "20010db8000000000000000000000001.addr.dc1.consul"
    resp = ask(port, v6, "AAAA", tcp=tcp)
    assert addresses(resp) == ["2001:db8::1"]
    # Asked for the other type: no answer, the record in the additional section, as Consul does.
    resp = ask(port, v6, "A", tcp=tcp)
    assert rcode(resp) == "NOERROR" and not resp.rr and rtypes(resp.ar) == ["AAAA"]
    for bad in ("c00002.addr.consul", "zz00020a.addr.consul", "a.c000020a.addr.consul"):
        assert rcode(ask(port, bad, tcp=tcp)) == "NXDOMAIN"


def test_ipv6_service(port: int) -> None:
    assert addresses(ask(port, "six.service.consul", "AAAA")) == ["2001:db8::1"]
    assert addresses(ask(port, "six.service.consul", "ANY")) == ["2001:db8::1"]
    resp = ask(port, "six.service.consul", "SRV")
    assert [rr.rtype for rr in resp.ar] == [QTYPE.AAAA]


def test_hostnames_are_cnames(port: int) -> None:
    resp = ask(port, "external.service.consul")
    assert [(QTYPE.get(rr.rtype), str(rr.rdata)) for rr in resp.rr] == [("CNAME", "example.org.")]
    resp = ask(port, "ext.node.consul")
    assert [(QTYPE.get(rr.rtype), str(rr.rdata)) for rr in resp.rr] == [("CNAME", "example.org.")]
    resp = ask(port, "external.service.consul", "SRV")
    assert [str(rr.rdata.target) for rr in resp.rr] == ["example.org."]
    # A CNAME into the domain is followed, so the client gets the address in the same answer.
    resp = ask(port, "alias.service.consul")
    assert [(QTYPE.get(rr.rtype), str(rr.rname), str(rr.rdata)) for rr in resp.rr] == [
        ("CNAME", "alias.service.consul.", "db.service.consul."),
        ("A", "db.service.consul.", "10.0.9.9"),
    ]


def test_tagged_lan_address_is_preferred(port: int) -> None:
    assert addresses(ask(port, "tagsvc.service.consul")) == ["10.0.5.2"]
    assert addresses(ask(port, "tagged.node.consul")) == ["10.0.5.2"]
    resp = ask(port, "tagsvc.service.consul", "SRV")
    assert [str(rr.rdata.target) for rr in resp.rr] == ["0a000502.addr.dc1.consul."]


def test_virtual_ip(port: int) -> None:
    assert addresses(ask(port, "vip.virtual.consul")) == ["240.0.0.5"]
    assert rcode(ask(port, "web.virtual.consul")) == "NXDOMAIN"


@pytest.mark.parametrize("tcp", TRANSPORTS)
def test_soa_and_ns_at_the_apex(port: int, tcp: bool) -> None:
    resp = ask(port, "consul", "SOA", tcp=tcp)
    (soa,) = resp.rr
    assert str(soa.rname) == "consul." and soa.rtype == QTYPE.SOA
    assert str(soa.rdata.mname) == "ns.consul." and str(soa.rdata.rname) == "hostmaster.consul."
    assert soa.rdata.times[1:] == (3600, 600, 86400, 0)
    assert [str(rr.rdata) for rr in resp.auth] == ["test-agent.node.dc1.consul."]
    resp = ask(port, "consul", "NS", tcp=tcp)
    assert [str(rr.rdata) for rr in resp.rr] == ["test-agent.node.dc1.consul."]
    assert [(str(rr.rname), str(rr.rdata)) for rr in resp.ar] == [("test-agent.node.dc1.consul.", "127.0.0.1")]
    # the server's NS target resolves
    assert addresses(ask(port, "test-agent.node.dc1.consul", tcp=tcp)) == ["127.0.0.1"]
    resp = ask(port, "consul", "ANY", tcp=tcp)
    assert rtypes(resp.rr) == ["SOA", "NS"]


def test_reverse_lookup(port: int) -> None:
    resp = ask(port, "1.1.0.10.in-addr.arpa", "PTR")
    assert [str(rr.rdata) for rr in resp.rr] == ["web-1.node.dc1.consul."]
    resp = ask(port, "9.9.0.10.in-addr.arpa", "PTR")  # a service address
    assert [str(rr.rdata) for rr in resp.rr] == ["db.service.dc1.consul."]
    name = ".".join(reversed("20010db8000000000000000000000001")) + ".ip6.arpa"
    assert [str(rr.rdata) for rr in ask(port, name, "PTR").rr] == ["v6-node.node.dc1.consul."]
    resp = ask(port, "9.9.9.9.in-addr.arpa", "PTR")
    assert rcode(resp) == "NXDOMAIN" and rtypes(resp.auth) == ["SOA"]


@pytest.mark.parametrize("qtype", ["A", "SRV"])
def test_answers_are_shuffled_on_every_query(port: int, qtype: str) -> None:
    """The same cached answer, a different order each time (over TCP, so nothing is capped)."""
    orders = []
    for _ in range(40):
        resp = ask(port, "many.service.consul", qtype, tcp=True)
        assert len(resp.rr) == 40
        orders.append(tuple(str(rr.rdata) for rr in resp.rr))
    assert len(set(orders)) == 40  # 40! orders: a repeat would mean no shuffle
    assert len({o[0] for o in orders}) >= 15  # and the first record moves around
