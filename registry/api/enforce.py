"""ACL enforcement of the HTTP API, driven by the route table.

``Api.dispatch`` asks ``authorize`` before a handler runs: the request's token is resolved to an
``Authorizer`` through the agent's ``TokenResolver`` and the route's declaration is checked -- its
resource and access level against the name the declaration says where to find (the path, the object an ID
in the path names, a query parameter, a body field, this agent's node). Routes declared ``each`` leave the
decision to the handler, which filters lists item by item (``filter_list``, ``mark_filtered``) or checks a
batch operation by operation, as Consul's endpoints do with ``filterACL`` and ``kvsPreApply``.

The token comes from where Consul's agent/http.go ``parseTokenInternal`` takes it: ``?token=`` first, then
``X-Consul-Token``, then ``Authorization: Bearer <secret>`` (scheme case-insensitive); with none of them,
the agent's ``acl.tokens.default``, else the anonymous token.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

from registry.acl.authorizer import Authorizer
from registry.acl.errors import PermissionDenied
from registry.api.decode import depth_error
from registry.api.routing import Route

if TYPE_CHECKING:
    from registry.api.http import Api

__all__ = [
    "AUTHZ",
    "FILTERED_HEADER",
    "authorize",
    "body_names",
    "filter_list",
    "mark_filtered",
    "request_authz",
    "request_token",
]

T = TypeVar("T")

# What dispatch leaves on the request: its authorizer, whether a token was presented, whether the answer
# was filtered, the body read to find a name, and the route and suffix the request was checked against.
AUTHZ = web.RequestKey("authz", Authorizer)
PRESENTED = web.RequestKey("acl_token", bool)
FILTERED = web.RequestKey("acl_filtered", bool)
BODY = web.RequestKey("body", bytes)
ROUTE: web.RequestKey[tuple[Route, str]] = web.RequestKey("route", tuple)
FILTERED_HEADER = "X-Consul-Results-Filtered-By-ACLs"


def request_token(request: web.Request) -> str:
    """The secret the request presents ("" for none), in Consul's precedence: ``?token=``, then
    ``X-Consul-Token``, then ``Authorization: Bearer`` (agent/http.go ``parseTokenInternal``)."""
    if "token=" in request.query_string:
        token = request.query.get("token", "")
        if token:
            return token
    headers = request.headers
    token = headers.get("X-Consul-Token", "")
    if token:
        return token
    auth = headers.get("Authorization", "")
    if auth:
        parts = auth.split(" ")
        if len(parts) > 1 and parts[0].lower() == "bearer":
            return " ".join(parts[1:]).strip()
    return ""


def request_secret(api: Api, request: web.Request) -> str:
    """The secret a request acts with, as Consul's ``parseToken`` finds it: the one it presents, else the
    agent's default token ("" is the anonymous token)."""
    return request_token(request) or api.acl.default_secret()


def request_authz(request: web.Request) -> Authorizer | None:
    """The request's authorizer, set by dispatch; None when ACLs are off (everything allowed)."""
    return request.get(AUTHZ)


def mark_filtered(request: web.Request) -> None:
    """Something was dropped from this request's answer because its token may not see it."""
    request[FILTERED] = True


def filter_list(request: web.Request, items: list[T], allowed: Callable[[T], bool]) -> list[T]:
    """The items the token may see, in order; marks the request as filtered when any was dropped
    (Consul's ``filterACLWithAuthorizer`` and ``ResultsFilteredByACLs``)."""
    kept = [item for item in items if allowed(item)]
    if len(kept) != len(items):
        mark_filtered(request)
    return kept


def body_names(body: bytes, field: str) -> list[str] | None:
    """Every value the JSON body gives the (dotted, case-insensitive) field: Go's decoder matches field
    names without regard to case, so all spellings present are checked, never just one of them. None
    when the body does not decode to an object (the handler answers the decode error)."""
    if depth_error(body) is not None:
        return None  # nested past the limit: the handler's decoder answers its 400
    try:
        doc: Any = json.loads(body) if body.strip() else {}
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    values: list[Any] = [doc]
    for part in field.split("."):
        want = part.lower()
        nxt: list[Any] = []
        for v in values:
            if isinstance(v, dict):
                nxt.extend(val for key, val in v.items() if isinstance(key, str) and key.lower() == want)
            elif v is not None:
                return None
        values = nxt
    return [v for v in values if isinstance(v, str) and v]


async def authorize(api: Api, request: web.Request, route: Route, suffix: str, authz: Authorizer) -> None:
    """Check the route's declaration against the request before its handler runs; raise Consul's
    ``PermissionDenied`` when the token lacks it. ``each`` routes decide in their handler."""
    source = route.name
    if source == "none" or source == "each":
        return
    op = f"{route.resource}_{route.access}"
    if source == "unnamed":
        authz.check(op)
    elif source == "path":
        authz.check(op, _normalize(route, suffix))
    elif source == "local-node":
        authz.check(op, api.agent.node_name)
    elif source == "path-id":
        found = api.id_owner(route, suffix)
        if found is not None:  # an unknown ID: the handler answers its 404
            authz.check(*found)
    elif source.startswith("query:"):
        for value in request.query.getall(source[6:], []):
            authz.check(op, _normalize(route, value))
    elif source.startswith("body:"):
        body = await api.request_body(request)
        names = body_names(body, source[5:])
        if names is None:
            return  # not a JSON object: the handler refuses it with Consul's decode error
        if not names:
            # No name given: the handler defaults it (a session on this agent's node) or refuses it; the
            # check uses what the default would be, so a missing field never skips the rule.
            names = [api.agent.node_name if route.resource in ("node", "session", "agent") else ""]
        for name in names:
            authz.check(op, _normalize(route, name))
    else:  # pragma: no cover - Route.problems() refuses any other source at import
        raise PermissionDenied(authz.accessor_id, cause=f"route {route.path} has no enforceable ACL declaration")


def _normalize(route: Route, name: str) -> str:
    """Intention queries name a service as ``name`` or ``namespace/name``; the rule is checked against the
    name (CE has only the default namespace)."""
    if route.resource in ("intention", "service") and "/" in name and route.name.startswith("query:"):
        return name.partition("/")[2]
    return name
