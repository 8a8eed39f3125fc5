"""/v1/config: centralized config entries (this agent stores the ``service-intentions`` kind).

Consul's routes and words (agent/config_endpoint.go): PUT /v1/config (?cas) answers ``true``/``false``;
GET /v1/config/<kind>[/<name>] is a blocking read; DELETE /v1/config/<kind>/<name> answers ``{}``, or
``true``/``false`` with ?cas. Kinds Consul knows but this agent does not store list as empty and are
refused on write with a message naming the supported kinds; unknown kinds are a 400.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from registry import filtering
from registry.api.catalog import query_filter
from registry.api.decode import DecodeError, parse_json
from registry.api.enforce import filter_list, request_authz
from registry.api.errors import HTTPError
from registry.api.http import ReadResult
from registry.api.routing import Route, route
from registry.commands import ConfigEntryDelete, ConfigEntryUpsert
from registry.connect.state import (
    KIND_SERVICE_INTENTIONS,
    ConfigEntryError,
    get_entry,
    list_entries,
    normalize_entry,
)
from registry.state.store import StateStore, WatchSet

if TYPE_CHECKING:
    from registry.api.http import Api

# Every kind Consul's /v1/config accepts (CE and Enterprise); only SUPPORTED_KINDS are stored here.
KNOWN_KINDS = frozenset({
    "service-defaults", "proxy-defaults", "service-resolver", "service-splitter", "service-router",
    "service-intentions", "ingress-gateway", "terminating-gateway", "mesh", "exported-services",
    "api-gateway", "http-route", "tcp-route", "inline-certificate", "file-system-certificate",
    "jwt-provider", "sameness-group", "control-plane-request-limit", "bound-api-gateway",
    "registration",
})  # fmt: skip


def allowed(request: web.Request, kind: str, name: str, write: bool) -> bool:
    """A config entry's ACL rule, by kind (Consul's ``CanRead``/``CanWrite`` of each entry type):
    service-intentions need intentions read/write on the destination; proxy-defaults and mesh are
    readable by anyone and need mesh:write; the other kinds service read/write on the entry's name."""
    authz = request_authz(request)
    if authz is None:
        return True
    if kind == KIND_SERVICE_INTENTIONS:
        return authz.intention_write(name) if write else authz.intention_read(name)
    if kind in ("proxy-defaults", "mesh"):
        return authz.mesh_write() if write else True
    return authz.service_write(name) if write else authz.service_read(name)


def _check(request: web.Request, kind: str, name: str, write: bool) -> None:
    authz = request_authz(request)
    if authz is not None and not allowed(request, kind, name, write):
        if kind == KIND_SERVICE_INTENTIONS:
            authz.check("intention_write" if write else "intention_read", name)
        elif kind in ("proxy-defaults", "mesh"):
            authz.check("mesh_write")
        else:
            authz.check("service_write" if write else "service_read", name)


def _cas(request: web.Request) -> int | None:
    raw = request.query.get("cas")
    if raw is None:
        return None
    try:
        value = int(raw)
        if value < 0:
            raise ValueError
    except ValueError:
        raise HTTPError(400, f"Failed to parse cas parameter: {raw!r} is not an unsigned integer") from None
    return value


def _kind(kind: str) -> str:
    k = kind.lower()
    if k not in KNOWN_KINDS:
        raise HTTPError(400, f"invalid config entry kind: {kind}")
    return k


async def put(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    body = await api.read_body(request)
    try:
        raw = parse_json(body)
    except DecodeError as exc:
        raise HTTPError(400, f"Request decoding failed: {exc}") from None
    try:
        entry = normalize_entry(raw)
    except ConfigEntryError as exc:
        raise HTTPError(400, str(exc)) from None
    _check(request, str(entry.get("Kind", "")), str(entry.get("Name", "")), write=True)
    cas = _cas(request)
    result = await api.propose(ConfigEntryUpsert(entry, cas is not None, cas or 0))
    return api.json(request, bool(result))


async def get_or_delete(api: Api, request: web.Request, suffix: str) -> web.StreamResponse:
    parts = [p for p in suffix.split("/") if p]
    if request.method == "DELETE":
        if len(parts) != 2:
            raise HTTPError(404, "Must provide both a kind and name to delete")
        kind = _kind(parts[0])
        _check(request, kind, parts[1], write=True)
        cas = _cas(request)
        result = await api.propose(ConfigEntryDelete(kind, parts[1], cas=cas is not None, index=cas or 0))
        return api.json(request, bool(result) if cas is not None else {})
    if not parts or len(parts) > 2:
        raise HTTPError(404, "Must provide either a kind or both kind and name")
    kind = _kind(parts[0])
    if len(parts) == 1:
        flt = None
        if request.query.get("filter"):
            if kind != KIND_SERVICE_INTENTIONS:
                # Never a silent wrong answer: an unfiltered list would look like a filtered one.
                raise HTTPError(400, f"?filter is not supported on /v1/config/{kind} by Proconsul yet: "
                                     "list the entries and filter them client-side")  # fmt: skip
            flt = query_filter(api, request, filtering.SERVICE_INTENTIONS)

        def run_list(store: StateStore, ws: WatchSet) -> ReadResult:
            entries = list_entries(store, kind, ws)  # kinds this agent does not store have none
            if request_authz(request) is not None:
                entries = filter_list(request, entries, lambda e: allowed(request, kind, str(e.get("Name")), False))
            return ReadResult(lambda: flt.select(entries) if flt is not None else entries)

        return await api.read(request, run_list)
    name = parts[1]
    _check(request, kind, name, write=False)

    def run_one(store: StateStore, ws: WatchSet) -> ReadResult:
        entry = get_entry(store, kind, name, ws=ws)
        return ReadResult(lambda: entry, 200 if entry else 404)

    resp = await api.read(request, run_one)
    if resp.status == 404:
        out = api.text(404, f'Config entry not found for "{kind}" / "{name}"')
        for k, v in resp.headers.items():
            if k.startswith("X-Consul"):
                out.headers[k] = v
        return out
    return resp


ROUTES: tuple[Route, ...] = (
    route("PUT", "/v1/config", put, "write", "intention", "each",
          "Create or update a config entry (the kind's write rule on its Name)"),
    route("GET", "/v1/config/", get_or_delete, "read", "intention", "each",
          "Read one config entry (<kind>/<name>: refused without the kind's read rule) or list a kind (filtered)"),
    route("DELETE", "/v1/config/", get_or_delete, "write", "intention", "each",
          "Delete a config entry (the kind's write rule on its name)"),
)
