"""/v1/agent/metrics and /v1/agent/metrics/stream: this agent's telemetry (Consul's agent_endpoint.go).

``GET /v1/agent/metrics`` answers go-metrics' in-memory summary of the last finished 10 s interval as JSON
(``Timestamp``, ``Gauges``, ``PrecisionGauges``, ``Points``, ``Counters``, ``Samples``), or, with
``?format=prometheus`` or an ``Accept`` header asking for OpenMetrics or ``text/plain;version=0.4.0``, the
Prometheus text exposition (format 0.0.4) -- which Consul serves only when
``telemetry.prometheus_retention_time`` is positive; otherwise it answers 415 with "Prometheus is not enabled
since its retention time is not positive". ``GET /v1/agent/metrics/stream`` writes each interval's summary
as it closes, indented JSON followed by a newline, until the client goes away. Both need ``agent:read`` on
this agent's node.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from registry.api.errors import HTTPError
from registry.api.routing import Route, route
from registry.metrics import PROMETHEUS_CONTENT_TYPE, Metrics, Sample

if TYPE_CHECKING:
    from registry.api.http import Api

PROMETHEUS_DISABLED = "Prometheus is not enabled since its retention time is not positive"
API_HTTP_HELP = "Time to serve an HTTP API request, by method and route (its pattern, '/' made '_'), in ms."
LEGACY_HTTP_HELP = "Time to serve an HTTP API request on this route (Consul 1.9's name), in ms."


class MetricsSource(Protocol):
    """What the metrics endpoints read: the agent's registry, its clock, and the stream of closed intervals
    (``registry.agent.telemetry.Telemetry``)."""

    metrics: Metrics
    clock: Callable[[], float]

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]: ...

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any]]) -> None: ...


def http_timers(metrics: Metrics, legacy: bool) -> Callable[[str, str], tuple[Sample, ...]]:
    """How the timers of one route and method are made: ``consul.api.http`` with ``method`` and ``path``
    labels (the route's pattern without its leading "/", each "/" made "_": ``v1_kv_``), and with ``legacy``
    (``telemetry.disable_compat_1.9 = false``) also Consul 1.9's ``consul.http.<METHOD>.<parts>``, where the
    empty part after a prefix route's trailing "/" is "_" (agent/http.go's handleFuncMetrics)."""

    def make(method: str, pattern: str) -> tuple[Sample, ...]:
        label = pattern[1:].replace("/", "_")
        timers = [metrics.sample("api.http", (("method", method), ("path", label)), API_HTTP_HELP)]
        if legacy:
            parts = [p or "_" for p in pattern[1:].split("/")]
            timers.append(metrics.sample(".".join(["http", method, *parts]), (), LEGACY_HTTP_HELP))
        # One series takes the request's value and hands it to the other when it folds (a blocked one, the
        # shared no-op, takes nothing): the request path appends once.
        live = [t for t in timers if t.name]
        if not live:
            return ()
        live[0].mirrors = tuple(live[1:])
        return (live[0],)

    return make


def wants_prometheus(request: web.Request) -> bool:
    """Consul's ``enablePrometheusOutput``: ``?format=prometheus``, or an Accept header naming
    ``application/openmetrics-text`` or ``text/plain`` with ``version=0.4.0``."""
    if request.query.get("format") == "prometheus":
        return True
    for media in request.headers.get("Accept", "").split(","):
        parts = media.split(";")
        kind = parts[0].strip().lower()
        if kind == "application/openmetrics-text":
            return True
        if kind == "text/plain" and len(parts) > 1 and parts[1].strip() == "version=0.4.0":
            return True
    return False


def _source(api: Api) -> MetricsSource:
    source = api.telemetry
    if source is None:
        raise HTTPError(500, "metrics are not available on this agent")
    return source


async def metrics(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    source = _source(api)
    registry = source.metrics
    if wants_prometheus(request):
        if not registry.prometheus_enabled:
            raise HTTPError(415, PROMETHEUS_DISABLED)
        body = registry.prometheus(source.clock()).encode()
        headers = {"Content-Type": PROMETHEUS_CONTENT_TYPE, "X-Consul-Default-ACL-Policy": api.acl_policy}
        if "gzip" in request.headers.get("Accept-Encoding", ""):  # as promhttp compresses for a scraper
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        return web.Response(status=200, body=body, headers=headers)
    return api.json(request, registry.summary())


async def stream(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    source = _source(api)
    resp = web.StreamResponse(status=200, headers={"X-Consul-Default-ACL-Policy": api.acl_policy})
    queue = source.subscribe()
    try:
        await resp.prepare(request)
        while True:
            summary = await queue.get()
            await resp.write((json.dumps(summary, indent=4) + "\n").encode())
    except ConnectionResetError:
        pass  # the reader went away: Consul's stream ends the same way
    finally:
        source.unsubscribe(queue)
    return resp


ROUTES: tuple[Route, ...] = (
    route("GET", "/v1/agent/metrics", metrics, "read", "agent", "local-node",
          "This agent's metrics: the last 10 s interval as JSON, or Prometheus' text format"),
    route("GET", "/v1/agent/metrics/stream", stream, "read", "agent", "local-node",
          "Stream this agent's metrics, one JSON summary per 10 s interval"),
)
