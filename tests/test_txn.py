"""KV transactions in the FSM: Consul's verbs, results and texts, and all-or-nothing application."""

from __future__ import annotations

import copy

import pytest

from registry import txn as txn_rules
from registry.api.txn import render_results
from registry.commands import KVOp
from registry.fsm import FSM, encode_command
from registry.sessions import Session
from registry.state.store import StateStore
from tests.test_store import Recorder


def op(verb: str, key: str, value: bytes | None = None, flags: int = 0, index: int = 0, session: str = "") -> dict:
    return {"Verb": verb, "Key": key, "Value": value, "Flags": flags, "Index": index, "Session": session}


@pytest.fixture
def fsm() -> tuple[FSM, Recorder]:
    rec = Recorder()
    return FSM(on_change=rec), rec


def apply(f: FSM, cmd: dict) -> object:
    return f.apply(f.store.index + 1, encode_command(cmd))


def kv_ops(ops: tuple[dict, ...] | list[dict]) -> list[KVOp]:
    return [KVOp.from_op(o) for o in ops]


def run(store: StateStore, ops: list[dict]) -> tuple[list | None, list]:
    """registry.txn.run, its results rendered as the HTTP API renders them."""
    results, errors = txn_rules.run(store, kv_ops(ops))
    return render_results(results), errors


def precheck(ops: list[dict]) -> list[dict]:
    return txn_rules.precheck(kv_ops(ops))


def txn(f: FSM, *ops: dict, time: int | None = None) -> dict:
    cmd: dict = {"Type": "txn", "Ops": list(ops)}
    if time is not None:
        cmd["Time"] = time
    out = apply(f, cmd)
    assert isinstance(out, dict), out
    return {"Results": render_results(out["Results"]), "Errors": out["Errors"]}  # as the HTTP API renders it


def kv_state(store: StateStore) -> tuple:
    """Everything KV-related a refused transaction must leave exactly as it was."""
    return (
        dict(store.kv), list(store._kv_keys), dict(store._tombstones), list(store._tomb_keys),
        copy.deepcopy(store._keys_by_session), dict(store.table_index), store.kv_list("")[0],
    )  # fmt: skip


def with_session(f: FSM, sid: str = "s1", lock_delay: int = 0) -> None:
    apply(f, {"Type": "register", "Node": "n1", "Address": "10.0.0.1"})
    s = Session(sid, "", "n1", lock_delay, "release", "")
    assert apply(f, {"Type": "session", "Op": "create", "Session": s.to_command()}) == sid


def test_set_get_and_result_shapes(fsm) -> None:
    f, rec = fsm
    out = txn(f, op("set", "a", b"1", flags=7), op("set", "b", b"2"), op("get", "a"))
    idx = f.store.index
    assert out["Errors"] is None
    a_set, b_set, a_get = (r["KV"] for r in out["Results"])
    # Write verbs return the entry without its value; get returns it with the value (base64).
    assert a_set == {"LockIndex": 0, "Key": "a", "Flags": 7, "Value": None, "CreateIndex": idx, "ModifyIndex": idx}
    assert b_set["Value"] is None and b_set["Key"] == "b"
    assert a_get == {**a_set, "Value": "MQ=="}
    assert rec.keys == [{"a", "b"}]  # one command, one notification, both keys


def test_every_write_verb(fsm) -> None:
    f, _ = fsm
    txn(f, op("set", "t/x", b"x"), op("set", "t/y", b"y"), op("set", "k", b"k"))
    k_idx = f.store.kv["k"].modify_index
    out = txn(f, op("cas", "k", b"k2", index=k_idx), op("cas", "new", b"n", index=0), op("delete", "t/x"),
              op("delete-tree", "t/"), op("delete", "missing"))  # fmt: skip
    assert out["Errors"] is None
    assert [r["KV"]["Key"] for r in out["Results"]] == ["k", "new"]  # deletes add no result
    assert f.store.kv["k"].value == b"k2" and f.store.kv["new"].value == b"n"
    assert "t/x" not in f.store.kv and "t/y" not in f.store.kv
    new_idx = f.store.kv["new"].modify_index
    assert txn(f, op("delete-cas", "new", index=new_idx))["Results"] == []
    assert "new" not in f.store.kv
    # Consul: delete-cas of a key that is already gone succeeds whatever the index.
    assert txn(f, op("delete-cas", "new", index=12345))["Errors"] is None


def test_cas_index_zero_is_create_only(fsm) -> None:
    f, _ = fsm
    assert txn(f, op("cas", "c", b"1", index=0))["Errors"] is None
    out = txn(f, op("cas", "c", b"2", index=0))
    assert out == {"Results": None, "Errors": [{"OpIndex": 0, "What": 'failed to set key "c", index is stale'}]}
    out = txn(f, op("cas", "nope", b"2", index=5))
    assert out["Errors"][0]["What"] == 'failed to set key "nope", index is stale'
    assert f.store.kv["c"].value == b"1"


def test_read_verbs_and_their_errors() -> None:
    f = FSM()
    txn(f, op("set", "p/a", b"A"), op("set", "p/b", None), op("set", "q", b"Q"))
    store = f.store
    a = store.kv["p/a"]
    results, errors = run(store, [op("get-tree", "p/"), op("check-index", "p/a", index=a.modify_index),
                                  op("check-not-exists", "zzz"), op("check-session", "q")])  # fmt: skip
    assert errors == []
    assert [(r["KV"]["Key"], r["KV"]["Value"]) for r in results] == [("p/a", "QQ=="), ("p/b", None), ("p/a", None),
                                                                     ("q", None)]  # fmt: skip
    _, errors = run(store, [op("get", "zzz"), op("check-index", "p/a", index=99), op("check-index", "zzz"),
                            op("check-session", "q", session="s9"), op("check-session", "zzz"),
                            op("check-not-exists", "q"), op("frobnicate", "q")])  # fmt: skip
    assert errors == [
        {"OpIndex": 0, "What": 'key "zzz" doesn\'t exist'},
        {"OpIndex": 1, "What": f'failed index check for key "p/a", current modify index {a.modify_index} != 99'},
        {"OpIndex": 2, "What": 'failed to check index, key "zzz" doesn\'t exist'},
        {"OpIndex": 3, "What": 'failed session check for key "q", current session "" != "s9"'},
        {"OpIndex": 4, "What": 'failed to check session, key "zzz" doesn\'t exist'},
        {"OpIndex": 5, "What": 'key "q" exists'},
        {"OpIndex": 6, "What": 'unknown KV verb "frobnicate"'},
    ]
    # get-or-empty: the entry, or the operation's own key with no value.
    results, errors = run(store, [op("get-or-empty", "q"), op("get-or-empty", "none", flags=3)])
    assert errors == [] and results[0]["KV"]["Value"] == "UQ=="
    assert results[1]["KV"] == {"LockIndex": 0, "Key": "none", "Flags": 3, "Value": None, "CreateIndex": 0,
                                "ModifyIndex": 0}  # fmt: skip
    assert precheck([op("get", ""), op("delete-tree", ""), op("set", "x")]) == [{"OpIndex": 0, "What": "Must provide key"}]


def test_failing_op_in_the_middle_changes_nothing(fsm) -> None:
    f, rec = fsm
    with_session(f)
    txn(f, op("set", "keep", b"old", flags=1), op("set", "tree/a", b"a"), op("lock", "held", b"h", session="s1"))
    apply(f, {"Type": "kv", "Verb": "delete", "Key": "gone"})  # nothing to delete: no tombstone
    txn(f, op("set", "gone", b"g"))
    txn(f, op("delete", "gone"))  # a tombstone the refused transaction will overwrite
    before = kv_state(f.store)
    notified = len(rec.keys)
    out = txn(
        f,
        op("set", "keep", b"new"),
        op("set", "fresh", b"f"),
        op("delete-tree", "tree/"),
        op("unlock", "held", b"free", session="s1"),
        op("set", "gone", b"back"),
        op("check-index", "keep", index=1),  # fails
        op("delete", "keep"),
        op("lock", "fresh", session="s1"),
    )
    assert out["Results"] is None and [e["OpIndex"] for e in out["Errors"]] == [5]
    assert kv_state(f.store) == before
    assert f.store.kv["held"].session == "s1" and f.store.kv["keep"].value == b"old"
    assert len(rec.keys) == notified  # no watcher woken
    # The store still works normally afterwards (sorted lists intact).
    txn(f, op("set", "tree/b", b"b"))
    assert [e.key for e in f.store.kv_list("tree/")[1]] == ["tree/a", "tree/b"]


def test_every_failing_op_is_reported(fsm) -> None:
    f, _ = fsm
    out = txn(f, op("get", "a"), op("set", "b", b"1"), op("cas", "b", b"2", index=0))
    assert [e["OpIndex"] for e in out["Errors"]] == [0, 2]
    assert "b" not in f.store.kv


def test_locks_in_a_transaction(fsm) -> None:
    f, _ = fsm
    with_session(f, "s1", lock_delay=10**9)
    with_session(f, "s2")
    out = txn(f, op("lock", "L", b"v", session="s1"), op("check-session", "L", session="s1"))
    held, checked = (r["KV"] for r in out["Results"])
    assert held["Session"] == "s1" and held["LockIndex"] == 1 and held["Value"] is None and checked == held
    out = txn(f, op("lock", "L", b"v", session="s2"))
    assert out["Errors"] == [{"OpIndex": 0, "What": 'failed to lock key "L", lock is already held'}]
    out = txn(f, op("unlock", "L", session="s2"))
    assert out["Errors"][0]["What"] == 'failed to unlock key "L", lock isn\'t held, or is held by another session'
    assert txn(f, op("lock", "M"))["Errors"][0]["What"] == "missing session"
    assert txn(f, op("lock", "M", session="nope"))["Errors"][0]["What"] == 'invalid session "nope"'
    out = txn(f, op("unlock", "L", b"bye", session="s1"))
    assert out["Errors"] is None and "Session" not in out["Results"][0]["KV"]
    # A lock released by an invalidated session stays unavailable to others for the lock-delay.
    txn(f, op("lock", "L", session="s1"), time=5 * 10**9)
    apply(f, {"Type": "session", "Op": "destroy", "ID": "s1", "Time": 5 * 10**9})
    out = txn(f, op("lock", "L", session="s2"), time=5 * 10**9 + 1)
    assert out["Errors"] == [{"OpIndex": 0, "What": 'failed to lock key "L" due to lock delay'}]
    assert txn(f, op("lock", "L", session="s2"), time=7 * 10**9)["Errors"] is None


def test_malformed_command_is_refused_before_writing(fsm) -> None:
    f, rec = fsm
    before = kv_state(f.store)
    out = apply(f, {"Type": "txn", "Ops": [{"Verb": "set", "Key": "a", "Value": "not bytes"}]})
    assert out.message == "Value must be bytes"  # type: ignore[union-attr]
    assert kv_state(f.store) == before and rec.keys == []


def test_survives_snapshot_round_trip(fsm) -> None:
    f, _ = fsm
    txn(f, op("set", "a", b"1"), op("set", "b", b"2"))
    restored = FSM()
    restored.restore(f.snapshot())
    assert {k: e.value for k, e in restored.store.kv.items()} == {"a": b"1", "b": b"2"}


def catalog_state(store: StateStore) -> tuple:
    """Everything catalog-related a refused transaction must leave exactly as it was."""
    return (
        dict(store.nodes), copy.deepcopy(store.services), copy.deepcopy(store.checks),
        copy.deepcopy(store.by_service_name), dict(store.service_index), dict(store.node_index),
        dict(store.table_index), copy.deepcopy(store._sessions_by_node),
    )  # fmt: skip


def catalog_txn(f: FSM, *ops: object) -> dict:
    """A transaction of any operations, built as the HTTP layer builds them and sent through the log."""
    from registry.commands import Txn

    out = apply(f, Txn(tuple(ops)).to_wire())  # type: ignore[arg-type]
    assert isinstance(out, dict), out
    return {"Results": render_results(out["Results"]), "Errors": out["Errors"]}


def test_mixed_transaction_rolls_back_every_table(fsm) -> None:
    from registry.commands import CheckOp, NodeOp, ServiceOp
    from registry.structs import Check, Node, Service

    f, rec = fsm
    with_session(f)  # node n1, with a session: deleting the node would destroy it
    apply(f, {"Type": "txn", "Ops": [op("set", "k", b"1")]})
    out = catalog_txn(f, NodeOp("set", Node("", "n2", "10.0.0.2", "dc1")),
                      ServiceOp("set", "n2", Service("n2", "db", "db", port=1)),
                      CheckOp("set", Check("n2", "c", "c", status="passing", service_id="db")))  # fmt: skip
    assert out["Errors"] is None and [list(r) for r in out["Results"]] == [["Node"], ["Service"], ["Check"]]
    assert out["Results"][2]["Check"]["ServiceName"] == "db"
    c_index = f.store.checks["n2"]["c"].modify_index
    before, kv_before, notified = catalog_state(f.store), kv_state(f.store), len(rec.topics)
    out = catalog_txn(f, OpKV("set", "k", b"2"), NodeOp("delete", Node("", "n1", "", "")),
                      ServiceOp("set", "n2", Service("n2", "db2", "db", port=2)),
                      NodeOp("set", Node("", "n3", "10.0.0.3", "dc1")),
                      CheckOp("cas", Check("n2", "c", "c", status="critical", service_id="db",
                                           modify_index=c_index + 1)))  # fmt: skip
    assert out == {"Results": None, "Errors": [{"OpIndex": 4, "What": 'failed to set check "c" on node "n2", '
                                                                     "index is stale"}]}  # fmt: skip
    assert catalog_state(f.store) == before and kv_state(f.store) == kv_before
    assert "s1" in f.store.sessions and len(rec.topics) == notified
    # The same with the right index applies, and the check's index moves.
    out = catalog_txn(f, CheckOp("cas", Check("n2", "c", "c", status="critical", service_id="db",
                                              modify_index=c_index)))  # fmt: skip
    assert out["Errors"] is None and f.store.checks["n2"]["c"].status == "critical"


def OpKV(verb: str, key: str, value: bytes | None = None) -> KVOp:  # noqa: N802 - reads like the op it builds
    return KVOp(verb, key, value)


def test_txn_wire_keeps_old_kv_entries_and_round_trips_catalog_ops() -> None:
    from registry.commands import CheckOp, NodeOp, ServiceOp, Txn, from_wire
    from registry.structs import Check, Node, Service

    # An entry written before catalog operations existed: flat KV operations.
    old = from_wire({"Type": "txn", "Ops": [op("set", "a", b"1")]})
    assert old == Txn((KVOp("set", "a", b"1"),))
    cmd = Txn((KVOp("set", "a", b"1"), NodeOp("cas", Node("id", "n", "1.2.3.4", "dc1", {"lan": "x"}, {"m": "v"},
                                                        modify_index=7)),
               ServiceOp("delete-cas", "n", Service("n", "s", "svc", tags=("t",), port=5, modify_index=8,
                                                     locality={"Region": "r"})),
               CheckOp("set", Check("n", "c", "c", status="", definition={"HTTP": "http://x", "Interval": "10s"},
                                    modify_index=9))))  # fmt: skip
    assert from_wire(cmd.to_wire()) == cmd


def test_service_locality_survives_a_snapshot() -> None:
    from registry.structs import Node, Service

    f = FSM()
    f.store.begin(1)
    f.store.ensure_registration(Node("", "n", "1.1.1.1", "dc1"),
                                Service("n", "s", "s", locality={"Region": "r", "Zone": "z"}), [])  # fmt: skip
    f.store.commit()
    restored = FSM()
    restored.restore(f.snapshot())
    assert restored.store.services["n"]["s"].locality == {"Region": "r", "Zone": "z"}
