"""Soak (``make soak``): many rounds of random faults on 3 and 5 real servers under KV load.

Each round picks a fault with the seeded generator: SIGKILL (leader or follower; restarted later), SIGSTOP
(paused, then resumed), the leader or a follower isolated (drop or blackhole), an asymmetric cut (the
leader hears nobody, or nobody hears the leader), a pause inside a partition (the stale-lease case), and on
5 servers a bridge (two halves that share one server, as in Jepsen). The fault is held for a while, healed,
and the round requires a leader and acknowledged writes again before the next one. The load includes
default-mode (lease) reads. At the end: the whole history is linearizable and every acknowledged write is on
every server. A failure prints the seed; rerun one with ``-k "<seed>"``.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable

import pytest

from tests.cluster.harness import Cluster, Server
from tests.cluster.workload import (
    Mix,
    Workload,
    assert_checker_rejects_stale_read,
    assert_durable_everywhere,
    assert_linearizable,
    assert_no_surprises,
)

pytestmark = [pytest.mark.soak, pytest.mark.slow, pytest.mark.timeout(1800)]

MakeCluster = Callable[..., Cluster]
ROUNDS = int(os.environ.get("CLUSTER_SOAK_ROUNDS", "10"))
FAULTS = ["kill", "pause", "isolate", "asymmetric_in", "asymmetric_out", "pause_partitioned", "bridge"]


def _signal(server: Server, sig: signal.Signals) -> None:
    assert server.proc is not None
    os.killpg(server.proc.pid, sig)


def one_round(cluster: Cluster, workload: Workload, rng: random.Random, log: list[str]) -> None:
    leader = cluster.wait_leader(timeout=60)
    fault = rng.choice(FAULTS if len(cluster.servers) >= 5 else FAULTS[:-1])
    victim = leader if rng.random() < 0.6 else rng.choice(cluster.others(leader))
    others = [s.k for s in cluster.others(victim)]
    hold = rng.uniform(1.0, 3.0)
    mode = rng.choice(["drop", "blackhole"])
    relayed = fault in ("isolate", "asymmetric_in", "asymmetric_out", "bridge")
    log.append(f"{fault} {victim.name}{' (leader)' if victim is leader else ''} for {hold:.1f}s"
               + (f" ({mode})" if relayed else ""))  # fmt: skip
    undo: Callable[[], None]
    if fault == "kill":
        victim.kill()
        undo = victim.start
    elif fault == "pause":
        _signal(victim, signal.SIGSTOP)
        undo = lambda: _signal(victim, signal.SIGCONT)  # noqa: E731
    elif fault == "isolate":
        cluster.relay.isolate(victim.k, others, mode)  # type: ignore[arg-type]
        undo = cluster.relay.heal
    elif fault == "asymmetric_in":
        cluster.relay.partition(others, [victim.k], mode, symmetric=False)  # type: ignore[arg-type]
        undo = cluster.relay.heal
    elif fault == "asymmetric_out":
        cluster.relay.partition([victim.k], others, mode, symmetric=False)  # type: ignore[arg-type]
        undo = cluster.relay.heal
    elif fault == "pause_partitioned":
        _signal(victim, signal.SIGSTOP)
        cluster.relay.isolate(victim.k, others, "blackhole")

        def undo() -> None:
            _signal(victim, signal.SIGCONT)
            time.sleep(rng.uniform(0.2, 1.0))  # resumed but still cut off: the stale-lease window
            cluster.relay.heal()
    else:  # bridge: {a, b} and {d, e} each see c, but not each other
        ks = [s.k for s in cluster.servers]
        rng.shuffle(ks)
        left, bridge, right = ks[:2], ks[2], ks[3:]
        cluster.relay.partition(left, right, mode)  # type: ignore[arg-type]
        log[-1] = f"bridge {left} | {bridge} | {right} for {hold:.1f}s ({mode})"
        undo = cluster.relay.heal
    start = time.monotonic()
    workload.run_for(hold)
    undo()
    healed = time.monotonic()
    cluster.wait_caught_up(timeout=90)
    workload.wait_write_successes(healed, 10, timeout=60)
    log[-1] += f"; healthy again {time.monotonic() - healed:.1f}s after healing ({healed - start:.1f}s fault)"


@pytest.mark.parametrize(("servers", "seed"), [(3, 101), (3, 102), (5, 201), (5, 202)])
def test_soak_random_faults(make_cluster: MakeCluster, servers: int, seed: int) -> None:
    rng = random.Random(seed)
    cluster = make_cluster(servers)
    cluster.start()
    mix = Mix(read=25, default_read=15, put=20, cas=20, delete=3, unique=17)
    workload = Workload(cluster.servers, clients=2 * servers, keys=servers + 1, seed=seed, mix=mix).start()
    log: list[str] = []
    try:
        workload.wait_write_successes(time.monotonic(), 30, timeout=30)
        for _ in range(ROUNDS):
            workload.run_for(rng.uniform(0.5, 1.5))
            one_round(cluster, workload, rng, log)
    except BaseException:
        print(f"seed {seed}, rounds so far:\n  " + "\n  ".join(log))
        raise
    finally:
        workload.stop()
    print(f"seed {seed}:\n  " + "\n  ".join(log))
    assert_no_surprises(workload)
    workload.final_reads(cluster.wait_leader(timeout=60))
    assert_durable_everywhere(workload, cluster.servers, timeout=60)
    print(assert_linearizable(workload, timeout=300))
    assert_checker_rejects_stale_read(workload)
