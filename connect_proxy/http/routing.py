"""Where one HTTP request to an upstream goes, from its compiled discovery chain. Pure: no IO, no clock,
randomness passed in.

Consul turns a chain into Envoy routes (agent/xds/routes.go); this module evaluates the same thing per
request, with Envoy's semantics for what Consul configures:

- ``router`` node: routes in order, the first whose ``Match.HTTP`` matches wins (Envoy's virtual host
  route list). A match is the AND of its parts: path (``PathExact`` against the path without its query
  string; ``PathPrefix`` against the start of ``:path``; ``PathRegex`` a full match of the path without
  its query string, as Envoy's ``safe_regex``), every ``Header`` matcher (``Exact``, ``Prefix``,
  ``Suffix``, ``Regex`` full match, ``Present``; ``Invert`` negates; a missing header matches only an
  inverted ``Present``, as Envoy's ``HeaderUtility::matchHeaders``), every ``QueryParam`` (first value;
  ``Exact``, ``Regex``, ``Present``) and ``Methods`` (any of them). A route without ``Match`` matches
  everything. Header names compare case-insensitively, values case-sensitively.
- ``splitter`` node: Consul hands Envoy integer weights out of 10000 (the 0.01 precision of a
  ``Weight``); ``draw`` in [0, 100) is floored to that grid and picks the leg whose cumulative weight
  passes it.
- ``resolver`` node: the target, then its ``Failover.Targets`` in order.

What the route's ``Destination`` says travels with the result: ``PrefixRewrite`` (the matched prefix, or
the whole path for ``PathExact``, is replaced), the timeout (``Destination.RequestTimeout``, else the
resolver's ``RequestTimeout``, else Envoy's 15 s route default), the retry policy (Consul's
``makeRetryPolicy``: ``NumRetries`` default 1, ``RetryOn`` words plus ``connect-failure`` and
``retriable-status-codes``; only when the destination sets any retry field), and the header edits of the
split and of the route (applied in that order, so the route's win: Envoy applies the more specific level
first, and the less specific last, by default).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from registry.discoverychain import NODE_RESOLVER, NODE_ROUTER, NODE_SPLITTER, CompiledChain, Node
from registry.gocompat import parse_duration_ns

__all__ = [
    "DEFAULT_ROUTE_TIMEOUT",
    "RETRY_ON_WORDS",
    "HeaderEdits",
    "Request",
    "RetryPolicy",
    "RouteError",
    "RouteResult",
    "Router",
    "apply_edits",
]

DEFAULT_ROUTE_TIMEOUT = 15.0  # Envoy's route timeout when none is configured
WEIGHT_SCALE = 100  # Consul: weights in 0.01 steps become integers out of 10000

# Envoy's retry_on words Consul passes through (x-envoy-retry-on / x-envoy-retry-grpc-on).
RETRY_ON_WORDS = (
    "5xx", "gateway-error", "reset", "connect-failure", "envoy-ratelimited", "retriable-4xx", "refused-stream",
    "retriable-status-codes", "retriable-headers", "http3-post-connect-failure",
    "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
)  # fmt: skip
_GRPC_CODES = {"cancelled": "1", "deadline-exceeded": "4", "resource-exhausted": "8", "internal": "13",
               "unavailable": "14"}  # fmt: skip


class RouteError(ValueError):
    """The chain cannot route this request (a malformed chain): the caller answers 503."""


@dataclass(frozen=True, slots=True)
class Request:
    """What routing looks at. ``headers``: lower-case names to values (several values of one name joined
    with ``,``, as Envoy matches them)."""

    method: str
    path: str  # the request target as sent: path and optional ?query
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def path_only(self) -> str:
        return self.path.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.path.split("?", 1)[1] if "?" in self.path else ""


@dataclass(frozen=True, slots=True)
class HeaderEdits:
    """One level's ``RequestHeaders``/``ResponseHeaders``: ``remove`` names, then ``set`` (replace) and
    ``add`` (append) pairs."""

    add: tuple[tuple[str, str], ...] = ()
    set: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()

    @classmethod
    def parse(cls, data: Mapping[str, Any] | None) -> HeaderEdits | None:
        if not data:
            return None
        edits = cls(
            add=tuple((str(k), str(v)) for k, v in (data.get("Add") or {}).items()),
            set=tuple((str(k), str(v)) for k, v in (data.get("Set") or {}).items()),
            remove=tuple(str(n) for n in data.get("Remove") or ()),
        )
        return edits if edits.add or edits.set or edits.remove else None


def apply_edits(headers: list[tuple[str, str]], levels: Sequence[HeaderEdits]) -> list[tuple[str, str]]:
    """``headers`` (name, value) pairs with each level's edits applied in order: remove, set, add."""
    for e in levels:
        drop = {n.lower() for n in e.remove} | {n.lower() for n, _ in e.set}
        if drop:
            headers = [(n, v) for n, v in headers if n.lower() not in drop]
        headers.extend(e.set)
        headers.extend(e.add)
    return headers


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Envoy's retry policy as Consul builds it from a route destination."""

    num_retries: int = 1
    retry_on: frozenset[str] = frozenset()
    status_codes: frozenset[int] = frozenset()

    def on_failure(self, *, connect: bool) -> bool:
        """Retry after a connect failure (``connect``) or a reset / no response before headers?"""
        words = self.retry_on
        if words & {"5xx", "gateway-error", "reset"}:
            return True
        return connect and "connect-failure" in words

    def on_response(self, status: int, headers: Mapping[str, str]) -> bool:
        words = self.retry_on
        if "5xx" in words and status >= 500:
            return True
        if "gateway-error" in words and status in (502, 503, 504):
            return True
        if "retriable-4xx" in words and status == 409:
            return True
        if "retriable-status-codes" in words and status in self.status_codes:
            return True
        grpc = headers.get("grpc-status")
        return grpc is not None and any(_GRPC_CODES.get(w) == grpc for w in words)


@dataclass(frozen=True, slots=True)
class RouteResult:
    """What to do with one request: the target IDs to try in order (the chosen one, then failover), the
    path to send, the timeout for the whole request (retries included), the retry policy (None: no
    retries beyond the connect-failure ones every request gets) and the header edits to apply."""

    targets: tuple[str, ...]
    path: str
    timeout: float
    retry: RetryPolicy | None
    request_edits: tuple[HeaderEdits, ...] = ()
    response_edits: tuple[HeaderEdits, ...] = ()
    route_index: int = -1  # which router route matched (-1: no router)


# ------------------------------------------------------------------------------ matchers


def _full(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error:
        return None


@dataclass(frozen=True, slots=True)
class _HeaderMatch:
    name: str
    kind: str  # exact | prefix | suffix | regex | present
    value: str
    regex: re.Pattern[str] | None
    invert: bool

    def matches(self, value: str | None) -> bool:
        if value is None:
            return self.invert and self.kind == "present"
        if self.kind == "present":
            hit = True
        elif self.kind == "exact":
            hit = value == self.value
        elif self.kind == "prefix":
            hit = value.startswith(self.value)
        elif self.kind == "suffix":
            hit = value.endswith(self.value)
        else:
            hit = self.regex is not None and self.regex.fullmatch(value) is not None
        return hit != self.invert


def _header_match(h: Mapping[str, Any], *, with_affixes: bool = True) -> _HeaderMatch:
    name = str(h.get("Name") or "").lower()
    invert = bool(h.get("Invert"))
    if h.get("Exact"):
        return _HeaderMatch(name, "exact", str(h["Exact"]), None, invert)
    if with_affixes and h.get("Prefix"):
        return _HeaderMatch(name, "prefix", str(h["Prefix"]), None, invert)
    if with_affixes and h.get("Suffix"):
        return _HeaderMatch(name, "suffix", str(h["Suffix"]), None, invert)
    if h.get("Regex"):
        return _HeaderMatch(name, "regex", str(h["Regex"]), _full(str(h["Regex"])), invert)
    return _HeaderMatch(name, "present", "", None, invert)


@dataclass(frozen=True, slots=True)
class _Match:
    path_kind: str = ""  # "", exact, prefix, regex
    path: str = ""
    path_regex: re.Pattern[str] | None = None
    headers: tuple[_HeaderMatch, ...] = ()
    query: tuple[_HeaderMatch, ...] = ()
    methods: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, match: Mapping[str, Any] | None) -> _Match:
        http = (match or {}).get("HTTP") or {}
        kind, path, rx = "", "", None
        if http.get("PathExact"):
            kind, path = "exact", str(http["PathExact"])
        elif http.get("PathPrefix"):
            kind, path = "prefix", str(http["PathPrefix"])
        elif http.get("PathRegex"):
            kind, path = "regex", str(http["PathRegex"])
            rx = _full(path)
        return cls(kind, path, rx, tuple(_header_match(h) for h in http.get("Header") or ()),
                   tuple(_header_match(q, with_affixes=False) for q in http.get("QueryParam") or ()),
                   frozenset(str(m).upper() for m in http.get("Methods") or ()))  # fmt: skip

    def matches(self, req: Request) -> bool:
        if self.path_kind == "exact" and req.path_only != self.path:
            return False
        if self.path_kind == "prefix" and not req.path.startswith(self.path):
            return False
        if self.path_kind == "regex" and (self.path_regex is None or not self.path_regex.fullmatch(req.path_only)):
            return False
        if self.methods and req.method.upper() not in self.methods:
            return False
        for h in self.headers:
            if not h.matches(req.headers.get(h.name)):
                return False
        if self.query:
            params: dict[str, str] = {}
            for k, v in parse_qsl(req.query, keep_blank_values=True):
                params.setdefault(k, v)
            for q in self.query:
                if not q.matches(params.get(q.name)):
                    return False
        return True


def _seconds(value: Any) -> float:
    if not value:
        return 0.0
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) / 1e9
    try:
        return parse_duration_ns(str(value)) / 1e9
    except ValueError:
        return 0.0


def _retry_policy(dest: Mapping[str, Any]) -> RetryPolicy | None:
    """Consul's makeRetryPolicy, applied only when the destination has retry features."""
    num = int(dest.get("NumRetries") or 0)
    words = [str(w) for w in dest.get("RetryOn") or ()]
    codes = [int(c) for c in dest.get("RetryOnStatusCodes") or ()]
    connect = bool(dest.get("RetryOnConnectFailure"))
    if not (num or words or codes or connect):
        return None
    if connect:
        words.append("connect-failure")
    if codes:
        words.append("retriable-status-codes")
    return RetryPolicy(num if num > 0 else 1, frozenset(words), frozenset(codes))


@dataclass(frozen=True, slots=True)
class _Route:
    match: _Match
    next_node: str
    prefix_rewrite: str | None
    timeout: float
    retry: RetryPolicy | None
    request_edits: HeaderEdits | None
    response_edits: HeaderEdits | None


@dataclass(frozen=True, slots=True)
class _Leg:
    upto: int  # cumulative weight, out of 100 * WEIGHT_SCALE
    next_node: str
    request_edits: HeaderEdits | None
    response_edits: HeaderEdits | None


# ------------------------------------------------------------------------------ the router


ROUTE_CACHE_SIZE = 1024  # (method, target) pairs remembered by a chain whose routing reads nothing else


class Router:
    """A chain compiled for per-request use: regexes compiled and weights summed once, when the chain
    changes; ``route`` is then a walk of a few nodes.

    When nothing but the method and the request target can change where a request goes (no splitter,
    whose draw is per request; no header or query parameter matcher), ``route_target`` remembers each
    (method, target)'s result, so that a repeated request is one dictionary lookup and needs no header
    map. The memo holds at most ``ROUTE_CACHE_SIZE`` entries and starts over when full."""

    def __init__(self, chain: CompiledChain) -> None:
        self.chain = chain
        self._routes: dict[str, tuple[_Route, ...]] = {}
        self._legs: dict[str, tuple[_Leg, ...]] = {}
        self._memo: dict[tuple[str, str], RouteResult | None] | None = None
        # A chain that starts at a resolver (no router, no splitter: every chain without L7 config
        # entries) sends every request to the same targets with the same timeout.
        self._fixed: tuple[tuple[str, ...], float] | None = None
        start = chain.nodes.get(chain.start_node)
        if start is not None and start.type == NODE_RESOLVER and start.resolver is not None:
            targets = [start.resolver.target]
            if start.resolver.failover is not None:
                targets.extend(t for t in start.resolver.failover.targets if t not in targets)
            self._fixed = (tuple(targets), start.resolver.request_timeout_ns / 1e9 or DEFAULT_ROUTE_TIMEOUT)
        for key, node in chain.nodes.items():
            if node.type == NODE_ROUTER:
                self._routes[key] = tuple(self._route(r.definition, r.next_node) for r in node.routes)
            elif node.type == NODE_SPLITTER:
                acc, legs = 0, []
                for s in node.splits:
                    acc += round(s.weight * WEIGHT_SCALE)
                    legs.append(_Leg(acc, s.next_node, HeaderEdits.parse(s.definition.get("RequestHeaders")),
                                     HeaderEdits.parse(s.definition.get("ResponseHeaders"))))  # fmt: skip
                self._legs[key] = tuple(legs)
        if not self._legs and not any(r.match.headers or r.match.query for rs in self._routes.values() for r in rs):
            self._memo = {}

    @property
    def memoized(self) -> bool:
        """Whether the result depends on the method and the request target alone (``route_target``)."""
        return self._memo is not None

    def route_target(self, method: str, target: str, headers: Callable[[], Mapping[str, str]], draw: float) -> RouteResult | None:
        """``route`` for a request given by its parts; ``headers`` is called only when a matcher reads them."""
        memo = self._memo
        if memo is None:
            return self.route(Request(method, target, headers()), draw)
        key = (method, target)
        try:
            return memo[key]
        except KeyError:
            pass
        rr = self.route(Request(method, target), draw)
        if len(memo) >= ROUTE_CACHE_SIZE:
            memo.clear()
        memo[key] = rr
        return rr

    @staticmethod
    def _route(definition: Mapping[str, Any], next_node: str) -> _Route:
        dest = definition.get("Destination") or {}
        http = (definition.get("Match") or {}).get("HTTP") or {}
        rewrite = dest.get("PrefixRewrite")
        return _Route(
            _Match.parse(definition.get("Match")), next_node,
            str(rewrite) if rewrite and (http.get("PathExact") or http.get("PathPrefix")) else None,
            _seconds(dest.get("RequestTimeout")), _retry_policy(dest),
            HeaderEdits.parse(dest.get("RequestHeaders")), HeaderEdits.parse(dest.get("ResponseHeaders")),
        )  # fmt: skip

    def _node(self, key: str) -> Node:
        node = self.chain.nodes.get(key)
        if node is None:
            raise RouteError(f"the chain has no node {key!r}")
        return node

    def route(self, req: Request, draw: float) -> RouteResult | None:
        """The route for ``req``, or None when no route matches (Envoy answers 404). ``draw`` in
        [0, 100) chooses the split."""
        if self._fixed is not None:
            return RouteResult(self._fixed[0], req.path, self._fixed[1], None)
        key = self.chain.start_node
        path, timeout, retry, index = req.path, 0.0, None, -1
        req_edits: list[HeaderEdits] = []
        resp_edits: list[HeaderEdits] = []
        route_edits: tuple[HeaderEdits | None, HeaderEdits | None] = (None, None)
        for _ in range(len(self.chain.nodes) + 1):
            node = self._node(key)
            if node.type == NODE_RESOLVER:
                assert node.resolver is not None
                targets = [node.resolver.target]
                if node.resolver.failover is not None:
                    targets.extend(t for t in node.resolver.failover.targets if t not in targets)
                if not timeout:
                    timeout = node.resolver.request_timeout_ns / 1e9 or DEFAULT_ROUTE_TIMEOUT
                for level, edits in ((req_edits, route_edits[0]), (resp_edits, route_edits[1])):
                    if edits is not None:
                        level.append(edits)
                return RouteResult(tuple(targets), path, timeout, retry, tuple(req_edits), tuple(resp_edits), index)
            if node.type == NODE_ROUTER:
                hit = next(((i, r) for i, r in enumerate(self._routes[key]) if r.match.matches(req)), None)
                if hit is None:
                    return None
                index, r = hit
                key, timeout, retry = r.next_node, r.timeout, r.retry
                route_edits = (r.request_edits, r.response_edits)
                if r.prefix_rewrite is not None:
                    if r.match.path_kind == "exact":
                        path = r.prefix_rewrite + (("?" + req.query) if req.query else "")
                    else:
                        path = r.prefix_rewrite + req.path[len(r.match.path):]
            elif node.type == NODE_SPLITTER:
                legs = self._legs[key]
                if not legs:
                    raise RouteError(f"splitter {key!r} has no splits")
                point = int(draw * WEIGHT_SCALE)
                leg = next((lg for lg in legs if point < lg.upto), legs[-1])
                key = leg.next_node
                if leg.request_edits is not None:
                    req_edits.append(leg.request_edits)
                if leg.response_edits is not None:
                    resp_edits.append(leg.response_edits)
            else:
                raise RouteError(f"node {key!r} has unknown type {node.type!r}")
        raise RouteError("the chain loops")
