"""Fixtures for the sidecar proxy tests: a dev agent, a local app that echoes, proxies started in-process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from connect_proxy.agent import AgentClient
from connect_proxy.config import ProxyConfig, Upstream
from connect_proxy.proxy import Proxy
from registry.testing import RunningAgent, async_dev_agent

TRAILER = b"<eof seen>"


async def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``cond`` (sync or async) until it is truthy, or fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = cond()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


class EchoApp:
    """The local service: echoes every byte as it arrives; after the client's EOF it still sends a
    trailer (so half-close is visible), then closes. Counts connections."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while chunk := await reader.read(256 * 1024):
                writer.write(chunk)
                await writer.drain()
            writer.write(TRAILER)
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def start(self) -> EchoApp:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every async test here runs on both loops: the CLI runs the proxy on uvloop, whose transports
    differ from asyncio's. Tests marked slow run the proxies as processes (on uvloop, as the CLI
    does): the test's own loop only drives clients, once is enough."""
    import uvloop

    if item.get_closest_marker("slow") is not None:
        return {"asyncio": asyncio.new_event_loop}
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture
async def agent(request: pytest.FixtureRequest) -> AsyncIterator[RunningAgent]:
    """A dev agent; ``@pytest.mark.agent_config(**keys)`` passes it Consul config keys."""
    marker = request.node.get_closest_marker("agent_config")
    async with async_dev_agent(**(marker.kwargs if marker else {})) as running:
        running.agent.connect.leaf.root_change_jitter = 0.2  # Consul's 30 s window, shortened for tests
        yield running


@pytest.fixture
async def http(agent: RunningAgent) -> AsyncIterator[Callable[..., Awaitable[tuple[int, Any]]]]:
    async with aiohttp.ClientSession() as session:

        async def call(method: str, path: str, body: Any = None, **params: str) -> tuple[int, Any]:
            async with session.request(method, agent.url + path, json=body, params=params) as resp:
                text = await resp.text()
                try:
                    import json

                    return resp.status, json.loads(text)
                except ValueError:
                    return resp.status, text

        yield call


@pytest.fixture
async def echo() -> AsyncIterator[EchoApp]:
    app = await EchoApp().start()
    yield app
    await app.stop()


@pytest.fixture
async def start_proxy(agent: RunningAgent) -> AsyncIterator[Callable[..., Awaitable[Proxy]]]:
    proxies: list[Proxy] = []

    async def start(service: str, *, local_port: int | None = None, upstreams: dict[str, int] | None = None,
                    public: bool = True, base: str | None = None, **extra: Any) -> Proxy:  # fmt: skip
        cfg = ProxyConfig(
            service=service,
            public=("127.0.0.1", 0) if public else None,
            local_service=("127.0.0.1", local_port) if local_port else None,
            upstreams=tuple(Upstream(d, "127.0.0.1", p) for d, p in (upstreams or {}).items()),
            handshake_timeout=5.0,
            **extra,
        )
        proxy = Proxy(cfg, AgentClient(base or agent.url, wait="10s"), retry_first=0.05, retry_cap=0.2)
        proxies.append(proxy)
        await asyncio.wait_for(proxy.start(), 10)
        return proxy

    yield start
    for p in proxies:
        with contextlib.suppress(Exception):
            await p.stop()


async def register_proxy(http: Callable[..., Awaitable[tuple[int, Any]]], service: str, port: int,
                         proxy_id: str | None = None) -> None:  # fmt: skip
    """Register a connect-proxy for ``service`` listening on ``port`` with a passing TTL check."""
    pid = proxy_id or f"{service}-sidecar-proxy"
    status, text = await http("PUT", "/v1/agent/service/register", {
        "Kind": "connect-proxy", "ID": pid, "Name": f"{service}-sidecar-proxy", "Address": "127.0.0.1",
        "Port": port, "Proxy": {"DestinationServiceName": service, "LocalServicePort": 1},
        "Check": {"TTL": "60s", "Status": "passing"}})  # fmt: skip
    assert status == 200, text


async def roundtrip(port: int, payload: bytes, *, timeout: float = 20.0) -> bytes:
    """Connect to 127.0.0.1:port, send ``payload`` while reading, half-close, read until EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def send() -> None:
        view = memoryview(payload)
        for i in range(0, len(view), 1 << 16):
            writer.write(view[i : i + (1 << 16)])
            await writer.drain()
        writer.write_eof()

    sender = asyncio.create_task(send())
    try:
        async with asyncio.timeout(timeout):
            data = await reader.read(-1)
            await sender
    except (ConnectionError, OSError):
        sender.cancel()
        data = b""
    finally:
        writer.close()
    return data
