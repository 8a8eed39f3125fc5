"""How a client agent spreads its requests over the servers and its anti-entropy over time, as Consul's
agent/router and agent/ae do (registry/agent/router.py), and the client agent's use of it."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from registry.agent import remote as remote_module
from registry.agent.forward import LeaderForwarder
from registry.agent.remote import RemoteServers
from registry.agent.router import (
    SKIP_UNREACHABLE,
    ServerHealth,
    ServerPicker,
    ae_scale_factor,
    full_sync_delay,
    rebalance_interval,
)
from registry.consensus import NotLeaderError, RPCError
from registry.fsm import FSM
from registry.raft.rpc import Caller, RPCRouter


@pytest.mark.parametrize(("nodes", "factor"), [(1, 1), (128, 1), (129, 2), (256, 2), (257, 3), (512, 3),
                                               (1000, 4), (4096, 6), (10_000, 8), (100_000, 11)])  # fmt: skip
def test_consuls_anti_entropy_scale_factor(nodes: int, factor: int) -> None:
    """ae.go scaleFactor: 1 up to 128 nodes, then 1 + ceil(log2(nodes) - log2(128))."""
    assert ae_scale_factor(nodes) == factor


def test_full_syncs_are_staggered_over_the_scaled_interval() -> None:
    rng = random.Random(1)
    small = [full_sync_delay(60.0, 50, rng) for _ in range(2000)]
    large = [full_sync_delay(60.0, 10_000, rng) for _ in range(2000)]
    assert 60.0 <= min(small) and max(small) <= 120.0
    assert 60.0 <= min(large) and max(large) <= 60.0 + 8 * 60.0
    assert max(large) > 400.0  # 10,000 agents spread over ~9 minutes, not one
    # Evenly: each minute of the large spread gets about an eighth of the syncs.
    per_minute = Counter(int((d - 60.0) // 60) for d in large)
    assert all(180 < per_minute[m] < 320 for m in range(8)), per_minute


def test_rebalance_interval_as_consul_scales_it() -> None:
    rng = random.Random(2)
    for _ in range(100):
        assert 120.0 <= rebalance_interval(3, 100, rng) <= 180.0
    # 100,000 agents on 3 servers at 64 new connections a second per server: at least 520 s.
    assert rebalance_interval(3, 100_000, rng) == pytest.approx(100_000 / 192)


def test_clients_spread_over_every_server_and_stay_until_rebalance_or_failure() -> None:
    servers = ["s1:8500", "s2:8500", "s3:8500"]
    picks = Counter(ServerPicker(random.Random(seed)).pick(servers, 0.0, 3000) for seed in range(3000))
    assert set(picks) == set(servers) and all(900 < n < 1100 for n in picks.values()), picks
    p = ServerPicker(random.Random(5))
    first = p.pick(servers, 0.0, 10)
    assert all(p.pick(servers, t, 10) == first for t in (1.0, 60.0, 119.0))  # kept
    moved = p.failed(first, servers, 120.0, 10)  # type: ignore[arg-type]
    assert moved in servers and moved != first
    assert p.pick(servers, 121.0, 10) == moved
    assert p.pick([s for s in servers if s != moved], 122.0, 10) != moved  # gone from the list: another
    p = ServerPicker(random.Random(9))
    seen = {p.pick(servers, t * 200.0, 10) for t in range(30)}  # a new random pick each rebalance
    assert seen == set(servers)
    assert ServerPicker(random.Random(1)).pick([], 0.0, 1) is None


def test_a_client_agent_forwards_to_a_random_server_and_moves_on_failure() -> None:
    remote = RemoteServers([], FSM(), rng=random.Random(3), cluster_size=lambda: 10)
    remote.servers = {f"id{i}": {"address": f"10.0.0.{i}:8300", "http": f"10.0.0.{i}:8500", "name": f"s{i}"}
                      for i in range(3)}  # fmt: skip
    remote.leader = dict(remote.servers["id0"], id="id0")
    first = remote.http_target()
    assert first in {s["http"] for s in remote.servers.values()}
    assert remote.http_target() == first
    remote.forget_leader()  # what the HTTP layer does when a forwarded request cannot reach the server
    assert remote.leader is None and remote.http_target() != first
    # Across clients, the leader is no more likely than any other server.
    targets = Counter()
    for seed in range(600):
        r = RemoteServers([], FSM(), rng=random.Random(seed))
        r.servers = remote.servers
        r.leader = dict(remote.servers["id0"], id="id0")
        targets[r.http_target()] += 1
    assert len(targets) == 3 and all(150 < n < 250 for n in targets.values()), targets


def test_server_health_leaves_out_failed_servers_and_keeps_one_to_try() -> None:
    """Consul's router drops a server Serf reports failed or left and takes it back when Serf sees it alive;
    a server calls could not reach is skipped for a while; with none known alive, one is still offered."""
    a, b, c = "a:8300", "b:8300", "c:8300"
    servers = [c, a, b]
    h = ServerHealth()
    assert h.live(servers, 0.0) == [a, b, c] and h.live([], 0.0) == []
    h.failed(b)  # the pool: failed (or left)
    assert h.live(servers, 0.0) == [a, c]
    h.call_failed(a, 10.0)  # a call could not reach it
    assert h.live(servers, 10.0 + SKIP_UNREACHABLE - 1) == [c]
    assert h.live(servers, 10.0 + SKIP_UNREACHABLE) == [a, c]  # tried again after the skip
    h.call_failed(c, 15.0)
    # None known alive: the one unreachable longest ago, before any the pool reports failed.
    assert h.live(servers, 20.0) == [a]
    h.call_ok(c)
    assert h.live(servers, 20.0) == [c]
    h.failed(a)
    h.failed(c)
    assert h.live(servers, 20.0) == [b]  # all reported failed: the one no call failed to reach
    h.alive(a)  # back in the pool: picked again, its failed call forgotten
    assert h.live(servers, 20.0) == [a]


def test_a_client_never_picks_a_server_the_pool_reports_failed() -> None:
    remote = RemoteServers([], FSM(), rng=random.Random(4), cluster_size=lambda: 10)
    remote.servers = {f"id{i}": {"address": f"10.0.0.{i}:8300", "http": f"10.0.0.{i}:8500", "name": f"s{i}"}
                      for i in range(3)}  # fmt: skip
    dead = "10.0.0.1:8300"
    remote.learn(dead)
    assert remote.known_servers() == 3
    remote.server_gone(dead)  # the gossip pool: failed
    assert remote.known_servers() == 2
    rpc, http = set(), set()
    for _ in range(200):  # a new pick each time, as at every rebalance
        remote._rpc_picker.rebalance_at = remote._picker.rebalance_at = 0.0
        rpc.add(remote.rpc_target())
        http.add(remote.http_target())
    assert rpc == {"10.0.0.0:8300", "10.0.0.2:8300"} and http == {"10.0.0.0:8500", "10.0.0.2:8500"}
    # It also stays out of the live list once the others stop answering: one of those is retried.
    remote.server_gone("10.0.0.0:8300")
    remote.server_gone("10.0.0.2:8300")
    assert remote.known_servers() == 0 and remote.rpc_target() is not None
    remote.learn(dead)  # alive again in the pool
    assert remote.rpc_target() == dead and remote.known_servers() == 1


async def test_a_server_calls_cannot_reach_is_not_picked_again_at_the_next_rebalance(
        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(remote_module, "RETRY_PAUSE", 0.001)
    servers = {a: FakeServer([]) for a in ("10.0.0.1:8300", "10.0.0.2:8300", "10.0.0.3:8300")}
    remote = remote_with(servers)
    down = remote.rpc_target()
    assert down is not None
    servers[down].script = [RPCError(f"cannot reach server {down}: timed out")] * 1000
    assert await remote.call_leader("client_apply", {}) == "ok"
    for _ in range(100):  # rebalances within the skip: never the unreachable one
        remote._rpc_picker.rebalance_at = 0.0
        assert remote.rpc_target() != down
    assert len(servers[down].calls) == 1


# ---------------------------------------------------------------------- client RPCs through the picked server


class FakeServer:
    """A server's RPC client stand-in: answers from a script of results and errors, and records calls."""

    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.calls: list[tuple[str, Any, str]] = []

    async def call(self, method: str, args: Any = None, timeout: float = 30.0, token: str = "") -> Any:
        self.calls.append((method, args, token))
        step = self.script.pop(0) if self.script else "ok"
        if isinstance(step, Exception):
            raise step
        return step


def remote_with(servers: dict[str, FakeServer], seed: int = 1) -> RemoteServers:
    remote = RemoteServers([], FSM(), rng=random.Random(seed), token=lambda: "agent-token")
    remote.servers = {f"id-{a}": {"address": a, "http": "", "name": a} for a in servers}
    remote._client = lambda address: servers[address]  # type: ignore[assignment,method-assign,return-value]
    return remote


async def test_client_rpcs_go_to_the_picked_server_and_move_on_when_it_took_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(remote_module, "RETRY_PAUSE", 0.001)
    servers = {a: FakeServer([]) for a in ("10.0.0.1:8300", "10.0.0.2:8300", "10.0.0.3:8300")}
    remote = remote_with(servers)
    assert await remote.call_leader("client_apply", {"Type": "x"}) == "ok"
    picked = remote.rpc_target()
    assert picked is not None and [len(s.calls) for a, s in servers.items() if a != picked] == [0, 0]
    assert servers[picked].calls == [("client_apply", {"Type": "x"}, "agent-token")]
    # Unreachable (nothing sent): the same call goes to another server, which becomes the pick.
    servers[picked].script = [RPCError(f"cannot reach server {picked}: refused")]
    assert await remote.call_leader("client_apply", {"Type": "y"}) == "ok"
    moved = remote.rpc_target()
    assert moved != picked and servers[moved].calls[-1][1] == {"Type": "y"} and remote.resent == 1
    # 503 (that server found no leader in its hold time): nothing was done, another server is tried.
    servers[moved].script = [RPCError("No cluster leader", 503)]
    assert await remote.call_leader("Internal.EventFire", {"e": 1}) == "ok" and remote.resent == 2
    # A write whose connection broke mid-call may have been applied: not sent twice, the error is the answer;
    # the next call goes elsewhere.
    current = remote.rpc_target()
    assert current is not None
    servers[current].script = [RPCError(f"connection to {current} lost: reset")]
    with pytest.raises(RPCError, match="lost"):
        await remote.call_leader("client_apply", {"Type": "z"})
    assert remote.resent == 2 and remote.rpc_target() != current
    # A read is sent again after the same failure.
    current = remote.rpc_target()
    assert current is not None
    servers[current].script = [RPCError(f"connection to {current} lost: reset")]
    assert await remote.call_leader("node_state", "client-1") == "ok" and remote.resent == 3
    # Any other error is the answer, at once.
    current = remote.rpc_target()
    assert current is not None
    servers[current].script = [RPCError("Permission denied", 403)]
    with pytest.raises(RPCError, match="Permission denied"):
        await remote.call_leader("client_apply", {})


async def test_client_rpcs_give_up_after_the_hold_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote_module, "RPC_HOLD", 0.3)
    monkeypatch.setattr(remote_module, "RETRY_PAUSE", 0.01)
    servers = {a: FakeServer([RPCError("No cluster leader", 503)] * 1000) for a in ("a:8300", "b:8300")}
    remote = remote_with(servers)
    with pytest.raises(NotLeaderError):
        await remote.call_leader("client_apply", {})
    assert all(s.calls for s in servers.values())  # both were tried
    assert sum(len(s.calls) for s in servers.values()) < 30  # with pauses between, not in a tight loop


# ---------------------------------------------------------------------- a follower forwarding to the leader


class FakeConsensus:
    def __init__(self, leading: bool, leader: RPCRouter | None = None) -> None:
        self.leading = leading
        self.leader = leader
        self.failures: list[Exception] = []

    def is_leader(self) -> bool:
        return self.leading

    async def call_leader(self, method: str, args: Any, timeout: float) -> Any:
        if self.failures:
            raise self.failures.pop(0)
        assert self.leader is not None
        return await self.leader.dispatch(method, args, Caller("", server=True))  # a server's connection


def forwarding_pair() -> tuple[RPCRouter, RPCRouter, FakeConsensus, list[tuple[Any, Caller]]]:
    seen: list[tuple[Any, Caller]] = []

    async def write(args: Any, caller: Caller) -> Any:
        seen.append((args, caller))
        return {"done": args}

    leader, follower = RPCRouter(), RPCRouter()
    for router in (leader, follower):
        router.register("client_apply", write, with_caller=True, leader=True)
        router.register("node_state", write, with_caller=True, leader=True)
        router.register("local", write, with_caller=True)
    LeaderForwarder(leader, FakeConsensus(True)).install()
    follower_consensus = FakeConsensus(False, leader)
    LeaderForwarder(follower, follower_consensus, hold=0.3).install()
    return leader, follower, follower_consensus, seen


async def test_a_follower_forwards_leader_methods_with_the_callers_token_and_role() -> None:
    leader, follower, consensus, seen = forwarding_pair()
    client = Caller("client-token", server=False)
    assert await follower.dispatch("client_apply", {"a": 1}, client) == {"done": {"a": 1}}
    # Answered by the leader's handler, for the client: its token, and no server role gained on the way.
    assert seen == [({"a": 1}, client)]
    assert await follower.dispatch("local", 2, client) == {"done": 2}  # not a leader method: answered here
    assert seen[-1] == (2, client)
    # The leader answers its own calls itself.
    assert await leader.dispatch("client_apply", 3, client) == {"done": 3} and len(seen) == 3
    # A client may not call the forwarding method itself, nor have it forward "forward".
    with pytest.raises(RPCError) as info:
        await leader.dispatch("forward", {"Method": "client_apply", "Args": 1, "Token": "", "Server": True}, client)
    assert info.value.status == 403
    with pytest.raises(RPCError) as info:
        await leader.dispatch("forward", {"Method": "forward", "Args": {}, "Token": ""}, Caller("", server=True))
    assert info.value.status == 400


async def test_a_follower_retries_only_what_reached_no_leader() -> None:
    _, follower, consensus, seen = forwarding_pair()
    client = Caller("t", server=False)
    # No leader known for a moment, then one that just lost leadership: retried until the leader answers.
    consensus.failures = [NotLeaderError(None), RPCError("not the leader", 503), RPCError("cannot reach server x")]
    assert await follower.dispatch("client_apply", 1, client) == {"done": 1} and len(seen) == 1
    # A broken connection mid-write: unknown outcome, reported; a read is retried.
    consensus.failures = [RPCError("connection to x lost: reset")]
    with pytest.raises(RPCError, match="lost"):
        await follower.dispatch("client_apply", 2, client)
    consensus.failures = [RPCError("connection to x lost: reset")]
    assert await follower.dispatch("node_state", 3, client) == {"done": 3}
    # No leader within the hold time: Consul's "No cluster leader", 503 (nothing was done).
    consensus.failures = [NotLeaderError(None)] * 1000
    with pytest.raises(RPCError) as info:
        await follower.dispatch("client_apply", 4, client)
    assert (info.value.message, info.value.status) == ("No cluster leader", 503)
    assert [args for args, _ in seen] == [1, 3]
