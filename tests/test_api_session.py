"""/v1/session/* and KV locks over HTTP against the in-process dev agent (single-node log, same FSM)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import aiohttp
import pytest

from registry.testing import RunningAgent, async_dev_agent
from tests.conftest import Http, eventually


@pytest.fixture
async def agent() -> AsyncIterator[RunningAgent]:
    # session_ttl_min is Consul's server knob; 1s lets TTL tests run in a couple of seconds.
    async with async_dev_agent(session_ttl_min="1s") as running:
        yield running


@pytest.fixture
async def http(agent: RunningAgent) -> AsyncIterator[Http]:
    async with aiohttp.ClientSession() as session:
        yield Http(session, agent.url)


async def create(http: Http, **body: object) -> str:
    status, out, _ = await http.put("/v1/session/create", body if body else None)
    assert status == 200, out
    return str(out["ID"])


async def kv(http: Http, key: str) -> dict | None:
    status, out, _ = await http.get(f"/v1/kv/{key}")
    return out[0] if status == 200 else None


async def test_create_info_list_node_renew_destroy(http: Http, agent: RunningAgent) -> None:
    sid = await create(http)
    status, out, headers = await http.get(f"/v1/session/info/{sid}")
    assert status == 200 and len(out) == 1
    s = out[0]
    assert s == {"ID": sid, "Name": "", "Node": "test-agent", "LockDelay": 15_000_000_000, "Behavior": "release",
                 "TTL": "", "NodeChecks": ["serfHealth"], "ServiceChecks": None,
                 "CreateIndex": s["CreateIndex"], "ModifyIndex": s["CreateIndex"]}  # fmt: skip
    assert int(headers["X-Consul-Index"]) == s["CreateIndex"]
    sid2 = await create(http, Name="web-lock", LockDelay="1s", Behavior="delete", TTL="10s", Checks=[])
    status, out, _ = await http.get("/v1/session/list")
    assert status == 200 and {x["ID"] for x in out} == {sid, sid2}
    status, out, _ = await http.get("/v1/session/node/test-agent")
    assert {x["ID"] for x in out} == {sid, sid2}
    assert (await http.get("/v1/session/node/other"))[1] == []
    status, out, _ = await http.put(f"/v1/session/renew/{sid2}")
    assert status == 200 and out[0]["ID"] == sid2 and out[0]["TTL"] == "10s" and out[0]["NodeChecks"] is None
    assert (await http.put(f"/v1/session/destroy/{sid2}"))[:2] == (200, True)
    assert (await http.get(f"/v1/session/info/{sid2}"))[:2] == (200, [])
    # Consul's errors, texts and statuses.
    assert (await http.put("/v1/session/renew/nope"))[:2] == (404, "Session id 'nope' not found")
    assert (await http.put("/v1/session/destroy/"))[:2] == (400, "Missing session")
    assert (await http.get("/v1/session/info/"))[:2] == (400, "Missing session")
    assert (await http.get("/v1/session/node/"))[:2] == (400, "Missing node name")
    assert (await http.put("/v1/session/create", {"Node": "ghost"}))[:2] == (500, "Missing node registration")
    assert (await http.put("/v1/session/create", {"Behavior": "x"}))[:2] == (500, "Invalid Behavior setting 'x'")
    status, text, _ = await http.put("/v1/session/create", {"TTL": "500ms"})
    assert (status, text) == (500, "Invalid Session TTL '500000000', must be between [1s=24h0m0s]")
    status, text, _ = await http.call("PUT", "/v1/session/create", raw=b"{nope")
    assert status == 400 and text.startswith("Request decode failed: ")
    assert (await http.get("/v1/session/create"))[0] == 405


async def test_create_refused_while_a_check_is_critical(http: Http) -> None:
    status, _, _ = await http.put("/v1/agent/check/register", {"Name": "disk", "TTL": "30s"})
    assert status == 200
    status, text, _ = await http.put("/v1/session/create", {"Checks": ["serfHealth", "disk"]})
    assert (status, text) == (500, "Check 'disk' is in critical state")
    assert (await http.put("/v1/session/create", {"Checks": ["nope"]}))[:2] == (500, "Missing check 'nope' registration")


async def test_acquire_release_lock_index_and_contention(http: Http) -> None:
    a, b = await create(http), await create(http)
    assert (await http.call("PUT", f"/v1/kv/lock?acquire={a}", raw=b"one"))[1] is True
    e = await kv(http, "lock")
    assert e is not None and (e["Session"], e["LockIndex"], base64.b64decode(e["Value"])) == (a, 1, b"one")
    # The holder re-acquiring updates the value and keeps LockIndex.
    assert (await http.call("PUT", f"/v1/kv/lock?acquire={a}&flags=7", raw=b"two"))[1] is True
    e = await kv(http, "lock")
    assert e is not None and (e["LockIndex"], e["Flags"], base64.b64decode(e["Value"])) == (1, 7, b"two")
    # Another session cannot take it or release it.
    assert (await http.call("PUT", f"/v1/kv/lock?acquire={b}", raw=b"x"))[1] is False
    assert (await http.call("PUT", f"/v1/kv/lock?release={b}", raw=b"x"))[1] is False
    assert (await http.call("PUT", f"/v1/kv/lock?release={a}", raw=b"three"))[1] is True
    e = await kv(http, "lock")
    assert e is not None and "Session" not in e and e["LockIndex"] == 1 and base64.b64decode(e["Value"]) == b"three"
    assert (await http.call("PUT", f"/v1/kv/lock?acquire={b}", raw=b"b"))[1] is True
    e = await kv(http, "lock")
    assert e is not None and (e["Session"], e["LockIndex"]) == (b, 2)
    # Unknown and missing sessions are errors, as in Consul.
    status, text, _ = await http.call("PUT", "/v1/kv/lock?acquire=nope", raw=b"x")
    assert (status, text) == (500, 'invalid session "nope"')
    status, text, _ = await http.call("PUT", "/v1/kv/lock?acquire=", raw=b"x")
    assert (status, text) == (500, "missing session")
    # ?recurse reads carry Session too.
    status, out, _ = await http.get("/v1/kv/lo?recurse")
    assert out[0]["Session"] == b


async def test_lock_delay_after_invalidation(http: Http) -> None:
    a = await create(http, LockDelay="400ms")
    b = await create(http)
    assert (await http.call("PUT", f"/v1/kv/leader?acquire={a}", raw=b"a"))[1] is True
    assert (await http.put(f"/v1/session/destroy/{a}"))[1] is True
    e = await kv(http, "leader")
    assert e is not None and "Session" not in e and base64.b64decode(e["Value"]) == b"a"
    assert (await http.call("PUT", f"/v1/kv/leader?acquire={b}", raw=b"b"))[1] is False  # inside the delay

    async def acquired() -> bool:
        return (await http.call("PUT", f"/v1/kv/leader?acquire={b}", raw=b"b"))[1] is True

    await eventually(acquired, timeout=5)
    e = await kv(http, "leader")
    assert e is not None and (e["Session"], e["LockIndex"]) == (b, 2)


async def test_behavior_delete(http: Http) -> None:
    a = await create(http, Behavior="delete", LockDelay=0)
    await http.call("PUT", f"/v1/kv/eph/a?acquire={a}", raw=b"x")
    await http.call("PUT", f"/v1/kv/eph/b?acquire={a}", raw=b"y")
    await http.put(f"/v1/session/destroy/{a}")
    assert (await http.get("/v1/kv/eph?recurse"))[0] == 404


async def test_ttl_check_going_critical_invalidates(http: Http) -> None:
    assert (await http.put("/v1/agent/check/register", {"CheckID": "app", "Name": "app", "TTL": "30s"}))[0] == 200
    assert (await http.put("/v1/agent/check/pass/app"))[0] == 200
    sid = await create(http, Checks=["serfHealth", "app"])
    assert (await http.call("PUT", f"/v1/kv/svc/leader?acquire={sid}", raw=b"me"))[1] is True
    assert (await http.put("/v1/agent/check/fail/app"))[0] == 200

    async def invalidated() -> bool:
        return (await http.get(f"/v1/session/info/{sid}"))[1] == []

    await eventually(invalidated, timeout=5)
    e = await kv(http, "svc/leader")
    assert e is not None and "Session" not in e and e["LockIndex"] == 1


async def test_ttl_expiry_and_renew(http: Http, agent: RunningAgent) -> None:
    agent.agent.session_timers.ttl_multiplier = 0.5  # Consul waits TTL x 2; half a second here
    sid = await create(http, TTL="1s")
    await http.call("PUT", f"/v1/kv/ttl-lock?acquire={sid}", raw=b"x")
    loop = asyncio.get_running_loop()
    renewed_until = loop.time() + 1.2
    while loop.time() < renewed_until:  # renewing every 0.2 s keeps it alive past several deadlines
        assert (await http.put(f"/v1/session/renew/{sid}"))[0] == 200
        await asyncio.sleep(0.2)
    assert len((await http.get(f"/v1/session/info/{sid}"))[1]) == 1
    stopped = loop.time()

    async def expired() -> bool:
        return (await http.get(f"/v1/session/info/{sid}"))[1] == []

    await eventually(expired, timeout=5)
    assert loop.time() - stopped >= 0.3  # not before TTL x multiplier (minus the last renew's age)
    e = await kv(http, "ttl-lock")
    assert e is not None and "Session" not in e
    assert agent.agent.session_timers.active() == 0


async def test_blocking_query_on_session_info(http: Http) -> None:
    sid = await create(http)
    _, _, headers = await http.get(f"/v1/session/info/{sid}")
    index = int(headers["X-Consul-Index"])
    blocked = asyncio.ensure_future(http.get(f"/v1/session/info/{sid}?index={index}&wait=10s"))
    await asyncio.sleep(0.1)
    assert not blocked.done()
    await http.put(f"/v1/session/destroy/{sid}")
    status, out, headers = await asyncio.wait_for(blocked, 5)
    assert status == 200 and out == [] and int(headers["X-Consul-Index"]) > index
