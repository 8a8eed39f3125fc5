"""The HTTP data plane's callback path (bodiless requests relayed from connection callbacks, without a
task per request) behaves as the task path does, in process on both event loops: a raw app that can
hang, close a reused connection before answering, or break off mid-head; through a web proxy and an api
proxy in HTTP mode, on one keep-alive client connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest import register_proxy, wait_for

from connect_proxy.http.engine import ServerConn
from connect_proxy.proxy import Proxy
from registry.testing.agent import free_port

BIG = 100 * 1024  # beyond what the callback path relays whole: streamed from its head on


class RawApp:
    """An HTTP/1.1 app on a socket: /ok answers, /big answers 100 KiB, /hang never answers, /slow answers
    after 0.6 s, /half sends part of a head and closes, /drop-next answers and closes the connection at
    its next request."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.methods: list[str] = []
        self.connections = 0
        self.port = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> RawApp:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        drop_next = False
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, path = (part.decode() for part in head.split(b" ", 2)[:2])
                if drop_next:
                    writer.close()
                    return
                self.paths.append(path)
                self.methods.append(method)
                if path == "/hang":
                    await asyncio.sleep(30)
                elif path == "/slow":
                    await asyncio.sleep(0.6)
                elif path == "/half":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Le")
                    await writer.drain()
                    writer.close()
                    return
                body = b"x" * BIG if path == "/big" else b"ok"
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-App: 1\r\n\r\n%b" % (len(body), body))
                await writer.drain()
                drop_next = path == "/drop-next"
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


class Client:
    """One keep-alive connection; responses read by their Content-Length."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        async with asyncio.timeout(10):
            head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return int(head[0].split(" ")[1]), headers, body

    async def get(self, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        self.writer.write(f"{method} {path} HTTP/1.1\r\nHost: api\r\n\r\n".encode())
        return await self.response()


@pytest.fixture
async def path(agent, http, start_proxy) -> AsyncIterator[tuple[RawApp, Client, Proxy, Any]]:  # noqa: ANN001
    status, text = await http("PUT", "/v1/config", {"Kind": "service-defaults", "Name": "api", "Protocol": "http"})
    assert status == 200, text
    app = await RawApp().start()
    api = await start_proxy("api", local_port=app.port)
    assert api.public_addr is not None
    await register_proxy(http, "api", api.public_addr[1])
    up = free_port()
    web = await start_proxy("web", upstreams={"api": up}, public=False)
    await wait_for(lambda: api.local_protocol == "http" and web.upstreams["api"].chain is not None
                   and web.upstreams["api"].ready.is_set(), 10, "both sides in HTTP mode")  # fmt: skip
    reader, writer = await asyncio.open_connection("127.0.0.1", up)
    yield app, Client(reader, writer), api, http
    writer.close()
    assert app.server is not None
    app.server.close()


async def test_answers_resets_streams_and_pipelining_on_the_callback_path(path) -> None:  # noqa: ANN001
    app, client, api, _ = path
    for _ in range(40):
        assert (await client.get("/ok"))[::2] == (200, b"ok")
    assert app.connections <= 2  # one keep-alive connection to the app, reused (the first may be raced)
    # A reused app connection closed before any byte of the answer: tried again on a new one.
    assert (await client.get("/drop-next"))[::2] == (200, b"ok")
    assert (await client.get("/ok"))[::2] == (200, b"ok")
    status, headers, body = await client.get("/big")
    assert (status, len(body), headers["x-app"]) == (200, BIG, "1")
    # Broken off mid-head: Envoy's reset answer, and the client connection stays usable.
    status, _, body = await client.get("/half")
    assert (status, body) == (503, b"upstream connect error or disconnect/reset before headers. "
                                   b"reset reason: connection termination")  # fmt: skip
    # Three requests in one write: three answers, in order.
    client.writer.write(b"GET /ok HTTP/1.1\r\nHost: api\r\n\r\nGET /big HTTP/1.1\r\nHost: api\r\n\r\n"
                        b"GET /ok HTTP/1.1\r\nHost: api\r\n\r\n")  # fmt: skip
    assert [(s, len(b)) for s, _, b in [await client.response() for _ in range(3)]] == [(200, 2), (200, BIG), (200, 2)]
    assert app.paths.count("/half") == 1 and app.paths.count("/drop-next") == 1


async def test_timeouts_and_l7_denials_on_the_callback_path(path) -> None:  # noqa: ANN001
    app, client, api, http = path
    assert (await client.get("/ok"))[0] == 200
    status, text = await http("PUT", "/v1/config", {"Kind": "service-defaults", "Name": "api", "Protocol": "http",
                                                    "LocalRequestTimeoutMs": 300})  # fmt: skip
    assert status == 200, text
    await wait_for(lambda: (api.service_defaults or {}).get("LocalRequestTimeoutMs") == 300, 5, "service-defaults")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert (await client.get("/hang"))[::2] == (504, b"upstream request timeout")
    assert 0.25 < loop.time() - t0 < 5
    assert (await client.get("/ok"))[::2] == (200, b"ok")  # the client connection is still usable
    status, text = await http("PUT", "/v1/config", {"Kind": "service-intentions", "Name": "api", "Sources": [
        {"Name": "web", "Permissions": [{"Action": "deny", "HTTP": {"Methods": ["DELETE"]}}]}]})  # fmt: skip
    assert status == 200, text
    await wait_for(lambda: api.l7_policy is not None and len(api.l7_policy.authz.index) == 1, 5, "intentions")
    assert (await client.get("/ok", "DELETE"))[::2] == (403, b"RBAC: access denied")
    assert (await client.get("/ok"))[::2] == (200, b"ok")
    assert "DELETE" not in app.methods  # denied before the app


async def test_a_deadline_outlives_the_timer_of_an_earlier_shorter_one(path) -> None:  # noqa: ANN001
    """One timer per connection keeps the callback path's deadlines: a request that began under a long
    timeout is not cut when the timer set for an earlier, shorter one fires, and a short one still is."""
    _, client, api, http = path

    async def local_timeout(ms: int) -> None:
        status, text = await http("PUT", "/v1/config", {"Kind": "service-defaults", "Name": "api",
                                                        "Protocol": "http", "LocalRequestTimeoutMs": ms})  # fmt: skip
        assert status == 200, text
        await wait_for(lambda: (api.service_defaults or {}).get("LocalRequestTimeoutMs") == ms, 5, "service-defaults")

    await local_timeout(300)
    assert (await client.get("/ok"))[::2] == (200, b"ok")  # leaves a timer due 0.3 s from now
    await local_timeout(3000)
    assert (await client.get("/slow"))[::2] == (200, b"ok")  # 0.6 s: past that timer, within its own 3 s
    await local_timeout(300)
    assert (await client.get("/slow"))[::2] == (504, b"upstream request timeout")
    assert (await client.get("/ok"))[::2] == (200, b"ok")


async def test_one_timer_per_connection_fires_each_deadline_at_its_time() -> None:
    """``ServerConn.arm``: a timer due earlier than a new deadline is kept and, when it fires, re-armed
    for the request then in flight; a deadline earlier than the timer's replaces it."""
    loop = asyncio.get_running_loop()
    fired: list[str] = []

    class Deadline:
        def __init__(self, name: str, delay: float) -> None:
            self.name, self.deadline = name, loop.time() + delay

        def timed_out(self) -> None:
            fired.append(self.name)

    async def handler(_conn: Any, _ex: Any) -> bool:
        return False

    conn = ServerConn(handler)
    a = Deadline("a", 0.1)
    conn.arm(a)  # type: ignore[arg-type]
    conn.disarm(a)  # type: ignore[arg-type]  # answered in time: the timer stays
    b = Deadline("b", 0.4)
    conn.arm(b)  # type: ignore[arg-type]
    await asyncio.sleep(0.25)
    assert fired == []  # the 0.1 s timer fired, found b not due and re-armed
    await asyncio.sleep(0.3)
    assert fired == ["b"]
    c = Deadline("c", 5.0)
    conn.arm(c)  # type: ignore[arg-type]
    conn.disarm(c)  # type: ignore[arg-type]
    d = Deadline("d", 0.05)
    conn.arm(d)  # type: ignore[arg-type]  # earlier than the timer kept for c: replaces it
    await asyncio.sleep(0.2)
    assert fired == ["b", "d"]
    conn.disarm(d)  # type: ignore[arg-type]
    conn.connection_lost(None)  # nothing in flight: the timer goes with the connection
    assert conn._timer is None
