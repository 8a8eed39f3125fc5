"""Seed sweeps of the deterministic cluster simulator (tests/raft/sim.py).

CI runs a few hundred seeds of 3- and 5-server clusters; ``make soak`` runs many more
(PROCONSUL_SOAK_SEEDS per cluster size, default 3000).  A failure prints the seed and a one-line replay
command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from registry.raft import node as raftnode
from tests.raft.sim import SimFailure, Simulator, run_seed

ROOT = Path(__file__).resolve().parents[2]
CI_SEEDS = {3: range(0, 240), 5: range(0, 120)}
SOAK_BASE = 1_000_000  # soak seeds never repeat the CI ones
SOAK_SEEDS = int(os.environ.get("PROCONSUL_SOAK_SEEDS", "3000"))


@pytest.mark.parametrize("seed", CI_SEEDS[3])
def test_three_servers(seed: int) -> None:
    run_seed(seed, 3)


@pytest.mark.parametrize("seed", CI_SEEDS[5])
def test_five_servers(seed: int) -> None:
    run_seed(seed, 5)


@pytest.mark.soak
@pytest.mark.parametrize("nodes", [3, 5])
@pytest.mark.parametrize("seed", range(SOAK_BASE, SOAK_BASE + SOAK_SEEDS))
def test_soak(seed: int, nodes: int) -> None:
    run_seed(seed, nodes)


def test_the_sweep_exercises_the_features() -> None:
    """Guard against a simulator that silently stops doing things: over a few seeds every kind of
    fault and client operation happens."""
    totals: dict[str, int] = {}
    for seed in range(12):
        for key, value in run_seed(seed, 5).stats.items():
            totals[key] = totals.get(key, 0) + value
    for key in ("writes", "reads", "lease_reads", "crashes", "snapshots_sent", "config_changes", "transfers",
                "stalls", "late_deliveries", "link_resets"):  # fmt: skip
        assert totals[key] > 0, (key, totals)


def test_a_seed_replays_exactly_whatever_the_hash_seed() -> None:
    code = "from tests.raft.sim import run_seed; print(run_seed(7, 5).trace_digest)"
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        digests.add(out.stdout.strip())
    assert len(digests) == 1
    assert run_seed(7, 5).trace_digest in digests


def test_replay_command_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tests.raft.sim", "--seed", "3", "--nodes", "3"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "SimResult(seed=3" in out.stdout


def test_a_broken_read_index_is_caught_with_seed_and_replay_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prove the checks bite: answer ReadIndex reads without the quorum round and the simulator must
    report a stale read, naming the seed and how to replay it."""

    def read_without_confirmation(self: raftnode.RaftNode, read: raftnode._PendingRead) -> None:
        read.index = self.commit_index
        if read.requester is None:
            self._read_states.append(raftnode.ReadState(read.context, read.index))
        else:
            self._send(raftnode.ReadIndexResponse(self.term, self.id, read.requester, read.context, read.index, True))

    monkeypatch.setattr(raftnode.RaftNode, "_leader_read", read_without_confirmation)
    for seed in range(200):
        try:
            Simulator(seed, 3).run()
        except SimFailure as exc:
            text = str(exc)
            assert "stale read" in text
            assert f"seed={seed} nodes=3" in text
            assert f"replay: .venv/bin/python -m tests.raft.sim --seed {seed} --nodes 3" in text
            return
    pytest.fail("200 seeds did not expose reads served without a quorum round")
