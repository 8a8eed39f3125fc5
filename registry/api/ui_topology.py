"""/v1/internal/ui/service-topology/<service>: a service's place in the mesh, in Consul's shape.

Consul's UI draws a service's topology from this endpoint (agent/ui_endpoint.go ``UIServiceTopology``, the
state store's ``ServiceTopology``, ``IntentionDecision`` and ``intentionTopologyTxn``). The answer is::

    {"Protocol": "http", "TransparentProxy": false, "FilteredByACLs": false,
     "Upstreams": [ServiceTopologySummary...], "Downstreams": [ServiceTopologySummary...]}

where a ServiceTopologySummary is the ServiceSummary of ``/v1/internal/ui/services`` (kind, tags, nodes,
instance count, checks by status, its sidecars' checks counted towards it) plus ``Source`` -- why it is
listed -- and ``Intention``, the intentions' decision for the edge: ``Allowed``, ``HasPermissions`` (an L7
intention decides it: not allowed at L4), ``ExternalSource`` (the deciding intention's
``external-source`` meta), ``HasExact`` (neither of its names is a wildcard), ``DefaultAllow`` (the
default decision is allow).

- Upstreams: what the service's sidecar proxies name in ``Proxy.Upstreams`` (Source
  ``proxy-registration``; prepared-query upstreams are not services); when the service has a transparent
  proxy or a Connect-native instance, also every service the intentions let it reach (Source
  ``specific-intention``, ``wildcard-intention`` or ``default-allow``). An upstream with no instances but
  a router, splitter or resolver is listed bare, Source ``routing-config``.
- Downstreams: the services whose sidecars name the service -- or a service whose discovery chain leads to
  it (a router, splitter or resolver naming it, followed back) -- as an upstream; and the services the
  intentions let reach it, kept only when one of their instances is a transparent proxy or
  Connect-native (they need no upstream in their registration to dial it).
- ``Protocol`` is the service's (service-defaults, else proxy-defaults, else tcp); ``TransparentProxy``
  says whether every one of its proxies is in transparent mode.
- ``?kind=`` is required (Consul: "Missing service kind"): "" for a typical service or
  ``ingress-gateway``; anything else is "Unsupported service kind".

ACLs as Consul's ``Internal.ServiceTopology``: ``service:read`` on the service (the route table's check),
then every instance listed needs ``service:read`` on its service and ``node:read`` on its node; a summary
built from fewer instances, or none, says so with ``FilteredByACLs`` (and the
``X-Consul-Results-Filtered-By-ACLs`` header).

Proconsul's catalog keeps no mesh-topology table; the links are found from the proxies' registrations on
each read (a blocking query watches the catalog, the checks and the config entries). Virtual IPs of
services without instances (transparent proxy's dialable names) are not upstream candidates: Proconsul
assigns none.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from registry.api.enforce import mark_filtered, request_authz
from registry.api.errors import HTTPError
from registry.api.http import ReadResult
from registry.api.routing import Route, route
from registry.configentry import SERVICE_RESOLVER, SERVICE_ROUTER, SERVICE_SPLITTER, related_services
from registry.connect.state import get_entry, list_entries, service_protocol
from registry.gocompat import go_quote
from registry.intentions import WILDCARD, IntentionIndex, ServiceName, build_index
from registry.state.store import StateStore, WatchSet
from registry.structs import Node, Service

if TYPE_CHECKING:
    from registry.acl.authorizer import Authorizer
    from registry.api.http import Api

KINDS = ("", "ingress-gateway")
SOURCE_REGISTRATION = "proxy-registration"
SOURCE_SPECIFIC = "specific-intention"
SOURCE_WILDCARD = "wildcard-intention"
SOURCE_DEFAULT_ALLOW = "default-allow"
SOURCE_ROUTING = "routing-config"
GRAPH_KINDS = (SERVICE_ROUTER, SERVICE_SPLITTER, SERVICE_RESOLVER)  # Consul's serviceGraphKinds
CONSUL_SERVICE = "consul"
_STATUS_FIELD = {"passing": "ChecksPassing", "warning": "ChecksWarning", "critical": "ChecksCritical"}
_EMPTY_INDEX = build_index(())


def decision(index: IntentionIndex, source: str, destination: str, default_allow: bool, *,
             allow_permissions: bool = False) -> dict[str, Any]:  # fmt: skip
    """Consul's IntentionDecisionSummary for ``source`` -> ``destination``: the deciding intention's action
    (an L7 intention counts as ``allow_permissions``: Consul cannot know the requests at this point), or
    the default when none matches."""
    hit = index.lookup(ServiceName("default", source), ServiceName("default", destination))
    ixn = hit.matched if hit is not None else None
    if ixn is None:
        return {"Allowed": default_allow, "HasPermissions": False, "ExternalSource": "", "HasExact": False,
                "DefaultAllow": default_allow}  # fmt: skip
    permissions = bool(ixn.permissions)
    return {"Allowed": allow_permissions if permissions else ixn.action == "allow", "HasPermissions": permissions,
            "ExternalSource": str(ixn.meta.get("external-source", "")),
            "HasExact": ixn.source_name != WILDCARD and ixn.destination_name != WILDCARD,
            "DefaultAllow": default_allow}  # fmt: skip


def _intention_source(d: Mapping[str, Any]) -> str:
    if d["HasExact"]:
        return SOURCE_SPECIFIC
    if d["DefaultAllow"]:
        return SOURCE_DEFAULT_ALLOW
    return SOURCE_WILDCARD


def _proxy(svc: Service) -> Mapping[str, Any]:
    return svc.proxy or {}


def _identity(svc: Service) -> str:
    """The service an instance stands for: a sidecar stands for the service it fronts."""
    if svc.kind == "connect-proxy":
        return str(_proxy(svc).get("DestinationServiceName") or svc.service)
    return svc.service


class _Catalog:
    """The reads one topology needs, over the store's live rows (covered by the watched tables)."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def proxies(self) -> Iterable[Service]:
        services = self.store.services
        for keys in self.store.connect_by_target.values():
            for node, sid in keys:
                svc = services[node][sid]
                if svc.kind == "connect-proxy":
                    yield svc

    def links(self) -> list[tuple[str, str]]:
        """(upstream, downstream) pairs from the proxies' registrations (Consul's mesh topology table)."""
        out = set()
        for svc in self.proxies():
            proxy = _proxy(svc)
            downstream = str(proxy.get("DestinationServiceName") or "")
            for u in proxy.get("Upstreams") or ():
                if u.get("DestinationType") == "prepared_query" or not u.get("DestinationName") or not downstream:
                    continue
                out.add((str(u["DestinationName"]), downstream))
        return sorted(out)

    def names_of_kind(self, kinds: tuple[str, ...]) -> list[str]:
        """Service names with an instance of one of ``kinds`` (Consul's kind-service-names table)."""
        services = self.store.services
        return sorted(name for name, keys in self.store.by_service_name.items()
                      if any(services[n][s].kind in kinds for n, s in keys))  # fmt: skip

    def instances(self, names: Iterable[str]) -> list[tuple[Node, Service]]:
        """Each name's instances and the instances that take its Connect traffic (sidecars, native), once
        each (Consul's combinedServiceNodesTxn)."""
        seen: dict[tuple[str, str], tuple[Node, Service]] = {}
        for name in names:
            for connect in (False, True):
                for node, svc in self.store.service_instances(name, connect):
                    seen[(node.node, svc.id)] = (node, svc)
        return [seen[k] for k in sorted(seen)]

    def chain_sources(self, service: str) -> list[str]:
        """``service`` and every service whose discovery chain can lead to it: the routers, splitters and
        resolvers (redirects, failovers) naming it, followed back (Consul's discoveryChainSourcesTxn)."""
        back: dict[str, set[str]] = {}
        for kind in GRAPH_KINDS:
            for entry in list_entries(self.store, kind):
                for target in related_services(entry):
                    back.setdefault(target, set()).add(str(entry.get("Name", "")))
        found, todo = {service}, [service]
        while todo:
            for source in back.get(todo.pop(), ()):
                if source not in found:
                    found.add(source)
                    todo.append(source)
        return sorted(found)

    def has_routing_config(self, name: str) -> bool:
        return any(get_entry(self.store, kind, name) is not None for kind in GRAPH_KINDS)


def _summary(name: str) -> dict[str, Any]:
    return {"Name": name, "Datacenter": "", "Tags": [], "Nodes": [], "ExternalSources": [], "InstanceCount": 0,
            "ChecksPassing": 0, "ChecksWarning": 0, "ChecksCritical": 0, "GatewayConfig": {},
            "TransparentProxy": False, "ConnectNative": False}  # fmt: skip


def summarize(store: StateStore, instances: list[tuple[Node, Service]]) -> list[dict[str, Any]]:
    """Consul's summarizeServices + prepSummaryOutput(excludeSidecars): one summary per service, a
    sidecar's checks counted towards the service it fronts (once per node and check ID), the service
    transparent only when all its sidecars are; sidecars themselves not listed. Sorted by name."""
    sums: dict[str, dict[str, Any]] = {}
    checks: dict[str, dict[tuple[str, str], str]] = {}
    tags: dict[str, set[str]] = {}
    nodes: dict[str, set[str]] = {}
    transparent: dict[str, bool] = {}
    for node, svc in instances:
        s = sums.setdefault(svc.service, _summary(svc.service))
        s["Kind"] = svc.kind
        s["Datacenter"] = node.datacenter
        s["InstanceCount"] += 1
        nodes.setdefault(svc.service, set()).add(node.node)
        tags.setdefault(svc.service, set()).update(svc.tags)
        source = svc.meta.get("external-source", "")
        if source and source not in s["ExternalSources"]:
            s["ExternalSources"].append(source)
        if svc.connect and svc.connect.get("Native"):
            s["ConnectNative"] = True
        own = store.checks_for_instance(node.node, svc.id)
        mine = checks.setdefault(svc.service, {})
        for c in own:
            mine[(node.node, c.check_id)] = c.status
        if svc.kind == "connect-proxy":
            dest = _identity(svc)
            sums.setdefault(dest, _summary(dest))
            fronted = checks.setdefault(dest, {})
            for c in own:
                fronted[(node.node, c.check_id)] = c.status
            is_transparent = _proxy(svc).get("Mode") == "transparent"
            transparent[dest] = transparent.get(dest, True) and is_transparent
    out = []
    for name in sorted(sums):
        s = sums[name]
        s["Tags"] = sorted(tags.get(name, ()))
        s["Nodes"] = sorted(nodes.get(name, ()))
        s["TransparentProxy"] = transparent.get(name, False)
        for status in checks.get(name, {}).values():
            field = _STATUS_FIELD.get(status)
            if field is not None:
                s[field] += 1
        kind = s.pop("Kind", "")
        if kind not in KINDS:
            continue  # a sidecar (or a gateway of another kind) is not listed on its own
        out.append({"Kind": kind, **s} if kind else s)
    return out


def _readable(authz: Authorizer | None, node: Node, svc: Service) -> bool:
    return authz is None or (authz.node_read(node.node) and authz.service_read(svc.service))


def topology(store: StateStore, service: str, kind: str, index: IntentionIndex, default_allow: bool,
             authz: Authorizer | None, datacenter: str) -> dict[str, Any]:  # fmt: skip
    """The ServiceTopology answer for ``service`` (see the module docstring), filtered for ``authz``."""
    cat = _Catalog(store)
    has_transparent = connect_native = fully_transparent = False
    protocol = ""
    if kind == "":
        protocol = service_protocol(store, service)
        connect_instances = [svc for _, svc in store.service_instances(service, True)]
        if connect_instances:
            fully_transparent = all(_proxy(s).get("Mode") == "transparent" for s in connect_instances)
            has_transparent = any(_proxy(s).get("Mode") == "transparent" for s in connect_instances)
            connect_native = any(bool(s.connect and s.connect.get("Native")) for s in connect_instances)
    links = cat.links()
    typical = [n for n in cat.names_of_kind(("",)) if n not in (CONSUL_SERVICE, service)]

    # Upstreams: registrations, then (transparent / native only) what the intentions allow it to reach.
    up_sources = {u: SOURCE_REGISTRATION for u, d in links if d == service}
    if has_transparent or connect_native:
        for candidate in typical:
            d = decision(index, service, candidate, default_allow, allow_permissions=True)
            if d["Allowed"] and candidate not in up_sources:
                up_sources[candidate] = _intention_source(d)
    up_decisions = {u: decision(index, service, u, default_allow) for u in up_sources}
    upstream_instances = cat.instances(up_sources)
    found = {svc.service for _, svc in upstream_instances}
    routing = sorted(u for u in up_sources if u not in found and cat.has_routing_config(u))

    # Downstreams: registrations naming it (or a chain leading to it), then what the intentions let in.
    sources = set(cat.chain_sources(service))
    down_sources = {d: SOURCE_REGISTRATION for u, d in links if u in sources}
    candidates = typical + [n for n in cat.names_of_kind(("ingress-gateway",)) if n != service]
    for candidate in candidates:
        d = decision(index, candidate, service, default_allow, allow_permissions=True)
        if d["Allowed"] and candidate not in down_sources:
            down_sources[candidate] = _intention_source(d)
    down_decisions = {d: decision(index, d, service, default_allow) for d in down_sources}
    unfiltered = cat.instances(down_sources)
    dialers = {_identity(svc) for _, svc in unfiltered
               if _proxy(svc).get("Mode") == "transparent" or (svc.connect and svc.connect.get("Native"))}  # fmt: skip
    downstream_instances = [(n, s) for n, s in unfiltered
                            if _identity(s) in dialers or down_sources.get(_identity(s)) == SOURCE_REGISTRATION]  # fmt: skip

    filtered = False

    def visible(items: list[tuple[Node, Service]]) -> list[tuple[Node, Service]]:
        nonlocal filtered
        kept = [(n, s) for n, s in items if _readable(authz, n, s)]
        filtered = filtered or len(kept) != len(items)
        return kept

    upstreams = [{**s, "Source": up_sources.get(s["Name"], ""),
                  "Intention": up_decisions.get(s["Name"], decision(index, service, s["Name"], default_allow))}
                 for s in summarize(store, visible(upstream_instances))]  # fmt: skip
    for name in routing:
        bare = {"Name": name, "Datacenter": datacenter, "Tags": None, "Nodes": None, "ExternalSources": None,
                "InstanceCount": 0, "ChecksPassing": 0, "ChecksWarning": 0, "ChecksCritical": 0,
                "GatewayConfig": {}, "TransparentProxy": False, "ConnectNative": False}  # fmt: skip
        upstreams.append({**bare, "Source": SOURCE_ROUTING, "Intention": up_decisions[name]})
    downstreams = [{**s, "Source": down_sources.get(s["Name"], ""),
                    "Intention": down_decisions.get(s["Name"], decision(index, s["Name"], service, default_allow))}
                   for s in summarize(store, visible(downstream_instances))]  # fmt: skip
    return {"Protocol": protocol, "TransparentProxy": fully_transparent, "Upstreams": upstreams,
            "Downstreams": downstreams, "FilteredByACLs": filtered}  # fmt: skip


async def ui_service_topology(api: Api, request: web.Request, service: str) -> web.StreamResponse:
    if not service:
        raise HTTPError(400, "Missing service name")
    kinds = request.query.getall("kind", [])
    if not kinds:
        raise HTTPError(400, "Missing service kind")
    kind = kinds[0]
    if kind not in KINDS:
        raise HTTPError(400, f"Unsupported service kind {go_quote(kind)}")
    connect = api.connect

    def run(store: StateStore, ws: WatchSet) -> ReadResult:
        store.node_table(ws)
        store.service_table(ws)
        store.check_table(ws)
        if connect is not None:
            index = connect.views.intentions(store, ws)  # watches the config entries (intentions, chains)
            default_allow, _ = connect.default_allow()
        else:
            get_entry(store, SERVICE_ROUTER, service, ws=ws)  # watches the config entries table
            index, default_allow = _EMPTY_INDEX, api.acl_policy == "allow"

        def build() -> Any:
            out = topology(store, service, kind, index, default_allow, request_authz(request),
                           api.config.datacenter)  # fmt: skip
            if out["FilteredByACLs"]:
                mark_filtered(request)
            return out

        return ReadResult(build)

    return await api.read(request, run)


ROUTES: tuple[Route, ...] = (
    route("GET", "/v1/internal/ui/service-topology/", ui_service_topology, "read", "service", "path",
          "A service's upstreams and downstreams in the mesh with the intentions' decision for each, for the "
          "web UI (instances filtered by service:read and node:read)"),
)
