"""A real Prometheus scrapes a 3-server cluster's /v1/agent/metrics and sees one leader.

The short form of ``make prometheus-demo``: three servers started as a user starts them, with
``telemetry { prometheus_retention_time = "60s", disable_hostname = true }``, and Debian's ``prometheus``
scraping each one every second. Through Prometheus' HTTP API: every target is up, exactly one server
reports ``consul_server_isLeader`` 1 and it is the one the cluster names, ``consul_raft_state_leader`` adds
up to the one election, and the request timers Prometheus stored carry Consul's labels."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cluster.harness import Cluster, free_port
from tests.cluster.prometheus import TELEMETRY, prometheus_binary, start_prometheus, wait_value


def test_prometheus_scrapes_three_servers_and_sees_one_leader(make_cluster: Callable[..., Cluster],
                                                              tmp_path: Path) -> None:  # fmt: skip
    binary = prometheus_binary()
    if binary is None:
        pytest.skip("prometheus not installed (Debian package prometheus; .ci/run installs it)")
    telemetry = tmp_path / "telemetry.json"
    telemetry.write_text(json.dumps(TELEMETRY))
    cluster = make_cluster(3)
    for s in cluster.servers:
        s.extra_args += ["-config-file", str(telemetry)]
    leader = cluster.start()
    cluster.wait_caught_up()
    prom = start_prometheus(binary, [s.http_addr for s in cluster.servers], tmp_path / "prometheus",
                            free_port("127.0.0.1"))  # fmt: skip
    try:
        wait_value(prom, 'count(up{job="proconsul"} == 1)', 3.0)
        wait_value(prom, "sum(consul_server_isLeader)", 1.0)
        leading = prom.query("consul_server_isLeader == 1")
        assert [r["metric"]["instance"] for r in leading] == [leader.http_addr]
        wait_value(prom, "sum(consul_raft_state_leader)", 1.0)
        assert prom.scalar(f'consul_autopilot_healthy{{instance="{leader.http_addr}"}}') == 1.0
        assert prom.scalar(f'consul_autopilot_failure_tolerance{{instance="{leader.http_addr}"}}') == 1.0
        timers = prom.query('consul_api_http_count{method="GET",path="v1_agent_metrics"}')
        assert len(timers) == 3  # each server timed Prometheus' own scrapes
    finally:
        prom.stop()
