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

from tests.cluster import netns  # noqa: E402
from tests.cluster.harness import Cluster  # noqa: E402
from tests.cluster.netns import NetnsCluster  # noqa: E402


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def make_cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Cluster]]:
    """``make_cluster(n)``: n servers (not started yet) in their own temp dirs; killed after the test."""
    clusters: list[Cluster] = []

    def make(n: int = 3, tls: bool = False) -> Cluster:
        cluster = Cluster(n, tmp_path / f"cluster{len(clusters)}", tls=tls)
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


@pytest.fixture
def make_netns_cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., NetnsCluster]]:
    """``make_netns_cluster(n)``: n servers (not started yet), each in its own network namespace on one
    bridge, links cut with ``cluster.net``; skips when namespaces cannot be made here (saying what is
    missing). Processes, namespaces, bridge and rules are removed after the test, failed or not."""
    reason = netns.unavailable()
    if reason:
        pytest.skip(reason)
    netns.sweep_stale()
    clusters: list[NetnsCluster] = []

    def make(n: int = 3) -> NetnsCluster:
        cluster = NetnsCluster(n, tmp_path / f"netns{len(clusters)}")
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


@pytest.fixture
def make_netns(request: pytest.FixtureRequest) -> Iterator[Callable[..., netns.Netns]]:
    """``make_netns(n)``: n bare namespaces on one bridge (for processes of the test's own choosing)."""
    reason = netns.unavailable()
    if reason:
        pytest.skip(reason)
    made: list[netns.Netns] = []

    def make(n: int = 2) -> netns.Netns:
        net = netns.Netns(n).create()
        made.append(net)
        return net

    try:
        yield make
    finally:
        for net in made:
            net.close()
