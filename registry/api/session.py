"""/v1/session/*: create, destroy, info, node, list, renew (Consul's agent/session_endpoint.go).

Create and destroy are commands through the log (the ID is generated here, before the log, as Consul
does, so that applying the entry is deterministic). Reads are blocking queries on the sessions table.
Renew does not write: it restarts the TTL timer on the leader (``Agent.renew_session``).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from aiohttp import web

from registry.api.decode import DecodeError, parse_json
from registry.api.enforce import filter_list, request_authz
from registry.api.errors import HTTPError
from registry.api.http import ReadResult
from registry.api.routing import Route, route
from registry.commands import SessionCreate, SessionDestroy
from registry.sessions import SessionError, build_session
from registry.state.store import StateStore, WatchSet

if TYPE_CHECKING:
    from registry.api.http import Api


def _new_id(store: StateStore) -> str:
    while True:
        sid = str(uuid.uuid4())
        if sid not in store.sessions:
            return sid


async def create(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    raw = await api.read_body(request)
    try:
        body = parse_json(raw)
    except DecodeError as exc:
        raise HTTPError(400, f"Request decode failed: {exc}") from None
    agent = api.agent
    try:
        session = build_session(body, _new_id(api.store), agent.node_name, api.config.session_ttl_min)
    except SessionError as exc:
        raise HTTPError(exc.status, exc.message) from None
    sid = await api.propose(SessionCreate(session))
    return api.json(request, {"ID": sid})


async def destroy(api: Api, request: web.Request, sid: str) -> web.StreamResponse:
    if not sid:
        raise HTTPError(400, "Missing session")
    await api.propose(SessionDestroy(sid))
    return api.json(request, True)


async def renew(api: Api, request: web.Request, sid: str) -> web.StreamResponse:
    api.query_options(request)  # Consul parses the query options here too (a bad ?index is a 400)
    if not sid:
        raise HTTPError(400, "Missing session")
    session = await api.agent.renew_session(sid)
    if session is None:
        raise HTTPError(404, f"Session id '{sid}' not found")
    return api.json(request, [session.to_json()])


async def info(api: Api, request: web.Request, sid: str) -> web.StreamResponse:
    if not sid:
        raise HTTPError(400, "Missing session")

    def run(store: StateStore, ws: WatchSet) -> ReadResult:
        _, s = store.session_get(sid, ws)
        rows = _visible(request, [s] if s is not None else [])
        return ReadResult(lambda: [r.to_json() for r in rows])

    return await api.read(request, run)


async def node(api: Api, request: web.Request, name: str) -> web.StreamResponse:
    if not name:
        raise HTTPError(400, "Missing node name")
    return await _list(api, request, name)


async def list_all(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    return await _list(api, request, None)


async def _list(api: Api, request: web.Request, node_name: str | None) -> web.StreamResponse:
    def run(store: StateStore, ws: WatchSet) -> ReadResult:
        _, rows = store.session_list(node_name, ws)
        visible = _visible(request, rows)
        return ReadResult(lambda: [s.to_json() for s in visible])

    return await api.read(request, run)


def _visible(request: web.Request, rows: list[Any]) -> list[Any]:
    """The sessions the token may ``session:read`` (on each session's node); Consul filters them."""
    authz = request_authz(request)
    if authz is None:
        return rows
    return filter_list(request, rows, lambda s: authz.session_read(s.node))


def default_node_for_forwarding(body: bytes, node_name: str) -> bytes:
    """A client agent forwards /v1/session/create to a server; the session's default node is the client's
    own, so it is written into the body first (as Consul's agent fills it before its RPC)."""
    import json

    try:
        parsed: Any = parse_json(body)
    except DecodeError:
        return body  # the server answers the decode error
    if parsed is None:
        parsed = {}
    if not isinstance(parsed, dict):
        return body
    if not any(isinstance(k, str) and k.lower() == "node" and parsed[k] for k in parsed):
        parsed = {k: v for k, v in parsed.items() if not (isinstance(k, str) and k.lower() == "node")}
        parsed["Node"] = node_name
    return json.dumps(parsed).encode()


ROUTES: tuple[Route, ...] = (
    route("PUT", "/v1/session/create", create, "write", "session", "body:Node",
          "Create a session (on this agent's node unless Node says otherwise)",
          forward_body=default_node_for_forwarding),
    route("PUT", "/v1/session/destroy/", destroy, "write", "session", "path-id", "Destroy a session"),
    route("PUT", "/v1/session/renew/", renew, "write", "session", "path-id", "Renew a session's TTL"),
    route("GET", "/v1/session/info/", info, "read", "session", "each", "One session (filtered by session:read)"),
    route("GET", "/v1/session/node/", node, "read", "session", "each",
          "The sessions of a node (filtered by session:read)"),
    route("GET", "/v1/session/list", list_all, "read", "session", "each", "All sessions"),
)
