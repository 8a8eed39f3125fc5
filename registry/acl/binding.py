"""Binding rules: from what a login proved (an ``Identity``) to what its token is granted.

Consul's binder (agent/consul/auth/binder.go): every rule of the auth method whose ``Selector`` matches the
identity contributes one grant, by ``BindType``:

* ``service``: a service identity named ``BindName``;  ``node``: a node identity in this datacenter;
* ``role`` / ``policy``: the role or policy of that name, when it exists (a missing one grants nothing);
* ``templated-policy``: the built-in template ``BindName`` with ``BindVars.Name``.

``BindName`` (and ``BindVars.Name``) may interpolate the identity's variables, ``${value.<name>}``, the way
Consul's HIL does, lower-casing the values first. The result is validated *before* it is used, with the
same rules as a name given directly (CVE-2021-41803 was names templated unvalidated into claim checks); a
claim value is data and can never change the shape of what it lands in: a name that does not validate
refuses the login.

``Selector`` is a go-bexpr expression over ``value.<name>`` (strings) and ``list.<name>`` (string lists),
compiled with ``registry.filtering`` against that schema once, when the rule is built.

``BindingRule`` is also the row the ACL tables store: a write checks it against its auth method's blank
identity (``from_wire(body, method.blank_identity())``, Consul's ``BindingRuleSet``); a rule read back from
the log or a snapshot was checked when it was written and is only decoded (``from_wire(raw, None)``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from registry.acl.errors import ACLObjectError
from registry.acl.identities import (
    TEMPLATES,
    IdentityError,
    NodeIdentity,
    ServiceIdentity,
    TemplatedPolicy,
    is_valid_node_identity_name,
    is_valid_service_identity_name,
)
from registry.acl.jwt import Identity
from registry.acl.objects import is_valid_policy_name, is_valid_role_name
from registry.acl.rules import go_quote
from registry.filtering import Filter, FilterError, Map, Prim, Slice, Struct, compile_filter

__all__ = [
    "BIND_TYPES",
    "IDENTITY_SCHEMA",
    "BindingRule",
    "BindingRuleError",
    "Bindings",
    "bind",
    "interpolate",
]

BIND_TYPES = ("service", "node", "role", "policy", "templated-policy")

#: Consul's ``fieldDetails``: ``Values map[string]string `bexpr:"value"```, ``Lists map[string][]string `bexpr:"list"```.
IDENTITY_SCHEMA = Struct({"value": Map(Prim("string")), "list": Map(Slice(Prim("string")))}, False, "fieldDetails")

# What may stand inside ${...}: one HIL variable. Functions, arithmetic and nesting are refused.
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_\-.]*")


class BindingRuleError(ACLObjectError):
    """A binding rule Consul refuses to store, or a login a rule cannot bind; ``str()`` is Consul's text."""


def interpolate(template: str, variables: Mapping[str, str], *, lowercase: bool = True) -> str:
    """``${name}`` replaced by ``variables[name]`` (lower-cased when ``lowercase``), ``$${`` an escaped
    ``${``: the subset of HIL a bind name uses (Consul's ``template.InterpolateHIL``). Raises
    BindingRuleError for an unknown variable or any other HIL expression."""
    if "${" not in template:
        return template
    out: list[str] = []
    i = 0
    n = len(template)
    while i < n:
        if template.startswith("$${", i):
            out.append("${")
            i += 3
            continue
        if template.startswith("${", i):
            end = template.find("}", i + 2)
            if end < 0:
                raise BindingRuleError(f"error interpreting template: unterminated interpolation in {go_quote(template)}")
            name = template[i + 2 : end].strip()
            if _VARIABLE.fullmatch(name) is None:
                raise BindingRuleError(
                    f"error interpreting template: only variables such as ${{value.name}} may be interpolated, "
                    f"not {go_quote(name)}"
                )
            if name not in variables:
                raise BindingRuleError(f"error interpreting template: unknown variable accessed: {name}")
            value = variables[name]
            out.append(value.lower() if lowercase else value)
            i = end + 1
            continue
        out.append(template[i])
        i += 1
    return "".join(out)


def _compute_name(template: str, variables: Mapping[str, str], valid: Any) -> str:
    """binder.go ``computeBindName``: interpolate (lower-cased), validate, and refuse values whose
    upper case was lost on the way (they would name something else than the claim said)."""
    computed = interpolate(template, variables)
    if not valid(computed):
        raise BindingRuleError(f"invalid bind name: {go_quote(computed)}")
    if "${" in template:
        original = interpolate(template, variables, lowercase=False)
        if original != computed:
            raise BindingRuleError(
                "invalid bind name: the projected variables contain uppercase characters "
                f"(interpolated as {go_quote(original)} before lowercasing), but bind names for this type "
                "must be lowercase; ensure the bound service or node name is lowercase"
            )
    return computed


def _templated(bind_name: str, bind_vars_name: str, variables: Mapping[str, str]) -> TemplatedPolicy:
    if bind_name not in TEMPLATES:
        raise BindingRuleError(
            f"Bind name for templated-policy bind type does not match existing template name: {bind_name}"
        )
    name = ""
    if bind_vars_name:
        try:
            name = interpolate(bind_vars_name, variables)
        except BindingRuleError as exc:
            raise BindingRuleError(f"failed to interpret templated policy variables: {exc}") from None
        if "${" in bind_vars_name and interpolate(bind_vars_name, variables, lowercase=False) != name:
            raise BindingRuleError(
                "invalid bind variable: the projected variables contain uppercase characters, but bind "
                "variables for this type must be lowercase; ensure the bound resource name is lowercase"
            )
    try:
        return TemplatedPolicy(bind_name, name)
    except IdentityError as exc:
        raise BindingRuleError(f"templated policy failed validation: {exc}") from None


def _compile(selector: str) -> Filter | None:
    """The selector compiled against the identity schema; None for the empty selector (matches all)."""
    if not selector:
        return None
    try:
        return compile_filter(selector, IDENTITY_SCHEMA)
    except FilterError as exc:
        raise BindingRuleError(f"invalid Binding Rule: Selector is invalid: {exc}") from None


_VALIDATORS = {
    "service": is_valid_service_identity_name,
    "node": is_valid_node_identity_name,
    "role": is_valid_role_name,
    "policy": is_valid_policy_name,
}


@dataclass(frozen=True, slots=True)
class BindingRule:
    """An ``ACLBindingRule``, checked when written (``from_wire`` with a blank identity, or ``checked``)
    against its auth method's blank identity, so a stored rule always compiles and always names something
    valid for valid input. ``create_index``/``modify_index`` are the tables' (0 until stored)."""

    id: str
    auth_method: str
    bind_type: str
    bind_name: str
    selector: str = ""
    description: str = ""
    bind_vars_name: str = ""
    create_index: int = 0
    modify_index: int = 0
    matcher: Filter | None = field(default=None, compare=False, repr=False)

    @classmethod
    def checked(cls, *, id: str, auth_method: str, bind_type: str, bind_name: str, selector: str = "",
                description: str = "", bind_vars_name: str = "", blank: Identity) -> BindingRule:  # fmt: skip
        """Consul's ``BindingRuleSet`` checks, in its order and with its texts."""
        if auth_method == "":
            raise BindingRuleError("Invalid Binding Rule: no AuthMethod is set")
        matcher = _compile(selector)
        if bind_type == "":
            raise BindingRuleError("Invalid Binding Rule: no BindType is set")
        if bind_name == "":
            raise BindingRuleError("Invalid Binding Rule: no BindName is set")
        if bind_type not in BIND_TYPES:
            raise BindingRuleError(f"Invalid Binding Rule: unknown BindType {go_quote(bind_type)}")
        # binder.go IsValidBindingRule: every variable the method can produce stands for "fake".
        fake = dict.fromkeys(blank.projected_vars(), "fake")
        try:
            if bind_type == "templated-policy":
                _templated(bind_name, bind_vars_name, fake)
            else:
                _compute_name(bind_name, fake, _VALIDATORS[bind_type])
        except BindingRuleError as exc:
            raise BindingRuleError(
                f"Invalid Binding Rule: invalid BindName: failed to validate bindType {go_quote(bind_type)}: {exc}"
            ) from None
        return cls(id=id, auth_method=auth_method, bind_type=bind_type, bind_name=bind_name, selector=selector,
                   description=description, bind_vars_name=bind_vars_name, matcher=matcher)  # fmt: skip

    @classmethod
    def from_wire(cls, obj: Any, blank: Identity | None) -> BindingRule:
        """An ``ACLBindingRule`` JSON object (``ID``, ``AuthMethod``, ``Selector``, ``BindType``,
        ``BindName``, ``BindVars``, ``Description``, and the stored ``CreateIndex``/``ModifyIndex``).

        With ``blank`` (the auth method's ``blank_identity()``) it is a write, checked as ``checked``
        checks it. With None it is a rule read back from the log or a snapshot, checked when it was written
        against the method as it was then: decoded, its selector compiled, nothing refused that was stored
        (a method's claim mappings may have changed since; a login then fails to bind, as in Consul)."""
        if not isinstance(obj, Mapping):
            raise BindingRuleError("Invalid Binding Rule: the binding rule must be an object")
        bind_vars = obj.get("BindVars") or {}
        if not isinstance(bind_vars, Mapping):
            raise BindingRuleError("Invalid Binding Rule: BindVars must be an object")
        fields = {k: obj.get(k) or "" for k in ("ID", "AuthMethod", "BindType", "BindName", "Selector", "Description")}
        if not all(isinstance(v, str) for v in fields.values()) or not isinstance(bind_vars.get("Name", ""), str):
            raise BindingRuleError("Invalid Binding Rule: fields must be strings")
        indexes = [obj.get(k) or 0 for k in ("CreateIndex", "ModifyIndex")]
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indexes):
            raise BindingRuleError("Invalid Binding Rule: CreateIndex and ModifyIndex must be non-negative integers")
        if blank is None:
            rule = cls(id=fields["ID"], auth_method=fields["AuthMethod"], bind_type=fields["BindType"],
                       bind_name=fields["BindName"], selector=fields["Selector"], description=fields["Description"],
                       bind_vars_name=bind_vars.get("Name") or "", matcher=_compile(fields["Selector"]))  # fmt: skip
        else:
            rule = cls.checked(id=fields["ID"], auth_method=fields["AuthMethod"], bind_type=fields["BindType"],
                               bind_name=fields["BindName"], selector=fields["Selector"],
                               description=fields["Description"], bind_vars_name=bind_vars.get("Name") or "",
                               blank=blank)  # fmt: skip
        return replace(rule, create_index=indexes[0], modify_index=indexes[1])

    def to_wire(self) -> dict[str, Any]:
        """Consul's ``ACLBindingRule`` JSON (``BindVars`` only when set), the stored form too."""
        out: dict[str, Any] = {"ID": self.id, "Description": self.description, "AuthMethod": self.auth_method,
                               "Selector": self.selector, "BindType": self.bind_type, "BindName": self.bind_name}  # fmt: skip
        if self.bind_vars_name:
            out["BindVars"] = {"Name": self.bind_vars_name}
        out["CreateIndex"] = self.create_index
        out["ModifyIndex"] = self.modify_index
        return out

    def matches(self, identity: Identity) -> bool:
        """Consul's ``doesSelectorMatch``: the empty selector matches every login."""
        if self.matcher is None:
            return True
        return self.matcher.matches(identity.selectable())


@dataclass(frozen=True, slots=True)
class Bindings:
    """What a login token gets: identities as values, roles and policies by name (the caller looks them up
    and drops names that do not exist, as Consul does)."""

    service_identities: tuple[ServiceIdentity, ...] = ()
    node_identities: tuple[NodeIdentity, ...] = ()
    role_names: tuple[str, ...] = ()
    policy_names: tuple[str, ...] = ()
    templated_policies: tuple[TemplatedPolicy, ...] = ()

    def none(self) -> bool:
        """True when the token would be granted nothing (Consul refuses such a login)."""
        return not (self.service_identities or self.node_identities or self.role_names or self.policy_names
                    or self.templated_policies)  # fmt: skip


def bind(rules: Iterable[BindingRule], identity: Identity, datacenter: str) -> Bindings:
    """Apply ``rules`` to ``identity`` (binder.go ``Bind``). A matching rule whose name does not validate
    for this identity refuses the whole login (BindingRuleError), as Consul's does."""
    services: list[ServiceIdentity] = []
    nodes: list[NodeIdentity] = []
    roles: list[str] = []
    policies: list[str] = []
    templated: list[TemplatedPolicy] = []
    variables = identity.projected_vars()
    for rule in rules:
        if not rule.matches(identity):
            continue
        if rule.bind_type == "templated-policy":
            templated.append(_templated(rule.bind_name, rule.bind_vars_name, variables))
            continue
        name = _compute_name(rule.bind_name, variables, _VALIDATORS[rule.bind_type])
        if rule.bind_type == "service":
            services.append(ServiceIdentity(name))
        elif rule.bind_type == "node":
            nodes.append(NodeIdentity(name, datacenter))
        elif rule.bind_type == "role":
            roles.append(name)
        else:
            policies.append(name)
    return Bindings(tuple(services), tuple(nodes), tuple(dict.fromkeys(roles)), tuple(dict.fromkeys(policies)),
                    tuple(templated))  # fmt: skip
