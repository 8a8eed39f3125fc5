"""Catalog and health endpoints: shapes, filters, errors."""

from __future__ import annotations

from tests.conftest import Http


async def register(http: Http, node: str, svc: str, sid: str, tags: list[str], status: str = "passing",
                   meta: dict | None = None, port: int = 80) -> None:  # fmt: skip
    status_code, body, _ = await http.put("/v1/catalog/register", {
        "Node": node, "Address": f"10.0.0.{len(node)}", "NodeMeta": meta or {},
        "Service": {"ID": sid, "Service": svc, "Tags": tags, "Port": port},
        "Check": {"CheckID": f"{sid}-check", "Name": "check", "ServiceID": sid, "Status": status},
    })  # fmt: skip
    assert status_code == 200 and body is True


async def test_catalog_views(http: Http) -> None:
    await register(http, "n1", "web", "web1", ["v1", "Primary"], meta={"rack": "a"})
    await register(http, "n2", "web", "web2", ["v2"], meta={"rack": "b"})
    await register(http, "n2", "db", "db1", ["pg"], meta={"rack": "b"})
    _, services, _ = await http.get("/v1/catalog/services")
    assert services == {"consul": [], "db": ["pg"], "web": ["Primary", "v1", "v2"]}
    _, by_meta, _ = await http.get("/v1/catalog/services?node-meta=rack:a")
    assert by_meta == {"web": ["Primary", "v1"]}
    _, nodes, headers = await http.get("/v1/catalog/nodes")
    assert [n["Node"] for n in nodes] == ["n1", "n2", "test-agent"]
    assert int(headers["X-Consul-Index"]) > 0
    _, web, _ = await http.get("/v1/catalog/service/web")
    assert [e["ServiceID"] for e in web] == ["web1", "web2"]
    e = web[0]
    assert e["Node"] == "n1" and e["Address"] == "10.0.0.2" and e["ServicePort"] == 80 and e["NodeMeta"] == {"rack": "a"}
    assert e["ServiceWeights"] == {"Passing": 1, "Warning": 1}
    # Tags filter: repeatable, all must match, case-insensitive.
    _, tagged, _ = await http.get("/v1/catalog/service/web?tag=primary&tag=v1")
    assert [e["ServiceID"] for e in tagged] == ["web1"]
    _, tagged, _ = await http.get("/v1/catalog/service/web?tag=v1&tag=v2")
    assert tagged == []
    _, meta_filtered, _ = await http.get("/v1/catalog/service/web?node-meta=rack:b")
    assert [e["ServiceID"] for e in meta_filtered] == ["web2"]
    _, node, _ = await http.get("/v1/catalog/node/n2")
    assert set(node["Services"]) == {"web2", "db1"} and node["Node"]["Node"] == "n2"
    status, missing, _ = await http.get("/v1/catalog/node/ghost")
    assert status == 200 and missing is None
    _, node_services, _ = await http.get("/v1/catalog/node-services/n2")
    assert [s["ID"] for s in node_services["Services"]] == ["db1", "web2"]
    _, dcs, _ = await http.get("/v1/catalog/datacenters")
    assert dcs == ["dc1"]
    _, empty, _ = await http.get("/v1/catalog/service/nothing")
    assert empty == []


async def test_health_filters(http: Http) -> None:
    await register(http, "n1", "web", "web1", ["v1"], "passing")
    await register(http, "n2", "web", "web2", ["v1"], "warning")
    await register(http, "n3", "web", "web3", ["v2"], "critical")
    _, all_, _ = await http.get("/v1/health/service/web")
    assert [e["Service"]["ID"] for e in all_] == ["web1", "web2", "web3"]
    _, passing, _ = await http.get("/v1/health/service/web?passing")
    assert [e["Service"]["ID"] for e in passing] == ["web1"]
    _, passing, _ = await http.get("/v1/health/service/web?passing=false")
    assert len(passing) == 3
    status, text, _ = await http.get("/v1/health/service/web?passing=maybe")
    assert status == 400 and text == "Invalid value for ?passing"
    _, tagged, _ = await http.get("/v1/health/service/web?tag=v2")
    assert [e["Service"]["ID"] for e in tagged] == ["web3"]
    _, checks, _ = await http.get("/v1/health/checks/web")
    assert sorted(c["Status"] for c in checks) == ["critical", "passing", "warning"]
    _, crit, _ = await http.get("/v1/health/state/critical")
    assert [c["CheckID"] for c in crit] == ["web3-check"]
    _, any_, _ = await http.get("/v1/health/state/any")
    assert len(any_) == 4  # three service checks plus the agent's serfHealth (a healthy CA adds no check)
    status, text, _ = await http.get("/v1/health/state/purple")
    assert status == 400
    _, node_checks, _ = await http.get("/v1/health/node/n2")
    assert [c["CheckID"] for c in node_checks] == ["web2-check"]
    # A failing node-level check takes every instance on the node out of ?passing.
    await http.put("/v1/catalog/register", {"Node": "n1", "Address": "10.0.0.2",
                                            "Check": {"CheckID": "disk", "Name": "disk", "Status": "critical"}})  # fmt: skip
    _, passing, _ = await http.get("/v1/health/service/web?passing")
    assert passing == []
    entry = (await http.get("/v1/health/service/web?tag=v1"))[1][0]
    assert [c["CheckID"] for c in entry["Checks"]] == ["disk", "web1-check"]


async def test_catalog_deregister(http: Http) -> None:
    await register(http, "n1", "web", "web1", [])
    await register(http, "n1", "db", "db1", [])
    status, body, _ = await http.put("/v1/catalog/deregister", {"Node": "n1", "ServiceID": "web1"})
    assert status == 200 and body is True
    _, services, _ = await http.get("/v1/catalog/services")
    assert "web" not in services and "db" in services
    await http.put("/v1/catalog/deregister", {"Node": "n1", "CheckID": "db1-check"})
    _, checks, _ = await http.get("/v1/health/checks/db")
    assert checks == []
    await http.put("/v1/catalog/deregister", {"Node": "n1"})
    _, nodes, _ = await http.get("/v1/catalog/nodes")
    assert [n["Node"] for n in nodes] == ["test-agent"]


async def test_catalog_errors(http: Http) -> None:
    status, text, _ = await http.put("/v1/catalog/register", {"Address": "1.2.3.4"})
    assert status == 400 and text == "Must provide node"
    status, text, _ = await http.put("/v1/catalog/register", {"Node": "x"})
    assert status == 400 and text == "Must provide address"
    status, text, _ = await http.call("PUT", "/v1/catalog/register", raw=b"{nope")
    assert status == 400 and text.startswith("Request decode failed")
    status, text, _ = await http.put("/v1/catalog/register", {"Node": "x", "Address": "1.1.1.1",
                                                              "Check": {"Name": "c", "Status": "sideways"}})  # fmt: skip
    assert status == 400 and text == "Invalid check status: 'sideways'"
    status, text, _ = await http.put("/v1/catalog/register", {"Node": "x", "Address": "1.1.1.1",
                                                              "Check": {"Name": "c", "ServiceID": "nope", "Status": "passing"}})  # fmt: skip
    assert status == 400 and "Missing service registration" in text
    _, nodes, _ = await http.get("/v1/catalog/nodes")
    assert [n["Node"] for n in nodes] == ["test-agent"], "refused registrations must not create the node"
    status, text, _ = await http.put("/v1/catalog/deregister", {})
    assert status == 400 and text == "Must provide node"
    status, text, _ = await http.get("/v1/catalog/service/web?stale&consistent")
    assert status == 400 and text == "Cannot specify ?stale with ?consistent, conflicting semantics."
    status, text, _ = await http.get("/v1/catalog/service/web?index=abc")
    assert status == 400 and text == "Invalid index"
    status, text, _ = await http.get("/v1/catalog/service/web?index=1&wait=soon")
    assert status == 400 and text == "Invalid wait time"
    status, text, _ = await http.get("/v1/catalog/service/web?index=1&wait=-5s")
    assert status == 400 and text == "Invalid wait time"
    status, text, _ = await http.get("/v1/catalog/services?dc=dc9")
    assert status == 500 and text == "No path to datacenter"


async def test_headers_and_pretty(http: Http) -> None:
    status, body, headers = await http.get("/v1/catalog/services")
    assert headers["X-Consul-KnownLeader"] == "true"
    assert headers["X-Consul-LastContact"] == "0"
    assert headers["X-Consul-Default-ACL-Policy"] == "allow"
    assert int(headers["X-Consul-Index"]) >= 1
    async with http.session.get(http.base + "/v1/catalog/services?pretty") as resp:
        assert (await resp.text()).endswith("\n")
    # gzip when asked for (the response is big enough to be worth it)
    for i in range(30):
        await register(http, f"node-{i:02d}", "big", f"big{i}", ["t"])
    async with http.session.get(http.base + "/v1/health/service/big", headers={"Accept-Encoding": "gzip"}) as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        assert len(await resp.json()) == 30


async def test_node_meta_filters_follow_node_changes(http: Http) -> None:
    await register(http, "n1", "web", "web1", [], "critical", meta={"rack": "a"})
    _, checks, _ = await http.get("/v1/health/state/critical?node-meta=rack:b")
    assert checks == []
    # The node moves to rack b: the same query (served from the hot cache a moment ago) must see it.
    await http.put("/v1/catalog/register", {"Node": "n1", "Address": "10.0.0.2", "NodeMeta": {"rack": "b"}})
    _, checks, _ = await http.get("/v1/health/state/critical?node-meta=rack:b")
    assert [c["CheckID"] for c in checks] == ["web1-check"]
