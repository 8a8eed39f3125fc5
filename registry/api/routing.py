"""The HTTP route table's vocabulary, and the router built from it.

Every route is declared once, as a ``Route``: its method(s), its path (exact, or a prefix ending in "/"
whose suffix the handler gets), its handler, and the ACL rule it needs in Consul's terms -- the resource
(``agent``, ``node``, ``service``, ``key``, ``session``, ``operator``, ``intention``, ...), the access level
(``read`` or ``write``) and where the resource's name comes from. The modules under ``registry/api`` each
export a ``ROUTES`` tuple; ``registry.api.routes`` collects them, the ``Router`` is built from that one
table, and the route list in ``docs/http-api.md`` is rendered from it.

The access level is the ACL rule the route needs, not the HTTP verb: Consul asks ``service:write`` for a
GET of a leaf certificate and a management token (``acl:write``) for a GET of a snapshot.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

from aiohttp import web

if TYPE_CHECKING:
    from registry.api.http import Api

Handler = Callable[["Api", web.Request, str], Awaitable[web.StreamResponse]]

ALL_METHODS = ("GET", "PUT", "POST", "DELETE", "HEAD", "PATCH")

Access = Literal["read", "write"]
# Consul's ACL resources (its ACL rules reference), plus "none" for routes Consul serves without a rule
# (status, datacenters, CA roots).
Resource = Literal["agent", "node", "service", "key", "session", "event", "query", "operator", "acl", "mesh",
                   "intention", "keyring", "peering", "none"]  # fmt: skip
RESOURCES: tuple[str, ...] = get_args(Resource)
# Resources Consul grants as one rule with no name (``operator = "write"``).
UNNAMED_RESOURCES = frozenset({"operator", "acl", "mesh", "keyring", "peering"})

# Where the name the rule is checked against comes from:
#   path        the suffix of a prefix route is the name (/v1/kv/<key>, /v1/catalog/service/<name>)
#   path-id     the suffix is an ID; the name is that of the object it identifies (a service, check,
#               session or intention ID)
#   query:<p>   the query parameter <p> (?destination= on /v1/connect/intentions/exact)
#   body:<F>    the field <F> of the JSON body (Name of a service registration)
#   local-node  this agent's own node name
#   each        every item the route touches is checked by its own name: lists are filtered, batches
#               (a transaction) are checked operation by operation
#   unnamed     the resource has no names (operator, acl, mesh, keyring, peering)
#   none        no rule at all (resource "none")
NAME_SOURCE = re.compile(r"^(path|path-id|local-node|each|unnamed|none|query:[a-z_-]+|body:[A-Za-z.]+)$")


class RouteError(ValueError):
    """A route declared incompletely or twice: raised when the table is built, at import."""


@dataclass(frozen=True, slots=True)
class Route:
    methods: tuple[str, ...]
    path: str
    handler: Handler
    access: Access
    resource: Resource
    name: str
    summary: str
    # How a client agent rewrites the body before forwarding the request to a server, given the body and
    # this agent's node name (Consul's agent fills such defaults before its RPC); None: sent as it came.
    forward_body: Callable[[bytes, str], bytes] | None = None

    @property
    def is_prefix(self) -> bool:
        return self.path.endswith("/")

    @property
    def takes_dc(self) -> bool:
        """Whether the route answers for a datacenter named by ``?dc`` (Consul's parseDC): every route but
        the agent's own endpoints, which describe the agent serving them whatever ``?dc`` says, and the list
        of datacenters."""
        return not self.path.startswith("/v1/agent/") and self.path != "/v1/catalog/datacenters"

    def problems(self) -> list[str]:
        """What is missing or inconsistent in this declaration (empty when it is complete)."""
        where = f"{','.join(self.methods)} {self.path}"
        out = []
        if not self.methods or any(m not in ALL_METHODS for m in self.methods):
            out.append(f"{where}: methods must be among {ALL_METHODS}")
        if not self.path.startswith("/v1/"):
            out.append(f"{where}: path must start with /v1/")
        if self.access not in ("read", "write"):
            out.append(f"{where}: access must be read or write, not {self.access!r}")
        if self.resource not in RESOURCES:
            out.append(f"{where}: unknown ACL resource {self.resource!r}")
        if not NAME_SOURCE.match(self.name):
            out.append(f"{where}: name source {self.name!r} is not one of path, path-id, query:<p>, body:<F>, "
                       "local-node, each, unnamed, none")  # fmt: skip
        if (self.resource == "none") != (self.name == "none"):
            out.append(f"{where}: resource none goes with name none, and only with it")
        if (self.resource in UNNAMED_RESOURCES) != (self.name == "unnamed"):
            out.append(f"{where}: resources {sorted(UNNAMED_RESOURCES)} take name unnamed, and only they")
        if self.name in ("path", "path-id") and not self.is_prefix:
            out.append(f"{where}: a name from the path needs a prefix route (ending in /)")
        if not self.summary.strip():
            out.append(f"{where}: summary is empty")
        return out


def route(methods: str, path: str, handler: Handler, access: Access, resource: Resource, name: str,
          summary: str, *, forward_body: Callable[[bytes, str], bytes] | None = None) -> Route:  # fmt: skip
    """One declaration; ``methods`` is "GET" or a comma-separated list ("GET,DELETE")."""
    return Route(tuple(m.strip() for m in methods.split(",")), path, handler, access, resource, name, summary,
                 forward_body)  # fmt: skip


class Router:
    """Path -> {method: route}, built once from the route table. An exact path is one dict lookup; a
    prefix route ("/v1/kv/") takes the longest matching prefix and hands the handler the suffix. The
    dispatcher gets the whole declaration, so the ACL rule it checks is the one the table declares.

    Every prefix ends in "/", so the prefixes a path can match end at one of its own slashes: the router
    looks those up, longest first, instead of trying each of the table's prefixes in turn (the route table
    grew to dozens of prefixes, and /v1/kv/ was tried after most of them on every KV request). Only the
    slashes within the longest prefix's length are looked at, so a key with thousands of slashes costs no
    more than a short one."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.exact: dict[str, dict[str, Route]] = {}
        self.prefix: dict[str, dict[str, Route]] = {}
        self.forward_body: dict[tuple[str, str], Callable[[bytes, str], bytes]] = {}  # (method, exact path)
        for r in routes:
            bad = r.problems()
            if bad:
                raise RouteError("; ".join(bad))
            table = self.prefix if r.is_prefix else self.exact
            handlers = table.setdefault(r.path, {})
            for m in r.methods:
                if m in handlers:
                    raise RouteError(f"{m} {r.path} is declared twice")
                handlers[m] = r
                if r.forward_body is not None:
                    self.forward_body[(m, r.path)] = r.forward_body
        self._longest = max(map(len, self.prefix), default=0)

    def resolve(self, path: str) -> tuple[dict[str, Route] | None, str]:
        routes = self.exact.get(path)
        if routes is not None:
            return routes, ""
        prefix = self.prefix
        end = path.rfind("/", 0, self._longest)
        while end >= 0:
            routes = prefix.get(path[: end + 1])
            if routes is not None:
                return routes, path[end + 1 :]
            end = path.rfind("/", 0, end)
        return None, ""
