"""Transactions (/v1/txn): Consul's KV, Node, Service and Check verbs, results and error texts, with no IO.

A transaction is a list of operations (``registry.commands.TxnOp``: ``KVOp`` with values as bytes, ``NodeOp``,
``ServiceOp``, ``CheckOp``). ``run`` executes them in order against a store and returns Consul's ``Results``
and ``Errors`` as data: each result is a one-key map naming its kind, as Consul's TxnResult does --
``{"KV": entry_data(...)}`` (the entry's fields, the value as bytes or blanked) or ``{"Node"|"Service"|"Check":
<the row's values>}`` (``registry.state.codec``'s msgpack-ready lists, so a result crosses the servers' RPC as
it is) -- which the HTTP layer renders as Consul's JSON. As in Consul (agent/consul/state/txn.go), every
operation runs even after one fails, so the caller sees every failing operation; the transaction then counts
as failed and its changes are undone, in every table.

A transaction with any write verb is one ``txn`` command in the log: the FSM runs it inside a store savepoint
and rolls the store back if any operation failed, so it applies entirely or not at all, and a refused one moves no
index and wakes no watcher. A transaction of reads only is answered from the local store like any read.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from registry import sessions as sess_rules
from registry.commands import CheckOp, KVOp, NodeOp, ServiceOp, Txn, TxnOp
from registry.gocompat import go_quote
from registry.state import codec
from registry.state.store import StateStore, StoreError
from registry.structs import Check, KVEntry, Node, Service

MAX_OPS = 128  # Consul's maxTxnOps (agent/txn_endpoint.go)

WRITE_VERBS = frozenset({"set", "delete", "delete-cas", "delete-tree", "cas", "lock", "unlock"})
READ_VERBS = frozenset({"get", "get-or-empty", "get-tree", "check-index", "check-session", "check-not-exists"})


def is_write(verb: str) -> bool:
    """Consul's isWrite: only these verbs send a transaction through the log."""
    return verb in WRITE_VERBS


def op_is_write(op: TxnOp) -> bool:
    """Whether one operation sends its transaction through the log: a KV write verb (Consul's isWrite), or
    any Node, Service or Check verb but ``get`` (agent/txn_endpoint.go counts those as writes, so an
    unknown verb fails in the log, with Consul's "unknown ... verb" text)."""
    if isinstance(op, KVOp):
        return op.verb in WRITE_VERBS
    return op.verb != "get"


def precheck(ops: list[KVOp] | list[TxnOp]) -> list[dict[str, Any]]:
    """Consul's preCheck (kvsPreApply), run before the log: every KV operation but delete-tree needs a key."""
    return [{"OpIndex": i, "What": "Must provide key"} for i, op in enumerate(ops)
            if isinstance(op, KVOp) and not op.key and op.verb != "delete-tree"]  # fmt: skip


def entry_data(entry: KVEntry, with_value: bool = True) -> dict[str, Any]:
    """One result: the entry's fields, plain data that crosses the servers' RPC as it is. Results of
    everything but get/get-tree carry the entry without its value (Consul blanks it)."""
    return {
        "Key": entry.key, "Value": entry.value if with_value else None, "Flags": entry.flags,
        "Session": entry.session, "LockIndex": entry.lock_index, "CreateIndex": entry.create_index,
        "ModifyIndex": entry.modify_index,
    }  # fmt: skip


def _no_value(entry: KVEntry) -> dict[str, Any]:
    return {"KV": entry_data(entry, with_value=False)}


def _with_value(entry: KVEntry) -> dict[str, Any]:
    return {"KV": entry_data(entry)}


def node_result(n: Node) -> dict[str, Any]:
    return {"Node": codec.node_values(n)}


def service_result(s: Service) -> dict[str, Any]:
    return {"Service": codec.service_values(s)}


def check_result(c: Check) -> dict[str, Any]:
    return {"Check": codec.check_values(c)}


def _cas_ok(index: int, modify_index: int | None) -> bool:
    """Consul's catalog CAS (ensureNodeCASTxn, ensureServiceCASTxn, ensureCheckCASTxn): index 0 writes only
    what does not exist yet; any other index only a row whose ModifyIndex it is."""
    if index == 0:
        return modify_index is None
    return modify_index == index


def _node_op(store: StateStore, op: NodeOp) -> list[dict[str, Any]]:
    """Consul's txnNode: the node is found by ID when one is given, else by name."""
    verb, node = op.verb, op.node
    q = go_quote(node.node)

    def current() -> Node | None:
        if node.id:
            return next((n for n in store.nodes.values() if n.id == node.id), None)
        return store.nodes.get(node.node)

    if verb == "get":
        found = current()
        if found is None:
            raise StoreError(f"node {q} doesn't exist")
        return [node_result(found)]
    if verb in ("set", "cas"):
        existing = store.nodes.get(node.node)
        if verb == "cas" and not _cas_ok(node.modify_index, existing.modify_index if existing else None):
            raise StoreError(f"failed to set node {q}, index is stale")
        store.ensure_registration(replace(node, modify_index=0), None, [])
        return [node_result(store.nodes[node.node])]
    if verb == "delete":
        store.delete_node(node.node)
        return []
    if verb == "delete-cas":
        existing = store.nodes.get(node.node)
        if existing is None or existing.modify_index != node.modify_index:
            raise StoreError(f"failed to delete node {q}, index is stale")
        store.delete_node(node.node)
        return []
    raise StoreError(f"unknown Node verb {go_quote(verb)}")


def _service_op(store: StateStore, op: ServiceOp) -> list[dict[str, Any]]:
    """Consul's txnService: one service instance, by node name and service ID."""
    verb, node, svc = op.verb, op.node, op.service
    where = f"service {go_quote(svc.id)} on node {go_quote(node)}"
    existing = store.services.get(node, {}).get(svc.id)
    if verb == "get":
        if existing is None:
            raise StoreError(f"{where} doesn't exist")
        return [service_result(existing)]
    if verb in ("set", "cas"):
        if verb == "cas" and not _cas_ok(svc.modify_index, existing.modify_index if existing else None):
            raise StoreError(f"failed to set {where}, index is stale")
        store.ensure_service(node, replace(svc, node=node, modify_index=0))
        return [service_result(store.services[node][svc.id])]
    if verb == "delete":
        store.delete_service(node, svc.id)
        return []
    if verb == "delete-cas":
        if existing is None or existing.modify_index != svc.modify_index:
            raise StoreError(f"failed to delete {where}, index is stale")
        store.delete_service(node, svc.id)
        return []
    raise StoreError(f"unknown Service verb {go_quote(verb)}")


def _check_op(store: StateStore, op: CheckOp) -> list[dict[str, Any]]:
    """Consul's txnCheck: one check, by node name and check ID. ``cas`` is how consul-esm writes the
    result of an external check: it sends the check it read, with that read's ModifyIndex."""
    verb, chk = op.verb, op.check
    where = f"check {go_quote(chk.check_id)} on node {go_quote(chk.node)}"
    existing = store.checks.get(chk.node, {}).get(chk.check_id)
    if verb == "get":
        if existing is None:
            raise StoreError(f"{where} doesn't exist")
        return [check_result(existing)]
    if verb in ("set", "cas"):
        if verb == "cas" and not _cas_ok(chk.modify_index, existing.modify_index if existing else None):
            raise StoreError(f"failed to set {where}, index is stale")
        store.ensure_check(replace(chk, modify_index=0))
        return [check_result(store.checks[chk.node][chk.check_id])]
    if verb == "delete":
        store.delete_check(chk.node, chk.check_id)
        return []
    if verb == "delete-cas":
        if existing is None or existing.modify_index != chk.modify_index:
            raise StoreError(f"failed to delete {where}, index is stale")
        store.delete_check(chk.node, chk.check_id)
        return []
    raise StoreError(f"unknown Check verb {go_quote(verb)}")


def _op(store: StateStore, op: TxnOp) -> list[dict[str, Any]]:
    """One operation: its results. Raises StoreError with Consul's text when it fails."""
    if isinstance(op, NodeOp):
        return _node_op(store, op)
    if isinstance(op, ServiceOp):
        return _service_op(store, op)
    if isinstance(op, CheckOp):
        return _check_op(store, op)
    return _kv_op(store, op)


def _kv_op(store: StateStore, op: KVOp) -> list[dict[str, Any]]:
    """Consul's txnKVS."""
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
        return [_with_value(entry)]
    if verb == "get-or-empty":
        entry = store.kv.get(key)
        if entry is not None:
            return [_with_value(entry)]
        # Consul answers with the operation's own entry, value blanked.
        return [_no_value(KVEntry(key, None, op.flags, session=op.session, modify_index=op.index))]
    if verb == "get-tree":
        _, entries = store.kv_list(key)
        return [_with_value(e) for e in entries]
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


def run(
    store: StateStore, ops: list[KVOp] | list[TxnOp] | tuple[TxnOp, ...]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
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
    one-key maps of ``run``; ``Errors``: ``OpIndex`` and ``What``)."""
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
