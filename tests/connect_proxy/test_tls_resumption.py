"""TLS session resumption between sidecars (connect_proxy.tls): a second connection resumes, and what a
full handshake would have refused is still refused on a resumed one: a source an intention now denies,
a client certificate past its NotAfter, and any session from before a leaf or roots rotation (the new
SSLContext cannot open the old tickets: a full handshake, which works).

The "client" that offers sessions to the public listener is either the web sidecar or a plain Python
TLS client holding a real leaf from the dev agent's CA, whose ``session_reused`` says what the
handshake did."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from conftest import TRAILER, register_proxy, roundtrip, wait_for
from structlog.testing import capture_logs

from ca import certs, provider
from ca.csr import make_csr
from ca.spiffe import ServiceIdentity
from connect_proxy import identity
from connect_proxy.tls import SessionCache, client_context, server_context
from connect_proxy.upstream import Instance
from registry.testing.agent import free_port

# ------------------------------------------------------------------------------ a plain TLS client


def _client_ctx(tmp: Path, chain: str, key: str, roots: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=roots)
    (tmp / "c.pem").write_text(chain)
    (tmp / "k.pem").write_text(key)
    ctx.load_cert_chain(tmp / "c.pem", tmp / "k.pem")
    return ctx


def _exchange(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None,
              payload: bytes) -> tuple[bytes, bool, ssl.SSLSession | None]:  # fmt: skip
    """Handshake (offering ``session``), send ``payload``, read until as many bytes came back or the
    connection ended: (what came back, whether the handshake resumed, the session to offer next)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            tls = ctx.wrap_socket(raw, session=session)
        except (ssl.SSLError, OSError):
            return b"", False, None
        with tls:
            reused = tls.session_reused
            got = b""
            try:
                tls.sendall(payload)
                while len(got) < len(payload):
                    chunk = tls.recv(len(payload) - len(got))
                    if not chunk:
                        break
                    got += chunk
            except (ssl.SSLError, OSError):
                pass
            return got, reused, tls.session


async def exchange(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None,
                   payload: bytes = b"ping") -> tuple[bytes, bool, ssl.SSLSession | None]:  # fmt: skip
    return await asyncio.to_thread(_exchange, port, ctx, session, payload)


async def _roots_pem(http: Any) -> str:  # noqa: ANN401
    _, roots = await http("GET", "/v1/agent/connect/ca/roots")
    return "".join(r["RootCert"] for r in roots["Roots"])


async def _web_ctx(http: Any, tmp: Path) -> ssl.SSLContext:  # noqa: ANN401
    _, leaf = await http("GET", "/v1/agent/connect/ca/leaf/web")
    return _client_ctx(tmp, leaf["CertPEM"], leaf["PrivateKeyPEM"], await _roots_pem(http))


async def _pair(start_proxy: Any, http: Any, echo: Any) -> tuple[Any, Any, int]:  # noqa: ANN401
    server = await start_proxy("db", local_port=echo.port)
    await register_proxy(http, "db", server.public_addr[1])
    client = await start_proxy("web", public=False, upstreams={"db": 0})
    return server, client, client.upstream_addrs["db"][1]


# ------------------------------------------------------------------------------ sidecar to sidecar


async def test_the_second_connection_between_sidecars_resumes_and_sessions_go_with_the_instance(
        agent, http, echo, start_proxy) -> None:  # noqa: ANN001  # fmt: skip
    server, client, port = await _pair(start_proxy, http, echo)
    assert await roundtrip(port, b"first") == b"first" + TRAILER
    inst = Instance("127.0.0.1", server.public_addr[1])
    await wait_for(lambda: inst in client.tls_sessions, what="the first connection's session kept")
    assert client.stats["outbound_resumed"] == 0 and server.stats["inbound_resumed"] == 0

    for i in range(3):
        assert await roundtrip(port, b"again") == b"again" + TRAILER
        assert client.stats["outbound_resumed"] == i + 1
        await wait_for(
            lambda i=i: server.stats["inbound_resumed"] == i + 1, what="the server saw a resumption"
        )
    assert server.stats["inbound_accepted"] == 4 and echo.connections == 4
    assert client.metrics.value("proconsul_proxy_tls_resumed_total", ("db",)) == 3
    assert server.metrics.value("proconsul_proxy_tls_resumed_total", ("public",)) == 3

    # The instance leaves the catalog: its session is forgotten with it.
    status, _ = await http("PUT", "/v1/agent/service/deregister/db-sidecar-proxy")
    assert status == 200
    await wait_for(lambda: inst not in client.tls_sessions, what="the session dropped with the instance")


async def test_a_plain_client_resumes_and_getpeercert_names_it(
    agent, http, echo, start_proxy, tmp_path
) -> None:  # noqa: ANN001
    server = await start_proxy("db", local_port=echo.port)
    port = server.public_addr[1]
    ctx = await _web_ctx(http, tmp_path)
    got, reused, session = await exchange(port, ctx)
    assert (got, reused) == (b"ping", False)
    assert session is not None and session.has_ticket
    with capture_logs() as logs:
        got, reused, _ = await exchange(port, ctx, session)
    assert (got, reused) == (b"ping", True)
    assert server.stats["inbound_resumed"] == 1 and server.stats["inbound_accepted"] == 2
    assert not [e for e in logs if e["event"] == "inbound connection refused"]


async def test_a_resumed_connection_from_a_source_an_intention_now_denies_is_refused(
        agent, http, echo, start_proxy, tmp_path) -> None:  # noqa: ANN001  # fmt: skip
    server, client, port = await _pair(start_proxy, http, echo)
    ctx = await _web_ctx(http, tmp_path)
    got, _, session = await exchange(server.public_addr[1], ctx)
    assert got == b"ping" and session is not None
    assert await roundtrip(port, b"x") == b"x" + TRAILER  # the web sidecar keeps a session too
    inst = Instance("127.0.0.1", server.public_addr[1])
    await wait_for(lambda: inst in client.tls_sessions, what="the sidecar's session kept")

    status, text = await http(
        "PUT", "/v1/connect/intentions/exact", {"Action": "deny"}, source="web", destination="db"
    )
    assert status == 200, text
    web = ServiceIdentity(server.contexts.trust_domain, "default", "dc1", "web")
    await wait_for(lambda: not server.authz.decide(web).allowed, what="the deny intention at the server")

    with capture_logs() as logs:
        got, reused, _ = await exchange(server.public_addr[1], ctx, session)
        assert reused and got == b""  # resumed, then refused before a byte reached the app
        assert await roundtrip(port, b"let me in") == b""
        await wait_for(lambda: server.stats["inbound_refused"] == 2, what="both refusals")
    assert client.stats["outbound_resumed"] == 1
    assert server.stats["inbound_resumed"] == 2
    refusals = [e for e in logs if e["event"] == "inbound connection refused"]
    assert len(refusals) == 2 and all("not authorized" in e["reason"] for e in refusals), refusals
    assert echo.connections == 2  # the two connections before the intention


async def test_after_a_ca_rotation_old_sessions_are_not_resumed_and_a_full_handshake_works(
        agent, http, echo, start_proxy, tmp_path) -> None:  # noqa: ANN001  # fmt: skip
    server, client, port = await _pair(start_proxy, http, echo)
    ctx = await _web_ctx(http, tmp_path)
    got, _, session = await exchange(server.public_addr[1], ctx)
    assert got == b"ping"
    got, reused, session = await exchange(server.public_addr[1], ctx, session)
    assert (got, reused) == (b"ping", True)
    assert await roundtrip(port, b"a") == b"a" + TRAILER
    assert await roundtrip(port, b"b") == b"b" + TRAILER
    assert client.stats["outbound_resumed"] == 1
    old = (server.contexts, client.contexts)

    status, text = await http("PUT", "/v1/connect/ca/configuration",
                              {"Provider": "consul", "Config": {"PrivateKeyType": "ec", "PrivateKeyBits": 384}})  # fmt: skip
    assert status == 200, text

    def rotated() -> bool:
        return all(len(p.contexts.root_ids) == 2 and p.contexts.leaf_serial != o.leaf_serial
                   and p.contexts.root_ids != o.root_ids for p, o in zip((server, client), old, strict=True))  # fmt: skip

    await wait_for(rotated, 15, "both sidecars to load the new roots and leaves")
    assert len(client.tls_sessions) == 0  # dropped with the old client context

    # The plain client still offers its old session (and now trusts the new root too): the server's new
    # context cannot open the old ticket, so the handshake is a full one, and it works.
    ctx.load_verify_locations(cadata=await _roots_pem(http))
    resumed_before = server.stats["inbound_resumed"]
    got, reused, session = await exchange(server.public_addr[1], ctx, session)
    assert (got, reused) == (b"ping", False)
    got, reused, _ = await exchange(server.public_addr[1], ctx, session)  # and the new session resumes
    assert (got, reused) == (b"ping", True)

    # The sidecar pair: a full handshake first, then resumption again with the new contexts.
    assert await roundtrip(port, b"c") == b"c" + TRAILER
    assert client.stats["outbound_resumed"] == 1
    inst = Instance("127.0.0.1", server.public_addr[1])
    await wait_for(lambda: inst in client.tls_sessions, what="a session of the new context kept")
    assert await roundtrip(port, b"d") == b"d" + TRAILER
    assert client.stats["outbound_resumed"] == 2
    await wait_for(
        lambda: server.stats["inbound_resumed"] == resumed_before + 2, what="the two new resumptions"
    )


def _short_leaf(agent: Any, service: str, seconds: int) -> tuple[str, str, float]:  # noqa: ANN401
    """A leaf for ``service`` from the agent's own CA that expires ``seconds`` from now: (chain, key,
    NotAfter as epoch seconds)."""
    state = agent.agent.connect.ca_state()
    key = certs.generate_key()
    ident = ServiceIdentity(state.trust_domain, "default", "dc1", service)
    leaf = provider.sign_leaf(state, make_csr(key, ident), ident, datetime.now(UTC), timedelta(seconds=seconds),
                              os.urandom)  # fmt: skip
    return leaf.chain_pem, certs.private_key_to_pem(key), leaf.valid_before.timestamp()


@pytest.mark.parametrize("protocol", ["tcp", "http"])
async def test_a_resumed_session_whose_client_certificate_has_expired_is_refused(
        agent, http, echo, start_proxy, tmp_path, protocol) -> None:  # noqa: ANN001  # fmt: skip
    app_port = echo.port
    if protocol == "http":
        status, text = await http(
            "PUT", "/v1/config", {"Kind": "service-defaults", "Name": "db", "Protocol": "http"}
        )
        assert status == 200, text
        app = web.Application()

        async def ok(request: web.Request) -> web.StreamResponse:
            return web.Response(text="ok")

        app.router.add_route("*", "/{tail:.*}", ok)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        app_port = free_port()
        await web.TCPSite(runner, "127.0.0.1", app_port).start()
    server = await start_proxy("db", local_port=app_port)
    if protocol == "http":
        await wait_for(lambda: server.local_protocol == "http", what="the public listener in HTTP mode")
    port = server.public_addr[1]
    chain, key, not_after = _short_leaf(agent, "web", 3)
    ctx = _client_ctx(tmp_path, chain, key, await _roots_pem(http))
    payload = b"GET / HTTP/1.1\r\nHost: db\r\n\r\n" if protocol == "http" else b"ping"
    try:
        got, reused, session = await exchange(port, ctx, None, payload)
        assert not reused and (got.startswith(b"HTTP/1.1 200") if protocol == "http" else got == b"ping")
        assert session is not None and session.has_ticket
        got, reused, session = await exchange(port, ctx, session, payload)
        assert reused and (got.startswith(b"HTTP/1.1 200") if protocol == "http" else got == b"ping")

        await wait_for(lambda: time.time() > not_after + 0.5, 10, "the client certificate to expire")
        with capture_logs() as logs:
            got, reused, _ = await exchange(port, ctx, session, payload)
            assert reused, "the server resumed the session: only the sidecar's own check stands in the way"
            assert got == b""
            await wait_for(
                lambda: any(e["event"] == "inbound connection refused" for e in logs), what="the refusal"
            )
        assert any("expired" in e["reason"] for e in logs if e["event"] == "inbound connection refused"), logs
        # A full handshake with it is refused by OpenSSL itself, as before.
        got, reused, _ = await exchange(port, ctx, None, payload)
        assert got == b"" and not reused
    finally:
        if protocol == "http":
            await runner.cleanup()


async def test_http_mode_upstream_connections_resume(agent, http, start_proxy) -> None:  # noqa: ANN001
    """The HTTP data plane's upstream connections (connect_proxy.http.engine.ClientConn) resume too: one
    request makes the first connection (full handshake, its session kept), then three at once need two
    more connections besides the idle one, and those resume."""
    for name in ("db", "web"):
        status, text = await http(
            "PUT", "/v1/config", {"Kind": "service-defaults", "Name": name, "Protocol": "http"}
        )
        assert status == 200, text

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path == "/slow":
            await asyncio.sleep(0.3)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    app_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", app_port).start()
    try:
        server = await start_proxy("db", local_port=app_port)
        await register_proxy(http, "db", server.public_addr[1])
        client = await start_proxy("web", public=False, upstreams={"db": 0})
        state = client.upstreams["db"]
        await wait_for(lambda: state.chain is not None and state.chain.protocol == "http" and state.ready.is_set(),
                       what="the upstream in HTTP mode")  # fmt: skip
        await wait_for(lambda: server.local_protocol == "http", what="the public listener in HTTP mode")
        url = f"http://127.0.0.1:{client.upstream_addrs['db'][1]}"
        inst = Instance("127.0.0.1", server.public_addr[1])
        async with ClientSession() as session:
            async with session.get(url + "/") as resp:
                assert resp.status == 200 and await resp.text() == "ok"
            await wait_for(lambda: inst in client.tls_sessions, what="the first connection's session kept")

            async def slow() -> None:
                async with ClientSession() as own, own.get(url + "/slow") as resp:
                    assert resp.status == 200 and await resp.text() == "ok"

            await asyncio.gather(slow(), slow(), slow())
        assert client.metrics.value("proconsul_proxy_tls_resumed_total", ("db",)) >= 2
        assert server.metrics.value("proconsul_proxy_tls_resumed_total", ("public",)) >= 2
    finally:
        await runner.cleanup()


# ------------------------------------------------------------------------------ the session cache (pure)


class _FakeSession:
    def __init__(self, lifetime: int = 7200) -> None:
        self.ticket_lifetime_hint = lifetime
        self.timeout = 7200


def _ctx() -> ssl.SSLContext:
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def test_the_cache_offers_a_session_only_with_its_context_and_before_the_peer_certificate_expires() -> None:
    cache = SessionCache()
    ctx, other = _ctx(), _ctx()
    a = Instance("10.0.0.1", 21000)
    s = _FakeSession()
    cache.put(a, ctx, s, not_after=1000.0, now=100.0)  # type: ignore[arg-type]
    assert cache.get(a, ctx, 200.0) is s
    assert cache.get(a, ctx, 1000.0) is s  # NotAfter itself is still valid
    assert cache.get(a, ctx, 1000.5) is None and a not in cache  # expired: dropped, never offered
    cache.put(a, ctx, s, not_after=5000.0, now=100.0)  # type: ignore[arg-type]
    assert cache.get(a, other, 200.0) is None and a not in cache  # another context (rotation): dropped
    cache.put(a, ctx, _FakeSession(lifetime=60), not_after=5000.0, now=100.0)  # type: ignore[arg-type]
    assert cache.get(a, ctx, 159.0) is not None
    assert cache.get(a, ctx, 160.0) is None  # the ticket's lifetime is over
    cache.put(a, ctx, s, not_after=50.0, now=100.0)  # type: ignore[arg-type]
    assert a not in cache  # a session whose peer certificate has already expired is not even kept


def test_the_cache_is_bounded_lru_keeps_one_per_instance_and_forgets_what_is_gone() -> None:
    cache = SessionCache(max_entries=3, refresh=600.0)
    ctx = _ctx()
    insts = [Instance("10.0.0.1", 21000 + i) for i in range(4)]
    for i in insts[:3]:
        cache.put(i, ctx, _FakeSession(), 10_000.0, 0.0)  # type: ignore[arg-type]
    assert cache.get(insts[0], ctx, 1.0) is not None  # used: now the most recent
    cache.put(insts[3], ctx, _FakeSession(), 10_000.0, 1.0)  # type: ignore[arg-type]
    assert len(cache) == 3 and insts[1] not in cache and insts[0] in cache
    newer = _FakeSession()
    cache.put(insts[0], ctx, newer, 10_000.0, 2.0)  # type: ignore[arg-type]
    assert len(cache) == 3 and cache.get(insts[0], ctx, 3.0) is newer  # one per instance: replaced
    assert not cache.wants(insts[0], ctx, 3.0) and cache.wants(insts[0], ctx, 602.0)
    assert cache.wants(insts[1], ctx, 3.0) and cache.wants(insts[0], _ctx(), 3.0)
    cache.retain({insts[0]})
    assert len(cache) == 1 and insts[0] in cache
    cache.drop(insts[0])
    cache.clear()
    assert len(cache) == 0


def test_expiry_is_checked_from_the_decoded_certificate() -> None:
    cert = {"notAfter": "Dec  7 12:00:00 2026 GMT"}
    t = identity.not_after(cert)
    assert t == ssl.cert_time_to_seconds("Dec  7 12:00:00 2026 GMT")
    identity.check_not_expired(cert, t)
    with pytest.raises(identity.IdentityError, match="expired at 2026-12-07T12:00:00Z"):
        identity.check_not_expired(cert, t + 1)
    with pytest.raises(identity.IdentityError):
        identity.check_not_expired({}, 0.5)  # no NotAfter at all: refused
    with pytest.raises(identity.IdentityError):
        identity.check_not_expired(None, 0.5)


def test_the_public_context_issues_one_ticket_and_contexts_do_not_share_ticket_keys(tmp_path: Path) -> None:
    """In memory, no sockets: a session from one server context resumes on it but not on a context
    rebuilt from the same leaf and roots (fresh ticket keys), which falls back to a full handshake."""
    ca = provider.initialize("11111111-2222-4333-8444-555555555555", provider.CAConfig(), datetime.now(UTC),
                             os.urandom)  # fmt: skip
    leaves = {}
    for svc in ("db", "web"):
        key = certs.generate_key()
        ident = ServiceIdentity(ca.trust_domain, "default", "dc1", svc)
        leaves[svc] = (provider.sign_leaf(ca, make_csr(key, ident), ident, datetime.now(UTC), None, os.urandom).chain_pem,
                       certs.private_key_to_pem(key))  # fmt: skip
    roots = [ca.active_root.root_cert_pem]
    first = server_context(*leaves["db"], roots)
    rebuilt = server_context(*leaves["db"], roots)
    cctx = client_context(*leaves["web"], roots)
    assert first.num_tickets == 1 and not first.options & ssl.OP_NO_TICKET

    def connect(
        sctx: ssl.SSLContext, session: ssl.SSLSession | None
    ) -> tuple[bool, ssl.SSLSession, dict[str, Any]]:
        c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
        c = cctx.wrap_bio(c_in, c_out, session=session)
        s = sctx.wrap_bio(s_in, s_out, server_side=True)
        for _ in range(10):
            for obj in (c, s):
                try:
                    obj.do_handshake()
                except ssl.SSLWantReadError:
                    pass
            s_in.write(c_out.read())
            c_in.write(s_out.read())
        s.write(b"x")
        c_in.write(s_out.read())
        assert c.read(1) == b"x"  # the ticket came before it
        return c.session_reused, c.session, s.getpeercert()

    reused, session, peer = connect(first, None)
    assert not reused and session.has_ticket
    assert identity.uri_sans(peer) == [ServiceIdentity(ca.trust_domain, "default", "dc1", "web").uri()]
    reused, _, peer = connect(first, session)
    assert reused  # and the server still names the client from the session's certificate:
    assert identity.uri_sans(peer) == [ServiceIdentity(ca.trust_domain, "default", "dc1", "web").uri()]
    reused, _, _ = connect(rebuilt, session)
    assert not reused
