"""Who may connect: a client without a certificate, with one from another CA, or with a non-service
identity is refused before the app sees anything; a server proxy with the wrong identity is refused by
the client side; the agent being down is retried with backoff and said in the logs."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from conftest import register_proxy, roundtrip, wait_for
from structlog.testing import capture_logs

from ca import certs, provider
from ca.csr import make_csr
from ca.spiffe import ServiceIdentity
from connect_proxy.agent import AgentClient
from connect_proxy.config import ProxyConfig
from connect_proxy.proxy import Proxy
from registry.testing.agent import free_port


def _client_ctx(tmp: Path, chain: str | None, key: str | None, roots: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=roots)
    if chain and key:
        (tmp / "c.pem").write_text(chain)
        (tmp / "k.pem").write_text(key)
        ctx.load_cert_chain(tmp / "c.pem", tmp / "k.pem")
    return ctx


async def _try(port: int, ctx: ssl.SSLContext) -> bytes:
    """Handshake with the public listener and ask for an echo; what comes back (b"" when refused)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    except (ssl.SSLError, OSError):
        return b""
    try:
        writer.write(b"ping")
        await writer.drain()
        return await asyncio.wait_for(reader.read(4), 5)
    except (ssl.SSLError, OSError):
        return b""
    finally:
        writer.close()


async def _roots_pem(http) -> str:  # noqa: ANN001
    _, roots = await http("GET", "/v1/agent/connect/ca/roots")
    return "".join(r["RootCert"] for r in roots["Roots"])


async def test_clients_without_a_mesh_certificate_are_refused(agent, http, echo, start_proxy, tmp_path) -> None:  # noqa: ANN001
    server = await start_proxy("db", local_port=echo.port)
    port = server.public_addr[1]
    roots = await _roots_pem(http)

    # Control: a genuine "web" leaf gets through, so the refusals below are about the certificate.
    _, leaf = await http("GET", "/v1/agent/connect/ca/leaf/web")
    assert await _try(port, _client_ctx(tmp_path, leaf["CertPEM"], leaf["PrivateKeyPEM"], roots)) == b"ping"
    assert echo.connections == 1

    # No client certificate at all.
    assert await _try(port, _client_ctx(tmp_path, None, None, roots)) == b""
    # A leaf for "web" from another cluster's CA (same shape, same service name).
    foreign = provider.initialize("99999999-2222-4333-8444-555555555555", provider.CAConfig(), datetime.now(UTC),
                                  os.urandom)  # fmt: skip
    key = certs.generate_key()
    fid = ServiceIdentity(foreign.trust_domain, "default", "dc1", "web")
    fleaf = provider.sign_leaf(foreign, make_csr(key, fid), fid, datetime.now(UTC), None, os.urandom)
    assert await _try(port, _client_ctx(tmp_path, fleaf.chain_pem, certs.private_key_to_pem(key), roots)) == b""
    await wait_for(lambda: server.stats["inbound_refused"] == 2, what="two refusals")
    assert echo.connections == 1

    if shutil.which("openssl"):
        proc = await asyncio.create_subprocess_exec(
            "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-quiet", "-verify_quiet",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(b"ping\n"), 15)
        assert b"ping" not in out
        assert proc.returncode != 0 or b"alert" in err.lower() or out == b""
        await wait_for(lambda: server.stats["inbound_refused"] == 3, what="openssl refused")
    assert echo.connections == 1


async def test_a_client_with_an_agent_identity_is_refused(agent, http, echo, start_proxy, tmp_path) -> None:  # noqa: ANN001
    # Signed by our own CA, right trust domain, but an agent identity: not a service, so refused.
    server = await start_proxy("db", local_port=echo.port)
    state = agent.agent.connect.ca_state()
    key = certs.generate_key()
    from ca.spiffe import AgentIdentity

    aid = AgentIdentity(state.trust_domain, "dc1", "node1")
    leaf = provider.sign_leaf(state, make_csr(key, aid), aid, datetime.now(UTC), None, os.urandom)
    ctx = _client_ctx(tmp_path, leaf.chain_pem, certs.private_key_to_pem(key), await _roots_pem(http))
    assert await _try(server.public_addr[1], ctx) == b""
    await wait_for(lambda: server.stats["inbound_refused"] == 1, what="refusal")
    assert echo.connections == 0


async def test_a_server_proxy_with_the_wrong_identity_is_refused_by_the_client(agent, http, echo, start_proxy) -> None:  # noqa: ANN001
    # "db" is registered at a port where a proxy for "evil" listens: valid chain, wrong URI SAN.
    evil = await start_proxy("evil", local_port=echo.port)
    await register_proxy(http, "db", evil.public_addr[1])
    client = await start_proxy("web", public=False, upstreams={"db": 0})
    with capture_logs() as logs:
        assert await roundtrip(client.upstream_addrs["db"][1], b"secret") == b""
    assert client.stats["outbound_failed"] == 1 and client.stats["outbound_ok"] == 0
    assert any(e["event"] == "upstream dial failed" and "svc/evil" in e["error"] for e in logs), logs
    assert echo.connections == 0


async def test_a_failed_dial_tries_another_instance(agent, http, echo, start_proxy) -> None:  # noqa: ANN001
    server = await start_proxy("db", local_port=echo.port)
    await register_proxy(http, "db", server.public_addr[1], "db-proxy-1")
    await register_proxy(http, "db", free_port(), "db-proxy-dead")  # registered, passing, nobody listening
    client = await start_proxy("web", public=False, upstreams={"db": 0})
    await wait_for(lambda: sum(len(p) for p in client.upstreams["db"].pools.values()) == 2, what="two instances")
    for _ in range(6):  # whichever instance is picked first, every connection gets through
        assert await roundtrip(client.upstream_addrs["db"][1], b"x") == b"x<eof seen>"
    assert client.stats["outbound_ok"] == 6


async def test_an_unreachable_agent_is_retried_with_backoff_and_logged() -> None:
    cfg = ProxyConfig(service="web", public=None, upstreams=())
    proxy = Proxy(cfg, AgentClient(f"http://127.0.0.1:{free_port()}"), retry_first=0.01, retry_cap=0.04)
    with capture_logs() as logs:
        task = asyncio.create_task(proxy.start())
        await wait_for(lambda: sum(e["event"] == "agent unreachable, retrying" and "roots" in e["what"] for e in logs) >= 4,
                       what="retries")  # fmt: skip
        assert not task.done() and not proxy.ready.is_set()
        task.cancel()
        await proxy.stop()
    assert logs[0]["event"] == "waiting for the first leaf certificate and CA roots from the agent"
    delays = [e["retry_in"] for e in logs if e["event"] == "agent unreachable, retrying" and "roots" in e["what"]]
    assert delays[:3] == [0.01, 0.02, 0.04] and max(delays) == 0.04
