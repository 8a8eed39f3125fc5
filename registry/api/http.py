"""The HTTP API server: routing, blocking queries, Consul's headers, errors and JSON rendering.

One aiohttp catch-all route feeds our own router, so that unknown paths, wrong methods and OPTIONS get
Consul's answers (404 text, 405 with ``Allow``) and the hot path does one dict lookup. Reads go through
``Api.read``: run the query against the store, and if the caller's ``?index`` is not behind, sleep on the
watch topics the query read until something in them changes or the wait (plus jitter) runs out. Rendered
bodies are cached by (query, index), so a thousand watchers woken by one change render it once.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import random
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from registry.api.errors import HTTPError
from registry.consensus import NotLeaderError, RPCError
from registry.durations import DurationError, parse_duration
from registry.state.store import StateStore, Topic

if TYPE_CHECKING:
    from registry.agent.agent import Agent

log = structlog.get_logger("proconsul.http")

Handler = Callable[["Api", web.Request, str], Awaitable[web.StreamResponse]]

ALL_METHODS = ("GET", "PUT", "POST", "DELETE", "HEAD", "PATCH")
MAX_BODY = 8 * 1024 * 1024  # non-KV bodies; KV has its own, smaller, configurable limit
CACHE_MAX = 4096
_SKIP_KEYS = ("index=", "wait=", "stale", "consistent", "cached", "token=")


@dataclass(slots=True)
class ReadResult:
    """What a read saw: the index to report, the topics to sleep on, and how to build the body."""

    index: int
    topics: tuple[Topic, ...]
    build: Callable[[], Any]
    status: int = 200


class HotCache:
    """Rendered answers of non-blocking default-mode reads, keyed by the raw request target, each dropped
    the moment any watch topic it read changes. A hit skips routing, query parsing and the store entirely:
    most discovery traffic is the same few queries asked again and again between changes."""

    def __init__(self, limit: int = CACHE_MAX) -> None:
        self.entries: dict[str, tuple[int, bytes, dict[str, str]]] = {}
        self._by_topic: dict[Topic, set[str]] = {}
        self._prefix_topics = 0
        self._limit = limit

    def put(self, key: str, topics: tuple[Topic, ...], status: int, body: bytes, headers: dict[str, str]) -> None:
        if len(self.entries) >= self._limit:
            self.invalidate(None, None)
        self.entries[key] = (status, body, headers)
        for t in topics:
            keys = self._by_topic.get(t)
            if keys is None:
                keys = self._by_topic[t] = set()
                if t[0] == "kvp":
                    self._prefix_topics += 1
            keys.add(key)

    def _drop(self, topic: Topic) -> None:
        keys = self._by_topic.pop(topic, None)
        if keys is None:
            return
        if topic[0] == "kvp":
            self._prefix_topics -= 1
        for key in keys:
            self.entries.pop(key, None)

    def invalidate(self, topics: Any, kv_keys: Any) -> None:
        if topics is None:
            self.entries.clear()
            self._by_topic.clear()
            self._prefix_topics = 0
            return
        if not self._by_topic:
            return
        for t in topics:
            self._drop(t)
        for key in kv_keys or ():
            self._drop(("kv", key))
            if self._prefix_topics:
                for i in range(len(key) + 1):
                    self._drop(("kvp", key[:i]))


class Router:
    def __init__(self) -> None:
        self.exact: dict[str, dict[str, Handler]] = {}
        self.prefix: dict[str, dict[str, Handler]] = {}
        self._prefixes: list[str] = []

    def add(self, methods: str, path: str, handler: Handler) -> None:
        """``path`` ending in "/" takes a suffix (e.g. "/v1/kv/"); otherwise it is matched exactly."""
        table = self.prefix if path.endswith("/") else self.exact
        routes = table.setdefault(path, {})
        for m in methods.split(","):
            routes[m.strip()] = handler
        self._prefixes = sorted(self.prefix, key=len, reverse=True)

    def resolve(self, path: str) -> tuple[dict[str, Handler] | None, str]:
        routes = self.exact.get(path)
        if routes is not None:
            return routes, ""
        for p in self._prefixes:
            if path.startswith(p):
                return self.prefix[p], path[len(p) :]
        return None, ""


class Api:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.router = Router()
        self.cache: dict[str, tuple[int, int, int, bytes, bytes | None]] = {}
        self.hot = HotCache()
        agent.hub.listeners.append(self.hot.invalidate)
        cfg = agent.config
        self.default_wait = cfg.default_query_time
        self.max_wait = cfg.max_query_time
        self.pretty_default = cfg.dev
        self.acl_policy = cfg.acl_default_policy
        from registry.api import agent_endpoints, catalog, health, kv, operator, session, status, txn

        for module in (agent_endpoints, catalog, health, kv, status, operator, session, txn):
            module.register(self.router)
        from registry.api import connect as connect_api

        connect_api.register(self.router)  # Connect CA, leaf, authorize, intentions, /v1/config

    # ------------------------------------------------------------------ dispatch

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        if self.hot.entries and request.method == "GET":
            key = request.raw_path
            if "gzip" in request.headers.get("Accept-Encoding", ""):
                key += "\x00gzip"
            hit = self.hot.entries.get(key)
            if hit is not None and self.agent.consensus.fast_read_ok():
                return web.Response(status=hit[0], body=hit[1], headers=hit[2])
        path = request.path
        if self.agent.is_client and (not path.startswith("/v1/agent/") or path == "/v1/agent/members"):
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
            return resp
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
        consensus = self.agent.consensus
        target = consensus.http_target()
        if target is None:
            await consensus.refresh()
            target = consensus.http_target()
        if target is None:
            return self.text(500, "No known Consul servers")
        session = self.agent.http_session
        assert session is not None
        body = await read_body(request, 64 * 1024 * 1024)
        if request.path == "/v1/session/create" and request.method == "PUT":
            from registry.api.session import default_node_for_forwarding

            body = default_node_for_forwarding(body, self.agent.node_name)
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

    async def read(
        self,
        request: web.Request,
        run: Callable[[StateStore], ReadResult],
        *,
        cacheable: bool = True,
    ) -> web.Response:
        min_index, wait, mode = self.query_options(request)
        consensus = self.agent.consensus
        await consensus.barrier_read(mode)
        result = run(self.agent.store)
        if min_index and result.index <= min_index:
            hub = self.agent.hub
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait + random.uniform(0, wait / 16)
            while result.index <= min_index:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                fut = hub.watch(result.topics)
                try:
                    await asyncio.wait_for(fut, remaining)
                except TimeoutError:
                    pass
                finally:
                    hub.unwatch(result.topics, fut)
                result = run(self.agent.store)
        index = result.index if result.index > 0 else 1
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
            store_id = id(self.agent.store)
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
            self.hot.put(hot_key, result.topics, resp.status, resp.body, dict(resp.headers))  # type: ignore[arg-type]
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

    async def propose(self, cmd: dict[str, Any]) -> Any:
        from registry.fsm import CommandError

        cmd.setdefault("Time", self.agent.wall_clock_ns())  # the FSM's only notion of now (lock-delays)
        result = await self.agent.consensus.propose(cmd)
        if isinstance(result, CommandError):
            raise HTTPError(result.status, result.message)
        return result


async def read_body(request: web.Request, limit: int = MAX_BODY, too_large: str | None = None) -> bytes:
    """Read a request body, refusing more than ``limit`` bytes whether or not Content-Length says so."""
    def refuse(size: int | None) -> HTTPError:
        if too_large is not None:
            return HTTPError(413, too_large.format(size=size if size is not None else f"> {limit}"))
        return HTTPError(413, f"Request body too large, max size: {limit} bytes")

    length = request.content_length
    if length is not None and length > limit:
        raise refuse(length)
    chunks = []
    total = 0
    while True:
        chunk = await request.content.read(65536)
        if not chunk:
            break
        total += len(chunk)
        if total > limit:
            raise refuse(None)
        chunks.append(chunk)
    return b"".join(chunks)


class HTTPListener:
    def __init__(self, runner: web.BaseRunner) -> None:
        self.runner = runner

    async def close(self) -> None:
        # Stop accepting, give in-flight requests a moment, then close (blocking queries are cut short).
        await self.runner.cleanup()


API_KEY = web.AppKey("api", Api)


def build_app(agent: Agent) -> web.Application:
    api = Api(agent)
    app = web.Application(client_max_size=MAX_BODY + 1)
    app[API_KEY] = api
    app.router.add_route("*", "/{tail:.*}", api.dispatch)
    return app


def build_runner(agent: Agent, shutdown_timeout: float = 0.25) -> web.BaseRunner:
    """The API served through aiohttp's low-level server: ``Api.dispatch`` does its own routing, so the
    Application's router and middleware chain would only add cost to every request (about a fifth of a
    cached discovery answer's time)."""
    api = Api(agent)
    server = web.Server(api.dispatch, access_log=None)  # type: ignore[arg-type]
    return web.ServerRunner(server, handle_signals=False, shutdown_timeout=shutdown_timeout)


async def start_http(agent: Agent) -> HTTPListener:
    cfg = agent.config
    runner = build_runner(agent)
    await runner.setup()
    host = cfg.client_addr
    port = cfg.ports.http
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        await runner.cleanup()
        raise OSError(
            exc.errno,
            f"Error starting HTTP listener on {host}:{port}: {exc.strerror}. Is another agent running? "
            f"Stop it or choose another port with -http-port.",
        ) from exc
    site = web.SockSite(runner, sock, backlog=1024)  # aiohttp's default of 128 drops connection bursts
    await site.start()
    agent.http_addr = sock.getsockname()[:2]
    return HTTPListener(runner)
