"""The finite state machine: log entries in, state store writes out.

A log entry is a msgpack map with a ``Type`` and that type's fields (``registry.commands``); the FSM decodes
it into its typed command and calls the apply function its dispatch table holds for the command's class, as
Consul's FSM looks up the apply function registered for a message type (agent/consul/fsm/commands_ce.go).
Apply functions validate before the first write (raising ``StoreError`` to refuse), so a refused command
leaves the store as it was. A refused or undecodable command returns a ``CommandError`` value to whoever
proposed it; it never raises out of ``apply``, because an exception there would stop a server from applying
its log. Results are data (booleans, IDs, ``TxnResult``); rendering them is the API's business.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import msgpack
import structlog

from registry import commands as c
from registry.commands import CommandError
from registry.state.acl_table import ACL_DISPATCH
from registry.state.autopilot_table import apply_autopilot_set
from registry.state.coordinate_table import apply_coordinate_batch
from registry.state.event_table import EVENT_DISPATCH
from registry.state.query_table import PQ_DISPATCH
from registry.state.store import StateStore, StoreError, Topic
from registry.txn import apply_txn

log = structlog.get_logger("proconsul.fsm")

__all__ = ["FSM", "CommandError", "encode_command", "decode_command"]

C = TypeVar("C")
ApplyFn = Callable[[StateStore, Any], Any]


def encode_command(cmd: dict[str, Any]) -> bytes:
    """A command's wire map (``Command.to_wire()``, with the proposer's ``Time``) -> the log entry's bytes."""
    return msgpack.packb(cmd, use_bin_type=True)


def decode_command(data: bytes) -> dict[str, Any]:
    cmd = msgpack.unpackb(data, raw=False, strict_map_key=True)
    if not isinstance(cmd, dict) or not isinstance(cmd.get("Type"), str):
        raise ValueError("command is not a map with a Type")
    return cmd


# ---------------------------------------------------------------------- apply functions


def _register(store: StateStore, cmd: c.Register) -> bool:
    store.ensure_registration(cmd.node, cmd.service, list(cmd.checks), cmd.skip_node_update)
    return True


def _deregister(store: StateStore, cmd: c.Deregister) -> bool:
    if cmd.service_id:
        store.delete_service(cmd.node, cmd.service_id)
    elif cmd.check_id:
        store.delete_check(cmd.node, cmd.check_id)
    else:
        store.delete_node(cmd.node)
    return True


def _check_update(store: StateStore, cmd: c.CheckUpdate) -> bool:
    store.update_check_status(cmd.node, cmd.check_id, cmd.status, cmd.output)
    return True


def _kv(store: StateStore, cmd: c.KV) -> bool:
    op = cmd.op
    verb, key = op.verb, op.key
    if verb == "set":
        store.kv_set(key, op.value, op.flags)
        return True
    if verb == "cas":
        return store.kv_cas(key, op.value, op.flags, op.index)
    if verb == "delete":
        store.kv_delete(key)
        return True
    if verb == "delete-cas":
        return store.kv_delete_cas(key, op.index)
    if verb == "delete-tree":
        store.kv_delete_tree(key)
        return True
    if verb == "lock":
        return store.kv_lock(key, op.value, op.flags, op.session)
    if verb == "unlock":
        return store.kv_unlock(key, op.value, op.flags, op.session)
    raise StoreError(f"Invalid KV verb {verb!r}")


def _session_create(store: StateStore, cmd: c.SessionCreate) -> str:
    """Lock-delays start at the command's ``Time``, which the FSM has already given the store."""
    store.session_create(cmd.session)
    return cmd.session.id


def _session_destroy(store: StateStore, cmd: c.SessionDestroy) -> bool:
    store.session_destroy(cmd.id)
    return True


def _tombstone_reap(store: StateStore, cmd: c.TombstoneReap) -> bool:
    store.reap_tombstones(cmd.index)
    return True


def _noop(store: StateStore, cmd: c.Noop) -> bool:
    return True


def _member_batch(store: StateStore, cmd: c.MemberBatch) -> bool:
    for op in cmd.ops:
        if isinstance(op, c.Register):
            _register(store, op)
        else:
            _deregister(store, op)
    return True


DISPATCH: dict[type, ApplyFn] = {
    c.Register: _register,
    c.Deregister: _deregister,
    c.CheckUpdate: _check_update,
    c.KV: _kv,
    c.SessionCreate: _session_create,
    c.SessionDestroy: _session_destroy,
    c.Txn: apply_txn,  # KV, Node, Service and Check operations, all or none (registry.txn)
    c.TombstoneReap: _tombstone_reap,
    c.Noop: _noop,
    c.MemberBatch: _member_batch,  # the leader's gossip membership changes (registry.agent.membership)
    c.AutopilotSetConfig: apply_autopilot_set,  # Operator.AutopilotSetConfiguration (registry.state.autopilot_table)
    **ACL_DISPATCH,  # tokens, policies, roles, auth methods, binding rules, bootstrap (registry.state.acl_table)
    **PQ_DISPATCH,  # prepared queries (registry.state.query_table)
    **EVENT_DISPATCH,  # the ring of recent user events (registry.state.event_table)
    c.CoordinateBatchUpdate: apply_coordinate_batch,  # network coordinates (registry.state.coordinate_table)
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
        self.dispatch: dict[type, ApplyFn] = dict(DISPATCH)

    def register(self, command: type[C], fn: Callable[[StateStore, C], Any]) -> None:
        """Subsystems (Connect's CA, config entries, intentions) add the apply functions of their commands."""
        if command in self.dispatch:
            raise ValueError(f"command {command.__name__} already registered")
        self.dispatch[command] = fn

    def apply(self, index: int, data: bytes) -> Any:
        try:
            wire = decode_command(data)
        except Exception as exc:  # noqa: BLE001 - a bad entry must not stop the server
            log.error("undecodable log entry", index=index, error=str(exc))
            self.advance(index)
            return CommandError(f"undecodable command: {exc}", 500)
        return self.apply_command(index, wire)

    def apply_command(self, index: int, wire: dict[str, Any]) -> Any:
        """Apply one decoded entry (its wire map) at ``index``; the result, or a CommandError value."""
        stamp = wire.get("Time")
        try:
            cmd = c.from_wire(wire)
        except CommandError as exc:
            self._refused(index, stamp)
            return exc
        except Exception as exc:  # noqa: BLE001 - a decoder bug must not stop the server either
            log.exception("command failed to decode", index=index, type=wire.get("Type"))
            self._refused(index, stamp)
            return CommandError(f"internal error applying {wire.get('Type')}: {exc}", 500)
        if isinstance(cmd, c.SnapshotRestore):
            return self._restore_command(index, cmd)
        fn = self.dispatch.get(type(cmd))
        if fn is None:
            self.advance(index)
            return CommandError(f"unknown command type {wire.get('Type')!r}", 500)
        store = self.store
        store.begin(index)
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
            log.exception("command failed", index=index, type=cmd.TYPE)
            store.rollback()  # as Consul aborts the command's transaction: nothing half-applied survives
            store.commit()
            return CommandError(f"internal error applying {cmd.TYPE}: {exc}", 500)
        topics, keys = store.commit()
        self._notify(topics, keys)
        return result

    def _refused(self, index: int, stamp: Any) -> None:
        """A command refused before it reached the store: only the index (and the proposer's time) move."""
        store = self.store
        store.begin(index)
        if isinstance(stamp, int) and not isinstance(stamp, bool):
            store.advance_clock(stamp)
        store.commit()

    def advance(self, index: int) -> None:
        """A log entry with no command for the FSM (no-op, configuration): only the index moves."""
        self.store.begin(index)
        self.store.commit()

    def _notify(self, topics: set[Topic], keys: set[str]) -> None:
        if (topics or keys) and self._on_change is not None:
            self._on_change(topics, keys)

    def _restore_command(self, index: int, cmd: c.SnapshotRestore) -> Any:
        """An operator's `snapshot restore`: replace the whole store, at this log index, on every server."""
        try:
            fresh = StateStore.from_snapshot(cmd.store)
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
