"""The metrics registry alone (pure: time passed in): go-metrics' interval arithmetic and JSON shape, names
with prefix, host and labels, the Prometheus exposition with its quantile window and retention, the
prefix filter, and Go's float formatting."""

from __future__ import annotations

import math

import pytest

from registry.metrics import WINDOW_BUCKETS, Metrics, PrefixFilter, go_float, prometheus_name

T0 = 1_700_000_000.0  # an interval boundary (a multiple of 10 s)


def test_interval_summary_has_go_metrics_shape_and_arithmetic() -> None:
    m = Metrics(now=T0)
    c = m.counter("raft.apply")
    s = m.sample("raft.commitTime")
    for v in (1.0, 2.0, 3.0):
        c.inc(v)
        s.observe(v * 10)
    m.gauge("runtime.sys_bytes").set(1024.0)
    assert m.summary()["Counters"][0]["Count"] == 3  # no interval finished yet: the current one
    closed = m.rotate(T0 + 10.5)
    assert closed is not None and m.summary() is closed
    assert closed["Timestamp"] == "2023-11-14 22:13:20 +0000 UTC"
    assert list(closed) == ["Timestamp", "Gauges", "PrecisionGauges", "Points", "Counters", "Samples"]
    assert closed["Counters"] == [{"Name": "consul.raft.apply", "Count": 3, "Rate": 0.6, "Sum": 6, "Min": 1, "Max": 3,
                                   "Mean": 2, "Stddev": 1, "Labels": {}}]  # fmt: skip
    sample = closed["Samples"][0]
    assert (sample["Name"], sample["Count"], sample["Sum"], sample["Mean"], sample["Stddev"]) == \
        ("consul.raft.commitTime", 3, 60, 20, 10)  # fmt: skip
    assert closed["Gauges"] == [{"Name": "consul.runtime.sys_bytes", "Value": 1024, "Labels": {}}]
    # The next interval shows only what is recorded in it: the gauge was not set again.
    assert m.rotate(T0 + 15) is None
    nxt = m.rotate(T0 + 20)
    assert nxt is not None and nxt["Gauges"] == [] and nxt["Counters"] == [] and nxt["Samples"] == []


def test_names_prefix_hostname_and_labels() -> None:
    m = Metrics(prefix="proconsul", hostname="host-1", now=T0)
    m.gauge("autopilot.healthy").set(1.0)
    m.counter("raft.apply").inc()
    m.sample("api.http", (("method", "GET"), ("path", "v1_kv_"))).observe(1.0)
    out = m.rotate(T0 + 10)
    assert out is not None
    assert [g["Name"] for g in out["Gauges"]] == ["proconsul.host-1.autopilot.healthy"]  # gauges carry the host
    assert [c["Name"] for c in out["Counters"]] == ["proconsul.raft.apply"]
    assert out["Samples"][0]["Labels"] == {"method": "GET", "path": "v1_kv_"}
    assert prometheus_name("consul.mesh.active-root-ca.expiry") == "consul_mesh_active_root_ca_expiry"


def test_prometheus_exposition() -> None:
    m = Metrics(retention=60.0, now=T0)
    m.declare("counter", "raft.state.leader", "Times this server became the leader.")
    m.declare("sample", "raft.commitTime", "Commit time.")
    timer = m.sample("api.http", (("path", "v1_kv_"), ("method", "GET")), "HTTP time")
    for v in range(1, 101):
        timer.observe(float(v))
    m.gauge("autopilot.healthy").set(math.nan)
    m.counter("odd", (("q", 'a"b\\c\nd'),)).inc(2)
    text = m.prometheus(T0 + 1)
    assert text.endswith("\n")
    lines = text.splitlines()
    families = [ln.split()[2] for ln in lines if ln.startswith("# TYPE")]
    assert families == sorted(families)
    assert "# TYPE consul_api_http summary" in lines and "# HELP consul_api_http HTTP time" in lines
    assert 'consul_api_http{method="GET",path="v1_kv_",quantile="0.5"} 50' in lines
    assert 'consul_api_http{method="GET",path="v1_kv_",quantile="0.9"} 90' in lines
    assert 'consul_api_http{method="GET",path="v1_kv_",quantile="0.99"} 99' in lines
    assert 'consul_api_http_sum{method="GET",path="v1_kv_"} 5050' in lines
    assert 'consul_api_http_count{method="GET",path="v1_kv_"} 100' in lines
    # Declared series show from the start: a counter at 0, a summary with no values in its window.
    assert "consul_raft_state_leader 0" in lines and 'consul_raft_commitTime{quantile="0.5"} NaN' in lines
    assert "consul_autopilot_healthy NaN" in lines
    assert 'consul_odd{q="a\\"b\\\\c\\nd"} 2' in lines


def test_prometheus_leaves_out_what_the_retention_time_has_not_seen() -> None:
    m = Metrics(retention=30.0, now=T0)
    m.declare("counter", "raft.apply", "")
    m.counter("client.rpc").inc()
    m.rotate(T0 + 10)
    assert "consul_client_rpc 1" in m.prometheus(T0 + 39)
    text = m.prometheus(T0 + 41)
    assert "consul_client_rpc" not in text and "consul_raft_apply 0" in text
    m.counter("client.rpc").inc()  # updated again: back, counting on from where it was
    assert "consul_client_rpc 2" in m.prometheus(T0 + 41)


def test_quantile_window_ages_out() -> None:
    m = Metrics(retention=600.0, now=T0)
    s = m.sample("dns.domain_query")
    s.observe(5.0)
    s.observe_many(1.0, 3)
    assert (s.prometheus_count(), s.prometheus_sum()) == (4, 8.0)
    for _ in range(WINDOW_BUCKETS - 1):
        m.tick_window()
        assert not math.isnan(s.quantiles()[0])
    m.tick_window()
    assert all(math.isnan(q) for q in s.quantiles())
    assert s.prometheus_count() == 4  # _count and _sum are since the series appeared


def test_prefix_filter_longest_rule_wins() -> None:
    flt, bad = PrefixFilter.parse(["+consul.raft.apply", "-consul.raft", "", "consul.http"], default=True)
    assert bad == ["", "consul.http"]
    assert flt.allows("consul.raft.apply") and not flt.allows("consul.raft.commitTime") and flt.allows("consul.kvs")
    m = Metrics(prefix_filter=flt, now=T0)
    m.sample("raft.commitTime").observe(1.0)  # blocked: a no-op that never shows
    m.counter("raft.apply").inc()
    out = m.rotate(T0 + 10)
    assert out is not None and out["Samples"] == [] and [c["Name"] for c in out["Counters"]] == ["consul.raft.apply"]
    assert PrefixFilter.parse(["-consul"])[0].blocks_everything("consul")
    assert PrefixFilter.parse([], default=False)[0].blocks_everything("consul")
    assert not PrefixFilter.parse(["-consul", "+consul.raft"])[0].blocks_everything("consul")
    assert not PrefixFilter.parse(["-consul.http"])[0].blocks_everything("consul")


def test_a_disabled_registry_records_and_shows_nothing() -> None:
    m = Metrics(enabled=False, retention=60.0, now=T0)
    m.counter("raft.apply").inc()
    m.sample("api.http").observe(1.0)
    m.gauge("runtime.sys_bytes").set(1.0)
    assert m.prometheus(T0) == "" and m.rotate(T0 + 10) == {
        "Timestamp": "2023-11-14 22:13:20 +0000 UTC", "Gauges": [], "PrecisionGauges": [], "Points": [],
        "Counters": [], "Samples": []}  # fmt: skip


@pytest.mark.parametrize(("value", "text"), [
    (0.0, "0"), (1.0, "1"), (1.5, "1.5"), (123456.0, "123456"), (1234567.0, "1.234567e+06"), (1e6, "1e+06"),
    (0.0001, "0.0001"), (0.00001234, "1.234e-05"), (-2.5, "-2.5"), (math.nan, "NaN"), (math.inf, "+Inf"),
    (-math.inf, "-Inf"), (0.1 + 0.2, "0.30000000000000004"), (2.5e21, "2.5e+21"),
])  # fmt: skip
def test_go_float_matches_strconv_g(value: float, text: str) -> None:
    assert go_float(value) == text


def test_observations_are_folded_in_bulk_with_the_same_arithmetic_and_window() -> None:
    """``observe`` only queues; every read and every tick folds first, so what is shown is what was observed,
    and a busy bucket keeps its latest WINDOW_CAP values, as the per-call ring did."""
    from registry.metrics import WINDOW_CAP

    m = Metrics(now=T0, retention=60.0)
    s = m.sample("api.http", (("method", "GET"), ("path", "v1_kv_")))
    legacy = m.sample("http.GET.v1.kv._")
    s.mirrors = (legacy,)
    values = [float(i % 97) for i in range(3 * WINDOW_CAP)]
    for v in values:
        s.observe(v)
    assert s.pending and not legacy.pending  # nothing computed on the request path
    text = m.prometheus(T0 + 1)
    assert not s.pending
    for name in ("consul_api_http", "consul_http_GET_v1_kv__"):
        labels = '{method="GET",path="v1_kv_"}' if name == "consul_api_http" else ""
        assert f"{name}_count{labels} {len(values)}" in text
        assert f"{name}_sum{labels} {go_float(sum(values))}" in text
    assert sorted(s.cur) == sorted(values[-WINDOW_CAP:]) == sorted(legacy.cur)
    closed = m.rotate(T0 + 10)
    assert closed is not None
    by_name = {x["Name"]: x for x in closed["Samples"]}
    for name in ("consul.api.http", "consul.http.GET.v1.kv._"):
        got = by_name[name]
        assert (got["Count"], got["Min"], got["Max"]) == (len(values), 0, 96)
        mean = sum(values) / len(values)
        assert got["Mean"] == pytest.approx(mean)
    # Observed before a tick: folded into the bucket that ages, and the fresh bucket starts empty.
    s.observe(5.0)
    m.tick_window()
    assert s.window[s.slot] == [] and 5.0 in s.window[(s.slot - 1) % WINDOW_BUCKETS]
