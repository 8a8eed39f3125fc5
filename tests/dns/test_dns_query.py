"""Prepared queries over DNS, asked of a real agent with dnslib's client: ``<query>.query.consul`` (A, SRV) and
the RFC 2782 form ``_<query>._tcp.query.consul``, by name, ID and template prefix; the TTL from the query's
``DNS.TTL``, else the agent's ``dns_config.service_ttl``; no such query or no instance: NXDOMAIN (Consul's
agent/dns.go preparedQueryLookup)."""

from __future__ import annotations

import json
import random
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from dnslib import QTYPE, DNSRecord
from dnstest import Catalog, addresses, ask, eventually, query, rcode, register

from dns.config import DNSConfig
from dns.engine import Engine
from registry.acl.errors import ACLNotFound
from registry.acl.resolver import StaticResolver
from registry.prepared_query import PreparedQuery
from registry.testing import RunningAgent, dev_agent


@pytest.fixture(scope="module")
def agent() -> Iterator[RunningAgent]:
    def check(sid: str, status: str) -> list[dict[str, str]]:
        return [{"CheckID": f"check-{sid}", "Name": sid, "Status": status, "ServiceID": sid}]

    with dev_agent(dns_config={"service_ttl": {"*": "5s"}}) as a:
        register(a, "web-1", "10.0.1.1", {"ID": "web", "Service": "web", "Port": 8080, "Tags": ["primary"]},
                 check("web", "passing"))
        register(a, "web-2", "10.0.1.2", {"ID": "web", "Service": "web", "Port": 8080}, check("web", "warning"))
        register(a, "web-3", "10.0.1.3", {"ID": "web", "Service": "web", "Port": 8080}, check("web", "critical"))
        register(a, "db-1", "10.0.2.1", {"ID": "db", "Service": "db", "Port": 5432, "Address": "10.0.9.9"})
        register(a, "lonely-1", "10.0.8.1", {"ID": "lonely", "Service": "lonely", "Port": 1},
                 check("lonely", "critical"))
        yield a


@pytest.fixture(scope="module")
def port(agent: RunningAgent) -> int:
    assert agent.dns_port is not None
    return agent.dns_port


def http(agent: RunningAgent, method: str, path: str, body: Any = None) -> Any:
    req = urllib.request.Request(agent.url + path, method=method,
                                 data=None if body is None else json.dumps(body).encode())  # fmt: skip
    with urllib.request.urlopen(req, timeout=10) as resp:
        raw = resp.read()
        return json.loads(raw) if raw else None


@pytest.fixture(scope="module")
def queries(agent: RunningAgent) -> dict[str, str]:
    made = {}
    for body in (
        {"Name": "webq", "Service": {"Service": "web"}},
        {"Name": "webq-pass", "Service": {"Service": "web", "OnlyPassing": True}, "DNS": {"TTL": "15s"}},
        {"Name": "geo-", "Template": {"Type": "name_prefix_match"}, "Service": {"Service": "${name.suffix}"}},
        {"Name": "lonelyq", "Service": {"Service": "lonely"}},
    ):
        made[body["Name"]] = http(agent, "POST", "/v1/query", body)["ID"]
    return made


def test_a_records_by_name_id_and_locality(port: int, queries: dict[str, str]) -> None:
    for name in ("webq.query.consul", "WebQ.query.dc1.consul", f"{queries['webq']}.query.consul"):
        resp = ask(port, name)
        assert rcode(resp) == "NOERROR" and sorted(addresses(resp)) == ["10.0.1.1", "10.0.1.2"], name
        assert {rr.ttl for rr in resp.rr} == {5}  # dns_config.service_ttl
    resp = ask(port, "webq-pass.query.consul")
    assert addresses(resp) == ["10.0.1.1"] and {rr.ttl for rr in resp.rr} == {15}  # the query's DNS.TTL


def test_srv_in_both_forms(port: int, queries: dict[str, str]) -> None:
    for name in ("webq.query.consul", "_webq._tcp.query.consul"):
        resp = ask(port, name, "SRV")
        assert rcode(resp) == "NOERROR"
        srv = sorted((str(rr.rdata.target), rr.rdata.port) for rr in resp.rr if rr.rtype == QTYPE.SRV)
        assert srv == [("web-1.node.dc1.consul.", 8080), ("web-2.node.dc1.consul.", 8080)], name
        assert sorted(addresses(resp)) == [] and {str(rr.rdata) for rr in resp.ar if rr.rtype == QTYPE.A} == {
            "10.0.1.1", "10.0.1.2"}


def test_templates_and_nxdomain(port: int, queries: dict[str, str]) -> None:
    assert addresses(ask(port, "geo-db.query.consul")) == ["10.0.9.9"]  # the template renders service db
    for name in ("nope.query.consul", "lonelyq.query.consul", "webq.query.dc2.consul"):
        resp = ask(port, name)
        assert rcode(resp) == "NXDOMAIN" and resp.auth and QTYPE.get(resp.auth[0].rtype) == "SOA", name


def test_an_update_changes_the_answer(agent: RunningAgent, port: int, queries: dict[str, str]) -> None:
    assert sorted(addresses(ask(port, "webq.query.consul"))) == ["10.0.1.1", "10.0.1.2"]
    http(agent, "PUT", f"/v1/query/{queries['webq']}", {"Name": "webq", "Service": {"Service": "web",
                                                                                   "Tags": ["primary"]}})
    eventually(lambda: addresses(ask(port, "webq.query.consul")) == ["10.0.1.1"])


def test_the_querys_own_token_filters_its_answer_under_acls() -> None:
    """The engine under ACLs: the DNS token may not read web, but a query with a token that may answers
    as that token; a query whose token is unknown answers SERVFAIL."""
    cat = Catalog()
    cat.register("n1", "10.0.0.1", "web")
    for i, (name, token) in enumerate((("open", "reader"), ("closed", ""), ("dead", "nobody"))):
        q = PreparedQuery.from_json({"ID": f"{i}1111111-2222-3333-4444-555555555555", "Name": name,
                                     "Token": token, "Service": {"Service": "web"}})
        cat._tx(lambda q=q: cat.store.pq_set(q))
    resolver = StaticResolver({"reader": 'service "web" { policy = "read" }\nnode "n1" { policy = "read" }',
                               "dns": 'node "n1" { policy = "read" }'})
    eng = Engine(DNSConfig(), lambda: cat.store, random.Random(3))
    eng.set_acl(resolver.resolve_now("dns"))

    def token_authz(secret: str) -> Any:
        try:
            return resolver.resolve_now(secret)
        except ACLNotFound:
            return None

    eng.set_token_resolver(token_authz)

    def ask_engine(name: str) -> DNSRecord:
        out = eng.handle(query(name, "A"), False, 1000.0)
        assert isinstance(out, bytes)
        return DNSRecord.parse(out)

    assert addresses(ask_engine("open.query.consul")) == ["10.0.0.1"]
    assert rcode(ask_engine("closed.query.consul")) == "NXDOMAIN"
    assert rcode(ask_engine("dead.query.consul")) == "SERVFAIL"
    assert rcode(ask_engine("web.service.consul")) == "NXDOMAIN"
