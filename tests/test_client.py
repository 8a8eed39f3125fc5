"""The shared client for the agent's HTTP API (registry.client): address resolution, what every call carries
(token, dc, stale, blocking-query parameters), errors with status and Consul's text, and Consul's lock and
semaphore recipes run in-process against a dev agent."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from registry.client.http import AgentHTTP, AgentUnavailable, HTTPConfig, StatusError, agent_address, kv_path
from registry.client.lock import LockAPI, LockOptions, Mutex, Semaphore
from registry.testing import RunningAgent, async_dev_agent, free_port


class _Log:
    """A logger that drops everything (the recipes log at debug)."""

    def debug(self, *a: Any, **kw: Any) -> None: ...

    def warning(self, *a: Any, **kw: Any) -> None: ...


@pytest.mark.parametrize(("flag", "env", "expected"), [
    (None, {}, "http://127.0.0.1:8500"),
    (None, {"CONSUL_HTTP_ADDR": "10.0.0.1:8500"}, "http://10.0.0.1:8500"),
    (None, {"CONSUL_HTTP_ADDR": "a:1", "PROCONSUL_HTTP_ADDR": "b:2"}, "http://b:2"),
    ("c:3", {"CONSUL_HTTP_ADDR": "a:1", "PROCONSUL_HTTP_ADDR": "b:2"}, "http://c:3"),
    ("c:3", {"CONSUL_HTTP_SSL": "true"}, "https://c:3"),
    ("c:3", {"CONSUL_HTTP_SSL": "1"}, "https://c:3"),
    ("http://c:3/", {"CONSUL_HTTP_SSL": "true"}, "http://c:3"),
])  # fmt: skip
def test_agent_address(flag: str | None, env: dict[str, str], expected: str) -> None:
    assert agent_address(flag, env) == expected


def test_config_from_flags_takes_the_token_from_the_environment() -> None:
    env = {"CONSUL_HTTP_TOKEN": "env-token"}
    assert HTTPConfig.from_flags(None, None, env=env).token == "env-token"
    assert HTTPConfig.from_flags(None, "flag-token", env=env).token == "flag-token"
    assert HTTPConfig.from_flags(None, None, env={}).token == ""
    assert HTTPConfig().ssl_context() is None  # the default: the system's CAs, verified


def test_url_carries_dc_stale_and_blocking_parameters() -> None:
    http = AgentHTTP(HTTPConfig(address="http://h:1", datacenter="dc2", stale=True))
    assert str(http.url("/v1/kv/a%2Fb", {"recurse": "", "skip": None})) == "http://h:1/v1/kv/a%2Fb?recurse=&dc=dc2&stale="
    assert str(http.url("/v1/x", method="PUT")) == "http://h:1/v1/x?dc=dc2"  # ?stale is for reads only
    url = http.url("/v1/x", {"dc": "dc9"}, index=42, wait="15000ms", consistent=True)
    assert url.query_string == "dc=dc9&index=42&wait=15000ms&consistent=&stale="
    assert "index" not in AgentHTTP(HTTPConfig()).url("/v1/x", wait="1s").query
    assert kv_path("a b/c%") == "/v1/kv/a%20b/c%25"


@pytest.fixture
async def echo() -> AsyncIterator[str]:
    """An HTTP server that answers with what it was sent; ``/status/<n>`` answers ``n`` with a text."""

    async def handle(request: web.Request) -> web.Response:
        if request.path.startswith("/status/"):
            return web.Response(status=int(request.path.rsplit("/", 1)[1]), text="no such thing\n")
        doc = {"method": request.method, "path": request.raw_path, "token": request.headers.get("X-Consul-Token"),
               "body": (await request.read()).decode()}  # fmt: skip
        return web.json_response(doc, headers={"X-Consul-Index": "17"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_requests_carry_the_token_and_answers_the_index(echo: str) -> None:
    async with AgentHTTP(HTTPConfig(address=echo, token="secret")) as http:
        resp = await http.request("PUT", "/v1/kv/k", {"flags": 3}, b"v")
        assert (resp.status, resp.index) == (200, 17)
        status, body, headers = resp  # unpacks as (status, body, headers)
        assert json.loads(body) == {"method": "PUT", "path": "/v1/kv/k?flags=3", "token": "secret", "body": "v"}
        assert headers["X-Consul-Index"] == "17"
        assert (await http.json("GET", "/v1/x", body=None))["token"] == "secret"
    async with AgentHTTP(HTTPConfig(address=echo)) as http:
        assert (await http.json("GET", "/v1/x"))["token"] is None  # no token, no header


async def test_errors_carry_status_and_consuls_text(echo: str) -> None:
    async with AgentHTTP(HTTPConfig(address=echo)) as http:
        resp = await http.request("GET", "/status/404")
        assert (resp.status, resp.text, resp.index) == (404, "no such thing", 0)
        with pytest.raises(StatusError) as err:
            await http.checked("GET", "/status/400")
        assert (str(err.value), err.value.status, err.value.text) == (
            "Unexpected response code: 400 (no such thing)", 400, "no such thing")
        assert not err.value.retryable
        with pytest.raises(StatusError) as err:
            await http.json("GET", "/status/503")
        assert err.value.retryable
    async with AgentHTTP(HTTPConfig(address=f"http://127.0.0.1:{free_port()}")) as http:
        with pytest.raises(AgentUnavailable) as gone:
            await http.request("GET", "/v1/agent/self")
        assert gone.value.status == 0 and gone.value.retryable and isinstance(gone.value.cause, OSError)


@pytest.fixture
async def agent() -> AsyncIterator[RunningAgent]:
    async with async_dev_agent() as running:
        yield running


async def test_blocking_query_waits_for_the_index_to_move(agent: RunningAgent) -> None:
    async with AgentHTTP(HTTPConfig(address=agent.url)) as http:
        await http.checked("PUT", kv_path("watched"), body=b"1")
        first = await http.checked("GET", kv_path("watched"))
        blocked = asyncio.create_task(http.checked("GET", kv_path("watched"), index=first.index, wait="10s"))
        await asyncio.sleep(0.2)
        assert not blocked.done()
        await http.checked("PUT", kv_path("watched"), body=b"2")
        second = await asyncio.wait_for(blocked, 5)
        assert second.index > first.index and second.json()[0]["Value"] == "Mg=="


async def test_mutex_recipe_excludes_a_second_holder_and_cleans_up(agent: RunningAgent) -> None:
    async with AgentHTTP(HTTPConfig(address=agent.url)) as http:
        api, log = LockAPI(http), _Log()
        first = Mutex(api, LockOptions(prefix="svc/leader", session_name="first"), log)
        await first.create_session()
        assert await first.acquire()
        pair, _ = await api.kv_get("svc/leader/.lock")
        assert pair is not None and pair["Session"] == first.session
        second = Mutex(api, LockOptions(prefix="svc/leader", session_name="second", timeout=0.3), log)
        await second.create_session()
        assert not await second.acquire()  # held by the first: gives up after its timeout
        assert await second.release_and_cleanup() == []
        assert await first.release_and_cleanup() == []
        assert (await api.kv_get("svc/leader/.lock"))[0] is None  # released and deleted
        assert await http.json("GET", "/v1/session/list") == []


async def test_semaphore_recipe_admits_limit_holders(agent: RunningAgent) -> None:
    async with AgentHTTP(HTTPConfig(address=agent.url)) as http:
        api, log = LockAPI(http), _Log()
        holders = [Semaphore(api, LockOptions(prefix="jobs", session_name=f"h{i}", limit=2, timeout=0.3), log)
                   for i in range(3)]  # fmt: skip
        for h in holders:
            await h.create_session()
        assert [await h.acquire() for h in holders] == [True, True, False]
        pair, _ = await api.kv_get("jobs/.lock")
        assert pair is not None
        doc = json.loads(base64.b64decode(pair["Value"]))
        assert doc["Limit"] == 2 and sorted(doc["Holders"]) == sorted(h.session for h in holders[:2])
        for h in holders:
            assert await h.release_and_cleanup() == []
        pairs, _ = await api.kv_list("jobs")
        assert pairs == []  # contender keys and .lock all gone
        assert await http.json("GET", "/v1/session/list") == []
