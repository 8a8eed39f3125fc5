"""The sidecar: a public mTLS listener in front of the local service, and plaintext upstream listeners
on loopback that dial other services' proxies over mTLS. The decisions live in ``config`` and
``identity``, the bytes in ``splice``; this module is the asyncio shell that ties them to the agent.

Certificates: the leaf and the roots are followed with blocking queries; every change builds new
SSLContexts, which only new connections use. Connections already open keep theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from ca.spiffe import InvalidSpiffeURI, ServiceIdentity, parse_uri
from connect_proxy import identity, tls
from connect_proxy.agent import AgentClient, AgentError, AgentUnavailable
from connect_proxy.config import ProxyConfig, Upstream
from connect_proxy.splice import Endpoint, link

MAX_DIAL_ATTEMPTS = 3  # instances tried per upstream connection before giving up


@dataclass(frozen=True, slots=True)
class Contexts:
    server: ssl.SSLContext
    client: ssl.SSLContext
    trust_domain: str
    datacenter: str
    leaf_serial: str
    root_ids: tuple[str, ...]


class Proxy:
    def __init__(
        self,
        cfg: ProxyConfig,
        agent: AgentClient,
        *,
        retry_first: float = 0.25,
        retry_cap: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self.agent = agent
        self.retry_first = retry_first
        self.retry_cap = retry_cap
        self.rng = rng or random.Random()
        self.log = structlog.get_logger("connect-proxy").bind(service=cfg.service)
        self.contexts: Contexts | None = None
        self.ready = asyncio.Event()
        self._leaf: dict[str, Any] | None = None
        self._roots: dict[str, Any] | None = None
        self._instances: dict[Upstream, list[tuple[str, int]]] = {}
        self._instances_ready: dict[Upstream, asyncio.Event] = {u: asyncio.Event() for u in cfg.upstreams}
        self._tasks: list[asyncio.Task[None]] = []
        self._conn_tasks: set[asyncio.Task[None]] = set()
        self._servers: list[asyncio.AbstractServer] = []
        self._endpoints: set[Endpoint] = set()
        self.public_addr: tuple[str, int] | None = None
        self.upstream_addrs: dict[str, tuple[str, int]] = {}
        self.stats = {"inbound_accepted": 0, "inbound_refused": 0, "outbound_ok": 0, "outbound_failed": 0}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Follow the leaf and roots, wait for the first of each, then open the listeners."""
        svc = self.cfg.service
        self._tasks.append(asyncio.create_task(self._follow("CA roots", "/v1/agent/connect/ca/roots", {},
                                                            self._on_roots)))  # fmt: skip
        self._tasks.append(asyncio.create_task(self._follow(f"leaf certificate for {svc}",
                                                            f"/v1/agent/connect/ca/leaf/{svc}", {}, self._on_leaf)))  # fmt: skip
        for up in self.cfg.upstreams:
            params = {"passing": "1"}
            if up.datacenter:
                params["dc"] = up.datacenter
            self._tasks.append(asyncio.create_task(self._follow(
                f"instances of {up.destination}", f"/v1/health/connect/{up.destination}", params,
                lambda body, up=up: self._on_instances(up, body))))  # fmt: skip
        self.log.info("waiting for the first leaf certificate and CA roots from the agent", agent=self.agent.base)
        await self.ready.wait()
        assert self.contexts is not None
        loop = asyncio.get_running_loop()
        try:
            if self.cfg.public is not None:
                host, port = self.cfg.public
                server = await loop.create_server(lambda: Endpoint(self._inbound_made), host, port, reuse_address=True)
                self._servers.append(server)
                self.public_addr = server.sockets[0].getsockname()[:2]
                self.log.info("public listener ready", addr=_fmt(self.public_addr), local_service=_fmt(self.cfg.local_service))
            for up in self.cfg.upstreams:
                server = await loop.create_server(lambda up=up: Endpoint(lambda ep: self._outbound_made(ep, up)),
                                                  up.bind_address, up.bind_port, reuse_address=True)  # fmt: skip
                self._servers.append(server)
                self.upstream_addrs[up.destination] = server.sockets[0].getsockname()[:2]
                self.log.info("upstream listener ready", upstream=up.destination,
                              addr=_fmt(self.upstream_addrs[up.destination]))  # fmt: skip
        except OSError:
            await self.stop()
            raise
        self.log.info("proxy running", trust_domain=self.contexts.trust_domain, datacenter=self.contexts.datacenter)

    async def stop(self) -> None:
        """Stop accepting, stop following the agent, reset open connections, close the HTTP session."""
        for server in self._servers:
            server.close()
        for task in self._tasks + list(self._conn_tasks):
            task.cancel()
        for task in self._tasks + list(self._conn_tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for ep in list(self._endpoints):
            ep.abort()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)
        self._servers.clear()
        await self.agent.close()

    @property
    def open_connections(self) -> int:
        return sum(1 for ep in self._endpoints if not ep.closed)

    # ------------------------------------------------------------------ following the agent

    async def _follow(self, what: str, path: str, params: dict[str, str], apply: Callable[[Any], None]) -> None:
        """A blocking-query loop: apply each new answer; on errors retry with backoff and say so."""
        index = 0
        failures = 0
        while True:
            try:
                body, new_index = await self.agent.get(path, params, index=index)
            except (AgentUnavailable, AgentError) as exc:
                delay = identity.backoff(failures, self.retry_first, self.retry_cap)
                failures += 1
                event = "agent unreachable, retrying" if isinstance(exc, AgentUnavailable) else "agent request failed, retrying"
                self.log.warning(event, what=what, error=str(exc), attempt=failures, retry_in=round(delay, 2))
                await asyncio.sleep(delay)
                continue
            if failures:
                self.log.info("agent reachable again", what=what)
                failures = 0
            if new_index < index:
                index = 0  # the agent restarted or the index went backwards: start over
            if new_index != index or index == 0:
                try:
                    apply(body)
                except Exception as exc:  # noqa: BLE001 - a bad answer must not kill the follower
                    self.log.error("ignoring an answer from the agent", what=what, error=str(exc))
            index = max(new_index, 1)

    def _on_roots(self, body: Any) -> None:
        if not isinstance(body, dict) or not body.get("Roots"):
            raise ValueError("no CA roots yet")
        self._roots = body
        self._rebuild("roots")

    def _on_leaf(self, body: Any) -> None:
        if not isinstance(body, dict) or not body.get("CertPEM") or not body.get("PrivateKeyPEM"):
            raise ValueError("leaf answer without CertPEM/PrivateKeyPEM")
        self._leaf = body
        self._rebuild("leaf")

    def _rebuild(self, why: str) -> None:
        leaf, roots = self._leaf, self._roots
        if leaf is None or roots is None:
            return
        try:
            me = parse_uri(str(leaf.get("ServiceURI", "")))
        except InvalidSpiffeURI as exc:
            raise ValueError(f"leaf has no valid ServiceURI: {exc}") from None
        if not isinstance(me, ServiceIdentity) or me.service != self.cfg.service:
            raise ValueError(f"leaf is for {leaf.get('ServiceURI')!r}, not service {self.cfg.service!r}")
        pems = [str(r["RootCert"]) for r in roots["Roots"] if r.get("RootCert")]
        td = str(roots.get("TrustDomain") or me.trust_domain)
        server = tls.server_context(leaf["CertPEM"], leaf["PrivateKeyPEM"], pems)
        client = tls.client_context(leaf["CertPEM"], leaf["PrivateKeyPEM"], pems)
        ids = tuple(str(r.get("ID", "")) for r in roots["Roots"])
        self.contexts = Contexts(server, client, td, me.datacenter, str(leaf.get("SerialNumber", "")), ids)
        self.log.info("certificates loaded" if not self.ready.is_set() else f"certificates updated ({why})",
                      leaf_serial=self.contexts.leaf_serial, roots=len(pems),
                      active_root=roots.get("ActiveRootID"), valid_before=leaf.get("ValidBefore"))  # fmt: skip
        self.ready.set()

    def _on_instances(self, up: Upstream, body: Any) -> None:
        found = identity.instances(body)
        if found != self._instances.get(up):
            self.log.info("upstream instances", upstream=up.destination, instances=[_fmt(a) for a in found])
        self._instances[up] = found
        self._instances_ready[up].set()

    # ------------------------------------------------------------------ inbound: public listener

    def _track(self, ep: Endpoint) -> None:
        self._endpoints.add(ep)
        ep.done.add_done_callback(lambda _: self._endpoints.discard(ep))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._conn_tasks.add(task)
        task.add_done_callback(self._conn_tasks.discard)

    def _inbound_made(self, ep: Endpoint) -> None:
        self._track(ep)
        contexts = self.contexts
        assert contexts is not None
        ep.start_tls(contexts.server, server_side=True)
        self._spawn(self._inbound(ep, contexts))

    async def _inbound(self, ep: Endpoint, contexts: Contexts) -> None:
        assert ep.transport is not None and ep.handshake is not None
        peer = _fmt(ep.transport.get_extra_info("peername"))
        try:
            async with asyncio.timeout(self.cfg.handshake_timeout):
                await ep.handshake
        except (OSError, ssl.SSLError, TimeoutError, ValueError) as exc:
            self._refuse(ep, peer, f"TLS handshake failed: {_why(exc)}")
            return
        if ep.closed:
            return
        ep.transport.pause_reading()  # nothing goes anywhere until the agent says yes
        cert = ep.peercert()
        try:
            client = identity.client_identity(identity.uri_sans(cert), contexts.trust_domain)
        except identity.IdentityError as exc:
            self._refuse(ep, peer, str(exc))
            return
        uri = client.uri()
        try:
            allowed, reason = await self.agent.authorize(self.cfg.service, uri,
                                                         identity.serial_colon(str((cert or {}).get("serialNumber", ""))))  # fmt: skip
        except (AgentUnavailable, AgentError) as exc:
            self._refuse(ep, peer, f"authorize call failed: {exc}", client=uri)  # fail closed
            return
        if not allowed:
            self._refuse(ep, peer, f"not authorized: {reason}", client=uri)
            return
        assert self.cfg.local_service is not None
        host, port = self.cfg.local_service
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.cfg.local_connect_timeout):
                _, local = await loop.create_connection(Endpoint, host, port)
        except (OSError, TimeoutError) as exc:
            self._refuse(ep, peer, f"cannot reach the local service at {host}:{port}: {_why(exc)}", client=uri)
            return
        self._track(local)
        self.stats["inbound_accepted"] += 1
        self.log.debug("inbound connection", peer=peer, client=uri)
        link(ep, local)

    def _refuse(self, ep: Endpoint, peer: str, reason: str, **kw: str) -> None:
        self.stats["inbound_refused"] += 1
        self.log.warning("inbound connection refused", peer=peer, reason=reason, **kw)
        ep.abort()

    # ------------------------------------------------------------------ outbound: upstream listeners

    def _outbound_made(self, ep: Endpoint, up: Upstream) -> None:
        self._track(ep)
        assert ep.transport is not None
        ep.transport.pause_reading()  # until the upstream is connected
        self._spawn(self._outbound(ep, up))

    async def _outbound(self, client: Endpoint, up: Upstream) -> None:
        contexts = self.contexts
        assert contexts is not None
        ready = self._instances_ready[up]
        if not ready.is_set():
            try:
                async with asyncio.timeout(self.cfg.handshake_timeout):
                    await ready.wait()
            except TimeoutError:
                pass
        candidates = self._instances.get(up, [])
        expected = identity.service_uri(contexts.trust_domain, up.datacenter or contexts.datacenter, up.destination)
        tried: set[tuple[str, int]] = set()
        loop = asyncio.get_running_loop()
        errors = []
        while len(tried) < MAX_DIAL_ATTEMPTS and not client.closed:
            addr = identity.choose(candidates, tried, self.rng)
            if addr is None:
                break
            tried.add(addr)
            remote: Endpoint | None = None
            try:
                async with asyncio.timeout(self.cfg.local_connect_timeout):
                    _, remote = await loop.create_connection(Endpoint, addr[0], addr[1])
                self._track(remote)
                handshake = remote.start_tls(contexts.client, server_side=False)
                async with asyncio.timeout(self.cfg.handshake_timeout):
                    await handshake
                identity.check_server(identity.uri_sans(remote.peercert()), expected)
            except (OSError, ssl.SSLError, TimeoutError, ValueError, identity.IdentityError) as exc:
                if remote is not None:
                    remote.abort()
                errors.append(f"{_fmt(addr)}: {_why(exc)}")
                self.log.warning("upstream dial failed", upstream=up.destination, instance=_fmt(addr), error=_why(exc))
                continue
            self.stats["outbound_ok"] += 1
            link(client, remote)
            return
        self.stats["outbound_failed"] += 1
        self.log.warning("upstream connection closed: no instance reachable", upstream=up.destination,
                         instances=len(candidates), errors=errors)  # fmt: skip
        client.close()


def _fmt(addr: Any) -> str:
    if not addr:
        return ""
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    return str(exc) or type(exc).__name__
