"""The ACL rules of the service mesh config entries, per kind, on a live dev agent with ACLs on (default deny):
Consul's ``CanRead``/``CanWrite`` (agent/structs/config_entry*.go). A router, splitter or resolver needs
service:write on its own name and service:read on every service it sends traffic to; proxy-defaults is
readable by anyone and needs mesh:write (which operator:write grants); lists are filtered by service:read."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from registry.acl.resolver import StaticResolver
from registry.testing import async_dev_agent

ROOT = "root-token"
TOKENS = {
    "web-write": 'service "web" { policy = "write" }',
    "web-write-api-read": 'service "web" { policy = "write" } service "api" { policy = "read" }',
    "web-read": 'service "web" { policy = "read" }',
    "mesh-write": 'mesh = "write"',
    "operator-write": 'operator = "write"',
    "nothing": "",
}
ROUTER = {"Kind": "service-router", "Name": "web", "Routes": [{"Match": {"HTTP": {"PathPrefix": "/api"}},
                                                              "Destination": {"Service": "api"}}]}  # fmt: skip


@pytest.fixture
async def call() -> AsyncIterator[Any]:
    resolver = StaticResolver(TOKENS, default_policy="deny", management=(ROOT,))
    async with async_dev_agent(acl_resolver=resolver) as running, aiohttp.ClientSession() as session:

        async def go(method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
            data = None if body is None else json.dumps(body).encode()
            async with session.request(method, running.url + path, data=data,
                                       headers={"X-Consul-Token": token}) as resp:  # fmt: skip
                raw = await resp.read()
                if resp.headers.get("Content-Type", "").startswith("application/json"):
                    return resp.status, json.loads(raw)
                return resp.status, raw.decode()

        for name in ("web", "api"):
            assert await go("PUT", "/v1/config", ROOT, {"Kind": "service-defaults", "Name": name, "Protocol": "http"}) \
                == (200, True)
        yield go


def denied(result: tuple[int, Any], token: str, permission: str, name: str | None) -> bool:
    status, text = result
    on = f' on "{name}"' if name else ""
    return status == 403 and text.startswith(
        f"Permission denied: token with AccessorID '{token}' lacks permission '{permission}'{on}")


async def test_router_needs_read_on_its_destinations(call: Any) -> None:
    assert denied(await call("PUT", "/v1/config", "web-write", ROUTER), "web-write", "service:read", "api")
    assert denied(await call("PUT", "/v1/config", "web-read", ROUTER), "web-read", "service:write", "web")
    assert await call("PUT", "/v1/config", "web-write-api-read", ROUTER) == (200, True)
    # Reading needs service:read on the entry's name; a list shows only what the token may read.
    assert (await call("GET", "/v1/config/service-router/web", "web-read"))[0] == 200
    assert denied(await call("GET", "/v1/config/service-router/web", "nothing"), "nothing", "service:read", "web")
    status, listed = await call("GET", "/v1/config/service-defaults", "web-read")
    assert status == 200 and [e["Name"] for e in listed] == ["web"]
    # Deleting needs only service:write on the name (the entry's destinations do not matter).
    assert denied(await call("DELETE", "/v1/config/service-router/web", "web-read"), "web-read", "service:write", "web")
    assert await call("DELETE", "/v1/config/service-router/web", "web-write") == (200, {})


async def test_proxy_defaults_is_mesh_write_and_readable_by_anyone(call: Any) -> None:
    entry = {"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "http"}}
    assert denied(await call("PUT", "/v1/config", "web-write", entry), "web-write", "mesh:write", None)
    assert await call("PUT", "/v1/config", "mesh-write", entry) == (200, True)
    assert await call("PUT", "/v1/config", "operator-write", entry) == (200, True)
    status, got = await call("GET", "/v1/config/proxy-defaults/global", "nothing")
    assert status == 200 and got["Config"] == {"protocol": "http"}


async def test_discovery_chain_needs_service_read(call: Any) -> None:
    assert denied(await call("GET", "/v1/discovery-chain/web", "nothing"), "nothing", "service:read", "web")
    status, body = await call("GET", "/v1/discovery-chain/web", "web-read")
    assert status == 200 and body["Chain"]["Protocol"] == "http"
