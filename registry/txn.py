"""Transactions of KV operations (/v1/txn): Consul's verbs, results and error texts, with no IO.

A transaction is a list of canonical KV operations (``{"Verb", "Key", "Value", "Flags", "Index", "Session"}``,
values as bytes). ``run`` executes them in order against a store and returns Consul's ``Results`` and
``Errors``. As in Consul (state/txn.go), every operation runs even after one fails, so the caller sees every
failing operation; the transaction then counts as failed and its changes are undone.

A transaction with any write verb is one ``txn`` command in the log: the FSM runs it inside a store savepoint
and rolls the store back if any operation failed, so it applies entirely or not at all, and a refused one moves no
index and wakes no watcher. A transaction of reads only is answered from the local store like any read.
"""

from __future__ import annotations

from typing import Any

from registry import sessions as sess_rules
from registry.api.views import kv_json
from registry.filtering import go_quote
from registry.state.store import StateStore, StoreError
from registry.structs import KVEntry

MAX_OPS = 128  # Consul's maxTxnOps (agent/txn_endpoint.go)

WRITE_VERBS = frozenset({"set", "delete", "delete-cas", "delete-tree", "cas", "lock", "unlock"})
READ_VERBS = frozenset({"get", "get-or-empty", "get-tree", "check-index", "check-session", "check-not-exists"})


def is_write(verb: str) -> bool:
    """Consul's isWrite: only these verbs send a transaction through the log."""
    return verb in WRITE_VERBS


def precheck(ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consul's preCheck (kvsPreApply), run before the log: every operation but delete-tree needs a key."""
    return [
        {"OpIndex": i, "What": "Must provide key"}
        for i, op in enumerate(ops)
        if not op.get("Key") and op.get("Verb") != "delete-tree"
    ]


def _no_value(entry: KVEntry) -> dict[str, Any]:
    """Results of everything but get/get-tree carry the entry without its value (Consul blanks it)."""
    out = kv_json(entry)
    out["Value"] = None
    return out


def _op(store: StateStore, op: dict[str, Any]) -> list[dict[str, Any]]:
    """One operation: its result entries (JSON-ready). Raises StoreError with Consul's text when it fails."""
    verb = op["Verb"]
    key: str = op["Key"]
    q = go_quote(key)
    if verb == "set":
        store.kv_set(key, op["Value"], op["Flags"])
        return [_no_value(store.kv[key])]
    if verb == "cas":
        if not store.kv_cas(key, op["Value"], op["Flags"], op["Index"]):
            raise StoreError(f"failed to set key {q}, index is stale")
        return [_no_value(store.kv[key])]
    if verb == "delete":
        store.kv_delete(key)
        return []
    if verb == "delete-cas":
        if not store.kv_delete_cas(key, op["Index"]):
            raise StoreError(f"failed to delete key {q}, index is stale")
        return []
    if verb == "delete-tree":
        store.kv_delete_tree(key)
        return []
    if verb == "lock":
        session = op["Session"]
        old = store.kv.get(key)
        if session and session in store.sessions and (old is None or old.session != session):
            if sess_rules.in_lock_delay(store.lock_delay_until(key), store.clock_ns):
                raise StoreError(f"failed to lock key {q} due to lock delay")
        if not store.kv_lock(key, op["Value"], op["Flags"], session):  # raises "missing session"/"invalid session"
            raise StoreError(f"failed to lock key {q}, lock is already held")
        return [_no_value(store.kv[key])]
    if verb == "unlock":
        if not store.kv_unlock(key, op["Value"], op["Flags"], op["Session"]):
            raise StoreError(f"failed to unlock key {q}, lock isn't held, or is held by another session")
        return [_no_value(store.kv[key])]
    if verb == "get":
        entry = store.kv.get(key)
        if entry is None:
            raise StoreError(f"key {q} doesn't exist")
        return [kv_json(entry)]
    if verb == "get-or-empty":
        entry = store.kv.get(key)
        if entry is not None:
            return [kv_json(entry)]
        # Consul answers with the operation's own entry, value blanked.
        empty = KVEntry(key, None, op["Flags"], session=op["Session"], modify_index=op["Index"])
        return [kv_json(empty)]
    if verb == "get-tree":
        _, entries = store.kv_list(key)
        return [kv_json(e) for e in entries]
    if verb == "check-index":
        entry = store.kv.get(key)
        if entry is None:
            raise StoreError(f"failed to check index, key {q} doesn't exist")
        if entry.modify_index != op["Index"]:
            raise StoreError(
                f"failed index check for key {q}, current modify index {entry.modify_index} != {op['Index']}"
            )
        return [_no_value(entry)]
    if verb == "check-session":
        entry = store.kv.get(key)
        if entry is None:
            raise StoreError(f"failed to check session, key {q} doesn't exist")
        if entry.session != op["Session"]:
            raise StoreError(
                f"failed session check for key {q}, current session {go_quote(entry.session)} != "
                f"{go_quote(op['Session'])}"
            )
        return [_no_value(entry)]
    if verb == "check-not-exists":
        if key in store.kv:
            raise StoreError(f"key {q} exists")
        return []
    raise StoreError(f"unknown KV verb {go_quote(verb)}")


def run(store: StateStore, ops: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every operation in order; returns (results, errors). Writes are left in the store: the caller (the
    FSM, inside a savepoint) rolls them back when there are errors."""
    results: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for i, op in enumerate(ops):
        try:
            results.extend({"KV": r} for r in _op(store, op))
        except StoreError as exc:
            errors.append({"OpIndex": i, "What": str(exc)})
    return results, errors


def ops_from_command(raw: Any) -> list[dict[str, Any]]:
    """A ``txn`` command's ``Ops`` -> canonical operations; anything malformed raises StoreError before the
    store is touched."""
    if not isinstance(raw, list) or not raw:
        raise StoreError("Ops must be a non-empty list")
    ops = []
    for op in raw:
        if not isinstance(op, dict):
            raise StoreError("each operation must be a map")
        verb, key, session = op.get("Verb"), op.get("Key", ""), op.get("Session", "") or ""
        value = op.get("Value")
        flags, index = op.get("Flags", 0) or 0, op.get("Index", 0) or 0
        if not isinstance(verb, str) or not isinstance(key, str) or not isinstance(session, str):
            raise StoreError("Verb, Key and Session must be strings")
        if value is not None and not isinstance(value, bytes):
            raise StoreError("Value must be bytes")
        for name, v in (("Flags", flags), ("Index", index)):
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 2**64:
                raise StoreError(f"{name} must be an unsigned 64-bit integer")
        ops.append({"Verb": verb, "Key": key, "Value": value, "Flags": flags, "Index": index, "Session": session})
    return ops


def apply_txn(store: StateStore, cmd: dict[str, Any]) -> dict[str, Any]:
    """The FSM's ``txn`` command: all operations or none. Returns Consul's TxnResponse shape."""
    ops = ops_from_command(cmd.get("Ops"))
    savepoint = store.savepoint()
    try:
        results, errors = run(store, ops)
    except BaseException:
        store.rollback(savepoint)
        raise
    if errors:
        store.rollback(savepoint)
        return {"Results": None, "Errors": errors}
    return {"Results": results, "Errors": None}
