"""Prepared queries: the query value, its validation, templates, and selecting and ordering the instances.

Pure: no IO, no clock, no randomness of its own (a shuffle takes the caller's generator), so the HTTP API,
the DNS resolver, the FSM and tests share it. It follows Consul's agent/structs/prepared_query.go (the
value and its JSON), agent/consul/prepared_query_endpoint.go (``parseQuery``: what a create or update is
refused for; ``execute``: the health, tag and metadata filters; ``queryFailover``: which datacenters and
peers are tried), and agent/consul/prepared_query/template.go and walk.go (templates: every string of the
``Service`` block is interpolated with ``${name.full}``, ``${name.prefix}``, ``${name.suffix}``,
``${match(N)}`` and ``${agent.segment}``).

Consul interpolates with HIL; the subset a query template can use is what this module evaluates: a
variable, or ``match(<integer>)``, inside ``${...}``, and ``$${`` for a literal ``${``. Anything else in an
interpolation (another function, arithmetic) is refused when the template is created, as Consul's test
render at compile time refuses what it cannot evaluate.

Distance: Consul sorts instances by network-coordinate round-trip time from ``Near`` (``_agent``: the node
of the agent serving the request). ``order`` takes the distance as a function, so whoever has coordinates
can hand one in; with none, the instances stay in their shuffled order, and (as Consul does whether or not
it could sort) the near node itself is moved to the front.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, MutableSequence, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from registry.filtering.regexp import go_regexp
from registry.gocompat import parse_duration_ns
from registry.structs import HEALTH_CRITICAL, HEALTH_PASSING, Check, Node, Service

__all__ = [
    "NAME_PREFIX_MATCH",
    "REDACTED",
    "FailoverTarget",
    "PreparedQuery",
    "QueryError",
    "ServiceQuery",
    "Template",
    "compile_template",
    "failover_targets",
    "is_uuid",
    "order",
    "select",
]

NAME_PREFIX_MATCH = "name_prefix_match"  # Consul's QueryTemplateTypeNamePrefixMatch, the only template type
REDACTED = "<hidden>"  # Consul's aclfilter.RedactedToken
AGENT_NEAR = "_agent"
IP_NEAR = "_ip"
META_KEY_MAX, META_VALUE_MAX, META_MAX_PAIRS = 128, 512, 64
_META_KEY = re.compile(r"^[a-zA-Z0-9_-]+$")
_UUID = re.compile(r"^[\da-fA-F]{8}-[\da-fA-F]{4}-[\da-fA-F]{4}-[\da-fA-F]{4}-[\da-fA-F]{12}$")


class QueryError(ValueError):
    """A query refused, with Consul's text; ``status`` is the HTTP status Proconsul answers it with (Consul
    answers its RPC refusals with 500; Proconsul answers bad input with 400 and a missing query with 404)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def is_uuid(text: str) -> bool:
    """Consul's isUUID: the prepared-query state store looks an ID up only when the text looks like one."""
    return len(text) == 36 and _UUID.match(text) is not None


# ---------------------------------------------------------------------- the value


@dataclass(frozen=True, slots=True)
class FailoverTarget:
    """Consul's QueryFailoverTarget: a datacenter or a cluster peer to try."""

    peer: str = ""
    datacenter: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"Peer": self.peer, "Datacenter": self.datacenter}


@dataclass(frozen=True, slots=True)
class ServiceQuery:
    """Consul's ServiceQuery. Lists and maps keep Consul's distinction between absent (JSON null) and
    empty, so a query reads back exactly as it was written."""

    service: str = ""
    sameness_group: str = ""
    nearest_n: int = 0
    datacenters: tuple[str, ...] | None = None
    targets: tuple[FailoverTarget, ...] | None = None
    only_passing: bool = False
    ignore_check_ids: tuple[str, ...] | None = None
    near: str = ""
    tags: tuple[str, ...] | None = None
    node_meta: Mapping[str, str] | None = None
    service_meta: Mapping[str, str] | None = None
    connect: bool = False
    peer: str = ""

    def to_json(self) -> dict[str, Any]:
        """Consul's JSON of the struct, fields in its order."""
        return {
            "Service": self.service,
            "SamenessGroup": self.sameness_group,
            "Failover": {
                "NearestN": self.nearest_n,
                "Datacenters": _list(self.datacenters),
                "Targets": None if self.targets is None else [t.to_json() for t in self.targets],
            },
            "OnlyPassing": self.only_passing,
            "IgnoreCheckIDs": _list(self.ignore_check_ids),
            "Near": self.near,
            "Tags": _list(self.tags),
            "NodeMeta": None if self.node_meta is None else dict(self.node_meta),
            "ServiceMeta": None if self.service_meta is None else dict(self.service_meta),
            "Connect": self.connect,
            "Peer": self.peer,
        }


@dataclass(frozen=True, slots=True)
class Template:
    type: str = ""
    regexp: str = ""
    remove_empty_tags: bool = False


@dataclass(frozen=True, slots=True)
class PreparedQuery:
    """Consul's PreparedQuery: what the state store keeps, and (rendered, for a template) what runs."""

    id: str = ""
    name: str = ""
    session: str = ""
    token: str = ""
    template: Template = field(default_factory=Template)
    service: ServiceQuery = field(default_factory=ServiceQuery)
    dns_ttl: str = ""
    create_index: int = 0
    modify_index: int = 0

    @property
    def is_template(self) -> bool:
        return self.template.type != ""

    def acl_prefix(self) -> str | None:
        """Consul's GetACLPrefix: the name ``query`` rules are checked against, or None when no rule
        applies (an unnamed query that is not a template: whoever has its ID may use it)."""
        if self.name or self.is_template:
            return self.name
        return None

    def to_json(self, token: str | None = None) -> dict[str, Any]:
        """Consul's JSON of a query; ``token`` replaces the stored token (the redacted form)."""
        return {
            "ID": self.id,
            "Name": self.name,
            "Session": self.session,
            "Token": self.token if token is None else token,
            "Template": {"Type": self.template.type, "Regexp": self.template.regexp,
                         "RemoveEmptyTags": self.template.remove_empty_tags},
            "Service": self.service.to_json(),
            "DNS": {"TTL": self.dns_ttl},
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }  # fmt: skip

    @classmethod
    def from_json(cls, raw: Any) -> PreparedQuery:
        """A query from a JSON body (field names matched without regard to case, as Go's decoder does) or
        from the log or a snapshot. Raises ``QueryError`` with "Request decode failed: ..." for a value of
        the wrong type; the rules of a valid query are ``validate``'s."""
        d = _obj(raw, "body")
        tpl = _obj(_get(d, "Template"), "Template")
        svc = _obj(_get(d, "Service"), "Service")
        fo = _obj(_get(svc, "Failover"), "Service.Failover")
        raw_targets = _get(fo, "Targets")
        targets: tuple[FailoverTarget, ...] | None = None
        if raw_targets is not None:
            if not isinstance(raw_targets, list):
                raise _decode_error("Service.Failover.Targets", "an array")
            items = []
            for i, t in enumerate(raw_targets):
                td = _obj(t, f"Service.Failover.Targets[{i}]")
                peer = _str(td, "Peer", "Targets.Peer") or _str(td, "PeerName", "Targets.PeerName")
                items.append(FailoverTarget(peer, _str(td, "Datacenter", "Targets.Datacenter")))
            targets = tuple(items)
        dns = _obj(_get(d, "DNS"), "DNS")
        service = ServiceQuery(
            service=_str(svc, "Service", "Service.Service"),
            sameness_group=_str(svc, "SamenessGroup", "Service.SamenessGroup"),
            nearest_n=_int(fo, "NearestN", "Service.Failover.NearestN"),
            datacenters=_strs(fo, "Datacenters", "Service.Failover.Datacenters"),
            targets=targets,
            only_passing=_bool(svc, "OnlyPassing", "Service.OnlyPassing"),
            ignore_check_ids=_strs(svc, "IgnoreCheckIDs", "Service.IgnoreCheckIDs"),
            near=_str(svc, "Near", "Service.Near"),
            tags=_strs(svc, "Tags", "Service.Tags"),
            node_meta=_strmap(svc, "NodeMeta", "Service.NodeMeta"),
            service_meta=_strmap(svc, "ServiceMeta", "Service.ServiceMeta"),
            connect=_bool(svc, "Connect", "Service.Connect"),
            peer=_str(svc, "Peer", "Service.Peer"),
        )
        return cls(
            id=_str(d, "ID", "ID"),
            name=_str(d, "Name", "Name"),
            session=_str(d, "Session", "Session"),
            token=_str(d, "Token", "Token"),
            template=Template(_str(tpl, "Type", "Template.Type"), _str(tpl, "Regexp", "Template.Regexp"),
                              _bool(tpl, "RemoveEmptyTags", "Template.RemoveEmptyTags")),  # fmt: skip
            service=service,
            dns_ttl=_str(dns, "TTL", "DNS.TTL"),
            create_index=_int(d, "CreateIndex", "CreateIndex"),
            modify_index=_int(d, "ModifyIndex", "ModifyIndex"),
        )

    def validate(self) -> None:
        """Consul's parseQuery, for a create or an update: raises ``QueryError`` with its text."""
        try:
            self._validate()
        except QueryError as exc:
            raise QueryError(f"Invalid prepared query: {exc.message}", exc.status) from None
        if self.is_template:
            compile_template(self)

    def _validate(self) -> None:
        if not self.name and not self.is_template and not self.session:
            raise QueryError("Must be bound to a session")
        if self.token == REDACTED:
            raise QueryError(f"Bad Token '{self.token}', it looks like a query definition with a redacted token "
                             "was submitted")  # fmt: skip
        s = self.service
        if not s.service:
            raise QueryError("Must provide a Service name to query")
        if s.nearest_n < 0:
            raise QueryError(f"Bad NearestN '{s.nearest_n}', must be >= 0")
        if (s.nearest_n != 0 or s.datacenters) and s.targets:
            raise QueryError("Targets cannot be populated with NearestN or Datacenters")
        _validate_node_meta(s.node_meta or {})
        if s.sameness_group:
            raise QueryError("sameness groups are an enterprise-only feature")
        if self.dns_ttl:
            try:
                ns = parse_duration_ns(self.dns_ttl)
            except ValueError as exc:
                raise QueryError(f"Bad DNS TTL '{self.dns_ttl}': {exc}") from None
            if ns < 0:
                raise QueryError(f"DNS TTL '{ns}', must be >=0")

    def dns_ttl_seconds(self) -> int | None:
        """The TTL DNS answers carry, in seconds (None: the agent's dns_config decides)."""
        if not self.dns_ttl:
            return None
        try:
            return max(0, parse_duration_ns(self.dns_ttl) // 1_000_000_000)
        except ValueError:
            return None  # Consul logs and ignores a TTL it cannot parse (checked when the query was written)


def _list(v: tuple[str, ...] | None) -> list[str] | None:
    return None if v is None else list(v)


def _validate_node_meta(meta: Mapping[str, str]) -> None:
    """Consul's ValidateNodeMetadata with allowConsulPrefix (a query may filter on consul- keys)."""
    if len(meta) > META_MAX_PAIRS:
        raise QueryError(f"Node metadata cannot contain more than {META_MAX_PAIRS} key/value pairs")
    for k, v in meta.items():
        if not k:
            raise QueryError("Key cannot be blank")
        if not _META_KEY.match(k):
            raise QueryError(f"Key contains invalid characters: {k}")
        if len(k) > META_KEY_MAX:
            raise QueryError(f"Key is too long (limit: {META_KEY_MAX} characters)")
        if len(v) > META_VALUE_MAX:
            raise QueryError(f"Value is too long (limit: {META_VALUE_MAX} characters)")


# ---------------------------------------------------------------------- decoding, as Go's decoder


def _get(d: Mapping[str, Any], name: str) -> Any:
    """The value of field ``name``: the exact spelling first, else any spelling that differs in case only."""
    if name in d:
        return d[name]
    want = name.lower()
    for k, v in d.items():
        if isinstance(k, str) and k.lower() == want:
            return v
    return None


def _typename(v: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "bool"}.get(type(v), "number")


def _decode_error(path: str, want: str) -> QueryError:
    return QueryError(f"Request decode failed: {path}: expected {want}")


def _obj(v: Any, path: str) -> Mapping[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise _decode_error(path, f"a JSON object, got {_typename(v)}")
    return v


def _str(d: Mapping[str, Any], name: str, path: str) -> str:
    v = _get(d, name)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise _decode_error(path, f"a string, got {_typename(v)}")
    return v


def _bool(d: Mapping[str, Any], name: str, path: str) -> bool:
    v = _get(d, name)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise _decode_error(path, f"true or false, got {_typename(v)}")
    return v


def _int(d: Mapping[str, Any], name: str, path: str) -> int:
    v = _get(d, name)
    if v is None:
        return 0
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool) or not -(2**63) <= v < 2**64:
        raise _decode_error(path, "an integer")
    return v


def _strs(d: Mapping[str, Any], name: str, path: str) -> tuple[str, ...] | None:
    v = _get(d, name)
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise _decode_error(path, "an array of strings")
    return tuple(v)


def _strmap(d: Mapping[str, Any], name: str, path: str) -> dict[str, str] | None:
    v = _get(d, name)
    if v is None:
        return None
    if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
        raise _decode_error(path, "an object of strings")
    return dict(v)


# ---------------------------------------------------------------------- templates


@dataclass(frozen=True, slots=True)
class _Var:
    name: str


@dataclass(frozen=True, slots=True)
class _Match:
    index: int


_Piece = str | _Var | _Match
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_MATCH = re.compile(r"^match\s*\(\s*(-?\d+)\s*\)$")
_CALL = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*\(")
VARIABLES = ("name.full", "name.prefix", "name.suffix", "agent.segment")


def _parse(text: str) -> tuple[_Piece, ...]:
    """A string with ``${...}`` interpolations -> its pieces. Raises ValueError (HIL's parse errors)."""
    out: list[_Piece] = []
    buf: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$${", i):
            buf.append("${")
            i += 3
            continue
        if text.startswith("${", i):
            end = text.find("}", i + 2)
            if end < 0:
                raise ValueError(f"1:{i + 3}: expected expression end, got end of string")
            expr = text[i + 2 : end].strip()
            if buf:
                out.append("".join(buf))
                buf = []
            m = _MATCH.match(expr)
            if m is not None:
                out.append(_Match(int(m.group(1))))
            elif _IDENT.match(expr):
                out.append(_Var(expr))
            elif (call := _CALL.match(expr)) is not None and call.group(1) != "match":
                raise ValueError(f"unknown function called: {call.group(1)}")
            else:
                raise ValueError(f"1:{i + 3}: invalid interpolation: {expr!r}")
            i = end + 1
            continue
        buf.append(text[i])
        i += 1
    if buf:
        out.append("".join(buf))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class CompiledTemplate:
    """A template ready to render: the query it came from, each interpolated string's pieces (keyed by
    Consul's walk path, ``.Service``, ``.Tags[0]``, ``.NodeMeta[key]``...), and the compiled Regexp."""

    query: PreparedQuery
    pieces: Mapping[str, tuple[_Piece, ...]]
    regexp: re.Pattern[str] | None

    def render(self, name: str, segment: str = "") -> PreparedQuery:
        """Consul's CompiledTemplate.Render: the query, with every string of its Service block evaluated
        for the name looked up; ``Tags`` stripped of empty strings with ``RemoveEmptyTags``."""
        q = self.query
        groups: list[str] = []
        if self.regexp is not None:
            m = self.regexp.search(name)
            if m is not None:
                groups = [m.group(0), *(g or "" for g in m.groups())]
        variables = {
            "name.full": name,
            "name.prefix": q.name,
            "name.suffix": name[len(q.name) :] if name.startswith(q.name) else name,
            "agent.segment": segment,
        }

        def evaluate(path: str, value: str) -> str:
            pieces = self.pieces.get(path)
            if pieces is None:
                return value
            out = []
            for p in pieces:
                if isinstance(p, str):
                    out.append(p)
                elif isinstance(p, _Match):
                    out.append(groups[p.index] if 0 <= p.index < len(groups) else "")
                elif p.name in variables:
                    out.append(variables[p.name])
                else:
                    raise QueryError(f"Bad evaluation for '{value}' in Service{path}: unknown variable accessed: "
                                     f"{p.name}")  # fmt: skip
            return "".join(out)

        rendered = _walk(q.service.to_json(), evaluate)
        service = PreparedQuery.from_json({"Service": rendered}).service
        if q.template.remove_empty_tags and service.tags is not None:
            service = replace(service, tags=tuple(t for t in service.tags if t))
        return replace(q, service=service)


def compile_template(query: PreparedQuery) -> CompiledTemplate:
    """Consul's prepared_query.Compile: check the type, parse every string of the Service block, compile
    the Regexp, and render once with the template's own name so an error surfaces when it is written.
    Raises ``QueryError`` with Consul's text."""
    if query.template.type != NAME_PREFIX_MATCH:
        raise QueryError(f"Bad Template.Type '{query.template.type}'")
    pieces: dict[str, tuple[_Piece, ...]] = {}

    def parse(path: str, value: str) -> str:
        try:
            parsed = _parse(value)
        except ValueError as exc:
            raise QueryError(f"Bad format '{value}' in Service{path}: {exc}") from None
        if any(not isinstance(p, str) for p in parsed) or "".join(str(p) for p in parsed) != value:
            pieces[path] = parsed  # something to evaluate, or an escaped "$${"
        return value

    _walk(query.service.to_json(), parse)
    regexp = None
    if query.template.regexp:
        try:
            regexp = go_regexp(query.template.regexp)
        except ValueError as exc:
            raise QueryError(f"Bad Regexp: {exc}") from None
    ct = CompiledTemplate(query, pieces, regexp)
    ct.render(query.name)
    return ct


_MAPS = frozenset({"NodeMeta", "ServiceMeta"})


def _walk(value: Any, fn: Callable[[str, str], str], path: str = "") -> Any:
    """Consul's walk over the Service block: every string (in structs, lists and map values), with its
    path; returns the value with each string replaced by what ``fn`` made of it."""
    if isinstance(value, str):
        return fn(path, value)
    if isinstance(value, list):
        return [_walk(v, fn, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if k in _MAPS and isinstance(v, dict):
                out[k] = {mk: _walk(mv, fn, f"{path}.{k}[{mk}]") for mk, mv in v.items()}
            else:
                out[k] = _walk(v, fn, f"{path}.{k}")
        return out
    return value


# ---------------------------------------------------------------------- execution


@dataclass(frozen=True, slots=True)
class Instance:
    """One service instance with its node and every check that bears on its health (Consul's
    CheckServiceNode)."""

    node: Node
    service: Service
    checks: tuple[Check, ...]


def healthy(inst: Instance, only_passing: bool, ignore: frozenset[str]) -> bool:
    """Consul's CheckServiceNodes.Filter: critical checks exclude an instance, and with OnlyPassing so does
    any check that is not passing; checks listed in IgnoreCheckIDs do not count."""
    for c in inst.checks:
        if c.check_id in ignore:
            continue
        if c.status == HEALTH_CRITICAL or (only_passing and c.status != HEALTH_PASSING):
            return False
    return True


def tags_match(svc: Service, tags: Iterable[str]) -> bool:
    """Consul's tagFilter: every tag present and no ``!tag`` present, compared without regard to case."""
    have = {t.lower() for t in svc.tags}
    for tag in tags:
        t = tag.lower()
        if t.startswith("!"):
            if t[1:] in have:
                return False
        elif t not in have:
            return False
    return True


def meta_match(meta: Mapping[str, str], want: Mapping[str, str]) -> bool:
    """Consul's SatisfiesMetaFilters: each wanted key present with the wanted value."""
    return all(meta.get(k) == v for k, v in want.items())


def select(query: ServiceQuery, instances: Iterable[Instance]) -> list[Instance]:
    """Consul's PreparedQuery.execute filters, in its order: health, node metadata, service metadata, tags."""
    ignore = frozenset(query.ignore_check_ids or ())
    node_meta, service_meta, tags = query.node_meta or {}, query.service_meta or {}, query.tags or ()
    return [
        i for i in instances
        if healthy(i, query.only_passing, ignore)
        and (not node_meta or meta_match(i.node.meta, node_meta))
        and (not service_meta or meta_match(i.service.meta, service_meta))
        and (not tags or tags_match(i.service, tags))
    ]  # fmt: skip


class Shuffler(Protocol):
    def shuffle(self, x: MutableSequence[Any]) -> None: ...


# Round-trip time in seconds from one node to another, or None when either has no coordinate.
Distance = Callable[[str, str], float | None]


def order(instances: list[Instance], near: str, rng: Shuffler, distance: Distance | None = None) -> list[Instance]:
    """Consul's order of an execution's answer: shuffled; then, when ``near`` names a node, sorted by
    ``distance`` from it (a no-op without coordinates: instances without one keep their shuffled place,
    after those with one); then the near node's own instance, if among the first ten, moved to the front."""
    out = list(instances)
    rng.shuffle(out)
    if not near:
        return out
    if distance is not None:
        measured = [(distance(near, i.node.node), n) for n, i in enumerate(out)]
        if any(d is not None for d, _ in measured):
            keyed = sorted(measured, key=lambda dn: (dn[0] is None, dn[0] or 0.0, dn[1]))
            out = [out[n] for _, n in keyed]
    for n, inst in enumerate(out[:10]):
        if inst.node.node.lower() == near.lower():
            out[0], out[n] = out[n], out[0]
            break
    return out


def failover_targets(query: ServiceQuery, other_datacenters: Sequence[str]) -> list[FailoverTarget]:
    """Consul's queryFailover: the datacenters and peers to try, in order, when the local datacenter has
    no healthy instance. ``other_datacenters`` are the known ones other than ours, nearest first: the first
    NearestN of them, then the listed Datacenters (or Targets) not tried yet. A datacenter nobody knows
    is skipped (not counted); a peer is always tried."""
    known = set(other_datacenters)
    out: list[FailoverTarget] = []
    tried: set[str] = set()
    if query.nearest_n > 0:
        for dc in other_datacenters[: query.nearest_n]:
            out.append(FailoverTarget(datacenter=dc))
            tried.add(dc)
    listed = ([FailoverTarget(datacenter=dc) for dc in query.datacenters] if query.datacenters
              else list(query.targets or ()))  # fmt: skip
    for t in listed:
        if t.datacenter:
            if t.datacenter not in known:
                continue
            if t.datacenter not in tried:
                out.append(t)
                continue
        if t.peer:
            out.append(t)
    return out
