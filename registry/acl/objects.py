"""The ACL objects as the state store holds them: tokens, policies, roles and auth methods (binding rules,
which are checked against their auth method, are ``registry.acl.binding.BindingRule``).

Each is a frozen value with Consul's JSON field names on the wire (``to_wire``/``from_wire``: the msgpack
form of commands and snapshots), validated once where it is built with Consul's texts
(agent/consul/acl_endpoint.go ``tokenSetInternal``, ``PolicySet``, ``RoleSet``, ``AuthMethodSet``). What depends on the other rows (a name already taken, a linked policy that does not
exist) is checked where the rows are, in the store (``registry.state.acl_table``).

Times are integers of nanoseconds since the epoch: this package reads no clock and formats no dates; the
HTTP layer renders them as Go renders ``time.Time``.

Links from tokens and roles to policies and roles are kept as ``(ID, Name)`` pairs. A request may name a
policy by either; the store resolves names to IDs and stores the ID only (Consul: "Do not store the policy
name ... as the policy could be renamed"), and a read fills in the current name and drops links to rows
that no longer exist.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from registry.acl.errors import ACLObjectError
from registry.acl.identities import (
    BUILTIN_POLICIES,
    IdentityError,
    NodeIdentity,
    ServiceIdentity,
    TemplatedPolicy,
)
from registry.acl.jwt import AuthMethodError, Identity, JWTConfig, JWTValidator
from registry.acl.rules import PolicyRules, RulesError, parse_rules
from registry.gocompat import format_duration_ns, parse_duration_ns

__all__ = [
    "ANONYMOUS_SECRET",
    "AUTH_METHOD_TYPES",
    "MAX_TOKEN_TTL_NS",
    "MIN_TOKEN_TTL_NS",
    "RESERVED_PREFIX",
    "AuthMethod",
    "Link",
    "PolicyRow",
    "RoleRow",
    "TokenRow",
    "is_uuid",
    "is_valid_policy_name",
    "is_valid_role_name",
    "reserved",
]

RESERVED_PREFIX = "00000000-0000-0000-0000-0000000000"  # Consul's ACLReservedPrefix (structs.ACLIDReserved)
ANONYMOUS_SECRET = "anonymous"
AUTH_METHOD_TYPES = ("jwt",)  # the auth method types this build has a validator for
# Consul's acl.token_min_expiration_ttl / token_max_expiration_ttl defaults: the bounds of a token's
# lifetime and of an auth method's MaxTokenTTL.
MIN_TOKEN_TTL_NS = 60 * 10**9
MAX_TOKEN_TTL_NS = 24 * 3600 * 10**9
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_POLICY_NAME = re.compile(r"[A-Za-z0-9\-_]{1,128}")
_ROLE_NAME = re.compile(r"[A-Za-z0-9\-_]{1,256}")
_AUTH_METHOD_NAME = re.compile(r"[A-Za-z0-9\-_]{1,128}")

Link = tuple[str, str]  # (ID, Name): one of them may be empty in a request; stored with the ID only


def is_uuid(s: str) -> bool:
    """Consul's ``uuid.ParseUUID`` shape: 8-4-4-4-12 hex digits."""
    return isinstance(s, str) and _UUID.fullmatch(s) is not None


def is_valid_policy_name(name: str) -> bool:
    """Consul's ``acl.IsValidPolicyName``."""
    return _POLICY_NAME.fullmatch(name) is not None


def is_valid_role_name(name: str) -> bool:
    """Consul's ``acl.IsValidRoleName``."""
    return _ROLE_NAME.fullmatch(name) is not None


def reserved(s: str) -> bool:
    """Consul's ``ACLIDReserved``: IDs starting with the reserved prefix are the built-ins'."""
    return s.startswith(RESERVED_PREFIX)


def _hash(doc: Mapping[str, Any]) -> str:
    """A content hash in Consul's form (base64 of a 256-bit BLAKE2b), over the fields that grant."""
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return base64.b64encode(hashlib.blake2b(data, digest_size=32).digest()).decode()


# ------------------------------------------------------------------------------------ field decoding


def _s(d: Mapping[str, Any], k: str, what: str) -> str:
    v = d.get(k)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise ACLObjectError(f"{what} decoding failed: {k} must be a string")
    return v


def _strs(d: Mapping[str, Any], k: str, what: str) -> tuple[str, ...]:
    v = d.get(k)
    if v is None:
        return ()
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ACLObjectError(f"{what} decoding failed: {k} must be a list of strings")
    return tuple(v)


def _list(d: Mapping[str, Any], k: str, what: str) -> list[Mapping[str, Any]]:
    v = d.get(k)
    if v is None:
        return []
    if not isinstance(v, list) or not all(isinstance(x, Mapping) for x in v):
        raise ACLObjectError(f"{what} decoding failed: {k} must be a list of objects")
    return v


def _int(d: Mapping[str, Any], k: str, what: str) -> int:
    v = d.get(k, 0) or 0
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ACLObjectError(f"{what} decoding failed: {k} must be a non-negative integer")
    return v


def _links(d: Mapping[str, Any], k: str, what: str) -> tuple[Link, ...]:
    out: list[Link] = []
    for item in _list(d, k, what):
        out.append((_s(item, "ID", what), _s(item, "Name", what)))
    return tuple(out)


def _identities(d: Mapping[str, Any], what: str, owner: str) -> tuple[
    tuple[ServiceIdentity, ...], tuple[NodeIdentity, ...], tuple[TemplatedPolicy, ...]
]:  # fmt: skip
    try:
        services: dict[str, ServiceIdentity] = {}
        for item in _list(d, "ServiceIdentities", what):
            name = _s(item, "ServiceName", what)
            if not name:
                raise ACLObjectError(f"Service identity is missing the service name field on this {owner}")
            si = ServiceIdentity(name, _strs(item, "Datacenters", what))
            prev = services.get(name)
            # Consul's dedupeServiceIdentities: one per name, datacenters merged (none means all).
            if prev is not None:
                dcs = () if not prev.datacenters or not si.datacenters else tuple(
                    sorted(set(prev.datacenters) | set(si.datacenters)))  # fmt: skip
                si = ServiceIdentity(name, dcs)
            services[name] = si
        nodes: dict[tuple[str, str], NodeIdentity] = {}
        for item in _list(d, "NodeIdentities", what):
            name, dc = _s(item, "NodeName", what), _s(item, "Datacenter", what)
            if not name:
                raise ACLObjectError(f"Node identity is missing the node name field on this {owner}")
            if not dc:
                raise ACLObjectError(f"Node identity is missing the datacenter field on this {owner}")
            nodes[(name, dc)] = NodeIdentity(name, dc)
        templated: list[TemplatedPolicy] = []
        for item in _list(d, "TemplatedPolicies", what):
            variables = item.get("TemplateVariables") or {}
            if not isinstance(variables, Mapping):
                raise ACLObjectError(f"{what} decoding failed: TemplateVariables must be an object")
            tp = TemplatedPolicy(_s(item, "TemplateName", what), _s(variables, "Name", what),
                                 _strs(item, "Datacenters", what))  # fmt: skip
            if tp not in templated:
                templated.append(tp)
    except IdentityError as exc:
        raise ACLObjectError(str(exc)) from None
    return tuple(services.values()), tuple(nodes.values()), tuple(templated)


def _identities_wire(sis: tuple[ServiceIdentity, ...], nis: tuple[NodeIdentity, ...],
                     tps: tuple[TemplatedPolicy, ...], out: dict[str, Any]) -> None:  # fmt: skip
    """Consul's omitempty identity lists, in its JSON shape."""
    if sis:
        out["ServiceIdentities"] = [
            {"ServiceName": s.service_name, **({"Datacenters": list(s.datacenters)} if s.datacenters else {})}
            for s in sis
        ]
    if nis:
        out["NodeIdentities"] = [{"NodeName": n.node_name, "Datacenter": n.datacenter} for n in nis]
    if tps:
        out["TemplatedPolicies"] = [
            {"TemplateName": t.template_name, **({"TemplateVariables": {"Name": t.name}} if t.name else {}),
             **({"Datacenters": list(t.datacenters)} if t.datacenters else {})}
            for t in tps
        ]  # fmt: skip


# -------------------------------------------------------------------------------------------- tokens


@dataclass(frozen=True, slots=True)
class TokenRow:
    """An ACL token. ``policies``/``roles`` are links; ``expiration_ttl_ns`` only ever travels in a create
    request (the store turns it into ``expiration_time_ns``, as Consul does before its Raft apply)."""

    accessor_id: str
    secret_id: str
    description: str = ""
    policies: tuple[Link, ...] = ()
    roles: tuple[Link, ...] = ()
    service_identities: tuple[ServiceIdentity, ...] = ()
    node_identities: tuple[NodeIdentity, ...] = ()
    templated_policies: tuple[TemplatedPolicy, ...] = ()
    local: bool = False
    auth_method: str = ""
    expiration_time_ns: int | None = None
    expiration_ttl_ns: int = 0
    create_time_ns: int = 0
    hash: str = ""
    create_index: int = 0
    modify_index: int = 0

    def expired(self, now_ns: int) -> bool:
        """Consul's ``IsExpired``: an expiration time at or before now."""
        return self.expiration_time_ns is not None and self.expiration_time_ns <= now_ns

    def policy_ids(self) -> tuple[str, ...]:
        return tuple(i for i, _ in self.policies)

    def role_ids(self) -> tuple[str, ...]:
        return tuple(i for i, _ in self.roles)

    def with_hash(self) -> TokenRow:
        doc: dict[str, Any] = {"Description": self.description, "Local": self.local,
                               "Policies": list(self.policy_ids()), "Roles": list(self.role_ids())}  # fmt: skip
        _identities_wire(self.service_identities, self.node_identities, self.templated_policies, doc)
        return replace(self, hash=_hash(doc))

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "AccessorID": self.accessor_id, "SecretID": self.secret_id, "Description": self.description,
            "Policies": [{"ID": i, "Name": n} for i, n in self.policies],
            "Roles": [{"ID": i, "Name": n} for i, n in self.roles],
            "Local": self.local, "AuthMethod": self.auth_method, "CreateTime": self.create_time_ns,
            "Hash": self.hash, "CreateIndex": self.create_index, "ModifyIndex": self.modify_index,
        }  # fmt: skip
        _identities_wire(self.service_identities, self.node_identities, self.templated_policies, out)
        if self.expiration_time_ns is not None:
            out["ExpirationTime"] = self.expiration_time_ns
        if self.expiration_ttl_ns:
            out["ExpirationTTL"] = self.expiration_ttl_ns
        return out

    @classmethod
    def from_wire(cls, d: Any, what: str = "Token") -> TokenRow:
        """Decode and validate the shape (Consul's texts); UUID rules apply to what is set."""
        if not isinstance(d, Mapping):
            raise ACLObjectError(f"{what} decoding failed: the token must be an object")
        sis, nis, tps = _identities(d, what, "token")
        exp = d.get("ExpirationTime")
        if exp is not None and (not isinstance(exp, int) or isinstance(exp, bool)):
            raise ACLObjectError(f"{what} decoding failed: ExpirationTime must be a time")
        ttl = d.get("ExpirationTTL", 0) or 0
        if not isinstance(ttl, int) or isinstance(ttl, bool):
            raise ACLObjectError(f"{what} decoding failed: ExpirationTTL must be a duration")
        local = d.get("Local", False)
        if not isinstance(local, bool):
            raise ACLObjectError(f"{what} decoding failed: Local must be a boolean")
        row = cls(
            accessor_id=_s(d, "AccessorID", what), secret_id=_s(d, "SecretID", what),
            description=_s(d, "Description", what), policies=_links(d, "Policies", what),
            roles=_links(d, "Roles", what), service_identities=sis, node_identities=nis, templated_policies=tps,
            local=local, auth_method=_s(d, "AuthMethod", what), expiration_time_ns=exp, expiration_ttl_ns=ttl,
            create_time_ns=_int(d, "CreateTime", what), hash=_s(d, "Hash", what),
            create_index=_int(d, "CreateIndex", what), modify_index=_int(d, "ModifyIndex", what),
        )  # fmt: skip
        if ttl < 0:
            raise ACLObjectError(f"Token Expiration TTL '{ttl}ns' should be > 0")
        if ttl and exp is not None:
            raise ACLObjectError("Token Expiration TTL and Expiration Time cannot both be set")
        if row.local:
            for si in sis:
                if si.datacenters:
                    raise ACLObjectError(
                        f'Service identity "{si.service_name}" cannot specify a list of datacenters on a local token'
                    )
        return row


# ------------------------------------------------------------------------------------------ policies


@dataclass(frozen=True, slots=True)
class PolicyRow:
    """An ACL policy: its Rules text as written, and the rules parsed once, when it was validated."""

    id: str
    name: str
    description: str = ""
    rules: str = ""
    datacenters: tuple[str, ...] = ()
    parsed: PolicyRules = field(default_factory=PolicyRules, compare=False)
    hash: str = ""
    create_index: int = 0
    modify_index: int = 0

    def with_hash(self) -> PolicyRow:
        return replace(self, hash=_hash({"Name": self.name, "Description": self.description,
                                         "Rules": self.rules, "Datacenters": list(self.datacenters)}))  # fmt: skip

    def to_wire(self) -> dict[str, Any]:
        return {"ID": self.id, "Name": self.name, "Description": self.description, "Rules": self.rules,
                "Datacenters": list(self.datacenters), "Hash": self.hash, "CreateIndex": self.create_index,
                "ModifyIndex": self.modify_index}  # fmt: skip

    @classmethod
    def from_wire(cls, d: Any, what: str = "Policy") -> PolicyRow:
        """Decode, validate the name (Consul's texts) and parse the rules: ``Failed to parse ACL rules``."""
        if not isinstance(d, Mapping):
            raise ACLObjectError(f"{what} decoding failed: the policy must be an object")
        name = _s(d, "Name", what)
        if name == "":
            raise ACLObjectError("Invalid Policy: no Name is set")
        pid = _s(d, "ID", what)
        builtin = BUILTIN_POLICIES.get(pid)
        if not is_valid_policy_name(name) and (builtin is None or builtin.name != name):
            raise ACLObjectError("Invalid Policy: invalid Name. Only alphanumeric characters, '-' and '_' are allowed")
        if pid and not is_uuid(pid):
            raise ACLObjectError("Policy ID invalid UUID")
        rules = _s(d, "Rules", what)
        try:
            parsed = parse_rules(rules)
        except RulesError as exc:
            raise ACLObjectError(str(exc)) from None
        return cls(pid, name, _s(d, "Description", what), rules, _strs(d, "Datacenters", what), parsed,
                   _s(d, "Hash", what), _int(d, "CreateIndex", what), _int(d, "ModifyIndex", what))  # fmt: skip


# --------------------------------------------------------------------------------------------- roles


@dataclass(frozen=True, slots=True)
class RoleRow:
    """An ACL role: a named bundle of policy links and identities that tokens link to."""

    id: str
    name: str
    description: str = ""
    policies: tuple[Link, ...] = ()
    service_identities: tuple[ServiceIdentity, ...] = ()
    node_identities: tuple[NodeIdentity, ...] = ()
    templated_policies: tuple[TemplatedPolicy, ...] = ()
    hash: str = ""
    create_index: int = 0
    modify_index: int = 0

    def policy_ids(self) -> tuple[str, ...]:
        return tuple(i for i, _ in self.policies)

    def with_hash(self) -> RoleRow:
        doc: dict[str, Any] = {"Name": self.name, "Description": self.description,
                               "Policies": list(self.policy_ids())}  # fmt: skip
        _identities_wire(self.service_identities, self.node_identities, self.templated_policies, doc)
        return replace(self, hash=_hash(doc))

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ID": self.id, "Name": self.name, "Description": self.description,
                               "Policies": [{"ID": i, "Name": n} for i, n in self.policies], "Hash": self.hash,
                               "CreateIndex": self.create_index, "ModifyIndex": self.modify_index}  # fmt: skip
        _identities_wire(self.service_identities, self.node_identities, self.templated_policies, out)
        return out

    @classmethod
    def from_wire(cls, d: Any, what: str = "Role") -> RoleRow:
        if not isinstance(d, Mapping):
            raise ACLObjectError(f"{what} decoding failed: the role must be an object")
        name = _s(d, "Name", what)
        if name == "":
            raise ACLObjectError("Invalid Role: no Name is set")
        if not is_valid_role_name(name):
            raise ACLObjectError("Invalid Role: invalid Name. Only alphanumeric characters, '-' and '_' are allowed")
        rid = _s(d, "ID", what)
        if rid and not is_uuid(rid):
            raise ACLObjectError("Role ID invalid UUID")
        sis, nis, tps = _identities(d, what, "role")
        return cls(rid, name, _s(d, "Description", what), _links(d, "Policies", what), sis, nis, tps,
                   _s(d, "Hash", what), _int(d, "CreateIndex", what), _int(d, "ModifyIndex", what))  # fmt: skip


# ------------------------------------------------------------------------------------- auth methods


def _ttl_ns(value: Any) -> int:
    """``MaxTokenTTL`` as Consul's HTTP decoder takes a duration: a string ("10m") or nanoseconds."""
    if value in (None, "", 0):
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value == value and abs(value) != float("inf"):
        return int(value)
    if isinstance(value, str):
        try:
            return parse_duration_ns(value)
        except ValueError as exc:
            raise AuthMethodError(f"Request decode failed: {exc}") from None
    raise AuthMethodError("Request decode failed: MaxTokenTTL must be a duration")


@dataclass(frozen=True, slots=True)
class AuthMethod:
    """An auth method as the tables hold it and as a login uses it: checked once, when it is built
    (``from_wire``), so its ``config`` is the ``jwt`` method's parsed ``JWTConfig`` (keys already loaded)
    and a stored method always builds a validator."""

    name: str
    type: str
    config: JWTConfig
    display_name: str = ""
    description: str = ""
    max_token_ttl_ns: int = 0
    token_locality: str = ""
    create_index: int = 0
    modify_index: int = 0

    @classmethod
    def from_wire(cls, obj: Any, *, primary: bool = True) -> AuthMethod:
        """Consul's ``AuthMethodSet`` checks on an ``ACLAuthMethod`` JSON object, in its order and with its
        texts (agent/consul/acl_endpoint.go), then the type's config check (``JWTConfig.from_wire``).

        Whether the method exists already (an update may leave ``Type`` out, and may not change it) is the
        tables' question: ``ACLTable.acl_auth_method_type`` answers it before this is called."""
        if not isinstance(obj, Mapping):
            raise AuthMethodError("Request decode failed: the auth method must be an object")
        name = obj.get("Name") or ""
        if not isinstance(name, str) or name == "":
            raise AuthMethodError("Invalid Auth Method: no Name is set")
        if _AUTH_METHOD_NAME.fullmatch(name) is None:
            raise AuthMethodError(
                "Invalid Auth Method: invalid Name. Only alphanumeric characters, '-' and '_' are allowed"
            )
        kind = obj.get("Type") or ""
        if kind not in AUTH_METHOD_TYPES:
            raise AuthMethodError(f"Invalid Auth Method: Type should be one of: [{' '.join(AUTH_METHOD_TYPES)}]")
        ttl = _ttl_ns(obj.get("MaxTokenTTL"))
        if ttl:
            if ttl > MAX_TOKEN_TTL_NS:
                raise AuthMethodError(f"MaxTokenTTL {format_duration_ns(ttl)} cannot be more than "
                                      f"{format_duration_ns(MAX_TOKEN_TTL_NS)}")  # fmt: skip
            if ttl < MIN_TOKEN_TTL_NS:
                raise AuthMethodError(f"MaxTokenTTL {format_duration_ns(ttl)} cannot be less than "
                                      f"{format_duration_ns(MIN_TOKEN_TTL_NS)}")  # fmt: skip
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
        config = JWTConfig.from_wire(obj.get("Config"))
        return cls(name, kind, config, display, description, ttl, locality,
                   _int(obj, "CreateIndex", "AuthMethod"), _int(obj, "ModifyIndex", "AuthMethod"))  # fmt: skip

    def to_wire(self) -> dict[str, Any]:
        """The stored form (commands, snapshots): ``Config`` exactly as it was written."""
        return {"Name": self.name, "Type": self.type, "DisplayName": self.display_name,
                "Description": self.description, "MaxTokenTTL": self.max_token_ttl_ns,
                "TokenLocality": self.token_locality, "Config": dict(self.config.wire),
                "CreateIndex": self.create_index, "ModifyIndex": self.modify_index}  # fmt: skip

    def validator(self) -> JWTValidator:
        return JWTValidator(self.config)

    def blank_identity(self) -> Identity:
        """What binding rules of this method are checked against when written (Consul's ``NewIdentity``)."""
        return self.validator().blank_identity()
