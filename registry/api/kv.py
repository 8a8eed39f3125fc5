"""/v1/kv/*: the key/value store.

Values are raw bytes in PUT bodies and base64 in JSON. Every write is a command through the log; CAS is
decided by the FSM against the ModifyIndex it sees at apply time, so concurrent CAS writers cannot both win.
``?acquire=<session>`` and ``?release=<session>`` are the ``lock`` / ``unlock`` verbs, decided the same way
(and the lock-delay against the time the command carries).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from registry.api import views
from registry.api.errors import HTTPError
from registry.api.http import ReadResult, read_body
from registry.api.routing import Route, route
from registry.state.store import StateStore

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


async def get(api: Api, request: web.Request, key: str) -> web.StreamResponse:
    recurse = _flag(request, "recurse")
    keys_only = _flag(request, "keys")
    raw = _flag(request, "raw")
    if not key and not (recurse or keys_only):
        raise HTTPError(400, "Missing key name")
    if keys_only:
        sep = request.query.get("separator", request.query.get("seperator", ""))

        def run_keys(store: StateStore) -> ReadResult:
            idx, keys = store.kv_keys(key, sep)
            status = 404 if not keys and key else 200
            return ReadResult(idx, (("kvp", key),), lambda: keys, status)

        return await api.read(request, run_keys)
    if recurse:

        def run_list(store: StateStore) -> ReadResult:
            idx, entries = store.kv_list(key)
            return ReadResult(
                idx, (("kvp", key),), lambda: [views.kv_json(e) for e in entries], 404 if not entries else 200
            )

        return await api.read(request, run_list)

    def run_one(store: StateStore) -> ReadResult:
        idx, entry = store.kv_get(key)
        if entry is None:
            return ReadResult(idx, (("kv", key),), lambda: None, 404)
        return ReadResult(idx, (("kv", key),), lambda: entry)

    if raw:
        # ?raw: the value's bytes as they were stored, never interpreted by a browser.
        resp = await api.read(request, lambda s: _as_json_probe(run_one(s)), cacheable=False)
        if resp.status != 200:
            return resp
        _, entry = api.store.kv_get(key)
        value = (entry.value or b"") if entry is not None else b""
        headers = {k: v for k, v in resp.headers.items() if k.startswith("X-Consul")}
        headers.update({"Content-Type": "text/plain", "X-Content-Type-Options": "nosniff",
                        "Content-Security-Policy": "sandbox"})  # fmt: skip
        return web.Response(status=200, body=value, headers=headers)

    def run_json(store: StateStore) -> ReadResult:
        r = run_one(store)
        if r.status == 404:
            return r
        entry = r.build()
        return ReadResult(r.index, r.topics, lambda: [views.kv_json(entry)])

    return await api.read(request, run_json)


def _as_json_probe(r: ReadResult) -> ReadResult:
    return ReadResult(r.index, r.topics, lambda: None, r.status)


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
    value = await read_body(
        request,
        limit,
        too_large=f"Request body({{size}} bytes) too large, max size: {limit} bytes. See "
        "https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size.",
    )
    cmd: dict[str, Any] = {"Type": "kv", "Verb": "set", "Key": key, "Value": value or None, "Flags": flags}
    if cas is not None:
        cmd.update(Verb="cas", Index=cas)
    elif "acquire" in q:
        cmd.update(Verb="lock", Session=q.get("acquire", ""))
    elif "release" in q:
        cmd.update(Verb="unlock", Session=q.get("release", ""))
    result = await api.propose(cmd)
    return api.json(request, bool(result))


async def delete(api: Api, request: web.Request, key: str) -> web.StreamResponse:
    recurse = _flag(request, "recurse")
    cas = _uint(request, "cas")
    if recurse and cas is not None:
        raise HTTPError(400, f"Conflicting flags: {request.query_string}")
    if not key and not recurse:
        raise HTTPError(400, "Missing key name")
    if recurse:
        cmd: dict[str, Any] = {"Type": "kv", "Verb": "delete-tree", "Key": key}
    elif cas is not None:
        cmd = {"Type": "kv", "Verb": "delete-cas", "Key": key, "Index": cas}
    else:
        cmd = {"Type": "kv", "Verb": "delete", "Key": key}
    result = await api.propose(cmd)
    return api.json(request, bool(result))


ROUTES: tuple[Route, ...] = (
    route("GET", "/v1/kv/", get, "read", "key", "path", "Read a key, a prefix, or the keys under a prefix"),
    route("PUT", "/v1/kv/", put, "write", "key", "path", "Write a key (CAS, lock acquire and release)"),
    route("DELETE", "/v1/kv/", delete, "write", "key", "path", "Delete a key or a prefix"),
)
