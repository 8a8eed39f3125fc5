"""Auth methods and logins, the pure part: an auth method checked as Consul checks it, and the token a
login creates, computed from the method, its binding rules and the verified identity.

Consul's ``ACL.AuthMethodSet`` and ``ACL.Login`` / ``tokenSetFromAuthMethod`` (agent/consul/acl_endpoint.go):

* an auth method has a ``Name`` (``[A-Za-z0-9-_]{1,128}``), a ``Type`` (only ``jwt`` here), an optional
  ``MaxTokenTTL`` within the server's token TTL bounds (1m..24h by default), a ``TokenLocality`` (``local``
  or ``global``) and a type-specific ``Config`` (``registry.acl.jwt.JWTConfig``);
* a login token is ``Local`` unless the method says ``global``, expires after ``MaxTokenTTL`` when set, is
  described ``token created via login`` (with ``: <Meta as JSON>`` when the login carried ``Meta``), and is
  linked to what the binding rules granted; roles and policies named by a rule but missing from the tables
  grant nothing, and a login granted nothing at all is refused with ``Permission denied``.

The tables are reached through two lookups passed in (``role_by_name``, ``policy_by_name``); nothing here
reads a store or a clock.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from registry.acl.binding import BindingRule, Bindings, bind
from registry.acl.errors import PermissionDenied
from registry.acl.identities import NodeIdentity, ServiceIdentity, TemplatedPolicy
from registry.acl.jwt import AuthMethodError, Identity, JWTConfig, JWTValidator
from registry.gocompat import format_duration_ns, parse_duration_ns

__all__ = [
    "AUTH_METHOD_TYPES",
    "AuthMethod",
    "LoginToken",
    "login_description",
    "plan_login",
]

AUTH_METHOD_TYPES = ("jwt",)
_NAME = re.compile(r"[A-Za-z0-9\-_]{1,128}")
# Consul's acl.token_min_expiration_ttl / token_max_expiration_ttl defaults.
MIN_TOKEN_TTL_S = 60.0
MAX_TOKEN_TTL_S = 24 * 3600.0


def _ttl_seconds(value: Any) -> float:
    if value in (None, "", 0):
        return 0.0
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) / 1e9
    if isinstance(value, str):
        try:
            return parse_duration_ns(value) / 1e9
        except ValueError as exc:
            raise AuthMethodError(f"Request decode failed: {exc}") from None
    raise AuthMethodError("Request decode failed: MaxTokenTTL must be a duration")


@dataclass(frozen=True, slots=True)
class AuthMethod:
    """A checked ``ACLAuthMethod``; ``validator`` is built once, when the method is."""

    name: str
    type: str
    config: JWTConfig
    display_name: str = ""
    description: str = ""
    max_token_ttl_s: float = 0.0
    token_locality: str = ""

    @classmethod
    def from_wire(cls, obj: Mapping[str, Any], *, min_ttl_s: float = MIN_TOKEN_TTL_S,
                  max_ttl_s: float = MAX_TOKEN_TTL_S, primary: bool = True) -> AuthMethod:  # fmt: skip
        """Consul's ``AuthMethodSet`` checks on an ``ACLAuthMethod`` JSON object, with its texts."""
        name = obj.get("Name") or ""
        if not isinstance(name, str) or name == "":
            raise AuthMethodError("Invalid Auth Method: no Name is set")
        if _NAME.fullmatch(name) is None:
            raise AuthMethodError(
                "Invalid Auth Method: invalid Name. Only alphanumeric characters, '-' and '_' are allowed"
            )
        kind = obj.get("Type") or ""
        if kind not in AUTH_METHOD_TYPES:
            raise AuthMethodError(f"Invalid Auth Method: Type should be one of: [{' '.join(AUTH_METHOD_TYPES)}]")
        ttl = _ttl_seconds(obj.get("MaxTokenTTL"))
        if ttl:
            if ttl > max_ttl_s:
                raise AuthMethodError(f"MaxTokenTTL {format_duration_ns(int(ttl * 1e9))} cannot be more than "
                                      f"{format_duration_ns(int(max_ttl_s * 1e9))}")  # fmt: skip
            if ttl < min_ttl_s:
                raise AuthMethodError(f"MaxTokenTTL {format_duration_ns(int(ttl * 1e9))} cannot be less than "
                                      f"{format_duration_ns(int(min_ttl_s * 1e9))}")  # fmt: skip
        locality = obj.get("TokenLocality") or ""
        if locality == "global" and not primary:
            raise AuthMethodError("Invalid Auth Method: TokenLocality 'global' can only be used in the primary "
                                  "datacenter")  # fmt: skip
        if locality not in ("", "local", "global"):
            raise AuthMethodError("Invalid Auth Method: TokenLocality should be one of 'local' or 'global'")
        display = obj.get("DisplayName") or ""
        description = obj.get("Description") or ""
        if not isinstance(display, str) or not isinstance(description, str):
            raise AuthMethodError("Request decode failed: DisplayName and Description must be strings")
        return cls(name, kind, JWTConfig.from_wire(obj.get("Config")), display, description, ttl, locality)

    def validator(self) -> JWTValidator:
        return JWTValidator(self.config)

    def blank_identity(self) -> Identity:
        return self.validator().blank_identity()


def login_description(meta: Mapping[str, str] | None) -> str:
    """``token created via login``, plus ``: {"k":"v"}`` when the login carried Meta (Go's json.Marshal of
    a map: keys sorted, compact, ``<``, ``>`` and ``&`` escaped)."""
    text = "token created via login"
    if meta:
        encoded = json.dumps(dict(meta), separators=(",", ":"), sort_keys=True, ensure_ascii=False)
        encoded = encoded.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        encoded = encoded.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
        text += ": " + encoded
    return text


@dataclass(frozen=True, slots=True)
class LoginToken:
    """The token a login creates: what the token-creating function receives (and its JSON ``to_wire``, the
    body of a ``PUT /v1/acl/token``, with ``AuthMethod`` set)."""

    auth_method: str
    description: str
    local: bool
    expiration_ttl_s: float = 0.0
    service_identities: tuple[ServiceIdentity, ...] = ()
    node_identities: tuple[NodeIdentity, ...] = ()
    templated_policies: tuple[TemplatedPolicy, ...] = ()
    roles: tuple[tuple[str, str], ...] = ()  # (ID, Name)
    policies: tuple[tuple[str, str], ...] = ()  # (ID, Name)

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "Description": self.description,
            "AuthMethod": self.auth_method,
            "Local": self.local,
        }
        if self.policies:
            out["Policies"] = [{"ID": i, "Name": n} for i, n in self.policies]
        if self.roles:
            out["Roles"] = [{"ID": i, "Name": n} for i, n in self.roles]
        if self.service_identities:
            out["ServiceIdentities"] = [{"ServiceName": s.service_name} for s in self.service_identities]
        if self.node_identities:
            out["NodeIdentities"] = [{"NodeName": n.node_name, "Datacenter": n.datacenter}
                                     for n in self.node_identities]  # fmt: skip
        if self.templated_policies:
            out["TemplatedPolicies"] = [
                {"TemplateName": t.template_name, **({"TemplateVariables": {"Name": t.name}} if t.name else {})}
                for t in self.templated_policies
            ]
        if self.expiration_ttl_s:
            out["ExpirationTTL"] = format_duration_ns(int(self.expiration_ttl_s * 1e9))
        return out


Lookup = Callable[[str], "tuple[str, str] | None"]


def plan_login(method: AuthMethod, rules: Iterable[BindingRule], identity: Identity, *, datacenter: str,
               meta: Mapping[str, str] | None, role_by_name: Lookup, policy_by_name: Lookup) -> LoginToken:  # fmt: skip
    """The token ``identity`` gets from ``method`` and its ``rules``; ``role_by_name`` and
    ``policy_by_name`` answer ``(ID, Name)`` or None. PermissionDenied when it would be granted nothing."""
    bindings: Bindings = bind((r for r in rules if r.auth_method == method.name), identity, datacenter)
    roles = tuple(link for name in bindings.role_names if (link := role_by_name(name)) is not None)
    policies = tuple(link for name in bindings.policy_names if (link := policy_by_name(name)) is not None)
    if not (bindings.service_identities or bindings.node_identities or bindings.templated_policies or roles
            or policies):  # fmt: skip
        raise PermissionDenied()
    return LoginToken(
        auth_method=method.name,
        description=login_description(meta),
        local=method.token_locality != "global",
        expiration_ttl_s=method.max_token_ttl_s,
        service_identities=bindings.service_identities,
        node_identities=bindings.node_identities,
        templated_policies=bindings.templated_policies,
        roles=roles,
        policies=policies,
    )
