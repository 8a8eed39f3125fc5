"""The consensus seam is declared, not probed: every implementation has every member of ``Consensus`` with
the same parameters and the same sync/async shape; the RPC router and the command codec behave as the
application relies on."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from registry.agent.remote import RemoteServers
from registry.consensus import CommandResults, Consensus, LocalLog, RPCError
from registry.fsm import FSM, CommandError
from registry.raft.driver import RaftServer
from registry.raft.fsm import BytesCommands
from registry.raft.rpc import RPCRouter

IMPLEMENTATIONS = [LocalLog, RaftServer, RemoteServers]


def _members() -> dict[str, Any]:
    return {name: value for name, value in vars(Consensus).items()
            if not name.startswith("_") and callable(value)}  # fmt: skip


@pytest.mark.parametrize("impl", IMPLEMENTATIONS, ids=lambda c: c.__name__)
def test_implements_every_member_of_the_protocol(impl: type) -> None:
    for name, declared in _members().items():
        actual = getattr(impl, name, None)
        assert actual is not None, f"{impl.__name__} lacks {name}"
        assert inspect.iscoroutinefunction(actual) == inspect.iscoroutinefunction(declared), \
            f"{impl.__name__}.{name}: async differs from the protocol"  # fmt: skip
        want = [(p.name, p.kind) for p in inspect.signature(declared).parameters.values()]
        got = [(p.name, p.kind) for p in inspect.signature(actual).parameters.values()]
        assert got[: len(want)] == want, f"{impl.__name__}.{name}{inspect.signature(actual)} vs protocol {want}"
        extra = list(inspect.signature(actual).parameters.values())[len(want):]
        assert all(p.default is not inspect.Parameter.empty for p in extra), f"{impl.__name__}.{name}"
    assert "fsm" in Consensus.__annotations__


def test_the_protocol_declares_what_callers_use() -> None:
    assert {"start", "stop", "propose", "barrier_read", "fast_read_ok", "is_leader", "known_leader",
            "leader_address", "last_contact_ms", "peers", "call_leader", "configuration", "remove_server",
            "transfer_leadership", "on_leader_change", "http_target", "refresh", "forget_leader",
            "advertise_http"} <= set(_members())  # fmt: skip


async def test_router_dispatches_by_name_and_refuses_unknown_methods() -> None:
    router = RPCRouter()

    async def echo(args: Any) -> Any:
        return args

    router.register("echo", echo)
    with pytest.raises(ValueError, match="already registered"):
        router.register("echo", echo)
    assert await router.dispatch("echo", [1, "a"]) == [1, "a"]
    with pytest.raises(RPCError) as err:
        await router.dispatch("nope", None)
    assert err.value.status == 400 and err.value.message == "unknown rpc method 'nope'"
    assert router.methods() == ["echo"]


def test_command_results_carry_a_refusal_across_the_wire() -> None:
    codec = CommandResults()
    refusal = CommandError("Missing node registration", 404)
    wire = codec.encode_result(refusal)
    assert not isinstance(wire, CommandError)
    assert codec.decode_result(wire) == refusal
    assert codec.decode_result(codec.encode_result({"ok": [1, 2]})) == {"ok": [1, 2]}
    assert FSM().apply(1, codec.encode_command({"Type": "kv", "Verb": "set", "Key": "a", "Value": b"1"})) is True


def test_bytes_commands_take_bytes_only() -> None:
    codec = BytesCommands()
    assert codec.encode_command(b"x") == b"x"
    with pytest.raises(TypeError):
        codec.encode_command({"Type": "kv"})


async def test_the_dev_log_answers_operator_calls_as_a_single_server() -> None:
    router = RPCRouter()

    async def ping(args: Any) -> Any:
        return "pong"

    router.register("ping", ping)
    log = LocalLog(FSM(), "127.0.0.1:8300", "id-1", "dev", router)
    assert log.configuration() == [{"ID": "id-1", "Node": "dev", "Address": "127.0.0.1:8300", "Leader": True,
                                     "Voter": True, "ProtocolVersion": "3", "LastIndex": 0}]  # fmt: skip
    with pytest.raises(RPCError) as err:
        await log.remove_server("id-1")
    assert err.value.status == 400 and "single-node dev log" in err.value.message
    with pytest.raises(RPCError) as err:
        await log.transfer_leadership(None)
    assert err.value.status == 500 and "single-node dev log" in err.value.message
    assert await log.call_leader("ping", None, 1.0) == "pong"
