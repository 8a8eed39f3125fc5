"""Connect intentions: model, validation, Consul's precedence, matching, and the authorize decision.

Pure module (no IO, no clock): the HTTP API, the replicated store and the agent's authorize endpoint
wire it in. Behaviour follows Consul (agent/structs/intention.go, config_entry_intentions.go,
agent/agent_endpoint.go AgentConnectAuthorize):

- Precedence (computeIntentionPrecedence): a side counts 2 if exact, 1 if ``ns/*``, 0 if ``*/*``;
  the destination's count picks the band 9/6/3 and the source's count subtracts ``2 - count``::

      source \\ destination   exact  ns/*  */*
      exact                   9      6     3
      ns/*                    8      5     2
      */*                     7      4     1

  With one namespace (CE): ``web => db`` 9, ``* => db`` 8, ``web => *`` 6, ``* => *`` 5.
- For a (source, destination) pair the single highest-precedence matching intention decides. The nine
  patterns that can match a pair have nine distinct precedences, so a tie is only possible between
  duplicates of one pattern; those are settled deny-first (fail closed), then by ID.
- An intention with L7 ``Permissions`` is a deny at L4 ("Matched L7 intention"), as Consul's authorize
  endpoint treats it; no match falls to the default (ACL default policy, or ``default_intention_policy``).
- Names are matched case-insensitively: Consul's state store indexes service names case-folded, and a
  case-sensitive matcher would let ``Web`` slip past a deny written for ``web``.
- Anything that cannot be parsed (a bad name, a non-service SPIFFE ID, a foreign partition) is a deny.

``decide`` is O(1): an ``IntentionIndex`` keeps the winning intention per exact (source, destination)
pattern, and a decision is at most nine dictionary lookups.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

from ca.spiffe import InvalidSpiffeURI, ServiceIdentity, parse_uri
from registry.gocompat import GO_ZERO_TIME, format_go_time, go_quote, parse_go_time

__all__ = [
    "ACTION_ALLOW",
    "ACTION_DENY",
    "DEFAULT_NAMESPACE",
    "HTTP_METHODS",
    "Decision",
    "Intention",
    "IntentionError",
    "IntentionIndex",
    "REASON_DEFAULT_ACL",
    "REASON_DEFAULT_INTENTION_POLICY",
    "ServiceName",
    "WILDCARD",
    "build_index",
    "compute_precedence",
    "config_entries_to_intentions",
    "decide",
    "decide_uri",
    "default_decision",
    "intentions_to_config_entries",
    "match",
    "normalize_permissions",
    "parse_service_name",
    "permission_errors",
    "sort_intentions",
    "validate_config_entry",
]

WILDCARD = "*"
DEFAULT_NAMESPACE = "default"
ACTION_ALLOW = "allow"
ACTION_DENY = "deny"
SOURCE_TYPE_CONSUL = "consul"
KIND_SERVICE_INTENTIONS = "service-intentions"
# Consul's limits on opaque values (agent/structs: metaMaxKeyPairs, metaKeyMaxLength, metaValueMaxLength).
META_MAX_KEY_PAIRS = 64
META_KEY_MAX_LENGTH = 128
META_VALUE_MAX_LENGTH = 512
MAX_NAME_LENGTH = 256

REASON_DEFAULT_ACL = "Default behavior configured by ACLs"
REASON_DEFAULT_INTENTION_POLICY = "Default intention policy"

# The same value alphabet as SPIFFE path segments (ca.spiffe): a name that could not appear in a
# certificate could never match a connection, so it is refused at write time instead.
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


class IntentionError(ValueError):
    """Invalid intention or config entry. ``errors`` lists every problem, in Consul's words."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        if len(self.errors) == 1:
            text = self.errors[0]
        else:
            text = f"{len(self.errors)} errors occurred: " + "; ".join(self.errors)
        super().__init__(text)


class ServiceName(NamedTuple):
    namespace: str
    name: str


# --------------------------------------------------------------------------------------------------
# Times (Go's RFC 3339 JSON form)


def _format_time(t: datetime | None) -> str:
    return GO_ZERO_TIME if t is None else format_go_time(t)


def _parse_time(value: Any, what: str) -> datetime | None:
    if value is None or value == "" or value == GO_ZERO_TIME:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise IntentionError([f"{what} must be timezone-aware"])
        return value.astimezone(UTC)
    problem = IntentionError([f"{what} must be an RFC 3339 time, got {value!r}"])
    if not isinstance(value, str):
        raise problem
    try:
        return parse_go_time(value)
    except ValueError:
        raise problem from None


# --------------------------------------------------------------------------------------------------
# Model


def _count_exact(ns: str, name: str) -> int:
    # An exact name cannot follow a wildcard namespace, so "*" namespace means "*/*".
    if ns == WILDCARD:
        return 0
    if name == WILDCARD:
        return 1
    return 2


_BANDS = {2: 9, 1: 6, 0: 3}


def compute_precedence(source_ns: str, source_name: str, destination_ns: str, destination_name: str) -> int:
    """Consul's computeIntentionPrecedence, namespace-aware (see the module docstring table)."""
    band = _BANDS[_count_exact(destination_ns, destination_name)]
    return band - (2 - _count_exact(source_ns, source_name))


def _name_errors(field_name: str, value: str, *, is_ns: bool) -> list[str]:
    if not value:
        return [f"{field_name} must be set"]
    if value == WILDCARD:
        return []
    if WILDCARD in value:
        return [f"{field_name}: wildcard character '*' cannot be used with partial values"]
    if len(value) > MAX_NAME_LENGTH or not _NAME_RE.fullmatch(value):
        what = "namespace" if is_ns else "name"
        return [
            f"{field_name}: invalid {what} {value!r}: use letters, digits, '.', '_' and '-' "
            f"(at most {MAX_NAME_LENGTH} characters)"
        ]
    return []


@dataclass(frozen=True, slots=True)
class Intention:
    """One source => destination rule, in Consul's legacy Intention shape.

    ``action`` is ``"allow"`` or ``"deny"``, or ``""`` when L7 ``permissions`` are given (kept opaque
    here: at L4 they always mean deny). ``precedence`` is derived, never stored. Construction
    validates and raises IntentionError with every problem found.
    """

    source_name: str
    destination_name: str
    action: str = ACTION_ALLOW
    source_ns: str = DEFAULT_NAMESPACE
    destination_ns: str = DEFAULT_NAMESPACE
    source_type: str = SOURCE_TYPE_CONSUL
    description: str = ""
    meta: Mapping[str, str] = field(default_factory=dict, hash=False)
    permissions: tuple[Mapping[str, Any], ...] = field(default=(), hash=False)
    id: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    create_index: int = 0
    modify_index: int = 0

    def __post_init__(self) -> None:
        # Copy and freeze containers so the value cannot change under an index that holds it.
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))
        object.__setattr__(self, "permissions", tuple(MappingProxyType(dict(p)) for p in self.permissions))
        errors = self.validation_errors()
        if errors:
            raise IntentionError(errors)

    def validation_errors(self) -> list[str]:
        errs: list[str] = []
        errs += _name_errors("SourceNS", self.source_ns, is_ns=True)
        errs += _name_errors("SourceName", self.source_name, is_ns=False)
        errs += _name_errors("DestinationNS", self.destination_ns, is_ns=True)
        errs += _name_errors("DestinationName", self.destination_name, is_ns=False)
        if self.source_ns == WILDCARD and self.source_name not in (WILDCARD, ""):
            errs.append("SourceName: exact value cannot follow wildcard namespace")
        if self.destination_ns == WILDCARD and self.destination_name not in (WILDCARD, ""):
            errs.append("DestinationName: exact value cannot follow wildcard namespace")
        if len(self.description) > META_VALUE_MAX_LENGTH:
            errs.append(f"Description exceeds maximum length {META_VALUE_MAX_LENGTH}")
        if len(self.meta) > META_MAX_KEY_PAIRS:
            errs.append(f"Meta exceeds maximum element count {META_MAX_KEY_PAIRS}")
        for k, v in self.meta.items():
            if not isinstance(k, str) or not isinstance(v, str):
                errs.append("Meta keys and values must be strings")
                continue
            if len(k) > META_KEY_MAX_LENGTH:
                errs.append(f"Meta key {k!r} exceeds maximum length {META_KEY_MAX_LENGTH}")
            if len(v) > META_VALUE_MAX_LENGTH:
                errs.append(f"Meta value for key {k!r} exceeds maximum length {META_VALUE_MAX_LENGTH}")
        if self.permissions:
            if self.action:
                errs.append("Action must be omitted if Permissions are specified")
            if self.destination_ns == WILDCARD or self.destination_name == WILDCARD:
                errs.append("Permissions cannot be specified on intentions with wildcarded destinations")
        elif self.action not in (ACTION_ALLOW, ACTION_DENY):
            errs.append("Action must be set to 'allow' or 'deny'")
        if self.source_type != SOURCE_TYPE_CONSUL:
            errs.append("SourceType must be set to 'consul'")
        return errs

    @property
    def precedence(self) -> int:
        return compute_precedence(self.source_ns, self.source_name, self.destination_ns, self.destination_name)

    @property
    def allows(self) -> bool:
        """What this intention means for an L4 connection: only a plain allow allows."""
        return not self.permissions and self.action == ACTION_ALLOW

    def match_key(self) -> tuple[str, str, str, str]:
        return (
            self.source_ns.lower(),
            self.source_name.lower(),
            self.destination_ns.lower(),
            self.destination_name.lower(),
        )

    def __str__(self) -> str:
        # Consul's Intention.String() as seen in authorize reasons:
        # "default/web => default/db (Precedence: 9, Action: ALLOW)".
        what = f"Permissions: {len(self.permissions)}" if self.permissions else f"Action: {self.action.upper()}"
        return (
            f"{self.source_ns}/{self.source_name} => {self.destination_ns}/{self.destination_name} "
            f"(Precedence: {self.precedence}, {what})"
        )

    # ------------------------------------------------------------------ JSON (Consul's Intention shape)

    def to_api_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.id:
            out["ID"] = self.id
        out.update(
            {
                "Description": self.description,
                "SourceNS": self.source_ns,
                "SourceName": self.source_name,
                "DestinationNS": self.destination_ns,
                "DestinationName": self.destination_name,
                "SourceType": self.source_type,
                "Action": self.action,
            }
        )
        if self.permissions:
            out["Permissions"] = [dict(p) for p in self.permissions]
        out.update(
            {
                "Meta": dict(self.meta),
                "Precedence": self.precedence,
                "CreatedAt": _format_time(self.created_at),
                "UpdatedAt": _format_time(self.updated_at),
                "CreateIndex": self.create_index,
                "ModifyIndex": self.modify_index,
            }
        )
        return out

    @classmethod
    def from_api_dict(cls, data: Mapping[str, Any]) -> Intention:
        """Parse Consul's Intention JSON. Keys match case-insensitively (as Go's decoder does);
        empty namespaces become "default", an empty SourceType "consul"; Precedence is ignored
        (always recomputed)."""
        if not isinstance(data, Mapping):
            raise IntentionError(["intention must be a JSON object"])
        d = {str(k).lower(): v for k, v in data.items()}

        def text(key: str, default: str = "") -> str:
            v = d.get(key.lower(), default)
            if v is None:
                return default
            if not isinstance(v, str):
                raise IntentionError([f"{key} must be a string"])
            return v

        meta = d.get("meta") or {}
        perms = d.get("permissions") or []
        if not isinstance(meta, Mapping):
            raise IntentionError(["Meta must be an object of strings"])
        if not isinstance(perms, list) or not all(isinstance(p, Mapping) for p in perms):
            raise IntentionError(["Permissions must be a list of objects"])
        return cls(
            source_name=text("SourceName"),
            destination_name=text("DestinationName"),
            action=text("Action"),
            source_ns=text("SourceNS") or DEFAULT_NAMESPACE,
            destination_ns=text("DestinationNS") or DEFAULT_NAMESPACE,
            source_type=text("SourceType") or SOURCE_TYPE_CONSUL,
            description=text("Description"),
            meta=meta,
            permissions=tuple(perms),
            id=text("ID"),
            created_at=_parse_time(d.get("createdat"), "CreatedAt"),
            updated_at=_parse_time(d.get("updatedat"), "UpdatedAt"),
            create_index=_index(d.get("createindex"), "CreateIndex"),
            modify_index=_index(d.get("modifyindex"), "ModifyIndex"),
        )


def _index(v: Any, what: str) -> int:
    if v is None:
        return 0
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise IntentionError([f"{what} must be a non-negative integer"])
    return v


def _order_key(ixn: Intention) -> tuple[Any, ...]:
    # Consul's IntentionPrecedenceSorter (precedence desc, then SrcNS, Src, DstNS, Dst), extended into
    # a total order so the winner among exact duplicates never depends on input order: plain deny,
    # then L7, then allow (fail closed), then ID and the remaining fields.
    verdict = 2 if ixn.allows else (1 if ixn.permissions else 0)
    return (
        -ixn.precedence,
        ixn.source_ns,
        ixn.source_name,
        ixn.destination_ns,
        ixn.destination_name,
        verdict,
        ixn.id,
        ixn.description,
        json.dumps([dict(ixn.meta), [dict(p) for p in ixn.permissions]], sort_keys=True, default=str),
        ixn.create_index,
        ixn.modify_index,
    )


def sort_intentions(intentions: Iterable[Intention]) -> list[Intention]:
    """Intentions in evaluation order (highest precedence first), as Consul lists and matches them."""
    return sorted(intentions, key=_order_key)


# --------------------------------------------------------------------------------------------------
# Names


def parse_service_name(value: str | ServiceName | ServiceIdentity, *, allow_wildcard: bool = False) -> ServiceName:
    """``"name"`` or ``"ns/name"`` (at most one '/', Consul's match syntax), a ServiceName, or a
    ServiceIdentity (default partition only). Raises IntentionError for anything else."""
    if isinstance(value, ServiceIdentity):
        if value.partition != "default":
            raise IntentionError([f"partition {value.partition!r} is not supported: only 'default' is"])
        ns, name = value.namespace, value.service
    elif isinstance(value, ServiceName):
        ns, name = value
    elif isinstance(value, str):
        ns, sep, name = value.partition("/")
        if not sep:
            ns, name = DEFAULT_NAMESPACE, value
        elif "/" in name:
            raise IntentionError([f"invalid service name {value!r}: at most one '/' is allowed"])
    else:
        raise IntentionError([f"invalid service name {value!r}"])
    errs = _name_errors("namespace", ns, is_ns=True) + _name_errors("name", name, is_ns=False)
    if not allow_wildcard and WILDCARD in (ns, name):
        errs.append("a wildcard cannot name a connecting or target service")
    if ns == WILDCARD and name != WILDCARD:
        errs.append("name: exact value cannot follow wildcard namespace")
    if errs:
        raise IntentionError(errs)
    return ServiceName(ns, name)


# --------------------------------------------------------------------------------------------------
# Index, match and decide


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one connection. ``matched`` is the deciding intention, None for the default."""

    allowed: bool
    reason: str
    matched: Intention | None = None


def _decision_for(ixn: Intention) -> Decision:
    if ixn.permissions:
        return Decision(False, f"Matched L7 intention: {ixn}", ixn)
    return Decision(ixn.action == ACTION_ALLOW, f"Matched L4 intention: {ixn}", ixn)


class IntentionIndex:
    """An immutable index over a set of valid intentions, built once per store change.

    Iterating yields the intentions in evaluation order.
    """

    __slots__ = ("_by_destination", "_by_source", "_decisions", "_ordered")

    def __init__(self, intentions: Iterable[Intention]) -> None:
        ordered = sort_intentions(intentions)
        for ixn in ordered:
            if not isinstance(ixn, Intention):
                raise TypeError(f"not an Intention: {ixn!r}")
        self._ordered: tuple[Intention, ...] = tuple(ordered)
        decisions: dict[tuple[str, str, str, str], Decision] = {}
        by_dst: dict[tuple[str, str], list[Intention]] = {}
        by_src: dict[tuple[str, str], list[Intention]] = {}
        for ixn in self._ordered:
            key = ixn.match_key()
            current = decisions.get(key)
            # Same pattern twice (only possible via case variants or duplicate imports): a deny wins.
            if current is None or (current.allowed and not ixn.allows):
                decisions[key] = _decision_for(ixn)
            by_dst.setdefault((key[2], key[3]), []).append(ixn)
            by_src.setdefault((key[0], key[1]), []).append(ixn)
        self._decisions = decisions
        self._by_destination = {k: tuple(v) for k, v in by_dst.items()}
        self._by_source = {k: tuple(v) for k, v in by_src.items()}

    def __len__(self) -> int:
        return len(self._ordered)

    def __iter__(self) -> Iterator[Intention]:
        return iter(self._ordered)

    def match(self, by: Literal["source", "destination"], name: ServiceName) -> list[Intention]:
        table = {"source": self._by_source, "destination": self._by_destination}.get(by)
        if table is None:
            raise IntentionError(["'by' parameter must be one of 'source' or 'destination'"])
        ns, svc = name.namespace.lower(), name.name.lower()
        keys = dict.fromkeys([(ns, svc), (ns, WILDCARD), (WILDCARD, WILDCARD)])
        found: list[Intention] = []
        for k in keys:
            found.extend(table.get(k, ()))
        return sort_intentions(found)

    def lookup(self, source: ServiceName, destination: ServiceName) -> Decision | None:
        """The deciding intention's Decision for an exact pair, or None if nothing matches."""
        sns, sname = source.namespace.lower(), source.name.lower()
        dns, dname = destination.namespace.lower(), destination.name.lower()
        get = self._decisions.get
        # Destination patterns outer, source inner: exactly precedence 9, 8, 7, ... 1.
        for d_ns, d_name in ((dns, dname), (dns, WILDCARD), (WILDCARD, WILDCARD)):
            for s_ns, s_name in ((sns, sname), (sns, WILDCARD), (WILDCARD, WILDCARD)):
                hit = get((s_ns, s_name, d_ns, d_name))
                if hit is not None:
                    return hit
        return None


def build_index(intentions: Iterable[Intention]) -> IntentionIndex:
    return IntentionIndex(intentions)


def match(
    intentions: IntentionIndex | Iterable[Intention],
    by: Literal["source", "destination"],
    name: str | ServiceName,
) -> list[Intention]:
    """Intentions whose ``by`` side matches ``name`` (exact, ``ns/*`` or ``*/*``), in evaluation order
    (Consul's /v1/connect/intentions/match)."""
    index = intentions if isinstance(intentions, IntentionIndex) else IntentionIndex(intentions)
    return index.match(by, parse_service_name(name, allow_wildcard=True))


def default_decision(default_allow: bool, default_reason: str = REASON_DEFAULT_ACL) -> Decision:
    return Decision(bool(default_allow), default_reason, None)


def decide(
    index: IntentionIndex,
    source: str | ServiceName | ServiceIdentity,
    destination: str | ServiceName | ServiceIdentity,
    default_allow: bool,
    *,
    default_reason: str = REASON_DEFAULT_ACL,
) -> Decision:
    """May ``source`` connect to ``destination``?

    The highest-precedence matching intention decides (L7 intentions deny); with no match the
    answer is ``default_allow`` with ``default_reason`` (pass REASON_DEFAULT_INTENTION_POLICY when
    the agent's default_intention_policy is set). A source or destination that does not parse as an
    exact service name is denied, whatever the default.
    """
    try:
        src = parse_service_name(source)
    except IntentionError as err:
        return Decision(False, f"Invalid source service: {err}", None)
    try:
        dst = parse_service_name(destination)
    except IntentionError as err:
        return Decision(False, f"Invalid destination service: {err}", None)
    hit = index.lookup(src, dst)
    if hit is not None:
        return hit
    return Decision(bool(default_allow), default_reason, None)


def decide_uri(
    index: IntentionIndex,
    client_cert_uri: str,
    target: str | ServiceName,
    default_allow: bool,
    *,
    default_reason: str = REASON_DEFAULT_ACL,
) -> Decision:
    """The authorize endpoint's decision for a client certificate URI and a target service. The URI
    must be a canonical SPIFFE service identity (Consul's errors: "ClientCertURI not a valid Connect
    identifier" / "... not a valid Service identifier"); as in Consul, its trust domain is not checked
    here: the TLS handshake has already tied the certificate to a trusted root."""
    try:
        ident = parse_uri(client_cert_uri)
    except InvalidSpiffeURI:
        return Decision(False, "ClientCertURI not a valid Connect identifier", None)
    if not isinstance(ident, ServiceIdentity):
        return Decision(False, "ClientCertURI not a valid Service identifier", None)
    return decide(index, ident, target, default_allow, default_reason=default_reason)


# --------------------------------------------------------------------------------------------------
# service-intentions config entries <-> legacy intention list


def _ns_fields(ns: str) -> dict[str, str]:
    # CE omits namespaces from JSON; anything other than "default" has to be spelled out.
    return {} if ns == DEFAULT_NAMESPACE else {"Namespace": ns}


def intentions_to_config_entries(intentions: Iterable[Intention]) -> list[dict[str, Any]]:
    """Group intentions into ``service-intentions`` config entries, one per destination, as Consul's
    MigrateIntentions does: legacy fields (ID, Meta, CreatedAt, UpdatedAt) go to the source's
    LegacyID / LegacyMeta / LegacyCreateTime / LegacyUpdateTime; Meta of intentions without an ID
    is the entry's Meta (they must agree). Sources are in precedence order; entries by (ns, name)."""
    groups: dict[tuple[str, str], list[Intention]] = {}
    for ixn in intentions:
        groups.setdefault((ixn.destination_ns, ixn.destination_name), []).append(ixn)
    entries: list[dict[str, Any]] = []
    for (dns, dname), members in sorted(groups.items()):
        entry_meta: dict[str, str] | None = None
        sources: list[dict[str, Any]] = []
        seen: set[tuple[str, str]] = set()
        for ixn in sorted(members, key=_order_key):
            key = (ixn.source_ns.lower(), ixn.source_name.lower())
            if key in seen:
                raise IntentionError([f"destination {dns}/{dname} has source {ixn.source_ns}/{ixn.source_name} more than once"])
            seen.add(key)
            src: dict[str, Any] = {"Name": ixn.source_name, **_ns_fields(ixn.source_ns)}
            if ixn.action:
                src["Action"] = ixn.action
            if ixn.permissions:
                src["Permissions"] = [dict(p) for p in ixn.permissions]
            src["Precedence"] = ixn.precedence
            if ixn.id:
                src["LegacyID"] = ixn.id
            src["Type"] = ixn.source_type
            if ixn.description:
                src["Description"] = ixn.description
            if ixn.id:
                if ixn.meta:
                    src["LegacyMeta"] = dict(ixn.meta)
                if ixn.created_at is not None:
                    src["LegacyCreateTime"] = _format_time(ixn.created_at)
                if ixn.updated_at is not None:
                    src["LegacyUpdateTime"] = _format_time(ixn.updated_at)
            else:
                if entry_meta is not None and dict(ixn.meta) != entry_meta:
                    raise IntentionError([f"intentions for destination {dns}/{dname} carry different Meta"])
                entry_meta = dict(ixn.meta)
            sources.append(src)
        entry: dict[str, Any] = {"Kind": KIND_SERVICE_INTENTIONS, "Name": dname, **_ns_fields(dns), "Sources": sources}
        if entry_meta:
            entry["Meta"] = entry_meta
        entry["CreateIndex"] = min(i.create_index for i in members)
        entry["ModifyIndex"] = max(i.modify_index for i in members)
        entries.append(entry)
    return entries


# Consul's isValidHTTPMethod: the verbs Go's net/http names.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE"})


def _field(data: Mapping[str, Any], key: str) -> Any:
    """A permission field the way Consul decodes one: any case, with or without underscores
    (``PathPrefix``, ``path_prefix``)."""
    want = key.lower()
    for k, v in data.items():
        if str(k).lower().replace("_", "") == want:
            return v
    return None


def normalize_permissions(perms: Sequence[Any]) -> list[Any]:
    """Consul's normalize() for L7 permissions: each ``HTTP.Methods`` entry upper-cased (copies; the
    caller's objects are left alone), before validation sees them."""
    out: list[Any] = []
    for perm in perms:
        http = _field(perm, "HTTP") if isinstance(perm, Mapping) else None
        methods = _field(http, "Methods") if isinstance(http, Mapping) else None
        if not isinstance(methods, list):
            out.append(perm)
            continue
        key = next(k for k in http if str(k).lower().replace("_", "") == "methods")
        new_http = {**http, key: [m.upper() if isinstance(m, str) else m for m in methods]}
        hkey = next(k for k in perm if str(k).lower().replace("_", "") == "http")
        out.append({**perm, hkey: new_http})
    return out


def permission_errors(perms: Sequence[Any], where: str) -> list[str]:
    """The first problem with a source's L7 ``Permissions`` (``where`` is ``Sources[i]``), in Consul's
    words (ServiceIntentionsConfigEntry.validate stops at the first): an Action of allow or deny, an
    ``HTTP`` section that matches something, paths starting with "/", at most one of
    PathExact/PathPrefix/PathRegex, header matchers with a Name and exactly one of
    Present/Exact/Prefix/Suffix/Regex, and known, distinct methods (upper-cased first)."""
    for j, perm in enumerate(perms):
        if not isinstance(perm, Mapping):
            return [f"{where}.Permissions must be a list of objects"]
        if _field(perm, "Action") not in (ACTION_ALLOW, ACTION_DENY):
            return [f"{where}.Permissions[{j}].Action must be set to 'allow' or 'deny'"]
        prefix = f"{where}.Permissions[{j}].HTTP"
        http = _field(perm, "HTTP")
        if not http:
            return [f"{prefix} is required"]
        if not isinstance(http, Mapping):
            return [f"{prefix} must be an object"]
        path_parts = 0
        for kind in ("PathExact", "PathPrefix"):
            value = _field(http, kind)
            if value:
                path_parts += 1
                if not str(value).startswith("/"):
                    return [f"{prefix}.{kind} doesn't start with '/': {go_quote(str(value))}"]
        if _field(http, "PathRegex"):
            path_parts += 1
        if path_parts > 1:
            return [f"{prefix} should only contain at most one of PathExact, PathPrefix, or PathRegex"]
        parts = path_parts
        headers = _field(http, "Header") or []
        for k, hdr in enumerate(headers if isinstance(headers, list) else []):
            if not isinstance(hdr, Mapping) or not _field(hdr, "Name"):
                return [f"{prefix}.Header[{k}] missing required Name field"]
            if sum(1 for f in ("Present", "Exact", "Regex", "Prefix", "Suffix") if _field(hdr, f)) != 1:
                return [f"{prefix}.Header[{k}] should only contain one of Present, Exact, Prefix, Suffix, or Regex"]
            parts += 1
        methods = _field(http, "Methods") or []
        if methods:
            found: set[str] = set()
            for m in methods if isinstance(methods, list) else [methods]:
                if not isinstance(m, str) or m not in HTTP_METHODS:
                    return [f"{prefix}.Methods contains an invalid method {go_quote(str(m))}"]
                if m in found:
                    return [f"{prefix}.Methods contains {go_quote(m)} more than once"]
                found.add(m)
            parts += 1
        if parts == 0:
            return [f"{prefix} should not be empty"]
    return []


def validate_config_entry(entry: Mapping[str, Any]) -> None:
    """Check a ``service-intentions`` entry (JSON shape) the way Consul's validate() does for the
    fields modelled here; raises IntentionError listing every problem."""
    errs: list[str] = []
    if not isinstance(entry, Mapping):
        raise IntentionError(["config entry must be a JSON object"])
    if entry.get("Kind", KIND_SERVICE_INTENTIONS) != KIND_SERVICE_INTENTIONS:
        errs.append(f"Kind must be {KIND_SERVICE_INTENTIONS!r}")
    name = entry.get("Name") or ""
    dns = entry.get("Namespace") or DEFAULT_NAMESPACE
    if not name:
        errs.append("Name is required")
    else:
        errs += _name_errors("Name", name, is_ns=False) + _name_errors("Namespace", dns, is_ns=True)
        if dns == WILDCARD and name != WILDCARD:
            errs.append("Name: exact value cannot follow wildcard namespace")
    sources = entry.get("Sources") or []
    if not isinstance(sources, list) or not sources:
        errs.append("At least one source is required")
        sources = []
    seen: set[tuple[str, str]] = set()
    for i, src in enumerate(sources):
        if not isinstance(src, Mapping):
            errs.append(f"Sources[{i}] must be an object")
            continue
        sname = src.get("Name") or ""
        sns = src.get("Namespace") or DEFAULT_NAMESPACE
        if not sname:
            errs.append(f"Sources[{i}].Name is required")
            continue
        for e in _name_errors("Name", sname, is_ns=False) + _name_errors("Namespace", sns, is_ns=True):
            errs.append(f"Sources[{i}].{e}")
        if sns == WILDCARD and sname != WILDCARD:
            errs.append(f"Sources[{i}].Name: exact value cannot follow wildcard namespace")
        perms = src.get("Permissions") or []
        action = src.get("Action") or ""
        if perms and action:
            errs.append(f"Sources[{i}].Action must be omitted if Permissions are specified")
        elif not perms and action not in (ACTION_ALLOW, ACTION_DENY):
            errs.append(f"Sources[{i}].Action must be set to 'allow' or 'deny'")
        if perms and WILDCARD in (name, dns):
            errs.append(f"Sources[{i}].Permissions cannot be specified on intentions with wildcarded destinations")
        if (src.get("Type") or SOURCE_TYPE_CONSUL) != SOURCE_TYPE_CONSUL:
            errs.append(f"Sources[{i}].Type must be set to 'consul'")
        if isinstance(perms, list):
            errs += permission_errors(perms, f"Sources[{i}]")
        if len(src.get("Description") or "") > META_VALUE_MAX_LENGTH:
            errs.append(f"Sources[{i}].Description exceeds maximum length {META_VALUE_MAX_LENGTH}")
        key = (sns.lower(), sname.lower())
        if key in seen:
            errs.append(f"Sources[{i}] defines {sns + '/' + sname!r} more than once")
        seen.add(key)
    if errs:
        raise IntentionError(errs)


def config_entries_to_intentions(entries: Iterable[Mapping[str, Any]]) -> list[Intention]:
    """Flatten ``service-intentions`` entries into legacy intentions (Consul's ToIntention), in
    evaluation order. Each entry is validated first."""
    out: list[Intention] = []
    for entry in entries:
        validate_config_entry(entry)
        dns = entry.get("Namespace") or DEFAULT_NAMESPACE
        entry_meta = entry.get("Meta") or {}
        for src in entry["Sources"]:
            legacy_id = src.get("LegacyID") or ""
            out.append(
                Intention(
                    source_name=src["Name"],
                    destination_name=entry["Name"],
                    action=src.get("Action") or "",
                    source_ns=src.get("Namespace") or DEFAULT_NAMESPACE,
                    destination_ns=dns,
                    source_type=src.get("Type") or SOURCE_TYPE_CONSUL,
                    description=src.get("Description") or "",
                    meta=(src.get("LegacyMeta") or {}) if legacy_id else entry_meta,
                    permissions=tuple(src.get("Permissions") or ()),
                    id=legacy_id,
                    created_at=_parse_time(src.get("LegacyCreateTime"), "LegacyCreateTime"),
                    updated_at=_parse_time(src.get("LegacyUpdateTime"), "LegacyUpdateTime"),
                    create_index=_index(entry.get("CreateIndex"), "CreateIndex"),
                    modify_index=_index(entry.get("ModifyIndex"), "ModifyIndex"),
                )
            )
    return sort_intentions(out)
