"""Metrics: what instrumentation costs HTTP discovery, and what a scrape costs with 10,000 services.

1. Throughput, metrics on against off, in the same run: two ``proconsul agent -dev`` processes pinned to the
   same core, one with telemetry as a Prometheus user runs it (``prometheus_retention_time = "60s"``,
   ``disable_hostname = true``: every request timed, gauges read each second), one with everything filtered
   out (``prefix_filter = ["-consul"]``: Proconsul then records nothing and times no request). Each gets the
   load of ``bench.http_discovery`` (``GET /v1/health/service/web?passing``, 10 instances, wrk with 64
   connections on the other core), alternating A/B/A/B; the verdict is the ratio of the medians (requests
   per CPU-second when other work competed). Target: on >= 0.97x off (instrumentation costs <= 3%).
2. Scrape cost: one agent with 10,000 services registered (1,000 nodes, 10 each, through
   /v1/catalog/register), scraped ``--scrapes`` times in a row (``?format=prometheus``, gzip, as
   Prometheus asks) and as JSON; the agent's CPU time per scrape, less what it uses idle over the same
   time. Target: < 5 ms of agent CPU per Prometheus scrape.

    python -m bench.metrics [--duration 10] [--warmup 3] [--rounds 2] [--scrapes 200] [--services 10000]
                            [--docs] [--strict]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench import _util
from bench.http_discovery import INSTANCES, LOAD_CPU, PATH, QUERY, SERVER_CPU, WrkResult, measure

TARGET_RATIO = 0.97
TARGET_SCRAPE_MS = 5.0
ON = {"telemetry": {"prometheus_retention_time": "60s", "disable_hostname": True}}
OFF = {"telemetry": {"prefix_filter": ["-consul"]}}


def _config(data: dict[str, object]) -> str:
    with tempfile.NamedTemporaryFile("w", prefix="bench-metrics-", suffix=".json", delete=False) as f:
        json.dump(data, f)
    return f.name


def throughput(args: argparse.Namespace) -> tuple[list[tuple[str, str, str, str]], list[str]]:
    wrk = _util.ensure_tool("wrk", "wrk")
    files = [_config(ON), _config(OFF)]
    procs: list[_util.Proc] = []
    try:
        on = _util.spawn_agent(SERVER_CPU, config_files=[files[0]], name="proconsul-metrics-on")
        procs.append(on)
        off = _util.spawn_agent(SERVER_CPU, config_files=[files[1]], name="proconsul-metrics-off")
        procs.append(off)
        for proc in (on, off):
            for i in range(INSTANCES):
                _util.register_instance(proc.url, "web", i)
            body = _util.http("GET", proc.url + PATH + QUERY)[2]
            if body.count(b'"Service": "web"') != INSTANCES:
                raise SystemExit(f"unexpected discovery answer from {proc.name}: {body[:300]!r}")
        if _util.http("GET", on.url + "/v1/agent/metrics?format=prometheus")[0] != 200:
            raise SystemExit("the metrics-on agent does not serve Prometheus")
        print(f"# pinned: both agents cpu {on.affinity()}, wrk cpu {LOAD_CPU}", flush=True)
        results: dict[str, list[WrkResult]] = {"on": [], "off": []}
        for r in range(args.rounds):
            for name, proc in (("off", off), ("on", on)):
                res = measure(wrk, proc, args.warmup, args.duration)
                results[name].append(res)
                print(f"  round {r + 1} metrics {name:<3} {res.rps:>9,.0f} req/s  p99 {res.p99_ms:6.2f} ms  "
                      f"server got {res.server_share:.0%} of its core ({res.per_cpu_second:,.0f} per CPU-s)",
                      flush=True)  # fmt: skip
        counted = json.loads(_util.http("GET", on.url + "/v1/agent/metrics")[2])
        timed = sum(s["Count"] for s in counted["Samples"] if s["Labels"].get("path") == "v1_health_service_")
    finally:
        for p in procs:
            p.stop()
        for f in files:
            Path(f).unlink(missing_ok=True)

    def med(name: str, attr: str) -> float:
        return statistics.median(getattr(x, attr) for x in results[name])

    ratio = med("on", "rps") / med("off", "rps")
    cpu_ratio = med("on", "per_cpu_second") / med("off", "per_cpu_second")
    contended = any(x.contended for rs in results.values() for x in rs)
    basis = cpu_ratio if contended else ratio
    rows = [
        ("HTTP discovery, metrics on / off, same run",
         f"{med('on', 'rps'):,.0f} / {med('off', 'rps'):,.0f} req/s = {ratio:.3f}x (per CPU-second {cpu_ratio:.3f}x); "
         f"p99 {med('on', 'p99_ms'):.2f} / {med('off', 'p99_ms'):.2f} ms",
         f">= {TARGET_RATIO}x", _util.verdict(basis >= TARGET_RATIO)),
    ]  # fmt: skip
    notes = [f"the metrics-on agent timed {timed:,} discovery requests in its last 10 s interval"]
    if contended:
        notes.append("other work competed for the cores in at least one run: the verdict uses requests per CPU-second")
    return rows, notes


def _register_many(url: str, services: int) -> None:
    per_node = 10
    for n in range(services // per_node):
        node = f"node-{n}"
        for k in range(per_node):
            sid = f"svc-{n}-{k}"
            body = {"Node": node, "Address": f"10.{n // 250 % 250}.{n % 250}.{k + 1}",
                    "Service": {"ID": sid, "Service": f"svc-{n % 500}", "Port": 8000 + k},
                    "Check": {"CheckID": f"service:{sid}", "Name": "alive", "Status": "passing", "ServiceID": sid}}  # fmt: skip
            status, _, out = _util.http("PUT", url + "/v1/catalog/register", body)
            if status != 200:
                raise SystemExit(f"register {sid} failed: {status} {out[:200]!r}")


def _scrape(url: str, gzip: bool) -> int:
    req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"} if gzip else {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return len(resp.read())


def scrape_cost(args: argparse.Namespace) -> tuple[list[tuple[str, str, str, str]], list[str]]:
    cfg = _config(ON)
    try:
        agent = _util.spawn_agent(SERVER_CPU, config_files=[cfg], name="proconsul-metrics-scrape")
    finally:
        Path(cfg).unlink(missing_ok=True)
    try:
        started = time.monotonic()
        _register_many(agent.url, args.services)
        print(f"# registered {args.services:,} services in {time.monotonic() - started:.1f} s", flush=True)
        _util.wait_idle(agent)
        # Idle CPU over a fixed window (the once-a-second gauges and the interval clock), for the baseline.
        cpu0, t0 = agent.cpu_seconds(), time.monotonic()
        time.sleep(5.0)
        idle_per_s = (agent.cpu_seconds() - cpu0) / (time.monotonic() - t0)
        out: dict[str, tuple[float, int]] = {}
        for label, path, gz in (("prometheus", "/v1/agent/metrics?format=prometheus", True),
                                ("json", "/v1/agent/metrics", False)):  # fmt: skip
            size = _scrape(agent.url + path, gz)  # warm
            cpu0, t0 = agent.cpu_seconds(), time.monotonic()
            for _ in range(args.scrapes):
                _scrape(agent.url + path, gz)
            elapsed = time.monotonic() - t0
            used = agent.cpu_seconds() - cpu0 - idle_per_s * elapsed
            out[label] = (used / args.scrapes * 1000.0, size)
            print(f"  {label}: {out[label][0]:.2f} ms of agent CPU per scrape ({size:,} bytes)", flush=True)
    finally:
        agent.stop()
    prom_ms, prom_size = out["prometheus"]
    json_ms, json_size = out["json"]
    rows = [
        (f"Prometheus scrape with {args.services:,} services registered (agent CPU per scrape)",
         f"{prom_ms:.2f} ms ({prom_size:,} bytes gzipped)", f"< {TARGET_SCRAPE_MS:g} ms",
         _util.verdict(prom_ms < TARGET_SCRAPE_MS)),
        ("JSON /v1/agent/metrics, same agent", f"{json_ms:.2f} ms ({json_size:,} bytes)", "-", "-"),
    ]  # fmt: skip
    notes = [f"CPU time from /proc/<pid>/stat over {args.scrapes} back-to-back scrapes, less the agent's idle "
             f"CPU over the same time ({idle_per_s * 1000:.1f} ms/s)"]  # fmt: skip
    return rows, notes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per measured wrk run")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of unmeasured load before each run")
    ap.add_argument("--rounds", type=int, default=2, help="A/B alternations")
    ap.add_argument("--scrapes", type=int, default=200, help="scrapes timed per format")
    ap.add_argument("--services", type=int, default=10_000, help="services registered for the scrape")
    ap.add_argument("--docs", action="store_true", help="write the result into docs/benchmarks.md")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args(argv)
    _util.wait_for_quiet_machine()
    mach = _util.machine()
    print(f"# {_util.machine_line(mach)}", flush=True)
    rows, notes = throughput(args)
    more_rows, more_notes = scrape_cost(args)
    rows += more_rows
    notes += more_notes
    table = _util.markdown_table(rows)
    print()
    print(table)
    for n in notes:
        print(f"# {n}")
    if args.docs:
        setup = (f"`proconsul agent -dev` with `telemetry {{ prometheus_retention_time = \"60s\", disable_hostname = "
                 f"true }}` against the same agent with `prefix_filter = [\"-consul\"]` (nothing recorded), both "
                 f"pinned to core {SERVER_CPU}, wrk on core {LOAD_CPU}, {args.rounds} A/B rounds of {args.duration:g} s; "
                 f"then one agent with {args.services:,} services scraped {args.scrapes} times per format.")  # fmt: skip
        _util.update_docs_section("Metrics", f"{_util.machine_line(mach)}\n\n{setup}\n\n{table}\n\n"
                                  + "".join(f"- {n}\n" for n in notes))  # fmt: skip
        print(f"# wrote the Metrics section of {_util.DOCS}")
    ok = all(r[3] != _util.verdict(False) for r in rows)
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
