"""``proconsul connect proxy`` as a user runs it: -sidecar-for against registrations made with
Connect.SidecarService (real processes, SIGTERM to stop), and clear errors with exit 1 for bad flags."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest
from conftest import TRAILER, roundtrip, wait_for

from registry.cli import main
from registry.testing.agent import free_port


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a shell starts a background job


async def _spawn(*args: str, sigint_ignored: bool = False) -> tuple[asyncio.subprocess.Process, list[str]]:
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "proconsul"), "connect", "proxy", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=_ignore_sigint if sigint_ignored else None)  # fmt: skip
    lines: list[str] = []

    async def pump() -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            lines.append(line.decode(errors="replace"))

    asyncio.get_running_loop().create_task(pump())
    return proc, lines


async def test_sidecar_for_runs_the_registered_sidecars_end_to_end(agent, http, echo) -> None:  # noqa: ANN001
    db_sidecar, web_sidecar, up_port = free_port(), free_port(), free_port()
    status, text = await http("PUT", "/v1/agent/service/register", {
        "Name": "db", "ID": "db1", "Port": echo.port, "Connect": {"SidecarService": {
            "Port": db_sidecar,
            # Consul's default TCP check runs every 10 s; once a second keeps the test short.
            "Checks": [{"Name": "Connect Sidecar Listening", "TCP": f"127.0.0.1:{db_sidecar}", "Interval": "1s"}]}}})  # fmt: skip
    assert status == 200, text
    status, text = await http("PUT", "/v1/agent/service/register", {
        "Name": "web", "ID": "web1", "Port": free_port(), "Connect": {"SidecarService": {
            "Port": web_sidecar, "Proxy": {"Upstreams": [{"DestinationName": "db", "LocalBindPort": up_port}]}}}})  # fmt: skip
    assert status == 200, text
    _, reg = await http("GET", "/v1/agent/service/db1-sidecar-proxy")
    assert reg["Proxy"]["DestinationServiceID"] == "db1" and reg["Port"] == db_sidecar

    procs = []
    try:
        server, server_out = await _spawn("-sidecar-for", "db1", "-http-addr", agent.http_addr)
        client, client_out = await _spawn("--sidecar-for", "web1", "--http-addr", agent.http_addr, "--log-level", "debug")
        procs = [server, client]
        for out in (server_out, client_out):
            await wait_for(lambda out=out: any("Connect proxy running" in line for line in out), 20, "proxy start")
        assert any("waiting for the first leaf certificate" in line for line in server_out)
        assert any("public listener ready" in line and f":{db_sidecar}" in line for line in server_out)
        assert any("upstream listener ready" in line and f"127.0.0.1:{up_port}" in line for line in client_out)

        async def through() -> bool:
            return await roundtrip(up_port, b"via sidecars", timeout=5) == b"via sidecars" + TRAILER

        try:
            await wait_for(through, 15, "the db sidecar to pass its check and carry a connection")
        except AssertionError:
            print("".join(server_out), "".join(client_out))
            raise
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), 10)
        assert codes == [0, 0]
        await wait_for(lambda: any("stopping the proxy" in line for line in server_out), 5, "stop log")
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


@pytest.mark.parametrize(("argv", "message"), [
    (["-bogus"], "unrecognized arguments: -bogus"),
    ([], "one of -sidecar-for, -proxy-id or -service must be given"),
    (["-service", "web", "-upstream", "db"], "-upstream 'db' must be name:port"),
    (["-service", "web", "-upstream", "db:99999"], "out of range"),
    (["-service", "web", "-listen", ":21000"], "-listen and -service-addr must be given together"),
    (["-service", "web", "-service-addr", "127.0.0.1:8080", "-listen", "nope"], "must be host:port"),
    (["-service", "bad name!", "-upstream", "db:9191"], "not a valid service name"),
    (["-sidecar-for", "web1", "-service", "web"], "cannot be combined with -service"),
    (["-sidecar-for", "web1", "-proxy-id", "x"], "mutually exclusive"),
    (["-service", "web", "-upstream", "db:9191", "-log-level", "loud"], "-log-level 'loud'"),
    (["-service", "web", "-upstream", "db:9191", "-upstream", "cache:9191"], "both want port 9191"),
    (["-service", "web", "-upstream", "db:9191", "-register"], "-register may only be specified with -service and -listen"),
])  # fmt: skip
def test_bad_flags_say_what_is_wrong_and_exit_1(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["connect", "proxy", *argv]) == 1
    err = capsys.readouterr().err
    assert message in err, err


async def test_sidecar_for_without_exactly_one_sidecar_exits_1(agent, http) -> None:  # noqa: ANN001
    proc, out = await _spawn("-sidecar-for", "nope", "-http-addr", agent.http_addr)
    assert await asyncio.wait_for(proc.wait(), 20) == 1
    await wait_for(lambda: any("No sidecar proxy registered for nope" in line for line in out), 5, "the error")

    for pid in ("a-proxy", "b-proxy"):  # two connect-proxies claim the same instance
        status, text = await http("PUT", "/v1/agent/service/register", {
            "Kind": "connect-proxy", "ID": pid, "Name": "web-sidecar-proxy", "Port": free_port(),
            "Proxy": {"DestinationServiceName": "web", "DestinationServiceID": "web1", "LocalServicePort": 80}})  # fmt: skip
        assert status == 200, text
    proc, out = await _spawn("-sidecar-for", "web1", "-http-addr", agent.http_addr)
    assert await asyncio.wait_for(proc.wait(), 20) == 1
    await wait_for(lambda: any("-proxy-id and one of the following IDs: a-proxy, b-proxy" in line for line in out), 5,
                   "the error")  # fmt: skip


def test_an_unreachable_agent_at_start_up_exits_1(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("connect_proxy.cli._install_logging", lambda *a: None)  # keep pytest's structlog set-up
    assert main(["connect", "proxy", "-sidecar-for", "web1", "-http-addr", f"127.0.0.1:{free_port()}"]) == 1
    assert "Is the agent running?" in capsys.readouterr().err


async def test_register_makes_the_proxy_discoverable_and_deregisters_on_exit(agent, http, echo) -> None:  # noqa: ANN001
    """-register (Consul's RegisterMonitor): <service>-proxy with a passing TTL check at the -listen
    address, found by /v1/health/connect; gone again after SIGTERM."""
    public = free_port()
    proc, out = await _spawn("-service", "db", "-service-addr", f"127.0.0.1:{echo.port}",
                             "-listen", f"127.0.0.1:{public}", "-register", "-register-id", "a",
                             "-http-addr", agent.http_addr)  # fmt: skip
    try:
        await wait_for(lambda: any("Connect proxy running" in line for line in out), 20, "proxy start")
        status, reg = await http("GET", "/v1/agent/service/db-proxy-a")
        assert status == 200, reg
        assert (reg["Kind"], reg["Service"], reg["Address"], reg["Port"]) == ("connect-proxy", "db-proxy", "127.0.0.1", public)
        assert reg["Proxy"]["DestinationServiceName"] == "db"
        _, checks = await http("GET", "/v1/agent/checks")
        check = checks["db-proxy-a-ttl"]
        assert (check["Name"], check["Status"], check["ServiceID"]) == ("proxy heartbeat", "passing", "db-proxy-a")
        _, healthy = await http("GET", "/v1/health/connect/db?passing")
        assert [(e["Service"]["ID"], e["Service"]["Port"]) for e in healthy] == [("db-proxy-a", public)]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        status, _ = await http("GET", "/v1/agent/service/db-proxy-a")
        assert status == 404
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_register_monitor_heartbeats_and_puts_a_lost_registration_back(agent, http) -> None:  # noqa: ANN001
    from connect_proxy.agent import AgentClient, agent_address
    from connect_proxy.register import RegisterMonitor, registration

    client = AgentClient(agent_address(agent.http_addr))
    monitor = RegisterMonitor(client, registration("api", "", free_port(), ttl=0.6), ttl=0.6,
                              reconcile=0.3)
    try:
        await monitor.start()
        _, reg = await http("GET", "/v1/agent/service/api-proxy")
        assert reg["Address"] == "" and reg["Service"] == "api-proxy"
        _, checks = await http("GET", "/v1/agent/checks")
        assert (checks["api-proxy-ttl"]["Type"], checks["api-proxy-ttl"]["Status"]) == ("ttl", "passing")
        # The TTL is 0.6 s here: the check stays passing only because the monitor keeps passing it.
        await asyncio.sleep(1.5)
        _, checks = await http("GET", "/v1/agent/checks")
        assert checks["api-proxy-ttl"]["Status"] == "passing"
        # An agent that lost the registration (a restart without it) gets it back.
        status, _ = await http("PUT", "/v1/agent/service/deregister/api-proxy")
        assert status == 200

        async def back() -> bool:
            return (await http("GET", "/v1/agent/service/api-proxy"))[0] == 200

        await wait_for(back, 5, "the registration to be restored")
    finally:
        await monitor.stop()
        await client.close()
    assert (await http("GET", "/v1/agent/service/api-proxy"))[0] == 404


@pytest.mark.parametrize(("sig", "sigint_ignored"), [(signal.SIGINT, False), (signal.SIGINT, True), (signal.SIGTERM, False)],
                         ids=["SIGINT", "SIGINT-in-a-background-job", "SIGTERM"])  # fmt: skip
async def test_the_proxy_stops_on_sigint_as_on_sigterm(agent, http, echo, sig: signal.Signals,  # noqa: ANN001
                                                       sigint_ignored: bool) -> None:  # fmt: skip
    """Ctrl-C stops the sidecar as SIGTERM does (Consul's proxy stops on either), also when it was started
    with SIGINT ignored, as a shell starts a background job: listeners closed, exit 0, with a client
    connection open through it."""
    public = free_port()
    proc, out = await _spawn("-service", "db", "-service-addr", f"127.0.0.1:{echo.port}",
                             "-listen", f"127.0.0.1:{public}", "-drain-timeout", "500ms",
                             "-http-addr", agent.http_addr, sigint_ignored=sigint_ignored)  # fmt: skip
    try:
        await wait_for(lambda: any("Connect proxy running" in line for line in out), 20, "proxy start")
        _, writer = await asyncio.open_connection("127.0.0.1", public)
        proc.send_signal(sig)
        assert await asyncio.wait_for(proc.wait(), 10) == 0, "".join(out)
        writer.close()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", public)
        assert any("caught signal, stopping the proxy" in line for line in out), "".join(out)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
