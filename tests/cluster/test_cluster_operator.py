"""Operator commands on a real 3-server cluster, through the ``proconsul`` CLI as an operator runs them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cluster.harness import Cluster, Server, http, kv_value, run_cli, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

MakeCluster = Callable[..., Cluster]


def cli(*args: str) -> str:
    out = run_cli(*args)
    assert out.returncode == 0, f"proconsul {' '.join(args)} failed ({out.returncode}): {out.stderr}{out.stdout}"
    return out.stdout


def list_peers(via: Server) -> list[dict[str, str]]:
    """`operator raft list-peers` parsed: one dict per row, keyed by the header."""
    lines = cli("operator", "raft", "list-peers", "-http-addr", via.http_addr).strip().splitlines()
    header = ["Node", "ID", "Address", "State", "Voter", "RaftProtocol", "CommitIndex"]
    assert lines[0].split() == ["Node", "ID", "Address", "State", "Voter", "RaftProtocol", "Commit", "Index"]
    return [dict(zip(header, line.split(), strict=True)) for line in lines[1:]]


def write(server: Server, key: str, value: str) -> None:
    reply = server.put(f"/v1/kv/{key}", value)
    assert reply.status == 200 and reply.body.strip() == b"true", f"{server.name}: {reply.status} {reply.text}"


def kv_everywhere(servers: list[Server], prefix: str) -> dict[str, dict[str, str]]:
    out = {}
    for s in servers:
        reply = s.get(f"/v1/kv/{prefix}?recurse&stale")
        out[s.name] = {} if reply.status == 404 else {e["Key"]: kv_value(e) for e in reply.json()}
    return out


def test_operator_raft_and_snapshot(make_cluster: MakeCluster, tmp_path: Path) -> None:
    cluster = make_cluster(3)
    leader = cluster.start()
    cluster.wait_caught_up()

    # list-peers, asked of any server: three voters, exactly one leader, the one every server names.
    for via in cluster.servers:
        peers = list_peers(via)
        assert sorted(p["Node"] for p in peers) == ["s1", "s2", "s3"]
        assert all(p["Voter"] == "true" for p in peers)
        assert [p["Node"] for p in peers if p["State"] == "leader"] == [leader.name]
        assert {p["Node"]: p["Address"] for p in peers} == {s.name: s.address for s in cluster.servers}

    # transfer-leader, asked of a follower, to the other follower: every server follows the new leader.
    asked, target = cluster.others(leader)
    assert "Success" in cli("operator", "raft", "transfer-leader", "-id", target.node_id, "-http-addr", asked.http_addr)
    assert cluster.wait_leader(timeout=30) is target
    assert [p["Node"] for p in list_peers(asked) if p["State"] == "leader"] == [target.name]
    leader = target

    # remove-peer of a stopped server: two voters remain and both take writes.
    gone = cluster.others(leader)[0]
    assert gone.stop() == 0
    survivors = cluster.others(gone)
    out = cli("operator", "raft", "remove-peer", "-id", gone.node_id, "-http-addr", survivors[1].http_addr)
    assert gone.node_id in out
    wait_for("the configuration to drop the removed server",
             lambda: sorted(p["Node"] for p in list_peers(leader)) == sorted(s.name for s in survivors), 30)  # fmt: skip
    peers = list_peers(survivors[1])
    assert all(p["Voter"] == "true" for p in peers) and len(peers) == 2
    for s in survivors:
        write(s, f"after-remove/{s.name}", "ok")  # through the leader and through the follower
    # Removing a server that is not in the configuration says so.
    out = run_cli("operator", "raft", "remove-peer", "-id", gone.node_id, "-http-addr", leader.http_addr)
    assert out.returncode == 1 and "not found" in out.stderr, out.stderr

    # snapshot save / restore round-trips the KV data on every server.
    for i in range(20):
        write(leader, f"snap/{i:02}", f"v{i}")
    cluster.wait_caught_up(servers=survivors)
    saved = kv_everywhere(survivors, "snap/")[leader.name]
    assert len(saved) == 20
    all_keys = leader.get("/v1/kv/?keys&consistent").json()
    snap = tmp_path / "backup.snap"
    assert "Saved and verified snapshot" in cli("snapshot", "save", "-http-addr", survivors[1].http_addr, str(snap))
    inspect = cli("snapshot", "inspect", str(snap))
    assert ["KV", str(len(all_keys))] in [line.split() for line in inspect.splitlines()], inspect
    for i in range(10):
        assert leader.get(f"/v1/kv/snap/{i:02}").status == 200
        assert http_delete(leader, f"snap/{i:02}")
    write(leader, "snap/new", "after the backup")
    assert "Restored snapshot" in cli("snapshot", "restore", "-http-addr", leader.http_addr, str(snap))
    wait_for("every server to hold exactly the saved KV data",
             lambda: all(v == saved for v in kv_everywhere(survivors, "snap/").values()), 30)  # fmt: skip
    # The restored cluster keeps working.
    write(survivors[1], "snap/after-restore", "yes")
    assert leader.get("/v1/kv/snap/after-restore?consistent").status == 200


def http_delete(server: Server, key: str) -> bool:
    reply = http("DELETE", f"{server.url}/v1/kv/{key}")
    return reply.status == 200 and reply.body.strip() == b"true"
