"""Metrics over HTTP against a real dev agent: /v1/agent/metrics as JSON and in Prometheus' format (checked
by the real ``promtool`` when Debian's ``prometheus`` package is installed), the stream, and the
``telemetry`` config block."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from typing import Any

import aiohttp
import pytest

from registry.config import Config, ConfigError, apply_mapping
from registry.testing import RunningAgent, async_dev_agent


def test_telemetry_config_block() -> None:
    cfg = Config()
    apply_mapping(cfg, {"telemetry": {"prometheus_retention_time": "90s", "disable_hostname": True,
                                      "metrics_prefix": "pc", "prefix_filter": ["-pc.http"], "filter_default": False,
                                      "disable_compat_1.9": False, "statsd_address": "127.0.0.1:8125"}})  # fmt: skip
    t = cfg.telemetry
    assert (t.prometheus_retention_time, t.disable_hostname, t.metrics_prefix, t.prefix_filter, t.filter_default,
            t.disable_compat_1_9) == (90.0, True, "pc", ["-pc.http"], False, False)  # fmt: skip
    assert cfg.unknown_keys == ["telemetry.statsd_address"]  # a sink Proconsul does not have: reported
    apply_mapping(cfg, {"telemetry": {"disable_hostname": False}})  # a later file changes only what it sets
    assert cfg.telemetry.prometheus_retention_time == 90.0 and not cfg.telemetry.disable_hostname
    assert Config().telemetry.prometheus_retention_time == 0.0  # Consul's default: no Prometheus output
    for bad in ({"prometheus_retention_time": "soon"}, {"disable_hostname": "yes"}, {"metrics_prefix": 1},
                {"prefix_filter": "+consul"}, "telemetry"):  # fmt: skip
        with pytest.raises(ConfigError):
            apply_mapping(Config(), {"telemetry": bad})


# ---------------------------------------------------------------------- over HTTP


async def _get(url: str, **kw: Any) -> tuple[int, bytes, Any]:
    async with aiohttp.ClientSession() as session, session.get(url, **kw) as resp:
        return resp.status, await resp.read(), resp.headers


def _flush(running: RunningAgent) -> None:
    """Close the current interval now instead of waiting for the 10 s boundary."""
    running.agent.telemetry.advance(running.agent.telemetry.clock() + 10)


async def test_json_answer_counts_requests_under_consuls_names() -> None:
    async with async_dev_agent() as running:
        for _ in range(3):
            assert (await _get(running.url + "/v1/agent/self"))[0] == 200
        await _get(running.url + "/v1/kv/a?recurse")
        _flush(running)
        status, body, headers = await _get(running.url + "/v1/agent/metrics")
        assert status == 200 and headers["Content-Type"] == "application/json"
        out = json.loads(body)
        samples = {(s["Name"], tuple(sorted(s["Labels"].items()))): s for s in out["Samples"]}
        self_get = samples[("consul.api.http", (("method", "GET"), ("path", "v1_agent_self")))]
        assert self_get["Count"] == 3 and self_get["Min"] <= self_get["Mean"] <= self_get["Max"]
        assert ("consul.api.http", (("method", "GET"), ("path", "v1_kv_"))) in samples
        counters = {c["Name"]: c for c in out["Counters"]}
        assert counters["consul.raft.apply"]["Count"] >= 1  # the agent's own registration
        gauges = {g["Name"].split(".", 2)[-1] for g in out["Gauges"]}
        assert {"runtime.sys_bytes", "runtime.num_goroutines", "server.isLeader", "autopilot.healthy"} <= gauges
        # -dev pretty-prints JSON, as Consul's dev mode does.
        assert body.startswith(b"{\n    ")


async def test_prometheus_needs_a_retention_time_as_in_consul() -> None:
    async with async_dev_agent() as running:
        status, body, headers = await _get(running.url + "/v1/agent/metrics?format=prometheus")
        assert status == 415 and body == b"Prometheus is not enabled since its retention time is not positive"
        assert headers["Content-Type"].startswith("text/plain")


async def test_prometheus_text_and_promtool(tmp_path) -> None:  # noqa: ANN001
    async with async_dev_agent(telemetry={"prometheus_retention_time": "60s", "disable_hostname": True}) as running:
        await _get(running.url + "/v1/catalog/services")
        _flush(running)
        status, body, headers = await _get(running.url + "/v1/agent/metrics?format=prometheus")
        assert status == 200 and headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = body.decode()
        lines = text.splitlines()
        assert "consul_raft_state_leader 1" in lines and "consul_server_isLeader 1" in lines
        assert "consul_autopilot_healthy 1" in lines and "consul_autopilot_failure_tolerance 0" in lines
        assert re.search(r'^consul_api_http_count\{method="GET",path="v1_catalog_services"\} 1$', text, re.M)
        assert re.search(r"^consul_mesh_active_root_ca_expiry \d", text, re.M)
        # Consul's content negotiation: an OpenMetrics or text 0.4.0 Accept header asks for the same.
        for accept in ("application/openmetrics-text; version=1.0.0", "text/plain;version=0.4.0"):
            status, body2, headers = await _get(running.url + "/v1/agent/metrics", headers={"Accept": accept})
            assert status == 200 and body2.startswith(b"# HELP")
        status, gz, headers = await _get(running.url + "/v1/agent/metrics?format=prometheus",
                                         headers={"Accept-Encoding": "gzip"}, auto_decompress=False)  # fmt: skip
        assert headers.get("Content-Encoding") == "gzip"
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus; .ci/run installs it)")
    out = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=60)
    # promtool parses the exposition (exit 1: it could not), then lints the names (exit 3: findings). Consul's
    # own names draw lint findings -- camelCase (commitTime), counters without "_total", "_ns" -- and those
    # are all it may find: Prometheus scrapes Consul's names as they are.
    assert out.returncode in (0, 3), out.stderr.decode()
    findings = [ln for ln in (out.stdout + out.stderr).decode().splitlines() if ln.strip()]
    consuls_own = ('counter metrics should have "_total" suffix', "should be written in 'snake_case' not 'camelCase'")
    for f in findings:
        assert any(k in f for k in consuls_own) or f.startswith("consul_runtime_total_gc_pause_ns "), f


async def test_stream_writes_each_interval_as_it_closes() -> None:
    async with async_dev_agent() as running, aiohttp.ClientSession() as session:
        async with session.get(running.url + "/v1/agent/metrics/stream") as resp:
            assert resp.status == 200
            await _get(running.url + "/v1/agent/self")
            _flush(running)
            first = json.loads(await asyncio.wait_for(resp.content.readuntil(b"\n}\n"), 10))
            assert set(first) == {"Timestamp", "Gauges", "PrecisionGauges", "Points", "Counters", "Samples"}
            assert any(s["Labels"].get("path") == "v1_agent_self" for s in first["Samples"])


async def test_metrics_off_when_the_filter_blocks_everything() -> None:
    async with async_dev_agent(telemetry={"prefix_filter": ["-consul"], "prometheus_retention_time": "1m"}) as running:
        assert not running.agent.metrics.enabled and not running.agent.api.timing  # type: ignore[union-attr]
        await _get(running.url + "/v1/agent/self")
        _flush(running)
        _, body, _ = await _get(running.url + "/v1/agent/metrics")
        out = json.loads(body)
        assert out["Samples"] == [] and out["Counters"] == [] and out["Gauges"] == []
        assert (await _get(running.url + "/v1/agent/metrics?format=prometheus"))[1] == b""


async def test_legacy_http_names_with_disable_compat_false() -> None:
    async with async_dev_agent(telemetry={"disable_compat_1.9": False}) as running:
        await _get(running.url + "/v1/kv/x")
        _flush(running)
        out = json.loads((await _get(running.url + "/v1/agent/metrics"))[1])
        names = {s["Name"] for s in out["Samples"]}
        assert {"consul.http.GET.v1.kv._", "consul.api.http"} <= names


async def test_gossip_counters_under_memberlist_and_serf_names() -> None:
    """The pool's counters in Consul's names: bytes over UDP, members joining, the health score, and the
    codec's refusals by reason (an unencrypted member knocking at an encrypted pool)."""
    from registry.gossip import Address
    from registry.gossip.driver import GossipDriver
    from registry.gossip.keyring import Keyring, decode_key
    from registry.gossip.security import EncryptedCodec
    from registry.testing.agent import GOSSIP_KEY

    async with async_dev_agent(encrypt=GOSSIP_KEY,
                               telemetry={"prometheus_retention_time": "60s", "disable_hostname": True}) as running:  # fmt: skip
        lan = running.agent.lan
        assert lan is not None and lan.address is not None
        plain = GossipDriver("plain", bind=Address("127.0.0.1", 0))
        await plain.start()
        try:
            assert await plain.join([lan.address], timeout=2.0) == 0  # its push-pull is refused
        finally:
            await plain.stop()
        member = GossipDriver("keyed", bind=Address("127.0.0.1", 0),
                              codec=EncryptedCodec(Keyring([decode_key(GOSSIP_KEY)])))  # fmt: skip
        await member.start()
        try:
            assert await member.join([lan.address]) == 1
            for _ in range(100):
                if lan.driver.stats["bytes_in"] and lan.driver.stats["bytes_out"]:
                    break
                await asyncio.sleep(0.05)
        finally:
            await member.stop()
        running.agent.telemetry.collect()
        _flush(running)
        status, body, _ = await _get(running.url + "/v1/agent/metrics?format=prometheus")
        text = body.decode()
        assert status == 200
        assert re.search(r'^consul_memberlist_codec_dropped\{reason="plaintext_refused"\} [1-9]', text, re.M), text
        assert re.search(r"^consul_memberlist_streams_dropped [1-9]", text, re.M)
        assert re.search(r"^consul_memberlist_tcp_accept [1-9]", text, re.M)
        assert "consul_memberlist_health_score 0" in text.splitlines()
        assert "consul_serf_members 2" in text.splitlines()
        assert re.search(r"^consul_serf_member_join 2$", text, re.M)  # itself, as Serf reports it, and "keyed"
        assert re.search(r"^consul_memberlist_udp_received [1-9]", text, re.M)
        assert re.search(r"^consul_memberlist_udp_sent [1-9]", text, re.M)


async def test_member_counts_follow_the_catalog_and_are_not_recounted_while_it_stands_still() -> None:
    """consul.members.servers / .clients: catalog nodes with a serfHealth check, split by the consul service.
    The walk over every node is redone only when the catalog's nodes, services or checks changed (with
    10,000 nodes it is a 10 ms burst on every server at the same second)."""
    async with async_dev_agent() as running:
        agent = running.agent
        gauge = lambda name: agent.metrics.gauge(name, (), "").value  # noqa: E731
        agent._collect_members()
        assert (gauge("members.servers"), gauge("members.clients")) == (1.0, 0.0)  # the dev server itself
        for name in ("web-1", "web-2"):
            body = {"Node": name, "Address": "10.0.0.1", "Check": {"CheckID": "serfHealth", "Name": "Serf Health Status",
                                                                  "Status": "passing"}}  # fmt: skip
            async with aiohttp.ClientSession() as session, session.put(running.url + "/v1/catalog/register",
                                                                      json=body) as resp:  # fmt: skip
                assert resp.status == 200
        async with aiohttp.ClientSession() as session, session.put(
                running.url + "/v1/catalog/register", json={"Node": "no-agent", "Address": "10.0.0.9"}) as resp:
            assert resp.status == 200  # a node without serfHealth (an external one) is no member
        agent._collect_members()
        assert (gauge("members.servers"), gauge("members.clients")) == (1.0, 2.0)
        walks = 0
        nodes = agent.store.nodes

        class Counting(dict):  # type: ignore[type-arg]
            def __iter__(self):  # noqa: ANN204
                nonlocal walks
                walks += 1
                return super().__iter__()

        agent.store.nodes = Counting(nodes)
        try:
            for _ in range(3):
                agent._collect_members()
            assert walks == 0 and gauge("members.clients") == 2.0
            async with aiohttp.ClientSession() as session, session.put(running.url + "/v1/kv/unrelated",
                                                                      data=b"x") as resp:  # fmt: skip
                assert resp.status == 200
            agent._collect_members()
            assert walks == 0  # a KV write is no membership change
        finally:
            agent.store.nodes = nodes
        async with aiohttp.ClientSession() as session, session.put(running.url + "/v1/catalog/deregister",
                                                                  json={"Node": "web-2"}) as resp:  # fmt: skip
            assert resp.status == 200
        agent._collect_members()
        assert gauge("members.clients") == 1.0
