"""/v1/config: centralized config entries.

This agent stores ``service-intentions`` and the service mesh kinds of ``registry.configentry``
(``service-defaults``, ``proxy-defaults``, ``service-resolver``, ``service-splitter``, ``service-router``).

Consul's routes and words (agent/config_endpoint.go): PUT /v1/config (?cas) answers ``true``/``false``;
GET /v1/config/<kind>[/<name>] is a blocking read; DELETE /v1/config/<kind>/<name> answers ``{}``, or
``true``/``false`` with ?cas. Kinds Consul knows but this agent does not store list as empty and are
refused on write with a message naming the supported kinds; unknown kinds are a 400. Validation errors
(an entry's own, and a discovery chain the write would break) are 400s with Consul's text, where Consul
answers them with a 500.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from registry import configentry, filtering
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


def allowed(request: web.Request, kind: str, name: str, write: bool, entry: Mapping[str, Any] | None = None) -> bool:
    """A config entry's ACL rule, by kind (Consul's ``CanRead``/``CanWrite`` of each entry type):
    service-intentions need intentions read/write on the destination; proxy-defaults and mesh are
    readable by anyone and need mesh:write; the other kinds service read/write on the entry's name, and
    writing a router, splitter or resolver also service:read on every service it sends traffic to
    (``canWriteDiscoveryChain``: you may only redirect your own service's traffic to what you can read)."""
    return _denied(request, kind, name, write, entry) is None


def _denied(request: web.Request, kind: str, name: str, write: bool,
            entry: Mapping[str, Any] | None) -> tuple[str, str | None] | None:  # fmt: skip
    """The (authorizer operation, name) that refuses the request, or None when it is allowed."""
    authz = request_authz(request)
    if authz is None:
        return None
    if kind == KIND_SERVICE_INTENTIONS:
        if write:
            return None if authz.intention_write(name) else ("intention_write", name)
        return None if authz.intention_read(name) else ("intention_read", name)
    if kind in ("proxy-defaults", "mesh"):
        if not write:
            return None
        return None if authz.mesh_write() else ("mesh_write", None)
    if not write:
        return None if authz.service_read(name) else ("service_read", name)
    if not authz.service_write(name):
        return ("service_write", name)
    if entry is not None and kind in configentry.CHAIN_KINDS:
        for other in configentry.related_services(entry):
            if not authz.service_read(other):
                return ("service_read", other)
    return None


def _check(request: web.Request, kind: str, name: str, write: bool, entry: Mapping[str, Any] | None = None) -> None:
    denied = _denied(request, kind, name, write, entry)
    authz = request_authz(request)
    if denied is not None and authz is not None:
        authz.check(denied[0], denied[1])


def _cas(request: web.Request) -> int | None:
    raw = request.query.get("cas")
    if raw is None:
        return None
    try:
        value = int(raw)
        if not 0 <= value < 2**64:  # strconv.ParseUint(cas, 10, 64)
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
    _check(request, str(entry.get("Kind", "")), str(entry.get("Name", "")), write=True, entry=entry)
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
            # Consul's ConfigEntry.List filters service-defaults only and refuses the filter for any
            # other kind (with a 500, answered 400 here); service-intentions is filtered here as well.
            schema = {configentry.SERVICE_DEFAULTS: filtering.SERVICE_DEFAULTS,
                      KIND_SERVICE_INTENTIONS: filtering.SERVICE_INTENTIONS}.get(kind)  # fmt: skip
            if schema is None:
                raise HTTPError(400, f"filtering not supported for config entry kind={kind}")
            flt = query_filter(api, request, schema)

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
    route("PUT", "/v1/config", put, "write", "service", "each",
          "Create or update a config entry (the kind's write rule on its Name: service:write, plus service:read "
          "on the services a router/splitter/resolver sends to; intentions:write; mesh:write for proxy-defaults)"),
    route("GET", "/v1/config/", get_or_delete, "read", "service", "each",
          "Read one config entry (<kind>/<name>: refused without the kind's read rule) or list a kind (filtered)"),
    route("DELETE", "/v1/config/", get_or_delete, "write", "service", "each",
          "Delete a config entry (the kind's write rule on its name)"),
)
