"""How a client agent spreads its requests over the servers and its anti-entropy over time, as Consul's
agent/router and agent/ae do (registry/agent/router.py), and the client agent's use of it."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from registry.agent.remote import RemoteServers
from registry.agent.router import ServerPicker, ae_scale_factor, full_sync_delay, rebalance_interval
from registry.fsm import FSM


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
