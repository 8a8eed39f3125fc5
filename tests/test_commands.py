"""Typed commands: the wire map round-trips, old entries still replay, bad entries are refused as values,
and the one proposer stamps the time and raises the refusal."""

from __future__ import annotations

import asyncio

import msgpack
import pytest

from registry import commands as c
from registry.commands import CommandError, Proposer
from registry.connect.state import register_commands
from registry.fsm import FSM, encode_command
from registry.intentions import Intention
from registry.sessions import Session
from registry.structs import Check, Node, Service

NODE = Node(id="id-1", node="n1", address="10.0.0.1", datacenter="dc1", tagged_addresses={"lan": "10.0.0.1"},
            meta={"rack": "a"})  # fmt: skip
WEB = Service(node="n1", id="web-1", service="web", kind="", tags=("a", "b"), address="10.0.0.9",
              tagged_addresses={"lan": {"Address": "10.0.0.9", "Port": 80}}, meta={"v": "1"}, port=80,
              weights=(3, 1), enable_tag_override=True, proxy=None, connect={"Native": True})  # fmt: skip
CHK = Check(node="n1", check_id="web-ok", name="web ok", status="passing", notes="n", output="o", service_id="web-1",
            type="http", interval="10s", timeout="1s", definition={"HTTP": "http://x"})  # fmt: skip
IXN = Intention.from_api_dict({"SourceName": "web", "DestinationName": "db", "Action": "allow"})

COMMANDS: list[c.Command] = [
    c.Register(NODE, WEB, (CHK,), skip_node_update=True),
    c.Register(NODE),
    c.Deregister("n1", service_id="web-1"),
    c.Deregister("n1"),
    c.CheckUpdate("n1", "web-ok", "critical", "down"),
    c.KV(c.KVOp("cas", "k", b"v", flags=7, index=3)),
    c.KV(c.KVOp("lock", "k", None, session="s1")),
    c.Txn((c.KVOp("set", "a", b"1"), c.KVOp("get", "a"))),
    c.TombstoneReap(12),
    c.Noop(),
    c.SessionCreate(Session("s1", "x", "n1", 15 * 10**9, "release", "10s", ("serfHealth",), (("web-ok", ""),))),
    c.SessionDestroy("s1"),
    c.CASet({"cluster_id": "x"}, 4),
    c.ConfigEntryUpsert({"Kind": "service-intentions", "Name": "db", "Sources": []}, cas=True, index=9),
    c.ConfigEntryDelete("service-intentions", "db", cas=True, index=9),
    c.IntentionWrite("create", IXN, "2026-06-01T12:00:00Z", "id-1"),
    c.IntentionWrite("upsert", IXN, "2026-06-01T12:00:00Z"),
    c.IntentionDelete("id-1", "2026-06-01T12:00:00Z"),
    c.IntentionDeleteExact("default", "web", "default", "db", "2026-06-01T12:00:00Z"),
    c.MemberBatch((c.Register(NODE, WEB, (CHK,), skip_node_update=True), c.Deregister("n2"))),
]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda cmd: type(cmd).__name__)
def test_the_wire_map_round_trips_through_msgpack(cmd: c.Command) -> None:
    wire = msgpack.unpackb(encode_command(cmd.to_wire()), raw=False)
    assert wire["Type"] == cmd.TYPE
    assert c.from_wire(wire) == cmd


def test_entries_written_by_the_untyped_commands_still_replay() -> None:
    """The maps earlier versions wrote (a single ``Check``, no Weights, every field spelled out) apply."""
    f = FSM()
    old = [
        {"Type": "register", "ID": "", "Node": "n1", "Address": "10.0.0.1", "Datacenter": "dc1",
         "TaggedAddresses": {}, "NodeMeta": {}, "SkipNodeUpdate": False,
         "Service": {"ID": "web", "Service": "web", "Port": 80},
         "Check": {"Node": "n1", "CheckID": "c1", "Name": "c1", "Status": "passing", "ServiceID": "web"}},
        {"Type": "kv", "Verb": "set", "Key": "k", "Value": b"v", "Flags": 0, "Time": 5},
        {"Type": "session", "Op": "create", "Session": Session("s1", "", "n1", 0, "release", "").to_command()},
        {"Type": "txn", "Ops": [{"Verb": "set", "Key": "t", "Value": b"1", "Flags": 0, "Index": 0, "Session": ""}]},
    ]
    for i, wire in enumerate(old, start=1):
        assert not isinstance(f.apply(i, encode_command(wire)), CommandError)
    s = f.store
    assert s.services["n1"]["web"].weights == (1, 1) and s.checks["n1"]["c1"].status == "passing"
    assert s.kv["k"].value == b"v" and s.kv["t"].value == b"1" and "s1" in s.sessions
    assert s.clock_ns == 5


@pytest.mark.parametrize("wire, status, words", [
    ({"Type": "register", "Node": "n1", "Service": {"Service": "web", "Weights": 5}}, 400, "malformed service"),
    ({"Type": "register", "Node": "n1", "Checks": "nope"}, 400, "Checks must be a list"),
    ({"Type": "kv", "Verb": "explode", "Key": "k"}, 400, "Invalid KV verb"),
    ({"Type": "kv", "Verb": "set", "Key": "k", "Flags": -1}, 400, "Flags must be an unsigned 64-bit integer"),
    ({"Type": "txn", "Ops": []}, 400, "Ops must be a non-empty list"),
    ({"Type": "session", "Op": "destroy"}, 500, "Must provide ID"),
    ({"Type": "connect.intention", "Op": "create", "Intention": {"SourceName": "a", "DestinationName": "b",
                                                                "Action": "allow"}}, 400, "ID must be set"),
    ({"Type": "config.entry", "Op": "rename"}, 400, "invalid config entry operation"),
    ({"Type": "connect.ca.set", "State": [], "Prev": 0}, 400, "State must be a map"),
    ({"Type": "no-such"}, 500, "unknown command type"),
    ({"Type": "member.batch", "Ops": "nope"}, 400, "Ops must be a list"),
    ({"Type": "member.batch", "Ops": [{"Type": "kv", "Verb": "set", "Key": "k"}]}, 400, "a member batch holds"),
])  # fmt: skip
def test_a_malformed_entry_is_refused_as_a_value_and_only_the_index_moves(wire: dict, status: int, words: str) -> None:
    f = FSM()
    register_commands(f)
    before = f.store.kv_list("")[0], dict(f.store.nodes)
    result = f.apply(7, encode_command(wire))
    assert isinstance(result, CommandError) and result.status == status and words in result.message, result
    assert f.store.index == 7 and (f.store.kv_list("")[0], dict(f.store.nodes)) == before


def test_a_command_type_without_an_apply_function_is_refused() -> None:
    f = FSM()  # Connect's apply functions not registered
    result = f.apply(1, encode_command(c.CASet({"cluster_id": "x"}, 0).to_wire()))
    assert isinstance(result, CommandError) and result.status == 500 and "unknown command type" in result.message
    assert f.store.index == 1


def test_an_apply_function_is_registered_once() -> None:
    f = FSM()
    register_commands(f)
    with pytest.raises(ValueError):
        register_commands(f)


def test_the_proposer_stamps_its_time_and_raises_the_refusal() -> None:
    sent: list[dict] = []
    f = FSM()

    async def submit(wire: dict) -> object:
        sent.append(wire)
        return f.apply(len(sent), encode_command(wire))

    propose = Proposer(submit, lambda: 42 * 10**9).propose
    assert asyncio.run(propose(c.KV(c.KVOp("set", "k", b"v")))) is True
    assert sent[0]["Time"] == 42 * 10**9 and f.store.clock_ns == 42 * 10**9
    with pytest.raises(CommandError) as err:
        asyncio.run(propose(c.Register(NODE, checks=(Check(node="n1", check_id="c", name="c", status="bogus"),))))
    assert err.value.status == 400 and "Invalid check status" in err.value.message


def test_definitions_and_the_agent_state_import_nothing_from_the_http_api() -> None:
    """Config files and the agent validate definitions with ``registry.registration``, never the API's code
    (the agent, as the composition root, imports only the ``Api`` and the route table it builds it from)."""
    from tests.test_layers import GRAPH

    for module in ("registry.registration", "registry.commands", "registry.agent.local", "registry.agent.checks",
                   "registry.txn", "registry.fsm"):  # fmt: skip
        assert not [d for d in GRAPH[module] if d.startswith("registry.api")], module
    assert {d for d in GRAPH["registry.agent.agent"] if d.startswith("registry.api")} <= {"registry.api.http", "registry.api.routes"}


def test_a_member_batch_is_one_entry_and_all_or_nothing() -> None:
    """The leader's membership changes: every operation at the entry's index; one refused, none applied."""
    f = FSM()
    serf = Check(node="n1", check_id="serfHealth", name="Serf Health Status", status="passing")
    n2 = Node(id="id-2", node="n2", address="10.0.0.2", datacenter="dc1")
    ok = c.MemberBatch((c.Register(NODE, None, (serf,)), c.Register(n2, None, (Check(node="n2", check_id="serfHealth",
                        name="Serf Health Status", status="critical"),)), c.Deregister("n3")))  # fmt: skip
    assert f.apply(3, encode_command(ok.to_wire())) is True
    assert f.store.nodes["n1"].modify_index == f.store.nodes["n2"].modify_index == 3
    assert f.store.checks["n2"]["serfHealth"].status == "critical"
    bad = c.MemberBatch((c.Deregister("n1"), c.Register(n2, None, (Check(node="n2", check_id="serfHealth",
                         name="Serf Health Status", status="nonsense"),))))  # fmt: skip
    assert isinstance(f.apply(4, encode_command(bad.to_wire())), CommandError)
    assert "n1" in f.store.nodes and f.store.checks["n2"]["serfHealth"].status == "critical"
