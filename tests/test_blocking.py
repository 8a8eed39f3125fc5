"""Blocking queries: wake on change, time out when nothing changes, wake only the watchers of what changed."""

from __future__ import annotations

import asyncio
import time

import pytest

from registry.testing import RunningAgent
from tests.conftest import Http, eventually


async def _waiting(agent: RunningAgent, n: int) -> bool:
    return agent.agent.hub.waiting() == n


async def _reg(http: Http, sid: str, name: str, port: int = 80) -> None:
    status, _, _ = await http.put("/v1/catalog/register", {"Node": "n1", "Address": "10.0.0.1",
                                                           "Service": {"ID": sid, "Service": name, "Port": port}})  # fmt: skip
    assert status == 200


async def test_wakes_on_change(http: Http) -> None:
    await _reg(http, "web1", "web")
    _, _, headers = await http.get("/v1/health/service/web")
    index = int(headers["X-Consul-Index"])
    started = time.monotonic()
    task = asyncio.create_task(http.get(f"/v1/health/service/web?index={index}&wait=30s"))
    await asyncio.sleep(0.2)
    assert not task.done()
    await _reg(http, "web2", "web")
    status, body, headers = await asyncio.wait_for(task, 5)
    assert status == 200 and len(body) == 2
    assert int(headers["X-Consul-Index"]) > index
    assert time.monotonic() - started < 5


async def test_times_out_with_same_index(http: Http) -> None:
    await _reg(http, "web1", "web")
    _, _, headers = await http.get("/v1/catalog/service/web")
    index = headers["X-Consul-Index"]
    started = time.monotonic()
    status, body, headers = await http.get(f"/v1/catalog/service/web?index={index}&wait=400ms")
    elapsed = time.monotonic() - started
    assert status == 200 and headers["X-Consul-Index"] == index and len(body) == 1
    assert 0.39 <= elapsed < 0.4 * (1 + 1 / 16) + 0.3, elapsed


async def test_other_service_does_not_wake(http: Http, agent: RunningAgent) -> None:
    await _reg(http, "web1", "web")
    await _reg(http, "db1", "db")
    _, _, headers = await http.get("/v1/health/service/web")
    index = headers["X-Consul-Index"]
    hub = agent.agent.hub
    task = asyncio.create_task(http.get(f"/v1/health/service/web?index={index}&wait=2s"))
    await asyncio.sleep(0.2)
    woken_before = hub.wakeups
    for port in range(5):
        await _reg(http, "db1", "db", port=1000 + port)
    await asyncio.sleep(0.2)
    assert hub.wakeups == woken_before, "writes to db must not wake watchers of web"
    assert not task.done()
    await _reg(http, "web1", "web", port=81)
    status, body, _ = await asyncio.wait_for(task, 3)
    assert body[0]["Service"]["Port"] == 81


async def test_kv_wakes_key_and_prefix_watchers_only(http: Http, agent: RunningAgent) -> None:
    for k in ("app/a", "app/b", "other/c"):
        await http.call("PUT", f"/v1/kv/{k}", raw=b"1")
    _, _, h_a = await http.get("/v1/kv/app/a")
    _, _, h_b = await http.get("/v1/kv/app/b")
    _, _, h_prefix = await http.get("/v1/kv/app/?recurse")
    _, _, h_other = await http.get("/v1/kv/other/?recurse")
    watch_a = asyncio.create_task(http.get(f"/v1/kv/app/a?index={h_a['X-Consul-Index']}&wait=3s"))
    watch_b = asyncio.create_task(http.get(f"/v1/kv/app/b?index={h_b['X-Consul-Index']}&wait=3s"))
    watch_prefix = asyncio.create_task(http.get(f"/v1/kv/app/?recurse&index={h_prefix['X-Consul-Index']}&wait=3s"))
    watch_other = asyncio.create_task(http.get(f"/v1/kv/other/?recurse&index={h_other['X-Consul-Index']}&wait=3s"))
    await asyncio.sleep(0.2)
    await http.call("PUT", "/v1/kv/app/a", raw=b"2")
    await asyncio.wait_for(asyncio.gather(watch_a, watch_prefix), 2)
    await asyncio.sleep(0.2)
    assert not watch_b.done() and not watch_other.done()
    assert agent.agent.hub.wakeups == 2
    watch_b.cancel()
    watch_other.cancel()


async def test_blocking_on_missing_key_wakes_on_create(http: Http) -> None:
    status, _, headers = await http.get("/v1/kv/later")
    assert status == 404
    task = asyncio.create_task(http.get(f"/v1/kv/later?index={headers['X-Consul-Index']}&wait=5s"))
    await asyncio.sleep(0.1)
    await http.call("PUT", "/v1/kv/later", raw=b"now")
    status, body, _ = await asyncio.wait_for(task, 3)
    assert status == 200 and body[0]["Key"] == "later"


# 201 connections from one IP (200 watchers and the test's own): over Consul's default per-client limit.
@pytest.mark.agent_config(limits={"http_max_conns_per_client": 0})
async def test_many_watchers_one_render(http: Http, agent: RunningAgent) -> None:
    await _reg(http, "web1", "web")
    _, _, headers = await http.get("/v1/health/service/web")
    index = headers["X-Consul-Index"]
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        many = Http(session, http.base)
        tasks = [asyncio.create_task(many.get(f"/v1/health/service/web?index={index}&wait=10s")) for _ in range(200)]
        await eventually(lambda: _waiting(agent, 200))
        await _reg(http, "web2", "web")
        results = await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert all(len(body) == 2 for _, body, _ in results)
    assert agent.agent.hub.waiting() == 0


async def test_index_never_zero(http: Http) -> None:
    _, _, headers = await http.get("/v1/catalog/service/never-registered")
    assert int(headers["X-Consul-Index"]) >= 1


async def test_hot_cache_never_serves_a_stale_answer(http: Http, agent: RunningAgent) -> None:
    """Repeated identical reads are served from rendered answers; any change to what they read drops them."""
    await _reg(http, "web1", "web")
    await http.call("PUT", "/v1/kv/app/a", raw=b"1")
    for _ in range(3):
        _, body, _ = await http.get("/v1/health/service/web")
        _, kv_list, _ = await http.get("/v1/kv/app/?recurse")
    assert len(body) == 1 and len(kv_list) == 1
    await _reg(http, "web2", "web")
    _, body, headers = await http.get("/v1/health/service/web")
    assert len(body) == 2
    await http.call("PUT", "/v1/kv/app/b", raw=b"2")
    _, kv_list, _ = await http.get("/v1/kv/app/?recurse")
    assert [e["Key"] for e in kv_list] == ["app/a", "app/b"]
    await http.delete("/v1/kv/app/a")
    _, kv_list, _ = await http.get("/v1/kv/app/?recurse")
    assert [e["Key"] for e in kv_list] == ["app/b"]
    # gzip and plain answers are cached apart.
    async with http.session.get(http.base + "/v1/health/service/web", headers={"Accept-Encoding": "identity"}) as r:
        assert r.headers.get("Content-Encoding") is None and len(await r.json()) == 2


# ---------------------------------------------------------------------- every read family, one matrix
#
# Each case: the setup writes, a read, a write that changes what the read returned (it must wake the
# blocking query with a larger index) and a write to something else (it must leave it asleep). The
# watch topics come from what the read looked at, so a read that forgot one would fail here.


def _register(node: str, svc: str | None = None, port: int = 80, check: str | None = None,
              meta: dict | None = None, address: str = "10.0.0.1") -> tuple[str, str, dict]:  # fmt: skip
    body: dict = {"Node": node, "Address": address, "NodeMeta": meta or {}}
    if svc:
        body["Service"] = {"ID": svc, "Service": svc, "Port": port}
    if check:
        body["Check"] = {"CheckID": f"{node}-{check}", "Name": check, "Status": check,
                         "ServiceID": svc or ""}  # fmt: skip
    return ("PUT", "/v1/catalog/register", body)


def _kv(key: str, value: bytes = b"v") -> tuple[str, str, bytes]:
    return ("PUT", f"/v1/kv/{key}", value)


_IXN = {"Kind": "service-intentions", "Name": "web", "Sources": [{"Name": "api", "Action": "allow"}]}
_IXN_DB = {"Kind": "service-intentions", "Name": "db", "Sources": [{"Name": "api", "Action": "deny"}]}
_CA_ROTATE = ("PUT", "/v1/connect/ca/configuration", {
    "Provider": "consul", "Config": {"LeafCertTTL": "24h", "PrivateKeyType": "ec", "PrivateKeyBits": 384}})  # fmt: skip
_SETUP = [_register("n1", "web", check="passing"), _register("n2", "db", check="passing"), _kv("app/a"),
          _kv("other/x")]  # fmt: skip

# (path, extra setup, related write, unrelated write)
WAKE_CASES = [
    ("/v1/catalog/nodes", [], _register("n3"), _kv("app/b")),
    ("/v1/catalog/services", [], _register("n3", "cache"), _register("n1", address="10.0.0.9")),
    ("/v1/catalog/services?node-meta=rack:r1", [], _register("n1", address="10.0.0.9"), _kv("app/b")),
    ("/v1/catalog/service/web", [], _register("n1", "web", port=81), _register("n2", "db", port=81)),
    ("/v1/catalog/connect/web", [], _register("n1", "web-proxy"), _register("n2", "db", port=81)),
    ("/v1/catalog/node/n1", [], _register("n1", "web", port=81), _register("n2", "db", port=81)),
    ("/v1/catalog/node-services/n1", [], _register("n1", "web", port=81), _register("n2", "db", port=81)),
    ("/v1/health/service/web", [], _register("n1", "web", check="critical"), _register("n2", "db", check="critical")),
    ("/v1/health/service/web?passing", [], _register("n1", "web", check="critical"), _kv("app/b")),
    ("/v1/health/checks/web", [], _register("n1", "web", check="warning"), _register("n2", "db", check="warning")),
    ("/v1/health/node/n1", [], _register("n1", "web", check="critical"), _register("n2", "db", check="critical")),
    ("/v1/health/state/critical", [], _register("n1", "web", check="critical"), _kv("app/b")),
    ("/v1/health/state/any?node-meta=rack:r1", [], _register("n1", address="10.0.0.9"), _kv("app/b")),
    ("/v1/kv/app/a", [], _kv("app/a", b"2"), _kv("app/b")),
    ("/v1/kv/app/missing", [], _kv("app/missing"), _kv("app/b")),
    ("/v1/kv/app/?recurse", [], _kv("app/b"), _kv("other/y")),
    ("/v1/kv/app/?keys", [], _kv("app/b"), _kv("other/y")),
    ("/v1/kv/app/?keys&separator=/", [], ("DELETE", "/v1/kv/app/a", None), _kv("other/y")),
    ("/v1/session/list", [], ("PUT", "/v1/session/create", {"Node": "n1", "Checks": []}), _kv("app/b")),
    ("/v1/session/node/n1", [], ("PUT", "/v1/session/create", {"Node": "n1", "Checks": []}), _kv("app/b")),
    ("/v1/connect/ca/roots", [], _CA_ROTATE, _kv("app/b")),
    ("/v1/agent/connect/ca/roots", [], _CA_ROTATE, _kv("app/b")),
    ("/v1/connect/ca/configuration", [], _CA_ROTATE, _register("n3", "cache")),
    ("/v1/connect/intentions", [], ("PUT", "/v1/config", _IXN), _kv("app/b")),
    ("/v1/connect/intentions/match?by=destination&name=web", [], ("PUT", "/v1/config", _IXN), _kv("app/b")),
    ("/v1/connect/intentions/exact?source=api&destination=web", [("PUT", "/v1/config", _IXN_DB)],
     ("PUT", "/v1/config", _IXN), _register("n3", "cache")),
    ("/v1/connect/intentions/check?source=api&destination=web", [], ("PUT", "/v1/config", _IXN), _kv("app/b")),
    ("/v1/config/service-intentions", [], ("PUT", "/v1/config", _IXN), _kv("app/b")),
    ("/v1/config/service-intentions/web", [("PUT", "/v1/config", _IXN_DB)], ("PUT", "/v1/config", _IXN),
     _register("n3", "cache")),
]


async def _async(value: bool) -> bool:
    return value


async def _write(http: Http, op: tuple) -> None:
    method, path, body = op
    if isinstance(body, bytes):
        status, out, _ = await http.call(method, path, raw=body)
    else:
        status, out, _ = await http.call(method, path, body)
    assert status == 200, (path, out)


@pytest.mark.parametrize(("path", "setup", "related", "unrelated"), WAKE_CASES, ids=[c[0] for c in WAKE_CASES])
async def test_each_read_wakes_on_what_it_read_only(
    http: Http, agent: RunningAgent, path: str, setup: list, related: tuple, unrelated: tuple
) -> None:
    store_of = agent.agent
    # The agent registers its own node once it starts: let that land before measuring anything.
    await eventually(lambda: _async("serfHealth" in store_of.store.checks.get(store_of.node_name, {})))
    await _write(http, ("PUT", "/v1/catalog/register", {"Node": "n1", "Address": "10.0.0.1",
                                                        "NodeMeta": {"rack": "r1"}}))  # fmt: skip
    for op in _SETUP + setup:
        await _write(http, op)
    if "web-proxy" in str(related):  # a Connect proxy for web: register it as one
        related = ("PUT", "/v1/catalog/register", {"Node": "n1", "Address": "10.0.0.1", "Service": {
            "ID": "web-proxy", "Service": "web-proxy", "Kind": "connect-proxy", "Port": 21000,
            "Proxy": {"DestinationServiceName": "web"}}})  # fmt: skip
    _, _, headers = await http.get(path)
    index = int(headers["X-Consul-Index"])
    sep = "&" if "?" in path else "?"
    hub = agent.agent.hub
    task = asyncio.create_task(http.get(f"{path}{sep}index={index}&wait=5s"))
    await eventually(lambda: _async(hub.waiting() > 0))  # one query, parked on each topic it read
    woken = hub.wakeups
    await _write(http, unrelated)
    await asyncio.sleep(0.1)
    assert hub.wakeups == woken and not task.done(), f"{path} woke on an unrelated write"
    await _write(http, related)
    _, _, headers = await asyncio.wait_for(task, 4)
    assert int(headers["X-Consul-Index"]) > index, f"{path} did not report a new index"
