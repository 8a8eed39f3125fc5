"""Health checks the agent runs, against real targets: HTTP, TCP, TTL, script; thresholds; reaping."""

from __future__ import annotations

import asyncio
import sys
import time

from aiohttp import web

from registry.agent.checks import StatusHandler
from registry.testing import RunningAgent, async_dev_agent
from tests.conftest import Http, eventually


class Target:
    """A real HTTP server whose answer the test controls."""

    def __init__(self) -> None:
        self.status = 200
        self.body = "ok"
        self.hits = 0
        self.headers: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        self.headers.append(dict(request.headers))
        if self.status in (301, 302):
            return web.Response(status=self.status, headers={"Location": "/elsewhere"})
        return web.Response(status=self.status, text=self.body)

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}/health"


async def status_of(http: Http, cid: str) -> str:
    _, checks, _ = await http.get("/v1/agent/checks")
    return checks[cid]["Status"] if cid in checks else "missing"


async def catalog_status(http: Http, service: str) -> list[str]:
    _, checks, _ = await http.get(f"/v1/health/checks/{service}")
    return [c["Status"] for c in checks]


async def test_http_check_transitions(http: Http) -> None:
    target = Target()
    url = await target.start()
    try:
        await http.put("/v1/agent/service/register", {
            "Name": "web", "Port": 80,
            "Check": {"HTTP": url, "Interval": "1s", "Timeout": "1s", "Header": {"X-Probe": ["yes"]}},
        })  # fmt: skip
        await eventually(lambda: _is(http, "web", ["passing"]))
        assert target.headers[0]["X-Probe"] == "yes" and target.headers[0]["User-Agent"] == "Consul Health Check"
        _, checks, _ = await http.get("/v1/agent/checks")
        assert checks["service:web"]["Output"].startswith(f"HTTP GET {url}: 200 OK Output: ok")
        target.status = 500
        await eventually(lambda: _is(http, "web", ["critical"]))
        _, entries, _ = await http.get("/v1/health/service/web?passing")
        assert entries == []
        target.status = 429
        await eventually(lambda: _is(http, "web", ["warning"]))
        target.status = 204
        await eventually(lambda: _is(http, "web", ["passing"]))
        target.status = 302  # redirects are not followed (CVE-2022-29153): a 3xx is not healthy
        await eventually(lambda: _is(http, "web", ["critical"]))
    finally:
        await target.runner.cleanup()


async def _is(http: Http, service: str, statuses: list[str]) -> bool:
    return await catalog_status(http, service) == statuses


async def test_http_check_output_capped(http: Http) -> None:
    target = Target()
    target.body = "x" * 10000
    url = await target.start()
    try:
        await http.put("/v1/agent/check/register", {"Name": "big", "HTTP": url, "Interval": "1s"})
        await eventually(lambda: _agent_status(http, "big", "passing"))
        _, checks, _ = await http.get("/v1/agent/checks")
        assert len(checks["big"]["Output"]) < 4096 + 200
    finally:
        await target.runner.cleanup()


async def _agent_status(http: Http, cid: str, want: str) -> bool:
    return await status_of(http, cid) == want


async def test_tcp_check(http: Http) -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    await http.put("/v1/agent/check/register", {"Name": "tcp", "TCP": f"127.0.0.1:{port}", "Interval": "1s"})
    await eventually(lambda: _agent_status(http, "tcp", "passing"))
    _, checks, _ = await http.get("/v1/agent/checks")
    assert checks["tcp"]["Output"] == f"TCP connect 127.0.0.1:{port}: Success"
    server.close()
    await server.wait_closed()
    await eventually(lambda: _agent_status(http, "tcp", "critical"))


async def test_ttl_expiry_and_refresh(http: Http) -> None:
    await http.put("/v1/agent/service/register", {"Name": "job", "Check": {"TTL": "1s"}})
    assert await catalog_status(http, "job") == ["critical"]
    await http.put("/v1/agent/check/pass/service:job")
    assert await catalog_status(http, "job") == ["passing"]
    started = time.monotonic()
    await eventually(lambda: _is(http, "job", ["critical"]), timeout=5)
    assert time.monotonic() - started >= 0.8
    _, checks, _ = await http.get("/v1/agent/checks")
    assert checks["service:job"]["Output"] == "TTL expired"
    await http.put("/v1/agent/check/pass/service:job")
    assert await catalog_status(http, "job") == ["passing"]


async def test_a_status_change_is_written_once(http: Http, agent: RunningAgent) -> None:
    """A TTL pass is synced at once; the sync loop, woken by the same change, must not write it again."""
    await http.put("/v1/agent/service/register", {"Name": "once", "Check": {"TTL": "60s"}})
    assert await catalog_status(http, "once") == ["critical"]
    await asyncio.sleep(0.5)  # the registration's own syncs are done
    index = agent.agent.store.index
    await http.put("/v1/agent/check/pass/service:once")
    assert await catalog_status(http, "once") == ["passing"]
    await asyncio.sleep(1.0)  # long enough for the sync loop to have run
    assert agent.agent.store.index == index + 1
    # The same status and output again, as a service's TTL heartbeat sends it: nothing to write (Consul's
    # UpdateCheck returns early for an idempotent update).
    for _ in range(3):
        await http.put("/v1/agent/check/pass/service:once")
    await asyncio.sleep(1.0)
    assert agent.agent.store.index == index + 1


async def test_script_check_and_thresholds(tmp_path) -> None:  # noqa: ANN001
    async with async_dev_agent(enable_script_checks=True) as running, _client(running) as http:
        flag = str(tmp_path / "healthy")  # private to this test run: parallel runs must not share it
        script = f"import os,sys; sys.exit(0 if os.path.exists({flag!r}) else 2)"
        await http.put("/v1/agent/check/register", {
            "Name": "script", "Args": [sys.executable, "-c", script], "Interval": "1s",
            "SuccessBeforePassing": 2, "FailuresBeforeCritical": 2, "Status": "critical",
        })  # fmt: skip
        open(flag, "w").close()
        try:
            # One success is not enough: the second one flips it.
            await eventually(lambda: _agent_status(http, "script", "passing"), timeout=8)
            chk = running.agent.checks["script"]
            # The monitor reports through the thresholds (StatusHandler), which counted both successes.
            assert isinstance(chk.monitor.report, StatusHandler) and chk.monitor.report.successes >= 2
        finally:
            import os

            os.unlink(flag)
        await eventually(lambda: _agent_status(http, "script", "critical"), timeout=8)
        assert running.agent.checks["script"].monitor.report.failures >= 2


async def test_warning_exit_code() -> None:
    async with async_dev_agent(enable_script_checks=True) as running, _client(running) as http:
        await http.put("/v1/agent/check/register", {"Name": "warn", "Args": [sys.executable, "-c", "print('meh'); exit(1)"],
                                                    "Interval": "1s"})  # fmt: skip
        await eventually(lambda: _agent_status(http, "warn", "warning"), timeout=8)
        _, checks, _ = await http.get("/v1/agent/checks")
        assert checks["warn"]["Output"].strip() == "meh"


async def test_deregister_critical_service_after(http: Http, agent: RunningAgent) -> None:
    await http.put("/v1/agent/service/register", {"Name": "flaky", "Check": {"TTL": "30s",
                                                  "DeregisterCriticalServiceAfter": "1m"}})  # fmt: skip
    chk = agent.agent.checks["service:flaky"]
    assert chk.spec.deregister_after == 60
    await agent.agent.reap_critical()
    assert "flaky" in agent.agent.services
    chk.critical_since = time.monotonic() - 61
    await agent.agent.reap_critical()
    assert "flaky" not in agent.agent.services
    _, catalog, _ = await http.get("/v1/catalog/service/flaky")
    assert catalog == []


async def test_anti_entropy_repairs_catalog(http: Http, agent: RunningAgent) -> None:
    await http.put("/v1/agent/service/register", {"Name": "web", "Port": 80})
    # Someone removes it behind the agent's back; a full sync puts it back.
    await http.put("/v1/catalog/deregister", {"Node": "test-agent", "ServiceID": "web"})
    _, catalog, _ = await http.get("/v1/catalog/service/web")
    assert catalog == []
    await http.put("/v1/catalog/register", {"Node": "test-agent", "Address": "127.0.0.1",
                                            "Service": {"ID": "stray", "Service": "stray"}})  # fmt: skip
    await agent.agent.sync_full()
    _, catalog, _ = await http.get("/v1/catalog/service/web")
    assert len(catalog) == 1
    _, stray, _ = await http.get("/v1/catalog/service/stray")
    assert stray == [], "services on this node that the agent does not know are removed"
    index = agent.agent.store.index
    await agent.agent.sync_full()
    assert agent.agent.store.index == index, "a sync with nothing to fix writes nothing"


def _client(running: RunningAgent):  # noqa: ANN202
    import contextlib

    import aiohttp

    @contextlib.asynccontextmanager
    async def cm():  # noqa: ANN202
        async with aiohttp.ClientSession() as session:
            yield Http(session, running.url)

    return cm()


def _self_signed(tmp_path) -> tuple[str, str]:  # noqa: ANN001
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1)).sign(key, hashes.SHA256()))  # fmt: skip
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return str(cert_path), str(key_path)


async def test_https_check_tls_skip_verify(http: Http, tmp_path) -> None:  # noqa: ANN001
    import ssl

    cert, key = _self_signed(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    app = web.Application()
    app.router.add_get("/health", lambda r: web.Response(text="tls ok"))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        url = f"https://127.0.0.1:{port}/health"
        await http.put("/v1/agent/check/register", {"Name": "strict", "HTTP": url, "Interval": "1s"})
        await http.put("/v1/agent/check/register", {"Name": "skip", "HTTP": url, "Interval": "1s",
                                                    "TLSSkipVerify": True})  # fmt: skip
        await eventually(lambda: _agent_status(http, "skip", "passing"))
        # The self-signed certificate fails verification when skip-verify is off.
        async def strict_ran() -> bool:
            _, checks, _ = await http.get("/v1/agent/checks")
            return "certificate" in checks["strict"]["Output"].lower()

        await eventually(strict_ran)
        _, checks, _ = await http.get("/v1/agent/checks")
        assert checks["strict"]["Status"] == "critical"
        assert "tls ok" in checks["skip"]["Output"]
    finally:
        await runner.cleanup()
