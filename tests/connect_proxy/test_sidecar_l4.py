"""The L4 sidecar as users run it: ``proconsul connect proxy`` processes against a dev agent, with a
counting relay in front of the agent so the tests can prove no call to it is made per connection.

- an intention flipped live closes an open connection it now denies and refuses new ones within 1 s;
- an instance killed mid-run: connections are retried on another instance, the dead one is ejected after
  ``MaxFailures`` consecutive failures and then no longer tried;
- a resolver's failover target is used while the primary subset has no healthy instance;
- the metrics endpoint answers Prometheus text that ``promtool check metrics`` accepts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import TRAILER, EchoApp, roundtrip, wait_for

from registry.testing.agent import free_port

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("agent")]


class CountingRelay:
    """An HTTP relay in front of the agent that counts each request by (method, path)."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.counts: Counter[tuple[str, str]] = Counter()
        self.runner: web.AppRunner | None = None
        self.session: aiohttp.ClientSession | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.counts[(request.method, request.path)] += 1
        assert self.session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with self.session.request(request.method, self.target + request.path_qs, data=body or None,
                                        headers=headers) as resp:  # fmt: skip
            data = await resp.read()
            out = {k: v for k, v in resp.headers.items()
                   if k.lower() not in ("content-length", "transfer-encoding", "content-encoding")}  # fmt: skip
            return web.Response(status=resp.status, body=data, headers=out)

    async def start(self) -> CountingRelay:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None), auto_decompress=True)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()  # ends the blocking queries in flight
        if self.runner is not None:
            await self.runner.cleanup()

    def total(self) -> int:
        return sum(self.counts.values())


@pytest.fixture
async def relay(agent) -> AsyncIterator[CountingRelay]:  # noqa: ANN001
    r = await CountingRelay(agent.url).start()
    yield r
    await r.stop()


class Sidecar:
    def __init__(self, proc: asyncio.subprocess.Process, lines: list[str], metrics_port: int) -> None:
        self.proc, self.lines, self.metrics_port = proc, lines, metrics_port

    async def metrics(self) -> str:
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{self.metrics_port}/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            return await resp.text()

    async def metric(self, name: str, **labels: str) -> float:
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        total = 0.0
        for line in (await self.metrics()).splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            metric, _, rest = key.partition("{")
            if metric == name and all(part in rest for part in want.split(",") if part):
                total += float(value)
        return total


@pytest.fixture
async def sidecars() -> AsyncIterator[Callable[..., Awaitable[Sidecar]]]:
    started: list[Sidecar] = []

    async def spawn(*args: str) -> Sidecar:
        mport = free_port()
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "proconsul"), "connect", "proxy", *args, "-metrics-addr",
            f"127.0.0.1:{mport}", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
        lines: list[str] = []

        async def pump() -> None:
            assert proc.stdout is not None
            async for line in proc.stdout:
                lines.append(line.decode(errors="replace"))

        asyncio.get_running_loop().create_task(pump())
        sc = Sidecar(proc, lines, mport)
        started.append(sc)
        try:
            await wait_for(lambda: any("Connect proxy running" in line for line in lines), 30, "proxy start")
        except AssertionError:
            print("".join(lines))
            raise
        return sc

    yield spawn
    for sc in started:
        if sc.proc.returncode is None:
            sc.proc.kill()
            await sc.proc.wait()


async def _register(http: Any, sid: str, service: str, port: int, meta: dict[str, str] | None = None) -> None:  # noqa: ANN401
    status, text = await http("PUT", "/v1/agent/service/register", {
        "Kind": "connect-proxy", "ID": sid, "Name": f"{service}-sidecar-proxy", "Address": "127.0.0.1",
        "Port": port, "Meta": meta or {}, "Proxy": {"DestinationServiceName": service, "LocalServicePort": 1},
        "Check": {"TTL": "60s", "Status": "passing"}})  # fmt: skip
    assert status == 200, text


async def _db_sidecar(sidecars: Any, relay: CountingRelay, echo_port: int) -> tuple[Sidecar, int]:  # noqa: ANN401
    port = free_port()
    sc = await sidecars("-service", "db", "-service-addr", f"127.0.0.1:{echo_port}", "-listen", f"127.0.0.1:{port}",
                        "-http-addr", relay.url)  # fmt: skip
    return sc, port


async def test_an_intention_flipped_live_closes_open_connections_and_refuses_new_ones_in_under_a_second(
        agent, http, echo, relay, sidecars) -> None:  # noqa: ANN001  # fmt: skip
    db, db_port = await _db_sidecar(sidecars, relay, echo.port)
    await _register(http, "db-proxy-1", "db", db_port)
    up = free_port()
    await sidecars("-service", "web", "-upstream", f"db:{up}", "-http-addr", relay.url)
    await wait_for(lambda: roundtrip(up, b"ping", timeout=5), 15, "the first connection through")

    # Connections are decided in process: many of them, and not one request to the agent for them.
    before = relay.total()
    results = await asyncio.gather(*(roundtrip(up, b"x%d" % i) for i in range(20)))
    assert results == [b"x%d" % i + TRAILER for i in range(20)]
    assert relay.total() == before, relay.counts
    assert relay.counts[("POST", "/v1/agent/connect/authorize")] == 0

    reader, writer = await asyncio.open_connection("127.0.0.1", up)
    writer.write(b"open")
    assert await reader.readexactly(4) == b"open"
    loop = asyncio.get_running_loop()
    status, text = await http("PUT", "/v1/connect/intentions/exact", {"Action": "deny"}, source="web", destination="db")
    assert status == 200, text
    flipped = loop.time()
    async with asyncio.timeout(1.0):  # the open connection is closed by the db sidecar
        with contextlib.suppress(ConnectionError):
            assert await reader.read() == b""
    writer.close()
    assert await roundtrip(up, b"let me in", timeout=1) == b""
    assert loop.time() - flipped < 1.0
    assert await db.metric("proconsul_proxy_intention_closed_total") == 1
    assert await db.metric("proconsul_proxy_authz_total", result="deny") >= 1
    assert await db.metric("proconsul_proxy_authz_total", result="allow") == 22

    status, text = await http("PUT", "/v1/connect/intentions/exact", {"Action": "allow"}, source="web", destination="db")
    assert status == 200, text
    await wait_for(lambda: _through(up, b"back"), 2, "allowed again")


async def _through(port: int, payload: bytes) -> bool:
    return await roundtrip(port, payload, timeout=5) == payload + TRAILER


async def test_a_killed_instance_is_retried_around_then_ejected(agent, http, relay, sidecars) -> None:  # noqa: ANN001
    status, text = await http("PUT", "/v1/config", {
        "Kind": "service-defaults", "Name": "web", "UpstreamConfig": {"Defaults": {
            "PassiveHealthCheck": {"MaxFailures": 2, "MaxEjectionPercent": 50, "BaseEjectionTime": "60s"}}}})  # fmt: skip
    assert status == 200, text
    apps = [await EchoApp().start() for _ in range(2)]
    try:
        (db1, p1), (db2, p2) = [await _db_sidecar(sidecars, relay, a.port) for a in apps]
        await _register(http, "db-proxy-1", "db", p1)
        await _register(http, "db-proxy-2", "db", p2)
        up = free_port()
        web_sc = await sidecars("-service", "web", "-upstream", f"db:{up}", "-http-addr", relay.url)
        for i in range(6):
            assert await _through(up, b"warm%d" % i)
        assert apps[0].connections and apps[1].connections  # round robin used both

        db2.proc.send_signal(signal.SIGKILL)  # still registered and passing: only the dial tells
        await db2.proc.wait()
        for i in range(12):
            assert await _through(up, b"after%d" % i), f"connection {i} failed after the kill"
        assert await web_sc.metric("proconsul_proxy_upstream_ejections_total") == 1
        retries = await web_sc.metric("proconsul_proxy_upstream_connect_retries_total", upstream="db")
        assert retries == 2  # MaxFailures dials to the dead instance, each retried on the live one
        for i in range(6):
            assert await _through(up, b"later%d" % i)
        assert await web_sc.metric("proconsul_proxy_upstream_connect_retries_total", upstream="db") == retries
        assert await web_sc.metric("proconsul_proxy_upstream_connections_total", upstream="db", result="ok") == 24
    finally:
        for a in apps:
            await a.stop()


async def test_the_failover_target_carries_connections_while_the_primary_subset_has_none(
        agent, http, relay, sidecars) -> None:  # noqa: ANN001  # fmt: skip
    status, text = await http("PUT", "/v1/config", {
        "Kind": "service-resolver", "Name": "db", "DefaultSubset": "v1",
        "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"}, "v2": {"Filter": "Service.Meta.version == v2"}},
        "Failover": {"v1": {"ServiceSubset": "v2"}}})  # fmt: skip
    assert status == 200, text
    v1_app, v2_app = await EchoApp().start(), await EchoApp().start()
    try:
        (_, p2) = await _db_sidecar(sidecars, relay, v2_app.port)
        await _register(http, "db-v2", "db", p2, {"version": "v2"})
        up = free_port()
        web_sc = await sidecars("-service", "web", "-upstream", f"db:{up}", "-http-addr", relay.url)
        for i in range(4):
            assert await _through(up, b"fo%d" % i)
        assert v2_app.connections == 4 and v1_app.connections == 0

        (_, p1) = await _db_sidecar(sidecars, relay, v1_app.port)
        await _register(http, "db-v1", "db", p1, {"version": "v1"})

        async def primary_back() -> bool:
            await _through(up, b"probe")
            return v1_app.connections > 0

        await wait_for(primary_back, 5, "the primary subset to take over")
        before = v2_app.connections
        for i in range(4):
            assert await _through(up, b"v1-%d" % i)
        assert v2_app.connections == before
        assert "proconsul_proxy_upstream_connect_seconds_bucket" in await web_sc.metrics()
    finally:
        await v1_app.stop()
        await v2_app.stop()


async def test_metrics_are_valid_prometheus_text(agent, http, echo, relay, sidecars) -> None:  # noqa: ANN001
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) is not installed")
    db, db_port = await _db_sidecar(sidecars, relay, echo.port)
    await _register(http, "db-proxy-1", "db", db_port)
    up = free_port()
    web_sc = await sidecars("-service", "web", "-upstream", f"db:{up}", "-http-addr", relay.url)
    await wait_for(lambda: _through(up, b"m"), 15, "a connection through")
    for sc in (db, web_sc):
        text = await sc.metrics()
        assert await sc.metric("proconsul_proxy_bytes_total", direction="to_upstream") >= 1
        out = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
        # promtool exits 0 for valid text; lint remarks (none expected) would go to stdout.
        assert out.returncode == 0, out.stdout + out.stderr
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{db.metrics_port}/nope") as resp:
        assert resp.status == 404
