"""Sessions and locks on three real server processes: a lock survives the leader's SIGKILL, and the new
leader enforces the session's TTL (renewals reach its timers; without them the session expires)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cluster.harness import Cluster, Server, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

TTL = 2.0  # seconds; the leader invalidates after TTL x 2 without a renew


def holder(server: Server, key: str) -> str | None:
    reply = server.get(f"/v1/kv/{key}?consistent", timeout=5)
    if reply.status != 200:
        return None
    return str(reply.json()[0].get("Session", ""))


class Renewer(threading.Thread):
    """Renews a session through one server every 0.4 s until stopped (failures during an election are
    expected and counted)."""

    def __init__(self, server: Server, sid: str) -> None:
        super().__init__(daemon=True)
        self.server, self.sid = server, sid
        self.stop_event = threading.Event()
        self.ok = 0
        self.failed = 0
        self.not_found = 0

    def run(self) -> None:
        while not self.stop_event.wait(0.4):
            try:
                status = self.server.put(f"/v1/session/renew/{self.sid}", timeout=3).status
            except OSError:
                status = 0
            if status == 200:
                self.ok += 1
            elif status == 404:
                self.not_found += 1
            else:
                self.failed += 1


def test_lock_held_through_leader_kill_and_ttl_enforced_by_new_leader(
    make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    config = tmp_path / "sessions.json"
    config.write_text(json.dumps({"session_ttl_min": "1s"}))
    cluster = make_cluster(3)
    for s in cluster.servers:
        s.extra_args += ["-config-file", str(config)]
    leader = cluster.start()
    follower = cluster.others(leader)[0]

    # The session belongs to a follower's node (it outlives the leader) and is created through it, once
    # that node is in the catalog (until then Consul's answer is "Missing node registration").
    def node_healthy() -> bool:
        checks = follower.get(f"/v1/health/node/{follower.name}?consistent").json() or []
        return any(c["CheckID"] == "serfHealth" and c["Status"] == "passing" for c in checks)

    wait_for(f"{follower.name} registered with a passing serfHealth", node_healthy, timeout=30)
    reply = follower.put("/v1/session/create", json.dumps({"TTL": f"{TTL:g}s", "LockDelay": 0}))
    assert reply.status == 200, reply.text
    sid = reply.json()["ID"]
    assert follower.put(f"/v1/kv/service/leader?acquire={sid}", "me").json() is True
    assert holder(leader, "service/leader") == sid

    renewer = Renewer(follower, sid)
    renewer.start()
    try:
        leader.kill()
        new_leader = cluster.wait_leader(among=cluster.others(leader), timeout=30)
        assert new_leader is not leader
        elected = time.monotonic()
        # The lock is still held right after the election...
        assert holder(new_leader, "service/leader") == sid
        # ...and while renewals go on it stays held well past TTL x 2 of the new leader's timer.
        renewed_ok = renewer.ok
        while time.monotonic() - elected < 2.5 * TTL:
            assert holder(new_leader, "service/leader") == sid
            time.sleep(0.2)
        assert renewer.ok > renewed_ok and renewer.not_found == 0
    finally:
        renewer.stop_event.set()
        renewer.join(5)
    stopped = time.monotonic()

    # Without renewals the new leader expires it: the lock is released (value kept, no holder).
    wait_for("the new leader to expire the session", lambda: holder(new_leader, "service/leader") == "",
             timeout=6 * TTL + 10)  # fmt: skip
    assert time.monotonic() - stopped >= 2 * TTL - 0.5
    info = follower.get(f"/v1/session/info/{sid}?consistent")
    assert info.status == 200 and info.json() == []
    for s in cluster.alive:
        wait_for(f"{s.name} to apply the release",
                 lambda s=s: s.get("/v1/kv/service/leader?stale").json()[0].get("Session") is None, 10)  # fmt: skip
