"""DNS under ACLs: answers as the agent's default token may read, as Consul's DNS server asks the catalog with
``acl.tokens.default`` (else anonymous) and the servers filter what it may not see.

What Consul answers (agent/dns.go over Health.ServiceNodes / Catalog.NodeServices, which filter by
``service:read`` and ``node:read``): a name whose every instance is filtered out is NXDOMAIN with the SOA,
exactly as a name that does not exist (never REFUSED, which would tell a token that the name exists); a
default token the servers do not know fails the RPC ("ACL not found"): SERVFAIL. ``.addr`` names read no
catalog and answer whatever the token.
"""

from __future__ import annotations

import json
import random
import urllib.error
import urllib.request
from typing import Any

import pytest
from dnslib import DNSRecord
from dnstest import Catalog, addresses, ask, eventually, query, rcode, rtypes

from dns.config import DNSConfig
from dns.engine import Engine
from registry.acl.resolver import StaticResolver
from registry.structs import Node, Service
from registry.testing import dev_agent

MGMT = "6b0e4c4a-1b7e-4e4e-9a55-2f1d0c0a0001"


# ---------------------------------------------------------------------------- the engine, no sockets


@pytest.fixture
def cat() -> Catalog:
    c = Catalog()
    c.register("n1", "10.0.0.1", "web")
    c.register("n2", "10.0.0.2", "web")
    c.register("n3", "10.0.0.3", "db", status="passing")
    return c


def answer(engine: Engine, name: str, qtype: str = "A") -> DNSRecord:
    out = engine.handle(query(name, qtype), False, 1000.0)
    assert isinstance(out, bytes)
    return DNSRecord.parse(out)


async def authorizer(rules: str) -> Any:
    return await StaticResolver({"t": rules}).resolve("t")


async def test_the_engine_filters_by_the_authorizer_and_forgets_answers_when_it_changes(cat: Catalog) -> None:
    eng = Engine(DNSConfig(), lambda: cat.store, random.Random(7))
    assert sorted(addresses(answer(eng, "web.service.consul"))) == ["10.0.0.1", "10.0.0.2"]  # ACLs off
    eng.set_acl(await authorizer('service "web" { policy = "read" }\nnode "n2" { policy = "read" }'))
    assert addresses(answer(eng, "web.service.consul")) == ["10.0.0.2"]  # n1 may not be read
    denied = answer(eng, "db.service.consul")
    assert rcode(denied) == "NXDOMAIN" and rtypes(denied.auth) == ["SOA"]
    assert rcode(answer(eng, "n1.node.consul")) == "NXDOMAIN"
    assert addresses(answer(eng, "n2.node.consul")) == ["10.0.0.2"]
    # Reverse lookups see only nodes the token may read.
    assert rcode(answer(eng, "1.0.0.10.in-addr.arpa", "PTR")) == "NXDOMAIN"
    assert [str(rr.rdata) for rr in answer(eng, "2.0.0.10.in-addr.arpa", "PTR").rr] == ["n2.node.dc1.consul."]
    hits = eng.stats["hits"]
    assert addresses(answer(eng, "web.service.consul")) == ["10.0.0.2"] and eng.stats["hits"] == hits + 1
    # A new authorizer: every cached answer is rebuilt for it.
    eng.set_acl(await authorizer('service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }'))
    assert sorted(addresses(answer(eng, "web.service.consul"))) == ["10.0.0.1", "10.0.0.2"]
    assert addresses(answer(eng, "db.service.consul")) == ["10.0.0.3"]
    # A token that cannot be resolved: catalog names SERVFAIL, .addr names still answer.
    eng.set_acl(None)
    assert rcode(answer(eng, "web.service.consul")) == "SERVFAIL"
    assert rcode(answer(eng, "n2.node.consul")) == "SERVFAIL"
    assert addresses(answer(eng, "0a000001.addr.dc1.consul")) == ["10.0.0.1"]


async def test_connect_lookups_need_read_on_the_destination(cat: Catalog) -> None:
    proxy = Service(node="n1", id="web-proxy", service="web-proxy", kind="connect-proxy", port=21000,
                    proxy={"DestinationServiceName": "web"})  # fmt: skip
    node = Node(id="", node="n1", address="10.0.0.1", datacenter="dc1")
    cat._tx(lambda: cat.store.ensure_registration(node, proxy, []))
    eng = Engine(DNSConfig(), lambda: cat.store, random.Random(7))
    assert addresses(answer(eng, "web.connect.consul")) == ["10.0.0.1"]
    eng.set_acl(await authorizer('service "web-proxy" { policy = "read" }\nnode_prefix "" { policy = "read" }'))
    assert rcode(answer(eng, "web.connect.consul")) == "NXDOMAIN"
    eng.set_acl(await authorizer('service_prefix "web" { policy = "read" }\nnode_prefix "" { policy = "read" }'))
    assert addresses(answer(eng, "web.connect.consul")) == ["10.0.0.1"]


# ---------------------------------------------------------------------------- a real agent, dnslib's client


def call(url: str, method: str, path: str, body: object = None, token: str = MGMT) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method=method, headers={"X-Consul-Token": token})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            text = resp.read()
            return resp.status, json.loads(text) if text.strip() else None
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_real_agent_answers_dns_as_its_default_token_may_read() -> None:
    acl = {"enabled": True, "default_policy": "deny", "tokens": {"initial_management": MGMT}}
    with dev_agent(acl=acl) as running:
        url, port = running.url, running.dns_port
        assert port is not None
        eventually(lambda: call(url, "GET", "/v1/acl/token/self")[0] == 200)
        for node, addr, svc in (("n1", "10.1.0.1", "web"), ("n2", "10.1.0.2", "db")):
            status, _ = call(url, "PUT", "/v1/catalog/register",
                             {"Node": node, "Address": addr, "Service": {"Service": svc, "Port": 80}})  # fmt: skip
            assert status == 200
        # No default token: the anonymous token reads nothing, and every catalog name is NXDOMAIN.
        for name in ("web.service.consul", "n1.node.consul"):
            resp = ask(port, name)
            assert (rcode(resp), rtypes(resp.auth), resp.header.aa) == ("NXDOMAIN", ["SOA"], 1)
        assert addresses(ask(port, "0a010001.addr.dc1.consul")) == ["10.1.0.1"]

        status, pol = call(url, "PUT", "/v1/acl/policy", {"Name": "dns", "Rules":
                           'service "web" { policy = "read" }\nnode_prefix "" { policy = "read" }'})  # fmt: skip
        assert status == 200, pol
        status, tok = call(url, "PUT", "/v1/acl/token", {"Policies": [{"ID": pol["ID"]}]})
        assert status == 200, tok
        assert call(url, "PUT", "/v1/agent/token/default", {"Token": tok["SecretID"]})[0] == 200
        eventually(lambda: addresses(ask(port, "web.service.consul")) == ["10.1.0.1"])
        assert addresses(ask(port, "n2.node.consul")) == ["10.1.0.2"]
        assert rcode(ask(port, "db.service.consul")) == "NXDOMAIN"

        # Narrowing the policy takes effect on the next query: n1 may no longer be read.
        status, _ = call(url, "PUT", f"/v1/acl/policy/{pol['ID']}", {"Name": "dns", "Rules":
                         'service "web" { policy = "read" }\nnode "n2" { policy = "read" }'})  # fmt: skip
        assert status == 200
        eventually(lambda: rcode(ask(port, "web.service.consul")) == "NXDOMAIN", timeout=1.0)
        assert rcode(ask(port, "n1.node.consul")) == "NXDOMAIN"
        assert addresses(ask(port, "n2.node.consul", tcp=True)) == ["10.1.0.2"]

        # The default token deleted: the servers no longer know it, and catalog names SERVFAIL.
        assert call(url, "DELETE", f"/v1/acl/token/{tok['AccessorID']}")[0] == 200
        eventually(lambda: rcode(ask(port, "n2.node.consul")) == "SERVFAIL", timeout=1.0)
        # Cleared: back to the anonymous token.
        assert call(url, "PUT", "/v1/agent/token/default", {"Token": ""})[0] == 200
        eventually(lambda: rcode(ask(port, "n2.node.consul")) == "NXDOMAIN")
