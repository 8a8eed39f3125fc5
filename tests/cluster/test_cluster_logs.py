"""Leadership changes are normal operation and log like it: nothing at error level, no traceback.

Three real servers log JSON (``-log-json``) while clients write through every one of them; leadership
moves by transfer (to each server in turn, followers forwarding writes all along) and by losing the
leader behind a partition (the old leader steps down, its in-flight proposals fail). Then every server's
output is read: no JSON entry at error level or with an exception attached, and no traceback anywhere
(asyncio's "exception was never retrieved" goes to stderr, which is in the same file).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.cluster.harness import Cluster, Server, http, wait_for
from tests.cluster.workload import Workload

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

MakeCluster = Callable[..., Cluster]
LOUD = {"error", "critical", "exception", "fatal"}


def entries(server: Server) -> list[dict[str, Any]]:
    """The server's JSON log entries (the start-up banner and the harness's markers are plain text)."""
    out = []
    for line in server.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            assert isinstance(entry, dict), line
            out.append(entry)
    return out


def transfer_to(cluster: Cluster, via: Server, target: Server) -> None:
    reply = http("POST", f"{via.url}/v1/operator/raft/transfer-leader?id={target.node_id}", b"")
    assert reply.status == 200, f"transfer to {target.name} via {via.name}: {reply.status} {reply.text}"
    assert cluster.wait_leader(timeout=30) is target


def test_leadership_changes_log_nothing_at_error_level(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(3)
    for s in cluster.servers:
        s.extra_args += ["-log-json", "-log-level", "info"]
    leader = cluster.start()
    workload = Workload(cluster.servers, seed=21, request_timeout=3.0).start()
    try:
        workload.wait_write_successes(time.monotonic(), 30, timeout=30)
        for _ in range(3):  # every server leads once, asked through a follower
            target, via = cluster.others(leader)
            transfer_to(cluster, via, target)
            leader = target
            workload.wait_write_successes(time.monotonic(), 20, timeout=30)
        # The leader cut off: it loses leadership with writes in flight, the others elect a new one.
        others = cluster.others(leader)
        cluster.relay.isolate(leader.k, [s.k for s in others])
        cut = time.monotonic()
        cluster.wait_leader(among=others, timeout=30)
        workload.wait_write_successes(cut, 20, timeout=30)
        cluster.relay.heal()
        cluster.wait_caught_up(timeout=60)
        workload.wait_write_successes(time.monotonic(), 20, timeout=30)
    finally:
        workload.stop()
    changes = 0
    for s in cluster.servers:
        logged = entries(s)
        changes += sum(1 for e in logged if e.get("event") == "raft role changed")
        loud = [e for e in logged if str(e.get("level", "")).lower() in LOUD or "exception" in e or "exc_info" in e]
        assert not loud, f"{s.name} logged at error level or with a traceback: {loud[:5]}"
        text = s.log_path.read_text(errors="replace")
        assert "Traceback" not in text, f"{s.name} printed a traceback:\n{text[text.index('Traceback'):][:3000]}"
    assert changes >= 8, f"only {changes} role changes logged: the scenario did not move leadership"
    wait_for("every server to agree on a leader", lambda: cluster.wait_leader(timeout=30), 30)
