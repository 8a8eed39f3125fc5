"""The gossip core in the deterministic simulator (tests/gossip/sim.py), with fixed seeds.

The bounds asserted come from the protocol's timings (docs/gossip.md): a failure is noticed by the next
probe of the dead member (about one a second, since every member probes one member a second), confirmed
after one probe interval, and declared when the suspicion's minimum timeout (4 s, shortened from the long
timeout by independent confirmations) runs out; the news then spreads in a few gossip rounds.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry.gossip.config import GossipConfig
from registry.gossip.core import EventKind
from tests.gossip.sim import Simulator, Status

DETECTION_BOUND = 10.0  # seconds from a kill until every live member has it failed
LATENCY = (0.0005, 0.02)  # one way: 0.5-20 ms, so packets reorder


def _false_failures(sim: Simulator) -> list[str]:
    """FAILED events about members that were running the whole time."""
    return [f"{o.observer} failed {o.subject} at {o.event.at:.1f}" for o in sim.events(EventKind.FAILED)
            if sim.nodes[o.subject].status is Status.RUNNING]  # fmt: skip


def _detection(sim: Simulator, victims: list[str], t0: float) -> float:
    """Seconds from t0 until the last live member marked the last victim failed."""
    live = {n.name for n in sim.live()}
    last = 0.0
    for v in victims:
        seen = {o.observer: o.event.at for o in sim.events(EventKind.FAILED, v)}
        missing = live - set(seen) - {v}
        assert not missing, f"{len(missing)} members never marked {v} failed"
        last = max(last, max(seen[o] for o in live if o != v) - t0)
    return last


@pytest.mark.parametrize(("size", "loss"), [(100, 0.0), (100, 0.1), (1000, 0.0)])
def test_a_killed_member_is_failed_everywhere_within_the_bound(size: int, loss: float) -> None:
    sim = Simulator(seed=size + int(loss * 100), loss=loss, latency=LATENCY)
    names = sim.converged_pool(size)
    sim.run_for(3.0)
    victim = names[size // 2]
    sim.kill(victim)
    t0 = sim.now
    sim.run_for(DETECTION_BOUND + 1, stop=lambda: sim.all_see(victim, "DEAD"))
    took = _detection(sim, [victim], t0)
    assert took <= DETECTION_BOUND, took
    assert not _false_failures(sim)


def test_memberlist_timings_would_take_longer() -> None:
    """The same kill with memberlist's own suspicion timeout (8 s at 100 members) takes longer: the cap is
    what makes the difference."""
    sim = Simulator(seed=5, config=GossipConfig.memberlist_lan(), latency=LATENCY)
    names = sim.converged_pool(100)
    sim.run_for(3.0)
    sim.kill(names[7])
    t0 = sim.now
    sim.run_for(30, stop=lambda: sim.all_see(names[7], "DEAD"))
    assert _detection(sim, [names[7]], t0) > 8.0


def test_a_member_paused_for_3_s_is_suspected_refutes_and_is_never_failed() -> None:
    suspected = 0
    for seed in range(6):
        sim = Simulator(seed=seed, loss=0.1, latency=LATENCY)
        names = sim.converged_pool(100)
        sim.run_for(2.0 + seed / 7)
        sleeper = names[seed * 11]
        sim.pause(sleeper)
        sim.run_for(3.0)
        sim.resume(sleeper)
        sim.run_for(30.0)
        assert not sim.events(EventKind.FAILED), seed
        suspected += bool(sim.events(EventKind.SUSPECT, sleeper))
        assert sim.all_see(sleeper, "ALIVE")
        assert sim.nodes[sleeper].core.stats["stalls"] == 1  # it knew it had not run, and blamed nobody
        assert not [o for o in sim.events(EventKind.SUSPECT) if o.observer == sleeper]
    assert suspected >= 3  # the pauses were long enough to be noticed: the refutations were real


SOAK = [pytest.mark.soak, pytest.mark.timeout(3600)]
MEMBERLIST_PROBE = GossipConfig(probe_interval=1.0, probe_timeout=0.5)  # our defaults, memberlist's probing


@pytest.mark.parametrize(
    ("size", "config", "bound"),
    [pytest.param(1000, GossipConfig(), 11.0, marks=SOAK), pytest.param(1000, MEMBERLIST_PROBE, 16.0, marks=SOAK)],
    ids=["1000", "1000-memberlist-probe"],
)  # fmt: skip
def test_a_tenth_of_the_pool_dying_at_once(size: int, config: GossipConfig, bound: float) -> None:
    """The last of many victims waits longest for its first probe: with k victims probed about once a
    probe interval each, the last is first probed after about ln(k) intervals (docs/gossip.md, "Many
    failures at once").  This is why the default probe interval is half memberlist's: at 1,000 members the
    last of 100 is failed everywhere after 10.9 s (15.7 s at memberlist's 1 s, seed 11)."""
    sim = Simulator(seed=11, latency=LATENCY, config=config)
    names = sim.converged_pool(size)
    sim.run_for(3.0)
    victims = names[5::10]
    for v in victims:
        sim.kill(v)
    t0 = sim.now
    sim.run_for(bound + 5, stop=lambda: all(sim.all_see(v, "DEAD") for v in victims))
    took = _detection(sim, victims, t0)
    assert took <= bound, took
    assert not _false_failures(sim)


def test_the_halved_probe_interval_fails_a_tenth_of_the_pool_sooner() -> None:
    """The evidence for the default: the same 20 of 200 dying, failed everywhere sooner than with
    memberlist's probe interval (7.3 s against 11.9 s), and no one falsely failed."""
    took = {}
    for name, config in (("ours", GossipConfig()), ("memberlist", MEMBERLIST_PROBE)):
        sim = Simulator(seed=11, latency=LATENCY, config=config)
        names = sim.converged_pool(200)
        sim.run_for(3.0)
        victims = names[5::10]
        for v in victims:
            sim.kill(v)
        t0 = sim.now
        sim.run_for(20.0, stop=lambda: all(sim.all_see(v, "DEAD") for v in victims))  # noqa: B023
        took[name] = _detection(sim, victims, t0)
        assert not _false_failures(sim)
    assert took["ours"] <= 8.0 and took["ours"] < took["memberlist"] - 2.0, took


def test_a_graceful_leave_is_left_everywhere_and_never_a_failure() -> None:
    sim = Simulator(seed=3, loss=0.05, latency=LATENCY)
    names = sim.converged_pool(60)
    sim.run_for(2.0)
    sim.leave(names[4])
    sim.run_for(1.0)
    assert sim.all_see(names[4], "LEFT")
    sim.kill(names[4])  # the process exits after leaving
    sim.run_for(20.0)
    assert sim.all_see(names[4], "LEFT")
    assert not sim.events(EventKind.FAILED)
    assert {m.status for m in [sim.nodes[names[0]].core.member(names[4])]} == {"left"}


def test_joiners_converge_and_nobody_is_failed() -> None:
    sim = Simulator(seed=9, loss=0.05, latency=LATENCY)
    old = sim.converged_pool(50)
    sim.run_for(2.0)
    new = [f"j{i}" for i in range(50)]
    for i, name in enumerate(new):
        sim.add(name)
        sim.join(name, [old[i % 7]])
        sim.run_for(0.1)
    # Gossip tells nearly everyone within seconds: each piece of news is sent 4 * ceil(log10(n + 1))
    # times by every member that hears it, so a member misses it with a probability of about e^-8 at
    # this size (with 50 joining at once and 5% loss, a few of the 5,000 pairs do)...
    sim.run_for(10.0)
    pairs = [(o, j) for o in old for j in new]
    seen = sum(1 for o, j in pairs if sim.nodes[o].core.member(j) is not None)
    assert seen >= 0.99 * len(pairs), seen
    # ...and push-pull (every 90 s at 100 members) repairs what gossip missed.
    everyone = old + new
    sim.run_for(180.0, stop=lambda: all(n.core.num_live == 100 for n in sim.live()))
    assert all(n.core.num_live == 100 for n in sim.live())
    assert all(sim.all_see(name, "alive") for name in everyone[::9])
    assert not sim.events(EventKind.FAILED)


def test_a_partition_heals_without_restarts() -> None:
    sim = Simulator(seed=21, latency=LATENCY)
    names = sim.converged_pool(60)
    sim.run_for(2.0)
    small, big = names[:6], names[6:]
    sim.split(small, big)
    sim.run_for(30.0)
    # The big side probes the small one often and fails it; the small side probes each of the many
    # others rarely, so their suspicions gather few confirmations and run the long timeout.
    assert all(sim.all_see(n, "failed", among=big) for n in small)
    assert all(n.core.num_live < 60 for n in sim.live())
    sim.heal()
    sim.run_for(60.0, stop=lambda: all(n.core.num_live == 60 for n in sim.live()))
    assert all(n.core.num_live == 60 for n in sim.live())
    # Each side failed the other once, then saw it come back.
    # The big side failed the small one, then saw it come back.
    assert set(small) <= {o.subject for o in sim.events(EventKind.JOIN) if o.event.at > 30.0}


def test_no_false_failures_under_loss_and_reordering() -> None:
    sim = Simulator(seed=4, loss=0.1, latency=(0.0005, 0.05))
    sim.converged_pool(100)
    sim.run_for(120.0)
    assert not sim.events(EventKind.FAILED)
    assert sim.packets > 100 * 120  # it really probed


def test_the_codec_carries_the_simulated_traffic() -> None:
    sim = Simulator(seed=2, loss=0.05, latency=LATENCY, wire=True)
    names = sim.converged_pool(20)
    sim.run_for(2.0)
    sim.kill(names[3])
    t0 = sim.now
    sim.run_for(15.0, stop=lambda: sim.all_see(names[3], "DEAD"))
    assert _detection(sim, [names[3]], t0) <= DETECTION_BOUND


def test_a_run_replays_exactly_from_its_seed() -> None:
    def run() -> list[tuple[str, str, str, float]]:
        sim = Simulator(seed=77, loss=0.1, latency=LATENCY)
        names = sim.converged_pool(30)
        sim.run_for(2.0)
        sim.kill(names[1])
        sim.run_for(15.0)
        return [(o.observer, o.kind.value, o.subject, o.event.at) for o in sim.log]

    assert run() == run()


def _check_random_pool(seed: int, size: int, loss: float, kills: int, pause: float) -> None:
    sim = Simulator(seed=seed, loss=loss, latency=LATENCY)
    names = sim.converged_pool(size)
    sim.run_for(2.0)
    victims = names[1 : 1 + min(kills, max(1, size // 8))]
    for v in victims:
        sim.kill(v)
    sim.pause(names[0])
    t0 = sim.now
    sim.run_for(pause)
    sim.resume(names[0])
    sim.run_for(DETECTION_BOUND + 5)
    assert not _false_failures(sim), seed
    if victims:
        assert _detection(sim, victims, t0) <= (DETECTION_BOUND if len(victims) == 1 else 12.0), seed
    alive = [n for n in names if n not in victims]
    assert all(sim.all_see(n, "ALIVE") for n in alive), seed


POOLS = dict(seed=st.integers(0, 2**32), size=st.integers(5, 40), loss=st.sampled_from([0.0, 0.05, 0.1]),
             kills=st.integers(0, 3), pause=st.floats(0.0, 3.0))  # fmt: skip


@settings(max_examples=8, suppress_health_check=[HealthCheck.too_slow])
@given(**POOLS)
def test_property_failures_are_real_and_found(seed: int, size: int, loss: float, kills: int, pause: float) -> None:
    """Whatever the seed: killed members (up to an eighth of the pool) are failed everywhere within the
    bound, a member paused up to 3 s never is, nor is anyone else, and every live member ends up seeing
    every other alive.  (With half of a small pool dead, confirmations are scarce and suspicions run
    longer: Lifeguard trading speed for safety, as designed.)"""
    _check_random_pool(seed, size, loss, kills, pause)


@pytest.mark.soak
@pytest.mark.timeout(3600)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(**POOLS)
def test_soak_property_sweep(seed: int, size: int, loss: float, kills: int, pause: float) -> None:
    _check_random_pool(seed, size, loss, kills, pause)


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_soak_no_false_failures_in_ten_minutes_at_a_thousand_members() -> None:
    sim = Simulator(seed=1000, loss=0.05, latency=LATENCY)
    sim.converged_pool(1000)
    sim.run_for(600.0)
    assert not sim.events(EventKind.FAILED)


@pytest.mark.soak
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("seed", range(20))
def test_soak_kills_and_pauses_at_a_thousand_members(seed: int) -> None:
    sim = Simulator(seed=seed, loss=0.1, latency=LATENCY)
    names = sim.converged_pool(1000)
    sim.run_for(3.0)
    victims = names[1:101]
    for v in victims:
        sim.kill(v)
    sim.pause(names[0])
    t0 = sim.now
    sim.run_for(3.0)
    sim.resume(names[0])
    sim.run_for(30.0)
    assert not _false_failures(sim)
    assert _detection(sim, victims, t0) <= 12.0
