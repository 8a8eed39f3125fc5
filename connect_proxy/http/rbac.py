"""L7 intentions: whether one HTTP request may reach the local service. Pure: no IO.

Consul compiles a destination's intentions into Envoy's HTTP RBAC filter (agent/xds/rbac.go); the
outcome per request is what this module computes, in process, from the same intentions the L4 path
follows (``connect_proxy.authz.Authorizer``, whose ``decide`` applies ``registry.intentions``'
precedence):

- the highest-precedence intention matching the source decides; a plain ``allow``/``deny`` decides
  every request from it;
- an intention with ``Permissions`` is walked in order, and the first permission that matches the
  request decides with its ``Action`` ("the first permission to match in the list is terminal");
- a request that matches none of its permissions gets the default (the agent's
  ``default_intention_policy``, else the ACL default), as Consul documents for L7 intentions;
- no intention matches: the default.

A permission's ``HTTP`` is the AND of its parts, with Envoy's matchers: ``PathExact``/``PathPrefix``/
``PathRegex`` against the path without its query string (Envoy's ``url_path``), each ``Header`` entry
(``Present``, ``Exact``, ``Prefix``, ``Suffix``, ``Regex``, ``Invert``), and ``Methods`` (any). A
permission without ``HTTP`` matches every request. A permission this module cannot evaluate (an invalid
regex, a ``JWT`` requirement) matches every request as a deny: it fails closed.

A denied request is answered ``403`` with Envoy's body ``RBAC: access denied``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ca.spiffe import ServiceIdentity
from connect_proxy.authz import Authorizer
from registry.intentions import ACTION_ALLOW, Decision, Intention

__all__ = ["DENIED_BODY", "L7Policy", "Permission", "RequestView"]

DENIED_BODY = b"RBAC: access denied"
_KNOWN_HTTP = {"pathexact", "pathprefix", "pathregex", "header", "methods"}


def _ci(data: Mapping[str, Any], key: str) -> Any:
    """Consul decodes intention JSON case-insensitively (``PathPrefix``, ``path_prefix``)."""
    want = key.lower()
    for k, v in data.items():
        if str(k).lower().replace("_", "") == want:
            return v
    return None


@dataclass(frozen=True, slots=True)
class RequestView:
    """What a permission looks at: the method, the request target, lower-case header names."""

    method: str
    path: str
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class _Header:
    name: str
    kind: str
    value: str
    regex: re.Pattern[str] | None
    invert: bool

    def matches(self, value: str | None) -> bool:
        if value is None:
            return self.invert and self.kind == "present"
        if self.kind == "exact":
            hit = value == self.value
        elif self.kind == "prefix":
            hit = value.startswith(self.value)
        elif self.kind == "suffix":
            hit = value.endswith(self.value)
        elif self.kind == "regex":
            hit = self.regex is not None and self.regex.fullmatch(value) is not None
        else:
            hit = True
        return hit != self.invert


class _Unsupported(ValueError):
    pass


def _regex(pattern: Any) -> re.Pattern[str]:
    try:
        return re.compile(str(pattern))
    except re.error as exc:
        raise _Unsupported(f"invalid regex {pattern!r}: {exc}") from None


def _header(h: Any) -> _Header:
    if not isinstance(h, Mapping) or not _ci(h, "Name"):
        raise _Unsupported("header matcher without a Name")
    name = str(_ci(h, "Name")).lower()
    invert = bool(_ci(h, "Invert"))
    for kind in ("exact", "prefix", "suffix"):
        if _ci(h, kind):
            return _Header(name, kind, str(_ci(h, kind)), None, invert)
    if _ci(h, "Regex"):
        return _Header(name, "regex", "", _regex(_ci(h, "Regex")), invert)
    if _ci(h, "Present"):
        return _Header(name, "present", "", None, invert)
    raise _Unsupported(f"header matcher for {name!r} has nothing to match")


@dataclass(frozen=True, slots=True)
class Permission:
    """One compiled ``Permissions[i]``: ``allow`` (its Action) and what a request must have to match."""

    allow: bool
    path_kind: str = ""  # "", exact, prefix, regex
    path: str = ""
    path_regex: re.Pattern[str] | None = None
    headers: tuple[_Header, ...] = ()
    methods: frozenset[str] = frozenset()
    match_all: bool = False  # could not be evaluated: fails closed

    @classmethod
    def parse(cls, perm: Mapping[str, Any]) -> Permission:
        allow = str(_ci(perm, "Action") or "").lower() == ACTION_ALLOW
        try:
            if _ci(perm, "JWT"):
                raise _Unsupported("JWT requirements are not supported")
            http = _ci(perm, "HTTP")
            if http is None:
                return cls(allow)
            if not isinstance(http, Mapping) or any(str(k).lower().replace("_", "") not in _KNOWN_HTTP for k in http):
                raise _Unsupported("unknown HTTP permission field")
            kind, path, rx = "", "", None
            if _ci(http, "PathExact"):
                kind, path = "exact", str(_ci(http, "PathExact"))
            elif _ci(http, "PathPrefix"):
                kind, path = "prefix", str(_ci(http, "PathPrefix"))
            elif _ci(http, "PathRegex"):
                kind, path, rx = "regex", str(_ci(http, "PathRegex")), _regex(_ci(http, "PathRegex"))
            headers = tuple(_header(h) for h in _ci(http, "Header") or ())
            methods = frozenset(str(m).upper() for m in _ci(http, "Methods") or ())
            return cls(allow, kind, path, rx, headers, methods)
        except _Unsupported:
            return cls(False, match_all=True)

    def matches(self, req: RequestView) -> bool:
        if self.match_all:
            return True
        if self.path_kind:
            path = req.path.split("?", 1)[0]
            if self.path_kind == "exact" and path != self.path:
                return False
            if self.path_kind == "prefix" and not path.startswith(self.path):
                return False
            if self.path_kind == "regex" and (self.path_regex is None or not self.path_regex.fullmatch(path)):
                return False
        if self.methods and req.method.upper() not in self.methods:
            return False
        return all(h.matches(req.headers.get(h.name)) for h in self.headers)


@dataclass(frozen=True, slots=True)
class _Verdict:
    allowed: bool
    reason: str


class L7Policy:
    """An ``Authorizer`` with every L7 intention's permissions compiled, built once per intentions
    change; ``decide`` is the connection's L4 decision plus, for an L7 intention, a walk of its
    permissions."""

    __slots__ = ("_perms", "authz")

    def __init__(self, authz: Authorizer) -> None:
        self.authz = authz
        self._perms: dict[int, tuple[Permission, ...]] = {}
        for ixn in authz.index:
            if ixn.permissions:
                self._perms[id(ixn)] = tuple(Permission.parse(p) for p in ixn.permissions)

    def source_decision(self, source: ServiceIdentity) -> Decision:
        """The L4 decision for a source: computed once per connection, then ``decide_request`` per request."""
        return self.authz.decide(source)

    @staticmethod
    def per_request(decision: Decision) -> bool:
        """Whether requests under this source decision are decided one by one (an L7 intention matched);
        else every request gets the decision itself."""
        ixn: Intention | None = decision.matched
        return ixn is not None and bool(ixn.permissions)

    def decide_request(self, decision: Decision, req: RequestView) -> _Verdict:
        ixn: Intention | None = decision.matched
        if ixn is None or not ixn.permissions:
            return _Verdict(decision.allowed, decision.reason)
        for i, perm in enumerate(self._perms.get(id(ixn), ())):
            if perm.matches(req):
                return _Verdict(perm.allow, f"Matched L7 intention: {ixn}, permission {i}")
        allow, reason = self.authz.default
        return _Verdict(allow, reason)

    def decide(self, source: ServiceIdentity, req: RequestView) -> _Verdict:
        return self.decide_request(self.source_decision(source), req)
