"""A blocking query re-checks its token when it wakes, with the real resolver on a dev agent: deleting the
token it presented, or narrowing that token's policy, while it waits answers it 403 at once -- never the
data the token may no longer read, and never only at the end of its wait."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from registry.testing import async_dev_agent
from tests.conftest import Http

MGMT = "1f0c5d2e-9b8a-4c7d-8e6f-5a4b3c2d1e01"


@pytest.fixture
async def h() -> AsyncIterator[Http]:
    acl = {"enabled": True, "default_policy": "deny", "tokens": {"initial_management": MGMT}}
    async with async_dev_agent(acl=acl) as running, aiohttp.ClientSession() as session:
        yield Http(session, running.url)


def tok(secret: str) -> dict[str, Any]:
    return {"headers": {"X-Consul-Token": secret}}


async def _token(h: Http, name: str, rules: str) -> tuple[dict[str, Any], dict[str, Any]]:
    status, pol, _ = await h.put("/v1/acl/policy", {"Name": name, "Rules": rules}, **tok(MGMT))
    assert status == 200, pol
    status, token, _ = await h.put("/v1/acl/token", {"Policies": [{"ID": pol["ID"]}]}, **tok(MGMT))
    assert status == 200, token
    return pol, token


async def _wait_then(h: Http, secret: str, change: Any) -> tuple[int, Any, float]:
    status, _, headers = await h.get("/v1/kv/watched", **tok(secret))
    assert status == 200
    waiting = asyncio.create_task(h.get(f"/v1/kv/watched?index={headers['X-Consul-Index']}&wait=30s", **tok(secret)))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    started = time.monotonic()
    await change()
    status, body, _ = await asyncio.wait_for(waiting, 5)
    return status, body, time.monotonic() - started


async def test_a_waiting_query_whose_token_is_deleted_answers_403(h: Http) -> None:
    assert (await h.put("/v1/kv/watched", raw=b"v", **tok(MGMT)))[0] == 200
    _, token = await _token(h, "kv", 'key_prefix "" { policy = "read" }')

    async def delete() -> None:
        assert (await h.delete(f"/v1/acl/token/{token['AccessorID']}", **tok(MGMT)))[0] == 200

    status, body, elapsed = await _wait_then(h, token["SecretID"], delete)
    assert (status, body) == (403, "ACL not found")
    assert elapsed < 1.0


async def test_a_waiting_query_whose_policy_is_narrowed_answers_403(h: Http) -> None:
    assert (await h.put("/v1/kv/watched", raw=b"v", **tok(MGMT)))[0] == 200
    pol, token = await _token(h, "kv", 'key_prefix "" { policy = "read" }')

    async def narrow() -> None:
        status, _, _ = await h.put(f"/v1/acl/policy/{pol['ID']}",
                                   {"Name": "kv", "Rules": 'key_prefix "other/" { policy = "read" }'}, **tok(MGMT))  # fmt: skip
        assert status == 200

    status, body, elapsed = await _wait_then(h, token["SecretID"], narrow)
    assert status == 403
    assert body == (f"Permission denied: token with AccessorID '{token['AccessorID']}' lacks permission "
                    "'key:read' on \"watched\"")  # fmt: skip
    assert elapsed < 1.0
