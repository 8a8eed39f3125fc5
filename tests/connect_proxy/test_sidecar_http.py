"""The sidecar's HTTP mode as users run it: ``proconsul connect proxy`` processes against a dev agent, a
``web`` sidecar in front of ``api`` sidecars, all switched to HTTP by ``service-defaults`` ``Protocol =
"http"``:

- a splitter 90/10 between subsets v1/v2 (by ``Service.Meta.version``): 1,000 keep-alive requests land
  90/10 within a few points, and a v1 instance that refuses connections costs no GET (retried);
- a router sends ``/admin`` to v2, and ``/slow`` with a 300 ms ``RequestTimeout`` answers 504;
- an L7 intention denying ``DELETE`` answers 403 ``RBAC: access denied`` and the app never sees it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import wait_for
from test_sidecar_l4 import Sidecar, sidecars  # noqa: F401 - the fixture

from registry.testing.agent import free_port

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("agent")]


class VersionApp:
    """An HTTP app answering its version; counts requests by method and path."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.seen: Counter[tuple[str, str]] = Counter()
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen[(request.method, request.path)] += 1
        if request.path == "/slow":
            await asyncio.sleep(2)
        body = await request.read()
        return web.Response(text=f"{self.version} {request.method} {request.path} {len(body)}",
                            headers={"x-version": self.version,
                                     "x-client-cert": request.headers.get("x-forwarded-client-cert", "")})  # fmt: skip

    async def start(self) -> VersionApp:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self.runner.setup()
        self.port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def _put(http: Any, body: dict[str, Any], path: str = "/v1/config", **params: str) -> None:  # noqa: ANN401
    status, text = await http("PUT", path, body, **params)
    assert status == 200, text


async def _register(http: Any, sid: str, port: int, version: str) -> None:  # noqa: ANN401
    await _put(http, {"Kind": "connect-proxy", "ID": sid, "Name": "api-sidecar-proxy", "Address": "127.0.0.1",
                      "Port": port, "Meta": {"version": version},
                      "Proxy": {"DestinationServiceName": "api", "LocalServicePort": 1},
                      "Check": {"TTL": "60s", "Status": "passing"}}, "/v1/agent/service/register")  # fmt: skip


async def test_http_mode_end_to_end(agent, http, sidecars) -> None:  # noqa: ANN001, F811
    await _put(http, {"Kind": "service-defaults", "Name": "api", "Protocol": "http"})
    await _put(http, {"Kind": "service-resolver", "Name": "api", "DefaultSubset": "v1", "Subsets": {
        "v1": {"Filter": "Service.Meta.version == v1"}, "v2": {"Filter": "Service.Meta.version == v2"}}})  # fmt: skip
    await _put(http, {"Kind": "service-splitter", "Name": "api", "Splits": [
        {"Weight": 90, "ServiceSubset": "v1"},
        {"Weight": 10, "ServiceSubset": "v2", "ResponseHeaders": {"Set": {"x-leg": "canary"}}}]})  # fmt: skip
    await _put(http, {"Kind": "service-router", "Name": "api", "Routes": [
        {"Match": {"HTTP": {"PathPrefix": "/admin"}}, "Destination": {"ServiceSubset": "v2"}},
        {"Match": {"HTTP": {"PathExact": "/slow"}}, "Destination": {"RequestTimeout": "300ms"}}]})  # fmt: skip
    await _put(http, {"Kind": "service-intentions", "Name": "api", "Sources": [{"Name": "web", "Permissions": [
        {"Action": "deny", "HTTP": {"Methods": ["DELETE"]}},
        {"Action": "allow", "HTTP": {"PathPrefix": "/"}}]}]})  # fmt: skip

    apps = {v: await VersionApp(v).start() for v in ("v1", "v2")}
    try:
        api_sidecars: list[Sidecar] = []
        for v, app in apps.items():
            port = free_port()
            api_sidecars.append(await sidecars("-service", "api", "-service-addr", f"127.0.0.1:{app.port}",
                                               "-listen", f"127.0.0.1:{port}", "-http-addr", agent.url))  # fmt: skip
            await _register(http, f"api-{v}", port, v)
        await _register(http, "api-v1-dead", free_port(), "v1")  # registered and passing, but refuses connections
        for sc in api_sidecars:
            await wait_for(lambda sc=sc: any("public listener protocol" in ln and "http" in ln for ln in sc.lines),
                           15, "the api sidecar in HTTP mode")  # fmt: skip
        up = free_port()
        web_sc = await sidecars("-service", "web", "-upstream", f"api:{up}", "-http-addr", agent.url)
        base = f"http://127.0.0.1:{up}"

        async def answers() -> bool:
            try:
                async with aiohttp.ClientSession() as s, s.get(base + "/hello") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await wait_for(answers, 15, "a request through")

        versions: Counter[str] = Counter()
        failures: list[Any] = []
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8)) as s:

            async def get(i: int) -> None:
                async with s.get(f"{base}/items/{i}") as resp:
                    text = await resp.text()
                    if resp.status != 200:
                        failures.append((resp.status, text))
                        return
                    versions[resp.headers["x-version"]] += 1
                    if resp.headers["x-version"] == "v2":
                        assert resp.headers.get("x-leg") == "canary"
                    assert resp.headers["x-client-cert"].endswith("/svc/web")

            await asyncio.gather(*(get(i) for i in range(1000)))
            assert failures == []  # the instance refusing connections was retried around, then ejected
            assert abs(versions["v1"] / 10 - 90) <= 3 and abs(versions["v2"] / 10 - 10) <= 3, versions
            assert await web_sc.metric("proconsul_proxy_upstream_ejections_total") >= 1

            for _ in range(10):
                async with s.get(base + "/admin/panel") as resp:
                    assert resp.status == 200 and resp.headers["x-version"] == "v2"

            async with s.delete(base + "/items/1") as resp:
                assert resp.status == 403 and await resp.text() == "RBAC: access denied"
            async with s.post(base + "/items", data=b"x" * 1000) as resp:
                assert resp.status == 200 and (await resp.text()).endswith("POST /items 1000")
            assert not any(m == "DELETE" for app in apps.values() for m, _ in app.seen)

            loop = asyncio.get_running_loop()
            t0 = loop.time()
            async with s.get(base + "/slow") as resp:
                assert resp.status == 504 and await resp.text() == "upstream request timeout"
            assert loop.time() - t0 < 1.5

        assert await web_sc.metric("proconsul_proxy_http_requests_total", code_class="2xx") >= 1011
        denied = sum([await sc.metric("proconsul_proxy_authz_total", result="deny") for sc in api_sidecars])
        assert denied == 1
    finally:
        for app in apps.values():
            await app.stop()
