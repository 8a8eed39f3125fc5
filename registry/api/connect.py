"""Connect endpoints: CA roots and configuration, the agent's leaf certificates, authorize, intentions.

Shapes, status codes and error texts follow Consul (agent/connect_ca_endpoint.go,
agent/agent_endpoint.go, agent/intentions_endpoint.go). Writes are commands through the log; reads of
CA state and intentions are blocking queries on their tables. The root's private key never reaches
this module: every body is built from ``ca.provider``'s API functions, which do not read it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ca import provider
from registry import filtering
from registry.api.catalog import query_filter
from registry.api.decode import DecodeError, parse_json
from registry.api.enforce import filter_list, request_authz, request_token
from registry.api.errors import HTTPError
from registry.api.http import ReadResult
from registry.api.routing import Route, route
from registry.commands import IntentionDelete, IntentionDeleteExact, IntentionWrite
from registry.connect.signer import RateLimited, SignError
from registry.connect.state import find_legacy
from registry.gocompat import go_parse_bool
from registry.intentions import Intention, IntentionError, decide, match, parse_service_name
from registry.state.store import StateStore, WatchSet

if TYPE_CHECKING:
    from registry.api.http import Api
    from registry.connect.service import Connect

NOT_ENABLED = "Connect must be enabled in order to use this endpoint"
INTENTION_NOT_FOUND = "Intention not found"


def _connect(api: Api) -> Connect:
    connect = api.connect
    if connect is None or not connect.enabled:
        raise HTTPError(400, NOT_ENABLED)
    return connect


async def _json_body(api: Api, request: web.Request) -> Any:
    body = await api.read_body(request)
    try:
        return parse_json(body)
    except DecodeError as exc:
        raise HTTPError(400, f"Request decode failed: {exc}") from exc


def _ci(data: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """Case-insensitive field lookup, as Go's JSON decoder matches struct fields."""
    want = key.lower()
    for k, v in data.items():
        if str(k).lower() == want:
            return v
    return default


def _with_headers(resp: web.StreamResponse, source: web.StreamResponse) -> web.StreamResponse:
    for k, v in source.headers.items():
        if k.startswith("X-Consul"):
            resp.headers[k] = v
    return resp


# ---------------------------------------------------------------------- CA


async def ca_roots(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    connect = _connect(api)
    want_pem = _go_bool(request.query.get("pem", ""))

    def run(store: StateStore, ws: WatchSet) -> ReadResult:
        state = connect.views.ca(store, ws)
        if state is None:
            body: dict[str, Any] = {"ActiveRootID": "", "TrustDomain": "", "Roots": []}
            return ReadResult(lambda: body)
        return ReadResult(lambda: provider.roots_response(state))

    if not want_pem:
        return await api.read(request, run)
    resp = await api.read(request, run, cacheable=False)
    state = connect.ca_state()
    pem = provider.roots_pem(state) if state is not None else ""
    out = web.Response(status=200, body=pem.encode(), headers={
        "Content-Type": "application/pem-certificate-chain", "X-Consul-Default-ACL-Policy": api.acl_policy})  # fmt: skip
    return _with_headers(out, resp)


def _go_bool(value: str) -> bool:
    """Consul reads ?pem with Go's strconv.ParseBool; absent or empty means false."""
    if value == "":
        return False
    try:
        return go_parse_bool(value)
    except ValueError:
        raise HTTPError(400, "The 'pem' query parameter must be a boolean value") from None


async def ca_configuration_get(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    connect = _connect(api)

    def run(store: StateStore, ws: WatchSet) -> ReadResult:
        state = connect.views.ca(store, ws)
        if state is None:
            raise HTTPError(500, "CA has not finished initializing")
        return ReadResult(lambda: provider.ca_configuration_response(state))

    return await api.read(request, run)


async def ca_configuration_put(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    connect = _connect(api)
    body = await _json_body(api, request)
    if body is None:
        raise HTTPError(400, "Request decode failed: EOF")
    try:
        config = provider.parse_ca_configuration(body)
    except provider.CAConfigError as exc:
        raise HTTPError(400, str(exc)) from None
    await connect.manager.set_config(config)  # a CommandError answers with its status and text
    return web.Response(status=200, headers={"X-Consul-Default-ACL-Policy": api.acl_policy})


# ---------------------------------------------------------------------- agent: leaf and authorize


async def agent_leaf(api: Api, request: web.Request, service: str) -> web.StreamResponse:
    connect = _connect(api)
    if not service:
        raise HTTPError(400, "Missing service name")
    min_index, wait, _ = api.query_options(request)
    try:
        entry, hit = await connect.leaf.get(service, min_index=min_index, wait=wait)
    except RateLimited as exc:
        raise HTTPError(429, exc.message, {"Retry-After": exc.retry_after_header}) from None
    except SignError as exc:
        raise HTTPError(exc.status, exc.message) from None
    body = provider.issued_cert_response(entry.result, private_key_pem=entry.key_pem, index=entry.index)
    headers = {"X-Consul-Index": str(entry.index), "X-Cache": "HIT" if hit else "MISS"}
    return api._respond(request, 200, render_flat(api, request, body), None, headers)


def render_flat(api: Api, request: web.Request, obj: dict[str, Any]) -> bytes:
    """``api.render`` for a flat object of scalars, byte for byte, without the pure-Python encoder
    ``json`` falls back to when indenting, or ``json.dumps``'s set-up per value (both were a third of
    the HTTP cost of a new leaf)."""
    enc = encode_basestring_ascii
    dumps = json.dumps
    pairs = [(enc(k), enc(v) if type(v) is str else dumps(v)) for k, v in obj.items()]
    if api.pretty_default or "pretty" in request.query:
        if not pairs:
            return b"{}\n"
        return ("{\n" + ",\n".join([f"    {k}: {v}" for k, v in pairs]) + "\n}\n").encode()
    return ("{" + ",".join([f"{k}:{v}" for k, v in pairs]) + "}").encode()


async def agent_authorize(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    connect = _connect(api)
    body = await _json_body(api, request)
    if not isinstance(body, Mapping):
        raise HTTPError(400, "Request decode failed: body must be a JSON object")
    # The caller's token rides with a client agent's ConnectCA.Authorize: the server checks it too.
    token = (request_token(request) or api.acl.default_secret()) if api.acl_on else ""
    status, out = await connect.authorize(_ci(body, "Target", ""), _ci(body, "ClientCertURI", ""), token)
    if status != 200:
        raise HTTPError(status, str(out))
    return api.json(request, out)


async def agent_roots(api: Api, request: web.Request, suffix: str) -> web.StreamResponse:
    """/v1/agent/connect/ca/roots: the agent's copy of the roots. A server reads its replica (the same
    blocking query as /v1/connect/ca/roots); a client agent answers from the roots it follows."""
    connect = _connect(api)
    remote = connect.remote
    if remote is None:
        return await ca_roots(api, request, suffix)
    min_index, wait, _ = api.query_options(request)
    if min_index and remote.index <= min_index:
        remote.changed.clear()
        try:
            async with asyncio.timeout(wait):
                while remote.index <= min_index:
                    await remote.changed.wait()
                    remote.changed.clear()
        except TimeoutError:
            pass
    if not remote.roots["Roots"]:
        raise HTTPError(500, "CA has not finished initializing")
    headers = {"X-Consul-Index": str(max(remote.index, 1))}
    return api._respond(request, 200, api.render(request, remote.roots), None, headers)


# ---------------------------------------------------------------------- intentions


def _now() -> str:
    from registry.connect.signer import utcnow

    return provider.format_go_time(utcnow())


def _names(request: web.Request, *params: str) -> list[str]:
    out = []
    for p in params:
        values = request.query.getall(p, [])
        if len(values) != 1:
            raise HTTPError(400, f"required query parameter '{p}' not set")
        out.append(values[0])
    return out


def _service(value: str, what: str, *, wildcard: bool = True) -> tuple[str, str]:
    try:
        name = parse_service_name(value, allow_wildcard=wildcard)
    except IntentionError as exc:
        raise HTTPError(400, f"{what} {value!r} is invalid: {exc}") from None
    return name.namespace, name.name


async def intentions_list(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    connect = _connect(api)
    flt = query_filter(api, request, filtering.INTENTION)

    def run(store: StateStore, ws: WatchSet) -> ReadResult:
        ixns = connect.views.intention_list(store, ws)
        authz = request_authz(request)
        if authz is not None:
            ixns = filter_list(request, list(ixns), lambda i: authz.intention_read(i.destination_name))

        def build() -> Any:
            out = [i.to_api_dict() for i in ixns]
            return flt.select(out) if flt is not None else out

        return ReadResult(build)

    return await api.read(request, run)


def _intention_from_body(body: Any) -> Intention:
    if not isinstance(body, Mapping):
        raise HTTPError(400, "Request decode failed: body must be a JSON object")
    try:
        return Intention.from_api_dict(body)
    except IntentionError as exc:
        raise HTTPError(400, f"Invalid Intention: {exc}") from None


async def intentions_create(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    _connect(api)
    body = await _json_body(api, request)
    ixn = _intention_from_body(body)
    if ixn.id:
        raise HTTPError(400, "ID must be empty when creating a new intention")
    ixn_id = str(uuid.uuid4())
    await api.propose(IntentionWrite("create", ixn, _now(), ixn_id))
    return api.json(request, {"ID": ixn_id})


def _exact_pair(request: web.Request) -> tuple[tuple[str, str], tuple[str, str]]:
    source, destination = _names(request, "source", "destination")
    return _service(source, "source"), _service(destination, "destination")


def _find_exact(ixns: list[Intention], src: tuple[str, str], dst: tuple[str, str]) -> Intention | None:
    key = (src[0].lower(), src[1].lower(), dst[0].lower(), dst[1].lower())
    return next((i for i in ixns if i.match_key() == key), None)


async def intention_exact_get(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    connect = _connect(api)
    src, dst = _exact_pair(request)

    def run(store: StateStore, ws: WatchSet) -> ReadResult:
        found = _find_exact(connect.views.intention_list(store, ws), src, dst)
        if found is None:
            return ReadResult(lambda: None, 404)
        return ReadResult(found.to_api_dict)

    resp = await api.read(request, run)
    if resp.status == 404:
        return _with_headers(api.text(404, INTENTION_NOT_FOUND), resp)
    return resp


async def intention_exact_put(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    _connect(api)
    src, dst = _exact_pair(request)
    body = await _json_body(api, request)
    if not isinstance(body, Mapping):
        raise HTTPError(400, "Request decode failed: body must be a JSON object")
    fields = {str(k).lower(): v for k, v in body.items()}
    for forbidden in ("id", "createdat", "updatedat", "meta"):
        value = fields.get(forbidden)
        if value not in (None, "", {}, "0001-01-01T00:00:00Z"):
            raise HTTPError(400, f"{forbidden} field is not supported with the exact intention endpoint")
    merged = dict(body)
    merged.update({"SourceNS": src[0], "SourceName": src[1], "DestinationNS": dst[0], "DestinationName": dst[1]})
    for k in list(merged):
        if str(k).lower() in ("sourcens", "sourcename", "destinationns", "destinationname") and k not in (
            "SourceNS", "SourceName", "DestinationNS", "DestinationName"
        ):
            del merged[k]  # the query string names the pair; a body spelling cannot override it
    ixn = _intention_from_body(merged)
    await api.propose(IntentionWrite("upsert", ixn, _now()))
    return api.json(request, True)


async def intention_exact_delete(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    _connect(api)
    src, dst = _exact_pair(request)
    await api.propose(IntentionDeleteExact(src[0], src[1], dst[0], dst[1], _now()))
    return api.json(request, True)


async def intention_match(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    connect = _connect(api)
    by_values = request.query.getall("by", [])
    if len(by_values) != 1:
        raise HTTPError(400, "required query parameter 'by' not set")
    by = by_values[0]
    if by not in ("source", "destination"):
        raise HTTPError(400, "'by' parameter must be one of 'source' or 'destination'")
    names = request.query.getall("name", [])
    if not names:
        raise HTTPError(400, "required query parameter 'name' not set")
    for n in names:
        _service(n, "name")

    def run(store: StateStore, ws: WatchSet) -> ReadResult:
        index = connect.views.intentions(store, ws)

        def build() -> dict[str, Any]:
            return {n: [i.to_api_dict() for i in match(index, by, n)] for n in names}  # type: ignore[arg-type]

        return ReadResult(build)

    return await api.read(request, run)


async def intention_check(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    connect = _connect(api)
    source, destination = _names(request, "source", "destination")
    source_type = request.query.get("source-type", "consul")
    if source_type != "consul":
        raise HTTPError(400, f"unsupported source-type {source_type!r}: only 'consul' is supported")
    src = _service(source, "source", wildcard=False)
    dst = _service(destination, "destination", wildcard=False)

    def run(store: StateStore, ws: WatchSet) -> ReadResult:
        allow, reason = connect.default_allow()
        decision = decide(connect.views.intentions(store, ws), "/".join(src), "/".join(dst), allow,
                          default_reason=reason)  # fmt: skip
        return ReadResult(lambda: {"Allowed": decision.allowed})

    return await api.read(request, run, cacheable=False)


async def intention_by_id(api: Api, request: web.Request, ixn_id: str) -> web.StreamResponse:
    connect = _connect(api)
    if not ixn_id or "/" in ixn_id:
        raise HTTPError(404, INTENTION_NOT_FOUND)
    if request.method == "GET":

        def run(store: StateStore, ws: WatchSet) -> ReadResult:
            found = next((i for i in connect.views.intention_list(store, ws) if i.id == ixn_id), None)
            if found is None:
                return ReadResult(lambda: None, 404)
            return ReadResult(found.to_api_dict)

        resp = await api.read(request, run)
        if resp.status == 404:
            return _with_headers(api.text(404, INTENTION_NOT_FOUND), resp)
        return resp
    if find_legacy(api.store, ixn_id) is None:
        raise HTTPError(404, INTENTION_NOT_FOUND)
    if request.method == "DELETE":
        await api.propose(IntentionDelete(ixn_id, _now()))
        return api.json(request, True)
    body = await _json_body(api, request)
    if isinstance(body, Mapping):
        body = {k: v for k, v in body.items() if str(k).lower() != "id"}  # the path names the intention
    ixn = _intention_from_body(body)
    authz = request_authz(request)
    if authz is not None:
        # The route checked the destination it has now; moving it needs write on the new one too.
        authz.check("intention_write", ixn.destination_name)
    await api.propose(IntentionWrite("update", ixn, _now(), ixn_id))
    return web.Response(status=200, headers={"X-Consul-Default-ACL-Policy": api.acl_policy})


ROUTES: tuple[Route, ...] = (
    route("GET", "/v1/connect/ca/roots", ca_roots, "read", "none", "none", "The Connect CA's trusted roots"),
    route("GET", "/v1/connect/ca/configuration", ca_configuration_get, "write", "operator", "unnamed",
          "The Connect CA's configuration (operator:write, as Consul since 1.8.6)"),
    route("PUT", "/v1/connect/ca/configuration", ca_configuration_put, "write", "operator", "unnamed",
          "Change the Connect CA's configuration (may rotate the root)"),
    route("GET", "/v1/agent/connect/ca/roots", agent_roots, "read", "none", "none",
          "The CA roots, from this agent's cache"),
    route("GET", "/v1/agent/connect/ca/leaf/", agent_leaf, "write", "service", "path",
          "A leaf certificate for a service, from this agent's cache"),
    route("POST", "/v1/agent/connect/authorize", agent_authorize, "write", "service", "body:Target",
          "Whether a client certificate may connect to a target service"),
    route("GET", "/v1/connect/intentions", intentions_list, "read", "intention", "each",
          "All intentions (filtered by intentions read on each destination)"),
    route("POST", "/v1/connect/intentions", intentions_create, "write", "intention", "body:DestinationName",
          "Create an intention (legacy, by ID)"),
    route("GET", "/v1/connect/intentions/exact", intention_exact_get, "read", "intention", "query:destination",
          "One intention, by source and destination"),
    route("PUT", "/v1/connect/intentions/exact", intention_exact_put, "write", "intention", "query:destination",
          "Create or update an intention, by source and destination"),
    route("DELETE", "/v1/connect/intentions/exact", intention_exact_delete, "write", "intention",
          "query:destination", "Delete an intention, by source and destination"),
    route("GET", "/v1/connect/intentions/match", intention_match, "read", "intention", "query:name",
          "The intentions that match a source or destination, by precedence"),
    route("GET", "/v1/connect/intentions/check", intention_check, "read", "service", "query:destination",
          "Whether a source may connect to a destination (service:read on it, as Consul's Intention.Check)"),
    route("GET", "/v1/connect/intentions/", intention_by_id, "read", "intention", "path-id",
          "One intention, by ID (legacy)"),
    route("PUT", "/v1/connect/intentions/", intention_by_id, "write", "intention", "path-id",
          "Update an intention, by ID (legacy)"),
    route("DELETE", "/v1/connect/intentions/", intention_by_id, "write", "intention", "path-id",
          "Delete an intention, by ID (legacy)"),
)
