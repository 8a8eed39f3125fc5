"""Default-mode (lease) reads must not go stale when the leader's process stalls.

A lease is counted in Raft ticks. When the leader's process is paused (SIGSTOP here; a GC pause, a VM
hiccup or an overloaded box in production) its ticks stop while real time goes on, the followers elect a
new leader and commit writes, and when the old leader resumes, still cut off from the new one, a read
already queued on its HTTP port must not be answered from its stale state (Jepsen's 2014 Consul finding;
etcd #13527). Before the driver checked that its tick clock kept pace with real time, the resumed leader
answered the old value for the rest of its lease.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

import pytest

from tests.cluster.harness import Cluster, Reply, http, kv_value

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

MakeCluster = Callable[..., Cluster]


def test_paused_and_partitioned_leader_serves_no_stale_default_reads(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(3)
    old = cluster.start()
    assert old.put("/v1/kv/k", "v1").body.strip() == b"true"
    cluster.wait_caught_up()
    # The lease is live: a default read on the leader needs no quorum round right now.
    assert kv_value(old.get("/v1/kv/k").json()[0]) == "v1"
    others = cluster.others(old)
    assert old.proc is not None
    os.killpg(old.proc.pid, signal.SIGSTOP)
    try:
        cluster.relay.isolate(old.k, [s.k for s in others], "blackhole")
        new = cluster.wait_leader(among=others, timeout=30)
        assert new.put("/v1/kv/k", "v2").body.strip() == b"true"
        # Reads sent now queue on the paused leader's socket; it sees them first thing when it resumes.
        replies: list[tuple[str, Reply | OSError]] = []

        def read(query: str) -> None:
            try:
                replies.append((query, http("GET", f"{old.url}/v1/kv/k{query}", timeout=15)))
            except OSError as exc:
                replies.append((query, exc))

        readers = [threading.Thread(target=read, args=(q,)) for q in ["", "", "", "?consistent", ""]]
        for t in readers:
            t.start()
        time.sleep(0.3)  # let the requests reach the paused process's listen queue (pacing only)
    finally:
        os.killpg(old.proc.pid, signal.SIGCONT)
    for t in readers:
        t.join(30)
    served = [(q, kv_value(r.json()[0])) for q, r in replies if isinstance(r, Reply) and r.status == 200]
    assert all(value == "v2" for _, value in served), f"stale reads after v2 was acknowledged: {served}"
    assert len(replies) == 5
    cluster.relay.heal()
    cluster.wait_caught_up(timeout=60)
    assert kv_value(old.get("/v1/kv/k").json()[0]) == "v2"
