"""Fixtures for the real-process cluster tests: clusters that are always torn down, with their logs shown
when a test fails."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.cluster.harness import Cluster  # noqa: E402


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def make_cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Cluster]]:
    """``make_cluster(n)``: n servers (not started yet) in their own temp dirs; killed after the test."""
    clusters: list[Cluster] = []

    def make(n: int = 3) -> Cluster:
        cluster = Cluster(n, tmp_path / f"cluster{len(clusters)}")
        clusters.append(cluster)
        return cluster

    try:
        yield make
    finally:
        report = getattr(request.node, "rep_call", None)
        for cluster in clusters:
            if report is None or report.failed:
                print(f"\n===== cluster diagnostics ({cluster.workdir})\n{cluster.diagnostics()}")
            cluster.close()
