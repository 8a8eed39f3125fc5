"""The store's write transaction: a rollback leaves every table, secondary index and index map exactly as
it was, whatever ran before it; and the FSM rolls back a command that fails halfway."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from registry.commands import Noop
from registry.fsm import FSM, encode_command
from registry.sessions import Session
from registry.state.store import StateStore
from registry.state.topics import WatchSet
from registry.state.transaction import Transaction
from registry.structs import Check, Node, Service


def everything(store: StateStore) -> dict[str, Any]:
    """Every table and index the store keeps, rows and derived, as plain values."""
    return copy.deepcopy({
        "nodes": store.nodes, "services": store.services, "checks": store.checks,
        "by_service_name": store.by_service_name, "connect_by_target": store.connect_by_target,
        "service_index": store.service_index, "node_index": store.node_index, "kv": store.kv,
        "kv_keys": store._kv_keys, "tombstones": store._tombstones, "tomb_keys": store._tomb_keys,
        "sessions": store.sessions, "lock_delays": store.lock_delays,
        "sessions_by_node": store._sessions_by_node, "sessions_by_check": store._sessions_by_check,
        "keys_by_session": store._keys_by_session, "tables": store.tables, "table_index": store.table_index,
    })  # fmt: skip


NODES = ["n1", "n2"]
SERVICES = ["web", "db"]
KEYS = ["a", "a/b", "a/c", "b"]

write_op = st.one_of(
    st.tuples(st.just("register"), st.sampled_from(NODES), st.sampled_from(SERVICES), st.integers(1, 3),
              st.sampled_from(["passing", "critical"])),  # fmt: skip
    st.tuples(st.just("register-proxy"), st.sampled_from(NODES), st.sampled_from(SERVICES)),
    st.tuples(st.just("delete-node"), st.sampled_from(NODES)),
    st.tuples(st.just("delete-service"), st.sampled_from(NODES), st.sampled_from(SERVICES)),
    st.tuples(st.just("delete-check"), st.sampled_from(NODES)),
    st.tuples(st.just("kv-set"), st.sampled_from(KEYS)),
    st.tuples(st.just("kv-delete"), st.sampled_from(KEYS)),
    st.tuples(st.just("kv-delete-tree"), st.sampled_from(["", "a", "a/"])),
    st.tuples(st.just("kv-lock"), st.sampled_from(KEYS), st.sampled_from(["s1", "s2"])),
    st.tuples(st.just("kv-unlock"), st.sampled_from(KEYS), st.sampled_from(["s1", "s2"])),
    st.tuples(st.just("session-create"), st.sampled_from(["s1", "s2"]), st.sampled_from(NODES),
              st.sampled_from(["release", "delete"])),  # fmt: skip
    st.tuples(st.just("session-destroy"), st.sampled_from(["s1", "s2"])),
    st.tuples(st.just("reap"), st.integers(0, 40)),
    st.tuples(st.just("clock"), st.integers(0, 4)),  # seconds: lock-delays start and expire
    st.tuples(st.just("table-put"), st.sampled_from(["t1", "t2"]), st.sampled_from(["k1", "k2"])),
    st.tuples(st.just("table-delete"), st.sampled_from(["t1", "t2"]), st.sampled_from(["k1", "k2"])),
)


def do(store: StateStore, op: tuple) -> None:
    """One write, as an apply function would make it; refusals are part of what may run."""
    from registry.state.store import StoreError

    kind = op[0]
    try:
        if kind == "register":
            _, node, svc, port, status = op
            store.ensure_registration(
                Node(id="", node=node, address="10.0.0.1", datacenter="dc1"),
                Service(node=node, id=svc, service=svc, port=port),
                [Check(node=node, check_id=f"{svc}-c", name="c", status=status, service_id=svc),
                 Check(node=node, check_id="serfHealth", name="serf", status="passing")],
            )  # fmt: skip
        elif kind == "register-proxy":
            _, node, svc = op
            store.ensure_registration(Node(id="", node=node, address="10.0.0.1", datacenter="dc1"), Service(
                node=node, id=f"{svc}-proxy", service=f"{svc}-proxy", kind="connect-proxy", port=21000,
                proxy={"DestinationServiceName": svc}), [])  # fmt: skip
        elif kind == "delete-node":
            store.delete_node(op[1])
        elif kind == "delete-service":
            store.delete_service(op[1], op[2])
        elif kind == "delete-check":
            store.delete_check(op[1], "serfHealth")
        elif kind == "kv-set":
            store.kv_set(op[1], b"v", 0)
        elif kind == "kv-delete":
            store.kv_delete(op[1])
        elif kind == "kv-delete-tree":
            store.kv_delete_tree(op[1])
        elif kind == "kv-lock":
            store.kv_lock(op[1], b"l", 0, op[2])
        elif kind == "kv-unlock":
            store.kv_unlock(op[1], b"u", 0, op[2])
        elif kind == "session-create":
            _, sid, node, behavior = op
            store.session_create(Session(sid, "", node, 1_000_000_000, behavior, "", ("serfHealth",)))
        elif kind == "session-destroy":
            store.session_destroy(op[1])
        elif kind == "clock":
            store.advance_clock(op[1] * 1_000_000_000)
        elif kind == "reap":
            store.reap_tombstones(op[1])
        elif kind == "table-put":
            store.table_put(op[1], op[2], {"v": store._idx})
        elif kind == "table-delete":
            store.table_delete(op[1], op[2])
    except StoreError:
        pass


@settings(max_examples=150, deadline=None)
@given(before=st.lists(st.lists(write_op, max_size=4), max_size=8), doomed=st.lists(write_op, min_size=1, max_size=8),
       kept=st.lists(write_op, max_size=3), cut=st.integers(0, 8))  # fmt: skip
def test_rollback_restores_every_table(before: list, doomed: list, kept: list, cut: int) -> None:
    """Model: the store as it was before the rolled-back writes. Commands before it commit; inside one
    command, writes before a savepoint are kept and writes after it are undone."""
    store = StateStore()
    index = 0
    for command in before:
        index += 1
        store.begin(index)
        for op in command:
            do(store, op)
        store.commit()
    expected_whole = everything(store)
    index += 1
    store.begin(index)
    for op in kept:
        do(store, op)
    expected_partial = everything(store)
    topics_kept = set(store._write().topics), set(store._write().kv_keys)
    sp = store.savepoint()
    for op in doomed[:cut]:
        do(store, op)
    store.rollback(sp)
    assert everything(store) == expected_partial
    assert (store._write().topics, store._write().kv_keys) == topics_kept
    for op in doomed:
        do(store, op)
    store.rollback()
    assert everything(store) == expected_whole
    assert store.commit() == (set(), set())
    assert store.index == index


def test_rollback_drops_cached_instances() -> None:
    store = StateStore()
    store.begin(1)
    store.ensure_registration(Node(id="", node="n1", address="a", datacenter="dc1"), Service(node="n1", id="web", service="web"), [])
    store.commit()
    store.begin(2)
    store.ensure_registration(Node(id="", node="n1", address="a", datacenter="dc1"), Service(node="n1", id="web", service="web",
                                                                            port=81), [])  # fmt: skip
    assert store.service_instances("web")[0][1].port == 81  # read inside the write: cached
    store.rollback()
    store.commit()
    assert store.service_instances("web")[0][1].port == 0


def test_transaction_journal_kinds() -> None:
    d: dict[str, int] = {"a": 1}
    s: set[str] = {"x"}
    keys = ["a", "c"]
    tx = Transaction(1)
    tx.put(d, "a", 2)
    tx.put(d, "b", 3)
    assert tx.pop(d, "zz") is None
    tx.add(s, "y")
    tx.discard(s, "x")
    tx.insort(keys, "b")
    tx.remove_sorted(keys, "a")
    tx.replace_list(keys, ["q"])
    tx.topics.add(("nodes",))
    tx.kv_keys.add("k")
    tx.rollback()
    assert d == {"a": 1} and s == {"x"} and keys == ["a", "c"]
    assert tx.topics == set() and tx.kv_keys == set()


def test_fsm_rolls_back_a_command_that_fails_halfway() -> None:
    """An apply function that writes and then raises leaves no trace and wakes nobody (Consul aborts the
    command's transaction)."""
    changes: list[tuple[set, set]] = []
    fsm = FSM(on_change=lambda t, k: changes.append((t, k)))
    fsm.apply(1, encode_command({"Type": "register", "Node": "n1", "Address": "10.0.0.1",
                                 "Service": {"ID": "web", "Service": "web"}}))  # fmt: skip
    fsm.apply(2, encode_command({"Type": "kv", "Verb": "set", "Key": "a", "Value": b"1"}))
    before = everything(fsm.store)
    changes.clear()

    def half(store: StateStore, cmd: Noop) -> Any:
        store.kv_set("a", b"2", 0)
        store.kv_delete_tree("")
        store.delete_node("n1")
        store.table_put("t", "k", 1)
        raise RuntimeError("boom")

    fsm.dispatch[Noop] = half  # a no-op's apply function replaced by one that fails halfway
    out = fsm.apply(3, encode_command(Noop().to_wire()))
    assert out.status == 500 and "boom" in out.message
    assert everything(fsm.store) == before
    assert fsm.store.index == 3
    assert changes == []


def test_watch_set_keeps_the_largest_index() -> None:
    ws = WatchSet()
    ws.saw(("a",), 5)
    ws.saw(("b",), 3)
    ws.saw(("a",), 4)
    assert ws == {("a",), ("b",)} and ws.index == 5


def test_rollback_restores_expired_lock_delays_and_released_keys() -> None:
    """A directed case of the property above for the session paths a random run rarely reaches."""
    store = StateStore()
    steps = [
        [("register", "n1", "web", 1, "passing"), ("session-create", "s1", "n1", "release"), ("kv-lock", "a", "s1")],
        [("session-destroy", "s1")],  # starts a's lock-delay
        [("clock", 3), ("session-create", "s2", "n1", "delete"), ("kv-lock", "b", "s2")],
    ]
    for index, command in enumerate(steps, start=1):
        store.begin(index)
        for op in command:
            do(store, op)
        store.commit()
    assert store.lock_delays
    before = everything(store)
    store.begin(len(steps) + 1)
    do(store, ("session-destroy", "s2"))  # expires a's delay, deletes b, starts b's delay
    assert "a" not in store.lock_delays and "b" not in store.kv
    store.rollback()
    assert everything(store) == before
