"""/v1/kv/*: the key/value store.

Values are raw bytes in PUT bodies and base64 in JSON. Every write is a command through the log; CAS is
decided by the FSM against the ModifyIndex it sees at apply time, so concurrent CAS writers cannot both win.
``?acquire=<session>`` and ``?release=<session>`` are the ``lock`` / ``unlock`` verbs, decided the same way
(and the lock-delay against the time the command carries).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from registry.api import views
from registry.api.enforce import filter_list, request_authz
from registry.api.errors import HTTPError
from registry.api.http import ReadResult
from registry.api.routing import Route, route
from registry.commands import KV, KVOp
from registry.state.store import StateStore, WatchSet

if TYPE_CHECKING:
    from registry.api.http import Api

U64 = 2**64


def _uint(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = int(raw, 10)
        if not 0 <= value < U64:
            raise ValueError
    except ValueError:
        raise HTTPError(400, f"Invalid value for ?{name}: {raw!r} is not an unsigned 64-bit integer") from None
    return value


def _flag(request: web.Request, name: str) -> bool:
    return name in request.query


def _check_read(request: web.Request, key: str) -> None:
    """key:read on one key, asked again each time a blocking read runs: a woken query re-resolves its
    token (``Api._reauthorize``), and a narrowed policy must refuse it then, not answer the key."""
    authz = request_authz(request)
    if authz is not None:
        authz.check("key_read", key)


async def get(api: Api, request: web.Request, key: str) -> web.StreamResponse:
    recurse = _flag(request, "recurse")
    keys_only = _flag(request, "keys")
    raw = _flag(request, "raw")
    if not key and not (recurse or keys_only):
        raise HTTPError(400, "Missing key name")
    if not (recurse or keys_only):
        _check_read(request, key)  # one key: refused (Consul's KVS.Get); lists are filtered
    if keys_only:
        sep = request.query.get("separator", request.query.get("seperator", ""))

        def run_keys(store: StateStore, ws: WatchSet) -> ReadResult:
            _, keys = store.kv_keys(key, sep, ws)
            authz = request_authz(request)
            if authz is not None:
                keys = filter_list(request, keys, authz.key_read)
            return ReadResult(lambda: keys, 404 if not keys and key else 200)

        return await api.read(request, run_keys)
    if recurse:

        def run_list(store: StateStore, ws: WatchSet) -> ReadResult:
            _, entries = store.kv_list(key, ws)
            authz = request_authz(request)
            if authz is not None:
                entries = filter_list(request, entries, lambda e: authz.key_read(e.key))
            return ReadResult(lambda: [views.kv_json(e) for e in entries], 404 if not entries else 200)

        return await api.read(request, run_list)

    if raw:

        def run_probe(store: StateStore, ws: WatchSet) -> ReadResult:
            _check_read(request, key)
            _, entry = store.kv_get(key, ws)
            return ReadResult(lambda: None, 404 if entry is None else 200)

        # ?raw: the value's bytes as they were stored, never interpreted by a browser.
        resp = await api.read(request, run_probe, cacheable=False)
        if resp.status != 200:
            return resp
        _, entry = api.store.kv_get(key)
        value = (entry.value or b"") if entry is not None else b""
        headers = {k: v for k, v in resp.headers.items() if k.startswith("X-Consul")}
        headers.update({"Content-Type": "text/plain", "X-Content-Type-Options": "nosniff",
                        "Content-Security-Policy": "sandbox"})  # fmt: skip
        return web.Response(status=200, body=value, headers=headers)

    def run_json(store: StateStore, ws: WatchSet) -> ReadResult:
        _check_read(request, key)
        _, entry = store.kv_get(key, ws)
        if entry is None:
            return ReadResult(lambda: None, 404)
        return ReadResult(lambda: [views.kv_json(entry)])

    return await api.read(request, run_json)


async def put(api: Api, request: web.Request, key: str) -> web.StreamResponse:
    if not key:
        raise HTTPError(400, "Missing key name")
    q = request.query
    exclusive = [name for name in ("cas", "acquire", "release") if name in q]
    if len(exclusive) > 1:
        raise HTTPError(400, f"Conflicting flags: {request.query_string}")
    flags = _uint(request, "flags") or 0
    cas = _uint(request, "cas")
    limit = api.config.kv_max_value_size
    value = await api.read_body(
        request,
        limit,
        too_large=f"Request body({{size}} bytes) too large, max size: {limit} bytes. See "
        "https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size.",
    )
    op = KVOp("set", key, value or None, flags)
    if cas is not None:
        op = KVOp("cas", key, value or None, flags, index=cas)
    elif "acquire" in q:
        op = KVOp("lock", key, value or None, flags, session=q.get("acquire", ""))
    elif "release" in q:
        op = KVOp("unlock", key, value or None, flags, session=q.get("release", ""))
    result = await api.propose(KV(op))
    return api.json(request, bool(result))


async def delete(api: Api, request: web.Request, key: str) -> web.StreamResponse:
    recurse = _flag(request, "recurse")
    cas = _uint(request, "cas")
    if recurse and cas is not None:
        raise HTTPError(400, f"Conflicting flags: {request.query_string}")
    if not key and not recurse:
        raise HTTPError(400, "Missing key name")
    if recurse:
        authz = request_authz(request)
        if authz is not None:
            # Every key under the prefix, not just the prefix: one deny below refuses the whole delete
            # (Consul's KeyWritePrefix, CVE-2019-12291).
            authz.check("key_write_prefix", key)
        op = KVOp("delete-tree", key)
    elif cas is not None:
        op = KVOp("delete-cas", key, index=cas)
    else:
        op = KVOp("delete", key)
    result = await api.propose(KV(op))
    return api.json(request, bool(result))


ROUTES: tuple[Route, ...] = (
    route("GET", "/v1/kv/", get, "read", "key", "each",
          "Read a key (key:read), or a prefix or the keys under it (filtered by key:read)"),
    route("PUT", "/v1/kv/", put, "write", "key", "path", "Write a key (CAS, lock acquire and release)"),
    route("DELETE", "/v1/kv/", delete, "write", "key", "path",
          "Delete a key, or a prefix (?recurse: key:write on every key under it)"),
)
