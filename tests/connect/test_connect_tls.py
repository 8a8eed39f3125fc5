"""TLS for the cluster itself, with certificates made by the real ``proconsul tls`` commands: the
HTTPS listener (both config spellings), the RPC/Raft contexts and peer_check over real sockets, and
refusal of settings that cannot work."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from ca import certs
from registry.api.http import HotCache
from registry.config import Config, ConfigError, apply_mapping
from registry.testing import GOSSIP_KEY, async_dev_agent
from registry.tls import load_tls_settings, make_peer_check, rpc_contexts

BIN = str(Path(sys.executable).with_name("proconsul"))


def tls(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BIN, "tls", *args], cwd=cwd, capture_output=True, text=True, timeout=30)


@dataclass(frozen=True)
class Pki:
    dir: Path

    def __getitem__(self, name: str) -> str:
        return str(self.dir / name)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    out = tls(d, "ca", "create")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["==> Saved consul-agent-ca.pem", "==> Saved consul-agent-ca-key.pem"]
    out = tls(d, "cert", "create", "-server")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-3:] == ["==> Using consul-agent-ca.pem and consul-agent-ca-key.pem",
                                            "==> Saved dc1-server-consul-0.pem", "==> Saved dc1-server-consul-0-key.pem"]  # fmt: skip
    assert "WARNING: Server Certificates grants authority" in out.stdout
    out = tls(d, "cert", "create", "-client")
    assert out.returncode == 0 and "==> Saved dc1-client-consul-0.pem" in out.stdout, out.stderr
    return Pki(d)


def test_tls_commands_make_consul_shaped_files(pki: Pki, openssl_verify) -> None:  # noqa: ANN001
    ca = certs.cert_from_pem(Path(pki["consul-agent-ca.pem"]).read_text())
    assert ca.subject.rfc4514_string().startswith("CN=Consul Agent CA ")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert oct(os.stat(pki["consul-agent-ca-key.pem"]).st_mode & 0o777) == "0o600"
    server = certs.cert_from_pem(Path(pki["dc1-server-consul-0.pem"]).read_text())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"server.dc1.consul", "localhost"}
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    eku = set(server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert eku == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    client = certs.cert_from_pem(Path(pki["dc1-client-consul-0.pem"]).read_text())
    csan = client.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(csan.get_values_for_type(x509.DNSName)) == {"client.dc1.consul", "localhost"}
    for leaf in ("dc1-server-consul-0.pem", "dc1-client-consul-0.pem"):
        out = openssl_verify(Path(pki[leaf]).read_text(), Path(pki["consul-agent-ca.pem"]).read_text())
        assert out.returncode == 0, out.stderr
    assert certs.key_id(certs.private_key_from_pem(Path(pki["dc1-server-consul-0-key.pem"]).read_text())) == \
        certs.key_id(server.public_key())


def test_tls_commands_never_overwrite(tmp_path: Path) -> None:
    assert tls(tmp_path, "ca", "create").returncode == 0
    out = tls(tmp_path, "ca", "create")
    assert out.returncode == 1 and "consul-agent-ca.pem already exists." in out.stderr
    assert tls(tmp_path, "cert", "create", "-server").returncode == 0
    out = tls(tmp_path, "cert", "create", "-server", "-node", "s1")
    assert out.returncode == 0 and "==> Saved dc1-server-consul-1.pem" in out.stdout
    cert = certs.cert_from_pem((tmp_path / "dc1-server-consul-1.pem").read_text())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert "s1.server.dc1.consul" in names
    out = tls(tmp_path, "cert", "create", "-server", "-client")
    assert out.returncode == 1 and "Please provide either -server, -client, or -cli" in out.stderr
    out = tls(tmp_path / "..", "cert", "create", "-client", "-ca", "missing.pem")
    assert out.returncode == 1 and "Error reading CA" in out.stderr


def _client_ctx(pki: Pki, cert: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki["consul-agent-ca.pem"])
    if cert:
        ctx.load_cert_chain(pki[f"{cert}.pem"], pki[f"{cert}-key.pem"])
    return ctx


@pytest.mark.parametrize("spelling", ["tls-block", "flat-keys"])
async def test_https_listener_serves_the_api_and_verifies_clients(pki: Pki, spelling: str) -> None:
    files = {"ca_file": pki["consul-agent-ca.pem"], "cert_file": pki["dc1-server-consul-0.pem"],
             "key_file": pki["dc1-server-consul-0-key.pem"], "verify_incoming": True}  # fmt: skip
    config = {"tls": {"defaults": files}} if spelling == "tls-block" else dict(files)
    async with async_dev_agent(ports={"https": 0}, **config) as running:
        assert not running.agent.config.unknown_keys
        assert running.agent.https_addr is not None
        port = running.agent.https_addr[1]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"https://localhost:{port}/v1/connect/ca/roots",
                                   ssl=_client_ctx(pki, "dc1-client-consul-0")) as resp:  # fmt: skip
                assert resp.status == 200 and (await resp.json())["Roots"]
            async with session.get(f"https://127.0.0.1:{port}/v1/status/leader",
                                   ssl=_client_ctx(pki, "dc1-server-consul-0")) as resp:  # fmt: skip
                assert resp.status == 200
            # verify_incoming: no client certificate, no API.
            with pytest.raises(aiohttp.ClientError):
                async with session.get(f"https://localhost:{port}/v1/status/leader", ssl=_client_ctx(pki, None)):
                    pass
            # The plain HTTP port keeps working beside it.
            async with session.get(running.url + "/v1/status/leader") as resp:
                assert resp.status == 200


async def test_https_serves_the_same_api_as_http(pki: Pki) -> None:
    """One Api behind both ports, as Consul serves one handler on both: one set of caches and one watch-hub
    listener. (A second Api for HTTPS would keep its own caches and register its own listener.)"""
    files = {"ca_file": pki["consul-agent-ca.pem"], "cert_file": pki["dc1-server-consul-0.pem"],
             "key_file": pki["dc1-server-consul-0-key.pem"]}  # fmt: skip
    async with async_dev_agent(ports={"https": 0}, tls={"defaults": files}) as running:
        agent = running.agent
        api = agent.api
        assert api is not None and agent.https_addr is not None
        caches = [fn for fn in agent.hub.listeners if isinstance(fn.__self__, HotCache)]  # type: ignore[attr-defined]
        assert caches == [api.hot.invalidate]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"https://127.0.0.1:{agent.https_addr[1]}/v1/catalog/services",
                                   ssl=_client_ctx(pki, None)) as resp:  # fmt: skip
                assert resp.status == 200 and "consul" in await resp.json()
        # The answer rendered for the HTTPS request is in the HTTP port's cache.
        assert any(key.startswith("/v1/catalog/services") for key in api.hot.entries)
        async with aiohttp.ClientSession() as session:
            async with session.get(running.url + "/v1/catalog/services") as resp:
                assert resp.status == 200 and "consul" in await resp.json()


async def test_https_port_without_certificates_refuses_to_start() -> None:
    with pytest.raises(OSError, match="no cert_file / key_file"):
        async with async_dev_agent(ports={"https": 0}):
            pass


def _config(pki: Pki, **internal_rpc: object) -> Config:
    cfg = Config(node_name="n1")
    apply_mapping(cfg, {"tls": {
        "defaults": {"ca_file": pki["consul-agent-ca.pem"], "cert_file": pki["dc1-server-consul-0.pem"],
                     "key_file": pki["dc1-server-consul-0-key.pem"], "verify_incoming": True, "verify_outgoing": True},
        "internal_rpc": internal_rpc}})  # fmt: skip
    return cfg


async def test_peer_check_over_real_sockets(pki: Pki) -> None:
    """A Raft connection is accepted only from a certificate for server.dc1.consul; the client agent's
    certificate, signed by the same CA, may make RPCs but never speak Raft."""
    server_ctx, client_ctx, hostname, peer_check = rpc_contexts(_config(pki, verify_server_hostname=True))
    assert server_ctx is not None and client_ctx is not None and peer_check is not None
    assert hostname == "server.dc1.consul"
    verdicts: list[tuple[bytes, bool]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        kind = await reader.readexactly(1)
        verdicts.append((kind, peer_check(writer.get_extra_info("ssl_object"), kind)))
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = srv.sockets[0].getsockname()[1]

    def as_(cert: str) -> ssl.SSLContext:
        # What another agent's rpc_contexts would build, presenting ``cert``.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(pki["consul-agent-ca.pem"])
        ctx.load_cert_chain(pki[f"{cert}.pem"], pki[f"{cert}-key.pem"])
        return ctx

    async def connect(ctx: ssl.SSLContext, kind: bytes) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=hostname)
        writer.write(kind)
        await writer.drain()
        await reader.read()  # until the server closes
        writer.close()

    try:
        await connect(client_ctx, b"R")  # the server's own client context: a server certificate
        await connect(as_("dc1-client-consul-0"), b"R")
        await connect(as_("dc1-client-consul-0"), b"C")
        # A plaintext client cannot even get to peer_check: the port is TLS-only.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"R" + b"\x00" * 64)
        await writer.drain()
        try:
            await asyncio.wait_for(reader.read(), 5)  # the server drops it after a failed handshake
        except ConnectionError:
            pass
        writer.close()
    finally:
        srv.close()
        await srv.wait_closed()
    assert verdicts == [(b"R", True), (b"R", False), (b"C", True)]
    assert peer_check(None, b"R") is False  # no TLS at all: never Raft
    # Without verify_server_hostname the check does not restrict roles.
    assert make_peer_check(load_tls_settings(_config(pki)))(None, b"R") is True


async def test_client_side_refuses_a_server_with_a_client_certificate(pki: Pki) -> None:
    """verify_server_hostname on the dialing side: a client agent's certificate cannot pose as a server."""
    _, client_ctx, hostname, _ = rpc_contexts(_config(pki, verify_server_hostname=True))
    impostor = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    impostor.load_cert_chain(pki["dc1-client-consul-0.pem"], pki["dc1-client-consul-0-key.pem"])
    srv = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=impostor)
    port = srv.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ssl.SSLCertVerificationError, match="server.dc1.consul|Hostname mismatch"):
            await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname=hostname)
    finally:
        srv.close()
        await srv.wait_closed()


def test_rpc_contexts_absent_without_certificates_and_contradictions_refused(pki: Pki) -> None:
    assert rpc_contexts(Config(node_name="n1")) == (None, None, None, None)
    cfg = Config(node_name="n1")
    apply_mapping(cfg, {"verify_server_hostname": True, "ca_file": pki["consul-agent-ca.pem"],
                        "cert_file": pki["dc1-server-consul-0.pem"], "key_file": pki["dc1-server-consul-0-key.pem"]})  # fmt: skip
    settings = load_tls_settings(cfg)
    # CVE-2018-19653: verify_server_hostname must imply verify_outgoing.
    assert settings.internal_rpc.verify_outgoing and not settings.https.verify_server_hostname
    _, client_ctx, _, _ = rpc_contexts(settings)
    assert client_ctx is not None and client_ctx.verify_mode == ssl.CERT_REQUIRED and client_ctx.check_hostname
    for bad, words in (
        ({"verify_incoming": True}, "verify_incoming needs"),
        ({"cert_file": pki["dc1-server-consul-0.pem"]}, "must be set together"),
        ({"verify_outgoing": True}, "verify_outgoing needs"),
        ({"tls": {"defaults": {"verify_incoming": "yes"}}}, "must be true or false"),
        ({"tls": {"defaults": {"tls_min_version": "ssl3"}}}, "tls_min_version"),
        ({"tls": {"internal_rpc": {"verify_server_hostname": True, "ca_file": pki["consul-agent-ca.pem"]}}},
         "verify_server_hostname needs"),
    ):  # fmt: skip
        cfg = Config(node_name="n1")
        apply_mapping(cfg, bad)
        with pytest.raises(ConfigError, match=words):
            rpc_contexts(cfg)


def _start(args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([BIN, "agent", "-serf-lan-port", "0", *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait(url: str, proc: subprocess.Popen[bytes], ok: object, timeout: float = 30) -> object:
    import json
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "exited"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                body = json.loads(r.read())
                if ok(body):  # type: ignore[operator]
                    return body
        except OSError:
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {url}"
        time.sleep(0.1)


@pytest.mark.slow
async def test_server_port_over_mtls_in_a_real_cluster(pki: Pki, tmp_path: Path) -> None:
    """A real server and a real client agent with Consul's TLS settings: Raft and RPC run over mutual
    TLS, the client agent (client certificate) joins through RPC, and on the server port a Raft stream
    is accepted from a server certificate and dropped for the client's certificate."""
    import json

    from registry.testing import free_port

    def config(cert: str) -> Path:
        path = tmp_path / f"{cert}.json"
        path.write_text(json.dumps({"tls": {
            "defaults": {"ca_file": pki["consul-agent-ca.pem"], "cert_file": pki[f"{cert}.pem"],
                         "key_file": pki[f"{cert}-key.pem"], "verify_incoming": True, "verify_outgoing": True},
            "internal_rpc": {"verify_server_hostname": True}}}))  # fmt: skip
        return path

    server_port, http_port, client_http = free_port(), free_port(), free_port()
    server = _start(["-server", "-insecure", "-bootstrap-expect", "1", "-node", "s1", "-data-dir", str(tmp_path / "s1"),
                     "-bind", "127.0.0.1", "-server-port", str(server_port), "-http-port", str(http_port),
                     "-dns-port", "-1", "-config-file", str(config("dc1-server-consul-0"))], tmp_path)  # fmt: skip
    client = None
    try:
        _wait(f"http://127.0.0.1:{http_port}/v1/connect/ca/roots", server, lambda b: bool(b["Roots"]))
        client = _start(["-node", "c1", "-data-dir", str(tmp_path / "c1"), "-bind", "127.0.0.1",
                         "-retry-join", f"127.0.0.1:{server_port}", "-http-port", str(client_http), "-dns-port", "-1",
                         "-encrypt", GOSSIP_KEY, "-config-file", str(config("dc1-client-consul-0"))], tmp_path)  # fmt: skip
        nodes = _wait(f"http://127.0.0.1:{http_port}/v1/catalog/nodes", server,
                      lambda b: {n["Node"] for n in b} >= {"s1", "c1"})  # fmt: skip
        assert {n["Node"] for n in nodes} >= {"s1", "c1"}  # type: ignore[attr-defined]

        async def raft_stream_stays_open(cert: str) -> bool:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.load_verify_locations(pki["consul-agent-ca.pem"])
            ctx.load_cert_chain(pki[f"{cert}.pem"], pki[f"{cert}-key.pem"])
            reader, writer = await asyncio.open_connection("127.0.0.1", server_port, ssl=ctx,
                                                           server_hostname="server.dc1.consul")  # fmt: skip
            writer.write(b"R")
            await writer.drain()
            try:
                data = await asyncio.wait_for(reader.read(1), 1.0)
                return data != b""
            except TimeoutError:
                return True  # still open: the server is waiting for Raft frames
            except ConnectionError:
                return False
            finally:
                writer.close()

        assert await raft_stream_stays_open("dc1-server-consul-0") is True
        assert await raft_stream_stays_open("dc1-client-consul-0") is False
    finally:
        for proc in (client, server):
            if proc is not None:
                proc.terminate()
                proc.wait(15)


def test_agent_refuses_tls_settings_that_cannot_work(pki: Pki, tmp_path: Path) -> None:
    import json

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"tls": {"defaults": {"verify_incoming": True}}}))
    out = subprocess.run([BIN, "agent", "-serf-lan-port", "0", "-server", "-bootstrap-expect", "1", "-data-dir", str(tmp_path / "d"),
                          "-config-file", str(bad)], capture_output=True, text=True, timeout=30)  # fmt: skip
    assert out.returncode == 1 and "verify_incoming needs ca_file" in out.stderr
    bad.write_text(json.dumps({"connect": {"ca_config": {"leaf_cert_ttl": "10m"}}}))
    out = subprocess.run([BIN, "agent", "-dev", "-serf-lan-port", "0", "-config-file", str(bad)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "connect.ca_config: leaf cert TTL must be greater or equal than 1h0m0s" in out.stderr
