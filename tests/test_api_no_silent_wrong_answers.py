"""Requests a Consul user makes that must get Consul's answer or Consul's error, never a plausible wrong
answer: ``?dc`` naming another datacenter on every route that takes it, the WAN member list, what
``/v1/agent/self`` reports, gateway lists that are empty rather than null or 404, services' Locality, and
JSON bodies nested past the limit on every route that takes a body."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from registry.acl.resolver import StaticResolver
from registry.api.routes import ROUTES
from registry.testing import RunningAgent, async_dev_agent
from tests.conftest import Http

NO_DC = "No path to datacenter"


def url_of(path: str) -> str:
    return path + "x" if path.endswith("/") else path


async def test_dc_of_another_datacenter_is_refused_on_every_route_that_takes_it(http: Http) -> None:
    """The route table walked: every route but the agent's own and the datacenter list answers Consul's
    500 for a datacenter it has no path to, before any handler (or ACL check) runs; ours is served."""
    walked = 0
    for r in ROUTES:
        if not r.takes_dc:
            assert r.path.startswith("/v1/agent/") or r.path == "/v1/catalog/datacenters", r.path
            continue
        for method in r.methods:
            status, body, _ = await http.call(method, url_of(r.path) + "?dc=dc9")
            assert (status, body) == (500, NO_DC), f"{method} {r.path}: {status} {body!r}"
            walked += 1
    assert walked > 50
    # Agent endpoints describe this agent whatever ?dc says, as Consul's do.
    assert (await http.get("/v1/agent/self?dc=dc9"))[0] == 200
    assert (await http.get("/v1/catalog/datacenters?dc=dc9"))[1] == ["dc1"]
    # Our own datacenter, spelled out, is served normally everywhere.
    await http.put("/v1/kv/k", raw=b"v")
    for path in ("/v1/kv/k", "/v1/catalog/nodes", "/v1/health/service/consul", "/v1/session/list",
                 "/v1/status/leader", "/v1/connect/ca/roots", "/v1/catalog/gateway-services/gw"):  # fmt: skip
        status, body, _ = await http.get(path + "?dc=dc1")
        assert status == 200, (path, status, body)
    status, out, _ = await http.put("/v1/txn?dc=dc1", [{"KV": {"Verb": "get", "Key": "k"}}])
    assert status == 200 and out["Results"][0]["KV"]["Key"] == "k"
    assert (await http.put("/v1/txn?dc=dc2", [{"KV": {"Verb": "get", "Key": "k"}}]))[:2] == (500, NO_DC)


async def test_wan_members_are_the_servers_named_node_dot_dc(http: Http) -> None:
    status, lan, _ = await http.get("/v1/agent/members")
    status, wan, _ = await http.get("/v1/agent/members?wan=1")
    assert status == 200 and len(wan) == 1
    assert wan[0]["Name"] == f"{lan[0]['Name']}.dc1" and wan[0]["Port"] == 8302
    assert wan[0]["Tags"]["role"] == "consul" and wan[0]["Addr"] == lan[0]["Addr"]
    assert (await http.get("/v1/agent/members?wan="))[1] == lan  # an empty value is no WAN request (Consul)
    assert (await http.get("/v1/agent/members?wan=1&segment=alpha"))[:2] == (
        400, "Cannot provide a segment with wan=true")


async def test_agent_self_reports_what_tools_read(http: Http, agent: RunningAgent) -> None:
    status, me, _ = await http.get("/v1/agent/self")
    assert status == 200
    consul = me["Stats"]["consul"]
    assert consul == {"server": "true", "leader": "true", "leader_addr": "127.0.0.1:8300", "bootstrap": "true",
                      "known_datacenters": "1", "acl": "disabled"}  # fmt: skip
    assert me["Stats"]["agent"]["services"] == "0" and me["Stats"]["build"]["version"] == me["Config"]["Version"]
    debug = me["DebugConfig"]
    assert debug["ConnectEnabled"] is True and debug["GRPCPort"] == -1 and debug["ServerMode"] is True
    assert (debug["Datacenter"], debug["NodeName"]) == ("dc1", me["Config"]["NodeName"])
    assert debug["DNSAddrs"] == [f"tcp://127.0.0.1:{agent.dns_port}", f"udp://127.0.0.1:{agent.dns_port}"]
    assert debug["HTTPAddrs"] == [f"tcp://127.0.0.1:{agent.http_port}"] and debug["HTTPSAddrs"] == []
    assert "xDS" not in me  # Consul omits it when the agent runs no xDS server


async def test_gateway_lists_are_empty_lists_not_null_or_404(http: Http) -> None:
    assert (await http.get("/v1/catalog/gateway-services/ingress"))[:2] == (200, [])
    assert (await http.get("/v1/health/ingress/web"))[:2] == (200, [])
    assert (await http.get("/v1/health/ingress/web?passing"))[:2] == (200, [])
    # A registered gateway with no config entry linking services to it exposes nothing either.
    assert (await http.put("/v1/agent/service/register", {"Name": "ingress", "Kind": "ingress-gateway",
                                                           "Port": 8080}))[0] == 200  # fmt: skip
    assert (await http.get("/v1/health/ingress/web"))[:2] == (200, [])
    assert (await http.get("/v1/catalog/gateway-services/ingress"))[:2] == (200, [])


def test_gateway_services_follow_the_gateways_config_entries() -> None:
    """What the two endpoints derive their answers from, given gateway config entries in the store (the
    HTTP API does not store those kinds yet: their PUT answers 400)."""
    from registry.api.catalog import gateway_services
    from registry.connect.state import TABLE_CONFIG, entry_key
    from registry.state.store import StateStore, WatchSet
    from registry.structs import Node, Service

    store = StateStore()
    store.begin(1)
    store.ensure_registration(Node("", "n", "10.0.0.1", "dc1"), Service("n", "api", "api"), [])
    store.ensure_registration(Node("", "n", "10.0.0.1", "dc1"), Service("n", "api-proxy", "api-proxy",
                                                                        kind="connect-proxy", port=1), [])  # fmt: skip
    store.commit()
    rows = store.tables.setdefault(TABLE_CONFIG, {})
    rows[entry_key("ingress-gateway", "in", "default")] = {
        "Kind": "ingress-gateway", "Name": "in", "CreateIndex": 5, "ModifyIndex": 6,
        "Listeners": [{"Port": 8080, "Protocol": "http", "Services": [{"Name": "web", "Hosts": ["web.example"]}]},
                      {"Port": 9000, "Services": [{"Name": "*"}]}]}  # fmt: skip
    rows[entry_key("terminating-gateway", "term", "default")] = {
        "Kind": "terminating-gateway", "Name": "term", "CreateIndex": 7, "ModifyIndex": 7,
        "Services": [{"Name": "db", "SNI": "db.example", "CAFile": "/ca.pem"}]}  # fmt: skip
    assert gateway_services(store, "in", WatchSet()) == [
        {"Gateway": {"Name": "in"}, "Service": {"Name": "web"}, "GatewayKind": "ingress-gateway", "Port": 8080,
         "Protocol": "http", "Hosts": ["web.example"], "CreateIndex": 5, "ModifyIndex": 6},
        {"Gateway": {"Name": "in"}, "Service": {"Name": "api"}, "GatewayKind": "ingress-gateway", "Port": 9000,
         "Protocol": "tcp", "FromWildcard": True, "CreateIndex": 5, "ModifyIndex": 6},
    ]  # fmt: skip
    assert gateway_services(store, "term", WatchSet()) == [
        {"Gateway": {"Name": "term"}, "Service": {"Name": "db"}, "GatewayKind": "terminating-gateway",
         "CAFile": "/ca.pem", "SNI": "db.example", "CreateIndex": 7, "ModifyIndex": 7}]  # fmt: skip
    assert gateway_services(store, "other", WatchSet()) == []


async def test_locality_is_stored_and_returned_everywhere(http: Http) -> None:
    loc = {"Region": "us-east-1", "Zone": "us-east-1a"}
    reg = {"Name": "web", "ID": "web1", "Port": 80, "Locality": loc, "Connect": {"SidecarService": {}}}
    assert (await http.put("/v1/agent/service/register", reg))[0] == 200
    _, services, _ = await http.get("/v1/agent/services")
    assert services["web1"]["Locality"] == loc
    assert services["web1-sidecar-proxy"]["Locality"] == loc  # the sidecar is where its service is
    _, one, _ = await http.get("/v1/agent/service/web1")
    assert one["Locality"] == loc
    _, catalog, _ = await http.get("/v1/catalog/service/web")
    assert catalog[0]["ServiceLocality"] == loc
    _, health, _ = await http.get("/v1/health/service/web")
    assert health[0]["Service"]["Locality"] == loc
    _, proxies, _ = await http.get("/v1/health/connect/web")
    assert proxies[0]["Service"]["Locality"] == loc
    body = {"Node": "ext", "Address": "10.0.0.1", "Service": {"Service": "db", "Locality": {"Region": "eu"}}}
    assert (await http.put("/v1/catalog/register", body))[0] == 200
    _, node, _ = await http.get("/v1/catalog/node/ext")
    assert node["Services"]["db"]["Locality"] == {"Region": "eu"}
    # Unset stays absent, as Consul's omitempty leaves it.
    body = {"Node": "ext", "Address": "10.0.0.1", "Service": {"Service": "cache"}}
    assert (await http.put("/v1/catalog/register", body))[0] == 200
    _, node, _ = await http.get("/v1/catalog/node/ext")
    assert "Locality" not in node["Services"]["cache"]


DEEP = b"[" * 5000 + b"]" * 5000
DEEP_OBJECT = b'{"a":' * 5000 + b"1" + b"}" * 5000
# Routes that act whatever their body says (leaving, reloading, stepping down), or answer Consul's 500 for
# what their path names whatever the body (a join that reached no one, a force-leave of no member; their
# answers are tested in tests/test_membership.py): not walked.
SKIP = ("/v1/agent/leave", "/v1/agent/reload", "/v1/operator/raft/transfer-leader", "/v1/agent/join/",
        "/v1/agent/force-leave/")
# Routes whose body is JSON: a nested one is a 400 naming the depth.
JSON_BODIES = ("/v1/agent/service/register", "/v1/agent/check/register", "/v1/catalog/register", "/v1/txn",
               "/v1/session/create", "/v1/config", "/v1/catalog/deregister")


@pytest.fixture
async def acl_http() -> AsyncIterator[Http]:
    resolver = StaticResolver({"none": ""}, default_policy="deny", management=("root",))
    async with async_dev_agent(acl_resolver=resolver) as running, aiohttp.ClientSession() as session:
        yield Http(session, running.url)


async def test_deeply_nested_bodies_are_400_on_every_route(http: Http, acl_http: Http) -> None:
    """Every route that takes a body, with ACLs off and on (the ACL layer reads names from some bodies
    before the handler does): never a 500; a JSON body nested past the limit is a 400 with Go's text."""
    for client, token in ((http, None), (acl_http, "root"), (acl_http, "none")):
        headers = {"X-Consul-Token": token} if token else {}
        for r in ROUTES:
            if r.path in SKIP:
                continue
            for method in r.methods:
                if method not in ("PUT", "POST"):
                    continue
                for body in (DEEP, DEEP_OBJECT):
                    status, text, _ = await client.call(method, url_of(r.path), raw=body, headers=headers)
                    assert status < 500, f"{method} {r.path} ({token}): {status} {text!r}"
                    if r.path in JSON_BODIES and token != "none":
                        assert status == 400 and "exceeded max depth" in str(text), (r.path, status, text)
