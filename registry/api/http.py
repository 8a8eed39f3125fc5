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
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from aiohttp import web

from registry.api.errors import HTTPError
from registry.api.ratelimit import RequestLimiter
from registry.api.routing import ALL_METHODS, Route, Router
from registry.commands import Command, CommandError
from registry.config import Config
from registry.consensus import Consensus, NotLeaderError, RPCError
from registry.gocompat import DurationError, parse_duration
from registry.state.store import StateStore
from registry.state.topics import Topic, WatchSet
from registry.watch import TopicMap, WatchHub

if TYPE_CHECKING:
    import aiohttp

    from registry.acl.resolver import TokenResolver
    from registry.agent.local import LocalCheck, LocalService
    from registry.api.acl import AgentTokenSetter
    from registry.api.acl_login import LoginService
    from registry.connect.service import Connect
    from registry.registration import CheckSpec, RegistrationRules
    from registry.structs import Service

log = structlog.get_logger("proconsul.http")

MAX_BODY = 8 * 1024 * 1024  # non-KV bodies; KV has its own, smaller, configurable limit
CACHE_MAX = 4096
_SKIP_KEYS = ("index=", "wait=", "stale", "consistent", "cached", "token=")
# Paths a client agent answers itself (with its own ACL resolver) instead of forwarding to a server.
CLIENT_LOCAL_PATHS = frozenset({"/v1/acl/token/self", "/v1/internal/acl/authorize"})


@dataclass(slots=True)
class ReadResult:
    """What a read returns besides its watch set: how to build the body (called only when the rendered
    answer for this index is not cached yet), and the status."""

    build: Callable[[], Any]
    status: int = 200


Read = Callable[[StateStore, WatchSet], ReadResult]


class HotCache:
    """Rendered answers of non-blocking default-mode reads, keyed by the raw request target, each dropped
    the moment any watch topic it read changes. A hit skips routing, query parsing and the store entirely:
    most discovery traffic is the same few queries asked again and again between changes."""

    def __init__(self, limit: int = CACHE_MAX) -> None:
        self.entries: dict[str, tuple[int, bytes, dict[str, str]]] = {}
        self._by_topic: TopicMap[str] = TopicMap()
        self._limit = limit

    def put(self, key: str, topics: Iterable[Topic], status: int, body: bytes, headers: dict[str, str]) -> None:
        if len(self.entries) >= self._limit:
            self.invalidate(None, None)
        self.entries[key] = (status, body, headers)
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

    async def add_service(self, service: Service, specs: list[CheckSpec], replace_checks: bool) -> None: ...

    async def remove_service(self, sid: str) -> None: ...

    async def add_check(self, spec: CheckSpec) -> None: ...

    async def remove_check(self, cid: str) -> None: ...

    async def update_ttl(self, cid: str, status: str, output: str) -> None: ...

    async def set_node_maintenance(self, enable: bool, reason: str) -> None: ...

    async def set_service_maintenance(self, sid: str, enable: bool, reason: str) -> None: ...

    async def renew_session(self, sid: str) -> Any: ...

    async def leave(self) -> None: ...


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
    ) -> None:
        self.agent = local
        self.acl = acl  # the agent's TokenResolver (None: no ACL state at all, as in some unit tests)
        self.acl_tokens = acl_tokens
        self.config = config
        self._store = store
        self.consensus = consensus
        self.hub = hub
        self.connect = connect
        self.is_client = not config.server and not config.dev
        self.router = Router(routes)
        self.cache: dict[str, tuple[int, int, int, bytes, bytes | None]] = {}
        self.hot = HotCache()
        hub.listeners.append(self.hot.invalidate)
        self.default_wait = config.default_query_time
        self.max_wait = config.max_query_time
        self.pretty_default = config.dev
        self.acl_policy = config.acl_default_policy
        # Consul limits the requests each server handles; a client agent forwards to the servers, which
        # count what it forwards.
        self.limiter = None if self.is_client else RequestLimiter.from_limits(config.limits)
        # /v1/acl/login and /logout over the ACL tables: built at the first login when ACLs are on.
        self.acl_login: LoginService | None = None

    @property
    def store(self) -> StateStore:
        return self._store()

    # ------------------------------------------------------------------ dispatch

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        if self.limiter is not None:
            refused = self.limiter.check(request.method, asyncio.get_running_loop().time())
            if refused is not None:
                resp = self.text(429, refused.message)
                resp.headers["Retry-After"] = refused.retry_after_header
                return resp
        if self.hot.entries and request.method == "GET":
            key = request.raw_path
            if "gzip" in request.headers.get("Accept-Encoding", ""):
                key += "\x00gzip"
            hit = self.hot.entries.get(key)
            if hit is not None and self.consensus.fast_read_ok():
                return web.Response(status=hit[0], body=hit[1], headers=hit[2])
        path = request.path
        if self.is_client and (not path.startswith("/v1/agent/") or path == "/v1/agent/members") \
                and path not in CLIENT_LOCAL_PATHS:
            return await self.forward(request)
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
        handler = routes.get(method)
        if handler is None and method == "HEAD":
            handler = routes.get("GET")
        if handler is None:
            allow = "OPTIONS," + ",".join(m for m in ALL_METHODS if m in routes)
            if method == "OPTIONS":
                return web.Response(status=200, headers={"Allow": allow})
            resp = self.text(405, f"method {method} not allowed")
            resp.headers["Allow"] = allow
            return resp
        try:
            return await handler(self, request, suffix)
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
        body = await read_body(request, 64 * 1024 * 1024)
        rewrite = self.router.forward_body.get((request.method, request.path))
        if rewrite is not None:
            body = rewrite(body, self.agent.node_name)
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("x-consul-token", "authorization", "content-type", "accept")}  # fmt: skip
        try:
            async with session.request(request.method, f"http://{target}{request.path_qs}", data=body or None,
                                       headers=headers, allow_redirects=False) as resp:  # fmt: skip
                data = await resp.read()
                out = {k: v for k, v in resp.headers.items()
                       if k.startswith("X-Consul") or k in ("Content-Type", "Allow", "X-Content-Type-Options",
                                                           "Content-Security-Policy")}  # fmt: skip
                return web.Response(status=resp.status, body=data, headers=out)
        except (TimeoutError, OSError) as exc:
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

    async def read(self, request: web.Request, run: Read, *, cacheable: bool = True) -> web.Response:
        """Consul's blocking query (agent/consul/rpc.go blockingQuery): run the read, which fills a watch
        set with what it looked at and the index of it; while that index is not past the caller's
        ``?index``, sleep on the watch set until something in it changes or the wait (plus up to 1/16
        jitter) runs out, then run it again."""
        min_index, wait, mode = self.query_options(request)
        consensus = self.consensus
        await consensus.barrier_read(mode)
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
            resp = self._respond(request, 404, b"", None, headers)
        elif not cacheable:
            return self._respond(request, result.status, self.render(request, result.build()), None, headers)
        else:
            key = self._cache_key(request)
            store_id = id(self.store)
            hit = self.cache.get(key)
            if hit is not None and hit[0] == store_id and hit[1] == index:
                resp = self._respond(request, hit[2], hit[3], hit[4], headers)
            else:
                body = self.render(request, result.build())
                gz = gzip.compress(body, compresslevel=5) if len(body) > 1024 else None
                if len(self.cache) >= CACHE_MAX:
                    self.cache.clear()
                self.cache[key] = (store_id, index, result.status, body, gz)
                resp = self._respond(request, result.status, body, gz, headers)
        # Only 200s: some handlers rewrite a 404 from read() into their own error text.
        if resp.status == 200 and not min_index and mode == "leader" and cacheable and consensus.fast_read_ok():
            hot_key = request.raw_path + ("\x00gzip" if "gzip" in request.headers.get("Accept-Encoding", "") else "")
            self.hot.put(hot_key, ws, resp.status, resp.body, dict(resp.headers))  # type: ignore[arg-type]
        return resp

    @staticmethod
    def _cache_key(request: web.Request) -> str:
        qs = request.query_string
        if qs and any(k in qs for k in _SKIP_KEYS):
            qs = "&".join(
                sorted(p for p in qs.split("&") if not p.startswith(("index=", "wait=", "stale", "consistent",
                                                                       "cached", "token=")))  # fmt: skip
            )
        return request.path + "?" + qs

    async def propose(self, command: Command) -> Any:
        """The agent's one proposer; a refusal raises CommandError, which ``dispatch`` answers."""
        return await self.agent.propose(command)


async def read_body(request: web.Request, limit: int = MAX_BODY, too_large: str | None = None) -> bytes:
    """Read a request body, refusing more than ``limit`` bytes whether or not Content-Length says so (the
    lesson of CVE-2025-11374/11375: a body is counted as it arrives, never trusted to be what its header
    claims), and refusing a client that pauses longer than the listener's read timeout while sending it
    (408), so a slow sender cannot hold a handler forever."""
    def refuse(size: int | None) -> HTTPError:
        if too_large is not None:
            return HTTPError(413, too_large.format(size=size if size is not None else f"> {limit}"))
        return HTTPError(413, f"Request body too large, max size: {limit} bytes")

    length = request.content_length
    if length is not None and length > limit:
        raise refuse(length)
    pause = getattr(request.protocol, "body_read_timeout", None)  # set by the agent's listener
    chunks = []
    total = 0
    while True:
        try:
            async with asyncio.timeout(pause):
                chunk = await request.content.read(65536)
        except TimeoutError:
            raise HTTPError(408, f"Request body read timed out: no data for {pause:g}s") from None
        if not chunk:
            break
        total += len(chunk)
        if total > limit:
            raise refuse(None)
        chunks.append(chunk)
    return b"".join(chunks)
