"""Durability across whole-cluster restarts and outage recovery, on real server processes.

An acknowledged write was fsynced by a quorum before the reply, so it must survive every server being
stopped (gracefully or by SIGKILL) and restarted; and after losing quorum for good, recovering the last
server with peers.json must keep everything it had committed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from tests.cluster.harness import Cluster, run_cli
from tests.cluster.workload import (
    Workload,
    assert_durable_everywhere,
    assert_linearizable,
    assert_no_surprises,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

MakeCluster = Callable[..., Cluster]


def load_then(cluster: Cluster, workload: Workload, fault: Callable[[], None], seconds: float = 2.0) -> None:
    workload.wait_write_successes(time.monotonic(), 30, timeout=30)
    workload.run_for(seconds)
    fault()


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_full_restart_keeps_acknowledged_writes(make_cluster: MakeCluster, how: str) -> None:
    cluster = make_cluster(3)
    cluster.start()
    workload = Workload(cluster.servers, seed=11).start()
    try:
        if how == "sigterm":
            load_then(cluster, workload, workload.stop)  # writes finish first, then a clean shutdown
            for s in cluster.servers:
                assert s.stop() == 0, f"{s.name} did not exit cleanly on SIGTERM:\n{s.log_tail()}"
        else:
            def kill_all() -> None:  # mid-load, all at once: unsynced data is gone
                for s in cluster.servers:
                    s.kill()

            load_then(cluster, workload, kill_all)
    finally:
        workload.stop()
    acked_before = len(workload.acked_unique)
    assert acked_before > 20, "the load acknowledged too few writes to prove anything"
    for s in cluster.servers:
        s.start()
    leader = cluster.wait_leader(timeout=60)
    cluster.wait_caught_up(timeout=60)
    # Everything acknowledged before the restart is on every server, and the history (with final reads
    # after the restart) is linearizable: no acknowledged register write was lost or reordered.
    assert_no_surprises(workload)
    workload.final_reads(leader)
    assert_durable_everywhere(workload, cluster.servers)
    print(f"{acked_before} acknowledged unique writes survived; {assert_linearizable(workload)}")
    # And the restarted cluster takes writes again.
    assert leader.put("/v1/kv/after-restart", "yes").body.strip() == b"true"


def test_lost_quorum_recovery_with_peers_json(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(3)
    leader = cluster.start()
    workload = Workload(cluster.servers, seed=12).start()
    try:
        load_then(cluster, workload, workload.stop)
    finally:
        workload.stop()
    assert_no_surprises(workload)
    survivor = cluster.others(leader)[0]
    # The survivor holds every committed entry (a lagging survivor would lose what it never received,
    # as Consul's outage recovery does too); the other two then die for good.
    cluster.wait_caught_up()
    workload.final_reads(leader)
    for s in cluster.others(survivor):
        s.kill()
    survivor.kill()
    peers = survivor.data_dir / "raft" / "peers.json"
    peers.write_text(json.dumps([{"id": survivor.node_id, "address": survivor.address}]))
    survivor.start()
    assert cluster.wait_leader(among=[survivor], timeout=60) is survivor
    assert not peers.exists() and peers.with_suffix(".json.applied").exists()
    # The survivor alone is the configuration now.
    conf = cluster.raft_configuration(survivor)
    assert [(s["ID"], s["Voter"], s["Leader"]) for s in conf] == [(survivor.node_id, True, True)]
    assert_durable_everywhere(workload, [survivor])
    workload.final_reads(survivor)
    print(assert_linearizable(workload))
    # It takes writes, and they survive a restart of the one-server cluster.
    assert survivor.put("/v1/kv/recovered", "yes").body.strip() == b"true"
    assert survivor.stop() == 0
    survivor.start()
    cluster.wait_leader(among=[survivor], timeout=60)
    reply = survivor.get("/v1/kv/recovered?consistent")
    assert reply.status == 200 and reply.json()[0]["Value"] == "eWVz"
    out = run_cli("operator", "raft", "list-peers", "-http-addr", survivor.http_addr)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.strip().splitlines()) == 2, out.stdout
