"""The agent's listeners: where sockets are bound for the HTTP API (plain and TLS) and for DNS.

Only the agent -- the composition root -- imports this module. Each listener gets what it serves, built
by the agent from narrow parts (an ``Api`` built from the route table, a store reader), never the agent
itself. The HTTP and HTTPS ports are two sites of one aiohttp runner around one ``Api``, as Consul serves
one ``http.Handler`` on both: the same routes, caches and watch-hub listener, whichever port a request
came in on.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import socket
import ssl
from collections.abc import Callable
from typing import Any, Protocol

import structlog
from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler

from dns.config import from_agent_config
from dns.engine import Engine
from dns.server import DNSListener, DNSServer
from registry.acl.authorizer import Authorizer
from registry.acl.errors import ACLNotFound
from registry.acl.resolver import StaticResolver, TokenResolver
from registry.agent.acl import ServerResolver
from registry.agent.dns_acl import DNSToken
from registry.api.http import Api
from registry.config import Config, ConfigError, Limits
from registry.metrics import Metrics
from registry.state.store import StateStore
from registry.tls import https_server_context, load_tls_settings

log = structlog.get_logger("proconsul.agent")
dns_log = structlog.get_logger("proconsul.dns")

BACKLOG = 1024  # aiohttp's default of 128 drops connection bursts
HTTP_SHUTDOWN_TIMEOUT = 0.25  # in-flight requests get this long once the sockets stop accepting


class Listener(Protocol):
    async def close(self) -> None: ...


# What go-connlimit writes before closing a connection over the per-client limit (Consul loads it with
# HTTPConnStateFuncWithDefault429Handler): a bare 429 the client can read, then the close.
TOO_MANY_CONNECTIONS = b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

# The longest request line accepted: Go's http.DefaultMaxHeaderBytes (1 MiB, which Consul's HTTP server keeps)
# plus the 4 KiB Go reads beyond it, so the long ?filter= expressions, keys and tag lists a Consul agent takes
# are taken here too (aiohttp's default, 8,190 bytes, refused them). Longer lines get Go's bare 431. Header
# fields keep aiohttp's 8,190 bytes and 128 headers, so a connection holds at most about 2 MiB of head.
MAX_REQUEST_LINE = (1 << 20) + 4096


class _Request(web.BaseRequest):
    """A request whose answers carry no ``Server`` header. aiohttp adds ``Server: Python/<version>
    aiohttp/<version>`` to every response, which tells anyone who can reach the port which library
    versions (and so which of their CVEs) to try; Consul's server sends no such header either. This hook
    runs after aiohttp has set its headers and before they are written."""

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        response.headers.popall("Server", None)


class GuardedServer(web.Server):
    """aiohttp's low-level server with the limits Consul puts around its HTTP server (CVE-2020-7219: a flood
    of connections must not exhaust the agent):

    - ``max_conns_per_client`` (``limits.http_max_conns_per_client``, 0 for none): a connection from an IP
      that already holds that many is answered 429 and closed at accept, before any request is read. The
      addresses of member agents are exempt (``exempt``): a client agent forwards each of its callers'
      blocking queries to a server over its own connection, where Consul's agents use RPC, which this
      limit does not cover either;
    - ``read_timeout`` (``limits.http_read_timeout``): a client must finish sending a request's headers
      within it of connecting or of its previous response (aiohttp's keep-alive timer, which closes a
      connection whose handler still waits for a request: a client trickling headers byte by byte is cut
      off), and may pause no longer than it while sending a body (``Api.read_body``, which reads the same
      limit from the config);
    - a request line may be as long as Go's server takes one (``MAX_REQUEST_LINE``);
    - requests the HTTP parser rejects (a line or header too long, bad framing) are answered with Go's
      bare texts and logged without their bytes: the rejected line may carry ``?token=``;
    - no answer names the server's software (``_Request``).
    """

    def __init__(self, handler: Callable[..., object], *, max_conns_per_client: int, read_timeout: float,
                 exempt: Callable[[str], bool] = lambda ip: False) -> None:  # fmt: skip
        # After an early answer (413, 408) aiohttp reads and drops the rest of the body for lingering_time
        # (10 s) before closing: never longer than a client may pause.
        super().__init__(handler, access_log=None, keepalive_timeout=read_timeout,  # type: ignore[arg-type]
                         lingering_time=min(read_timeout, 10.0), max_line_size=MAX_REQUEST_LINE)  # fmt: skip
        self.max_conns_per_client = max_conns_per_client
        self.exempt = exempt
        self.read_timeout = read_timeout
        self.per_client: dict[str, int] = {}
        self.refused = 0

    def __call__(self) -> RequestHandler:
        return GuardedHandler(self, loop=self._loop, **self._kwargs)

    def _make_request(self, message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
        return _Request(message, payload, protocol, writer, task, self._loop)


class GuardedHandler(RequestHandler):
    """One connection of a ``GuardedServer``."""

    def __init__(self, manager: GuardedServer, **kwargs: object) -> None:
        super().__init__(manager, **kwargs)  # type: ignore[arg-type]
        self._guard = manager
        self._client: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        guard = self._guard
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if peer else ""
        held = guard.per_client.get(ip, 0)
        if guard.max_conns_per_client and held >= guard.max_conns_per_client and not guard.exempt(ip):
            guard.refused += 1
            if guard.refused == 1 or guard.refused % 1000 == 0:
                log.warning("refusing HTTP connections over limits.http_max_conns_per_client", client=ip,
                            limit=guard.max_conns_per_client, refused_total=guard.refused)  # fmt: skip
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(TOO_MANY_CONNECTIONS)
            transport.close()
            return
        guard.per_client[ip] = held + 1
        self._client = ip
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        ip = self._client
        if ip is None:
            return  # refused at accept: aiohttp never saw it
        self._client = None
        left = self._guard.per_client.get(ip, 1) - 1
        if left > 0:
            self._guard.per_client[ip] = left
        else:
            self._guard.per_client.pop(ip, None)
        super().connection_lost(exc)

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:  # fmt: skip
        """aiohttp answers a request its parser rejects with the parser's message, which quotes the
        offending bytes (a request line with ``?token=...``), and logs it with them; answer and log as Go's
        server does instead, with the status only."""
        if isinstance(exc, LineTooLong) or status == 431:
            status, text = 431, "431 Request Header Fields Too Large"
        elif status == 500:
            text = "500 Internal Server Error"
        else:
            text = f"{status} Bad Request" if status == 400 else f"{status} Error"
        log.info("rejected a malformed HTTP request", client=request.remote, status=status,
                 error=type(exc).__name__ if exc is not None else None)  # fmt: skip
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        resp = web.Response(status=status, text=text)
        resp.force_close()
        return resp


class APIServer:
    """One ``Api`` behind aiohttp's low-level server, and the sockets (HTTP, HTTPS) it is served on.

    ``Api.dispatch`` does its own routing, so the Application's router and middleware chain would only add
    cost to every request (about a fifth of a cached discovery answer's time)."""

    def __init__(self, api: Api, shutdown_timeout: float = HTTP_SHUTDOWN_TIMEOUT,
                 exempt: Callable[[str], bool] = lambda ip: False) -> None:  # fmt: skip
        self.api = api
        limits = api.config.limits
        server = GuardedServer(api.dispatch, max_conns_per_client=limits.http_max_conns_per_client,
                               read_timeout=limits.http_read_timeout, exempt=exempt)  # fmt: skip
        self.guard = server
        self.runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=shutdown_timeout)
        self._set_up = False

    def set_limits(self, limits: Limits) -> None:
        """A config reload's limits, as Consul's reload sets its connection limiter and rate limiter:
        ``http_max_conns_per_client`` for connections accepted from now on, ``request_limits`` for the
        requests that follow."""
        self.guard.max_conns_per_client = limits.http_max_conns_per_client
        self.api.set_request_limits(limits)

    async def _setup(self) -> None:
        if not self._set_up:
            await self.runner.setup()
            self._set_up = True

    async def listen_http(self, host: str, port: int) -> tuple[str, int]:
        """Serve the API on plain HTTP; the bound (host, port)."""
        await self._setup()
        try:
            sock = _bind_tcp(host, port)
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"Error starting HTTP listener on {host}:{port}: {exc.strerror}. Is another agent running? "
                f"Stop it or choose another port with -http-port.",
            ) from exc
        return await self._serve(sock, None)

    async def listen_https(self, host: str, port: int, ctx: ssl.SSLContext) -> tuple[str, int]:
        """Serve the same API over TLS; the bound (host, port)."""
        await self._setup()
        try:
            sock = _bind_tcp(host, port)
        except OSError as exc:
            raise OSError(exc.errno, f"Error starting HTTPS listener on {host}:{port}: {exc.strerror}") from exc
        return await self._serve(sock, ctx)

    async def _serve(self, sock: socket.socket, ctx: ssl.SSLContext | None) -> tuple[str, int]:
        site = web.SockSite(self.runner, sock, ssl_context=ctx, backlog=BACKLOG)
        await site.start()
        host, port = sock.getsockname()[:2]
        return str(host), int(port)

    async def close(self) -> None:
        # Stop accepting on every port, give in-flight requests a moment, then close (blocking queries are
        # cut short).
        await self.runner.cleanup()


def _bind_tcp(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def https_context(cfg: Config) -> ssl.SSLContext:
    """The HTTPS port's TLS context from the ``tls`` block; a block that cannot serve HTTPS refuses to
    start the agent, as Consul does."""
    try:
        return https_server_context(load_tls_settings(cfg))
    except ConfigError as exc:
        raise OSError(errno.EINVAL, f"Error starting HTTPS listener: {exc}") from exc


def _sync_resolver(resolve: Callable[[str], Authorizer]) -> Callable[[str], Authorizer | None]:
    def resolve_or_none(secret: str) -> Authorizer | None:
        try:
            return resolve(secret)
        except ACLNotFound:
            return None

    return resolve_or_none


async def start_dns(cfg: Config, store: Callable[[], StateStore], acl: TokenResolver | None = None,
                    metrics: Metrics | None = None) -> tuple[DNSListener, tuple[str, int], DNSToken | None]:  # fmt: skip
    """The DNS interface on ``client_addr`` and the DNS port, answering from ``store()`` (read at each
    query: a snapshot restore replaces the store); the listener, its first bound address, and with ACLs on
    the follower of the default token the answers are filtered by (resolved once before the port opens,
    so no query is ever answered unfiltered; the caller runs it and tells it of changes)."""
    try:
        dns_cfg = from_agent_config(cfg)
    except ValueError as exc:
        dns_log.error("invalid DNS configuration", error=str(exc))
        raise
    engine = Engine(dns_cfg, store, random.Random(os.urandom(16)))
    token: DNSToken | None = None
    if acl is not None and acl.enabled:
        engine.set_acl(None)
        if isinstance(acl, ServerResolver | StaticResolver):
            # A prepared query's own token, resolved from this agent's replica of the ACL tables.
            engine.set_token_resolver(_sync_resolver(acl.resolve_now))
        token = DNSToken(acl, engine.set_acl)
        await token.refresh()
    observe = None
    if metrics is not None and metrics.enabled:
        # Consul's dns.domain_query timer, labelled with this agent's node name.
        timer = metrics.sample("dns.domain_query", (("node", cfg.node_name),), "Time to answer a DNS query, in ms.")

        def observe(queries: int, seconds: float) -> None:
            timer.observe_many(seconds * 1000.0 / queries, queries)

    server = DNSServer(engine, dns_cfg, observe=observe)
    hosts = cfg.client_addr.split() or ["127.0.0.1"]
    addr = await server.start(hosts, cfg.ports.dns)
    dns_log.info("dns listening", addresses=[f"{h}:{p}" for h, p in server.addresses], domain=dns_cfg.domain,
             recursors=[str(r) for r in dns_cfg.recursors])  # fmt: skip
    return DNSListener(server), addr, token
