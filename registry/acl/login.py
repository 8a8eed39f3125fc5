"""Logins, the pure part: the token a login creates, computed from the auth method (the stored
``registry.acl.objects.AuthMethod``, checked when it was written), its binding rules and the verified
identity.

Consul's ``ACL.Login`` / ``tokenSetFromAuthMethod`` (agent/consul/acl_endpoint.go):

* a login token is ``Local`` unless the method says ``global``, expires after ``MaxTokenTTL`` when set, is
  described ``token created via login`` (with ``: <Meta as JSON>`` when the login carried ``Meta``), and is
  linked to what the binding rules granted; roles and policies named by a rule but missing from the tables
  grant nothing, and a login granted nothing at all is refused with ``Permission denied``.

The tables are reached through two lookups passed in (``role_by_name``, ``policy_by_name``); nothing here
reads a store or a clock.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from registry.acl.binding import BindingRule, Bindings, bind
from registry.acl.errors import PermissionDenied
from registry.acl.identities import NodeIdentity, ServiceIdentity, TemplatedPolicy
from registry.acl.jwt import Identity
from registry.acl.objects import AuthMethod
from registry.gocompat import format_duration_ns

__all__ = [
    "LoginToken",
    "login_description",
    "plan_login",
]


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
    expiration_ttl_ns: int = 0
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
        if self.expiration_ttl_ns:
            out["ExpirationTTL"] = format_duration_ns(self.expiration_ttl_ns)
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
        expiration_ttl_ns=method.max_token_ttl_ns,
        service_identities=bindings.service_identities,
        node_identities=bindings.node_identities,
        templated_policies=bindings.templated_policies,
        roles=roles,
        policies=policies,
    )
