"""/v1/health/*: instances with their checks, filtered by health."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from registry import filtering
from registry.api import views
from registry.api.catalog import (
    gateway_services,
    instance_node,
    node_matches,
    node_meta_filter,
    query_filter,
    tags_match,
    visible_instances,
)
from registry.api.coordinate import near_node, near_sort
from registry.api.enforce import filter_list, mark_filtered, request_authz
from registry.api.errors import HTTPError
from registry.api.http import ReadResult
from registry.api.routing import Route, route
from registry.connect.state import list_entries
from registry.state.store import StateStore, WatchSet
from registry.structs import HEALTH_PASSING, Check

if TYPE_CHECKING:
    from registry.api.http import Api


def _passing_param(request: web.Request) -> bool:
    if "passing" not in request.query:
        return False
    value = request.query.get("passing", "")
    if value == "":
        return True
    lowered = value.lower()
    if lowered in ("1", "t", "true"):
        return True
    if lowered in ("0", "f", "false"):
        return False
    raise HTTPError(400, "Invalid value for ?passing")


def _service_entries(api: Api, request: web.Request, name: str, connect: bool) -> Any:
    if not name:
        raise HTTPError(400, "Missing service name")
    passing = _passing_param(request)
    tags = request.query.getall("tag", [])
    meta = node_meta_filter(request)
    flt = query_filter(api, request, filtering.CHECK_SERVICE_NODE)
    keep = flt.matches if flt is not None else None
    near = near_node(api, request)

    def run(store: StateStore, ws: WatchSet) -> ReadResult:
        instances = store.service_instances(name, connect, ws)

        def build() -> Any:
            out = []
            for n, s in near_sort(store, visible_instances(request, name, instances), instance_node, near):
                if not tags_match(s, tags) or not node_matches(n, meta):
                    continue
                checks = store.checks_for_instance(n.node, s.id)
                if passing and any(c.status != HEALTH_PASSING for c in checks):
                    continue
                entry = {
                    "Node": views.node_json(n),
                    "Service": views.service_json(s),
                    "Checks": [views.check_json(c) for c in checks],
                }
                if keep is None or keep(entry):
                    out.append(entry)
            return out

        return ReadResult(build)

    return api.read(request, run, cacheable=not near)  # a ?near order is rendered each time (catalog.nodes)


def visible_checks(request: web.Request, store: StateStore, checks: list[Check]) -> list[Check]:
    """The checks the token may see (Consul's filterACL on HealthChecks): a service check needs
    ``service:read`` on its service, a node check ``node:read`` on its node."""
    authz = request_authz(request)
    if authz is None:
        return checks

    def allowed(c: Check) -> bool:
        if c.service_id:
            svc = store.services.get(c.node, {}).get(c.service_id)
            return authz.service_read(svc.service if svc is not None else c.service_name or c.service_id)
        return authz.node_read(c.node)

    return filter_list(request, list(checks), allowed)


async def service(api: Api, request: web.Request, name: str) -> web.StreamResponse:
    return await _service_entries(api, request, name, connect=False)


async def connect(api: Api, request: web.Request, name: str) -> web.StreamResponse:
    return await _service_entries(api, request, name, connect=True)


async def ingress(api: Api, request: web.Request, name: str) -> web.StreamResponse:
    """GET /v1/health/ingress/:service: the ingress gateways that expose ``name`` (by their config entries,
    as /v1/catalog/gateway-services lists them), as health entries of the gateways' instances; ``[]`` when
    none does, as Consul answers. ``?passing`` keeps the instances whose checks all pass."""
    if not name:
        raise HTTPError(400, "Missing service name")
    passing = _passing_param(request)

    def run(store: StateStore, ws: WatchSet) -> ReadResult:
        gateways = sorted({str(e.get("Name")) for e in list_entries(store, "ingress-gateway", ws)
                           if any(g["Service"]["Name"] == name for g in gateway_services(store, str(e.get("Name")), ws))})  # fmt: skip
        instances = [(gw, ns) for gw in gateways for ns in store.service_instances(gw, False, ws)]

        def build() -> Any:
            authz = request_authz(request)
            if authz is not None and not authz.service_read(name):
                if instances:
                    mark_filtered(request)
                return []
            out = []
            for gw in gateways:
                for n, s in visible_instances(request, gw, [ns for g, ns in instances if g == gw]):
                    checks = store.checks_for_instance(n.node, s.id)
                    if passing and any(c.status != HEALTH_PASSING for c in checks):
                        continue
                    out.append({"Node": views.node_json(n), "Service": views.service_json(s),
                                "Checks": [views.check_json(c) for c in checks]})  # fmt: skip
            return out

        return ReadResult(build)

    return await api.read(request, run)


async def checks(api: Api, request: web.Request, name: str) -> web.StreamResponse:
    if not name:
        raise HTTPError(400, "Missing service name")
    meta = node_meta_filter(request)
    flt = query_filter(api, request, filtering.HEALTH_CHECK)
    near = near_node(api, request)

    def run(store: StateStore, ws: WatchSet) -> ReadResult:
        instances = store.service_instances(name, False, ws)

        def build() -> Any:
            found: list[Check] = []
            for n, s in visible_instances(request, name, instances):
                if not node_matches(n, meta):
                    continue
                found.extend(c for c in store.checks_for_instance(n.node, s.id) if c.service_id)
            out = [views.check_json(c) for c in near_sort(store, found, _check_node, near)]
            return flt.select(out) if flt is not None else out

        return ReadResult(build)

    return await api.read(request, run, cacheable=not near)


def _check_node(c: Check) -> str:
    return c.node


async def node(api: Api, request: web.Request, name: str) -> web.StreamResponse:
    if not name:
        raise HTTPError(400, "Missing node name")
    flt = query_filter(api, request, filtering.HEALTH_CHECK)

    def run(store: StateStore, ws: WatchSet) -> ReadResult:
        checks = store.node_checks(name, ws)

        def build() -> Any:
            out = [views.check_json(c) for c in visible_checks(request, store, checks)]
            return flt.select(out) if flt is not None else out

        return ReadResult(build)

    return await api.read(request, run)


async def state(api: Api, request: web.Request, state_name: str) -> web.StreamResponse:
    if not state_name:
        raise HTTPError(400, "Missing check state")
    if state_name not in ("any", "passing", "warning", "critical"):
        raise HTTPError(400, "Invalid check state")
    meta = node_meta_filter(request)
    flt = query_filter(api, request, filtering.HEALTH_CHECK)
    near = near_node(api, request)

    def run(store: StateStore, ws: WatchSet) -> ReadResult:
        store.check_table(ws)
        nodes = store.node_table(ws) if meta else {}  # with ?node-meta the answer depends on nodes too

        def build() -> Any:
            checks = near_sort(store, visible_checks(request, store, store.checks_in_state(state_name)), _check_node,
                               near)  # fmt: skip
            out = [
                views.check_json(c)
                for c in checks
                if not meta or (c.node in nodes and node_matches(nodes[c.node], meta))
            ]
            return flt.select(out) if flt is not None else out

        return ReadResult(build)

    return await api.read(request, run, cacheable=not near)


ROUTES: tuple[Route, ...] = (
    route("GET", "/v1/health/service/", service, "read", "service", "each",
          "The instances of a service with their node and checks (filtered: service:read, node:read)"),
    route("GET", "/v1/health/connect/", connect, "read", "service", "each",
          "The Connect-capable instances of a service with their checks (filtered as /v1/health/service)"),
    route("GET", "/v1/health/ingress/", ingress, "read", "service", "each",
          "The ingress gateways exposing a service, with their health (filtered: service:read on it)"),
    route("GET", "/v1/health/checks/", checks, "read", "service", "each",
          "The checks of a service (filtered: service:read, node:read)"),
    route("GET", "/v1/health/node/", node, "read", "node", "each",
          "The checks of a node (filtered: node:read for node checks, service:read for service checks)"),
    route("GET", "/v1/health/state/", state, "read", "node", "each", "The checks in a given state"),
)
