"""Typed commands: every write the replicated state machine knows, as a frozen value.

Consul encodes each write as a typed request struct with a message type (``structs.RegisterRequestType``,
``KVSRequestType``, ... in agent/structs/structs.go) and registers one apply function per type
(agent/consul/fsm/commands_ce.go). We do the same: each command below is built (and validated) once, where
the write originates -- an HTTP body, the agent's local state, a config file, the leader's timers -- and is
encoded once, by the ``Proposer``, which also stamps the time. The FSM decodes it with ``from_wire`` and
hands it to the apply function registered for its class.

The encoded form is the one data directories already hold: a msgpack map with a ``Type`` key and that
type's fields (``to_wire`` / ``from_wire`` map between the two), so existing logs and snapshots replay.
``from_wire`` trusts nothing: a malformed entry raises ``CommandError``, which the FSM returns as the
command's result instead of raising (an exception out of apply would stop a server).

``CommandError`` is the one error a write is refused with, anywhere on its way: it carries the HTTP status
Consul answers with and Consul's text, and the HTTP layer turns it into a response in one place.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

from registry.acl.binding import BindingRule
from registry.acl.errors import ACLObjectError
from registry.acl.objects import (
    AuthMethod,
    PolicyRow,
    RoleRow,
    TokenRow,
    is_uuid,
    reserved,
)
from registry.autopilot import AutopilotConfig, AutopilotConfigError
from registry.coordinate import Coordinate
from registry.events import EventError, UserEvent
from registry.intentions import DEFAULT_NAMESPACE, Intention, IntentionError
from registry.prepared_query import PreparedQuery, QueryError
from registry.sessions import Session, SessionError, session_from_command
from registry.structs import Check, Node, Service

Wire = dict[str, Any]

U64 = 2**64


class CommandError(Exception):
    """A write refused: ``status`` is the HTTP status Consul answers it with, ``message`` Consul's text.

    The FSM returns it as the result of a refused command (and the Raft driver carries it back to a
    forwarding server); ``Proposer.propose`` raises it; the agent raises it for local refusals."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CommandError) and (self.message, self.status) == (other.message, other.status)

    def __hash__(self) -> int:
        return hash((self.message, self.status))

    def __repr__(self) -> str:
        return f"CommandError({self.message!r}, {self.status})"


# ---------------------------------------------------------------------- field checks for decoding


def _str(d: Mapping[str, Any], k: str, default: str = "") -> str:
    v = d.get(k, default)
    if v is None:
        return default
    if not isinstance(v, str):
        raise CommandError(f"{k} must be a string")
    return v


def _strmap(d: Mapping[str, Any], k: str) -> dict[str, str]:
    v = d.get(k) or {}
    if not isinstance(v, dict) or not all(isinstance(a, str) and isinstance(b, str) for a, b in v.items()):
        raise CommandError(f"{k} must be a map of strings")
    return dict(v)


def _u64(d: Mapping[str, Any], k: str) -> int:
    v = d.get(k, 0) or 0
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < U64:
        raise CommandError(f"{k} must be an unsigned 64-bit integer")
    return v


def _index(d: Mapping[str, Any], k: str = "Index") -> int:
    v = d.get(k, 0) or 0
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise CommandError(f"{k} must be a non-negative integer")
    return v


# ---------------------------------------------------------------------- catalog rows <-> wire maps


def node_from(cmd: Mapping[str, Any]) -> Node:
    name = _str(cmd, "Node")
    if not name:
        raise CommandError("Must provide node")
    return Node(
        id=_str(cmd, "ID"),
        node=name,
        address=_str(cmd, "Address"),
        datacenter=_str(cmd, "Datacenter"),
        tagged_addresses=_strmap(cmd, "TaggedAddresses"),
        meta=_strmap(cmd, "NodeMeta"),
    )


def service_from(node: str, d: Any) -> Service:
    """A service in the catalog-command shape (``ID``, ``Service``, ``Tags``, ...) -> its row."""
    if not isinstance(d, dict):
        raise CommandError("Service must be an object")
    name = _str(d, "Service")
    if not name:
        raise CommandError("Must provide service name")
    tags = d.get("Tags") or []
    if not isinstance(tags, list | tuple) or not all(isinstance(t, str) for t in tags):
        raise CommandError("Tags must be a list of strings")
    tagged = d.get("TaggedAddresses") or {}
    if not isinstance(tagged, dict):
        raise CommandError("TaggedAddresses must be a map")
    weights = d.get("Weights") or {"Passing": 1, "Warning": 1}
    port = d.get("Port", 0) or 0
    if not isinstance(port, int) or isinstance(port, bool):
        raise CommandError("Port must be an integer")
    proxy = d.get("Proxy")
    connect = d.get("Connect")
    if proxy is not None and not isinstance(proxy, dict):
        raise CommandError("Proxy must be an object")
    if connect is not None and not isinstance(connect, dict):
        raise CommandError("Connect must be an object")
    try:
        return Service(
            node=node,
            id=_str(d, "ID") or name,
            service=name,
            kind=_str(d, "Kind"),
            tags=tuple(tags),
            address=_str(d, "Address"),
            tagged_addresses={str(k): dict(v) for k, v in tagged.items()},
            meta=_strmap(d, "Meta"),
            port=port,
            weights=(int(weights.get("Passing", 1)), int(weights.get("Warning", 1))),
            enable_tag_override=bool(d.get("EnableTagOverride", False)),
            proxy=proxy,
            connect=connect,
            locality=_locality(d.get("Locality")),
        )
    except (AttributeError, TypeError, ValueError) as exc:  # a malformed Weights or tagged address
        raise CommandError(f"malformed service: {exc}") from None


def _locality(v: Any) -> dict[str, str] | None:
    """Consul's Locality of a service: Region and Zone, the empty ones left out; None when neither is set."""
    if v is None:
        return None
    if not isinstance(v, dict):
        raise CommandError("Locality must be an object")
    out = {k: v[k] for k in ("Region", "Zone") if v.get(k)}
    if not all(isinstance(x, str) for x in out.values()):
        raise CommandError("Locality's Region and Zone must be strings")
    return out or None


def service_wire(s: Service) -> Wire:
    out: Wire = {
        "ID": s.id, "Service": s.service, "Kind": s.kind, "Tags": list(s.tags), "Address": s.address,
        "TaggedAddresses": s.tagged_addresses, "Meta": s.meta, "Port": s.port,
        "Weights": {"Passing": s.weights[0], "Warning": s.weights[1]}, "EnableTagOverride": s.enable_tag_override,
        "Proxy": s.proxy, "Connect": s.connect,
    }  # fmt: skip
    if s.locality:
        out["Locality"] = s.locality  # only when set: the entries logs already hold decode the same
    return out


def check_from(node: str, d: Any) -> Check:
    """A check in the catalog-command shape (``CheckID``, ``Name``, ``Status``, ...) -> its row."""
    if not isinstance(d, dict):
        raise CommandError("Check must be an object")
    cid = _str(d, "CheckID") or _str(d, "Name")
    if not cid:
        raise CommandError("Missing check ID")
    definition = d.get("Definition") or {}
    if not isinstance(definition, dict):
        raise CommandError("Definition must be an object")
    return Check(
        node=_str(d, "Node") or node,
        check_id=cid,
        name=_str(d, "Name") or cid,
        status=_str(d, "Status") or "critical",
        notes=_str(d, "Notes"),
        output=_str(d, "Output"),
        service_id=_str(d, "ServiceID"),
        type=_str(d, "Type"),
        interval=_str(d, "Interval"),
        timeout=_str(d, "Timeout"),
        definition=definition,
    )


def check_wire(c: Check) -> Wire:
    return {
        "Node": c.node, "CheckID": c.check_id, "Name": c.name, "Status": c.status, "Notes": c.notes,
        "Output": c.output, "ServiceID": c.service_id, "Type": c.type, "Interval": c.interval,
        "Timeout": c.timeout, "Definition": c.definition,
    }  # fmt: skip


# ---------------------------------------------------------------------- catalog


@dataclass(frozen=True, slots=True)
class Register:
    """Consul's RegisterRequest: a node, optionally one of its services and some checks."""

    TYPE: ClassVar[str] = "register"
    node: Node
    service: Service | None = None
    checks: tuple[Check, ...] = ()
    skip_node_update: bool = False

    def to_wire(self) -> Wire:
        n = self.node
        out: Wire = {
            "Type": self.TYPE, "ID": n.id, "Node": n.node, "Address": n.address, "Datacenter": n.datacenter,
            "TaggedAddresses": n.tagged_addresses, "NodeMeta": n.meta,
        }  # fmt: skip
        if self.skip_node_update:
            out["SkipNodeUpdate"] = True
        if self.service is not None:
            out["Service"] = service_wire(self.service)
        if self.checks:
            out["Checks"] = [check_wire(c) for c in self.checks]
        return out

    @classmethod
    def from_wire(cls, cmd: Wire) -> Register:
        node = node_from(cmd)
        service = service_from(node.node, cmd["Service"]) if cmd.get("Service") else None
        raw_checks = cmd.get("Checks") or []
        if not isinstance(raw_checks, list):
            raise CommandError("Checks must be a list")
        checks_in = list(raw_checks)
        if cmd.get("Check"):
            checks_in.append(cmd["Check"])
        checks = tuple(check_from(node.node, c) for c in checks_in)
        return cls(node, service, checks, bool(cmd.get("SkipNodeUpdate", False)))


@dataclass(frozen=True, slots=True)
class Deregister:
    """Consul's DeregisterRequest: a service, a check, or (neither given) the whole node."""

    TYPE: ClassVar[str] = "deregister"
    node: str
    service_id: str = ""
    check_id: str = ""

    def to_wire(self) -> Wire:
        return {"Type": self.TYPE, "Node": self.node, "ServiceID": self.service_id, "CheckID": self.check_id}

    @classmethod
    def from_wire(cls, cmd: Wire) -> Deregister:
        node = _str(cmd, "Node")
        if not node:
            raise CommandError("Must provide node")
        return cls(node, _str(cmd, "ServiceID"), _str(cmd, "CheckID"))


@dataclass(frozen=True, slots=True)
class CheckUpdate:
    """A check's status and output only (anti-entropy's short form, and the leader's serfHealth)."""

    TYPE: ClassVar[str] = "check.update"
    node: str
    check_id: str
    status: str
    output: str = ""

    def to_wire(self) -> Wire:
        return {"Type": self.TYPE, "Node": self.node, "CheckID": self.check_id, "Status": self.status,
                "Output": self.output}  # fmt: skip

    @classmethod
    def from_wire(cls, cmd: Wire) -> CheckUpdate:
        return cls(_str(cmd, "Node"), _str(cmd, "CheckID"), _str(cmd, "Status"), _str(cmd, "Output"))


@dataclass(frozen=True, slots=True)
class MemberBatch:
    """The leader's gossip membership changes as catalog writes (Consul's leader reconcile: a member alive
    is registered with serfHealth passing, a failed one gets serfHealth critical, a left or reaped one is
    deregistered). Consul proposes one entry per member; many members' changes here are one entry, each
    operation applied in order within its one transaction."""

    TYPE: ClassVar[str] = "member.batch"
    ops: tuple[Register | Deregister, ...]

    def to_wire(self) -> Wire:
        return {"Type": self.TYPE, "Ops": [op.to_wire() for op in self.ops]}

    @classmethod
    def from_wire(cls, cmd: Wire) -> MemberBatch:
        raw = cmd.get("Ops")
        if not isinstance(raw, list):
            raise CommandError("Ops must be a list")
        ops: list[Register | Deregister] = []
        for op in raw:
            kind = op.get("Type") if isinstance(op, dict) else None
            if kind == Register.TYPE:
                ops.append(Register.from_wire(op))
            elif kind == Deregister.TYPE:
                ops.append(Deregister.from_wire(op))
            else:
                raise CommandError(f"a member batch holds registrations and deregistrations, not {kind!r}")
        return cls(tuple(ops))


# ---------------------------------------------------------------------- KV and transactions

KVVerb = Literal["set", "cas", "delete", "delete-cas", "delete-tree", "lock", "unlock"]


@dataclass(frozen=True, slots=True)
class KVOp:
    """One KV operation, as Consul's KVSRequest (a command of its own) or one of a transaction's ops
    (TxnKVOp, whose verbs also include the read-only checks). ``value`` is the raw bytes."""

    verb: str
    key: str
    value: bytes | None = None
    flags: int = 0
    index: int = 0
    session: str = ""

    def op_wire(self) -> Wire:
        return {"Verb": self.verb, "Key": self.key, "Value": self.value, "Flags": self.flags, "Index": self.index,
                "Session": self.session}  # fmt: skip

    @classmethod
    def from_op(cls, op: Any) -> KVOp:
        if not isinstance(op, dict):
            raise CommandError("each operation must be a map")
        verb, key, session = op.get("Verb"), op.get("Key", ""), op.get("Session", "") or ""
        if not isinstance(verb, str) or not isinstance(key, str) or not isinstance(session, str):
            raise CommandError("Verb, Key and Session must be strings")
        value = op.get("Value")
        if value is not None and not isinstance(value, bytes):
            raise CommandError("Value must be bytes")
        return cls(verb, key, value, _u64(op, "Flags"), _u64(op, "Index"), session)


KV_VERBS = frozenset({"set", "cas", "delete", "delete-cas", "delete-tree", "lock", "unlock"})


@dataclass(frozen=True, slots=True)
class KV:
    """Consul's KVSRequest: one write to the key/value store."""

    TYPE: ClassVar[str] = "kv"
    op: KVOp

    def to_wire(self) -> Wire:
        o = self.op
        out: Wire = {"Type": self.TYPE, "Verb": o.verb, "Key": o.key}
        if o.value is not None:
            out["Value"] = o.value
        if o.flags:
            out["Flags"] = o.flags
        if o.index:
            out["Index"] = o.index
        if o.session:
            out["Session"] = o.session
        return out

    @classmethod
    def from_wire(cls, cmd: Wire) -> KV:
        key = _str(cmd, "Key")
        value = cmd.get("Value")
        if value is not None and not isinstance(value, bytes):
            raise CommandError("Value must be bytes")
        flags, index = _u64(cmd, "Flags"), _u64(cmd, "Index")
        verb = _str(cmd, "Verb")
        if verb not in KV_VERBS:
            raise CommandError(f"Invalid KV verb {verb!r}")
        return cls(KVOp(verb, key, value, flags, index, _str(cmd, "Session")))


def _txn_node_from(d: Any) -> Node:
    """A transaction's node (Consul's TxnNodeOp.Node): unlike a registration, its name may be empty here (a
    get of "" fails when it runs, with Consul's text), and its ModifyIndex is the CAS index."""
    if not isinstance(d, dict):
        raise CommandError("Node must be an object")
    return Node(_str(d, "ID"), _str(d, "Node"), _str(d, "Address"), _str(d, "Datacenter"),
                _strmap(d, "TaggedAddresses"), _strmap(d, "NodeMeta"), modify_index=_u64(d, "ModifyIndex"))  # fmt: skip


@dataclass(frozen=True, slots=True)
class NodeOp:
    """One Node operation of a transaction (Consul's TxnNodeOp): ``node.modify_index`` is the CAS index."""

    verb: str
    node: Node

    def op_wire(self) -> Wire:
        n = self.node
        return {"Op": "node", "Verb": self.verb, "Node": {
            "ID": n.id, "Node": n.node, "Address": n.address, "Datacenter": n.datacenter,
            "TaggedAddresses": n.tagged_addresses, "NodeMeta": n.meta, "ModifyIndex": n.modify_index}}  # fmt: skip

    @classmethod
    def from_op(cls, op: Wire) -> NodeOp:
        return cls(_str(op, "Verb"), _txn_node_from(op.get("Node")))


@dataclass(frozen=True, slots=True)
class ServiceOp:
    """One Service operation (Consul's TxnServiceOp): a service instance on ``node``;
    ``service.modify_index`` is the CAS index."""

    verb: str
    node: str
    service: Service

    def op_wire(self) -> Wire:
        return {"Op": "service", "Verb": self.verb, "Node": self.node,
                "Service": {**service_wire(self.service), "ModifyIndex": self.service.modify_index}}  # fmt: skip

    @classmethod
    def from_op(cls, op: Wire) -> ServiceOp:
        node = _str(op, "Node")
        raw = op.get("Service")
        if not isinstance(raw, dict):
            raise CommandError("Service must be an object")
        # A delete or get names the instance by ID alone: the name is only required where it is used.
        svc = service_from(node, {**raw, "Service": raw.get("Service") or " "})
        return cls(_str(op, "Verb"), node, replace(svc, service=_str(raw, "Service"), id=_str(raw, "ID"),
                                                     modify_index=_u64(raw, "ModifyIndex")))  # fmt: skip


@dataclass(frozen=True, slots=True)
class CheckOp:
    """One Check operation (Consul's TxnCheckOp): the check's whole definition, as consul-esm sends it;
    ``check.modify_index`` is the CAS index."""

    verb: str
    check: Check

    def op_wire(self) -> Wire:
        return {"Op": "check", "Verb": self.verb,
                "Check": {**check_wire(self.check), "ModifyIndex": self.check.modify_index}}  # fmt: skip

    @classmethod
    def from_op(cls, op: Wire) -> CheckOp:
        raw = op.get("Check")
        if not isinstance(raw, dict):
            raise CommandError("Check must be an object")
        chk = check_from(_str(raw, "Node"), {**raw, "CheckID": _str(raw, "CheckID") or _str(raw, "Name") or " "})
        return cls(_str(op, "Verb"), replace(chk, check_id=_str(raw, "CheckID") or _str(raw, "Name"),
                                             status=_str(raw, "Status"), modify_index=_u64(raw, "ModifyIndex")))  # fmt: skip


TxnOp = KVOp | NodeOp | ServiceOp | CheckOp
_TXN_OPS: Mapping[str, Callable[[Wire], NodeOp | ServiceOp | CheckOp]] = {
    "node": NodeOp.from_op, "service": ServiceOp.from_op, "check": CheckOp.from_op,
}


def txn_op_from(op: Any) -> TxnOp:
    """One operation of a logged transaction: a KV operation is the flat map older logs hold; the catalog
    operations carry their kind in ``Op``."""
    if not isinstance(op, dict):
        raise CommandError("each operation must be a map")
    kind = op.get("Op")
    if kind is None:
        return KVOp.from_op(op)
    decode = _TXN_OPS.get(kind) if isinstance(kind, str) else None
    if decode is None:
        raise CommandError(f"unknown transaction operation {kind!r}")
    return decode(op)


@dataclass(frozen=True, slots=True)
class Txn:
    """Consul's TxnRequest: KV, Node, Service and Check operations in one log entry; all of them apply, or
    none."""

    TYPE: ClassVar[str] = "txn"
    ops: tuple[TxnOp, ...]

    def to_wire(self) -> Wire:
        return {"Type": self.TYPE, "Ops": [o.op_wire() for o in self.ops]}

    @classmethod
    def from_wire(cls, cmd: Wire) -> Txn:
        raw = cmd.get("Ops")
        if not isinstance(raw, list) or not raw:
            raise CommandError("Ops must be a non-empty list")
        return cls(tuple(txn_op_from(op) for op in raw))


@dataclass(frozen=True, slots=True)
class TombstoneReap:
    """Consul's TombstoneRequest: forget KV tombstones up to ``index``."""

    TYPE: ClassVar[str] = "tombstone.reap"
    index: int

    def to_wire(self) -> Wire:
        return {"Type": self.TYPE, "Index": self.index}

    @classmethod
    def from_wire(cls, cmd: Wire) -> TombstoneReap:
        index = cmd.get("Index")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise CommandError("Index must be a non-negative integer")
        return cls(index)


@dataclass(frozen=True, slots=True)
class Noop:
    TYPE: ClassVar[str] = "noop"

    def to_wire(self) -> Wire:
        return {"Type": self.TYPE}

    @classmethod
    def from_wire(cls, cmd: Wire) -> Noop:
        return cls()


# ---------------------------------------------------------------------- sessions


@dataclass(frozen=True, slots=True)
class SessionCreate:
    """Consul's SessionRequest with SessionCreate: the ID is generated before the log, so applying it is
    deterministic."""

    TYPE: ClassVar[str] = "session"
    session: Session

    def to_wire(self) -> Wire:
        return {"Type": self.TYPE, "Op": "create", "Session": self.session.to_command()}


@dataclass(frozen=True, slots=True)
class SessionDestroy:
    """Consul's SessionRequest with SessionDestroy; also how the leader expires a TTL session."""

    TYPE: ClassVar[str] = "session"
    id: str

    def to_wire(self) -> Wire:
        return {"Type": self.TYPE, "Op": "destroy", "ID": self.id}


def _session_from_wire(cmd: Wire) -> SessionCreate | SessionDestroy:
    op = _str(cmd, "Op")
    if op == "create":
        try:
            return SessionCreate(session_from_command(cmd.get("Session")))
        except SessionError as exc:
            raise CommandError(exc.message, exc.status) from None
    if op == "destroy":
        sid = _str(cmd, "ID")
        if not sid:
            raise CommandError("Must provide ID", 500)
        return SessionDestroy(sid)
    raise CommandError(f"Invalid session operation {op!r}")


# ---------------------------------------------------------------------- snapshot restore


@dataclass(frozen=True, slots=True)
class SnapshotRestore:
    """An operator's ``snapshot restore``: the whole store, replaced at this log index on every server."""

    TYPE: ClassVar[str] = "snapshot.restore"
    store: Any  # the store's snapshot form (``StateStore.to_snapshot``), validated by the proposer

    def to_wire(self) -> Wire:
        return {"Type": self.TYPE, "Store": self.store}

    @classmethod
    def from_wire(cls, cmd: Wire) -> SnapshotRestore:
        return cls(cmd.get("Store"))


# ---------------------------------------------------------------------- Connect: CA, config entries, intentions


@dataclass(frozen=True, slots=True)
class CASet:
    """Replace the Connect CA state if the CA table's index is still ``prev`` (0: only if there is none),
    as Consul's CARequest with CAOpSetRootsAndConfig is guarded by its index."""

    TYPE: ClassVar[str] = "connect.ca.set"
    state: dict[str, Any]  # ca.provider.to_msgpack_dict; the apply function decodes and checks it
    prev: int

    def to_wire(self) -> Wire:
        return {"Type": self.TYPE, "State": self.state, "Prev": self.prev}

    @classmethod
    def from_wire(cls, cmd: Wire) -> CASet:
        raw, prev = cmd.get("State"), cmd.get("Prev")
        if not isinstance(raw, dict):
            raise CommandError("State must be a map")
        if not isinstance(prev, int) or isinstance(prev, bool) or prev < 0:
            raise CommandError("Prev must be a non-negative integer")
        return cls(raw, prev)


@dataclass(frozen=True, slots=True)
class ConfigEntryUpsert:
    """Consul's ConfigEntryRequest with ConfigEntryUpsert (or, ``cas``, ConfigEntryUpsertCAS at ``index``).
    ``entry`` is the canonical entry (``registry.connect.state.normalize_entry``)."""

    TYPE: ClassVar[str] = "config.entry"
    entry: Any  # checked and made canonical by the apply function (normalize_entry), as on the way in
    cas: bool = False
    index: int = 0

    def to_wire(self) -> Wire:
        return {"Type": self.TYPE, "Op": "cas" if self.cas else "upsert", "Entry": self.entry, "Index": self.index}


@dataclass(frozen=True, slots=True)
class ConfigEntryDelete:
    """Consul's ConfigEntryRequest with ConfigEntryDelete (or, ``cas``, ConfigEntryDeleteCAS)."""

    TYPE: ClassVar[str] = "config.entry"
    kind: str
    name: str
    namespace: str = DEFAULT_NAMESPACE
    cas: bool = False
    index: int = 0

    def to_wire(self) -> Wire:
        out: Wire = {"Type": self.TYPE, "Op": "delete-cas" if self.cas else "delete", "Kind": self.kind,
                     "Name": self.name, "Index": self.index}  # fmt: skip
        if self.namespace != DEFAULT_NAMESPACE:
            out["Namespace"] = self.namespace
        return out


def _config_entry_from_wire(cmd: Wire) -> ConfigEntryUpsert | ConfigEntryDelete:
    op = cmd.get("Op")
    index = _index(cmd)
    if op in ("upsert", "cas"):
        return ConfigEntryUpsert(cmd.get("Entry"), op == "cas", index)
    if op in ("delete", "delete-cas"):
        kind, name = cmd.get("Kind"), cmd.get("Name")
        ns = cmd.get("Namespace") or DEFAULT_NAMESPACE
        if not isinstance(kind, str) or not isinstance(name, str) or not kind or not name:
            raise CommandError("Must provide both a kind and name to delete")
        if not isinstance(ns, str):
            raise CommandError("Namespace must be a string")
        return ConfigEntryDelete(kind, name, ns, op == "delete-cas", index)
    raise CommandError(f"invalid config entry operation {op!r}")


IntentionWriteOp = Literal["create", "update", "upsert"]


@dataclass(frozen=True, slots=True)
class IntentionWrite:
    """Consul's IntentionRequest: ``create`` (new legacy ID), ``update`` (by legacy ID) or ``upsert`` (PUT
    /exact), applied to the destination's service-intentions entry. ``now`` is the proposer's time (RFC 3339),
    stamped into the legacy create/update times."""

    TYPE: ClassVar[str] = "connect.intention"
    op: IntentionWriteOp
    intention: Intention
    now: str
    id: str = ""

    def to_wire(self) -> Wire:
        out: Wire = {"Type": self.TYPE, "Op": self.op, "Intention": self.intention.to_api_dict(), "Now": self.now}
        if self.op != "upsert":
            out["ID"] = self.id
        return out


@dataclass(frozen=True, slots=True)
class IntentionDelete:
    """Consul's IntentionRequest with IntentionOpDelete, by legacy ID."""

    TYPE: ClassVar[str] = "connect.intention"
    id: str
    now: str

    def to_wire(self) -> Wire:
        return {"Type": self.TYPE, "Op": "delete", "ID": self.id, "Now": self.now}


@dataclass(frozen=True, slots=True)
class IntentionDeleteExact:
    """DELETE /v1/connect/intentions/exact: the rule for one source/destination pair, if there is one."""

    TYPE: ClassVar[str] = "connect.intention"
    source_ns: str
    source_name: str
    destination_ns: str
    destination_name: str
    now: str

    def to_wire(self) -> Wire:
        return {"Type": self.TYPE, "Op": "delete-exact", "Now": self.now, "Intention": {
            "SourceNS": self.source_ns, "SourceName": self.source_name, "DestinationNS": self.destination_ns,
            "DestinationName": self.destination_name}}  # fmt: skip


def _intention_from_wire(cmd: Wire) -> IntentionWrite | IntentionDelete | IntentionDeleteExact:
    op = cmd.get("Op")
    now = cmd.get("Now") or ""
    if not isinstance(now, str):
        raise CommandError("Now must be an RFC 3339 time string")
    if op in ("create", "update", "upsert"):
        raw = cmd.get("Intention")
        try:
            ixn = Intention.from_api_dict(raw if isinstance(raw, Mapping) else {})
        except IntentionError as exc:
            raise CommandError(str(exc)) from None
        ixn_id = cmd.get("ID")
        if op == "create" and (not isinstance(ixn_id, str) or not ixn_id):
            raise CommandError("ID must be set when creating an intention")
        if op == "update" and (not isinstance(ixn_id, str) or not ixn_id):
            raise CommandError("Intention ID must be set")
        return IntentionWrite(op, ixn, now, ixn_id if isinstance(ixn_id, str) else "")
    if op == "delete":
        ixn_id = cmd.get("ID")
        if not isinstance(ixn_id, str):
            raise CommandError(f"Cannot delete non-existent intention: '{ixn_id}'")
        return IntentionDelete(ixn_id, now)
    if op == "delete-exact":
        raw = cmd.get("Intention")
        if not isinstance(raw, Mapping):
            raise CommandError("Intention must be an object")
        src_ns = raw.get("SourceNS") or DEFAULT_NAMESPACE
        src_name = raw.get("SourceName") or ""
        dst_ns = raw.get("DestinationNS") or DEFAULT_NAMESPACE
        dst_name = raw.get("DestinationName") or ""
        if not all(isinstance(v, str) for v in (src_ns, src_name, dst_ns, dst_name)) or not src_name or not dst_name:
            raise CommandError("source and destination must be set")
        return IntentionDeleteExact(src_ns, src_name, dst_ns, dst_name, now)
    raise CommandError(f"invalid intention operation {op!r}")


# ---------------------------------------------------------------------- ACLs
#
# Consul's ACL request types (ACLBootstrapRequestType, ACLTokenSetRequestType, ACLPolicySetRequestType, ...).
# Each carries its object (``registry.acl.objects``), validated for shape here, where it is built and again
# when the FSM decodes it; what depends on other rows (names taken, links to rows that must exist, a token
# being updated) is checked by the store, in the same apply. IDs, secrets and times are chosen by the
# proposer, so applying is deterministic.


def _acl_obj(decode: Callable[[Any], Any], raw: Any) -> Any:
    try:
        return decode(raw)
    except ACLObjectError as exc:
        raise CommandError(str(exc)) from None


def _reserved_text() -> str:
    return 'Invalid Token: UUIDs with the prefix "00000000-0000-0000-0000-0000000000" are reserved'


@dataclass(frozen=True, slots=True)
class ACLBootstrap:
    """Consul's ACLBootstrapRequest: the first management token, once (or again at ``reset_index``)."""

    TYPE: ClassVar[str] = "acl.bootstrap"
    token: TokenRow
    reset_index: int = 0

    def __post_init__(self) -> None:
        if not is_uuid(self.token.accessor_id) or not self.token.secret_id:
            raise CommandError("the bootstrap token needs an AccessorID and a SecretID")

    def to_wire(self) -> Wire:
        return {"Type": self.TYPE, "Token": self.token.to_wire(), "ResetIndex": self.reset_index}

    @classmethod
    def from_wire(cls, cmd: Wire) -> ACLBootstrap:
        return cls(_acl_obj(TokenRow.from_wire, cmd.get("Token")), _index(cmd, "ResetIndex"))


@dataclass(frozen=True, slots=True)
class ACLInitialize:
    """What a leader with ACLs on makes sure exists (Consul's ``initializeACLs``): the built-in policies, the
    anonymous token, and the ``acl.tokens.initial_management`` token when configured (which bootstraps the
    cluster when it has not been bootstrapped yet)."""

    TYPE: ClassVar[str] = "acl.init"
    now_ns: int
    initial_management: TokenRow | None = None

    def to_wire(self) -> Wire:
        out: Wire = {"Type": self.TYPE, "Now": self.now_ns}
        if self.initial_management is not None:
            out["InitialManagement"] = self.initial_management.to_wire()
        return out

    @classmethod
    def from_wire(cls, cmd: Wire) -> ACLInitialize:
        raw = cmd.get("InitialManagement")
        return cls(_index(cmd, "Now"), _acl_obj(TokenRow.from_wire, raw) if raw is not None else None)


@dataclass(frozen=True, slots=True)
class ACLTokenSet:
    """Consul's ACLTokenSetRequest: create (``create``, IDs chosen by the proposer) or update a token.
    ``from_login`` marks tokens made by an auth method login, the only ones that may carry AuthMethod."""

    TYPE: ClassVar[str] = "acl.token"
    token: TokenRow
    create: bool
    from_login: bool = False

    def __post_init__(self) -> None:
        t = self.token
        if self.create:
            for field_name, value in (("AccessorID", t.accessor_id), ("SecretID", t.secret_id)):
                if not is_uuid(value):
                    raise CommandError(f"Invalid Token: {field_name} is not a valid UUID")
                if reserved(value):
                    raise CommandError(_reserved_text())
            if t.accessor_id == t.secret_id:
                raise CommandError("Invalid Token: SecretID is already in use")
            if not t.create_time_ns:
                raise CommandError("a new token needs its CreateTime")
        elif not is_uuid(t.accessor_id):
            raise CommandError("AccessorID is not a valid UUID")
        if self.from_login and not t.auth_method:
            raise CommandError("AuthMethod field is required during Login")
        if not self.from_login and self.create and t.auth_method:
            raise CommandError("AuthMethod field is disallowed outside of Login")

    def to_wire(self) -> Wire:
        return {"Type": self.TYPE, "Op": "set", "Token": self.token.to_wire(), "Create": self.create,
                "FromLogin": self.from_login}  # fmt: skip


@dataclass(frozen=True, slots=True)
class ACLTokenDelete:
    """Consul's ACLTokenBatchDeleteRequest (DELETE /v1/acl/token/:id, logout)."""

    TYPE: ClassVar[str] = "acl.token"
    accessor_ids: tuple[str, ...]

    def to_wire(self) -> Wire:
        return {"Type": self.TYPE, "Op": "delete", "TokenIDs": list(self.accessor_ids)}


@dataclass(frozen=True, slots=True)
class ACLTokenReap:
    """The leader's reaping of expired tokens (Consul's ``reapExpiredTokens``): every token whose
    ExpirationTime is at or before ``now_ns`` is deleted, on every server alike."""

    TYPE: ClassVar[str] = "acl.token"
    now_ns: int

    def to_wire(self) -> Wire:
        return {"Type": self.TYPE, "Op": "reap", "Now": self.now_ns}


def _acl_token_from_wire(cmd: Wire) -> ACLTokenSet | ACLTokenDelete | ACLTokenReap:
    op = cmd.get("Op")
    if op == "set":
        return ACLTokenSet(_acl_obj(TokenRow.from_wire, cmd.get("Token")), bool(cmd.get("Create")),
                           bool(cmd.get("FromLogin")))  # fmt: skip
    if op == "delete":
        ids = cmd.get("TokenIDs")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise CommandError("TokenIDs must be a list of strings")
        return ACLTokenDelete(tuple(ids))
    if op == "reap":
        return ACLTokenReap(_index(cmd, "Now"))
    raise CommandError(f"invalid ACL token operation {op!r}")


@dataclass(frozen=True, slots=True)
class ACLPolicySet:
    """Consul's ACLPolicySetRequest; the rules were parsed (and refused with Consul's text) when built."""

    TYPE: ClassVar[str] = "acl.policy"
    policy: PolicyRow
    create: bool = True

    def __post_init__(self) -> None:
        if not is_uuid(self.policy.id):
            raise CommandError("Policy ID invalid UUID")

    def to_wire(self) -> Wire:
        return {"Type": self.TYPE, "Op": "set", "Policy": self.policy.to_wire(), "Create": self.create}


@dataclass(frozen=True, slots=True)
class ACLPolicyDelete:
    TYPE: ClassVar[str] = "acl.policy"
    id: str

    def to_wire(self) -> Wire:
        return {"Type": self.TYPE, "Op": "delete", "ID": self.id}


def _acl_policy_from_wire(cmd: Wire) -> ACLPolicySet | ACLPolicyDelete:
    op = cmd.get("Op")
    if op == "set":
        return ACLPolicySet(_acl_obj(PolicyRow.from_wire, cmd.get("Policy")), bool(cmd.get("Create")))
    if op == "delete":
        return ACLPolicyDelete(_str(cmd, "ID"))
    raise CommandError(f"invalid ACL policy operation {op!r}")


@dataclass(frozen=True, slots=True)
class ACLRoleSet:
    TYPE: ClassVar[str] = "acl.role"
    role: RoleRow
    create: bool = True

    def __post_init__(self) -> None:
        if not is_uuid(self.role.id):
            raise CommandError("Role ID invalid UUID")

    def to_wire(self) -> Wire:
        return {"Type": self.TYPE, "Op": "set", "Role": self.role.to_wire(), "Create": self.create}


@dataclass(frozen=True, slots=True)
class ACLRoleDelete:
    TYPE: ClassVar[str] = "acl.role"
    id: str

    def to_wire(self) -> Wire:
        return {"Type": self.TYPE, "Op": "delete", "ID": self.id}


def _acl_role_from_wire(cmd: Wire) -> ACLRoleSet | ACLRoleDelete:
    op = cmd.get("Op")
    if op == "set":
        return ACLRoleSet(_acl_obj(RoleRow.from_wire, cmd.get("Role")), bool(cmd.get("Create")))
    if op == "delete":
        return ACLRoleDelete(_str(cmd, "ID"))
    raise CommandError(f"invalid ACL role operation {op!r}")


@dataclass(frozen=True, slots=True)
class ACLAuthMethodSet:
    """Consul's ACLAuthMethodSetRequest; the method was checked (its ``jwt`` Config parsed) when built."""

    TYPE: ClassVar[str] = "acl.auth-method"
    method: AuthMethod

    def to_wire(self) -> Wire:
        return {"Type": self.TYPE, "Op": "set", "AuthMethod": self.method.to_wire()}


@dataclass(frozen=True, slots=True)
class ACLAuthMethodDelete:
    """Deleting an auth method also deletes its binding rules and the tokens it issued (as Consul)."""

    TYPE: ClassVar[str] = "acl.auth-method"
    name: str

    def to_wire(self) -> Wire:
        return {"Type": self.TYPE, "Op": "delete", "Name": self.name}


def _acl_auth_method_from_wire(cmd: Wire) -> ACLAuthMethodSet | ACLAuthMethodDelete:
    op = cmd.get("Op")
    if op == "set":
        return ACLAuthMethodSet(_acl_obj(AuthMethod.from_wire, cmd.get("AuthMethod")))
    if op == "delete":
        return ACLAuthMethodDelete(_str(cmd, "Name"))
    raise CommandError(f"invalid ACL auth method operation {op!r}")


@dataclass(frozen=True, slots=True)
class ACLBindingRuleSet:
    """Consul's ACLBindingRuleSetRequest; the rule was checked against its auth method when built."""

    TYPE: ClassVar[str] = "acl.binding-rule"
    rule: BindingRule
    create: bool = True

    def __post_init__(self) -> None:
        if not is_uuid(self.rule.id):
            raise CommandError("Binding Rule ID invalid UUID")

    def to_wire(self) -> Wire:
        return {"Type": self.TYPE, "Op": "set", "BindingRule": self.rule.to_wire(), "Create": self.create}


@dataclass(frozen=True, slots=True)
class ACLBindingRuleDelete:
    TYPE: ClassVar[str] = "acl.binding-rule"
    id: str

    def to_wire(self) -> Wire:
        return {"Type": self.TYPE, "Op": "delete", "ID": self.id}


def _acl_binding_rule_from_wire(cmd: Wire) -> ACLBindingRuleSet | ACLBindingRuleDelete:
    op = cmd.get("Op")
    if op == "set":
        # Checked against its auth method where it was built; the log carries it as it was checked.
        rule = _acl_obj(lambda raw: BindingRule.from_wire(raw, None), cmd.get("BindingRule"))
        return ACLBindingRuleSet(rule, bool(cmd.get("Create")))
    if op == "delete":
        return ACLBindingRuleDelete(_str(cmd, "ID"))
    raise CommandError(f"invalid ACL binding rule operation {op!r}")


# ---------------------------------------------------------------------- prepared queries

PreparedQueryOp = Literal["create", "update"]


@dataclass(frozen=True, slots=True)
class PreparedQuerySet:
    """Consul's PreparedQueryRequest with PreparedQueryCreate or PreparedQueryUpdate: the query, checked
    (``PreparedQuery.validate``) where it was built, its ID chosen by the proposer (create)."""

    TYPE: ClassVar[str] = "prepared-query"
    op: PreparedQueryOp
    query: PreparedQuery

    def to_wire(self) -> Wire:
        return {"Type": self.TYPE, "Op": self.op, "Query": self.query.to_json()}


@dataclass(frozen=True, slots=True)
class PreparedQueryDelete:
    """Consul's PreparedQueryRequest with PreparedQueryDelete (only the ID counts)."""

    TYPE: ClassVar[str] = "prepared-query"
    id: str

    def to_wire(self) -> Wire:
        return {"Type": self.TYPE, "Op": "delete", "ID": self.id}


def _prepared_query_from_wire(cmd: Wire) -> PreparedQuerySet | PreparedQueryDelete:
    op = cmd.get("Op")
    if op == "delete":
        return PreparedQueryDelete(_str(cmd, "ID"))
    if op in ("create", "update"):
        try:
            query = PreparedQuery.from_json(cmd.get("Query"))
            query.validate()
        except QueryError as exc:
            raise CommandError(exc.message, exc.status) from None
        if not query.id:
            raise CommandError("Missing Query ID")
        return PreparedQuerySet("create" if op == "create" else "update", query)
    raise CommandError(f"Unknown prepared query operation: {op}")


# ---------------------------------------------------------------------- autopilot


@dataclass(frozen=True, slots=True)
class AutopilotSetConfig:
    """Consul's ``AutopilotSetConfigRequest`` (message type ``AutopilotRequestType``): replace the autopilot
    configuration; with ``cas``, only if its ModifyIndex is still ``index``. ``init`` is the leader seeding
    the agent config's ``autopilot`` block, applied only when no configuration is stored yet."""

    TYPE: ClassVar[str] = "autopilot.set"
    config: AutopilotConfig
    cas: bool = False
    index: int = 0
    init: bool = False

    def to_wire(self) -> Wire:
        return {"Type": self.TYPE, "Config": self.config.to_wire(), "CAS": self.cas, "Index": self.index,
                "Init": self.init}  # fmt: skip

    @classmethod
    def from_wire(cls, cmd: Wire) -> AutopilotSetConfig:
        raw, index = cmd.get("Config"), cmd.get("Index", 0)
        if not isinstance(raw, dict):
            raise CommandError("Config must be a map")
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < U64:
            raise CommandError("Index must be a non-negative integer")
        try:
            config = AutopilotConfig.from_wire(raw)
        except AutopilotConfigError as exc:
            raise CommandError(f"Error parsing autopilot config: {exc}") from None
        return cls(config, bool(cmd.get("CAS")), index, bool(cmd.get("Init")))


# ---------------------------------------------------------------------- user events


@dataclass(frozen=True, slots=True)
class EventFire:
    """A user event entering the replicated ring of recent events (Consul fires it into the LAN gossip pool
    from ``Internal.EventFire``; here the ring is what every agent follows). Built, validated and
    size-checked by the server that received the fire (``registry.events``)."""

    TYPE: ClassVar[str] = "event.fire"
    event: UserEvent

    def to_wire(self) -> Wire:
        return {"Type": self.TYPE, "Event": self.event.to_wire()}

    @classmethod
    def from_wire(cls, cmd: Wire) -> EventFire:
        try:
            return cls(UserEvent.from_wire(cmd.get("Event")))
        except EventError as exc:
            raise CommandError(exc.message, exc.status) from None


# ---------------------------------------------------------------------- network coordinates


@dataclass(frozen=True, slots=True)
class CoordinateUpdate:
    """One node's coordinate in one network segment (Consul's ``structs.Coordinate``)."""

    node: str
    segment: str
    coord: Coordinate

    def to_wire(self) -> Wire:
        return {"Node": self.node, "Segment": self.segment, "Coord": self.coord.to_json()}

    @classmethod
    def from_wire(cls, d: Any) -> CoordinateUpdate:
        if not isinstance(d, dict):
            raise CommandError("coordinate update must be a map")
        node = _str(d, "Node")
        if not node:
            raise CommandError("Must provide node")
        raw = d.get("Coord")
        if not isinstance(raw, dict):
            raise CommandError("invalid coordinate")
        try:
            coord = Coordinate.from_json(raw)
        except ValueError:
            raise CommandError("invalid coordinate") from None
        return cls(node, _str(d, "Segment"), coord)


@dataclass(frozen=True, slots=True)
class CoordinateBatchUpdate:
    """Consul's ``CoordinateBatchUpdateType``: the coordinates a server gathered from agents over one
    ``coordinate_update_period``, applied as one entry (at most ``coordinate_update_batch_size`` of them),
    never one entry per agent (``registry.agent.coordinates``)."""

    TYPE: ClassVar[str] = "coordinate.batch-update"
    updates: tuple[CoordinateUpdate, ...]

    def to_wire(self) -> Wire:
        return {"Type": self.TYPE, "Updates": [u.to_wire() for u in self.updates]}

    @classmethod
    def from_wire(cls, cmd: Wire) -> CoordinateBatchUpdate:
        raw = cmd.get("Updates")
        if not isinstance(raw, list):
            raise CommandError("Updates must be a list")
        return cls(tuple(CoordinateUpdate.from_wire(u) for u in raw))


# ---------------------------------------------------------------------- the codec

Command = (
    Register | Deregister | CheckUpdate | KV | Txn | TombstoneReap | Noop | SessionCreate | SessionDestroy
    | SnapshotRestore | CASet | ConfigEntryUpsert | ConfigEntryDelete | IntentionWrite | IntentionDelete
    | IntentionDeleteExact | ACLBootstrap | ACLInitialize | ACLTokenSet | ACLTokenDelete | ACLTokenReap | ACLPolicySet
    | ACLPolicyDelete | ACLRoleSet | ACLRoleDelete | ACLAuthMethodSet | ACLAuthMethodDelete | ACLBindingRuleSet
    | ACLBindingRuleDelete | PreparedQuerySet | PreparedQueryDelete | AutopilotSetConfig | EventFire
    | CoordinateBatchUpdate | MemberBatch
)

# Wire ``Type`` -> decoder. Several classes share a type when Consul's request has an ``Op`` (sessions,
# config entries, intentions); the decoder picks the class.
DECODERS: Mapping[str, Callable[[Wire], Command]] = {
    Register.TYPE: Register.from_wire,
    Deregister.TYPE: Deregister.from_wire,
    CheckUpdate.TYPE: CheckUpdate.from_wire,
    KV.TYPE: KV.from_wire,
    Txn.TYPE: Txn.from_wire,
    TombstoneReap.TYPE: TombstoneReap.from_wire,
    Noop.TYPE: Noop.from_wire,
    SessionCreate.TYPE: _session_from_wire,
    SnapshotRestore.TYPE: SnapshotRestore.from_wire,
    CASet.TYPE: CASet.from_wire,
    ConfigEntryUpsert.TYPE: _config_entry_from_wire,
    IntentionWrite.TYPE: _intention_from_wire,
    ACLBootstrap.TYPE: ACLBootstrap.from_wire,
    ACLInitialize.TYPE: ACLInitialize.from_wire,
    ACLTokenSet.TYPE: _acl_token_from_wire,
    ACLPolicySet.TYPE: _acl_policy_from_wire,
    ACLRoleSet.TYPE: _acl_role_from_wire,
    ACLAuthMethodSet.TYPE: _acl_auth_method_from_wire,
    ACLBindingRuleSet.TYPE: _acl_binding_rule_from_wire,
    PreparedQuerySet.TYPE: _prepared_query_from_wire,
    AutopilotSetConfig.TYPE: AutopilotSetConfig.from_wire,
    EventFire.TYPE: EventFire.from_wire,
    CoordinateBatchUpdate.TYPE: CoordinateBatchUpdate.from_wire,
    MemberBatch.TYPE: MemberBatch.from_wire,
}


def from_wire(cmd: Wire) -> Command:
    """A decoded log entry -> its command. Raises CommandError (500 for an unknown type, as a server that
    cannot apply an entry it does not know; the status the apply function would refuse with otherwise)."""
    decoder = DECODERS.get(cmd.get("Type", ""))
    if decoder is None:
        raise CommandError(f"unknown command type {cmd.get('Type')!r}", 500)
    return decoder(cmd)


@dataclass(slots=True)
class Proposer:
    """The one way a write enters the log, for every writer (HTTP handlers, the agent's anti-entropy, the
    CA manager, session timers, the leader's liveness loop).

    It stamps the proposer's time (``Time``, nanoseconds since the epoch: the FSM's only notion of now, from
    which lock-delays are decided the same way on every server), encodes the command once, submits it, and
    raises the FSM's refusal as ``CommandError``."""

    submit: Callable[[Wire], Awaitable[Any]]
    clock_ns: Callable[[], int]

    async def propose(self, command: Command) -> Any:
        wire = command.to_wire()
        wire["Time"] = self.clock_ns()
        result = await self.submit(wire)
        if isinstance(result, CommandError):
            raise result
        return result
