"""The state store and FSM: one write path, indexes, no half-applied writes, precise watch topics."""

from __future__ import annotations

import msgpack
import pytest

from registry.fsm import FSM, CommandError, encode_command
from registry.state.store import StateStore


def reg(node: str, svc: str | None = None, sid: str | None = None, checks: list | None = None, **extra) -> dict:
    cmd = {"Type": "register", "Node": node, "Address": "10.0.0.1", "Datacenter": "dc1", **extra}
    if svc:
        cmd["Service"] = {"ID": sid or svc, "Service": svc, "Tags": ["v1"], "Port": 80}
    if checks:
        cmd["Checks"] = checks
    return cmd


class Recorder:
    def __init__(self) -> None:
        self.topics: list[set] = []
        self.keys: list[set] = []

    def __call__(self, topics: set, keys: set) -> None:
        self.topics.append(set(topics))
        self.keys.append(set(keys))


@pytest.fixture
def fsm() -> tuple[FSM, Recorder]:
    rec = Recorder()
    return FSM(on_change=rec), rec


def apply(fsm: FSM, cmd: dict, index: list[int] = [0]) -> object:  # noqa: B006 - a counter per process
    index[0] += 1
    return fsm.apply(fsm.store.index + 1, encode_command(cmd))


def test_register_stamps_indexes(fsm) -> None:
    f, _ = fsm
    assert apply(f, reg("n1", "web")) is True
    s = f.store
    svc = s.services["n1"]["web"]
    assert svc.create_index == svc.modify_index == s.index
    assert s.svc_index("web") == s.index
    first = s.index
    # Re-registering the same thing is a no-op for indexes: anti-entropy must not wake watchers.
    apply(f, reg("n1", "web"))
    assert s.services["n1"]["web"].modify_index == first
    assert s.svc_index("web") == first


def test_refused_command_changes_nothing(fsm) -> None:
    f, rec = fsm
    apply(f, reg("n1", "web"))
    before = f.store.to_snapshot()
    bad = reg("n1", "web2", checks=[{"CheckID": "c1", "Name": "c1", "Status": "bogus"}])
    result = apply(f, bad)
    assert isinstance(result, CommandError) and "Invalid check status" in result.message
    after = f.store.to_snapshot()
    after["index"] = before["index"]
    assert after == before
    assert "web2" not in f.store.by_service_name
    # A check for a service that does not exist is refused too, without registering the node change.
    result = apply(f, reg("n1", checks=[{"CheckID": "c", "Name": "c", "ServiceID": "nope", "Status": "passing"}],
                          Address="10.9.9.9"))  # fmt: skip
    assert isinstance(result, CommandError)
    assert f.store.nodes["n1"].address == "10.0.0.1"


def test_garbage_entries_do_not_crash(fsm) -> None:
    f, _ = fsm
    idx = f.store.index
    assert isinstance(f.apply(idx + 1, b"\xc1\xff garbage"), CommandError)
    assert isinstance(f.apply(idx + 2, msgpack.packb({"Type": "register", "Node": 5})), CommandError)
    assert isinstance(f.apply(idx + 3, msgpack.packb({"Type": "no-such"})), CommandError)
    assert isinstance(f.apply(idx + 4, msgpack.packb({"Type": "kv", "Verb": "set", "Key": "k", "Value": "str"})),
                      CommandError)  # fmt: skip
    assert f.store.index == idx + 4 and not f.store.kv


def test_watch_topics_are_precise(fsm) -> None:
    f, rec = fsm
    apply(f, reg("n1", "web"))
    apply(f, reg("n1", "db"))
    rec.topics.clear()
    apply(f, {"Type": "register", "Node": "n1", "Address": "10.0.0.1", "Datacenter": "dc1",
              "Service": {"ID": "db", "Service": "db", "Tags": ["v2"], "Port": 80}})  # fmt: skip
    assert ("svc", "db") in rec.topics[-1]
    assert ("svc", "web") not in rec.topics[-1]
    # A node-level check change touches every service on the node.
    apply(f, reg("n1", checks=[{"CheckID": "maint", "Name": "m", "Status": "critical"}]))
    assert {("svc", "db"), ("svc", "web")} <= rec.topics[-1]


def test_kv_cas_semantics(fsm) -> None:
    f, rec = fsm
    assert apply(f, {"Type": "kv", "Verb": "cas", "Key": "a", "Value": b"1", "Index": 0}) is True
    assert apply(f, {"Type": "kv", "Verb": "cas", "Key": "a", "Value": b"2", "Index": 0}) is False
    idx = f.store.kv["a"].modify_index
    assert apply(f, {"Type": "kv", "Verb": "cas", "Key": "a", "Value": b"3", "Index": idx + 99}) is False
    assert apply(f, {"Type": "kv", "Verb": "cas", "Key": "a", "Value": b"3", "Index": idx}) is True
    assert f.store.kv["a"].value == b"3"
    assert f.store.kv["a"].create_index == idx
    assert apply(f, {"Type": "kv", "Verb": "delete-cas", "Key": "a", "Index": idx}) is False
    assert apply(f, {"Type": "kv", "Verb": "delete-cas", "Key": "a", "Index": f.store.kv["a"].modify_index}) is True
    assert "a" not in f.store.kv
    assert rec.keys[-1] == {"a"}


def test_kv_prefix_index_survives_deletes(fsm) -> None:
    f, _ = fsm
    for k in ("app/a", "app/b", "other"):
        apply(f, {"Type": "kv", "Verb": "set", "Key": k, "Value": b"x"})
    idx1, entries = f.store.kv_list("app/")
    assert [e.key for e in entries] == ["app/a", "app/b"]
    apply(f, {"Type": "kv", "Verb": "delete", "Key": "app/b"})
    idx2, entries = f.store.kv_list("app/")
    assert idx2 > idx1, "a delete under the prefix must move the prefix's index (tombstone)"
    apply(f, {"Type": "kv", "Verb": "delete-tree", "Key": "app/"})
    idx3, entries = f.store.kv_list("app/")
    assert entries == [] and idx3 > idx2


def test_kv_keys_separator(fsm) -> None:
    f, _ = fsm
    for k in ("web/bar", "web/foo", "web/subdir/x", "web/subdir/y", "webby"):
        apply(f, {"Type": "kv", "Verb": "set", "Key": k, "Value": b"x"})
    _, keys = f.store.kv_keys("web/", "/")
    assert keys == ["web/bar", "web/foo", "web/subdir/"]
    _, keys = f.store.kv_keys("web", "")
    assert keys == ["web/bar", "web/foo", "web/subdir/x", "web/subdir/y", "webby"]


def test_snapshot_round_trip_and_restore_wakes_everyone(fsm) -> None:
    f, _ = fsm
    apply(f, reg("n1", "web", checks=[{"CheckID": "c", "Name": "c", "ServiceID": "web", "Status": "passing"}]))
    apply(f, {"Type": "kv", "Verb": "set", "Key": "k", "Value": b"v", "Flags": 7})
    data = f.snapshot()
    woke = []
    g = FSM(on_reset=lambda: woke.append(True))
    g.restore(data)
    assert woke == [True]
    assert g.store.to_snapshot() == f.store.to_snapshot()
    assert g.store.service_instances("web")[0][1].port == 80
    assert g.store.checks["n1"]["c"].service_name == "web"


def test_deregister_node_removes_everything(fsm) -> None:
    f, rec = fsm
    apply(f, reg("n1", "web", checks=[{"CheckID": "c", "Name": "c", "ServiceID": "web", "Status": "passing"}]))
    apply(f, {"Type": "deregister", "Node": "n1"})
    s: StateStore = f.store
    assert "n1" not in s.nodes and "n1" not in s.services and "n1" not in s.checks
    assert "web" not in s.by_service_name
    assert ("svc", "web") in rec.topics[-1]


def test_connect_index(fsm) -> None:
    f, _ = fsm
    apply(f, {"Type": "register", "Node": "n1", "Address": "1.2.3.4", "Datacenter": "dc1",
              "Service": {"ID": "web-proxy", "Service": "web-sidecar-proxy", "Kind": "connect-proxy", "Port": 21000,
                          "Proxy": {"DestinationServiceName": "web"}}})  # fmt: skip
    apply(f, {"Type": "register", "Node": "n2", "Address": "1.2.3.5", "Datacenter": "dc1",
              "Service": {"ID": "native", "Service": "web", "Port": 8443, "Connect": {"Native": True}}})  # fmt: skip
    got = [(n.node, s.id) for n, s in f.store.service_instances("web", connect=True)]
    assert got == [("n1", "web-proxy"), ("n2", "native")]
