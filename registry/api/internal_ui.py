"""/v1/internal/ui/services and /v1/internal/ui/nodes: the read endpoints Consul's web UI lists from.

Consul's UI does not ask for each service's instances to draw the services list: ``/v1/internal/ui/services``
(agent/ui_endpoint.go ``UIServices``) answers one summary per service -- its kind, tags, nodes, instance
count and how many of its checks pass, warn or fail -- and ``/v1/internal/ui/nodes`` (``UINodes``) a dump of
every node with its services and checks. Proconsul serves both, in Consul's shapes and read-only, so its
own UI (``registry/ui``) and Consul's draw a catalog of thousands of instances from one blocking query
each. Both are filtered as Consul's ``Internal.ServiceDump`` and ``Internal.NodeDump`` are: an instance is
shown only with ``service:read`` on its name and ``node:read`` on its node; a node only with ``node:read``,
its services and checks each by their own rule.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from registry.api import views
from registry.api.enforce import mark_filtered, request_authz
from registry.api.http import ReadResult
from registry.api.routing import Route, route
from registry.state.store import StateStore, WatchSet
from registry.structs import Check

if TYPE_CHECKING:
    from registry.api.http import Api

_STATUS_FIELD = {"passing": "ChecksPassing", "warning": "ChecksWarning", "critical": "ChecksCritical"}


def _summary(name: str) -> dict[str, Any]:
    return {"Name": name, "Datacenter": "", "Tags": [], "Nodes": [], "ExternalSources": [], "InstanceCount": 0,
            "ChecksPassing": 0, "ChecksWarning": 0, "ChecksCritical": 0, "GatewayConfig": {},
            "TransparentProxy": False, "ConnectNative": False, "ConnectedWithProxy": False,
            "ConnectedWithGateway": False}  # fmt: skip


async def ui_services(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    """One ServiceListingSummary per service, sorted by name (Consul's summarizeServices and
    prepSummaryOutput): a check counts once per (node, check ID), a node check towards every service on
    its node, and a sidecar proxy's checks towards the service it fronts as well as its own."""

    def run(store: StateStore, ws: WatchSet) -> ReadResult:
        table = store.service_table(ws)
        nodes = store.node_table(ws)
        store.check_table(ws)

        def build() -> Any:
            authz = request_authz(request)
            sums: dict[str, dict[str, Any]] = {}
            checks: dict[str, dict[tuple[str, str], str]] = {}
            tag_sets: dict[str, set[str]] = {}
            node_sets: dict[str, set[str]] = {}
            sources: dict[str, list[str]] = {}
            for name in sorted(table):
                if authz is not None and not authz.service_read(name):
                    mark_filtered(request)
                    continue
                for node, sid in table[name]:
                    if authz is not None and not authz.node_read(node):
                        mark_filtered(request)
                        continue
                    svc = store.services[node][sid]
                    s = sums.get(name)
                    if s is None:
                        s = sums[name] = _summary(name)
                    s["Kind"] = svc.kind
                    n = nodes.get(node)
                    s["Datacenter"] = n.datacenter if n is not None else api.config.datacenter
                    s["InstanceCount"] += 1
                    node_sets.setdefault(name, set()).add(node)
                    tag_sets.setdefault(name, set()).update(svc.tags)
                    source = svc.meta.get("external-source", "")
                    if source and source not in sources.setdefault(name, []):
                        sources[name].append(source)
                    if svc.connect and svc.connect.get("Native"):
                        s["ConnectNative"] = True
                    inst = store.checks_for_instance(node, sid)
                    mine = checks.setdefault(name, {})
                    for c in inst:
                        mine[(node, c.check_id)] = c.status
                    if svc.kind == "connect-proxy":
                        dest = str((svc.proxy or {}).get("DestinationServiceName") or "")
                        if dest:
                            target = sums.get(dest)
                            if target is None:
                                target = sums[dest] = _summary(dest)
                            target["ConnectedWithProxy"] = True
                            fronted = checks.setdefault(dest, {})
                            for c in inst:
                                fronted[(node, c.check_id)] = c.status
            out = []
            for name in sorted(sums):
                s = sums[name]
                s["Tags"] = sorted(tag_sets.get(name, ()))
                s["Nodes"] = sorted(node_sets.get(name, ()))
                s["ExternalSources"] = sources.get(name, [])
                for status in checks.get(name, {}).values():
                    field = _STATUS_FIELD.get(status)
                    if field is not None:
                        s[field] += 1
                if not s.get("Kind"):
                    s.pop("Kind", None)  # Consul's omitempty
                out.append(s)
            return out

        return ReadResult(build)

    return await api.read(request, run)


async def ui_nodes(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    """Consul's NodeDump: each node with its services (NodeService) and checks (HealthCheck), sorted by
    node name; empty lists rather than null, as UINodes answers."""

    def run(store: StateStore, ws: WatchSet) -> ReadResult:
        nodes = store.node_table(ws)
        store.service_table(ws)
        store.check_table(ws)

        def build() -> Any:
            authz = request_authz(request)
            out = []
            for name in sorted(nodes):
                if authz is not None and not authz.node_read(name):
                    mark_filtered(request)
                    continue
                entry = views.node_json(nodes[name])
                svcs = store.services.get(name, {})
                shown = []
                for sid in sorted(svcs):
                    svc = svcs[sid]
                    if authz is not None and not authz.service_read(svc.service):
                        mark_filtered(request)
                        continue
                    shown.append(views.service_json(svc))
                entry["Services"] = shown
                entry["Checks"] = [views.check_json(c) for c in _visible_checks(request, store, name)]
                out.append(entry)
            return out

        return ReadResult(build)

    return await api.read(request, run)


def _visible_checks(request: web.Request, store: StateStore, node: str) -> list[Check]:
    """A node's checks the token may see: a service check with ``service:read`` on its service's name
    (the node's ``node:read`` was checked by the caller)."""
    authz = request_authz(request)
    checks = store.node_checks(node)
    if authz is None:
        return checks
    kept = [c for c in checks if not c.service_id or authz.service_read(c.service_name)]
    if len(kept) != len(checks):
        mark_filtered(request)
    return kept


ROUTES: tuple[Route, ...] = (
    route("GET", "/v1/internal/ui/services", ui_services, "read", "service", "each",
          "A summary of every service for the web UI: kind, tags, nodes, instance count, checks by status "
          "(instances filtered by service:read and node:read)"),
    route("GET", "/v1/internal/ui/nodes", ui_nodes, "read", "node", "each",
          "Every node with its services and checks, for the web UI (filtered by node:read and service:read)"),
)
