"""?filter= through real HTTP against the in-process dev agent: every endpoint Consul filters, its errors,
and the response caches keeping filtered and unfiltered answers apart."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

import consul
import pytest

from registry.api.http import HotCache
from registry.testing import RunningAgent, dev_agent
from tests.conftest import Http

PREFIX = "Failed to create boolean expression evaluator: "
# Consul answers an expression it cannot compile with 500 (the error reaches agent/http.go untyped);
# see FILTER_ERROR_STATUS in registry/api/catalog.py.
BAD_FILTER = 500


def q(expr: str) -> str:
    return "filter=" + quote(expr, safe="")


async def register(http: Http, node: str, svc: dict | None = None, checks: list[dict] | None = None,
                   meta: dict | None = None) -> None:  # fmt: skip
    body: dict = {"Node": node, "Address": f"10.0.0.{len(node)}", "NodeMeta": meta or {}}
    if svc is not None:
        body["Service"] = svc
    if checks:
        body["Checks"] = checks
    status, ok, _ = await http.put("/v1/catalog/register", body)
    assert status == 200 and ok is True


async def catalog(http: Http) -> None:
    """n1 (rack a): web1 [v1, primary] passing; n2 (rack b): web2 [v2] critical, db1; a proxy for web1."""
    await register(http, "n1", {"ID": "web1", "Service": "web", "Tags": ["v1", "primary"], "Port": 80,
                                "Meta": {"env": "prod"}},
                   [{"CheckID": "web1-check", "Name": "http", "ServiceID": "web1", "Status": "passing"}],
                   meta={"rack": "a"})  # fmt: skip
    await register(http, "n2", {"ID": "web2", "Service": "web", "Tags": ["v2"], "Port": 8080, "Meta": {"env": "qa"}},
                   [{"CheckID": "web2-check", "Name": "http", "ServiceID": "web2", "Status": "critical"}],
                   meta={"rack": "b"})  # fmt: skip
    await register(http, "n2", {"ID": "db1", "Service": "db", "Tags": ["pg"], "Port": 5432}, meta={"rack": "b"})
    await register(http, "n1", {"ID": "web1-sidecar-proxy", "Service": "web-sidecar-proxy", "Kind": "connect-proxy",
                                "Port": 21000, "Proxy": {"DestinationServiceName": "web",
                                                         "DestinationServiceID": "web1", "LocalServicePort": 80}},
                   [{"CheckID": "proxy-check", "Name": "tcp", "ServiceID": "web1-sidecar-proxy",
                     "Status": "passing"}], meta={"rack": "a"})  # fmt: skip


# ---------------------------------------------------------------------- catalog


async def test_catalog_nodes(http: Http) -> None:
    await catalog(http)
    _, nodes, _ = await http.get("/v1/catalog/nodes?" + q("Meta.rack == a"))
    assert [n["Node"] for n in nodes] == ["n1"]
    _, nodes, _ = await http.get("/v1/catalog/nodes?" + q('Node matches "^n" and Meta.rack != a'))
    assert [n["Node"] for n in nodes] == ["n2"]
    _, nodes, _ = await http.get("/v1/catalog/nodes?node-meta=rack:a&" + q("Meta.rack == b"))
    assert nodes == []  # applied after ?node-meta
    _, nodes, _ = await http.get("/v1/catalog/nodes?" + q("Meta.rack == c"))
    assert nodes == []
    _, nodes, _ = await http.get("/v1/catalog/nodes?filter=")
    assert [n["Node"] for n in nodes] == ["n1", "n2", "test-agent"]  # an empty filter is no filter


async def test_catalog_services(http: Http) -> None:
    await catalog(http)
    _, services, _ = await http.get("/v1/catalog/services?" + q("v1 in ServiceTags"))
    assert services == {"web": ["primary", "v1"]}  # only the matching instance's tags
    _, services, _ = await http.get("/v1/catalog/services?" + q("NodeMeta.rack == b"))
    assert services == {"db": ["pg"], "web": ["v2"]}
    _, services, _ = await http.get("/v1/catalog/services?" + q("ServiceKind == `connect-proxy`"))
    assert services == {"web-sidecar-proxy": []}
    _, services, _ = await http.get("/v1/catalog/services?" + q("ServicePort == 1"))
    assert services == {}


async def test_catalog_service_and_connect(http: Http) -> None:
    await catalog(http)
    _, web, _ = await http.get("/v1/catalog/service/web?" + q("ServiceMeta.env == prod"))
    assert [e["ServiceID"] for e in web] == ["web1"]
    _, web, _ = await http.get("/v1/catalog/service/web?" + q('NodeMeta.rack == b and ServicePort == 8080'))
    assert [e["ServiceID"] for e in web] == ["web2"]
    _, web, _ = await http.get("/v1/catalog/service/web?tag=v1&" + q("ServicePort == 8080"))
    assert web == []  # after ?tag
    _, web, _ = await http.get("/v1/catalog/service/web?" + q("ServiceTags is empty"))
    assert web == []
    _, proxies, _ = await http.get("/v1/catalog/connect/web?" + q("ServiceProxy.DestinationServiceID == web1"))
    assert [e["ServiceID"] for e in proxies] == ["web1-sidecar-proxy"]
    _, proxies, _ = await http.get("/v1/catalog/connect/web?" + q("ServiceProxy.LocalServicePort != 80"))
    assert proxies == []


async def test_catalog_node_and_node_services(http: Http) -> None:
    await catalog(http)
    _, node, _ = await http.get("/v1/catalog/node/n2?" + q("Service == db"))
    assert node["Node"]["Node"] == "n2" and list(node["Services"]) == ["db1"]  # filters the Services map
    _, node, _ = await http.get("/v1/catalog/node/n2?" + q("Port == 1"))
    assert node["Services"] == {} and node["Node"]["Node"] == "n2"
    _, listed, _ = await http.get("/v1/catalog/node-services/n2?" + q("pg not in Tags"))
    assert [s["ID"] for s in listed["Services"]] == ["web2"]
    _, listed, _ = await http.get("/v1/catalog/node-services/n2?" + q("Meta is not empty and Port == 5432"))
    assert listed["Services"] == []


# ---------------------------------------------------------------------- health


async def test_health_service_and_connect(http: Http) -> None:
    await catalog(http)
    _, entries, _ = await http.get("/v1/health/service/web?" + q("Checks.Status == critical"))
    assert [e["Service"]["ID"] for e in entries] == ["web2"]
    _, entries, _ = await http.get("/v1/health/service/web?" + q('Node.Meta.rack == a and "v1" in Service.Tags'))
    assert [e["Service"]["ID"] for e in entries] == ["web1"]
    _, entries, _ = await http.get("/v1/health/service/web?passing&" + q("Service.Port == 8080"))
    assert entries == []  # after ?passing
    _, entries, _ = await http.get("/v1/health/service/web?" + q("Checks.Status == warning"))
    assert entries == []
    _, entries, _ = await http.get("/v1/health/connect/web?" + q("Service.Proxy.DestinationServiceName == web"))
    assert [e["Service"]["ID"] for e in entries] == ["web1-sidecar-proxy"]
    _, entries, _ = await http.get("/v1/health/connect/web?" + q("Service.Kind != `connect-proxy`"))
    assert entries == []


async def test_health_checks_node_and_state(http: Http) -> None:
    await catalog(http)
    _, checks, _ = await http.get("/v1/health/checks/web?" + q("Status == passing"))
    assert [c["CheckID"] for c in checks] == ["web1-check"]
    _, checks, _ = await http.get("/v1/health/checks/web?" + q("v3 in ServiceTags"))
    assert checks == []
    _, checks, _ = await http.get("/v1/health/node/n2?" + q('ServiceName == "web"'))
    assert [c["CheckID"] for c in checks] == ["web2-check"]
    _, checks, _ = await http.get("/v1/health/node/n2?" + q("Status == passing"))
    assert checks == []
    _, checks, _ = await http.get("/v1/health/state/any?" + q("Node == n1"))
    assert sorted(c["CheckID"] for c in checks) == ["proxy-check", "web1-check"]
    _, checks, _ = await http.get("/v1/health/state/passing?" + q("ServiceID == web2"))
    assert checks == []


# ---------------------------------------------------------------------- agent and intentions


async def test_agent_services_and_checks(http: Http) -> None:
    assert (await http.put("/v1/agent/service/register", {
        "Name": "api", "ID": "api1", "Tags": ["v1"], "Port": 9000, "Meta": {"team": "core"},
        "Check": {"TTL": "30s", "CheckID": "api-ttl"},
        "Connect": {"SidecarService": {}},
    }))[0] == 200  # fmt: skip
    assert (await http.put("/v1/agent/service/register", {"Name": "batch", "ID": "batch1", "Port": 9100}))[0] == 200
    _, services, _ = await http.get("/v1/agent/services?" + q("Meta.team == core"))
    assert list(services) == ["api1", "api1-sidecar-proxy"]  # the sidecar inherits its parent's Meta (Consul)
    _, services, _ = await http.get("/v1/agent/services?" + q('Meta.team == core and Kind == "connect-proxy"'))
    assert list(services) == ["api1-sidecar-proxy"]
    _, services, _ = await http.get("/v1/agent/services?" + q("Proxy.DestinationServiceName == api"))
    assert list(services) == ["api1-sidecar-proxy"]
    _, services, _ = await http.get("/v1/agent/services?" + q("Port == 1 or Tags contains v9"))
    assert services == {}
    _, checks, _ = await http.get("/v1/agent/checks?" + q("Type == ttl"))
    assert list(checks) == ["api-ttl"]
    _, checks, _ = await http.get("/v1/agent/checks?" + q("ServiceName == api and Status == passing"))
    assert checks == {}  # TTL checks start critical


async def test_connect_intentions(http: Http) -> None:
    for src, dst in (("web", "db"), ("web", "cache")):
        assert (await http.put(f"/v1/connect/intentions/exact?source={src}&destination={dst}",
                               {"Action": "allow"}))[0] == 200  # fmt: skip
    status, _, _ = await http.call("POST", "/v1/connect/intentions", {
        "SourceName": "api", "DestinationName": "*", "Action": "deny", "Meta": {"owner": "ops"}})  # fmt: skip
    assert status == 200
    _, listed, _ = await http.get("/v1/connect/intentions?" + q("SourceName == web"))
    assert sorted(i["DestinationName"] for i in listed) == ["cache", "db"]
    _, listed, _ = await http.get("/v1/connect/intentions?" + q("Action == deny and Meta.owner == ops"))
    assert [(i["SourceName"], i["DestinationName"]) for i in listed] == [("api", "*")]
    _, listed, _ = await http.get("/v1/connect/intentions?" + q("Precedence != 9"))
    assert [i["DestinationName"] for i in listed] == ["*"]  # the wildcard destination ranks lower
    _, listed, _ = await http.get("/v1/connect/intentions?" + q("SourceName == nobody"))
    assert listed == []


# ---------------------------------------------------------------------- errors

ENDPOINTS = [
    "/v1/agent/services", "/v1/agent/checks", "/v1/catalog/nodes", "/v1/catalog/services",
    "/v1/catalog/service/web", "/v1/catalog/connect/web", "/v1/catalog/node/n1", "/v1/catalog/node-services/n1",
    "/v1/health/node/n1", "/v1/health/checks/web", "/v1/health/service/web", "/v1/health/connect/web",
    "/v1/health/state/any", "/v1/connect/intentions",
]  # fmt: skip


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_every_endpoint_reports_bad_expressions_and_selectors(http: Http, path: str) -> None:
    status, text, headers = await http.get(f"{path}?" + q("Service =="))
    assert status == BAD_FILTER and text.startswith(PREFIX + "1:11 (10): no match found, expected: ")
    assert headers["Content-Type"].startswith("text/plain")
    status, text, _ = await http.get(f"{path}?" + q("Nope == 1"))
    assert (status, text) == (BAD_FILTER, PREFIX + 'Selector "Nope" is not valid')
    status, text, _ = await http.get(f"{path}?" + q('Nope == 1 and x == "unterminated'))
    assert (status, text) == (BAD_FILTER, PREFIX + '1:33 (32): rule "string": Unterminated string literal')


async def test_error_texts(http: Http) -> None:
    cases = {
        "Service.Tags == v1": 'Invalid match operator "Equal" for selector "Service.Tags"',
        "Service.Port == http": 'Failed to coerce value "http" for selector "Service.Port": '
        'strconv.ParseInt: parsing "http": invalid syntax',
        "Service.Service matches `(`": 'Failed to compile regular expression "(": error parsing regexp: '
        "missing closing ): `(`",
        "Service.Meta.env is empty": 'Invalid match operator "Is Empty" for selector "Service.Meta.env"',
        "Address == 10.10.10.10": '1:17 (16): rule "number": Invalid number literal',
    }
    for expr, detail in cases.items():
        status, text, _ = await http.get("/v1/health/service/web?" + q(expr))
        assert (status, text) == (BAD_FILTER, PREFIX + detail), expr


async def test_other_parameter_errors_come_first(http: Http) -> None:
    # Consul checks these in the HTTP layer, before the server builds the filter
    status, text, _ = await http.get("/v1/health/service/web?passing=maybe&" + q("bad"))
    assert (status, text) == (400, "Invalid value for ?passing")
    status, text, _ = await http.get("/v1/catalog/nodes?index=x&" + q("bad"))
    assert (status, text) == (400, "Invalid index")
    status, text, _ = await http.get("/v1/health/state/purple?" + q("bad"))
    assert status == 400 and not text.startswith(PREFIX)


# ---------------------------------------------------------------------- caches and blocking queries


def hot_cache(agent: RunningAgent) -> HotCache:
    caches = [fn.__self__ for fn in agent.agent.hub.listeners if isinstance(getattr(fn, "__self__", None), HotCache)]
    assert len(caches) == 1
    return caches[0]


async def test_cached_answers_never_cross_between_filtered_and_unfiltered(http: Http, agent: RunningAgent) -> None:
    await catalog(http)
    hot = hot_cache(agent)
    plain = "/v1/health/service/web"
    filtered = plain + "?" + q("Service.ID == web2")
    for _ in range(2):  # the second answer comes from the hot cache
        _, everything, _ = await http.get(plain)
        assert [e["Service"]["ID"] for e in everything] == ["web1", "web2"]
    assert any(key.startswith(plain) and "filter" not in key for key in hot.entries)
    for _ in range(2):
        _, only, _ = await http.get(filtered)
        assert [e["Service"]["ID"] for e in only] == ["web2"]
    assert any("filter" in key for key in hot.entries)
    _, everything, _ = await http.get(plain)
    assert [e["Service"]["ID"] for e in everything] == ["web1", "web2"]
    _, other, _ = await http.get(plain + "?" + q("Service.ID == web1"))
    assert [e["Service"]["ID"] for e in other] == ["web1"]
    # the same again at a fixed index: the rendered-body cache is keyed on the query string too
    _, _, headers = await http.get(plain)
    index = headers["X-Consul-Index"]
    _, at_index, _ = await http.get(f"{plain}?index=1&wait=1ms&" + q("Service.ID == web1"))
    assert [e["Service"]["ID"] for e in at_index] == ["web1"]
    _, at_index, _ = await http.get(f"{plain}?index=1&wait=1ms")
    assert [e["Service"]["ID"] for e in at_index] == ["web1", "web2"]
    # a change drops both cached answers
    await register(http, "n3", {"ID": "web3", "Service": "web", "Port": 80})
    _, everything, headers = await http.get(plain)
    assert [e["Service"]["ID"] for e in everything] == ["web1", "web2", "web3"]
    assert int(headers["X-Consul-Index"]) > int(index)
    _, only, _ = await http.get(plain + "?" + q("Service.ID == web3"))
    assert [e["Service"]["ID"] for e in only] == ["web3"]


async def test_blocking_query_with_filter(http: Http) -> None:
    await catalog(http)
    path = "/v1/health/service/web?" + q("Service.Meta.env == canary")
    _, empty, headers = await http.get(path)
    assert empty == []
    index = headers["X-Consul-Index"]
    waiter = asyncio.ensure_future(http.get(f"{path}&index={index}&wait=10s"))
    await asyncio.sleep(0.1)
    assert not waiter.done()
    await register(http, "n4", {"ID": "web4", "Service": "web", "Port": 80, "Meta": {"env": "canary"}})
    _, found, headers = await asyncio.wait_for(waiter, 5)
    assert [e["Service"]["ID"] for e in found] == ["web4"] and int(headers["X-Consul-Index"]) > int(index)


async def test_catalog_services_filter_wakes_on_node_changes(http: Http) -> None:
    await catalog(http)
    path = "/v1/catalog/services?" + q("NodeMeta.rack == c")
    _, services, headers = await http.get(path)
    assert services == {}
    waiter = asyncio.ensure_future(http.get(f"{path}&index={headers['X-Consul-Index']}&wait=10s"))
    await asyncio.sleep(0.1)
    await register(http, "n2", meta={"rack": "c"})  # only the node's metadata changes
    _, services, _ = await asyncio.wait_for(waiter, 5)
    assert services == {"db": ["pg"], "web": ["v2"]}


# ---------------------------------------------------------------------- py-consul


def test_pyconsul_filter_expr() -> None:
    with dev_agent() as running:
        c = consul.Consul(host="127.0.0.1", port=running.http_port)
        c.agent.service.register("web", service_id="web1", port=80, tags=["v1"], check=consul.Check.ttl("30s"))
        c.agent.service.register("web", service_id="web2", port=81, tags=["v2"])
        c.agent.check.ttl_pass("service:web1")
        assert list(c.agent.services(filter_expr="Port == 81")) == ["web2"]
        assert list(c.agent.checks(filter_expr="ServiceName == web and Status == passing")) == ["service:web1"]
        _, nodes = c.catalog.nodes(filter_expr="Node == `test-agent`")
        assert [n["Node"] for n in nodes] == ["test-agent"]
        _, services = c.catalog.services(filter_expr="v2 in ServiceTags")
        assert services == {"web": ["v2"]}
        _, instances = c.catalog.service("web", filter_expr="ServicePort == 80")
        assert [i["ServiceID"] for i in instances] == ["web1"]
        _, entries = c.health.service("web", filter_expr="Checks.Status == passing and Service.Port == 80")
        assert [e["Service"]["ID"] for e in entries] == ["web1"]
        _, checks = c.health.state("any", filter_expr="ServiceID == web1 and Status == passing")
        assert [ch["CheckID"] for ch in checks] == ["service:web1"]
        with pytest.raises(consul.ConsulException, match="Selector \"Nope\" is not valid"):
            c.health.service("web", filter_expr="Nope == 1")
