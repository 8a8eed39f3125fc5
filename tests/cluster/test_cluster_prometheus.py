"""A real Prometheus scrapes a 3-server cluster's /v1/agent/metrics and sees one leader.

The short form of ``make prometheus-demo``: three servers started as a user starts them, with
``telemetry { prometheus_retention_time = "60s", disable_hostname = true }``, and Debian's ``prometheus``
scraping each one every second. Through Prometheus' HTTP API: every target is up, exactly one server
reports ``consul_server_isLeader`` 1 and it is the one the cluster names, ``consul_raft_state_leader`` adds
up to the one election, and the request timers Prometheus stored carry Consul's labels. A client agent
counts its calls to the servers and times the requests it forwards."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cluster.harness import Cluster, free_port, http, wait_for
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
    client = cluster.add_client("client-1")
    client.extra_args += ["-config-file", str(telemetry)]
    client.start()
    wait_for("the client agent to answer", lambda: http("GET", client.url + "/v1/agent/self", timeout=2).status == 200,
             30)  # fmt: skip
    assert http("GET", client.url + "/v1/catalog/services").status == 200  # forwarded to a server
    text = http("GET", client.url + "/v1/agent/metrics?format=prometheus").text
    assert 'consul_api_http_count{method="GET",path="v1_catalog_services"} 1' in text.splitlines()
    rpc = [ln for ln in text.splitlines() if ln.startswith("consul_client_rpc ")]
    assert rpc and float(rpc[0].split()[1]) >= 1, text
