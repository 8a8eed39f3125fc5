"""The HTTP data plane in process (both event loops): a web proxy and an api proxy in HTTP mode in front of
an aiohttp app. Framing and RFC 9110's hop-by-hop rules, chunked and large bodies streamed both ways,
HEAD, Expect: 100-continue, keep-alive reuse of the mTLS hop, and the local answers (404, 503, 403)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import register_proxy, wait_for

from connect_proxy.proxy import Proxy
from registry.testing.agent import free_port


class App:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, str], int]] = []
        self.peers: set[Any] = set()
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        if request.path == "/stream":
            resp = web.StreamResponse(headers={"x-kind": "stream", "Connection": "x-private", "x-private": "1"})
            await resp.prepare(request)
            for i in range(50):
                await resp.write(b"%04d" % i * 1000)
            await resp.write_eof()
            self.seen.append((request.method, request.path_qs, dict(request.headers), 0))
            return resp
        digest = hashlib.sha256()
        n = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            n += len(chunk)
        self.seen.append((request.method, request.path_qs, dict(request.headers), n))
        return web.Response(text=f"{n} {digest.hexdigest()}", headers={"x-app": "1"})

    async def start(self) -> App:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self.runner.setup()
        self.port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self


@pytest.fixture
async def pair(agent, http, start_proxy) -> AsyncIterator[tuple[App, str, Proxy, Proxy]]:  # noqa: ANN001
    status, text = await http("PUT", "/v1/config", {"Kind": "service-defaults", "Name": "api", "Protocol": "http"})
    assert status == 200, text
    app = await App().start()
    api = await start_proxy("api", local_port=app.port)
    assert api.public_addr is not None
    await register_proxy(http, "api", api.public_addr[1])
    up = free_port()
    web_proxy = await start_proxy("web", upstreams={"api": up}, public=False)
    await wait_for(lambda: api.local_protocol == "http" and web_proxy.upstreams["api"].chain is not None
                   and web_proxy.upstreams["api"].ready.is_set(), 10, "both sides in HTTP mode")  # fmt: skip
    yield app, f"http://127.0.0.1:{up}", web_proxy, api
    assert app.runner is not None
    await app.runner.cleanup()


async def raw(port_url: str, data: bytes, *, until: bytes = b"", timeout: float = 10.0) -> bytes:
    host, port = port_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    out = b""
    try:
        async with asyncio.timeout(timeout):
            while until not in out or not until:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                out += chunk
    finally:
        writer.close()
    return out


async def test_bodies_stream_both_ways_and_the_mtls_hop_is_reused(pair) -> None:  # noqa: ANN001
    app, base, _, api = pair
    big = bytes(range(256)) * 8192  # 2 MiB: beyond the replay buffer, streamed
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            async with s.post(base + "/upload?x=1", data=big) as resp:
                assert resp.status == 200 and await resp.text() == f"{len(big)} {hashlib.sha256(big).hexdigest()}"

        async def gen() -> AsyncIterator[bytes]:
            for i in range(20):
                yield b"chunk%02d" % i

        async with s.post(base + "/chunked", data=gen()) as resp:  # Transfer-Encoding: chunked
            body = b"".join(b"chunk%02d" % i for i in range(20))
            assert await resp.text() == f"{len(body)} {hashlib.sha256(body).hexdigest()}"
        async with s.get(base + "/stream") as resp:
            data = await resp.read()
            assert resp.status == 200 and data == b"".join(b"%04d" % i * 1000 for i in range(50))
            assert resp.headers["x-kind"] == "stream" and "x-private" not in resp.headers  # listed in Connection
        async with s.head(base + "/h") as resp:
            assert resp.status == 200 and resp.headers["Content-Length"] == str(len(f"0 {hashlib.sha256().hexdigest()}"))
        async with s.get(base + "/after-head") as resp:
            assert resp.status == 200  # the connection after a HEAD is still framed right
    assert len(app.peers) == 1  # one keep-alive connection from the api sidecar to the app
    assert len(api.local_http.conns) <= 1  # and one mTLS connection between the sidecars


async def test_hop_by_hop_headers_are_not_forwarded(pair) -> None:  # noqa: ANN001
    app, base, _, _ = pair
    out = await raw(base, b"GET /hop HTTP/1.1\r\nHost: api\r\nConnection: keep-alive, x-secret\r\nx-secret: 1\r\n"
                          b"Keep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: x\r\nx-kept: yes\r\n"
                          b"X-Forwarded-Client-Cert: forged\r\n\r\n", until=b"\r\n\r\n")  # fmt: skip
    assert out.startswith(b"HTTP/1.1 200"), out
    await wait_for(lambda: any(p == "/hop" for _, p, _, _ in app.seen), 5, "the request at the app")
    headers = {k.lower(): v for k, v in next(h for _, p, h, _ in app.seen if p == "/hop").items()}
    assert headers["x-kept"] == "yes"
    for name in ("x-secret", "keep-alive", "te", "proxy-connection"):
        assert name not in headers, name
    assert headers["x-forwarded-client-cert"].startswith("By=spiffe://") and "forged" not in headers["x-forwarded-client-cert"]


async def test_expect_100_continue_is_answered_by_the_sidecar(pair) -> None:  # noqa: ANN001
    _, base, _, _ = pair
    out = await raw(base, b"PUT /e HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
                    until=b"100 Continue\r\n\r\n")  # fmt: skip
    assert out.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), out


async def test_malformed_requests_get_400_and_oversized_heads_431(pair) -> None:  # noqa: ANN001
    _, base, _, _ = pair
    out = await raw(base, b"GET / HTTP/1.1\r\nHost: api\r\nContent-Length: nope\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400"), out
    out = await raw(base, b"GET / HTTP/1.1\r\nHost: api\r\nx-big: " + b"a" * 70_000 + b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 431"), out


async def test_an_intention_denies_per_request_with_403(pair, http) -> None:  # noqa: ANN001
    app, base, _, api = pair
    status, text = await http("PUT", "/v1/config", {"Kind": "service-intentions", "Name": "api", "Sources": [
        {"Name": "web", "Permissions": [{"Action": "deny", "HTTP": {"PathPrefix": "/secret"}}]},
        {"Name": "*", "Action": "deny"}]})  # fmt: skip
    assert status == 200, text
    await wait_for(lambda: api.l7_policy is not None and len(api.l7_policy.authz.index) == 2, 5, "intentions")
    async with aiohttp.ClientSession() as s:
        async with s.get(base + "/secret/x") as resp:
            assert resp.status == 403 and await resp.text() == "RBAC: access denied"
        async with s.post(base + "/secret/y", data=b"abc") as resp:  # the same connection, still usable
            assert resp.status == 403
        async with s.get(base + "/public") as resp:
            assert resp.status == 200  # no permission matched: the default (allow in -dev)
    assert not any(p.startswith("/secret") for _, p, _, _ in app.seen)


async def test_no_instance_answers_503_no_healthy_upstream(agent, http, start_proxy) -> None:  # noqa: ANN001
    status, text = await http("PUT", "/v1/config", {"Kind": "service-defaults", "Name": "nobody", "Protocol": "http"})
    assert status == 200, text
    up = free_port()
    web_proxy = await start_proxy("web", upstreams={"nobody": up}, public=False)
    await wait_for(lambda: web_proxy.upstreams["nobody"].ready.is_set(), 10, "the chain and its health")
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{up}/") as resp:
        assert resp.status == 503 and await resp.text() == "no healthy upstream"
