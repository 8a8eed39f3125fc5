"""/v1/coordinate/*: network coordinates, and the ``?near`` sort of catalog and health answers.

As Consul's agent/coordinate_endpoint.go and agent/consul/coordinate_endpoint.go:

- ``GET /v1/coordinate/datacenters``: each datacenter's servers and their coordinates, in the WAN area
  (``AreaID`` "wan"); no ACL rule. Proconsul has one datacenter and no WAN pool: its servers' coordinates
  are their LAN ones.
- ``GET /v1/coordinate/nodes``: every node's coordinate per segment (``?segment`` keeps one segment),
  blocking on the coordinates table, filtered by ``node:read``.
- ``GET /v1/coordinate/node/:node``: one node's (``node:read`` on it); 404 with no body when it has none.
- ``PUT /v1/coordinate/update``: ``{Node, Segment, Coord}`` into the servers' pending batch
  (``node:write``); "invalid coordinate" for NaN/Inf or a malformed one, "incompatible coordinate" for a
  dimensionality other than the servers'. The answer is 200 with no body, as Consul's.
- With ``disable_coordinates`` every one of them answers 401 "Coordinate support disabled".

``near_sort`` is the ``?near=<node>|_agent`` sort the catalog and health endpoints apply (registry.rtt).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from aiohttp import web

from registry.api.decode import DecodeError, parse_json
from registry.api.enforce import filter_list, request_authz, request_token
from registry.api.errors import HTTPError
from registry.api.http import ReadResult
from registry.api.routing import Route, route
from registry.rtt import sort_by_distance
from registry.state.coordinate_table import TABLE
from registry.state.store import StateStore, WatchSet
from registry.structs import CONSUL_SERVICE

if TYPE_CHECKING:
    from registry.api.http import Api

T = TypeVar("T")

AGENT_NEAR = "_agent"
DISABLED = "Coordinate support disabled"
WAN_AREA = "wan"  # Consul's types.AreaWAN


class CoordinateSink(Protocol):
    """Where ``PUT /v1/coordinate/update`` hands an update (a server's ``Coordinate.Update``); raises
    ``CommandError`` for a bad coordinate, ``ACLError`` or ``RPCError``."""

    async def submit(self, node: str, segment: str, coord: Any, token: str) -> None: ...


def near_node(api: Api, request: web.Request) -> str:
    """The node a ``?near`` names ("" for none): ``_agent`` is the agent serving the request (Consul's
    parseSource)."""
    near = request.query.get("near", "") if "near=" in request.query_string else ""
    if near == AGENT_NEAR:
        return api.agent.node_name
    return near


def near_sort(store: StateStore, items: Sequence[T], node_of: Callable[[T], str], near: str) -> list[T]:
    """``items`` by estimated RTT from ``near`` (Consul's sortNodesByDistanceFrom): unchanged when ``near``
    is empty or has no coordinate; nodes without one last, in the order they had."""
    if not near:
        return list(items)
    source = store.coordinate_set(near)
    if not source:
        return list(items)
    return sort_by_distance(items, node_of, source, store.coordinate_lookup())


def _disabled(api: Api) -> bool:
    return api.coordinates_disabled


def _entry(node: str, segment: str, coord: dict[str, Any]) -> dict[str, Any]:
    return {"Node": node, "Segment": segment, "Coord": coord}


async def datacenters(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    if _disabled(api):
        return api.text(401, DISABLED)
    store = api.store
    servers = sorted(n for n, svcs in store.services.items() if CONSUL_SERVICE in svcs)
    rows = store.tables.get(TABLE, {})
    coords = []
    for name in servers:
        row = rows.get(name) or {}
        if "" in row:
            coords.append(_entry(name, "", row[""]))
    return api.json(request, [{"Datacenter": api.config.datacenter, "AreaID": WAN_AREA, "Coordinates": coords}])


def _segment_filter(request: web.Request) -> str | None:
    """``?segment`` (present, even empty: only that segment), as Consul's filterCoordinates."""
    if "segment" not in request.query:
        return None
    return request.query.getall("segment")[0]


async def nodes(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    if _disabled(api):
        return api.text(401, DISABLED)
    segment = _segment_filter(request)

    def run(store: StateStore, ws: WatchSet) -> ReadResult:
        rows = list(store.coordinate_rows(ws))

        def build() -> Any:
            kept = rows
            authz = request_authz(request)
            if authz is not None:
                kept = filter_list(request, kept, lambda r: authz.node_read(r[0]))
            return [_entry(n, s, c) for n, s, c in kept if segment is None or s == segment]

        return ReadResult(build)

    return await api.read(request, run)


async def node(api: Api, request: web.Request, name: str) -> web.StreamResponse:
    if _disabled(api):
        return api.text(401, DISABLED)
    if not name:
        raise HTTPError(400, "Missing node name")
    segment = _segment_filter(request)

    def run(store: StateStore, ws: WatchSet) -> ReadResult:
        row = store.table_rows(TABLE, ws).get(name) or {}
        out = [_entry(name, s, row[s]) for s in sorted(row) if segment is None or s == segment]
        return ReadResult(lambda: out, 200 if out else 404)

    return await api.read(request, run)


def _field(d: dict[str, Any], name: str) -> Any:
    """A field of a JSON object matched without regard to case, as Go's decoder does."""
    if name in d:
        return d[name]
    lowered = name.lower()
    for k, v in d.items():
        if k.lower() == lowered:
            return v
    return None


def _coord_fields(raw: Any) -> Any:
    if not isinstance(raw, dict):
        return raw
    return {k: _field(raw, k) for k in ("Vec", "Error", "Adjustment", "Height") if _field(raw, k) is not None}


async def update(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    if _disabled(api):
        return api.text(401, DISABLED)
    body = await api.read_body(request)
    try:
        d = parse_json(body)
    except DecodeError as exc:
        raise HTTPError(400, f"Request decode failed: {exc}") from None
    if d is None:
        d = {}
    if not isinstance(d, dict):
        kind = "array" if isinstance(d, list) else "string" if isinstance(d, str) else \
            "bool" if isinstance(d, bool) else "number"  # fmt: skip
        raise HTTPError(400, f"Request decode failed: json: cannot unmarshal {kind} into Go value of type "
                             "structs.CoordinateUpdateRequest")  # fmt: skip
    node, segment = _field(d, "Node") or "", _field(d, "Segment") or ""
    if not isinstance(node, str) or not isinstance(segment, str):
        raise HTTPError(400, "Request decode failed: Node and Segment must be strings")
    sink = api.coordinates
    if sink is None:
        raise HTTPError(500, "coordinate updates are not served by this agent")
    token = request_token(request) or api.acl.default_secret()
    await sink.submit(node, segment, _coord_fields(_field(d, "Coord")), token)
    return web.Response(status=200, headers={"X-Consul-Default-ACL-Policy": api.acl_policy})


ROUTES: tuple[Route, ...] = (
    route("GET", "/v1/coordinate/datacenters", datacenters, "read", "none", "none",
          "The servers' coordinates per datacenter (WAN area)"),
    route("GET", "/v1/coordinate/nodes", nodes, "read", "node", "each",
          "Every node's LAN coordinate per segment (filtered: node:read on each)"),
    route("GET", "/v1/coordinate/node/", node, "read", "node", "path", "One node's LAN coordinates"),
    route("PUT", "/v1/coordinate/update", update, "write", "node", "body:Node",
          "Update a node's LAN coordinate (applied by the servers in batches)"),
)
