"""Consul's ``performance.raft_multiplier`` scales the Raft timings: the mapping (a tick of m x 100 ms gives
Consul's election timeout and heartbeat at multiplier m; no key keeps Proconsul's 50 ms), the agent's
server built with it, what ``/v1/agent/self`` reports, the refusal of a value outside 1..10 with Consul's
text, and a real failover that waits out the scaled election timeout."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from registry.raft.base import ELECTION_TICKS, MAX_RAFT_MULTIPLIER, TICK_SECONDS, raft_tick, raft_timings
from registry.raft.driver import RaftOptions
from registry.raft.transport import LINK
from registry.testing import free_port
from tests.raftdriver.test_driver import Cluster, kv, until

BIN = str(Path(sys.executable).with_name("proconsul"))


@pytest.mark.parametrize(("multiplier", "tick", "election", "lease"), [
    (None, 0.05, 0.5, 0.4),  # not set: Proconsul's own timings, unchanged
    (1, 0.1, 1.0, 0.8),  # Consul's fastest: election and heartbeat timeouts 1 s, heartbeats every 100 ms
    (5, 0.5, 5.0, 4.0),  # Consul's production default
    (10, 1.0, 10.0, 8.0),
])  # fmt: skip
def test_the_multiplier_scales_every_timing(
    multiplier: int | None, tick: float, election: float, lease: float
) -> None:
    assert raft_tick(multiplier) == pytest.approx(tick)
    got = raft_timings(raft_tick(multiplier))
    assert got == pytest.approx((election, tick, lease))
    assert raft_tick(None) == TICK_SECONDS


def test_the_bound_is_consuls_everywhere() -> None:
    assert MAX_RAFT_MULTIPLIER == 10
    for bad in (0, -1, 11):
        want = f"performance.raft_multiplier cannot be {bad}. Must be between 1 and 10"
        with pytest.raises(ValueError, match=want):
            raft_tick(bad)


def test_a_server_agent_runs_its_raft_at_the_scaled_tick(tmp_path: Path) -> None:
    """The agent's Raft server gets the tick, and its peer streams' kernel give-up time (TCP_USER_TIMEOUT,
    the longest election timeout) scales with it; without the key both stay as they were."""
    from registry.agent.agent import Agent
    from registry.cli.agent import build_config
    from registry.raft.driver import RaftServer

    def server(multiplier: int | None, name: str) -> RaftServer:
        perf = tmp_path / f"{name}.json"
        perf.write_text(json.dumps({"performance": {"raft_multiplier": multiplier}} if multiplier else {}))
        cfg = build_config(["-server", "-bootstrap-expect", "1", "-data-dir", str(tmp_path / name), "-node", name,
                            "-insecure", "-config-file", str(perf)])  # fmt: skip
        consensus = Agent(cfg).consensus  # built, not started
        assert isinstance(consensus, RaftServer)
        return consensus

    plain = server(None, "plain")
    assert plain.opts.tick == TICK_SECONDS and plain._link_timeouts is LINK
    scaled = server(3, "scaled")
    assert scaled.opts.tick == pytest.approx(0.3)
    assert scaled._link_timeouts.user_timeout == pytest.approx(2 * ELECTION_TICKS * 0.3)
    assert scaled._link_timeouts.connect == LINK.connect


def _self(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/agent/self", timeout=5) as r:
        return json.loads(r.read())


def _start(tmp: Path, perf: dict) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cfg = tmp / f"perf-{port}.json"
    cfg.write_text(json.dumps(perf))
    proc = subprocess.Popen([BIN, "agent", "-dev", "-serf-lan-port", "0", "-http-port", str(port), "-dns-port", "-1",
                             "-config-file", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    return proc, port


def _wait_up(proc: subprocess.Popen[bytes], port: int) -> dict:
    deadline = time.monotonic() + 30
    while True:
        try:
            return _self(port)
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_the_agent_reports_its_raft_timings_and_refuses_a_bad_multiplier(tmp_path: Path) -> None:
    """/v1/agent/self's DebugConfig carries RuntimeConfig's Raft timings as this agent counts them; a value
    outside 1..10 stops the agent at start with Consul's text."""
    started = [_start(tmp_path, {}), _start(tmp_path, {"performance": {"raft_multiplier": 3}})]
    try:
        plain, scaled = (_wait_up(p, port)["DebugConfig"] for p, port in started)
        keys = ("ConsulRaftElectionTimeout", "ConsulRaftHeartbeatTimeout", "ConsulRaftLeaderLeaseTimeout")
        assert [plain[k] for k in keys] == ["500ms", "500ms", "400ms"]
        assert [scaled[k] for k in keys] == ["3s", "3s", "2.4s"]
    finally:
        for proc, _ in started:
            proc.terminate()
            proc.wait(15)
    proc, _ = _start(tmp_path, {"performance": {"raft_multiplier": 0}})
    try:
        assert proc.wait(30) == 1
        assert proc.stderr is not None
        err = proc.stderr.read().decode()
        assert "performance.raft_multiplier cannot be 0. Must be between 1 and 10" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


class ScaledCluster(Cluster):
    def __init__(self, tmp: Path, multiplier: int) -> None:
        super().__init__(tmp)
        self.tick = raft_tick(multiplier)

    def options(self, i: int, expect: int = 3, join: list[int] | None = None) -> RaftOptions:
        opts = super().options(i, expect, join)
        opts.tick = self.tick
        return opts


async def test_a_failover_waits_out_the_scaled_election_timeout(tmp_path: Path) -> None:
    """Three servers at multiplier 2 (a 200 ms tick): the followers of a leader that stops stand for election
    only once they have heard nothing for an election timeout, 2-4 s, where Proconsul's default waits
    0.5-1 s; the cluster then goes on under the new leader."""
    cluster = ScaledCluster(tmp_path, 2)
    try:
        for i in range(3):
            await cluster.start(i)
        leader = await cluster.leader(timeout=30)
        assert await leader.propose(kv("a", b"1")) is True
        idx = next(i for i, s in cluster.servers.items() if s is leader)
        await cluster.stop(idx)
        stopped = time.monotonic()
        await until(lambda: any(s.is_leader() for s in cluster.servers.values()), timeout=30)
        took = time.monotonic() - stopped
        # The last heartbeat came at most a tick before the stop, and a follower waits at least
        # ELECTION_TICKS ticks after it (ticks only ever come late).
        assert took >= (ELECTION_TICKS - 1) * cluster.tick, f"a new leader after {took:.2f}s"
        new = await cluster.leader(timeout=30)
        assert await new.propose(kv("b", b"2")) is True
    finally:
        await cluster.close()
