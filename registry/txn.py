"""Transactions of KV operations (/v1/txn): Consul's verbs, results and error texts, with no IO.

A transaction is a list of KV operations (``registry.commands.KVOp``, values as bytes). ``run`` executes them
in order against a store and returns Consul's ``Results`` and ``Errors`` as data: each result is the entry an
operation touched (``entry_data``: its fields, the value as bytes or blanked), which the HTTP layer renders as
Consul's JSON. As in Consul (state/txn.go), every operation runs even after one fails, so the caller sees every
failing operation; the transaction then counts as failed and its changes are undone.

A transaction with any write verb is one ``txn`` command in the log: the FSM runs it inside a store savepoint
and rolls the store back if any operation failed, so it applies entirely or not at all, and a refused one moves no
index and wakes no watcher. A transaction of reads only is answered from the local store like any read.
"""

from __future__ import annotations

from typing import Any

from registry import sessions as sess_rules
from registry.commands import KVOp, Txn
from registry.gocompat import go_quote
from registry.state.store import StateStore, StoreError
from registry.structs import KVEntry

MAX_OPS = 128  # Consul's maxTxnOps (agent/txn_endpoint.go)

WRITE_VERBS = frozenset({"set", "delete", "delete-cas", "delete-tree", "cas", "lock", "unlock"})
READ_VERBS = frozenset({"get", "get-or-empty", "get-tree", "check-index", "check-session", "check-not-exists"})


def is_write(verb: str) -> bool:
    """Consul's isWrite: only these verbs send a transaction through the log."""
    return verb in WRITE_VERBS


def precheck(ops: list[KVOp]) -> list[dict[str, Any]]:
    """Consul's preCheck (kvsPreApply), run before the log: every operation but delete-tree needs a key."""
    return [{"OpIndex": i, "What": "Must provide key"} for i, op in enumerate(ops) if not op.key and op.verb != "delete-tree"]


def entry_data(entry: KVEntry, with_value: bool = True) -> dict[str, Any]:
    """One result: the entry's fields, plain data that crosses the servers' RPC as it is. Results of
    everything but get/get-tree carry the entry without its value (Consul blanks it)."""
    return {
        "Key": entry.key, "Value": entry.value if with_value else None, "Flags": entry.flags,
        "Session": entry.session, "LockIndex": entry.lock_index, "CreateIndex": entry.create_index,
        "ModifyIndex": entry.modify_index,
    }  # fmt: skip


def _no_value(entry: KVEntry) -> dict[str, Any]:
    return entry_data(entry, with_value=False)


def _op(store: StateStore, op: KVOp) -> list[dict[str, Any]]:
    """One operation: its result entries. Raises StoreError with Consul's text when it fails."""
    verb = op.verb
    key = op.key
    q = go_quote(key)
    if verb == "set":
        store.kv_set(key, op.value, op.flags)
        return [_no_value(store.kv[key])]
    if verb == "cas":
        if not store.kv_cas(key, op.value, op.flags, op.index):
            raise StoreError(f"failed to set key {q}, index is stale")
        return [_no_value(store.kv[key])]
    if verb == "delete":
        store.kv_delete(key)
        return []
    if verb == "delete-cas":
        if not store.kv_delete_cas(key, op.index):
            raise StoreError(f"failed to delete key {q}, index is stale")
        return []
    if verb == "delete-tree":
        store.kv_delete_tree(key)
        return []
    if verb == "lock":
        session = op.session
        old = store.kv.get(key)
        if session and session in store.sessions and (old is None or old.session != session):
            if sess_rules.in_lock_delay(store.lock_delay_until(key), store.clock_ns):
                raise StoreError(f"failed to lock key {q} due to lock delay")
        if not store.kv_lock(key, op.value, op.flags, session):  # raises "missing session"/"invalid session"
            raise StoreError(f"failed to lock key {q}, lock is already held")
        return [_no_value(store.kv[key])]
    if verb == "unlock":
        if not store.kv_unlock(key, op.value, op.flags, op.session):
            raise StoreError(f"failed to unlock key {q}, lock isn't held, or is held by another session")
        return [_no_value(store.kv[key])]
    if verb == "get":
        entry = store.kv.get(key)
        if entry is None:
            raise StoreError(f"key {q} doesn't exist")
        return [entry_data(entry)]
    if verb == "get-or-empty":
        entry = store.kv.get(key)
        if entry is not None:
            return [entry_data(entry)]
        # Consul answers with the operation's own entry, value blanked.
        return [_no_value(KVEntry(key, None, op.flags, session=op.session, modify_index=op.index))]
    if verb == "get-tree":
        _, entries = store.kv_list(key)
        return [entry_data(e) for e in entries]
    if verb == "check-index":
        entry = store.kv.get(key)
        if entry is None:
            raise StoreError(f"failed to check index, key {q} doesn't exist")
        if entry.modify_index != op.index:
            raise StoreError(
                f"failed index check for key {q}, current modify index {entry.modify_index} != {op.index}"
            )
        return [_no_value(entry)]
    if verb == "check-session":
        entry = store.kv.get(key)
        if entry is None:
            raise StoreError(f"failed to check session, key {q} doesn't exist")
        if entry.session != op.session:
            raise StoreError(
                f"failed session check for key {q}, current session {go_quote(entry.session)} != "
                f"{go_quote(op.session)}"
            )
        return [_no_value(entry)]
    if verb == "check-not-exists":
        if key in store.kv:
            raise StoreError(f"key {q} exists")
        return []
    raise StoreError(f"unknown KV verb {go_quote(verb)}")


def run(store: StateStore, ops: list[KVOp] | tuple[KVOp, ...]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every operation in order; returns (results, errors). Writes are left in the store: the caller (the
    FSM, inside a savepoint) rolls them back when there are errors."""
    results: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for i, op in enumerate(ops):
        try:
            results.extend(_op(store, op))
        except StoreError as exc:
            errors.append({"OpIndex": i, "What": str(exc)})
    return results, errors


def apply_txn(store: StateStore, cmd: Txn) -> dict[str, Any]:
    """The FSM's ``txn`` command: all operations or none. Returns Consul's TxnResponse as data (``Results``:
    the entries of ``entry_data``; ``Errors``: ``OpIndex`` and ``What``)."""
    savepoint = store.savepoint()
    try:
        results, errors = run(store, cmd.ops)
    except BaseException:
        store.rollback(savepoint)
        raise
    if errors:
        store.rollback(savepoint)
        return {"Results": None, "Errors": errors}
    return {"Results": results, "Errors": None}
