"""Blocking queries: wake on change, time out when nothing changes, wake only the watchers of what changed."""

from __future__ import annotations

import asyncio
import time

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
