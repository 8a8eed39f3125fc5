"""The HTTP data plane: HTTP/1.1 with keep-alive on both sides of the sidecar, parsed with httptools
(llhttp, Node.js' parser). The decisions are the pure modules' (``routing``, ``rbac``,
``connect_proxy.upstream``); this module moves requests and responses.

Two listeners speak it (``proxy.Proxy`` picks the protocol per new connection from the discovery
chain's ``Protocol``, so a ``service-defaults`` change applies to new connections):

- an upstream listener (``UpstreamHandler``): plaintext from the local app; each request is routed
  (router -> splitter -> resolver), sent over an mTLS keep-alive connection to an instance of the
  chosen target's sidecar, retried per the route's policy, timed out per the route (504);
- the public listener (``LocalHandler``): mTLS from other sidecars; each request is decided by the L7
  intentions (403 ``RBAC: access denied`` before the app sees it) and sent to the local app over a
  keep-alive pool.

What the data plane guarantees, as Envoy does for Consul:

- Hop-by-hop headers (RFC 9110 section 7.6.1: ``Connection`` and the names it lists, ``Keep-Alive``,
  ``Proxy-Connection``, ``TE``, ``Transfer-Encoding``, ``Upgrade``) are not forwarded; framing is
  re-done per hop (``Content-Length`` kept, chunked bodies re-chunked as they stream).
- Bodies stream with backpressure: a request body beyond ``REPLAY_LIMIT`` bytes (or chunked) is not
  held for a retry but sent as it arrives; reading from a side stops while the other side's write
  buffer is full. Nothing is buffered without bound.
- Circuit breakers answer at once (``UpstreamPool.acquire``): ``MaxConcurrentRequests`` around each
  request, ``MaxConnections`` for each new upstream connection, ``MaxPendingRequests`` for requests
  waiting on a connection being made; each refusal is a 503.
- Passive health: each attempt is reported to the pool (a connect failure, a reset, a timeout or a 5xx
  is a failure), which ejects an instance after consecutive failures.
- Connect failures (nothing was sent) are always retried on another instance, up to
  ``MAX_CONNECT_ATTEMPTS``, as the L4 listener does; the route's retry policy adds retries on
  responses and resets. A reused keep-alive connection the peer closed before answering is retried
  once when the request can be replayed (as HTTP clients do), without counting as a failure.
- ``Expect: 100-continue`` is answered by the sidecar (Envoy's default), so the body arrives without
  waiting for the upstream.

The texts of locally generated answers are Envoy's (``no healthy upstream``, ``upstream request
timeout``, ``upstream connect error or disconnect/reset before headers. reset reason: ...``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import httptools

from ca.spiffe import ServiceIdentity
from connect_proxy import identity
from connect_proxy.http import rbac
from connect_proxy.http.routing import HeaderEdits, RouteError, Router, RouteResult, apply_edits
from connect_proxy.metrics import Registry
from connect_proxy.tls import SessionCache
from connect_proxy.upstream import Instance, UpstreamPool
from registry.discoverychain import CompiledChain
from registry.intentions import Decision

__all__ = [
    "Body",
    "ClientConn",
    "Exchange",
    "LocalHandler",
    "ServerConn",
    "UpstreamHandler",
    "define_metrics",
]

FAST_BODY_LIMIT = 64 * 1024  # responses up to this size are relayed whole on the callback path
REPLAY_LIMIT = 64 * 1024  # request bodies up to this size are held so that a retry can resend them
BODY_HIGH = 256 * 1024  # buffered request body above which the downstream stops being read
BODY_LOW = 64 * 1024
MAX_HEAD_BYTES = 64 * 1024  # request line and headers (Envoy's default max_request_headers_kb is 60)
MAX_QUEUED = 8  # pipelined requests accepted before reading pauses
MAX_CONNECT_ATTEMPTS = 3  # instances tried for one request when connecting fails
MAX_IDLE_PER_INSTANCE = 128
TIMER_SLACK = 0.001  # a timer may fire this much before its time (the loops count time in milliseconds)
WRITE_HIGH = 512 * 1024
WRITE_LOW = 128 * 1024
FOLD_EVERY = 4096  # requests counted per listener before the counts are folded into the metrics

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade",
                        "trailer", "proxy-authenticate", "proxy-authorization"})  # fmt: skip
# Headers travel as the parser's bytes (latin-1, as HTTP/1.1 defines them): names and values are decoded
# only where a matcher, an edit or a retry policy reads them.
_DROP = frozenset(n.encode() for n in HOP_BY_HOP) | {b"content-length"}
_CONNECTION_OPTIONS = frozenset({b"close", b"keep-alive"})  # Connection tokens that name no header
# Headers the sidecar drops, rewrites or acts on: a request without any is forwarded as it came.
_SPECIAL = _DROP | {b"expect", b"x-forwarded-client-cert"}
_NO_EXPECT = frozenset({b"expect"})
_NO_EXPECT_XFCC = frozenset({b"expect", b"x-forwarded-client-cert"})
Headers = list[tuple[bytes, bytes]]
NO_HEALTHY_UPSTREAM = b"no healthy upstream"
TIMEOUT_BODY = b"upstream request timeout"
RESET_PREFIX = "upstream connect error or disconnect/reset before headers. reset reason: "
_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 413: "Payload Too Large",
            431: "Request Header Fields Too Large", 502: "Bad Gateway", 503: "Service Unavailable",
            504: "Gateway Timeout"}  # fmt: skip


def define_metrics(m: Registry) -> None:
    """The HTTP mode's metric families (the L4 ones are the proxy's)."""
    m.counter("proconsul_proxy_http_requests_total",
              "HTTP requests by listener and response class (2xx, 3xx, 4xx, 5xx)", ("listener", "code_class"))  # fmt: skip
    m.counter("proconsul_proxy_http_retries_total", "HTTP request attempts beyond the first", ("upstream",))
    m.histogram("proconsul_proxy_upstream_request_seconds",
                "Time from a request's arrival to the end of its response", ("listener",))  # fmt: skip


class _Tally:
    """One listener's request counts (by response class) and latencies, kept as two lists and folded
    into the registry when it is read (a scrape, ``Registry.value``) or every ``FOLD_EVERY`` requests:
    a request costs two appends rather than a counter and a histogram update."""

    __slots__ = ("_allowed", "_denied", "_elapsed", "_labels", "_metrics", "_status")

    def __init__(self, metrics: Registry, listener: str) -> None:
        self._metrics = metrics
        self._labels = (listener,)
        self._status: list[int] = []
        self._elapsed: list[float] = []
        self._allowed = self._denied = 0  # the public listener's per-request authorization decisions
        metrics.add_fold(self.fold)

    def authz(self, allowed: bool) -> None:
        if allowed:
            self._allowed += 1
        else:
            self._denied += 1

    def add(self, status: int, elapsed: float) -> None:
        self._status.append(status)
        self._elapsed.append(elapsed)
        if len(self._status) >= FOLD_EVERY:
            self.fold()

    def fold(self) -> None:
        if self._allowed:
            self._metrics.inc("proconsul_proxy_authz_total", ("allow",), self._allowed)
            self._allowed = 0
        if self._denied:
            self._metrics.inc("proconsul_proxy_authz_total", ("deny",), self._denied)
            self._denied = 0
        statuses, elapsed = self._status, self._elapsed
        if not statuses:
            return
        self._status, self._elapsed = [], []
        counts: dict[int, int] = {}
        for status in statuses:
            c = status // 100
            counts[c] = counts.get(c, 0) + 1
        listener = self._labels[0]
        for c, n in counts.items():
            self._metrics.inc("proconsul_proxy_http_requests_total", (listener, f"{c}xx"), n)
        self._metrics.observe_many("proconsul_proxy_upstream_request_seconds", elapsed, self._labels)


# ================================================================================= messages


@dataclass(slots=True)
class Head:
    """A request's start line and headers as received. ``headers`` keeps order, case and bytes."""

    method: str
    target: str
    version: str
    headers: Headers
    keep_alive: bool
    content_length: int | None
    chunked: bool
    plain: bool = False  # no header the sidecar drops, rewrites or acts on (``_SPECIAL``): forwarded as is

    def lookup(self) -> Mapping[str, str]:
        """Lower-case names to values, several values joined with ``,`` (what matchers look at), built
        on the first look: most requests meet no header matcher."""
        return _HeaderMap(self.headers)

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


class _HeaderMap(Mapping[str, str]):
    __slots__ = ("_map", "_pairs")

    def __init__(self, pairs: Headers) -> None:
        self._pairs = pairs
        self._map: dict[str, str] | None = None

    def _built(self) -> dict[str, str]:
        out = self._map
        if out is None:
            out = self._map = {}
            for n, v in _decoded(self._pairs):
                k = n.lower()
                out[k] = f"{out[k]},{v}" if k in out else v
        return out

    def __getitem__(self, key: str) -> str:
        return self._built()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self._built().get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._built()

    def __iter__(self) -> Iterator[str]:
        return iter(self._built())

    def __len__(self) -> int:
        return len(self._built())


class Body:
    """A request body as it arrives: bounded buffering, reading paused above ``BODY_HIGH``."""

    __slots__ = ("_chunks", "_conn", "_size", "_waiter", "done", "failed")

    def __init__(self, conn: ServerConn) -> None:
        self._conn = conn
        self._chunks: collections.deque[bytes] | None = None  # made by the first chunk: most requests have none
        self._size = 0
        self.done = False
        self.failed = False
        self._waiter: asyncio.Future[None] | None = None

    def feed(self, data: bytes) -> None:
        if self._chunks is None:
            self._chunks = collections.deque()
        self._chunks.append(data)
        self._size += len(data)
        if self._size > BODY_HIGH:
            self._conn.pause_reading()
        self._wake()

    def finish(self, failed: bool = False) -> None:
        self.done = True
        self.failed = self.failed or failed
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self) -> bytes:
        """The next chunk; b"" at the end. Raises ConnectionResetError if the client went away."""
        while not self._chunks:
            if self.done:
                if self.failed:
                    raise ConnectionResetError("the client closed the connection mid-body")
                return b""
            self._waiter = self._conn.loop.create_future()
            await self._waiter
            self._waiter = None
        assert self._chunks is not None
        data = self._chunks.popleft()
        self._size -= len(data)
        if self._size < BODY_LOW:
            self._conn.resume_reading()
        return data

    async def read_all(self) -> bytes:
        parts = []
        while chunk := await self.read():
            parts.append(chunk)
        return b"".join(parts)

    async def discard(self) -> None:
        while await self.read():
            pass


@dataclass(slots=True)
class Exchange:
    head: Head
    body: Body
    started: float = field(default_factory=time.monotonic)
    response_started: bool = False  # the response head went downstream: errors can only reset now
    route: RouteResult | None = None  # routed already (the callback path handed it over)
    authorized: bool = False  # allowed by the intentions already (the callback path handed it over)


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _decoded(headers: Headers) -> list[tuple[str, str]]:
    return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers]


def _encoded(headers: list[tuple[str, str]]) -> Headers:
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]


def _edited(headers: Headers, edits: tuple[HeaderEdits, ...]) -> Headers:
    """``routing.apply_edits`` (which works on text) on headers kept as bytes."""
    return _encoded(apply_edits(_decoded(headers), edits))


def _framing(headers: Headers) -> tuple[int | None, bool, bool, bool]:
    """``Content-Length`` (None when absent or chunked), chunked, whether no header is one of
    ``_SPECIAL`` (then the headers are forwarded as they are, without another pass), and whether the
    only one is a single ``Content-Length`` (a response's headers can then go on as they came): one pass."""
    length: int | None = None
    chunked = False
    plain = True
    specials = lengths = 0
    for n, v in headers:
        k = n.lower()
        if k in _SPECIAL:
            plain = False
            specials += 1
            if k == b"content-length":
                lengths += 1
                with contextlib.suppress(ValueError):
                    length = int(v.strip())
            elif k == b"transfer-encoding":
                chunked = b"chunked" in v.lower()
    return (None if chunked else length), chunked, plain, plain or (specials == lengths == 1 and length is not None)


def strip_hop_by_hop(headers: Headers, extra: frozenset[bytes] = frozenset()) -> Headers:
    """Headers without RFC 9110's hop-by-hop fields (and the names ``Connection`` lists), without the
    framing we redo (``Content-Length``) and without ``extra`` names."""
    drop = _DROP | extra if extra else _DROP
    out = []
    listed: set[bytes] = set()
    for n, v in headers:
        k = n.lower()
        if k in drop:
            if k == b"connection":
                listed.update(t.strip().lower() for t in v.split(b","))
            continue
        out.append((n, v))
    listed -= _CONNECTION_OPTIONS
    return [(n, v) for n, v in out if n.lower() not in listed] if listed else out


def _encode_head(first: bytes, headers: Headers) -> bytes:
    return first + b"\r\n" + b"".join([n + b": " + v + b"\r\n" for n, v in headers]) + b"\r\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


# ================================================================================= downstream side


Handler = Callable[["ServerConn", Exchange], Awaitable[bool]]
# The callback path: takes a request (True) and later calls ``ServerConn.fast_done``/``fast_requeue``, or
# declines it (False) and the request goes to ``Handler``.
FastHandler = Callable[["ServerConn", Exchange], bool]


class ServerConn(asyncio.Protocol):
    """One downstream connection: requests parsed as they arrive and handled one at a time, in order;
    with ``tls`` the connection is upgraded to TLS (server side) before the first byte is read and
    ``on_tls`` may refuse it (returns False) after looking at the client certificate."""

    def __init__(self, handler: Handler, *, tls: ssl.SSLContext | None = None, handshake_timeout: float = 10.0,
                 on_tls: Callable[[ServerConn], bool] | None = None,
                 conns: set[ServerConn] | None = None, fast: FastHandler | None = None) -> None:  # fmt: skip
        self.handler = handler
        self.fast = fast
        self._fast_active = False  # a request is on the callback path: the serving task waits
        self._fast_candidate: Exchange | None = None
        self.tls = tls
        self.handshake_timeout = handshake_timeout
        self.on_tls = on_tls
        self.conns = conns
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.peercert: dict[str, Any] | None = None
        self.source: ServiceIdentity | None = None  # the client's identity (public listener)
        self.decision: tuple[object, Decision] | None = None  # cached per L7 policy
        self.xfcc: tuple[str, tuple[bytes, bytes]] | None = None  # (our URI, the header) on the public listener
        self.parser: httptools.HttpRequestParser | None = None
        self.closed = False
        self.draining = False
        self.busy = False
        self.reading_from: ClientConn | None = None  # the upstream whose response we are relaying
        self._queue: collections.deque[Exchange] = collections.deque()
        self._current: Exchange | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._read_paused = False
        self._head_bytes = 0
        self._url: list[bytes] = []
        self._headers: Headers = []
        self._task: asyncio.Task[None] | None = None
        self._tls: _TLS | None = None
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._timed: _Fast | None = None  # the callback path's request whose deadline ``_timer`` keeps
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self.loop.create_future()

    # -------------------------------------------------------------- transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)  # type: ignore[attr-defined]
        _nodelay(transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else ""
        if self.conns is not None:
            self.conns.add(self)
        if self.tls is not None:
            # TLS over memory BIOs rather than loop.start_tls: uvloop's start_tls on an accepted
            # server-side transport hands the ClientHello to the protocol instead of the TLS layer.
            self._tls = _TLS(self.tls, server_side=True)
            self._handshake_timer = self.loop.call_later(self.handshake_timeout, self._handshake_expired)
        else:
            self._start()

    def _handshake_expired(self) -> None:
        if self._tls is not None and not self._tls.established:
            self.abort()

    @property
    def resumed(self) -> bool:
        """The TLS handshake resumed a session (``peercert`` is then the session's certificate)."""
        return self._tls is not None and self._tls.established and self._tls.obj.session_reused

    def _start(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self._task = self.loop.create_task(self._serve())

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The task serving this connection's requests, one at a time (the handler runs in it)."""
        return self._task

    def data_received(self, data: bytes) -> None:
        tls = self._tls
        if tls is not None:
            try:
                if not tls.established:
                    if not tls.handshake(data):
                        self._send_raw(tls.take_out())
                        return
                    self._send_raw(tls.take_out())
                    if self._handshake_timer is not None:
                        self._handshake_timer.cancel()
                    self.peercert = tls.obj.getpeercert()
                    if self.on_tls is not None and not self.on_tls(self):
                        self.abort()
                        return
                    self._start()
                    data, eof = tls.read(b"")
                else:
                    data, eof = tls.read(data)
            except (ssl.SSLError, ValueError):
                self._send_raw(tls.take_out())  # the alert, so the peer learns why
                self.abort()
                return
            out = tls.take_out()
            if out:
                self._send_raw(out)
            if data:
                self._parse(data)
            if eof:
                self.eof_received()
            return
        self._parse(data)

    def _send_raw(self, data: bytes) -> None:
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def _parse(self, data: bytes) -> None:
        if self.parser is None:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No protocol upgrades (WebSocket) through this sidecar: the request is served as plain
            # HTTP without its Upgrade header, and the connection closes after it.
            if self._current is not None:
                self._current.head.keep_alive = False
                self._current.body.finish()
                self._current = None
            self.parser = None
        except httptools.HttpParserError as exc:
            self.parser = None
            if self._current is not None:
                self._current.body.finish(failed=True)
                self._current = None
            if not self.busy and not self._queue:
                status = 431 if isinstance(exc, _HeadTooLarge) or self._head_bytes > MAX_HEAD_BYTES else 400
                self.respond_local(status, b"", keep_alive=False)
                self.close()
            else:
                self.abort()

    def eof_received(self) -> bool:
        if self._current is not None:
            self._current.body.finish(failed=True)
            self._current = None
        if not self.busy and not self._queue:
            return False  # idle: close
        self.draining = True
        return True  # answer what is in flight, then close

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost()

    def _lost(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.conns is not None:
            self.conns.discard(self)
        if self._timed is None and self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._current is not None:
            self._current.body.finish(failed=True)
        self._wake()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)
        if self.reading_from is not None:
            self.reading_from.abort()
        if not self.done.done():
            self.done.set_result(None)

    @property
    def write_paused(self) -> bool:
        return self._write_paused

    def pause_writing(self) -> None:
        self._write_paused = True
        if self.reading_from is not None:
            self.reading_from.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.reading_from is not None:
            self.reading_from.resume_reading()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    def pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None and not self.closed:
            self._read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._read_paused and self.transport is not None and not self.closed and len(self._queue) < MAX_QUEUED:
            self._read_paused = False
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            if self._tls is not None:
                try:
                    data = self._tls.encrypt(data)
                except (ssl.SSLError, ValueError):
                    self.abort()
                    return
            self.transport.write(data)

    async def drain(self) -> None:
        while self._write_paused and not self.closed:
            self._drain_waiter = self.loop.create_future()
            await self._drain_waiter

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()
        self._lost()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            if self._tls is not None and self._tls.established:
                self._send_raw(self._tls.close_notify())
            self.transport.close()

    def drain_gracefully(self) -> None:
        """Stop after the request in flight (its response says ``Connection: close``); close if idle."""
        self.draining = True
        if not self.busy and not self._queue:
            self.close()

    # -------------------------------------------------------------- httptools callbacks

    def on_message_begin(self) -> None:
        self._url = []
        self._headers = []
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._head_bytes += len(url)
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge("request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge("request headers too large")
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        length, chunked, plain, _ = _framing(self._headers)
        url = self._url
        head = Head(self.parser.get_method().decode("latin-1"), (url[0] if len(url) == 1 else b"".join(url)).decode("latin-1"),
                    self.parser.get_http_version(), self._headers, self.parser.should_keep_alive(), length,
                    chunked, plain)  # fmt: skip
        ex = Exchange(head, Body(self))
        self._current = ex
        if self.fast is not None and not self.busy and not self._queue and not head.has_body \
                and not self.draining and not self._write_paused and head.method != "HEAD":  # fmt: skip
            self._fast_candidate = ex  # offered to the callback path once the message is complete
            return
        self._queue.append(ex)
        if len(self._queue) >= MAX_QUEUED:
            self.pause_reading()
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._current is not None:
            self._current.body.feed(body)

    def on_message_complete(self) -> None:
        ex = self._current
        if ex is not None:
            ex.body.finish()
            self._current = None
            if ex is self._fast_candidate:
                self._fast_candidate = None
                self._offer(ex)

    # -------------------------------------------------------------- serving

    def _offer(self, ex: Exchange) -> None:
        """A bodiless request on an idle connection: the callback path first (no task switch, no
        future per request), else the serving task."""
        assert self.fast is not None
        self._fast_active = self.busy = True
        if not self.fast(self, ex):
            self._fast_active = self.busy = False
            self._queue.append(ex)
            self._wake()

    def arm(self, f: _Fast) -> None:
        """Keep ``f``'s deadline: one timer per connection, made only when none is due at or before it.
        Requests that end in time leave it running (no timer made and cancelled per request); when it
        fires it finds the request then in flight, if any, and re-arms for its deadline, or it ends."""
        self._timed = f
        timer = self._timer
        if timer is None or self._timer_at > f.deadline:
            if timer is not None:
                timer.cancel()
            self._timer_at = f.deadline
            self._timer = self.loop.call_at(f.deadline, self._on_timer)

    def disarm(self, f: _Fast) -> None:
        if self._timed is f:
            self._timed = None

    def _on_timer(self) -> None:
        self._timer = None
        f = self._timed
        if f is None:
            return
        if self.loop.time() >= f.deadline - TIMER_SLACK:
            f.timed_out()
        else:
            self.arm(f)

    def fast_done(self, keep: bool) -> None:
        """The request on the callback path has been answered; ``keep``: the connection stays open."""
        self._fast_active = self.busy = False
        if self.closed:
            return
        if not keep or not self._queue and (self.draining or self.parser is None):
            self.close()
        elif self._queue:
            self._wake()

    def fast_requeue(self, ex: Exchange) -> None:
        """The callback path gives the request (nothing of its answer sent) to the serving task."""
        self._fast_active = self.busy = False
        if not self.closed:
            self._queue.appendleft(ex)
            self._wake()

    def _wake(self) -> None:
        if self._fast_active and not self.closed:
            return  # the serving task runs again once the callback path is done
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _serve(self) -> None:
        try:
            while not self.closed:
                if not self._queue or self._fast_active:
                    if not self._fast_active and (self.draining or self.parser is None):
                        break
                    self._waiter = self.loop.create_future()
                    await self._waiter
                    self._waiter = None
                    continue
                ex = self._queue.popleft()
                self.resume_reading()
                self.busy = True
                try:
                    keep = await self.handler(self, ex)
                finally:
                    self.busy = False
                if not keep or self.closed:
                    break
                if not ex.body.done:
                    break  # the handler left part of the body unread: the connection cannot be reused
        except Exception:  # noqa: BLE001 - one connection's failure must not leak into others
            self.abort()
            raise
        finally:
            if not self.closed:
                self.close()

    def respond_local(self, status: int, body: bytes, *, keep_alive: bool = True,
                      headers: Headers | None = None) -> bool:  # fmt: skip
        """A response made by the sidecar itself. Returns whether the connection stays open."""
        keep = keep_alive and not self.draining
        out = [(b"content-length", b"%d" % len(body)), *([(b"content-type", b"text/plain")] if body else []),
               *(headers or []), *([] if keep else [(b"connection", b"close")])]  # fmt: skip
        self.write(_encode_head(b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, "Unknown").encode()), out) + body)
        return keep


class _HeadTooLarge(httptools.HttpParserError):
    pass


class _TLS:
    """TLS over memory BIOs, either side: bytes from the socket in, plaintext and records out.

    Both listeners' HTTP connections use it rather than the loop's TLS transport: each write is one
    record handed to the socket in one ``write`` (no per-write buffering and flushing layer between
    the protocol and the socket), and a server side can be put on an accepted plain transport (uvloop's
    ``start_tls`` on an accepted server-side transport hands the ClientHello to the protocol instead of
    the TLS layer)."""

    __slots__ = ("_in", "_out", "_raw", "established", "obj")

    def __init__(self, ctx: ssl.SSLContext, *, server_side: bool, server_hostname: str | None = None,
                 session: ssl.SSLSession | None = None) -> None:  # fmt: skip
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self._in, self._out, server_side=server_side, server_hostname=server_hostname,
                                session=session)  # fmt: skip
        # Reads and writes per request go to the C object under ``ssl.SSLObject`` (its ``read``, ``write``
        # and ``pending`` only forward to it), one Python call fewer each; the wrapper where it has none.
        self._raw: Any = getattr(self.obj, "_sslobj", None) or self.obj
        self.established = False

    def handshake(self, data: bytes) -> bool:
        """Feed handshake bytes; True once the handshake is complete. Raises ssl.SSLError."""
        self._in.write(data)
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            return False
        self.established = True
        return True

    def read(self, data: bytes) -> tuple[bytes, bool]:
        """Plaintext from ``data`` (and what was already buffered), and whether the peer closed TLS.

        The loop stops once the incoming BIO is empty and no decrypted byte is left in the SSL object
        rather than on the ``SSLWantReadError`` the next read would raise: without read-ahead (Python
        never sets it) OpenSSL takes from the BIO only the record it is reading, so nothing else can be
        waiting, and a request or response in one record costs one read, not a read and an exception."""
        inbio = self._in
        if data:
            inbio.write(data)
        obj = self._raw
        chunks = []
        eof = False
        try:
            while True:
                chunk = obj.read(262144)
                if not chunk:
                    eof = True
                    break
                chunks.append(chunk)
                if not inbio.pending and not obj.pending():
                    break
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            eof = True
        if not chunks:
            return b"", eof
        return (chunks[0] if len(chunks) == 1 else b"".join(chunks)), eof

    def encrypt(self, data: bytes) -> bytes:
        self._raw.write(data)
        return self._out.read()

    def take_out(self) -> bytes:
        return self._out.read() if self._out.pending else b""

    def close_notify(self) -> bytes:
        try:
            self.obj.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLError):
            pass
        return self.take_out()


class _Deadline:
    """A request's timeout: the task serving the downstream connection is cancelled when it passes, as
    ``asyncio.timeout`` does, without that helper's per-use lookups of the running loop and the current
    task (on Python 3.11 each lookup of the running loop is a ``getpid`` system call) and its
    rescheduling machinery: one timer per request, cancelled when the request ends."""

    __slots__ = ("_handle", "_task", "expired")

    def __init__(self, down: ServerConn, delay: float) -> None:
        self._task = down.task
        self.expired = False
        self._handle = down.loop.call_later(delay, self._expire)

    def _expire(self) -> None:
        if self._task is not None and not self._task.done():
            self.expired = True
            self._task.cancel()

    def timed_out(self) -> bool:
        """Whether the CancelledError being handled is this deadline's (and no other cancellation is
        pending): then it has been withdrawn from the task and the caller answers the timeout."""
        if not self.expired or self._task is None:
            return False
        return self._task.uncancel() == 0

    def cancel(self) -> None:
        self._handle.cancel()


# ================================================================================= upstream side


@dataclass(slots=True)
class ResponseHead:
    status: int
    reason: bytes
    headers: Headers
    content_length: int | None
    chunked: bool
    verbatim: bool = False  # no hop-by-hop header and at most one Content-Length: forwardable as it came


class _Watcher(Protocol):
    """What hears of one response on the callback path (``ClientConn.begin`` with a watcher)."""

    def upstream_done(self) -> None: ...

    def upstream_head(self, resp: ResponseHead) -> None: ...

    def upstream_failed(self, exc: UpstreamReset) -> None: ...


class UpstreamReset(ConnectionError):
    """The upstream closed or reset the connection before a complete response head."""

    def __init__(self, msg: str, *, got_bytes: bool) -> None:
        super().__init__(msg)
        self.got_bytes = got_bytes


class ClientConn(asyncio.Protocol):
    """One connection to an upstream (another sidecar over mTLS, or the local app), used for one
    request at a time and kept alive between them. With ``tls`` the client side of TLS runs over
    memory BIOs (``_TLS``): ``handshake`` waits for it, then ``peercert`` holds the server's certificate.

    Per request it holds one future (the response head); the end of the response is a flag, and a
    future for it is made only when a caller has to wait for the rest of a body."""

    def __init__(self, tls: ssl.SSLContext | None = None, server_hostname: str | None = None,
                 session: ssl.SSLSession | None = None) -> None:  # fmt: skip
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.uses = 0
        self.reusable = False
        self.peercert: dict[str, Any] | None = None
        self.on_lost: Callable[[], None] | None = None
        # Called with the SSLObject after each read until it returns True (tls.SessionCache.keeper).
        self.on_session: Callable[[ssl.SSLObject], bool] | None = None
        self._tls = (_TLS(tls, server_side=False, server_hostname=server_hostname, session=session)
                     if tls is not None else None)  # fmt: skip
        self._handshake: asyncio.Future[None] | None = None
        self._watcher: _Watcher | None = None
        self.resp: ResponseHead | None = None
        self._head: asyncio.Future[ResponseHead] | None = None
        self._done: asyncio.Future[None] | None = None
        self._finished = False  # the response has ended (whole, or by the connection's end)
        self._error: UpstreamReset | None = None
        self._headers: Headers = []
        self._reason = b""
        self._head_only = False
        self._informational = False
        self._got_bytes = False
        self._sink: Callable[[bytes], None] | None = None
        self._early: list[bytes] = []
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._close_delimited = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)  # type: ignore[attr-defined]
        _nodelay(transport)
        if self._tls is not None:
            self._handshake = self._loop.create_future()
            self._tls_step(b"")

    async def handshake(self) -> None:
        """Wait until the TLS handshake is complete. Raises ssl.SSLError or ConnectionError."""
        if self._handshake is not None:
            await self._handshake

    def _tls_step(self, data: bytes) -> None:
        tls = self._tls
        assert tls is not None and self._handshake is not None
        try:
            done = tls.handshake(data)
        except (ssl.SSLError, ValueError) as exc:
            self._send_raw(tls.take_out())  # the alert, so the peer learns why
            if not self._handshake.done():
                self._handshake.set_exception(exc if isinstance(exc, ssl.SSLError) else ssl.SSLError(str(exc)))
            self.abort()
            return
        self._send_raw(tls.take_out())
        if done:
            self.peercert = tls.obj.getpeercert()
            if not self._handshake.done():
                self._handshake.set_result(None)

    def _send_raw(self, data: bytes) -> None:
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    @property
    def resumed(self) -> bool:
        return self._tls is not None and self._tls.established and self._tls.obj.session_reused

    @property
    def sslobj(self) -> ssl.SSLObject | None:
        return self._tls.obj if self._tls is not None else None

    def begin(self, head_only: bool, watcher: _Watcher | None = None) -> None:
        """Get ready for the response to a new request. With ``watcher`` (the callback path) no future is
        made: the watcher hears of the whole response ("done": a response whose body, with a known
        length up to ``FAST_BODY_LIMIT``, has all arrived), of a head whose body is to be streamed
        ("head": from then on the connection is used as on the future path) or of the failure."""
        self._watcher = watcher
        self._head = self._loop.create_future() if watcher is None else None
        self.resp = None
        self._done = None
        self._finished = False
        self._error = None
        self._headers = []
        self._head_only = head_only
        self._got_bytes = False
        self._sink = None
        self._early = []
        self._close_delimited = False
        self.reusable = False
        self.uses += 1

    def data_received(self, data: bytes) -> None:
        tls = self._tls
        if tls is not None:
            if not tls.established:
                self._tls_step(data)
                if not tls.established:
                    return
                data = b""
            try:
                data, eof = tls.read(data)
            except (ssl.SSLError, ValueError) as exc:
                self._send_raw(tls.take_out())
                self._fail(UpstreamReset(f"TLS error: {exc}", got_bytes=self._got_bytes or bool(data)))
                self.abort()
                return
            out = tls.take_out()
            if out:
                self._send_raw(out)
            if self.on_session is not None and self.on_session(tls.obj):
                self.on_session = None
            if eof:
                if data:
                    self._feed(data)
                self.close()
                return
            if not data:
                return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        self._got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamReset(f"protocol error: {exc}", got_bytes=True))
            self.abort()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_exception(ConnectionResetError("connection closed during the TLS handshake"))
            self._handshake.exception()
        if self._head is not None and self._head.done() and not self._finished and self._close_delimited:
            self._set_finished()  # a response delimited by the connection's end
        self._fail(UpstreamReset("connection reset" if exc else "connection closed", got_bytes=self._got_bytes))
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)
        if self.on_lost is not None:
            self.on_lost()
            self.on_lost = None

    def _fail(self, exc: UpstreamReset) -> None:
        watcher = self._watcher
        if watcher is not None:
            self._watcher = None
            self._finished = True
            self._error = exc
            watcher.upstream_failed(exc)
            return
        head = self._head
        if head is not None and not head.done():
            head.set_exception(exc)
            head.exception()  # retrieved: a failure nobody awaits is not an error to log
        if not self._finished:
            self._finished = True
            self._error = exc
            done = self._done
            if done is not None and not done.done():
                done.set_exception(exc)
                done.exception()

    def _set_finished(self) -> None:
        self._finished = True
        done = self._done
        if done is not None and not done.done():
            done.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    async def drain(self) -> None:
        while self._write_paused and not self.closed:
            self._drain_waiter = self._loop.create_future()
            await self._drain_waiter
        if self.closed:
            raise UpstreamReset("connection closed while sending", got_bytes=self._got_bytes)

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            if self._tls is not None:
                try:
                    data = self._tls.encrypt(data)
                except (ssl.SSLError, ValueError):
                    self.abort()
                    return
            self.transport.write(data)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            if self._tls is not None and self._tls.established:
                self._send_raw(self._tls.close_notify())
            self.transport.close()

    # -------------------------------------------------------------- httptools callbacks

    def on_message_begin(self) -> None:
        self._headers = []
        self._informational = False

    def on_status(self, status: bytes) -> None:
        self._reason = status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            self._informational = True  # 100 Continue and friends: the final response follows
            return
        length, chunked, _, verbatim = _framing(self._headers)
        self._close_delimited = length is None and not chunked and not self._head_only and status not in (204, 304)
        resp = self.resp = ResponseHead(status, self._reason, self._headers, length, chunked, verbatim)
        watcher = self._watcher
        if watcher is not None:
            if not (length is not None and length <= FAST_BODY_LIMIT or status in (204, 304)):
                self._watcher = None  # streamed: the rest goes the future path's way
                watcher.upstream_head(resp)
            return
        if self._head is not None and not self._head.done():
            self._head.set_result(resp)
        if self._head_only:
            # llhttp cannot be told that this answers a HEAD: the message ends here, and a fresh
            # parser reads the next response on this connection.
            self.parser = httptools.HttpResponseParser(self)
            self._complete(keep_alive=length is not None or chunked or status in (204, 304))

    def on_body(self, body: bytes) -> None:
        if self._sink is not None:
            self._sink(body)
        else:
            self._early.append(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        self._complete(keep_alive=self.parser.should_keep_alive())

    def _complete(self, *, keep_alive: bool) -> None:
        self.reusable = keep_alive and not self._close_delimited
        if not self._finished:
            self._set_finished()
            watcher = self._watcher
            if watcher is not None:
                self._watcher = None
                watcher.upstream_done()

    # -------------------------------------------------------------- use

    async def response_head(self) -> ResponseHead:
        assert self._head is not None
        return await self._head

    def attach(self, sink: Callable[[bytes], None]) -> None:
        """Send the body (what came already, then each chunk as it arrives) to ``sink``."""
        early, self._early = self._early, []
        for chunk in early:
            sink(chunk)
        self._sink = sink

    async def finished(self) -> None:
        """Wait for the end of the response. Raises UpstreamReset if the connection failed first."""
        if not self._finished:
            self._done = self._loop.create_future()
            await self._done
        elif self._error is not None:
            raise self._error

    def take_early(self) -> list[bytes]:
        early, self._early = self._early, []
        return early

    @property
    def complete(self) -> bool:
        """The whole response has arrived."""
        return self._finished and self._error is None


class Overflow(Exception):
    """A circuit breaker refused: answer 503 at once."""

    def __init__(self, limit: str) -> None:
        super().__init__(limit)
        self.limit = limit


class ConnectFailed(Exception):
    pass


@dataclass(slots=True)
class _Idle:
    conns: dict[Instance, list[ClientConn]] = field(default_factory=dict)

    def take(self, inst: Instance) -> ClientConn | None:
        stack = self.conns.get(inst)
        while stack:
            conn = stack.pop()
            if not conn.closed:
                return conn
        return None

    def give(self, inst: Instance, conn: ClientConn) -> None:
        if conn.closed or not conn.reusable:
            conn.close()
            return
        stack = self.conns.setdefault(inst, [])
        if len(stack) >= MAX_IDLE_PER_INSTANCE:
            conn.close()
            return
        stack.append(conn)

    def close_all(self) -> None:
        for stack in self.conns.values():
            for conn in stack:
                conn.close()
        self.conns.clear()


# ================================================================================= forwarding


async def _send_request(client: ClientConn, method: str, target: str, headers: Headers,
                        head: Head, body: bytes | Body | None) -> None:  # fmt: skip
    """Write the request: with ``body`` bytes (replayable) or a Body streamed as it arrives."""
    out = list(headers)
    first = _request_line(method, target)
    if isinstance(body, bytes):
        if body or head.content_length is not None or head.chunked:
            out.append((b"content-length", b"%d" % len(body)))
        client.write(_encode_head(first, out) + body)
        return
    if body is None:
        client.write(_encode_head(first, out))
        return
    if head.chunked:
        out.append((b"transfer-encoding", b"chunked"))
    else:
        out.append((b"content-length", b"%d" % (head.content_length or 0)))
    client.write(_encode_head(first, out))
    while chunk := await body.read():
        client.write(_chunk(chunk) if head.chunked else chunk)
        await client.drain()
    if head.chunked:
        client.write(b"0\r\n\r\n")


async def _relay_response(down: ServerConn, ex: Exchange, client: ClientConn, resp: ResponseHead,
                          edits: tuple[HeaderEdits, ...], extra: Headers | None = None) -> bool:  # fmt: skip
    """Stream the upstream's response to the downstream. Returns whether the downstream stays open."""
    head = ex.head
    no_body = head.method == "HEAD" or resp.status in (204, 304)
    headers = strip_hop_by_hop(resp.headers)
    if edits:
        headers = _edited(headers, edits)
    if extra:
        headers.extend(extra)
    keep = head.keep_alive and not down.draining
    chunked_down = False
    if resp.content_length is not None:
        headers.append((b"content-length", b"%d" % resp.content_length))
    elif not no_body:
        if head.version == "1.1":
            chunked_down = True
            headers.append((b"transfer-encoding", b"chunked"))
        else:
            keep = False  # an HTTP/1.0 client reads to the end of the connection
    if not keep:
        headers.append((b"connection", b"close"))
    ex.response_started = True
    out = _encode_head(_status_line(resp), headers)
    if no_body:
        down.write(out)
        await client.finished()
        return keep
    # What has arrived already goes out with the head: a small response is one write, not three.
    early = client.take_early()
    if early:
        out += b"".join(_chunk(c) for c in early if c) if chunked_down else b"".join(early)
    if client.complete:
        down.write(out + b"0\r\n\r\n" if chunked_down else out)
        await down.drain()
        return keep
    down.write(out)
    if chunked_down:
        client.attach(lambda data: down.write(_chunk(data)) if data else None)
    else:
        client.attach(down.write)
    down.reading_from = client
    if down.write_paused:
        client.pause_reading()
    try:
        await client.finished()
    finally:
        down.reading_from = None
        client.resume_reading()
    if chunked_down:
        down.write(b"0\r\n\r\n")
    await down.drain()
    return keep


def _whole_response(down: ServerConn, ex: Exchange, resp: ResponseHead, edits: tuple[HeaderEdits, ...],
                    body: list[bytes]) -> tuple[bytes, bool]:  # fmt: skip
    """A response that has all arrived, with a known length (or none: 204, 304), as the bytes to send
    downstream in one write; what ``_relay_response`` sends for it. Returns (bytes, keep the
    downstream open?)."""
    head = ex.head
    keep = head.keep_alive and not down.draining
    if resp.verbatim and not edits:
        # Nothing to drop, and its own Content-Length (llhttp allows one) frames it on this hop too.
        headers = resp.headers if keep else [*resp.headers, (b"connection", b"close")]
    else:
        headers = strip_hop_by_hop(resp.headers)
        if edits:
            headers = _edited(headers, edits)
        if resp.content_length is not None:
            headers.append((b"content-length", b"%d" % resp.content_length))
        if not keep:
            headers.append((b"connection", b"close"))
    out = _encode_head(_status_line(resp), headers)
    if body and resp.status not in (204, 304):
        out += body[0] if len(body) == 1 else b"".join(body)
    return out, keep


class _FastOwner(Protocol):
    """What a handler gives the callback path (``_Fast``)."""

    tasks: set[asyncio.Task[None]]

    def fast_report(self, f: _Fast, ok: bool) -> None: ...

    def fast_finish(self, f: _Fast, status: int) -> None: ...

    def fast_local(self, f: _Fast, status: int, body: bytes) -> bool: ...


class _Fast:
    """One request on the callback path: a bodiless request written to an idle keep-alive connection,
    its response relayed from the connection's callbacks (``ClientConn`` with a watcher) without a
    task, a future or a timeout context per request; one timer holds the request's timeout.

    What it does is what the future path does for the same request: the circuit breaker's request
    unit and the instance's active count held until the response has been relayed, passive health
    reported per response, a reused connection found closed before any byte of a response handed back
    (to the serving task, which tries again as it does for a stale connection), a reset answered 503,
    the timeout 504 (or a reset once the response has begun). A response whose body is long, chunked
    or delimited by the connection's end is streamed by a task from its head on."""

    __slots__ = ("client", "deadline", "done", "down", "edits", "ex", "inst", "owner", "pool", "tid")

    def __init__(self, owner: _FastOwner, down: ServerConn, ex: Exchange, client: ClientConn,
                 edits: tuple[HeaderEdits, ...], pool: UpstreamPool | None, tid: str, inst: Instance,
                 timeout: float) -> None:  # fmt: skip
        self.owner, self.down, self.ex, self.client, self.edits = owner, down, ex, client, edits
        self.pool, self.tid, self.inst = pool, tid, inst
        self.done = False
        self.deadline = down.loop.time() + timeout
        down.arm(self)
        down.reading_from = client

    def send(self, first_line: bytes, headers: Headers) -> None:
        self.client.begin(False, self)
        self.client.write(_encode_head(first_line, headers))

    def _release(self) -> bool:
        """Once: the timer, the breaker's request unit, the instance's active count."""
        if self.done:
            return False
        self.done = True
        self.down.disarm(self)
        self.down.reading_from = None
        if self.pool is not None:
            self.pool.end(self.inst)
            self.pool.release("requests")
        return True

    # ClientConn's watcher

    def upstream_done(self) -> None:
        resp = self.client.resp
        if resp is None or not self._release():
            return
        self.owner.fast_report(self, resp.status < 500)
        out, keep = _whole_response(self.down, self.ex, resp, self.edits, self.client.take_early())
        self.ex.response_started = True
        self.down.write(out)
        self.owner.fast_finish(self, resp.status)
        self.down.fast_done(keep)

    def upstream_head(self, resp: ResponseHead) -> None:
        if self.done:
            return
        self.owner.fast_report(self, resp.status < 500)
        task = self.down.loop.create_task(self._stream(resp))
        self.owner.tasks.add(task)
        task.add_done_callback(self.owner.tasks.discard)

    async def _stream(self, resp: ResponseHead) -> None:
        try:
            keep = await _relay_response(self.down, self.ex, self.client, resp, self.edits)
        except UpstreamReset:
            if self._release():
                self.client.abort()
                self.down.abort()
                self.down.fast_done(False)
            return
        if self._release():
            self.owner.fast_finish(self, resp.status)
            self.down.fast_done(keep)

    def upstream_failed(self, exc: UpstreamReset) -> None:
        if not self._release():
            return
        self.client.abort()
        if _reused_stale(self.client, exc):
            self.down.fast_requeue(self.ex)  # a keep-alive connection the peer had closed: try again
            return
        self.owner.fast_report(self, False)
        self.down.fast_done(self.owner.fast_local(self, 503, (RESET_PREFIX + "connection termination").encode()))

    def timed_out(self) -> None:
        if not self._release():
            return
        self.client.abort()  # mid-request: the connection cannot be reused
        if not self.ex.response_started and not self.down.closed:
            self.down.fast_done(self.owner.fast_local(self, 504, TIMEOUT_BODY))
        else:
            self.down.abort()
            self.down.fast_done(False)


def _request_headers(head: Head, edits: tuple[HeaderEdits, ...], extra_drop: frozenset[bytes] = _NO_EXPECT) -> Headers:
    headers = list(head.headers) if head.plain else strip_hop_by_hop(head.headers, extra_drop)
    return _edited(headers, edits) if edits else headers


def _request_line(method: str, target: str) -> bytes:
    return f"{method} {target} HTTP/1.1".encode("latin-1")


def _status_line(resp: ResponseHead) -> bytes:
    return b"HTTP/1.1 %d %s" % (resp.status, resp.reason or _REASONS.get(resp.status, "").encode())


def _continue(down: ServerConn, head: Head) -> None:
    """Answer ``Expect: 100-continue`` ourselves, as Envoy does by default."""
    if not head.plain and head.version == "1.1" and any(n.lower() == b"expect" and v.lower() == b"100-continue" for n, v in head.headers):
        down.write(b"HTTP/1.1 100 Continue\r\n\r\n")


# ================================================================================= upstream listener


@dataclass(slots=True)
class UpstreamEnv:
    """What the upstream listener's HTTP mode needs from the proxy (``proxy.Proxy`` builds it)."""

    name: str
    metrics: Registry
    rng: random.Random
    log: Any
    access: Any | None
    chain: Callable[[], CompiledChain | None]
    pools: Callable[[], Mapping[str, UpstreamPool]]
    wait_ready: Callable[[float], Awaitable[bool]]
    client_context: Callable[[], tuple[ssl.SSLContext, str] | None]  # (context, trust domain)
    connect_timeout: Callable[[str], float]  # by target ID
    handshake_timeout: float
    expected_uri: Callable[[str], str]  # the SPIFFE ID a target's sidecars must present
    is_ready: Callable[[], bool] = lambda: False  # what wait_ready waits for, now (else the future path waits)
    sessions: SessionCache | None = None  # TLS sessions to resume, per instance
    clock: Callable[[], float] = time.time  # wall time, for certificate expiry


class UpstreamHandler:
    """Requests arriving on one upstream listener in HTTP mode."""

    def __init__(self, env: UpstreamEnv) -> None:
        self.env = env
        self._router: Router | None = None
        self._idle = _Idle()
        self.conns: set[ServerConn] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self._tally = _Tally(env.metrics, env.name)

    def protocol(self) -> ServerConn:
        return ServerConn(self.handle, conns=self.conns, fast=self.fast)

    def router(self) -> Router | None:
        chain = self.env.chain()
        if chain is None:
            return None
        if self._router is None or self._router.chain is not chain:
            self._router = Router(chain)
        return self._router

    def close(self) -> None:
        self._idle.close_all()

    def _finish(self, ex: Exchange, status: int, down: ServerConn, **kw: Any) -> None:
        env = self.env
        elapsed = time.monotonic() - ex.started
        self._tally.add(status, elapsed)
        if env.access is not None:
            env.access.info("request", listener=env.name, downstream=down.peer, method=ex.head.method,
                            path=ex.head.target, status=status, duration_ms=round(elapsed * 1000, 3),
                            **{k: str(v) for k, v in kw.items()})  # fmt: skip

    def _local(self, down: ServerConn, ex: Exchange, status: int, body: bytes, **kw: Any) -> bool:
        self._finish(ex, status, down, **kw)
        return down.respond_local(status, body, keep_alive=ex.head.keep_alive and ex.body.done)

    def fast(self, down: ServerConn, ex: Exchange) -> bool:
        """The callback path (``_Fast``) for a bodiless request when everything it needs is at hand: the
        chain and health known, a route without retries, an instance with an idle connection, a unit
        of ``MaxConcurrentRequests``. Anything else is the future path's (``handle``), which gets the
        route chosen here so that a request is split once."""
        env = self.env
        if not env.is_ready():
            return False
        router = self.router()
        if router is None:
            return False
        head = ex.head
        try:
            rr = router.route_target(head.method, head.target, head.lookup,
                                     0.0 if router.memoized else env.rng.random() * 100.0)  # fmt: skip
        except RouteError:
            return False
        ex.route = rr
        if rr is None or rr.retry is not None:
            return False
        pool, tid = self._pick_pool(rr)
        if pool is None:
            return False
        inst = pool.pick(None, down.loop.time())
        if inst is None:
            return False
        client = self._idle.take(inst)
        if client is None:
            return False
        if not pool.acquire("requests"):
            self._idle.give(inst, client)
            return False
        pool.begin(inst)
        headers = _request_headers(head, rr.request_edits)
        if head.content_length is not None:
            headers.append((b"content-length", b"0"))
        _Fast(self, down, ex, client, rr.response_edits, pool, tid, inst, rr.timeout).send(
            _request_line(head.method, rr.path), headers)  # fmt: skip
        return True

    def fast_report(self, f: _Fast, ok: bool) -> None:
        assert f.pool is not None
        self._report(f.pool, f.tid, f.inst, ok, f.down.loop.time())

    def fast_finish(self, f: _Fast, status: int) -> None:
        self._idle.give(f.inst, f.client)
        self._finish(f.ex, status, f.down, target=f.tid, instance=f.inst)

    def fast_local(self, f: _Fast, status: int, body: bytes) -> bool:
        return self._local(f.down, f.ex, status, body, **({"instance": f.inst} if status == 503 else {}))

    async def handle(self, down: ServerConn, ex: Exchange) -> bool:
        env = self.env
        head = ex.head
        if env.chain() is None or not await env.wait_ready(env.handshake_timeout):
            return self._local(down, ex, 503, NO_HEALTHY_UPSTREAM)
        router = self.router()
        assert router is not None
        try:
            rr = ex.route or router.route_target(head.method, head.target, head.lookup,
                                                 0.0 if router.memoized else env.rng.random() * 100.0)  # fmt: skip
        except RouteError as exc:
            env.log.error("cannot route request", upstream=env.name, error=str(exc))
            return self._local(down, ex, 503, NO_HEALTHY_UPSTREAM)
        if rr is None:
            return self._local(down, ex, 404, b"")  # Envoy: no route matched
        _continue(down, head)
        body: bytes | Body | None
        if not head.has_body:
            body = b"" if head.content_length == 0 else None
        elif not head.chunked and (head.content_length or 0) <= REPLAY_LIMIT:
            try:
                body = await ex.body.read_all()
            except ConnectionResetError:
                return False
        else:
            body = ex.body
        inflight: list[ClientConn] = []
        deadline = _Deadline(down, rr.timeout)
        try:
            return await self._attempts(down, ex, rr, body, inflight)
        except asyncio.CancelledError:
            if not deadline.timed_out():
                raise
            for client in inflight:
                client.abort()  # mid-request: the connection cannot be reused
            if not ex.response_started and not down.closed:
                return self._local(down, ex, 504, TIMEOUT_BODY)
            down.abort()  # the response had begun: a reset is all that is left to say
            return False
        finally:
            deadline.cancel()

    async def _attempts(self, down: ServerConn, ex: Exchange, rr: RouteResult, body: bytes | Body | None,
                        inflight: list[ClientConn]) -> bool:  # fmt: skip
        env = self.env
        loop = down.loop
        head = ex.head
        headers = _request_headers(head, rr.request_edits)
        replayable = not isinstance(body, Body)
        retries_left = rr.retry.num_retries if rr.retry is not None and replayable else 0
        connect_attempts = 0
        tried: set[Instance] = set()
        attempt = 0
        while True:
            pool, tid = self._pick_pool(rr)
            if pool is None:
                return self._local(down, ex, 503, NO_HEALTHY_UPSTREAM)
            inst = pool.pick(None, loop.time(), tried) or pool.pick(None, loop.time())
            if inst is None:
                return self._local(down, ex, 503, NO_HEALTHY_UPSTREAM)
            if not pool.acquire("requests"):
                env.metrics.inc("proconsul_proxy_circuit_breaker_overflows_total", (env.name, "max_requests"))
                return self._local(down, ex, 503, (RESET_PREFIX + "overflow").encode())
            if attempt:
                env.metrics.inc("proconsul_proxy_http_retries_total", (env.name,))
            attempt += 1
            tried.add(inst)
            pool.begin(inst)
            try:  # the request holds its MaxConcurrentRequests unit until its response has been relayed
                outcome = await self._attempt(down, ex, rr, headers, body, inflight, pool, tid, inst, retries_left > 0)
            finally:
                pool.end(inst)
                pool.release("requests")
            if isinstance(outcome, bool):
                return outcome
            if outcome == "stale":
                continue  # a keep-alive connection the peer had closed: try again, no harm done
            if outcome == "connect":
                connect_attempts += 1
                if connect_attempts < MAX_CONNECT_ATTEMPTS:
                    continue
                if rr.retry is not None and rr.retry.on_failure(connect=True) and retries_left > 0:
                    retries_left -= 1
                    continue
                return self._local(down, ex, 503, (RESET_PREFIX + "connection failure").encode(), instance=str(inst))
            if outcome == "reset":
                if rr.retry is not None and rr.retry.on_failure(connect=False) and retries_left > 0 and replayable:
                    retries_left -= 1
                    continue
                return self._local(down, ex, 503, (RESET_PREFIX + "connection termination").encode(),
                                   instance=str(inst))  # fmt: skip
            # outcome == "retry": a response the route's policy retries
            retries_left -= 1

    async def _attempt(self, down: ServerConn, ex: Exchange, rr: RouteResult, headers: Headers,
                       body: bytes | Body | None, inflight: list[ClientConn], pool: UpstreamPool, tid: str,
                       inst: Instance, can_retry: bool) -> bool | str:  # fmt: skip
        """One try on one instance: True/False (done; keep the downstream open?) or why to try again:
        "stale", "connect", "reset" or "retry"."""
        env = self.env
        head = ex.head
        client: ClientConn | None = None
        try:
            client = await self._connection(pool, tid, inst)
            inflight.append(client)
            client.begin(head.method == "HEAD")
            await _send_request(client, head.method, rr.path, headers, head, body)
            resp = await client.response_head()
        except Overflow as exc:
            env.metrics.inc("proconsul_proxy_circuit_breaker_overflows_total", (env.name, exc.limit))
            return self._local(down, ex, 503, (RESET_PREFIX + "overflow").encode())
        except ConnectFailed as exc:
            self._report(pool, tid, inst, False, down.loop.time())
            env.log.warning("upstream connect failed", upstream=env.name, instance=str(inst), error=str(exc))
            return "connect"
        except UpstreamReset as exc:
            if client is not None:
                client.abort()
            if _reused_stale(client, exc) and not isinstance(body, Body):
                return "stale"
            self._report(pool, tid, inst, False, down.loop.time())
            return "reset"
        self._report(pool, tid, inst, resp.status < 500, down.loop.time())
        retry = rr.retry
        if can_retry and retry is not None and retry.on_response(resp.status, _lower(resp.headers)):
            client.abort()
            return "retry"
        try:
            keep = await _relay_response(down, ex, client, resp, rr.response_edits)
        except UpstreamReset:
            client.abort()
            down.abort()
            return False
        inflight.remove(client)
        self._idle.give(inst, client)
        self._finish(ex, resp.status, down, target=tid, instance=inst)
        return keep

    def _pick_pool(self, rr: RouteResult) -> tuple[UpstreamPool | None, str]:
        pools = self.env.pools()
        for tid in rr.targets:
            pool = pools.get(tid)
            if pool is not None and len(pool):
                return pool, tid
        return None, ""

    def _report(self, pool: UpstreamPool, tid: str, inst: Instance, ok: bool, now: float) -> None:
        if pool.report(inst, ok, now):
            self.env.metrics.inc("proconsul_proxy_upstream_ejections_total", (self.env.name, tid))
            self.env.log.warning("instance ejected after consecutive failures", upstream=self.env.name, target=tid,
                                 instance=str(inst))  # fmt: skip

    async def _connection(self, pool: UpstreamPool, tid: str, inst: Instance) -> ClientConn:
        conn = self._idle.take(inst)
        if conn is not None:
            return conn
        env = self.env
        ctx = env.client_context()
        if ctx is None:
            raise ConnectFailed("no certificates yet")
        if not pool.acquire("connections"):
            raise Overflow("max_connections")
        if not pool.acquire("pending"):
            pool.release("connections")
            raise Overflow("max_pending_requests")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        conn = None
        sessions, client_ctx = env.sessions, ctx[0]
        session = sessions.get(inst, client_ctx, env.clock()) if sessions is not None else None
        try:
            async with asyncio.timeout(env.connect_timeout(tid) + env.handshake_timeout):
                _, conn = await loop.create_connection(lambda: ClientConn(client_ctx, inst.host, session), inst.host,
                                                       inst.port)  # fmt: skip
                await conn.handshake()
            now = env.clock()
            identity.check_not_expired(conn.peercert, now)  # a resumed session's certificate may have expired
            identity.check_server(identity.uri_sans(conn.peercert), env.expected_uri(tid))
        except (OSError, ssl.SSLError, TimeoutError, ValueError, identity.IdentityError) as exc:
            if conn is not None:
                conn.abort()
            if session is not None and sessions is not None:
                sessions.drop(inst)
            pool.release("connections")
            raise ConnectFailed(str(exc) or type(exc).__name__) from None
        finally:
            pool.release("pending")
        if sessions is not None:
            if conn.resumed:
                env.metrics.inc("proconsul_proxy_tls_resumed_total", (env.name,))
            elif session is not None:
                sessions.drop(inst)  # the server would not resume it
            obj = conn.sslobj
            if obj is not None and sessions.wants(inst, client_ctx, now):
                keep = sessions.keeper(inst, client_ctx, identity.not_after(conn.peercert), env.clock)
                if not keep(obj):
                    conn.on_session = keep
        env.metrics.observe("proconsul_proxy_upstream_connect_seconds", loop.time() - t0, (env.name,))
        conn.on_lost = lambda: pool.release("connections")
        return conn


def _lower(headers: Headers) -> dict[str, str]:
    return {n.lower(): v for n, v in _decoded(headers)}


def _reused_stale(client: ClientConn | None, exc: UpstreamReset) -> bool:
    """A reused connection that ended before any byte of the response: the peer closed it while idle."""
    return client is not None and client.uses > 1 and not exc.got_bytes


# ================================================================================= public listener


@dataclass(slots=True)
class LocalEnv:
    """What the public listener's HTTP mode needs from the proxy (``proxy.Proxy`` builds it)."""

    metrics: Registry
    log: Any
    access: Any | None
    local: tuple[str, int]
    policy: Callable[[], rbac.L7Policy | None]
    connect_timeout: Callable[[], float]  # LocalConnectTimeoutMs
    request_timeout: Callable[[], float]  # LocalRequestTimeoutMs, else Envoy's 15 s
    own_uri: Callable[[], str]
    clock: Callable[[], float] = time.time  # wall time, for certificate expiry


class LocalHandler:
    """Requests arriving on the public listener in HTTP mode, from other sidecars: L7 intentions, then
    the local app over a keep-alive pool.

    The client certificate's URI is passed to the app in ``X-Forwarded-Client-Cert`` (``By`` our
    identity, ``URI`` the caller's), a header a caller's own value of is removed first, as Consul
    configures Envoy (``forward_client_cert_details: SANITIZE_SET``)."""

    def __init__(self, env: LocalEnv) -> None:
        self.env = env
        self._idle = _Idle()
        self._inst = Instance(*env.local)
        self._open = 0
        self.conns: set[ServerConn] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self._tally = _Tally(env.metrics, "public")

    def close(self) -> None:
        self._idle.close_all()

    def on_tls(self, conn: ServerConn, trust_domain: str) -> bool:
        """The caller's identity from its certificate (refused without a valid one), on every connection,
        resumed or not: a resumed session carries the certificate of its first handshake, which may
        have expired since. The L7 intentions are then evaluated per request."""
        if conn.resumed:
            self.env.metrics.inc("proconsul_proxy_tls_resumed_total", ("public",))
        try:
            identity.check_not_expired(conn.peercert, self.env.clock())
            conn.source = identity.client_identity(identity.uri_sans(conn.peercert), trust_domain)
        except identity.IdentityError as exc:
            self.env.metrics.inc("proconsul_proxy_inbound_connections_total", ("refused",))
            self.env.log.warning("inbound connection refused", peer=conn.peer, reason=str(exc))
            return False
        self.env.metrics.inc("proconsul_proxy_inbound_connections_total", ("accepted",))
        return True

    def _finish(self, down: ServerConn, ex: Exchange, status: int, **kw: Any) -> None:
        env = self.env
        elapsed = time.monotonic() - ex.started
        self._tally.add(status, elapsed)
        if env.access is not None:
            env.access.info("request", listener="public", downstream=down.peer, method=ex.head.method,
                            path=ex.head.target, status=status, duration_ms=round(elapsed * 1000, 3),
                            source=down.source.uri() if down.source else "", **kw)  # fmt: skip

    async def _local(self, down: ServerConn, ex: Exchange, status: int, body: bytes, **kw: Any) -> bool:
        head = ex.head
        if not ex.body.done and not head.chunked and (head.content_length or 0) <= REPLAY_LIMIT:
            with contextlib.suppress(ConnectionResetError):
                await ex.body.discard()  # a small body is read and dropped so the connection stays usable
        self._finish(down, ex, status, **kw)
        return down.respond_local(status, body, keep_alive=head.keep_alive and ex.body.done)

    def _xfcc(self, down: ServerConn) -> tuple[bytes, bytes]:
        """``X-Forwarded-Client-Cert`` for requests on ``down``: made once per connection (and again if
        our own identity's URI changes)."""
        own = self.env.own_uri()
        cached = down.xfcc
        if cached is None or cached[0] != own:
            assert down.source is not None
            cached = down.xfcc = (own, (b"x-forwarded-client-cert", f"By={own};URI={down.source.uri()}".encode("latin-1")))
        return cached[1]

    def _verdict(self, down: ServerConn, ex: Exchange) -> tuple[bool, str]:
        policy = self.env.policy()
        if policy is None or down.source is None:
            return False, "no intentions loaded"
        cached = down.decision
        if cached is None or cached[0] is not policy:
            cached = down.decision = (policy, policy.source_decision(down.source))
        decision = cached[1]
        if not policy.per_request(decision):
            return decision.allowed, decision.reason  # an L4 intention (or none): the same for every request
        head = ex.head
        verdict = policy.decide_request(decision, rbac.RequestView(head.method, head.target, head.lookup()))
        return verdict.allowed, verdict.reason

    def fast(self, down: ServerConn, ex: Exchange) -> bool:
        """The callback path (``_Fast``) for a bodiless request while an idle connection to the app is
        at hand: decided by the intentions (a deny answered at once), then relayed. Anything else is
        the future path's (``handle``), which is told the request was allowed already."""
        env = self.env
        if env.policy() is None or down.source is None:
            return False
        client = self._idle.take(self._inst)
        if client is None:
            return False
        allowed, reason = self._verdict(down, ex)
        self._tally.authz(allowed)
        if not allowed:
            self._idle.give(self._inst, client)
            self._finish(down, ex, 403, reason=reason)
            down.fast_done(down.respond_local(403, rbac.DENIED_BODY, keep_alive=ex.head.keep_alive))
            return True
        ex.authorized = True
        head = ex.head
        headers = _request_headers(head, (), _NO_EXPECT_XFCC)
        headers.append(self._xfcc(down))
        if head.content_length is not None:
            headers.append((b"content-length", b"0"))
        _Fast(self, down, ex, client, (), None, "", self._inst, env.request_timeout()).send(
            _request_line(head.method, head.target), headers)  # fmt: skip
        return True

    def fast_report(self, f: _Fast, ok: bool) -> None:
        pass  # the local app is not balanced: no passive health

    def fast_finish(self, f: _Fast, status: int) -> None:
        self._idle.give(self._inst, f.client)
        self._finish(f.down, f.ex, status)

    def fast_local(self, f: _Fast, status: int, body: bytes) -> bool:
        self._finish(f.down, f.ex, status)
        return f.down.respond_local(status, body, keep_alive=f.ex.head.keep_alive)

    async def handle(self, down: ServerConn, ex: Exchange) -> bool:
        env = self.env
        if not ex.authorized:
            allowed, reason = self._verdict(down, ex)
            self._tally.authz(allowed)
            if not allowed:
                return await self._local(down, ex, 403, rbac.DENIED_BODY, reason=reason)
        head = ex.head
        _continue(down, head)
        body: bytes | Body | None
        if not head.has_body:
            body = b"" if head.content_length == 0 else None
        elif not head.chunked and (head.content_length or 0) <= REPLAY_LIMIT:
            try:
                body = await ex.body.read_all()
            except ConnectionResetError:
                return False
        else:
            body = ex.body
        headers = _request_headers(head, (), _NO_EXPECT_XFCC)
        headers.append(self._xfcc(down))
        inflight: list[ClientConn] = []
        deadline = _Deadline(down, env.request_timeout())
        try:
            return await self._forward(down, ex, headers, body, inflight)
        except asyncio.CancelledError:
            if not deadline.timed_out():
                raise
        finally:
            deadline.cancel()
        for client in inflight:
            client.abort()
        if not ex.response_started and not down.closed:
            return await self._local(down, ex, 504, TIMEOUT_BODY)
        down.abort()
        return False

    async def _forward(self, down: ServerConn, ex: Exchange, headers: Headers,
                       body: bytes | Body | None, inflight: list[ClientConn]) -> bool:  # fmt: skip
        head = ex.head
        replayable = not isinstance(body, Body)
        for _ in range(2):
            client = self._idle.take(self._inst)
            fresh = client is None
            if client is None:
                try:
                    client = await self._dial()
                except ConnectFailed as exc:
                    self.env.log.warning("cannot reach the local service", local=str(self._inst), error=str(exc))
                    return await self._local(down, ex, 503, (RESET_PREFIX + "connection failure").encode())
            inflight.append(client)
            client.begin(head.method == "HEAD")
            try:
                await _send_request(client, head.method, head.target, headers, head, body)
                resp = await client.response_head()
            except UpstreamReset as exc:
                client.abort()
                inflight.remove(client)
                if not fresh and _reused_stale(client, exc) and replayable:
                    continue
                return await self._local(down, ex, 503, (RESET_PREFIX + "connection termination").encode())
            try:
                keep = await _relay_response(down, ex, client, resp, ())
            except UpstreamReset:
                client.abort()
                down.abort()
                return False
            inflight.remove(client)
            self._idle.give(self._inst, client)
            self._finish(down, ex, resp.status)
            return keep
        return await self._local(down, ex, 503, (RESET_PREFIX + "connection termination").encode())

    async def _dial(self) -> ClientConn:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.env.connect_timeout()):
                _, conn = await loop.create_connection(ClientConn, self._inst.host, self._inst.port)
        except (OSError, TimeoutError) as exc:
            raise ConnectFailed(str(exc) or type(exc).__name__) from None
        return conn
