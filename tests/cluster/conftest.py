"""Fixtures for the real-process cluster tests: clusters that are always torn down, with their logs shown
when a test fails."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.cluster import netns  # noqa: E402
from tests.cluster.harness import Cluster  # noqa: E402
from tests.cluster.netns import NetnsCluster  # noqa: E402

C = TypeVar("C", Cluster, NetnsCluster)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _clusters(request: pytest.FixtureRequest, build: Callable[..., C]) -> Iterator[Callable[..., C]]:
    """Hand the test a ``make(n, **options)`` that builds clusters with ``build(n, i, **options)``; afterwards
    close them all, and
    print each one's diagnostics when the test failed (or never reported)."""
    clusters: list[C] = []

    def make(n: int = 3, **options: Any) -> C:
        cluster = build(n, len(clusters), **options)
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
def make_cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Cluster]]:
    """``make_cluster(n, tls=False)``: n servers (not started yet) in their own temp dirs, with mutual TLS on
    the server port if ``tls``; killed after the test."""
    yield from _clusters(request, lambda n, i, tls=False: Cluster(n, tmp_path / f"cluster{i}", tls=tls))


@pytest.fixture
def make_netns_cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., NetnsCluster]]:
    """``make_netns_cluster(n)``: n servers (not started yet), each in its own network namespace on one
    bridge, links cut with ``cluster.net``; skips when namespaces cannot be made here (saying what is
    missing). Processes, namespaces, bridge and rules are removed after the test, failed or not."""
    reason = netns.unavailable()
    if reason:
        pytest.skip(reason)
    netns.sweep_stale()
    yield from _clusters(request, lambda n, i: NetnsCluster(n, tmp_path / f"netns{i}"))


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
