"""The sidecar: a public mTLS listener in front of the local service, and plaintext upstream listeners
on loopback that dial other services' proxies over mTLS. The decisions live in pure modules
(``config``, ``identity``, ``authz``, ``routing``, ``upstream``, ``metrics``), the bytes in ``splice``;
this module is the asyncio shell that ties them to the agent.

What it follows from the agent, each with a blocking query (``_follow``), and where it keeps it:

- the leaf and the roots -> ``contexts`` (new SSLContexts; connections already open keep theirs; the
  TLS sessions kept to resume, ``tls_sessions``, are dropped with the old client context, and the old
  server context's session tickets cannot be opened by the new one);
- the intentions naming this service as destination, and the default policy -> ``authz`` (an immutable
  ``authz.Authorizer``; each inbound connection is decided in process, and an open connection whose
  source a new intention denies is closed: beyond Consul, whose proxies only check new connections);
- this service's ``service-defaults`` -> ``service_defaults`` (``MaxInboundConnections``,
  ``LocalConnectTimeoutMs`` and ``UpstreamConfig`` for the upstreams' pools);
- per upstream, its compiled discovery chain -> ``upstreams[name].chain``, and the health of every
  service the chain targets -> one ``upstream.UpstreamPool`` per target, ``upstreams[name].pools``.

TLS sessions are resumed on both sides (``tls``): the upstream side keeps one per instance
(``tls_sessions``, forgotten when the instance leaves its pools) and the public listener issues tickets.
Every connection, resumed or not, is checked the same way after its handshake: the peer certificate's
URI SAN (and, inbound, the intentions) and its NotAfter (a resumed session carries the certificate of
the handshake that made it).

The seams the HTTP data plane uses: ``authz`` (and ``Authorizer.index`` for L7 permissions),
``upstreams[name]`` (``UpstreamState``: ``chain``, ``pools``, ``wait_ready``), ``pool_config``, ``metrics``
and ``access`` (the access logger, or None).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from ca.spiffe import InvalidSpiffeURI, ServiceIdentity, parse_uri
from connect_proxy import identity, routing, tls
from connect_proxy.agent import AgentClient, AgentError, AgentUnavailable
from connect_proxy.authz import Authorizer, intentions_from_match
from connect_proxy.config import ProxyConfig, Upstream
from connect_proxy.http import engine
from connect_proxy.http.rbac import L7Policy
from connect_proxy.metrics import CONTENT_TYPE, Registry
from connect_proxy.splice import Endpoint, link
from connect_proxy.upstream import (
    Instance,
    PoolConfig,
    UpstreamPool,
    lb_config,
    limits_config,
    outlier_config,
)
from registry.discoverychain import ChainError, CompiledChain, chain_from_api
from registry.filtering import FilterError
from registry.intentions import IntentionError, IntentionIndex

MAX_DIAL_ATTEMPTS = 3  # instances tried per upstream connection before giving up
POLICY_REFRESH_S = 30.0  # how often the agent's default_intention_policy is read again


@dataclass(frozen=True, slots=True)
class Contexts:
    server: ssl.SSLContext
    client: ssl.SSLContext
    trust_domain: str
    datacenter: str
    leaf_serial: str
    root_ids: tuple[str, ...]


@dataclass(slots=True)
class UpstreamState:
    """One upstream listener's view of the mesh: its compiled chain and a pool per chain target."""

    upstream: Upstream
    chain: CompiledChain | None = None
    pools: dict[str, UpstreamPool] = field(default_factory=dict)  # by target ID
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    http: engine.UpstreamHandler | None = None  # the listener's HTTP mode, used while the chain says http

    async def wait_ready(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until the chain and the health of each of its targets are known."""
        if not self.ready.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.ready.wait()
        return self.ready.is_set()


def _new_metrics() -> Registry:
    m = Registry()
    m.counter("proconsul_proxy_inbound_connections_total",
              "Connections accepted on the public listener, by outcome", ("result",))  # fmt: skip
    m.counter("proconsul_proxy_authz_total", "Inbound authorization decisions (intentions)", ("result",))
    m.counter("proconsul_proxy_intention_closed_total",
              "Open inbound connections closed because an intention now denies their source")  # fmt: skip
    m.counter("proconsul_proxy_upstream_connections_total",
              "Upstream connections by outcome (ok, failed, overflow, no_instance)", ("upstream", "result"))  # fmt: skip
    m.counter("proconsul_proxy_upstream_connect_retries_total",
              "Dial attempts beyond the first for one upstream connection", ("upstream",))  # fmt: skip
    m.counter("proconsul_proxy_upstream_ejections_total",
              "Instances ejected by passive health checking", ("upstream", "target"))  # fmt: skip
    m.counter("proconsul_proxy_circuit_breaker_overflows_total",
              "Connections or requests refused at once because a limit was reached", ("listener", "limit"))  # fmt: skip
    m.counter("proconsul_proxy_bytes_total", "Payload bytes carried, by listener and direction",
              ("listener", "direction"))  # fmt: skip
    m.counter("proconsul_proxy_tls_resumed_total",
              "Connections whose mTLS handshake resumed a session, by listener", ("listener",))  # fmt: skip
    m.histogram("proconsul_proxy_upstream_connect_seconds",
                "Time to connect and finish the mTLS handshake with an upstream instance", ("upstream",))  # fmt: skip
    engine.define_metrics(m)
    return m


class Proxy:
    def __init__(
        self,
        cfg: ProxyConfig,
        agent: AgentClient,
        *,
        retry_first: float = 0.25,
        retry_cap: float = 10.0,
        rng: random.Random | None = None,
        policy_refresh: float = POLICY_REFRESH_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.agent = agent
        self.retry_first = retry_first
        self.retry_cap = retry_cap
        self.policy_refresh = policy_refresh
        self.clock = clock  # wall time, for certificate expiry
        self.rng = rng or random.Random()
        self.log = structlog.get_logger("connect-proxy").bind(service=cfg.service)
        self.access = structlog.get_logger("connect-proxy.access") if cfg.access_log else None
        self.metrics = _new_metrics()
        self.contexts: Contexts | None = None
        self.tls_sessions = tls.SessionCache()
        self.authz: Authorizer | None = None
        self._pending_policy = ""  # default_intention_policy read before the first intentions
        self.service_defaults: Mapping[str, Any] | None = None
        self.ready = asyncio.Event()
        self._certs_ready = asyncio.Event()
        self._authz_ready = asyncio.Event()
        self._policy_ready = asyncio.Event()
        self._leaf: dict[str, Any] | None = None
        self._roots: dict[str, Any] | None = None
        self.upstreams: dict[str, UpstreamState] = {u.destination: UpstreamState(u) for u in cfg.upstreams}
        for state in self.upstreams.values():
            state.http = engine.UpstreamHandler(self._upstream_env(state))
        self.local_protocol = "tcp"  # this service's protocol (its discovery chain's): "http" is HTTP mode
        self.l7_policy: L7Policy | None = None
        self.local_http = engine.LocalHandler(engine.LocalEnv(
            self.metrics, self.log, self.access, cfg.local_service or ("127.0.0.1", 1), lambda: self.l7_policy,
            self._local_connect_timeout, self._local_request_timeout,
            lambda: self._leaf_uri, clock))  # fmt: skip
        self._leaf_uri = ""
        self._health: dict[tuple[str, str], Any] = {}  # (service, dc) -> last health answer
        self._health_tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._conn_tasks: set[asyncio.Task[None]] = set()
        self._servers: list[asyncio.AbstractServer] = []
        self._metrics_server: asyncio.AbstractServer | None = None
        self._endpoints: set[Endpoint] = set()
        self._inbound: dict[Endpoint, ServiceIdentity] = {}  # authorized, linked inbound connections
        self._inbound_open = 0
        self.public_addr: tuple[str, int] | None = None
        self.metrics_addr: tuple[str, int] | None = None
        self.upstream_addrs: dict[str, tuple[str, int]] = {}
        self.stats = {"inbound_accepted": 0, "inbound_refused": 0, "outbound_ok": 0, "outbound_failed": 0,
                      "inbound_resumed": 0, "outbound_resumed": 0}  # fmt: skip

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Follow the agent, wait for the leaf, the roots and (with a public listener) the intentions,
        then open the listeners."""
        svc = self.cfg.service
        spawn = self._tasks.append
        spawn(asyncio.create_task(self._follow("CA roots", "/v1/agent/connect/ca/roots", {}, self._on_roots)))
        spawn(asyncio.create_task(self._follow(f"leaf certificate for {svc}", f"/v1/agent/connect/ca/leaf/{svc}", {},
                                               self._on_leaf)))  # fmt: skip
        spawn(asyncio.create_task(self._follow(f"service-defaults for {svc}", f"/v1/config/service-defaults/{svc}", {},
                                               self._on_service_defaults, missing_ok=True)))  # fmt: skip
        if self.cfg.public is not None:
            spawn(asyncio.create_task(self._follow(
                f"intentions for {svc}", "/v1/connect/intentions/match", {"by": "destination", "name": svc},
                self._on_intentions)))  # fmt: skip
            spawn(asyncio.create_task(self._follow_policy()))
            spawn(asyncio.create_task(self._follow(
                f"discovery chain of {svc}", f"/v1/discovery-chain/{svc}", {}, self._on_own_chain)))  # fmt: skip
        else:
            self._authz_ready.set()
            self._policy_ready.set()
        for state in self.upstreams.values():
            up = state.upstream
            params = {"compile-dc": up.datacenter} if up.datacenter else {}
            spawn(asyncio.create_task(self._follow(
                f"discovery chain of {up.destination}", f"/v1/discovery-chain/{up.destination}", params,
                lambda body, headers, state=state: self._on_chain(state, body))))  # fmt: skip
        self.log.info("waiting for the first leaf certificate and CA roots from the agent", agent=self.agent.base)
        await self._certs_ready.wait()
        await self._authz_ready.wait()
        await self._policy_ready.wait()  # no connection is decided on a default that is about to change
        self.ready.set()
        assert self.contexts is not None
        loop = asyncio.get_running_loop()
        try:
            if self.cfg.public is not None:
                host, port = self.cfg.public
                server = await loop.create_server(self._public_protocol, host, port, reuse_address=True,
                                                  backlog=1024)  # fmt: skip
                self._servers.append(server)
                self.public_addr = server.sockets[0].getsockname()[:2]
                self.log.info("public listener ready", addr=_fmt(self.public_addr), local_service=_fmt(self.cfg.local_service))
            for state in self.upstreams.values():
                up = state.upstream
                server = await loop.create_server(lambda st=state: self._upstream_protocol(st),
                                                  up.bind_address, up.bind_port, reuse_address=True, backlog=1024)  # fmt: skip
                self._servers.append(server)
                self.upstream_addrs[up.destination] = server.sockets[0].getsockname()[:2]
                self.log.info("upstream listener ready", upstream=up.destination,
                              addr=_fmt(self.upstream_addrs[up.destination]))  # fmt: skip
            if self.cfg.metrics_addr is not None:
                self._metrics_server = await asyncio.start_server(self._serve_metrics, *self.cfg.metrics_addr,
                                                                  reuse_address=True)  # fmt: skip
                self.metrics_addr = self._metrics_server.sockets[0].getsockname()[:2]
                self.log.info("metrics listener ready", addr=_fmt(self.metrics_addr), path="/metrics")
        except OSError:
            await self.stop()
            raise
        self.log.info("proxy running", trust_domain=self.contexts.trust_domain, datacenter=self.contexts.datacenter)

    async def drain(self, timeout: float | None = None) -> int:
        """Graceful shutdown, first half: close the listeners (no new connections) and give open ones
        up to ``timeout`` seconds (``drain_timeout``) to finish. Returns how many sockets (each proxied
        connection holds two: its downstream and its upstream side) were still open."""
        timeout = self.cfg.drain_timeout if timeout is None else timeout
        for server in self._servers:
            server.close()
        for conn in self._http_conns():
            conn.drain_gracefully()  # idle keep-alive connections close now, busy ones after their response
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self.open_connections:
            self.log.info("draining", open_connections=self.open_connections, deadline_s=timeout)
        while self.open_connections and loop.time() < deadline:
            await asyncio.sleep(0.05)
        left = self.open_connections
        if left:
            self.log.warning("drain deadline passed; resetting the connections still open", open_connections=left)
        return left

    async def stop(self) -> None:
        """Stop accepting, stop following the agent, reset open connections, close the HTTP session."""
        for server in self._servers:
            server.close()
        if self._metrics_server is not None:
            self._metrics_server.close()
        tasks = self._tasks + list(self._health_tasks.values()) + list(self._conn_tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for ep in list(self._endpoints):
            ep.abort()
        for conn in self._http_conns():
            conn.abort()
        self.local_http.close()
        for state in self.upstreams.values():
            if state.http is not None:
                state.http.close()
        for server in [*self._servers, *([self._metrics_server] if self._metrics_server else [])]:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)
        self._servers.clear()
        await self.agent.close()

    @property
    def open_connections(self) -> int:
        return sum(1 for ep in self._endpoints if not ep.closed) + len(self._http_conns())

    def _http_conns(self) -> list[engine.ServerConn]:
        conns = list(self.local_http.conns)
        for state in self.upstreams.values():
            if state.http is not None:
                conns.extend(state.http.conns)
        return conns

    # ------------------------------------------------------------------ HTTP mode

    def _upstream_env(self, state: UpstreamState) -> engine.UpstreamEnv:
        name = state.upstream.destination

        def client_context() -> tuple[ssl.SSLContext, str] | None:
            c = self.contexts
            return None if c is None else (c.client, c.trust_domain)

        def expected_uri(tid: str) -> str:
            c, chain = self.contexts, state.chain
            target = chain.targets.get(tid) if chain is not None else None
            if c is None or target is None:
                return ""
            return identity.service_uri(c.trust_domain, target.datacenter, target.service)

        return engine.UpstreamEnv(
            name, self.metrics, self.rng, self.log, self.access, lambda: state.chain, lambda: state.pools,
            state.wait_ready, client_context, lambda tid: self.connect_timeout(state, tid),
            self.cfg.handshake_timeout, expected_uri, state.ready.is_set, self.tls_sessions, self.clock)  # fmt: skip

    def _upstream_protocol(self, state: UpstreamState) -> asyncio.Protocol:
        """A new connection on an upstream listener: HTTP mode while the upstream's chain is ``http``."""
        if state.http is not None and state.chain is not None and state.chain.protocol == "http":
            return state.http.protocol()
        return Endpoint(lambda ep: self._outbound_made(ep, state))

    def _public_protocol(self) -> asyncio.Protocol:
        """A new connection on the public listener: HTTP mode while this service's protocol is ``http``."""
        contexts = self.contexts
        if self.local_protocol != "http" or contexts is None:
            return Endpoint(self._inbound_made)
        limit = self._max_inbound()
        if limit and self._inbound_open >= limit:
            self.metrics.inc("proconsul_proxy_circuit_breaker_overflows_total", ("public", "max_inbound_connections"))
            self.metrics.inc("proconsul_proxy_inbound_connections_total", ("overflow",))
            return Endpoint(lambda ep: ep.abort())
        self._inbound_open += 1
        conn = engine.ServerConn(self.local_http.handle, tls=contexts.server, handshake_timeout=self.cfg.handshake_timeout,
                                 on_tls=lambda c: self.local_http.on_tls(c, contexts.trust_domain),
                                 conns=self.local_http.conns, fast=self.local_http.fast)  # fmt: skip
        conn.done.add_done_callback(self._inbound_closed)
        return conn

    def _local_request_timeout(self) -> float:
        """``LocalRequestTimeoutMs`` of this service's service-defaults, else Envoy's 15 s route timeout."""
        ms = (self.service_defaults or {}).get("LocalRequestTimeoutMs")
        return float(ms) / 1000.0 if isinstance(ms, int) and ms > 0 else 15.0

    def _on_own_chain(self, body: Any, _headers: Mapping[str, str]) -> None:
        if not isinstance(body, Mapping) or not isinstance(body.get("Chain"), Mapping):
            raise ValueError("discovery chain answer without a Chain")
        protocol = str(body["Chain"].get("Protocol") or "tcp")
        if protocol != self.local_protocol:
            self.log.info("public listener protocol", protocol=protocol, mode="http" if protocol == "http" else "tcp")
            self.local_protocol = protocol

    # ------------------------------------------------------------------ following the agent

    async def _follow(self, what: str, path: str, params: dict[str, str],
                      apply: Callable[[Any, Mapping[str, str]], None], *, missing_ok: bool = False) -> None:  # fmt: skip
        """A blocking-query loop: apply each new answer (body, headers); on errors retry with backoff
        and say so. With ``missing_ok`` a 404 is the answer None (an entry that does not exist yet)."""
        index = 0
        failures = 0
        while True:
            try:
                body, new_index, headers = await self.agent.get_full(path, params, index=index, missing_ok=missing_ok)
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
                    apply(body, headers)
                except Exception as exc:  # noqa: BLE001 - a bad answer must not kill the follower
                    self.log.error("ignoring an answer from the agent", what=what, error=str(exc))
            index = max(new_index, 1)

    def _on_roots(self, body: Any, _headers: Mapping[str, str]) -> None:
        if not isinstance(body, dict) or not body.get("Roots"):
            raise ValueError("no CA roots yet")
        self._roots = body
        self._rebuild("roots")

    def _on_leaf(self, body: Any, _headers: Mapping[str, str]) -> None:
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
        self.tls_sessions.clear()  # sessions belong to the old client context (and its leaf and roots)
        self.contexts = Contexts(server, client, td, me.datacenter, str(leaf.get("SerialNumber", "")), ids)
        self._leaf_uri = str(leaf.get("ServiceURI", ""))
        self.log.info("certificates loaded" if not self._certs_ready.is_set() else f"certificates updated ({why})",
                      leaf_serial=self.contexts.leaf_serial, roots=len(pems),
                      active_root=roots.get("ActiveRootID"), valid_before=leaf.get("ValidBefore"))  # fmt: skip
        self._certs_ready.set()

    # ---------------------------------------------------------------- intentions

    def _on_intentions(self, body: Any, headers: Mapping[str, str]) -> None:
        try:
            index = IntentionIndex(intentions_from_match(body, self.cfg.service))
        except IntentionError as exc:
            raise ValueError(f"invalid intention in the answer: {exc}") from None
        acl_allow = headers.get("X-Consul-Default-ACL-Policy", "allow").lower() != "deny"
        current = self.authz
        if current is None:
            self._set_authz(Authorizer(self.cfg.service, index, acl_allow))
        else:
            self._set_authz(replace(current, index=index, acl_default_allow=acl_allow))
        self.log.info("intentions loaded", intentions=len(index), default_allow=self.authz.default[0])  # type: ignore[union-attr]
        self._authz_ready.set()

    async def _follow_policy(self) -> None:
        """The agent's ``default_intention_policy`` (``DebugConfig.DefaultIntentionPolicy`` of
        ``/v1/agent/self``), read now and every ``policy_refresh`` seconds; it has no blocking query.
        A token without ``agent:read`` cannot read it: the ACL default policy then decides."""
        while True:
            try:
                body, _ = await self.agent.get("/v1/agent/self")
            except AgentError as exc:
                self.log.debug("cannot read the agent's default_intention_policy; the ACL default decides",
                               error=str(exc))  # fmt: skip
                self._policy_ready.set()
                return
            except AgentUnavailable:
                body = None
            if isinstance(body, Mapping):
                policy = str((body.get("DebugConfig") or {}).get("DefaultIntentionPolicy") or "").lower()
                policy = policy if policy in ("allow", "deny") else ""
                if self.authz is not None and self.authz.intention_policy != policy:
                    self._set_authz(replace(self.authz, intention_policy=policy))
                elif self.authz is None:
                    self._pending_policy = policy
                self._policy_ready.set()
            await asyncio.sleep(self.retry_first if not self._policy_ready.is_set() else self.policy_refresh)

    def _set_authz(self, authz: Authorizer) -> None:
        if self.authz is None and self._pending_policy:
            authz = replace(authz, intention_policy=self._pending_policy)
        self.authz = authz
        self.l7_policy = L7Policy(authz)
        closed = 0
        for ep, source in list(self._inbound.items()):
            if not ep.closed and not authz.decide(source).allowed:
                ep.abort()  # the local side is reset with it (splice: an abort resets the peer)
                closed += 1
        if closed:
            self.metrics.inc("proconsul_proxy_intention_closed_total", (), closed)
            self.log.info("closed connections an intention now denies", closed=closed)

    # ---------------------------------------------------------------- service-defaults

    def _on_service_defaults(self, body: Any, _headers: Mapping[str, str]) -> None:
        if body is not None and not isinstance(body, Mapping):
            raise ValueError("service-defaults answer is not an object")
        self.service_defaults = body
        for state in self.upstreams.values():
            self._configure_pools(state)

    def _upstream_config(self, name: str) -> Mapping[str, Any]:
        """This service's ``UpstreamConfig`` for upstream ``name``: ``Defaults`` overlaid with the
        ``Overrides`` entry of that name (Consul's merge: an override's set fields win)."""
        uc = (self.service_defaults or {}).get("UpstreamConfig") or {}
        merged = dict(uc.get("Defaults") or {})
        for o in uc.get("Overrides") or ():
            if isinstance(o, Mapping) and o.get("Name") == name:
                merged.update({k: v for k, v in o.items() if k != "Name" and v not in (None, "", 0, {})})
        return merged

    def pool_config(self, state: UpstreamState, target_id: str) -> PoolConfig:
        """Balancing from the chain's resolver node for ``target_id``; outlier detection and limits
        from this service's ``UpstreamConfig`` for the upstream."""
        uc = self._upstream_config(state.upstream.destination)
        lb: Mapping[str, Any] | None = None
        if state.chain is not None:
            target = state.chain.targets.get(target_id)
            for node in state.chain.nodes.values():
                if node.resolver is None:
                    continue
                if node.resolver.target == target_id:
                    lb = node.load_balancer
                    break
                t = state.chain.targets.get(node.resolver.target)
                if lb is None and target is not None and t is not None and t.service == target.service:
                    lb = node.load_balancer
        return PoolConfig(**lb_config(lb), outlier=outlier_config(uc.get("PassiveHealthCheck")),
                          limits=limits_config(uc.get("Limits")))  # fmt: skip

    def connect_timeout(self, state: UpstreamState, target_id: str) -> float:
        """The resolver's ``ConnectTimeout`` when it sets one, else ``UpstreamConfig.ConnectTimeoutMs``,
        else the chain's default (5 s), as Consul configures the upstream cluster."""
        chain = state.chain
        target = chain.targets.get(target_id) if chain is not None else None
        timeout = target.connect_timeout_ns / 1e9 if target is not None and target.connect_timeout_ns else 5.0
        ms = self._upstream_config(state.upstream.destination).get("ConnectTimeoutMs")
        if ms and timeout == 5.0:
            timeout = float(ms) / 1000.0
        return timeout

    # ---------------------------------------------------------------- chains and instances

    def _on_chain(self, state: UpstreamState, body: Any) -> None:
        if not isinstance(body, Mapping) or not isinstance(body.get("Chain"), Mapping):
            raise ValueError("discovery chain answer without a Chain")
        try:
            chain = chain_from_api(body["Chain"])
        except ChainError as exc:
            raise ValueError(str(exc)) from None
        if chain == state.chain:
            return
        state.chain = chain
        self.log.info("discovery chain", upstream=state.upstream.destination, protocol=chain.protocol,
                      start=chain.start_node, targets=sorted(chain.targets))  # fmt: skip
        for tid in list(state.pools):
            if tid not in chain.targets:
                del state.pools[tid]
        self._configure_pools(state)
        self._forget_sessions()
        self._sync_health_followers()

    def _health_key(self, chain: CompiledChain, service: str, datacenter: str) -> tuple[str, str]:
        return service, "" if datacenter == chain.datacenter else datacenter

    def _sync_health_followers(self) -> None:
        wanted: set[tuple[str, str]] = set()
        for state in self.upstreams.values():
            if state.chain is not None:
                wanted.update(self._health_key(state.chain, t.service, t.datacenter) for t in state.chain.targets.values())
        for key in list(self._health_tasks):
            if key not in wanted:
                self._health_tasks.pop(key).cancel()
                self._health.pop(key, None)
        for key in wanted - set(self._health_tasks):
            service, dc = key
            params = {"dc": dc} if dc else {}
            self._health_tasks[key] = asyncio.create_task(self._follow(
                f"instances of {service}" + (f" in {dc}" if dc else ""), f"/v1/health/connect/{service}", params,
                lambda body, headers, key=key: self._on_health(key, body)))  # fmt: skip

    def _on_health(self, key: tuple[str, str], body: Any) -> None:
        if not isinstance(body, list):
            raise ValueError("health answer is not a list")
        self._health[key] = body
        for state in self.upstreams.values():
            self._configure_pools(state)
        self._forget_sessions()

    def _forget_sessions(self) -> None:
        """Drop the TLS sessions of instances no pool has any more."""
        if len(self.tls_sessions):
            pools = [pool for state in self.upstreams.values() for pool in state.pools.values()]
            self.tls_sessions.retain({inst for pool in pools for inst in pool.instances})

    def _configure_pools(self, state: UpstreamState) -> None:
        """Bring every target's pool in line with the chain, the health answers and the config."""
        chain = state.chain
        if chain is None:
            return
        complete = True
        for tid, target in chain.targets.items():
            pool = state.pools.get(tid)
            if pool is None:
                pool = state.pools[tid] = UpstreamPool(tid, rng=self.rng)
            pool.configure(self.pool_config(state, tid))
            body = self._health.get(self._health_key(chain, target.service, target.datacenter))
            if body is None:
                complete = False
                continue
            try:
                found = routing.target_instances(body, target.subset)
            except FilterError as exc:
                self.log.error("subset filter does not compile; the target has no instances", target=tid,
                               error=str(exc))  # fmt: skip
                found = []
            if tuple(found) != pool.instances:
                self.log.info("upstream instances", upstream=state.upstream.destination, target=tid,
                              instances=[str(i) for i in found])  # fmt: skip
            pool.update(found)
        if complete:
            state.ready.set()

    # ------------------------------------------------------------------ inbound: public listener

    def _track(self, ep: Endpoint) -> None:
        self._endpoints.add(ep)
        ep.done.add_done_callback(lambda _: self._endpoints.discard(ep))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._conn_tasks.add(task)
        task.add_done_callback(self._conn_tasks.discard)

    def _max_inbound(self) -> int:
        value = (self.service_defaults or {}).get("MaxInboundConnections") or 0
        return int(value) if isinstance(value, int) and value > 0 else 0

    def _inbound_made(self, ep: Endpoint) -> None:
        limit = self._max_inbound()
        if limit and self._inbound_open >= limit:
            # Envoy's listener connection limit: refused at once, never queued.
            self.metrics.inc("proconsul_proxy_circuit_breaker_overflows_total", ("public", "max_inbound_connections"))
            self.metrics.inc("proconsul_proxy_inbound_connections_total", ("overflow",))
            ep.abort()
            return
        self._inbound_open += 1
        self._track(ep)
        ep.done.add_done_callback(self._inbound_closed)
        contexts = self.contexts
        assert contexts is not None
        ep.start_tls(contexts.server, server_side=True)
        self._spawn(self._inbound_conn(ep, contexts, time.time()))

    def _inbound_closed(self, _: Any) -> None:
        self._inbound_open -= 1

    def _local_connect_timeout(self) -> float:
        ms = (self.service_defaults or {}).get("LocalConnectTimeoutMs")
        return float(ms) / 1000.0 if isinstance(ms, int) and ms > 0 else self.cfg.local_connect_timeout

    async def _inbound_conn(self, ep: Endpoint, contexts: Contexts, started: float) -> None:
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
        ep.transport.pause_reading()  # nothing goes anywhere until the intentions say yes
        if ep.resumed:
            self.stats["inbound_resumed"] += 1
            self.metrics.inc("proconsul_proxy_tls_resumed_total", ("public",))
        # The same checks whether the session was resumed or not: a resumed one carries the client
        # certificate of its first handshake, which may have expired since.
        peercert = ep.peercert()
        try:
            identity.check_not_expired(peercert, self.clock())
            client = identity.client_identity(identity.uri_sans(peercert), contexts.trust_domain)
        except identity.IdentityError as exc:
            self._refuse(ep, peer, str(exc))
            return
        authz = self.authz
        assert authz is not None
        decision = authz.decide(client)
        uri = client.uri()
        if not decision.allowed:
            self.metrics.inc("proconsul_proxy_authz_total", ("deny",))
            self._refuse(ep, peer, f"not authorized: {decision.reason}", client=uri)
            return
        self.metrics.inc("proconsul_proxy_authz_total", ("allow",))
        assert self.cfg.local_service is not None
        host, port = self.cfg.local_service
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._local_connect_timeout()):
                _, local = await loop.create_connection(Endpoint, host, port)
        except (OSError, TimeoutError) as exc:
            self._refuse(ep, peer, f"cannot reach the local service at {host}:{port}: {_why(exc)}", client=uri)
            return
        self._track(local)
        self.stats["inbound_accepted"] += 1
        self.metrics.inc("proconsul_proxy_inbound_connections_total", ("accepted",))
        self._inbound[ep] = client
        ep.done.add_done_callback(lambda _: self._inbound.pop(ep, None))
        link(ep, local)
        local.done.add_done_callback(lambda _: self._finished("public", ep, local, started, peer=peer, source=uri,
                                                              destination=_fmt((host, port))))  # fmt: skip

    def _refuse(self, ep: Endpoint, peer: str, reason: str, **kw: str) -> None:
        self.stats["inbound_refused"] += 1
        self.metrics.inc("proconsul_proxy_inbound_connections_total", ("refused",))
        self.log.warning("inbound connection refused", peer=peer, reason=reason, **kw)
        if self.access is not None:
            self.access.info("connection", listener="public", downstream=peer, result="refused", reason=reason, **kw)
        ep.abort()

    def _finished(self, listener: str, near: Endpoint, far: Endpoint, started: float, **kw: Any) -> None:
        """Bytes and the access log line once a proxied connection (``near``: the side that connected to
        us, ``far``: the side we dialed) has ended."""
        sent, received = near.bytes_in, far.bytes_in
        self.metrics.inc("proconsul_proxy_bytes_total", (listener, "to_upstream"), sent)
        self.metrics.inc("proconsul_proxy_bytes_total", (listener, "to_downstream"), received)
        if self.access is not None:
            self.access.info("connection", listener=listener, result="ok", start_time=round(started, 6),
                             duration_ms=round((time.time() - started) * 1000, 3), bytes_sent=received,
                             bytes_received=sent, **kw)  # fmt: skip

    # ------------------------------------------------------------------ outbound: upstream listeners

    def _outbound_made(self, ep: Endpoint, state: UpstreamState) -> None:
        self._track(ep)
        assert ep.transport is not None
        ep.transport.pause_reading()  # until the upstream is connected
        self._spawn(self._outbound(ep, state, time.time()))

    async def _outbound(self, client: Endpoint, state: UpstreamState, started: float) -> None:
        """Pick a target (split, then failover when a target has no healthy instance), then an instance
        by the pool's policy; a failed dial is reported to the pool and retried on another instance."""
        contexts = self.contexts
        up = state.upstream.destination
        assert contexts is not None and client.transport is not None
        await state.wait_ready(self.cfg.handshake_timeout)
        chain = state.chain
        peer = client.transport.get_extra_info("peername")
        key = str(peer[0]).encode() if peer else None  # ring_hash/maglev at L4: the source IP
        loop = asyncio.get_running_loop()
        errors: list[str] = []
        attempts = 0
        targets = routing.l4_targets(chain, self.rng.random() * 100.0) if chain is not None else []
        for tid in targets:
            pool = state.pools.get(tid)
            target = chain.targets.get(tid) if chain is not None else None
            if pool is None or target is None or not len(pool):
                continue  # no healthy instance: fail over to the next target
            if not pool.acquire("connections"):
                self.metrics.inc("proconsul_proxy_circuit_breaker_overflows_total", (up, "max_connections"))
                self.metrics.inc("proconsul_proxy_upstream_connections_total", (up, "overflow"))
                self.log.warning("upstream connection refused: MaxConnections reached", upstream=up, target=tid,
                                 limit=pool.config.limits.max_connections)  # fmt: skip
                client.abort()
                return
            expected = identity.service_uri(contexts.trust_domain, target.datacenter, target.service)
            timeout = self.connect_timeout(state, tid)
            tried: set[Instance] = set()
            while attempts < MAX_DIAL_ATTEMPTS and not client.closed:
                inst = pool.pick(key, loop.time(), tried)
                if inst is None:
                    break
                tried.add(inst)
                attempts += 1
                if attempts > 1:
                    self.metrics.inc("proconsul_proxy_upstream_connect_retries_total", (up,))
                t0 = loop.time()
                remote = await self._dial(inst, contexts, expected, timeout, errors, up)
                if remote is None:
                    if pool.report(inst, False, loop.time()):
                        self.metrics.inc("proconsul_proxy_upstream_ejections_total", (up, tid))
                        self.log.warning("instance ejected after consecutive failures", upstream=up, target=tid,
                                         instance=str(inst))  # fmt: skip
                    continue
                pool.report(inst, True, loop.time())
                self.metrics.observe("proconsul_proxy_upstream_connect_seconds", loop.time() - t0, (up,))
                self.stats["outbound_ok"] += 1
                self.metrics.inc("proconsul_proxy_upstream_connections_total", (up, "ok"))
                pool.begin(inst)
                link(client, remote)

                def done(_: Any, pool: UpstreamPool = pool, inst: Instance = inst, remote: Endpoint = remote,
                         tid: str = tid) -> None:  # fmt: skip
                    pool.end(inst)
                    pool.release("connections")
                    self._finished(up, client, remote, started, downstream=_fmt(peer), target=tid, instance=str(inst))

                remote.done.add_done_callback(done)
                return
            pool.release("connections")
            if attempts >= MAX_DIAL_ATTEMPTS or client.closed:
                break
        self.stats["outbound_failed"] += 1
        self.metrics.inc("proconsul_proxy_upstream_connections_total", (up, "failed" if attempts else "no_instance"))
        self.log.warning("upstream connection closed: no instance reachable", upstream=up, targets=targets,
                         errors=errors)  # fmt: skip
        if self.access is not None:
            self.access.info("connection", listener=up, downstream=_fmt(peer), result="failed", errors=errors)
        client.close()

    async def _dial(self, inst: Instance, contexts: Contexts, expected: str, timeout: float, errors: list[str],
                    up: str) -> Endpoint | None:  # fmt: skip
        """TCP connect and mTLS handshake with one instance, checking it is ``expected``; None on failure.

        The handshake offers the session kept for the instance, if any; a session the server does not
        resume, or a failed handshake, drops it. A new session is kept once its ticket arrives."""
        loop = asyncio.get_running_loop()
        remote: Endpoint | None = None
        sessions, ctx = self.tls_sessions, contexts.client
        session = sessions.get(inst, ctx, self.clock())
        try:
            async with asyncio.timeout(timeout):
                _, remote = await loop.create_connection(Endpoint, inst.host, inst.port)
            self._track(remote)
            handshake = remote.start_tls(ctx, server_side=False, session=session)
            async with asyncio.timeout(self.cfg.handshake_timeout):
                await handshake
            peercert = remote.peercert()
            now = self.clock()
            identity.check_not_expired(peercert, now)
            identity.check_server(identity.uri_sans(peercert), expected)
        except (OSError, ssl.SSLError, TimeoutError, ValueError, identity.IdentityError) as exc:
            if remote is not None:
                remote.abort()
            if session is not None:
                sessions.drop(inst)
            errors.append(f"{inst}: {_why(exc)}")
            self.log.warning("upstream dial failed", upstream=up, instance=str(inst), error=_why(exc))
            return None
        if remote.resumed:
            self.stats["outbound_resumed"] += 1
            self.metrics.inc("proconsul_proxy_tls_resumed_total", (up,))
        elif session is not None:
            sessions.drop(inst)  # the server would not resume it
        if sessions.wants(inst, ctx, now) and remote.sslobj is not None:
            keep = sessions.keeper(inst, ctx, identity.not_after(peercert), self.clock)
            if not keep(remote.sslobj):
                remote.on_session = keep
        return remote

    # ------------------------------------------------------------------ metrics listener

    async def _serve_metrics(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A minimal HTTP/1.1 endpoint: ``GET /metrics`` (and Envoy's ``/stats/prometheus``) answer the
        Prometheus text; anything else 404. One request per connection."""
        try:
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0].split()
            path = line[1].split(b"?", 1)[0] if len(line) >= 2 else b""
            if len(line) >= 2 and line[0] in (b"GET", b"HEAD") and path in (b"/metrics", b"/stats/prometheus"):
                body = self.metrics.render().encode()
                status, ctype = b"200 OK", CONTENT_TYPE.encode()
            else:
                body, status, ctype = b"404 page not found\n", b"404 Not Found", b"text/plain; charset=utf-8"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype + b"\r\nContent-Length: " +
                         str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" +
                         (body if line[0] != b"HEAD" else b""))  # fmt: skip
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, IndexError):
            pass
        finally:
            writer.close()


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


__all__ = ["Contexts", "Proxy", "UpstreamState"]
