"""Autopilot on a real 3-server cluster: a killed server turns unhealthy in /v1/operator/autopilot/health
within LastContactThreshold; with CleanupDeadServers it leaves the Raft configuration once the leader has
heard nothing from it for LastContactThreshold + ServerStabilizationTime, while the cluster keeps its
quorum and its writes; restarted, it is added back. With MinQuorum 3, cleanup never drops below 3."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.harness import Cluster, Server, run_cli, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

MakeCluster = Callable[..., Cluster]
THRESHOLD = 0.2  # last_contact_threshold
STABILIZATION = 2.0  # server_stabilization_time


def start(cluster: Cluster, tmp_path: Path, **autopilot: Any) -> Server:
    conf = tmp_path / "autopilot.json"
    conf.write_text(json.dumps({"autopilot": {"last_contact_threshold": f"{THRESHOLD}s",
                                              "server_stabilization_time": f"{STABILIZATION}s", **autopilot}}))
    for s in cluster.servers:
        s.extra_args += ["-config-file", str(conf)]
    leader = cluster.start()
    cluster.wait_caught_up()
    # A new leader stores the configuration when it establishes leadership; until then Consul's and ours
    # answer 500 "autopilot config not initialized yet", so the tests start once it is there.
    wait_for("the leader to store the autopilot configuration",
             lambda: leader.get("/v1/operator/autopilot/configuration").status == 200, 15)
    return leader


def health(via: Server) -> tuple[int, dict[str, Any]]:
    reply = via.get("/v1/operator/autopilot/health")
    assert reply.status in (200, 429), reply.text
    return reply.status, reply.json()


def server_health(via: Server, node_id: str) -> dict[str, Any] | None:
    return next((s for s in health(via)[1]["Servers"] if s["ID"] == node_id), None)


def voters(cluster: Cluster, via: Server) -> list[str]:
    return sorted(s["Node"] for s in cluster.raft_configuration(via) if s["Voter"])


def write(server: Server, key: str) -> None:
    reply = server.put(f"/v1/kv/{key}", "x")
    assert reply.status == 200 and reply.body.strip() == b"true", f"{server.name}: {reply.status} {reply.text}"


def test_dead_server_is_unhealthy_then_removed_and_rejoins(make_cluster: MakeCluster, tmp_path: Path) -> None:
    cluster = make_cluster(3)
    leader = start(cluster, tmp_path)
    victim, survivor = cluster.others(leader)
    # Every server answers (followers ask the leader): all healthy, one failure tolerated.
    for via in cluster.servers:
        status, body = health(via)
        assert status == 200 and body["Healthy"] and body["FailureTolerance"] == 1, body
        assert sorted(s["Name"] for s in body["Servers"]) == ["s1", "s2", "s3"]
    assert [s["Name"] for s in health(survivor)[1]["Servers"] if s["Leader"]] == [leader.name]
    victim_id = victim.node_id

    victim.kill()
    killed = time.monotonic()
    wait_for("the killed server to turn unhealthy",
             lambda: (s := server_health(leader, victim_id)) is not None and not s["Healthy"], 10, interval=0.02)
    unhealthy_after = time.monotonic() - killed
    # Within the threshold, plus the heartbeat interval and the polling of a loaded machine.
    assert unhealthy_after < THRESHOLD + 1.0, f"unhealthy only after {unhealthy_after:.2f}s"
    status, body = health(survivor)
    assert status == 429 and not body["Healthy"] and body["FailureTolerance"] == 0
    write(survivor, "autopilot/while-unhealthy")

    wait_for("the dead server to leave the Raft configuration",
             lambda: voters(cluster, leader) == sorted([leader.name, survivor.name]), 30, interval=0.05)
    removed_after = time.monotonic() - killed
    assert removed_after >= THRESHOLD + STABILIZATION, f"removed after {removed_after:.2f}s: too early"
    for s in (leader, survivor):
        write(s, f"autopilot/after-removal-{s.name}")
    status, body = health(survivor)
    assert status == 200 and body["Healthy"] and len(body["Servers"]) == 2 and body["FailureTolerance"] == 0
    print(f"unhealthy after {unhealthy_after:.2f}s, removed after {removed_after:.2f}s")

    # Back from the dead: it asks to be added again, catches up and votes.
    victim.start()
    wait_for("the restarted server to be a voter again",
             lambda: voters(cluster, leader) == ["s1", "s2", "s3"], 60, interval=0.1)  # fmt: skip
    cluster.wait_caught_up()
    wait_for("all three healthy again", lambda: health(leader)[0] == 200, 30, interval=0.1)


def test_min_quorum_keeps_three_voters(make_cluster: MakeCluster, tmp_path: Path) -> None:
    cluster = make_cluster(3)
    leader = start(cluster, tmp_path)
    out = run_cli("operator", "autopilot", "set-config", "-min-quorum", "3", "-http-addr", leader.http_addr)
    assert out.returncode == 0 and out.stdout.strip() == "Configuration updated!", out.stderr
    victim, survivor = cluster.others(leader)
    victim_id = victim.node_id
    victim.kill()
    wait_for("the killed server to be seen as failed",
             lambda: (s := server_health(survivor, victim_id)) is not None and s["SerfStatus"] == "failed", 30)
    time.sleep(1.5)  # three more autopilot rounds: none may remove it
    assert voters(cluster, leader) == ["s1", "s2", "s3"]
    write(survivor, "autopilot/min-quorum")  # two of three still make a quorum
    state = json.loads(run_cli("operator", "autopilot", "state", "-format", "json", "-http-addr",
                               survivor.http_addr).stdout)  # fmt: skip
    assert state["Servers"][victim_id]["NodeStatus"] == "failed" and not state["Healthy"]
