"""The check kinds beyond HTTP/TCP/TTL/script, each against a real target: gRPC (a real grpc.health.v1
server, with and without TLS), H2PING (HTTP/2 over TLS and in the clear), UDP (a real socket and a closed
port), OSService (a fake systemctl on PATH), and alias checks (local, by node, and the sidecar's defaults)."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from tests.conftest import Http, eventually

BIN = str(Path(sys.executable).with_name("proconsul"))


@dataclass(frozen=True)
class Pki:
    ca: str
    cert: str
    key: str


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA and a server certificate (localhost, 127.0.0.1) made by the real ``proconsul tls`` commands."""
    d = tmp_path_factory.mktemp("pki")
    for args in (["ca", "create"], ["cert", "create", "-server"]):
        out = subprocess.run([BIN, "tls", *args], cwd=d, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
    return Pki(str(d / "consul-agent-ca.pem"), str(d / "dc1-server-consul-0.pem"), str(d / "dc1-server-consul-0-key.pem"))


@dataclass
class HealthServer:
    servicer: health_aio.HealthServicer
    plain: str  # host:port in the clear
    tls: str  # host:port over TLS


@pytest.fixture
async def grpc_health(pki: Pki) -> AsyncIterator[HealthServer]:
    """A real gRPC server with grpcio's standard health service, on two ports: one plain, one TLS."""
    servicer = health_aio.HealthServicer()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await servicer.set("web", health_pb2.HealthCheckResponse.SERVING)
    await servicer.set("down", health_pb2.HealthCheckResponse.NOT_SERVING)
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    plain = server.add_insecure_port("127.0.0.1:0")
    creds = grpc.ssl_server_credentials([(Path(pki.key).read_bytes(), Path(pki.cert).read_bytes())])
    secure = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    try:
        yield HealthServer(servicer, f"127.0.0.1:{plain}", f"127.0.0.1:{secure}")
    finally:
        await server.stop(None)


async def check_of(http: Http, cid: str) -> dict[str, object]:
    _, checks, _ = await http.get("/v1/agent/checks")
    return checks.get(cid, {})


async def settled(http: Http, cid: str, status: str) -> dict[str, object]:
    """Wait until the check has run to ``status``; return it (or fail showing where it is)."""
    seen: dict[str, object] = {}

    async def ok() -> bool:
        seen.update(await check_of(http, cid))
        return seen.get("Status") == status and bool(seen.get("Output"))

    try:
        await eventually(ok)
    except AssertionError:
        raise AssertionError(f"check {cid} not {status}: {seen}") from None
    return dict(seen)


def closed_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------------------------- gRPC


async def test_grpc_check_follows_the_health_service(http: Http, grpc_health: HealthServer) -> None:
    target = grpc_health.plain
    dead = f"127.0.0.1:{closed_port()}"
    for name, grpc_target in (("whole", target), ("web", f"{target}/web"), ("down", f"{target}/down"),
                              ("unknown", f"{target}/nosuch"), ("dead", dead)):  # fmt: skip
        status, text, _ = await http.put("/v1/agent/check/register", {"Name": name, "GRPC": grpc_target,
                                                                      "Interval": "1s", "Timeout": "2s"})  # fmt: skip
        assert status == 200, text
    assert (await settled(http, "whole", "passing"))["Output"] == f"gRPC check {target}: success"
    assert (await settled(http, "web", "passing"))["Output"] == f"gRPC check {target}/web: success"
    assert (await settled(http, "down", "critical"))["Output"] == f"gRPC {target}/down serving status: NOT_SERVING"
    unknown = await settled(http, "unknown", "critical")
    # The status as Go prints it, then whatever the server said (grpcio's servicer says nothing more).
    assert str(unknown["Output"]).startswith("rpc error: code = NotFound desc =")
    assert str((await settled(http, "dead", "critical"))["Output"]).startswith("rpc error: code = Unavailable desc = ")
    chk = await check_of(http, "web")
    assert chk["Type"] == "grpc" and chk["Timeout"] == "2s"
    # A service that stops serving turns its check critical on the next run.
    await grpc_health.servicer.set("web", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert (await settled(http, "web", "critical"))["Output"] == f"gRPC {target}/web serving status: NOT_SERVING"


async def test_grpc_check_over_tls(http: Http, grpc_health: HealthServer) -> None:
    target = grpc_health.tls
    await http.put("/v1/agent/check/register", {"Name": "skip", "GRPC": f"{target}/web", "GRPCUseTLS": True,
                                                "TLSSkipVerify": True, "Interval": "1s"})  # fmt: skip
    await http.put("/v1/agent/check/register", {"Name": "strict", "GRPC": f"{target}/web", "GRPCUseTLS": True,
                                                "Interval": "1s", "Timeout": "2s"})  # fmt: skip
    await http.put("/v1/agent/check/register", {"Name": "plain-to-tls", "GRPC": f"{target}/web", "Interval": "1s",
                                                "Timeout": "2s"})  # fmt: skip
    assert (await settled(http, "skip", "passing"))["Output"] == f"gRPC check {target}/web: success"
    # The agent does not trust the test CA: verification fails, and so does speaking in the clear to TLS.
    assert "rpc error: code = Unavailable" in str((await settled(http, "strict", "critical"))["Output"])
    assert "rpc error: code = Unavailable" in str((await settled(http, "plain-to-tls", "critical"))["Output"])
    definition = (await check_of(http, "skip"))["Definition"]
    assert definition["GRPC"] == f"{target}/web" and definition["GRPCUseTLS"] is True
    assert definition["TLSSkipVerify"] is True


# ---------------------------------------------------------------------------------------------------- H2PING


async def test_h2ping_check_with_and_without_tls(http: Http, grpc_health: HealthServer) -> None:
    await http.put("/v1/agent/check/register", {"Name": "h2c", "H2PING": grpc_health.plain, "H2PingUseTLS": False,
                                                "Interval": "1s"})  # fmt: skip
    await http.put("/v1/agent/check/register", {"Name": "h2", "H2PING": grpc_health.tls, "TLSSkipVerify": True,
                                                "Interval": "1s"})  # fmt: skip
    dead = f"127.0.0.1:{closed_port()}"
    await http.put("/v1/agent/check/register", {"Name": "dead", "H2PING": dead, "Interval": "1s"})
    assert (await settled(http, "h2c", "passing"))["Output"] == "HTTP2 ping was successful"
    assert (await settled(http, "h2", "passing"))["Output"] == "HTTP2 ping was successful"
    out = str((await settled(http, "dead", "critical"))["Output"])
    assert out == f"Failed to dial to {dead}: dial tcp {dead}: connect: connection refused"
    definitions = {cid: (await check_of(http, cid))["Definition"] for cid in ("h2c", "h2")}
    assert definitions["h2c"]["H2PingUseTLS"] is False
    assert definitions["h2"]["H2PingUseTLS"] is True  # Consul's default once H2PING is set


async def test_h2ping_against_a_server_that_speaks_only_http1(http: Http) -> None:
    app = web.Application()
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        await http.put("/v1/agent/check/register", {"Name": "h1", "H2PING": f"127.0.0.1:{port}",
                                                    "H2PingUseTLS": False, "Interval": "1s", "Timeout": "2s"})  # fmt: skip
        assert str((await settled(http, "h1", "critical"))["Output"]).startswith("HTTP2 ping failed: ")
    finally:
        await runner.cleanup()


# ---------------------------------------------------------------------------------------------------- UDP


class Echo(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.seen = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.seen += 1
        self.transport.sendto(b"pong", addr)


async def test_udp_check_open_silent_and_closed_ports(http: Http) -> None:
    loop = asyncio.get_running_loop()
    echo_transport, echo = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never answers
    silent.bind(("127.0.0.1", 0))
    try:
        echo_addr = f"127.0.0.1:{echo_transport.get_extra_info('sockname')[1]}"
        silent_addr = f"127.0.0.1:{silent.getsockname()[1]}"
        closed = f"127.0.0.1:{closed_port(socket.SOCK_DGRAM)}"
        for name, addr in (("echo", echo_addr), ("silent", silent_addr), ("closed", closed)):
            status, text, _ = await http.put("/v1/agent/check/register", {"Name": name, "UDP": addr, "Interval": "1s",
                                                                          "Timeout": "300ms"})  # fmt: skip
            assert status == 200, text
        assert (await settled(http, "echo", "passing"))["Output"] == f"UDP connect {echo_addr}: Success"
        assert echo.seen >= 1
        assert (await settled(http, "silent", "passing"))["Output"] == f"UDP connect {silent_addr}: Success"
        out = str((await settled(http, "closed", "critical"))["Output"])
        assert out.startswith("read udp 127.0.0.1:") and out.endswith(f"->{closed}: read: connection refused")
        assert (await check_of(http, "closed"))["Definition"]["UDP"] == closed
    finally:
        echo_transport.close()
        silent.close()


# ---------------------------------------------------------------------------------------------------- OSService

FAKE_SYSTEMCTL = """#!/bin/sh
# is-active -- UNIT: print the state the test wrote for the unit (systemctl says "inactive" for unknown units)
unit="$3"
if [ -f "$STATE_DIR/$unit" ]; then state=$(cat "$STATE_DIR/$unit"); else state=inactive; fi
echo "$state"
[ "$state" = active ] && exit 0
exit 3
"""


async def test_os_service_check_with_a_fake_systemctl(http: Http, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    bindir, states = tmp_path / "bin", tmp_path / "states"
    bindir.mkdir()
    states.mkdir()
    fake = bindir / "systemctl"
    fake.write_text(FAKE_SYSTEMCTL)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STATE_DIR", str(states))
    (states / "nginx.service").write_text("active\n")
    (states / "db.service").write_text("activating\n")
    for unit in ("nginx.service", "db.service", "gone.service"):
        status, text, _ = await http.put("/v1/agent/check/register", {"Name": unit, "OSService": unit, "Interval": "1s"})
        assert status == 200, text
    assert (await settled(http, "nginx.service", "passing"))["Output"] == 'Service "nginx.service" is healthy'
    assert (await settled(http, "db.service", "warning"))["Output"] == "service status: activating"
    gone = await settled(http, "gone.service", "critical")
    assert gone["Output"] == "service status: inactive - OS Service unhealthy"
    assert gone["Type"] == "os_service" and gone["Definition"]["OSService"] == "gone.service"
    (states / "nginx.service").write_text("failed\n")
    assert (await settled(http, "nginx.service", "critical"))["Output"] == "service status: failed - OS Service unhealthy"
    # Without systemctl at all the check cannot run: critical, saying why.
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    await http.put("/v1/agent/check/register", {"Name": "nosystemd", "OSService": "x.service", "Interval": "1s"})
    out = (await settled(http, "nosystemd", "critical"))["Output"]
    assert out == 'error accessing service: exec: "systemctl": executable file not found in $PATH'


# ---------------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("check", "message"),
    [
        ({"GRPC": "127.0.0.1:1"}, "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks"),
        ({"UDP": "nope", "Interval": "1s"}, "Invalid check: UDP must be host:port"),
        ({"AliasService": "web", "Interval": "1s", "TCP": "127.0.0.1:1"}, "Invalid check: Interval cannot be set for Alias checks"),
        ({"AliasService": "web", "TTL": "10s"}, "Invalid check: TTL must be not be set for Alias checks"),
        ({"TTL": "10s", "FailuresBeforeWarning": 3, "FailuresBeforeCritical": 1},
         "Invalid check: FailuresBeforeWarning can't be higher than FailuresBeforeCritical"),
        ({"DockerContainerID": "abc", "Args": ["true"], "Interval": "1s"}, "docker checks are not supported"),
    ],
)
async def test_check_kind_validation(http: Http, check: dict[str, object], message: str) -> None:
    status, text, _ = await http.put("/v1/agent/check/register", {"Name": "bad", **check})
    assert status == 400 and message in text, text
    assert await check_of(http, "bad") == {}


# ---------------------------------------------------------------------------------------------------- alias


async def test_alias_check_follows_a_local_service(http: Http) -> None:
    await http.put("/v1/agent/service/register", {"Name": "api", "Port": 9000, "Check": {"TTL": "60s"}})
    await http.put("/v1/agent/service/register", {"Name": "front", "Port": 9001,
                                                  "Check": {"Name": "alias of api", "AliasService": "api"}})  # fmt: skip
    await http.put("/v1/agent/check/pass/service:api?note=fine")
    alias = await settled(http, "service:front", "passing")
    assert alias["Output"] == "All checks passing." and alias["Type"] == "alias"
    assert alias["Definition"]["AliasService"] == "api"
    # Event driven: the alias follows within a moment, not on a polling interval.
    loop = asyncio.get_running_loop()
    started = loop.time()
    await http.put("/v1/agent/check/fail/service:api?note=broken")
    alias = await settled(http, "service:front", "critical")
    assert loop.time() - started < 2.0
    assert alias["Output"] == "Aliased check \"Service 'api' check\" failing: broken"
    await http.put("/v1/agent/check/warn/service:api?note=slow")
    assert (await settled(http, "service:front", "warning"))["Output"] == "Aliased check \"Service 'api' check\" failing: slow"
    await http.put("/v1/agent/service/deregister/api")
    assert (await settled(http, "service:front", "critical"))["Output"] == "Service api could not be found on node "
    # The catalog carries the alias's status too.
    async def in_catalog() -> bool:
        _, rows, _ = await http.get("/v1/health/checks/front")
        return [r["Status"] for r in rows] == ["critical"]

    await eventually(in_catalog)


async def test_sidecar_inherits_its_parents_tags_meta_and_address_unless_it_sets_its_own(http: Http) -> None:
    status, text, _ = await http.put("/v1/agent/service/register", {
        "ID": "api1", "Name": "api", "Port": 9090, "Address": "127.0.0.7", "Tags": ["v1", "blue"],
        "Meta": {"version": "v1"}, "Connect": {"SidecarService": {}},
    })  # fmt: skip
    assert status == 200, text
    sidecar = (await http.get("/v1/agent/service/api1-sidecar-proxy"))[1]
    assert (sidecar["Tags"], sidecar["Meta"], sidecar["Address"]) == (["v1", "blue"], {"version": "v1"}, "127.0.0.7")
    status, text, _ = await http.put("/v1/agent/service/register", {
        "ID": "api2", "Name": "api", "Port": 9091, "Tags": ["v2"], "Meta": {"version": "v2"},
        "Connect": {"SidecarService": {"tags": ["proxy"], "Meta": {"role": "sidecar"}}},
    })  # fmt: skip
    assert status == 200, text
    sidecar = (await http.get("/v1/agent/service/api2-sidecar-proxy"))[1]
    assert (sidecar["Tags"], sidecar["Meta"]) == (["proxy"], {"role": "sidecar"})


async def test_alias_check_of_a_node_uses_the_catalog(http: Http) -> None:
    await http.put("/v1/catalog/register", {"Node": "ext", "Address": "10.0.0.9",
                                            "Service": {"ID": "db1", "Service": "db", "Port": 5432},
                                            "Check": {"CheckID": "db-up", "Name": "db up", "ServiceID": "db1",
                                                      "Status": "passing"}})  # fmt: skip
    await http.put("/v1/agent/check/register", {"Name": "ext-db", "AliasNode": "ext", "AliasService": "db1"})
    await http.put("/v1/agent/check/register", {"Name": "ext-missing", "AliasNode": "ext", "AliasService": "nope"})
    assert (await settled(http, "ext-db", "passing"))["Output"] == "All checks passing."
    assert (await settled(http, "ext-missing", "critical"))["Output"] == "Service nope could not be found on node ext"
    # A catalog write wakes the blocking watch at once.
    await http.put("/v1/catalog/register", {"Node": "ext", "Address": "10.0.0.9",
                                            "Check": {"CheckID": "db-up", "Name": "db up", "ServiceID": "db1",
                                                      "Status": "critical", "Output": "down"}})  # fmt: skip
    assert (await settled(http, "ext-db", "critical"))["Output"] == 'Aliased check "db up" failing: down'


async def test_sidecar_registration_gets_consuls_default_checks(http: Http) -> None:
    status, text, _ = await http.put("/v1/agent/service/register", {
        "ID": "web1", "Name": "web", "Port": 8080, "Check": {"TTL": "60s"}, "Connect": {"SidecarService": {}},
    })  # fmt: skip
    assert status == 200, text
    _, checks, _ = await http.get("/v1/agent/checks")
    listening, aliasing = checks["service:web1-sidecar-proxy:1"], checks["service:web1-sidecar-proxy:2"]
    assert listening["Name"] == "Connect Sidecar Listening" and listening["Type"] == "tcp"
    assert listening["ServiceID"] == "web1-sidecar-proxy" and listening["Interval"] == "10s"
    port = (await http.get("/v1/agent/service/web1-sidecar-proxy"))[1]["Port"]
    assert listening["Definition"]["TCP"] == f"127.0.0.1:{port}"
    assert aliasing["Name"] == "Connect Sidecar Aliasing web1" and aliasing["Type"] == "alias"
    assert aliasing["ServiceID"] == "web1-sidecar-proxy" and aliasing["Definition"]["AliasService"] == "web1"
    # The alias follows the parent instance.
    await http.put("/v1/agent/check/pass/service:web1")
    await settled(http, "service:web1-sidecar-proxy:2", "passing")
    await http.put("/v1/agent/check/fail/service:web1?note=gone")
    await settled(http, "service:web1-sidecar-proxy:2", "critical")
