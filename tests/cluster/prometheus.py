"""A real Prometheus (Debian's ``prometheus`` package) scraping a cluster's ``/v1/agent/metrics``.

The test (``test_cluster_prometheus.py``) and the demo share this: write the scrape config for the agents'
HTTP addresses, start ``prometheus`` on a free loopback port with its data in a temp dir, and ask its HTTP
API. ``make prometheus-demo`` (``python -m tests.cluster.prometheus``) starts three servers and a Prometheus
that scrapes them every second, prints where to look, and runs until Ctrl-C.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TELEMETRY = {"telemetry": {"prometheus_retention_time": "60s", "disable_hostname": True}}


def prometheus_binary() -> str | None:
    return shutil.which("prometheus") or (str(Path("/usr/bin/prometheus")) if Path("/usr/bin/prometheus").exists()
                                          else None)  # fmt: skip


def scrape_config(targets: Iterable[str], interval: str = "1s") -> str:
    """Prometheus' config: one job scraping each agent's ``/v1/agent/metrics?format=prometheus`` (as Consul's
    docs tell a Prometheus user to)."""
    return "\n".join([
        "global:",
        f"  scrape_interval: {interval}",
        f"  evaluation_interval: {interval}",
        "scrape_configs:",
        "  - job_name: proconsul",
        "    metrics_path: /v1/agent/metrics",
        "    params:",
        "      format: [prometheus]",
        "    static_configs:",
        f"      - targets: [{', '.join(repr(t) for t in targets)}]",
        "",
    ])  # fmt: skip


@dataclass
class Prometheus:
    proc: subprocess.Popen[bytes]
    url: str
    workdir: Path

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query through Prometheus' HTTP API: the result vector."""
        q = urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{q}", timeout=5) as resp:
            out = json.loads(resp.read())
        if out.get("status") != "success":
            raise ValueError(f"query {promql!r} failed: {out}")
        return list(out["data"]["result"])

    def scalar(self, promql: str) -> float | None:
        """The single value of a query that aggregates to one (None while it has none)."""
        result = self.query(promql)
        return float(result[0]["value"][1]) if len(result) == 1 else None

    def log(self) -> str:
        return (self.workdir / "prometheus.log").read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_prometheus(binary: str, targets: Iterable[str], workdir: Path, port: int, timeout: float = 60.0) -> Prometheus:
    """Start ``prometheus`` on 127.0.0.1:``port`` scraping ``targets`` every second; wait until it is ready."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(scrape_config(targets))
    log = (workdir / "prometheus.log").open("wb")
    proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip
    log.close()
    prom = Prometheus(proc, f"http://127.0.0.1:{port}", workdir)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {proc.returncode}:\n{prom.log()}")
        try:
            with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=2) as resp:
                if resp.status == 200:
                    return prom
        except OSError:
            pass
        if time.monotonic() > deadline:
            prom.stop()
            raise AssertionError(f"prometheus not ready after {timeout:g}s:\n{prom.log()}")
        time.sleep(0.2)


def wait_value(prom: Prometheus, promql: str, want: float, timeout: float = 60.0) -> float:
    """Poll a query until it equals ``want`` (returned); fail with the last value and Prometheus' log."""
    deadline = time.monotonic() + timeout
    last: float | None = None
    while True:
        try:
            last = prom.scalar(promql)
        except (OSError, ValueError):
            last = None
        if last == want:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{promql} is {last}, not {want}, after {timeout:g}s:\n{prom.log()}")
        time.sleep(0.5)


def demo() -> int:
    """Three servers and a Prometheus scraping them, until Ctrl-C."""
    from tests.cluster.harness import Cluster, free_port

    binary = prometheus_binary()
    if binary is None:
        print("prometheus is not installed: apt-get install prometheus (Debian's package)", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="proconsul-prometheus-demo-"))
    telemetry = workdir / "telemetry.json"
    telemetry.write_text(json.dumps(TELEMETRY))
    with Cluster(3, workdir / "cluster") as cluster:
        for s in cluster.servers:
            s.extra_args += ["-config-file", str(telemetry)]
        leader = cluster.start()
        prom = start_prometheus(binary, [s.http_addr for s in cluster.servers], workdir / "prometheus",
                                free_port("127.0.0.1"))  # fmt: skip
        try:
            wait_value(prom, 'count(up{job="proconsul"} == 1)', 3.0)
            print(f"servers: {', '.join(s.url for s in cluster.servers)} (leader {leader.name})")
            print(f"prometheus: {prom.url}/graph?g0.expr=consul_server_isLeader  (data in {workdir})")
            print("try: sum(consul_raft_state_leader), consul_raft_commitTime, consul_api_http_count; Ctrl-C stops")
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0
        finally:
            prom.stop()


if __name__ == "__main__":
    sys.exit(demo())
