"""/v1/catalog/*: the cluster-wide registry of nodes and services."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from registry import filtering
from registry.api import views
from registry.api.coordinate import near_node, near_sort
from registry.api.decode import parse_json
from registry.api.enforce import filter_list, mark_filtered, request_authz
from registry.api.errors import HTTPError
from registry.api.http import ReadResult
from registry.api.routing import Route, route
from registry.commands import Deregister, Register
from registry.connect.state import get_entry
from registry.registration import (
    CATALOG_DEREGISTER_SCHEMA,
    CATALOG_REGISTER_SCHEMA,
    DecodeError,
    decode,
    validate_meta,
)
from registry.state.store import StateStore, WatchSet
from registry.structs import CHECK_STATUSES, CONSUL_SERVICE, Check, Node, Service

if TYPE_CHECKING:
    from registry.api.http import Api


def node_meta_filter(request: web.Request) -> dict[str, str]:
    out = {}
    for item in request.query.getall("node-meta", []):
        key, _, value = item.partition(":")
        out[key] = value
    return out


# Consul answers a filter it cannot compile with a 500: the error comes back from the RPC layer untyped
# (agent/http.go has no case for it; hashicorp/consul#7338 and #9441 show "Unexpected response code: 500
# (Failed to create boolean expression evaluator: ...)" from /v1/agent/services and /v1/catalog/nodes).
FILTER_ERROR_STATUS = 500


def query_filter(api: Api | None, request: web.Request, schema: filtering.Struct) -> filtering.Filter | None:
    """The request's ``?filter=``, compiled against the Go type the endpoint returns (None when absent
    or empty, as in Consul). For blocking reads, pass ``api`` so that a bad ``?index``/``?wait`` is
    reported first, as Consul parses those before it builds the filter."""
    text = request.query.get("filter", "")
    if not text:
        return None
    if api is not None:
        api.query_options(request)
    try:
        return filtering.compile_filter(text, schema)
    except filtering.FilterError as exc:
        raise HTTPError(FILTER_ERROR_STATUS, str(exc)) from None


def node_matches(node: Node, meta: dict[str, str]) -> bool:
    return all(node.meta.get(k) == v for k, v in meta.items())


def tags_match(svc: Service, tags: list[str]) -> bool:
    """Every requested tag must be present; Consul compares tags case-insensitively."""
    if not tags:
        return True
    have = {t.lower() for t in svc.tags}
    return all(t.lower() in have for t in tags)


async def register_handler(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    body = await api.read_body(request)
    try:
        d = decode(parse_json(body), CATALOG_REGISTER_SCHEMA)
    except DecodeError as exc:
        raise HTTPError(400, f"Request decode failed: {exc}") from exc
    if not d.get("Node"):
        raise HTTPError(400, "Must provide node")
    if not d.get("Address") and not d.get("SkipNodeUpdate"):
        raise HTTPError(400, "Must provide address")
    dc = d.get("Datacenter") or api.config.datacenter
    if dc != api.config.datacenter:
        raise HTTPError(500, "No path to datacenter")
    try:
        validate_meta(d.get("NodeMeta") or {}, "Node")
    except DecodeError as exc:
        raise HTTPError(400, f"Invalid node metadata: {exc}") from exc
    node = Node(id=d.get("ID") or "", node=d["Node"], address=d.get("Address") or "", datacenter=dc,
                tagged_addresses=d.get("TaggedAddresses") or {}, meta=d.get("NodeMeta") or {})  # fmt: skip
    skip_node_update = bool(d.get("SkipNodeUpdate"))
    existing = api.store.nodes.get(d["Node"])
    if skip_node_update and existing is None and not node.address:
        raise HTTPError(400, "Must provide address")
    service: Service | None = None
    if svc := d.get("Service"):
        name = svc.get("Service") or svc.get("Name") or ""
        if not name:
            raise HTTPError(400, "Must provide service name")
        try:
            validate_meta(svc.get("Meta") or {})
        except DecodeError as exc:
            raise HTTPError(400, f"Invalid service metadata: {exc}") from exc
        weights = svc.get("Weights") or {"Passing": 1, "Warning": 1}
        proxy, connect = svc.get("Proxy"), svc.get("Connect")
        if proxy is not None and not isinstance(proxy, dict):
            raise HTTPError(400, "Proxy must be an object")
        if connect is not None and not isinstance(connect, dict):
            raise HTTPError(400, "Connect must be an object")
        service = Service(
            node=node.node,
            id=svc.get("ID") or name,
            service=name,
            kind=svc.get("Kind") or "",
            tags=tuple(svc.get("Tags") or ()),
            address=svc.get("Address") or "",
            tagged_addresses=svc.get("TaggedAddresses") or {},
            meta=svc.get("Meta") or {},
            port=svc.get("Port") or 0,
            weights=(weights.get("Passing") or 1, weights.get("Warning") or 1),
            enable_tag_override=bool(svc.get("EnableTagOverride")),
            proxy=proxy,
            connect=connect,
            locality={k: v for k, v in (svc.get("Locality") or {}).items() if v} or None,
        )
    checks: list[Check] = []
    for c in ([d["Check"]] if d.get("Check") else []) + [c for c in (d.get("Checks") or []) if c]:
        status = c.get("Status") or "critical"
        if status not in CHECK_STATUSES:
            raise HTTPError(400, f"Invalid check status: '{status}'")
        cid = c.get("CheckID") or c.get("ID") or c.get("Name") or ""
        if not cid:
            raise HTTPError(400, "Missing check ID")
        if c.get("Node") and c["Node"] != d["Node"]:
            raise HTTPError(400, "Check node does not match node")
        definition = c.get("Definition") or {}
        if not isinstance(definition, dict):
            raise HTTPError(400, "Definition must be an object")
        checks.append(Check(
            node=d["Node"], check_id=cid, name=c.get("Name") or cid, status=status, notes=c.get("Notes") or "",
            output=c.get("Output") or "", service_id=c.get("ServiceID") or "", type=c.get("Type") or "",
            definition=definition,
        ))  # fmt: skip
    authz = request_authz(request)
    if authz is not None:
        # Consul's vetRegisterWithACL: service:write on the service, and for each check service:write on
        # its service (when it names one) or node:write on the node (checked by the route already).
        if service is not None:
            authz.check("service_write", service.service)
        for chk in checks:
            if chk.service_id:
                target = service if service is not None and service.id == chk.service_id else None
                existing = api.store.services.get(node.node, {}).get(chk.service_id)
                svc_name = target.service if target is not None else existing.service if existing else chk.service_id
                authz.check("service_write", svc_name)
    await api.propose(Register(node, service, tuple(checks), skip_node_update))
    return api.json(request, True)


async def deregister(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    body = await api.read_body(request)
    try:
        d = decode(parse_json(body), CATALOG_DEREGISTER_SCHEMA)
    except DecodeError as exc:
        raise HTTPError(400, f"Request decode failed: {exc}") from exc
    if not d.get("Node"):
        raise HTTPError(400, "Must provide node")
    await api.propose(Deregister(d["Node"], d.get("ServiceID") or "", d.get("CheckID") or ""))
    return api.json(request, True)


async def datacenters(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    return api.json(request, [api.config.datacenter])


async def nodes(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    meta = node_meta_filter(request)
    flt = query_filter(api, request, filtering.NODE)
    near = near_node(api, request)

    def run(store: StateStore, ws: WatchSet) -> ReadResult:
        nodes = store.node_table(ws)

        def build() -> Any:
            rows = [nodes[k] for k in sorted(nodes)]
            authz = request_authz(request)
            if authz is not None:
                rows = filter_list(request, rows, lambda n: authz.node_read(n.node))
            rows = near_sort(store, rows, _node_name, near)
            out = [views.node_json(n) for n in rows if node_matches(n, meta)]
            return flt.select(out) if flt is not None else out

        return ReadResult(build)

    # A ?near answer's order follows the coordinates, which its index does not cover: rendered each time,
    # as Consul sorts each answer after its blocking query (never cached by index).
    return await api.read(request, run, cacheable=not near)


def _node_name(n: Node) -> str:
    return n.node


def instance_node(ns: tuple[Node, Service]) -> str:
    return ns[0].node


async def services(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    meta = node_meta_filter(request)
    # Consul runs the filter on each instance (structs.ServiceNode) and lists the names and tags of those
    # that match. Its state store leaves the node fields of those instances empty; Proconsul fills them
    # in, as the documentation's selector table (NodeMeta, Address, ...) promises.
    flt = query_filter(api, request, filtering.SERVICE_NODE)

    def run(store: StateStore, ws: WatchSet) -> ReadResult:
        instances = store.service_table(ws)
        # With a node-meta or filter selector the answer also depends on node fields.
        nodes = store.node_table(ws) if meta or flt is not None else {}

        def build() -> Any:
            authz = request_authz(request)
            if not meta and flt is None:
                names = store.service_names()
                if authz is not None:
                    return {k: names[k] for k in filter_list(request, list(names), authz.service_read)}
                return names
            out: dict[str, set[str]] = {}
            for name, keys in instances.items():
                if authz is not None and not authz.service_read(name):
                    mark_filtered(request)
                    continue
                for node, sid in keys:
                    n = nodes[node]
                    if authz is not None and not authz.node_read(node):
                        mark_filtered(request)
                        continue
                    if not node_matches(n, meta):
                        continue
                    svc = store.services[node][sid]
                    if flt is not None and not flt.matches(views.catalog_service_json(n, svc)):
                        continue
                    out.setdefault(name, set()).update(svc.tags)
            return {k: sorted(v) for k, v in sorted(out.items())}

        return ReadResult(build)

    return await api.read(request, run)


def visible_instances(request: web.Request, name: str, instances: list[tuple[Node, Service]]) -> list[tuple[Node, Service]]:
    """The instances of service ``name`` the request's token may see: none without ``service:read`` on the
    name, and of the rest those on nodes it may ``node:read`` (Consul filters, it does not refuse)."""
    authz = request_authz(request)
    if authz is None:
        return instances
    if not authz.service_read(name):
        if instances:
            mark_filtered(request)
        return []
    return filter_list(request, list(instances), lambda ns: authz.node_read(ns[0].node))


def _service_nodes(api: Api, request: web.Request, name: str, connect: bool) -> Any:
    if not name:
        raise HTTPError(400, "Missing service name")
    tags = request.query.getall("tag", [])
    meta = node_meta_filter(request)
    flt = query_filter(api, request, filtering.SERVICE_NODE)
    near = near_node(api, request)

    def run(store: StateStore, ws: WatchSet) -> ReadResult:
        instances = store.service_instances(name, connect, ws)

        def build() -> Any:
            rows = near_sort(store, visible_instances(request, name, instances), instance_node, near)
            out = [views.catalog_service_json(n, s) for n, s in rows if tags_match(s, tags) and node_matches(n, meta)]
            return flt.select(out) if flt is not None else out

        return ReadResult(build)

    return api.read(request, run, cacheable=not near)


async def service(api: Api, request: web.Request, name: str) -> web.StreamResponse:
    return await _service_nodes(api, request, name, connect=False)


async def connect(api: Api, request: web.Request, name: str) -> web.StreamResponse:
    return await _service_nodes(api, request, name, connect=True)


def _node_visible(request: web.Request, name: str) -> bool:
    authz = request_authz(request)
    if authz is None or authz.node_read(name):
        return True
    mark_filtered(request)
    return False


def _visible_services(request: web.Request, svcs: Any) -> list[str]:
    """The node's service IDs, sorted, that the token may ``service:read``."""
    ids = sorted(svcs)
    authz = request_authz(request)
    if authz is None:
        return ids
    return filter_list(request, ids, lambda sid: authz.service_read(svcs[sid].service))


async def node(api: Api, request: web.Request, name: str) -> web.StreamResponse:
    if not name:
        raise HTTPError(400, "Missing node name")
    flt = query_filter(api, request, filtering.NODE_SERVICE)  # run on each value of "Services"

    def run(store: StateStore, ws: WatchSet) -> ReadResult:
        n, svcs = store.node_services(name, ws)

        def build() -> Any:
            if n is None or not _node_visible(request, name):
                return None
            services = {sid: views.service_json(svcs[sid]) for sid in _visible_services(request, svcs)}
            return {"Node": views.node_json(n), "Services": flt.select_values(services) if flt else services}

        return ReadResult(build)

    return await api.read(request, run)


async def node_services(api: Api, request: web.Request, name: str) -> web.StreamResponse:
    if not name:
        raise HTTPError(400, "Missing node name")
    flt = query_filter(api, request, filtering.NODE_SERVICE)  # run on each item of "Services"

    def run(store: StateStore, ws: WatchSet) -> ReadResult:
        n, svcs = store.node_services(name, ws)

        def build() -> Any:
            if n is None or not _node_visible(request, name):
                return {"Node": None, "Services": []}
            services = [views.service_json(svcs[sid]) for sid in _visible_services(request, svcs)]
            return {"Node": views.node_json(n), "Services": flt.select(services) if flt else services}

        return ReadResult(build)

    return await api.read(request, run)


def _wildcard_services(store: StateStore, ws: WatchSet) -> list[str]:
    """What a gateway's "*" stands for: every service of the catalog but Consul's own and the proxies and
    gateways (Consul's wildcard gateway-service entries cover the datacenter's services)."""
    names = store.service_table(ws)
    out = []
    for name in sorted(names):
        if name == CONSUL_SERVICE:
            continue
        kinds = {store.services[n][sid].kind for n, sid in names[name]}
        if "" in kinds:
            out.append(name)
    return out


def gateway_services(store: StateStore, gateway: str, ws: WatchSet) -> list[dict[str, Any]]:
    """Consul's GatewayServices: the services an ingress or terminating gateway's config entry links to it,
    as GatewayService values (a listener's port and protocol for ingress; the TLS files and SNI for
    terminating; a "*" expanded to the catalog's services, each with ``FromWildcard``). Watched as the
    config entries (and, for a wildcard, the service table)."""
    out: list[dict[str, Any]] = []
    for kind in ("ingress-gateway", "terminating-gateway"):
        entry = get_entry(store, kind, gateway, ws=ws)
        if entry is None:
            continue
        raft = {"CreateIndex": entry.get("CreateIndex", 0), "ModifyIndex": entry.get("ModifyIndex", 0)}
        if kind == "ingress-gateway":
            links = [({"Port": lst.get("Port", 0), "Protocol": lst.get("Protocol") or "tcp"}, svc)
                     for lst in entry.get("Listeners") or [] for svc in lst.get("Services") or []]  # fmt: skip
        else:
            links = [({k: svc[k] for k in ("CAFile", "CertFile", "KeyFile", "SNI") if svc.get(k)}, svc)
                     for svc in entry.get("Services") or []]  # fmt: skip
        for extra, svc in links:
            name = str(svc.get("Name", ""))
            if kind == "ingress-gateway" and svc.get("Hosts"):
                extra = {**extra, "Hosts": list(svc["Hosts"])}
            targets = [(n, True) for n in _wildcard_services(store, ws)] if name == "*" else [(name, False)]
            for target, wildcard in targets:
                item: dict[str, Any] = {"Gateway": {"Name": gateway}, "Service": {"Name": target}, "GatewayKind": kind,
                                        **extra}  # fmt: skip
                if wildcard:
                    item["FromWildcard"] = True
                out.append({**item, **raft})
    return out


async def gateway_services_handler(api: Api, request: web.Request, gateway: str) -> web.StreamResponse:
    """GET /v1/catalog/gateway-services/:gateway: ``[]`` when no config entry links anything to it, as
    Consul answers; the services the token may not ``service:read`` are left out."""
    if not gateway:
        raise HTTPError(400, "Missing gateway name")

    def run(store: StateStore, ws: WatchSet) -> ReadResult:
        found = gateway_services(store, gateway, ws)

        def build() -> Any:
            authz = request_authz(request)
            if authz is None:
                return found
            return filter_list(request, found, lambda g: authz.service_read(g["Service"]["Name"]))

        return ReadResult(build)

    return await api.read(request, run)


ROUTES: tuple[Route, ...] = (
    route("PUT", "/v1/catalog/register", register_handler, "write", "node", "body:Node",
          "Register a node, service or check (service:write on the service too)"),
    route("PUT", "/v1/catalog/deregister", deregister, "write", "node", "body:Node",
          "Deregister a node, service or check"),
    route("GET", "/v1/catalog/datacenters", datacenters, "read", "none", "none", "Known datacenters"),
    route("GET", "/v1/catalog/nodes", nodes, "read", "node", "each", "All nodes"),
    route("GET", "/v1/catalog/services", services, "read", "service", "each", "All services and their tags"),
    route("GET", "/v1/catalog/service/", service, "read", "service", "each",
          "The instances of a service (filtered: service:read on it, node:read on each node)"),
    route("GET", "/v1/catalog/gateway-services/", gateway_services_handler, "read", "service", "path",
          "The services linked to an ingress or terminating gateway by its config entry (each filtered by "
          "service:read)"),
    route("GET", "/v1/catalog/connect/", connect, "read", "service", "each",
          "The Connect-capable instances of a service (filtered as /v1/catalog/service)"),
    route("GET", "/v1/catalog/node/", node, "read", "node", "each",
          "A node and its services (null without node:read; services filtered by service:read)"),
    route("GET", "/v1/catalog/node-services/", node_services, "read", "node", "each",
          "A node and its services, as a list (filtered as /v1/catalog/node)"),
)
