"""/v1/event/fire/:name and /v1/event/list: user events (Consul's agent/event_endpoint.go).

Both are the agent's own, on client agents too (never forwarded to a server): firing goes through the
agent's events part, which asks a server to commit the event; the list reads this agent's buffer of the
events whose filters it passed. The list's index is Consul's: not a Raft index but the newest listed
event's ID folded to 64 bits (1 with none), and a blocking list returns as soon as that differs from
``?index`` -- the index is opaque and not ordered, so only equality means "nothing new".
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

from registry.api.enforce import filter_list, request_authz, request_secret
from registry.api.errors import HTTPError
from registry.api.routing import Route, route
from registry.consensus import RPCError
from registry.events import EventError, list_index
from registry.gocompat import DurationError, parse_duration

if TYPE_CHECKING:
    from registry.api.http import Api

PERMISSION_DENIED = "Permission denied"


async def fire(api: Api, request: web.Request, name: str) -> web.StreamResponse:
    """Consul's ``EventFire``: the payload is the body as sent (none when empty), the filters are
    ``?node``, ``?service`` and ``?tag``; the answer is the event with its new ID (``LTime`` 0)."""
    if not name:
        return api.text(400, "Missing name")
    events = api.events
    if events is None:
        return api.text(500, "this agent does not handle user events")
    q = request.query
    body = await api.read_body(request)
    try:
        event = await events.fire(name, body or None, q.get("node", ""), q.get("service", ""), q.get("tag", ""),
                                  token=request_secret(api, request))  # fmt: skip
    except EventError as exc:
        return api.text(exc.status, exc.message)
    except RPCError as exc:
        if exc.status == 403:
            return api.text(403, PERMISSION_DENIED)
        raise
    return api.json(request, event.to_json())


def _max_wait(api: Api, request: web.Request) -> float:
    """``?wait``, capped at ``max_query_time``; with none, the cap itself (Consul's EventList waits
    ``maxQueryTime`` when only ``?index`` is given)."""
    raw = request.query.get("wait")
    if not raw:
        return api.max_wait
    try:
        wait = parse_duration(raw, field="wait")
    except DurationError:
        raise HTTPError(400, "Invalid wait time") from None
    return min(wait, api.max_wait) if wait > 0 else api.max_wait


async def event_list(api: Api, request: web.Request, _: str) -> web.StreamResponse:
    """Consul's ``EventList``: this agent's recent events, ``?name`` first, then what the token may
    read (``event:read`` on each name); blocking while the index equals ``?index``."""
    events = api.events
    if events is None:
        return api.json(request, [])
    min_index = 0
    raw_index = request.query.get("index")
    if raw_index:
        try:
            min_index = int(raw_index)
            if min_index < 0:
                raise ValueError
        except ValueError:
            return api.text(400, "Invalid index")
    wait = _max_wait(api, request) if min_index else 0.0
    name = request.query.get("name", "")
    authz = request_authz(request)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        version = events.buffer.version
        listed = events.buffer.events(name)
        if authz is not None:
            listed = filter_list(request, listed, lambda e: authz.event_read(e.name))
        index = list_index(listed)
        remaining = deadline - loop.time()
        if index != min_index or remaining <= 0:
            break
        await events.wait_change(version, remaining)
    body = api.render(request, [e.to_json() for e in listed])
    return api._respond(request, 200, body, None, {"X-Consul-Index": str(index)})


ROUTES: tuple[Route, ...] = (
    route("PUT", "/v1/event/fire/", fire, "write", "event", "path",
          "Fire a user event (body: payload; ?node, ?service, ?tag: regular expressions choosing who keeps it)"),
    route("GET", "/v1/event/list", event_list, "read", "event", "each",
          "This agent's recent user events (?name); blocking on Consul's event index"),
)
