"""The finite state machine: log entries in, state store writes out.

A command is a msgpack map with a ``Type`` and that type's fields, in the canonical shape the HTTP layer
builds after validating a request. The dispatch table maps each type to one apply function. Apply functions
convert the whole command into rows first (any malformed field raises before the store is touched), then
write. A refused command returns a ``CommandError`` value to whoever proposed it; it never raises out of
``apply``, because an exception there would stop a server from applying its log.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import structlog

from registry.sessions import SessionError, session_from_command
from registry.state.store import StateStore, StoreError, Topic
from registry.structs import Check, Node, Service
from registry.txn import apply_txn

log = structlog.get_logger("proconsul.fsm")


@dataclass(frozen=True, slots=True)
class CommandError:
    """The result of a command the FSM refused. ``status`` is the HTTP status the API should answer."""

    message: str
    status: int = 400


def encode_command(cmd: dict[str, Any]) -> bytes:
    return msgpack.packb(cmd, use_bin_type=True)


def decode_command(data: bytes) -> dict[str, Any]:
    cmd = msgpack.unpackb(data, raw=False, strict_map_key=True)
    if not isinstance(cmd, dict) or not isinstance(cmd.get("Type"), str):
        raise ValueError("command is not a map with a Type")
    return cmd


# ---------------------------------------------------------------------- canonical dict -> row


def _str(d: dict[str, Any], k: str, default: str = "") -> str:
    v = d.get(k, default)
    if v is None:
        return default
    if not isinstance(v, str):
        raise StoreError(f"{k} must be a string")
    return v


def _strmap(d: dict[str, Any], k: str) -> dict[str, str]:
    v = d.get(k) or {}
    if not isinstance(v, dict) or not all(isinstance(a, str) and isinstance(b, str) for a, b in v.items()):
        raise StoreError(f"{k} must be a map of strings")
    return dict(v)


def node_from(cmd: dict[str, Any]) -> Node:
    name = _str(cmd, "Node")
    if not name:
        raise StoreError("Must provide node")
    return Node(
        id=_str(cmd, "ID"),
        node=name,
        address=_str(cmd, "Address"),
        datacenter=_str(cmd, "Datacenter"),
        tagged_addresses=_strmap(cmd, "TaggedAddresses"),
        meta=_strmap(cmd, "NodeMeta"),
    )


def service_from(node: str, d: dict[str, Any]) -> Service:
    if not isinstance(d, dict):
        raise StoreError("Service must be an object")
    name = _str(d, "Service")
    if not name:
        raise StoreError("Must provide service name")
    tags = d.get("Tags") or []
    if not isinstance(tags, list | tuple) or not all(isinstance(t, str) for t in tags):
        raise StoreError("Tags must be a list of strings")
    tagged = d.get("TaggedAddresses") or {}
    if not isinstance(tagged, dict):
        raise StoreError("TaggedAddresses must be a map")
    weights = d.get("Weights") or {"Passing": 1, "Warning": 1}
    port = d.get("Port", 0) or 0
    if not isinstance(port, int) or isinstance(port, bool):
        raise StoreError("Port must be an integer")
    proxy = d.get("Proxy")
    connect = d.get("Connect")
    if proxy is not None and not isinstance(proxy, dict):
        raise StoreError("Proxy must be an object")
    if connect is not None and not isinstance(connect, dict):
        raise StoreError("Connect must be an object")
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
    )


def check_from(node: str, d: dict[str, Any]) -> Check:
    if not isinstance(d, dict):
        raise StoreError("Check must be an object")
    cid = _str(d, "CheckID") or _str(d, "Name")
    if not cid:
        raise StoreError("Missing check ID")
    definition = d.get("Definition") or {}
    if not isinstance(definition, dict):
        raise StoreError("Definition must be an object")
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


# ---------------------------------------------------------------------- apply functions


def _register(store: StateStore, cmd: dict[str, Any]) -> Any:
    node = node_from(cmd)
    service = service_from(node.node, cmd["Service"]) if cmd.get("Service") else None
    checks_in = list(cmd.get("Checks") or [])
    if cmd.get("Check"):
        checks_in.append(cmd["Check"])
    checks = [check_from(node.node, c) for c in checks_in]
    store.ensure_registration(node, service, checks, bool(cmd.get("SkipNodeUpdate", False)))
    return True


def _deregister(store: StateStore, cmd: dict[str, Any]) -> Any:
    node = _str(cmd, "Node")
    if not node:
        raise StoreError("Must provide node")
    if sid := _str(cmd, "ServiceID"):
        store.delete_service(node, sid)
    elif cid := _str(cmd, "CheckID"):
        store.delete_check(node, cid)
    else:
        store.delete_node(node)
    return True


def _check_update(store: StateStore, cmd: dict[str, Any]) -> Any:
    store.update_check_status(_str(cmd, "Node"), _str(cmd, "CheckID"), _str(cmd, "Status"), _str(cmd, "Output"))
    return True


def _kv_args(cmd: dict[str, Any]) -> tuple[str, bytes | None, int, int]:
    key = _str(cmd, "Key")
    value = cmd.get("Value")
    if value is not None and not isinstance(value, bytes):
        raise StoreError("Value must be bytes")
    flags = cmd.get("Flags", 0) or 0
    index = cmd.get("Index", 0) or 0
    for name, v in (("Flags", flags), ("Index", index)):
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 2**64:
            raise StoreError(f"{name} must be an unsigned 64-bit integer")
    return key, value, flags, index


def _kv(store: StateStore, cmd: dict[str, Any]) -> Any:
    verb = _str(cmd, "Verb")
    key, value, flags, index = _kv_args(cmd)
    if verb == "set":
        store.kv_set(key, value, flags)
        return True
    if verb == "cas":
        return store.kv_cas(key, value, flags, index)
    if verb == "delete":
        store.kv_delete(key)
        return True
    if verb == "delete-cas":
        return store.kv_delete_cas(key, index)
    if verb == "delete-tree":
        store.kv_delete_tree(key)
        return True
    if verb == "lock":
        return store.kv_lock(key, value, flags, _str(cmd, "Session"))
    if verb == "unlock":
        return store.kv_unlock(key, value, flags, _str(cmd, "Session"))
    raise StoreError(f"Invalid KV verb {verb!r}")


def _session(store: StateStore, cmd: dict[str, Any]) -> Any:
    """``{"Op": "create", "Session": {...}}`` -> the new ID; ``{"Op": "destroy", "ID": ...}`` -> True.
    Destroy is also how the leader expires a TTL session. Lock-delays start at the command's ``Time``."""
    op = _str(cmd, "Op")
    if op == "create":
        try:
            row = session_from_command(cmd.get("Session"))
        except SessionError as exc:
            raise StoreError(exc.message, exc.status) from None
        store.session_create(row)
        return row.id
    if op == "destroy":
        sid = _str(cmd, "ID")
        if not sid:
            raise StoreError("Must provide ID", 500)
        store.session_destroy(sid)
        return True
    raise StoreError(f"Invalid session operation {op!r}")


def _tombstone_reap(store: StateStore, cmd: dict[str, Any]) -> Any:
    index = cmd.get("Index")
    if not isinstance(index, int) or index < 0:
        raise StoreError("Index must be a non-negative integer")
    store.reap_tombstones(index)
    return True


def _noop(store: StateStore, cmd: dict[str, Any]) -> Any:
    return True


ApplyFn = Callable[[StateStore, dict[str, Any]], Any]

DISPATCH: dict[str, ApplyFn] = {
    "register": _register,
    "deregister": _deregister,
    "check.update": _check_update,
    "kv": _kv,
    "session": _session,
    "txn": apply_txn,  # KV operations, all or none (registry.txn)
    "tombstone.reap": _tombstone_reap,
    "noop": _noop,
}


class FSM:
    """Applies commands to the store and tells the watch layer what changed."""

    def __init__(
        self,
        store: StateStore | None = None,
        on_change: Callable[[set[Topic], set[str]], None] | None = None,
        on_reset: Callable[[], None] | None = None,
    ) -> None:
        self.store = store or StateStore()
        self._on_change = on_change
        self._on_reset = on_reset
        self.dispatch: dict[str, ApplyFn] = dict(DISPATCH)

    def register(self, cmd_type: str, fn: ApplyFn) -> None:
        """Later subsystems (CA, intentions, sessions) add their command types here."""
        if cmd_type in self.dispatch:
            raise ValueError(f"command type {cmd_type!r} already registered")
        self.dispatch[cmd_type] = fn

    def apply(self, index: int, data: bytes) -> Any:
        try:
            cmd = decode_command(data)
        except Exception as exc:  # noqa: BLE001 - a bad entry must not stop the server
            log.error("undecodable log entry", index=index, error=str(exc))
            self._advance(index)
            return CommandError(f"undecodable command: {exc}", 500)
        return self.apply_command(index, cmd)

    def apply_command(self, index: int, cmd: dict[str, Any]) -> Any:
        if cmd.get("Type") == "snapshot.restore":
            return self._restore_command(index, cmd)
        fn = self.dispatch.get(cmd.get("Type", ""))
        store = self.store
        store.begin(index)
        if fn is None:
            store.commit()
            return CommandError(f"unknown command type {cmd.get('Type')!r}", 500)
        stamp = cmd.get("Time")
        if isinstance(stamp, int) and not isinstance(stamp, bool):
            store.advance_clock(stamp)  # the proposer's time: lock-delays are decided from it, never a clock
        try:
            result = fn(store, cmd)
        except StoreError as exc:
            # Refused: undo whatever was written (every table), then commit just advances the index.
            store.rollback()
            store.commit()
            return CommandError(str(exc), exc.status)
        except Exception as exc:  # noqa: BLE001
            log.exception("command failed", index=index, type=cmd.get("Type"))
            store.rollback()  # as Consul aborts the command's transaction: nothing half-applied survives
            store.commit()
            return CommandError(f"internal error applying {cmd.get('Type')}: {exc}", 500)
        topics, keys = store.commit()
        self._notify(topics, keys)
        return result

    def advance(self, index: int) -> None:
        """A log entry with no command for the FSM (no-op, configuration): only the index moves."""
        self.store.begin(index)
        self.store.commit()

    _advance = advance

    def _notify(self, topics: set[Topic], keys: set[str]) -> None:
        if (topics or keys) and self._on_change is not None:
            self._on_change(topics, keys)

    def _restore_command(self, index: int, cmd: dict[str, Any]) -> Any:
        """An operator's `snapshot restore`: replace the whole store, at this log index, on every server."""
        try:
            fresh = StateStore.from_snapshot(cmd["Store"])
        except Exception as exc:  # noqa: BLE001 - the old store stays; only the index moves
            self.advance(index)
            return CommandError(f"Snapshot restore failed: {exc}", 400)
        fresh.index = index
        self.store = fresh
        if self._on_reset is not None:
            self._on_reset()
        return True

    def snapshot(self) -> bytes:
        return msgpack.packb(self.store.to_snapshot(), use_bin_type=True)

    def restore(self, data: bytes) -> None:
        """Build a new store from a snapshot and abandon the old one; every waiter wakes."""
        snap = msgpack.unpackb(data, raw=False, strict_map_key=False)
        self.store = StateStore.from_snapshot(snap)
        if self._on_reset is not None:
            self._on_reset()
