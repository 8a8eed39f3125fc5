"""The HTTP API: routing, blocking queries, Consul's headers, errors and JSON rendering.

aiohttp's low-level server (set up by the agent, ``registry.agent.listeners``) hands every request to
``Api.dispatch``, whose router is built from the route table (``registry.api.routes``), so that unknown
paths, wrong methods and OPTIONS get Consul's answers (404 text, 405 with ``Allow``) and the hot path does
one dict lookup. Reads go through
``Api.read``: run the query against the store, and if the caller's ``?index`` is not behind, sleep on the
watch topics the query read until something in them changes or the wait (plus jitter) runs out. Rendered
bodies are cached by (query, index), so a thousand watchers woken by one change render it once.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from aiohttp import web

from registry.acl.authorizer import Authorizer
from registry.acl.errors import ACLError
from registry.acl.resolver import TOPIC_ACL, StaticResolver, TokenResolver
from registry.api.enforce import (
    AUTHZ,
    BODY,
    FILTERED,
    FILTERED_HEADER,
    PRESENTED,
    ROUTE,
    authorize,
    request_token,
)
from registry.api.errors import HTTPError
from registry.api.metrics import MetricsSource, http_timers
from registry.api.ratelimit import RequestLimiter
from registry.api.routing import ALL_METHODS, Route, Router
from registry.commands import Command, CommandError
from registry.config import Config, Limits
from registry.consensus import Consensus, NotLeaderError, RPCError
from registry.gocompat import DurationError, parse_duration
from registry.metrics import NO_COUNTER, Sample
from registry.state.store import StateStore
from registry.state.topics import Topic, WatchSet
from registry.watch import TopicMap, WatchHub

if TYPE_CHECKING:
    import aiohttp

    from registry.acl.resolver import TokenResolver
    from registry.agent.autopilot import Autopilot
    from registry.agent.events import AgentEvents
    from registry.agent.gossip_keys import KeyringOps
    from registry.agent.local import LocalCheck, LocalService
    from registry.api.acl import AgentTokenSetter
    from registry.api.acl_login import LoginService
    from registry.api.coordinate import CoordinateSink
    from registry.connect.service import Connect
    from registry.logs import LogRouter
    from registry.registration import CheckSpec, RegistrationRules
    from registry.structs import Service

log = structlog.get_logger("proconsul.http")

NO_DC_PATH = "No path to datacenter"
MAX_BODY = 8 * 1024 * 1024  # non-KV bodies; KV has its own, smaller, configurable limit
CACHE_MAX = 4096
_SKIP_KEYS = ("index=", "wait=", "stale", "consistent", "cached", "token=")
# Paths a client agent answers itself (with its own ACL resolver) instead of forwarding to a server.
# Keyring operations are queries to the LAN pool, which every agent (a client agent too) is a member of and
# can ask itself (registry/agent/gossip_keys.py), where Consul's client agent forwards them to a server.
CLIENT_LOCAL_PATHS = frozenset({"/v1/acl/token/self", "/v1/internal/acl/authorize", "/v1/operator/keyring"})
HTTP_TIMERS = web.RequestKey("http_timers", tuple)  # the timers of the route serving a request
# The agent a forwarded request came through (a client agent names itself): what ``_agent`` means in a
# prepared query the server executes for it. Proconsul's own header on its agent-to-server hop.
AGENT_NODE_HEADER = "X-Proconsul-Agent-Node"
# User events are each agent's own (its buffer, its fire), as Consul's are.
CLIENT_LOCAL_PREFIXES = ("/v1/event/",)


@dataclass(slots=True)
class ReadResult:
    """What a read returns besides its watch set: how to build the body (called only when the rendered
    answer for this index is not cached yet), and the status."""

    build: Callable[[], Any]
    status: int = 200


Read = Callable[[StateStore, WatchSet], ReadResult]


Recorder = Callable[[float], object]  # takes one request's time in ms


class HotCache:
    """Rendered answers of non-blocking default-mode reads, keyed by the raw request target, each dropped
    the moment any watch topic it read changes. A hit skips routing, query parsing and the store entirely:
    most discovery traffic is the same few queries asked again and again between changes."""

    def __init__(self, limit: int = CACHE_MAX) -> None:
        # key -> (status, body, headers, the authorizer it was rendered for: None with ACLs off, what records
        # a hit's time in the route's timer: a hit is timed as the route's requests are; None untimed)
        self.entries: dict[str, tuple[int, bytes, dict[str, str], Authorizer | None, Recorder | None]] = {}
        self._by_topic: TopicMap[str] = TopicMap()
        self._limit = limit

    def put(self, key: str, topics: Iterable[Topic], status: int, body: bytes, headers: dict[str, str],
            owner: Authorizer | None = None, timers: tuple[Sample, ...] = ()) -> None:  # fmt: skip
        if len(self.entries) >= self._limit:
            self.invalidate(None, None)
        # A hit is the hottest path there is: it appends its time straight to the timer's pending values
        # (a C call; ``Sample.observe`` does no more). A route has one timer at most: the legacy one
        # mirrors it (``http_timers``).
        assert len(timers) <= 1, "http_timers gives a route one timer"
        self.entries[key] = (status, body, headers, owner, timers[0].pending.append if timers else None)
        self._by_topic.add(topics, key)

    def invalidate(self, topics: Iterable[Topic] | None, kv_keys: Iterable[str] | None) -> None:
        if topics is None:
            self.entries.clear()
            self._by_topic.pop_all()
            return
        if not self._by_topic:
            return
        entries = self.entries
        for keys in self._by_topic.pop_changed(topics, kv_keys or ()):
            for key in keys:
                entries.pop(key, None)


class LocalAgent(Protocol):
    """What the API asks of the agent that serves it. Consul's /v1/agent endpoints act on that agent's own
    services, checks and membership, and a client agent forwards catalog requests through its HTTP
    session; everything else the handlers reach through the Api's own narrow parts."""

    services: dict[str, LocalService]
    checks: dict[str, LocalCheck]
    http_session: aiohttp.ClientSession | None
    http_addr: tuple[str, int] | None
    dns_addr: tuple[str, int] | None
    propose: Callable[[Command], Awaitable[Any]]

    @property
    def node_name(self) -> str: ...

    def registration_rules(self) -> RegistrationRules: ...

    def members(self) -> list[dict[str, Any]]: ...

    def known_servers(self) -> int: ...

    async def add_service(self, service: Service, specs: list[CheckSpec], replace_checks: bool) -> None: ...

    async def remove_service(self, sid: str) -> None: ...

    async def add_check(self, spec: CheckSpec) -> None: ...

    async def remove_check(self, cid: str) -> None: ...

    async def update_ttl(self, cid: str, status: str, output: str) -> None: ...

    async def set_node_maintenance(self, enable: bool, reason: str) -> None: ...

    async def set_service_maintenance(self, sid: str, enable: bool, reason: str) -> None: ...

    async def renew_session(self, sid: str) -> Any: ...

    async def leave(self) -> None: ...

    async def join(self, addresses: list[str]) -> tuple[int, list[str]]: ...

    def force_leave(self, node: str, prune: bool) -> None: ...

    async def reload(self) -> None: ...


class Api:
    """The HTTP API: one router built from the route table, and what the handlers read and write through.

    Built by the agent (the composition root) from narrow parts: the config, a store reader (read at each
    request: a snapshot restore replaces the store), the consensus to read and propose through, the watch
    hub that wakes blocking queries, Connect (None when the agent has none), and ``local``, the agent whose
    own services and checks the /v1/agent endpoints show and change (Consul's agent endpoints act on the
    agent serving them)."""

    def __init__(
        self,
        routes: Iterable[Route],
        *,
        config: Config,
        store: Callable[[], StateStore],
        consensus: Consensus,
        hub: WatchHub,
        local: LocalAgent,
        connect: Connect | None = None,
        acl: TokenResolver | None = None,
        acl_tokens: AgentTokenSetter | None = None,
        telemetry: MetricsSource | None = None,
        autopilot: Autopilot | None = None,
        logs: LogRouter | None = None,
        events: AgentEvents | None = None,
        coordinates: CoordinateSink | None = None,
        coordinates_disabled: bool = False,
        keyring: KeyringOps | None = None,
    ) -> None:
        self.agent = local
        self.keyring = keyring  # the gossip keyring's operations (None: not wired, answered 500)
        self.events = events  # this agent's user events (fire, buffer); None: /v1/event/* has nothing
        # A server's Coordinate.Update (None on a client agent: it forwards to a server), and whether
        # ``disable_coordinates`` turned /v1/coordinate/* off.
        self.coordinates = coordinates
        self.coordinates_disabled = coordinates_disabled
        self.acl_tokens = acl_tokens
        self.config = config
        self._store = store
        self.consensus = consensus
        self.hub = hub
        self.connect = connect
        self.autopilot = autopilot  # a server's autopilot (None on a client agent: it forwards to a server)
        self.logs = logs  # the process's log output, which /v1/agent/monitor streams from (None: not wired)
        self.is_client = not config.server and not config.dev
        self.router = Router(routes)
        # What answers the paths outside /v1/ when the agent serves the web UI (set by the agent; None:
        # Consul's "UI disabled" at / and its 404 text elsewhere). The UI is a client of this API.
        self.pages: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]] | None = None
        # key -> (store id, index, status, body, gzipped body, authorizer rendered for, filtered by ACLs)
        self.cache: dict[str, tuple[int, int, int, bytes, bytes | None, Authorizer | None, bool]] = {}
        self.hot = HotCache()
        hub.listeners.append(self.hot.invalidate)
        self.default_wait = config.default_query_time
        # The longest pause a client may take while sending a body: the listener's read timeout
        # (``limits.http_read_timeout``, which the agent's listener serves this Api under).
        self.body_read_timeout = config.limits.http_read_timeout
        self.max_wait = config.max_query_time
        self.pretty_default = config.dev
        # The TokenResolver every request's token goes through; with ACLs off nothing is resolved or
        # checked (``acl_on`` is the one attribute the hot path looks at).
        self.acl: TokenResolver = acl if acl is not None else StaticResolver({}, enabled=False)
        self.acl_on = self.acl.enabled
        self.acl_policy = self.acl.default_policy if acl is not None else config.acl_default_policy
        # Consul limits the requests each server handles; a client agent forwards to the servers, which
        # count what it forwards.
        self.limiter = None if self.is_client else RequestLimiter.from_limits(config.limits)
        # /v1/acl/login and /logout over the ACL tables: built at the first login when ACLs are on.
        self.acl_login: LoginService | None = None
        # Telemetry: every routed request is timed under its route (Consul's consul.api.http), unless
        # recording is off; a client agent counts what it forwards to the servers (consul.client.rpc).
        self.telemetry = telemetry
        registry = telemetry.metrics if telemetry is not None else None
        self.timing = registry is not None and registry.enabled
        self._timers: dict[str, dict[str, tuple[Sample, ...]]] = {}
        self._make_timers = http_timers(registry, legacy=not config.telemetry.disable_compat_1_9) \
            if registry is not None and self.timing else None  # fmt: skip
        self._client_rpc = registry.counter("client.rpc") if registry is not None and self.is_client else NO_COUNTER
        self._client_rpc_failed = registry.counter("client.rpc.failed") if registry is not None and self.is_client \
            else NO_COUNTER  # fmt: skip

    def set_request_limits(self, limits: Limits) -> None:
        """A config reload's ``limits.request_limits`` (the buckets start full again, as Consul's do when
        its rate limiter is reconfigured)."""
        self.limiter = None if self.is_client else RequestLimiter.from_limits(limits)

    @property
    def store(self) -> StateStore:
        return self._store()

    # ------------------------------------------------------------------ dispatch

    def route_timers(self, routes: dict[str, Route], method: str) -> tuple[Sample, ...]:
        """The timers of a route (any of the path's routes for a method it does not serve: Consul's mux
        times whatever reaches a registered pattern)."""
        pattern = next(iter(routes.values())).path
        by_method = self._timers.get(pattern)
        if by_method is None:
            by_method = self._timers[pattern] = {}
        timers = by_method.get(method)
        if timers is None:
            assert self._make_timers is not None
            timers = by_method[method] = self._make_timers(method, pattern)
        return timers

    @staticmethod
    def _observe(timers: tuple[Sample, ...], started: float) -> None:
        ms = (perf_counter() - started) * 1000.0
        for t in timers:
            t.observe(ms)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        # The raw path first: a hot-cache hit never needs the decoded one, and decoding it costs (yarl).
        if self.pages is not None and not request.raw_path.startswith("/v1/") and not request.path.startswith("/v1/"):
            return await self.pages(request)  # the web UI: it calls back into /v1/ with the visitor's token
        started = perf_counter() if self.timing else 0.0
        if self.limiter is not None:
            refused = self.limiter.check(request.method, asyncio.get_running_loop().time())
            if refused is not None:
                resp = self.text(429, refused.message)
                resp.headers["Retry-After"] = refused.retry_after_header
                return resp
        authz: Authorizer | None = None
        path = request.path
        if self.acl_on:
            if self.is_client and self._client_forwards(request):
                return await self._forward_timed(request, started)  # the server resolves the token the request carries
            try:
                authz = await self._resolve(request)
            except ACLError as exc:
                return self.text(403, str(exc))
        if self.hot.entries and request.method == "GET":
            key = request.raw_path
            if "gzip" in request.headers.get("Accept-Encoding", ""):
                key += "\x00gzip"
            if authz is not None:
                key += "\x00" + authz.accessor_id
            hit = self.hot.entries.get(key)
            # An answer is served again only to the very authorizer it was rendered for.
            if hit is not None and hit[3] is authz and self.consensus.fast_read_ok():
                resp = web.Response(status=hit[0], body=hit[1], headers=hit[2])
                if started and hit[4] is not None:
                    hit[4]((perf_counter() - started) * 1000.0)
                return resp
        path = request.path
        if self.is_client and self._client_forwards(request):
            return await self._forward_timed(request, started)
        routes, suffix = self.router.resolve(path)
        if routes is None:
            if path.startswith("/v1/"):
                return self.text(404, "Invalid URL path: not a recognized HTTP API endpoint\n")
            if path == "/":
                return self.text(200, "Consul Agent: UI disabled. To enable, set ui_config.enabled=true in the "
                                      "agent configuration and restart.")  # fmt: skip
            return self.text(404, "Invalid URL path: if attempting to use the HTTP API, ensure the path starts "
                                  "with '/v1/'\n")  # fmt: skip
        method = request.method
        timers: tuple[Sample, ...] = ()
        if started:
            timers = self.route_timers(routes, method)
            request[HTTP_TIMERS] = timers  # kept with the answer if it goes to the hot cache
        route = routes.get(method)
        if route is None and method == "HEAD":
            route = routes.get("GET")
        if route is None:
            allow = "OPTIONS," + ",".join(m for m in ALL_METHODS if m in routes)
            if method == "OPTIONS":
                resp = web.Response(status=200, headers={"Allow": allow})
            else:
                resp = self.text(405, f"method {method} not allowed")
                resp.headers["Allow"] = allow
            if started:
                self._observe(timers, started)
            return resp
        if "dc=" in request.query_string and route.takes_dc:
            dc = request.query.get("dc")
            if dc and dc != self.config.datacenter:
                # Consul forwards such a request to the named datacenter's servers; Proconsul has no WAN
                # federation, so it answers what Consul answers for a datacenter it has no path to, never
                # this datacenter's data (agent/consul/rpc.go forwardDC: structs.ErrNoDCPath).
                return self.text(500, NO_DC_PATH)
        try:
            if authz is not None:
                request[ROUTE] = (route, suffix)
                await authorize(self, request, route, suffix, authz)
            return await route.handler(self, request, suffix)
        except ACLError as exc:
            return self.text(403, str(exc))
        except HTTPError as exc:
            resp = self.text(exc.status, exc.message)
            resp.headers.update(exc.headers)
            if exc.status == 408:
                resp.force_close()  # the rest of a stalled body is not waited for
            return resp
        except CommandError as exc:  # a write refused (by the FSM, the agent or a definition's validation)
            return self.text(exc.status, exc.message)
        except NotLeaderError as exc:
            return self.text(500, str(exc))
        except RPCError as exc:
            return self.text(exc.status if 400 <= exc.status < 600 else 500, f"rpc error: {exc.message}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a handler bug answers 500, it never kills the server
            log.exception("handler failed", path=path, method=method)
            return self.text(500, f"Internal error: {exc}")
        finally:
            if started:
                self._observe(timers, started)

    @staticmethod
    def _client_forwards(request: web.Request) -> bool:
        """Whether a client agent sends this request to a server: everything but its own /v1/agent/
        endpoints (the member list among them: its own gossip pool's, as Consul's), and its user events (each
        agent's own buffer and fire, as Consul's are)."""
        path = request.path
        if path in CLIENT_LOCAL_PATHS or path.startswith(CLIENT_LOCAL_PREFIXES):
            return False
        return not path.startswith("/v1/agent/")

    async def _resolve(self, request: web.Request) -> Authorizer:
        """The request's authorizer (also left in ``request["authz"]`` for the handler): its token, else the
        agent's default token, else the anonymous token. Raises ``ACLNotFound`` for an unknown token."""
        secret = request_token(request) or self.acl.default_secret()
        authz = await self.acl.resolve(secret)
        request[AUTHZ] = authz
        request[PRESENTED] = secret != ""
        return authz

    async def request_body(self, request: web.Request) -> bytes:
        """The body, read once (within ``MAX_BODY``) and kept for the handler's own ``read_body``."""
        body = await self.read_body(request)
        request[BODY] = body
        return body

    def id_owner(self, route: Route, ident: str) -> tuple[str, str] | None:
        """The ACL operation and name that guard the object an ID in the path names (None when no such
        object exists: the handler answers its 404). A local service by its name; a local check by its
        service's name, or this node when it is a node check (Consul's vetCheckUpdateWithAuthorizer); a
        session by its node; an intention by its destination."""
        path = route.path
        access = route.access
        if path.startswith("/v1/agent/check/"):
            chk = self.agent.checks.get(ident)
            if chk is None:
                return None
            svc = self.agent.services.get(chk.spec.service_id) if chk.spec.service_id else None
            if svc is not None:
                return f"service_{access}", svc.name
            return f"node_{access}", self.agent.node_name
        if path.startswith("/v1/agent/"):
            svc = self.agent.services.get(ident)
            return (f"service_{access}", svc.name) if svc is not None else None
        if path.startswith("/v1/session/"):
            session = self.store.sessions.get(ident)
            return (f"session_{access}", session.node) if session is not None else None
        if path.startswith("/v1/connect/intentions/") and self.connect is not None:
            from registry.connect.state import find_legacy

            found = find_legacy(self.store, ident)
            return (f"intention_{access}", str(found[0]["Name"])) if found is not None else None
        # A route declared path-id that nothing here resolves is refused, never let through.
        raise ACLError(f"Permission denied: no ACL rule resolves the ID in {route.path}")

    async def _forward_timed(self, request: web.Request, started: float) -> web.StreamResponse:
        """``forward``, timed under the route it is for (Consul's client agent times the request whose
        RPC it makes)."""
        if not started:
            return await self.forward(request)
        routes, _ = self.router.resolve(request.path)
        try:
            return await self.forward(request)
        finally:
            if routes is not None:
                self._observe(self.route_timers(routes, request.method), started)

    async def forward(self, request: web.Request) -> web.StreamResponse:
        """A client agent keeps no catalog: catalog, health, KV and status requests go to a server."""
        consensus = self.consensus
        target = consensus.http_target()
        if target is None:
            await consensus.refresh()
            target = consensus.http_target()
        if target is None:
            return self.text(500, "No known Consul servers")
        session = self.agent.http_session
        assert session is not None
        body = await self.read_body(request, 64 * 1024 * 1024)
        rewrite = self.router.forward_body.get((request.method, request.path))
        if rewrite is not None:
            body = rewrite(body, self.agent.node_name)
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("x-consul-token", "authorization", "content-type", "accept")}  # fmt: skip
        # Where ``near=_ip`` measures from is the caller, not this agent (Consul's agent sets the RPC's
        # Source.Ip from the request); and ``near=_agent`` is this agent, named before it leaves.
        source = request.headers.get("X-Forwarded-For") or request.remote
        if source:
            headers["X-Forwarded-For"] = source
        target_path = request.path_qs
        if "near=_agent" in request.query_string and request.query.get("near") == "_agent":
            target_path = str(request.rel_url.update_query(near=self.agent.node_name))
        # A prepared query's own ``Near: "_agent"`` is read on the server; it names this agent there, as
        # Consul's client agent names itself in the Execute RPC (QuerySource.Node).
        headers[AGENT_NODE_HEADER] = self.agent.node_name
        if self.acl_on and not request_token(request):
            default = self.acl.default_secret()  # Consul's client agent sends its default token
            if default:
                headers["X-Consul-Token"] = default
        self._client_rpc.inc()
        try:
            async with session.request(request.method, f"http://{target}{target_path}", data=body or None,
                                       headers=headers, allow_redirects=False) as resp:  # fmt: skip
                data = await resp.read()
                out = {k: v for k, v in resp.headers.items()
                       if k.startswith("X-Consul") or k in ("Content-Type", "Allow", "X-Content-Type-Options",
                                                           "Content-Security-Policy")}  # fmt: skip
                return web.Response(status=resp.status, body=data, headers=out)
        except (TimeoutError, OSError) as exc:
            self._client_rpc_failed.inc()
            consensus.forget_leader()
            return self.text(500, f"rpc error: cannot reach server {target}: {exc}")

    # ------------------------------------------------------------------ responses

    def text(self, status: int, body: str) -> web.Response:
        return web.Response(
            status=status,
            body=body.encode(),
            headers={"Content-Type": "text/plain; charset=utf-8",
                     "X-Consul-Default-ACL-Policy": self.acl_policy},  # fmt: skip
        )

    def render(self, request: web.Request, obj: Any) -> bytes:
        if self.pretty_default or "pretty" in request.query:
            return (json.dumps(obj, indent=4) + "\n").encode()
        return json.dumps(obj, separators=(",", ":")).encode()

    def json(self, request: web.Request, obj: Any, status: int = 200) -> web.Response:
        return self._respond(request, status, self.render(request, obj), None, {})

    def _respond(
        self,
        request: web.Request,
        status: int,
        body: bytes,
        gz: bytes | None,
        headers: dict[str, str],
        content_type: str = "application/json",
    ) -> web.Response:
        headers["Content-Type"] = content_type
        headers["X-Consul-Default-ACL-Policy"] = self.acl_policy
        if self.acl_on and request.get(FILTERED) and request.get(PRESENTED):
            headers[FILTERED_HEADER] = "true"
        if body and gz is None and len(body) > 1024 and "gzip" in request.headers.get("Accept-Encoding", ""):
            gz = gzip.compress(body, compresslevel=5)
        if gz is not None and "gzip" in request.headers.get("Accept-Encoding", ""):
            headers["Content-Encoding"] = "gzip"
            headers["Vary"] = "Accept-Encoding"
            return web.Response(status=status, body=gz, headers=headers)
        return web.Response(status=status, body=body, headers=headers)

    # ------------------------------------------------------------------ blocking reads

    def query_options(self, request: web.Request) -> tuple[int, float, str]:
        q = request.query
        index_s = q.get("index")
        min_index = 0
        if index_s:
            try:
                min_index = int(index_s)
                if min_index < 0:
                    raise ValueError
            except ValueError:
                raise HTTPError(400, "Invalid index") from None
        wait = self.default_wait
        wait_s = q.get("wait")
        if wait_s:
            try:
                wait = parse_duration(wait_s, field="wait")
            except DurationError:
                raise HTTPError(400, "Invalid wait time") from None
            if wait <= 0:
                wait = self.default_wait
            wait = min(wait, self.max_wait)
        stale = "stale" in q
        consistent = "consistent" in q
        if stale and consistent:
            raise HTTPError(400, "Cannot specify ?stale with ?consistent, conflicting semantics.")
        mode = "stale" if stale else "consistent" if consistent else "leader"
        return min_index, wait, mode

    async def read(self, request: web.Request, run: Read, *, cacheable: bool = True,
                   blocking: bool = True) -> web.Response:  # fmt: skip
        """Consul's blocking query (agent/consul/rpc.go blockingQuery): run the read, which fills a watch
        set with what it looked at and the index of it; while that index is not past the caller's
        ``?index``, sleep on the watch set until something in it changes or the wait (plus up to 1/16
        jitter) runs out, then run it again. ``blocking=False``: an endpoint Consul never blocks (prepared
        query execute and explain) answers at once whatever ``?index`` says."""
        min_index, wait, mode = self.query_options(request)
        if not blocking:
            min_index = 0
        consensus = self.consensus
        await consensus.barrier_read(mode)
        acl_on = self.acl_on
        if acl_on:
            run = self._acl_watching(run)
        ws = WatchSet()
        result = run(self.store, ws)
        if min_index and ws.index <= min_index:
            hub = self.hub
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait + random.uniform(0, wait / 16)
            while ws.index <= min_index:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                fut = hub.watch(ws)
                try:
                    await asyncio.wait_for(fut, remaining)
                except TimeoutError:
                    pass
                finally:
                    hub.unwatch(ws, fut)
                if acl_on:
                    await self._reauthorize(request)
                ws = WatchSet()
                result = run(self.store, ws)
        index = ws.index if ws.index > 0 else 1
        headers = {
            "X-Consul-Index": str(index),
            "X-Consul-KnownLeader": "true" if consensus.known_leader() else "false",
            "X-Consul-LastContact": str(consensus.last_contact_ms()),
            "X-Consul-Effective-Consistency": mode,
        }
        if result.status == 404:
            # Consul writes the status of a read of nothing with no body and so no Content-Type (Go sets
            # one only when a body is written); claiming JSON for an empty body breaks JSON clients.
            headers["X-Consul-Default-ACL-Policy"] = self.acl_policy
            resp = web.Response(status=404, headers=headers)
        elif not cacheable:
            return self._respond(request, result.status, self.render(request, result.build()), None, headers)
        else:
            key = self._cache_key(request)
            authz = request.get(AUTHZ) if acl_on else None
            if authz is not None:
                key += "\x00" + authz.accessor_id
            store_id = id(self.store)
            hit = self.cache.get(key)
            # A body rendered for one authorizer is never served to another (its list may be filtered).
            if hit is not None and hit[0] == store_id and hit[1] == index and hit[5] is authz:
                if hit[6]:
                    request[FILTERED] = True
                resp = self._respond(request, hit[2], hit[3], hit[4], headers)
            else:
                body = self.render(request, result.build())
                gz = gzip.compress(body, compresslevel=5) if len(body) > 1024 else None
                if len(self.cache) >= CACHE_MAX:
                    self.cache.clear()
                filtered = bool(acl_on and request.get(FILTERED))
                self.cache[key] = (store_id, index, result.status, body, gz, authz, filtered)
                resp = self._respond(request, result.status, body, gz, headers)
        # Only 200s: some handlers rewrite a 404 from read() into their own error text.
        if resp.status == 200 and not min_index and mode == "leader" and cacheable and consensus.fast_read_ok():
            hot_key = request.raw_path + ("\x00gzip" if "gzip" in request.headers.get("Accept-Encoding", "") else "")
            owner = request.get(AUTHZ) if acl_on else None
            if owner is not None:
                hot_key += "\x00" + owner.accessor_id
            self.hot.put(hot_key, ws, resp.status, resp.body, dict(resp.headers), owner,  # type: ignore[arg-type]
                         request.get(HTTP_TIMERS, ()) if self.timing else ())  # fmt: skip
        return resp

    @staticmethod
    def _acl_watching(run: Read) -> Read:
        """With ACLs on, an answer depends on the caller's permissions: the read also watches the ACL
        tables, so a blocking query wakes (and the hot cache drops the answer) when a token or policy
        changes, and reports their index."""

        def watching(store: StateStore, ws: WatchSet) -> ReadResult:
            result = run(store, ws)
            ws.saw(TOPIC_ACL, store.table_index.get(TOPIC_ACL[0], 0))
            return result

        return watching

    async def _reauthorize(self, request: web.Request) -> None:
        """A blocking query woke: resolve its token again and check its route again, so a revoked token or
        a narrowed policy takes effect on a waiting query too (raises ``ACLError``: a 403)."""
        authz = await self._resolve(request)
        found = request.get(ROUTE)
        if found is not None:
            route, suffix = found
            await authorize(self, request, route, suffix, authz)

    @staticmethod
    def _cache_key(request: web.Request) -> str:
        qs = request.query_string
        if qs and any(k in qs for k in _SKIP_KEYS):
            qs = "&".join(
                sorted(p for p in qs.split("&") if not p.startswith(("index=", "wait=", "stale", "consistent",
                                                                       "cached", "token=")))  # fmt: skip
            )
        return request.path + "?" + qs

    async def read_body(self, request: web.Request, limit: int = MAX_BODY, too_large: str | None = None) -> bytes:
        """Read a request body, refusing more than ``limit`` bytes whether or not Content-Length says so (the
        lesson of CVE-2025-11374/11375: a body is counted as it arrives, never trusted to be what its header
        claims), and refusing a client that pauses longer than ``body_read_timeout`` while sending it (408),
        so a slow sender cannot hold a handler forever.

        What has arrived already is taken without waiting, and only a read that must wait for more is timed:
        a small body (a KV value) is whole in the buffer when the handler runs, and arming a timer for it
        was a measurable share of the leader's CPU per replicated write."""
        def refuse(size: int | None) -> HTTPError:
            if too_large is not None:
                return HTTPError(413, too_large.format(size=size if size is not None else f"> {limit}"))
            return HTTPError(413, f"Request body too large, max size: {limit} bytes")

        # Read already, to find the name an ACL rule is checked against: only ``authorize`` does that, and
        # only with ACLs on. (A miss in the request's mapping raises and catches a KeyError: not free.)
        cached = request.get(BODY) if self.acl_on else None
        if cached is not None:
            if len(cached) > limit:
                raise refuse(len(cached))
            return cached
        length = request.content_length
        if length is not None and length > limit:
            raise refuse(length)
        content = request.content
        chunks = []
        total = 0
        while True:
            chunk = content.read_nowait(65536)
            if not chunk:
                if content.is_eof():
                    break
                pause = self.body_read_timeout
                try:
                    async with asyncio.timeout(pause):
                        chunk = await content.read(65536)
                except TimeoutError:
                    raise HTTPError(408, f"Request body read timed out: no data for {pause:g}s") from None
                if not chunk:
                    break
            total += len(chunk)
            if total > limit:
                raise refuse(None)
            chunks.append(chunk)
        return b"".join(chunks)

    async def propose(self, command: Command) -> Any:
        """The agent's one proposer; a refusal raises CommandError, which ``dispatch`` answers."""
        return await self.agent.propose(command)
