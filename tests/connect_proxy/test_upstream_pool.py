"""The upstream pool, pure: load-balancing distributions, outlier ejection timing and its cap, circuit
breakers; and the chain walk and instance selection the L4 data plane builds on it."""

from __future__ import annotations

import ast
import random
from collections import Counter
from pathlib import Path

import pytest

from connect_proxy import routing, upstream
from connect_proxy.upstream import (
    Instance,
    Limits,
    OutlierConfig,
    PoolConfig,
    UpstreamPool,
    lb_config,
    limits_config,
    outlier_config,
)
from registry.discoverychain import ChainEntries, Subset, compile_chain
from registry.filtering import FilterError

A, B, C, D = (Instance("10.0.0.1", 20000 + i) for i in range(4))


def pool(*instances: Instance, seed: int = 1, **cfg: object) -> UpstreamPool:
    p = UpstreamPool("db.default.default.dc1", PoolConfig(**cfg), rng=random.Random(seed))  # type: ignore[arg-type]
    p.update(instances)
    return p


def test_round_robin_takes_turns() -> None:
    p = pool(A, B, C)
    assert [p.pick(None, 0.0) for _ in range(6)] == [A, B, C, A, B, C]


def test_random_spreads_evenly() -> None:
    p = pool(A, B, C, D, policy="random")
    counts = Counter(p.pick(None, 0.0) for _ in range(8000))
    assert set(counts) == {A, B, C, D}
    assert all(abs(n - 2000) < 200 for n in counts.values()), counts


def test_least_request_prefers_the_idle_instance() -> None:
    p = pool(A, B, policy="least_request")
    for _ in range(5):
        p.begin(A)
    # Two choices out of two: B, with no active request, always wins.
    assert {p.pick(None, 0.0) for _ in range(50)} == {B}
    # ChoiceCount 1 is a random pick: A is chosen sometimes despite its load.
    p.configure(PoolConfig(policy="least_request", choice_count=1))
    assert {p.pick(None, 0.0) for _ in range(200)} == {A, B}
    for _ in range(5):
        p.end(A)
    assert p.pick(None, 0.0) in (A, B)


@pytest.mark.parametrize("policy", ["ring_hash", "maglev"])
def test_hash_policies_are_sticky_spread_and_move_little(policy: str) -> None:
    p = pool(A, B, C, D, policy=policy)
    keys = [f"192.168.{i // 256}.{i % 256}".encode() for i in range(4000)]
    first = {k: p.pick(k, 0.0) for k in keys}
    assert all(p.pick(k, 0.0) == first[k] for k in keys[:200])  # same key, same instance
    counts = Counter(first.values())
    assert set(counts) == {A, B, C, D} and min(counts.values()) > 4000 / 4 * 0.6, counts
    # A leaves: its keys move; of the others, few do (Envoy's ring gives each host min_ring_size / n
    # points, so the survivors gain points; maglev's table is rebuilt with a similar small churn).
    p.update([B, C, D])
    moved = [k for k in keys if first[k] != A and p.pick(k, 0.0) != first[k]]
    assert len(moved) < 0.1 * len(keys), len(moved)
    assert all(p.pick(k, 0.0) in (B, C, D) for k in keys[:200])
    # Excluded (already tried) instances are skipped, the key still decides among the rest.
    k = keys[0]
    got = p.pick(k, 0.0, exclude={p.pick(k, 0.0)})
    assert got is not None and got != p.pick(k, 0.0)


def test_hash_policy_without_a_key_picks_at_random() -> None:
    p = pool(A, B, policy="ring_hash")
    assert {p.pick(None, 0.0) for _ in range(100)} == {A, B}


def test_exclude_and_empty() -> None:
    p = pool(A, B)
    assert p.pick(None, 0.0, exclude={A, B}) is None
    assert {p.pick(None, 0.0, exclude={A}) for _ in range(3)} == {B}
    assert pool().pick(None, 0.0) is None


def test_consecutive_failures_eject_for_the_base_time_growing_with_repeats() -> None:
    oc = OutlierConfig(interval=10.0, max_failures=3, max_ejection_percent=50, base_ejection_time=30.0)
    p = pool(A, B, C, D, outlier=oc)
    assert not p.report(A, False, 0.0) and not p.report(A, False, 0.1)
    assert not p.report(A, True, 0.2)  # a success resets the run
    assert not p.report(A, False, 1.0) and not p.report(A, False, 1.1)
    assert p.report(A, False, 1.2)  # the third in a row ejects
    assert p.ejected(1.2) == [A] and p.ejections_total == 1
    assert A not in {p.pick(None, 5.0) for _ in range(30)}
    assert p.is_ejected(A, 31.1) and not p.is_ejected(A, 31.2)  # 30 s, exactly
    assert A in {p.pick(None, 31.2) for _ in range(8)}
    # Ejected again soon after: twice the base time.
    for t in (32.0, 32.1, 32.2):
        p.report(A, False, t)
    assert p.is_ejected(A, 92.1) and not p.is_ejected(A, 92.2)
    # A long healthy spell (many intervals) takes the multiplier back down to one.
    for t in (500.0, 500.1, 500.2):
        p.report(A, False, t)
    assert p.is_ejected(A, 529.0) and not p.is_ejected(A, 530.2)


def test_max_ejection_percent_caps_ejections_but_one_is_always_allowed() -> None:
    oc = OutlierConfig(max_failures=1, max_ejection_percent=50)
    p = pool(A, B, C, D, outlier=oc)
    assert p.report(A, False, 0.0) and p.report(B, False, 0.0)
    assert not p.report(C, False, 0.0)  # 2 of 4 ejected is the 50% cap
    assert sorted(p.ejected(0.0), key=str) == [A, B]
    # Envoy's default 10% of three instances rounds to zero: one may still be ejected.
    q = pool(A, B, C, outlier=OutlierConfig(max_failures=1))
    assert q.report(A, False, 0.0) and not q.report(B, False, 0.0)


def test_panic_mode_ignores_ejections_when_most_instances_are_out() -> None:
    p = pool(A, B, C, outlier=OutlierConfig(max_failures=1, max_ejection_percent=100))
    assert p.report(A, False, 0.0) and p.report(B, False, 0.0)
    # One of three usable is under Envoy's 50% panic threshold: balance over all of them.
    assert {p.pick(None, 1.0) for _ in range(9)} == {A, B, C}


def test_an_ejection_outlives_a_catalog_refresh_and_leavers_are_forgotten() -> None:
    p = pool(A, B, C, outlier=OutlierConfig(max_failures=1))
    assert p.report(A, False, 0.0)
    p.update([A, B, C, D])
    assert p.is_ejected(A, 1.0)
    p.update([B, C])
    p.update([A, B, C])
    assert not p.is_ejected(A, 1.0)
    assert not p.report(D, False, 1.0)  # not in the pool: nothing recorded


def test_limits_answer_at_once_and_count_overflows() -> None:
    p = pool(A, limits=Limits(max_connections=2, max_pending_requests=1, max_concurrent_requests=3))
    assert p.acquire("connections") and p.acquire("connections")
    assert not p.acquire("connections") and p.overflows["connections"] == 1
    p.release("connections")
    assert p.acquire("connections") and p.active("connections") == 2
    assert p.acquire("pending") and not p.acquire("pending")
    assert all(p.acquire("requests") for _ in range(3)) and not p.acquire("requests")
    assert p.overflows == {"connections": 1, "pending": 1, "requests": 1}
    p.release("requests")
    p.release("requests")
    p.release("requests")
    p.release("requests")  # one too many: never below zero
    assert p.active("requests") == 0


def test_config_from_entries() -> None:
    assert lb_config({"Policy": "least_request", "LeastRequestConfig": {"ChoiceCount": 5}}) == {
        "policy": "least_request", "choice_count": 5}  # fmt: skip
    assert lb_config({"policy": "ring_hash", "ring_hash_config": {"minimum_ring_size": 64}}) == {
        "policy": "ring_hash", "ring_min": 64}  # fmt: skip
    assert lb_config(None) == {}
    oc = outlier_config({"Interval": "5s", "MaxFailures": 2, "MaxEjectionPercent": 100, "BaseEjectionTime": "1s"})
    assert oc == OutlierConfig(interval=5.0, max_failures=2, max_ejection_percent=100, base_ejection_time=1.0)
    assert outlier_config(None) == OutlierConfig()
    assert limits_config({"MaxConnections": 7}) == Limits(7, 1024, 1024)


def test_the_pool_module_is_pure() -> None:
    tree = ast.parse(Path(upstream.__file__).read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not names & {"asyncio", "socket", "time", "ssl", "threading"}


# ------------------------------------------------------------------------------ the chain walk


def _chain(**entries: dict) -> object:  # noqa: ANN401
    return compile_chain("api", ChainEntries(**entries), datacenter="dc1", trust_domain="td.consul")


HTTP = {"api": {"Kind": "service-defaults", "Name": "api", "Protocol": "http"}}
SUBSETS = {"api": {"Kind": "service-resolver", "Name": "api", "DefaultSubset": "v1",
                   "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"},
                               "v2": {"Filter": "Service.Meta.version == v2", "OnlyPassing": True}},
                   "Failover": {"v1": {"ServiceSubset": "v2"}}}}  # fmt: skip


def test_l4_walk_takes_the_resolver_target_then_its_failover() -> None:
    chain = _chain(resolvers=SUBSETS)
    assert routing.l4_targets(chain, 50.0) == ["v1.api.default.default.dc1", "v2.api.default.default.dc1"]
    assert routing.l4_targets(_chain(), 0.0) == ["api.default.default.dc1"]


def test_l4_walk_splits_by_weight() -> None:
    splitter = {"api": {"Kind": "service-splitter", "Name": "api",
                        "Splits": [{"Weight": 90, "ServiceSubset": "v1"}, {"Weight": 10, "ServiceSubset": "v2"}]}}  # fmt: skip
    chain = _chain(services=HTTP, resolvers=SUBSETS, splitters=splitter)
    draws = [routing.l4_targets(chain, i / 100)[0] for i in range(10000)]
    assert Counter(draws) == {"v1.api.default.default.dc1": 9000, "v2.api.default.default.dc1": 1000}


def _entry(port: int, version: str, *statuses: str) -> dict:
    return {"Node": {"Node": "n1", "Address": "10.0.0.9"},
            "Service": {"ID": f"api-{port}", "Service": "api-sidecar-proxy", "Address": "127.0.0.1", "Port": port,
                        "Meta": {"version": version}},
            "Checks": [{"CheckID": f"c{i}", "Status": s} for i, s in enumerate(statuses)]}  # fmt: skip


def test_target_instances_filter_subsets_and_health() -> None:
    health = [_entry(1, "v1", "passing"), _entry(2, "v1", "warning"), _entry(3, "v2", "passing", "warning"),
              _entry(4, "v2", "passing"), _entry(5, "v1", "critical"), {"junk": True}]  # fmt: skip
    got = routing.target_instances(health, Subset("Service.Meta.version == v1"))
    assert got == [Instance("127.0.0.1", 1), Instance("127.0.0.1", 2)]  # warning counts, critical not
    got = routing.target_instances(health, Subset("Service.Meta.version == v2", only_passing=True))
    assert got == [Instance("127.0.0.1", 4)]
    assert len(routing.target_instances(health, Subset())) == 4
    with pytest.raises(FilterError):
        routing.target_instances(health, Subset("Service.Nope == 1"))


def test_weighted_round_robin_is_exact_per_cycle_and_interleaved() -> None:
    a, b, c = Instance("10.0.0.1", 1, 45), Instance("10.0.0.1", 2, 45), Instance("10.0.0.1", 3, 10)
    p = pool(a, b, c)
    picks = [p.pick(None, 0.0) for _ in range(2000)]
    assert Counter(picks) == {a: 900, b: 900, c: 200}  # every 100 picks: 45/45/10 exactly
    first = picks[:100]
    assert Counter(first) == {a: 45, b: 45, c: 10}
    assert max(len(run) for run in "".join("x" if i == c else "." for i in first).split(".")) == 1  # spread out
    # An ejected instance is skipped; the others keep their ratio.
    p.configure(PoolConfig(outlier=OutlierConfig(max_failures=1, max_ejection_percent=50)))
    assert p.report(c, False, 0.0)
    assert Counter(p.pick(None, 1.0) for _ in range(100)) == {a: 50, b: 50}


def test_equal_weights_keep_plain_round_robin_and_a_weight_change_is_taken() -> None:
    p = pool(Instance("10.0.0.1", 1, 7), Instance("10.0.0.1", 2, 7))
    assert [p.pick(None, 0.0).port for _ in range(4)] == [1, 2, 1, 2]
    p.update([Instance("10.0.0.1", 1, 3), Instance("10.0.0.1", 2, 1)])  # same instances, new weights
    assert Counter(p.pick(None, 0.0).port for _ in range(400)) == {1: 300, 2: 100}


def test_random_and_ring_hash_follow_weights() -> None:
    a, b = Instance("10.0.0.1", 1, 9), Instance("10.0.0.1", 2, 1)
    rand = pool(a, b, policy="random")
    counts = Counter(rand.pick(None, 0.0) for _ in range(10000))
    assert abs(counts[a] - 9000) < 300, counts
    ring = pool(a, b, policy="ring_hash")
    counts = Counter(ring.pick(b"client-%d" % i, 0.0) for i in range(10000))
    assert abs(counts[a] - 9000) < 500, counts


def test_target_instances_carry_consuls_weights() -> None:
    def entry(port: int, weights: dict | None, *statuses: str) -> dict:
        e = _entry(port, "v1", *statuses)
        if weights is not None:
            e["Service"]["Weights"] = weights
        return e

    health = [entry(1, {"Passing": 45, "Warning": 1}, "passing"), entry(2, {"Passing": 45, "Warning": 5}, "warning"),
              entry(3, None, "passing"), entry(4, {"Passing": 1, "Warning": 0}, "warning"),
              entry(5, {"Passing": 1000, "Warning": 1}, "passing")]  # fmt: skip
    got = routing.target_instances(health, Subset())
    assert [(i.port, i.weight) for i in got] == [(1, 45), (2, 5), (3, 1), (5, 128)]  # weight 0: no traffic
