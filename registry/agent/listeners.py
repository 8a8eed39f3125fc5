"""The agent's listeners: where sockets are bound for the HTTP API (plain and TLS) and for DNS.

Only the agent -- the composition root -- imports this module. Each listener gets what it serves, built
by the agent from narrow parts (an ``Api`` built from the route table, a store reader), never the agent
itself. The HTTP and HTTPS ports are two sites of one aiohttp runner around one ``Api``, as Consul serves
one ``http.Handler`` on both: the same routes, caches and watch-hub listener, whichever port a request
came in on.
"""

from __future__ import annotations

import errno
import os
import random
import socket
import ssl
from collections.abc import Callable
from typing import Protocol

import structlog
from aiohttp import web

from dns.config import from_agent_config
from dns.engine import Engine
from dns.server import DNSListener, DNSServer
from registry.api.http import Api
from registry.config import Config, ConfigError
from registry.state.store import StateStore
from registry.tls import https_server_context, load_tls_settings

log = structlog.get_logger("proconsul.agent")
dns_log = structlog.get_logger("proconsul.dns")

BACKLOG = 1024  # aiohttp's default of 128 drops connection bursts
HTTP_SHUTDOWN_TIMEOUT = 0.25  # in-flight requests get this long once the sockets stop accepting


class Listener(Protocol):
    async def close(self) -> None: ...


class APIServer:
    """One ``Api`` behind aiohttp's low-level server, and the sockets (HTTP, HTTPS) it is served on.

    ``Api.dispatch`` does its own routing, so the Application's router and middleware chain would only add
    cost to every request (about a fifth of a cached discovery answer's time)."""

    def __init__(self, api: Api, shutdown_timeout: float = HTTP_SHUTDOWN_TIMEOUT) -> None:
        self.api = api
        server = web.Server(api.dispatch, access_log=None)  # type: ignore[arg-type]
        self.runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=shutdown_timeout)
        self._set_up = False

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


async def start_dns(cfg: Config, store: Callable[[], StateStore]) -> tuple[DNSListener, tuple[str, int]]:
    """The DNS interface on ``client_addr`` and the DNS port, answering from ``store()`` (read at each
    query: a snapshot restore replaces the store); the listener and its first bound address."""
    try:
        dns_cfg = from_agent_config(cfg)
    except ValueError as exc:
        dns_log.error("invalid DNS configuration", error=str(exc))
        raise
    engine = Engine(dns_cfg, store, random.Random(os.urandom(16)))
    server = DNSServer(engine, dns_cfg)
    hosts = cfg.client_addr.split() or ["127.0.0.1"]
    addr = await server.start(hosts, cfg.ports.dns)
    dns_log.info("dns listening", addresses=[f"{h}:{p}" for h, p in server.addresses], domain=dns_cfg.domain,
             recursors=[str(r) for r in dns_cfg.recursors])  # fmt: skip
    return DNSListener(server), addr
