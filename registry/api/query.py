"""/v1/query: prepared queries (Consul's agent/prepared_query_endpoint.go and the PreparedQuery RPC
endpoint, agent/consul/prepared_query_endpoint.go).

- ``POST /v1/query`` creates a query and answers ``{"ID": ...}``; ``GET /v1/query`` lists them;
  ``GET|PUT|DELETE /v1/query/<uuid>`` reads, replaces and deletes one (PUT and DELETE answer an empty 200);
  ``GET /v1/query/<uuid-or-name>/execute`` runs one (``?near``, ``?limit``, ``?connect``) and
  ``GET /v1/query/<uuid-or-name>/explain`` shows the query a name resolves to, rendered.
- ACLs, as Consul's: ``query`` rules guard a query that has a name (or is a template) by that name, for
  writing (the new name and, on update and delete, the old one) and for reading; an unnamed query is
  guarded by its unguessable ID alone (anyone may create one bound to a session). A caller without
  ``acl:write`` sees every stored ``Token`` as ``<hidden>`` (in lists always; for one query read by ID,
  when it has a token). Execute needs no rule on the query: its instances are filtered by the query's own
  token, or by the caller's when it has none.
- Errors: Consul answers its RPC refusals ("Invalid prepared query: ...", name collisions) with 500;
  Proconsul answers bad input with 400 and the same text, a query that does not exist with 404 ("Query
  not found", "Cannot modify non-existent prepared query: '<id>'").

Execute and explain are not blocking queries (``?index`` is ignored), as in Consul.
"""

from __future__ import annotations

import ipaddress
import math
import random
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from aiohttp import web

from registry.api import views
from registry.api.decode import DecodeError, parse_json
from registry.api.enforce import mark_filtered, request_authz
from registry.api.errors import HTTPError
from registry.api.http import AGENT_NODE_HEADER, ReadResult
from registry.api.routing import Route, route
from registry.commands import PreparedQueryDelete, PreparedQuerySet
from registry.gocompat import go_parse_bool
from registry.prepared_query import (
    AGENT_NEAR,
    IP_NEAR,
    REDACTED,
    Distance,
    Instance,
    PreparedQuery,
    QueryError,
    failover_targets,
    order,
    select,
)
from registry.rtt import distance_between
from registry.state.store import StateStore, WatchSet

if TYPE_CHECKING:
    from registry.acl.authorizer import Authorizer
    from registry.api.http import Api

NOT_FOUND = "Query not found"


# ---------------------------------------------------------------------- ACL helpers


def _sees_tokens(authz: Authorizer | None) -> bool:
    """Consul's filterACL for prepared queries shows stored tokens only to ``acl:write`` (management)."""
    return authz is None or authz.acl_write()


def _readable(authz: Authorizer | None, q: PreparedQuery) -> bool:
    """Whether a list (or explain) may show the query: ``acl:write``, or ``query:read`` on its name (an
    unnamed query is never listed without ``acl:write``)."""
    if _sees_tokens(authz):
        return True
    assert authz is not None
    prefix = q.acl_prefix()
    return prefix is not None and authz.query_read(prefix)


def _check_write(authz: Authorizer | None, q: PreparedQuery) -> None:
    prefix = q.acl_prefix()
    if authz is not None and prefix is not None:
        authz.check("query_write", prefix)


def _decode(raw: bytes) -> PreparedQuery:
    try:
        doc = parse_json(raw)
    except DecodeError as exc:
        raise HTTPError(400, f"Request decode failed: {exc}") from None
    try:
        return PreparedQuery.from_json(doc)
    except QueryError as exc:
        raise HTTPError(exc.status, exc.message) from None


def _validate(q: PreparedQuery) -> None:
    try:
        q.validate()
    except QueryError as exc:
        raise HTTPError(exc.status, exc.message) from None


# ---------------------------------------------------------------------- /v1/query


async def create(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    q = _decode(await api.read_body(request))
    if q.id:
        raise HTTPError(400, "ID must be empty when creating a new prepared query")
    store = api.store
    qid = str(uuid.uuid4())
    while qid in store.prepared_queries:  # pragma: no cover - a collision of random UUIDs
        qid = str(uuid.uuid4())
    q = replace(q, id=qid, create_index=0, modify_index=0)
    _check_write(request_authz(request), q)
    _validate(q)
    await api.propose(PreparedQuerySet("create", q))
    return api.json(request, {"ID": qid})


async def list_queries(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    authz = request_authz(request)

    def run(store: StateStore, ws: WatchSet) -> ReadResult:
        rows = store.pq_list(ws)

        def build() -> Any:
            if _sees_tokens(authz):
                return [q.to_json() for q in rows]
            kept = [q.to_json(token=REDACTED) for q in rows if _readable(authz, q)]
            if len(kept) != len(rows):
                mark_filtered(request)
            return kept

        return ReadResult(build)

    return await api.read(request, run)


# ---------------------------------------------------------------------- /v1/query/<id>[/execute|/explain]


def _split(suffix: str) -> tuple[str, str]:
    """``<id>``, ``<id>/execute`` or ``<id>/explain`` -> (id or name, action)."""
    for action in ("execute", "explain"):
        if suffix.endswith("/" + action):
            return suffix[: -len(action) - 1], action
    return suffix, ""


def _method_not_allowed(api: Api, method: str) -> web.Response:
    resp = api.text(405, f"method {method} not allowed")
    resp.headers["Allow"] = "OPTIONS,GET"
    return resp


async def get(api: Api, request: web.Request, suffix: str) -> web.StreamResponse:
    ident, action = _split(suffix)
    if action == "execute":
        return await _execute(api, request, ident)
    if action == "explain":
        return await _explain(api, request, ident)
    authz = request_authz(request)

    def run(store: StateStore, ws: WatchSet) -> ReadResult:
        q = store.pq_get(ident, ws)
        if q is None:
            return ReadResult(lambda: None, 404)
        prefix = q.acl_prefix()
        if prefix is not None and authz is not None and not _sees_tokens(authz):
            authz.check("query_read", prefix)  # a query this token may not read is refused, not hidden
        if _sees_tokens(authz) or (prefix is None and not q.token):
            return ReadResult(lambda: [q.to_json()])
        return ReadResult(lambda: [q.to_json(token=REDACTED)])

    resp = await api.read(request, run)
    if resp.status == 404:
        return api.text(404, NOT_FOUND)
    return resp


async def update(api: Api, request: web.Request, suffix: str) -> web.StreamResponse:
    ident, action = _split(suffix)
    if action:
        return _method_not_allowed(api, request.method)
    body = await api.read_body(request)
    q = _decode(body) if body.strip() else PreparedQuery()
    q = replace(q, id=ident, create_index=0, modify_index=0)  # the ID is the path's, never the body's
    authz = request_authz(request)
    _check_write(authz, q)
    existing = api.store.prepared_queries.get(ident)
    if existing is None:
        raise HTTPError(404, f"Cannot modify non-existent prepared query: '{ident}'")
    _check_write(authz, existing)
    _validate(q)
    await api.propose(PreparedQuerySet("update", q))
    return web.Response(status=200, headers={"X-Consul-Default-ACL-Policy": api.acl_policy})


async def delete(api: Api, request: web.Request, suffix: str) -> web.StreamResponse:
    ident, action = _split(suffix)
    if action:
        return _method_not_allowed(api, request.method)
    existing = api.store.prepared_queries.get(ident)
    if existing is None:
        raise HTTPError(404, f"Cannot modify non-existent prepared query: '{ident}'")
    _check_write(request_authz(request), existing)
    await api.propose(PreparedQueryDelete(ident))
    return web.Response(status=200, headers={"X-Consul-Default-ACL-Policy": api.acl_policy})


# ---------------------------------------------------------------------- execute and explain


def _resolve(api: Api, ident: str) -> PreparedQuery:
    try:
        q = api.store.pq_resolve(ident, "")  # ${agent.segment}: network segments are Enterprise-only
    except QueryError as exc:
        raise HTTPError(exc.status, exc.message) from None
    if q is None:
        raise HTTPError(404, NOT_FOUND)
    return q


def _meta(api: Api, mode: str) -> dict[str, Any]:
    """The QueryMeta fields Consul's answer struct carries in its JSON (Index stays 0: Consul's execute
    and explain are not blocking reads and set no index)."""
    c = api.consensus
    return {"Index": 0, "LastContact": c.last_contact_ms() * 1_000_000, "KnownLeader": c.known_leader(),
            "ConsistencyLevel": mode, "NotModified": False, "Backend": 0}  # fmt: skip


async def _explain(api: Api, request: web.Request, ident: str) -> web.StreamResponse:
    _limit(request)
    _, _, mode = api.query_options(request)
    await api.consensus.barrier_read(mode)
    q = _resolve(api, ident)
    authz = request_authz(request)
    if not _readable(authz, q):
        prefix = q.acl_prefix()
        assert authz is not None
        if prefix is not None:
            authz.check("query_read", prefix)
        authz.check("acl_write")  # an unnamed query: only acl:write may explain it, as Consul's filter does
    shown = q.to_json() if _sees_tokens(authz) else q.to_json(token=REDACTED)

    def run(store: StateStore, ws: WatchSet) -> ReadResult:
        store.pq_list(ws)
        return ReadResult(lambda: {"Query": shown, **_meta(api, mode)})

    return await api.read(request, run, cacheable=False, blocking=False)


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "")
    if not raw:
        return 0
    try:
        return int(raw, 10)
    except ValueError:
        raise HTTPError(400, f'Bad limit: strconv.Atoi: parsing "{raw}": invalid syntax') from None


def _source_ip(request: web.Request) -> str:
    """Where ``near=_ip`` measures from: X-Forwarded-For (its first address) over the peer's address, as
    Consul's parseSource."""
    fwd = request.headers.get("X-Forwarded-For", "")
    if fwd:
        return fwd.split(",")[0].strip()
    return request.remote or ""


async def _execute(api: Api, request: web.Request, ident: str) -> web.StreamResponse:
    limit = _limit(request)
    force_connect = False
    raw = request.query.get("connect", "")
    if raw:
        try:
            force_connect = go_parse_bool(raw)
        except ValueError as exc:
            raise HTTPError(400, f"Error parsing 'connect' value: {exc}") from None
    _, _, mode = api.query_options(request)
    await api.consensus.barrier_read(mode)
    q = _resolve(api, ident)
    authz = request_authz(request)
    if api.acl_on and q.token:
        authz = await api.acl.resolve(q.token)  # the query's own token filters what it finds
    # ``_agent``: the agent the request came in through (a client agent forwarding it names itself), as
    # Consul's Execute uses the QuerySource the client agent fills in.
    agent_node = request.headers.get(AGENT_NODE_HEADER, "").strip() or api.agent.node_name
    near = request.query.get("near", "") or q.service.near
    source_ip = _source_ip(request) if near == IP_NEAR else ""
    dc = api.config.datacenter

    def run(store: StateStore, ws: WatchSet) -> ReadResult:
        ws.saw(("prepared_queries",), store.table_index.get("prepared_queries", 0))
        svc = q.service
        connect = svc.connect or force_connect
        found = [] if svc.peer else store.service_instances(svc.service, connect, ws)
        instances = [Instance(n, s, tuple(store.checks_for_instance(n.node, s.id))) for n, s in found]
        chosen = select(svc, instances)
        if authz is not None:
            kept = [i for i in chosen if authz.service_read(i.service.service) and authz.node_read(i.node.node)]
            if len(kept) != len(chosen):
                mark_filtered(request)
            chosen = kept
        where = near
        if where == AGENT_NEAR:
            where = agent_node
        elif where == IP_NEAR:
            where = _node_at(store, source_ip)
        chosen = order(chosen, where, random.SystemRandom(), _distances(store))
        if limit > 0:
            chosen = chosen[:limit]
        datacenter, peer_name, failovers = ("", svc.peer, 0) if svc.peer else (dc, "", 0)
        if not chosen:
            # Consul's queryFailover: only this datacenter is known, so a listed datacenter is skipped; a
            # peer is tried (and, with no peerings, has nothing).
            for target in failover_targets(svc, ()):
                failovers += 1
                datacenter, peer_name = ("", target.peer) if target.peer else (target.datacenter, "")
        out = {
            "Service": svc.service,
            "Nodes": [{"Node": views.node_json(i.node), "Service": views.service_json(i.service),
                       "Checks": [views.check_json(c) for c in i.checks]} for i in chosen],
            "DNS": {"TTL": q.dns_ttl},
            "Datacenter": datacenter,
            "PeerName": peer_name,
            "Failovers": failovers,
            **_meta(api, mode),
        }  # fmt: skip
        return ReadResult(lambda: out)

    return await api.read(request, run, cacheable=False, blocking=False)


def _distances(store: StateStore) -> Distance:
    """Estimated RTT between two nodes from the coordinates table (None when either has no coordinate in
    the segment they share): what ``order`` sorts an execution's answer by when it has a ``Near``."""
    lookup = store.coordinate_lookup()

    def distance(a: str, b: str) -> float | None:
        d = distance_between(lookup(a), lookup(b))
        return None if math.isinf(d) else d

    return distance


def _node_at(store: StateStore, ip: str) -> str:
    """The node whose address is ``ip`` ("" when none: no sorting), for ``near=_ip``."""
    try:
        want = ipaddress.ip_address(ip)
    except ValueError:
        return ""
    for name in sorted(store.nodes):
        try:
            if ipaddress.ip_address(store.nodes[name].address) == want:
                return name
        except ValueError:
            continue
    return ""


ROUTES: tuple[Route, ...] = (
    route("POST", "/v1/query", create, "write", "query", "each",
          "Create a prepared query (query:write on its Name when it has one or is a template)"),
    route("GET", "/v1/query", list_queries, "read", "query", "each",
          "List prepared queries (filtered: query:read on each Name; tokens shown to acl:write only)"),
    route("GET", "/v1/query/", get, "read", "query", "each",
          "Read a prepared query by ID; <id-or-name>/execute runs one (instances filtered by the query's token, "
          "else the caller's), <id-or-name>/explain shows it rendered (query:read on its Name)"),
    route("PUT", "/v1/query/", update, "write", "query", "each",
          "Replace a prepared query (query:write on the old and the new Name)"),
    route("DELETE", "/v1/query/", delete, "write", "query", "each",
          "Delete a prepared query (query:write on its Name)"),
)
