"""Connect proxy benchmark, HTTP mode: a pair of Proconsul sidecars vs a pair of HAProxy instances, same run.

    .venv/bin/python -m bench.proxy_http [--seconds 10] [--connections 64] [--no-docs]

Path measured, for both peers: load generator -> client side (plain HTTP/1.1 keep-alive on loopback) ->
mutual TLS (HTTP/1.1 keep-alive) -> server side -> a local app answering ``200 ok`` (an HAProxy
``http-request return``, so the app is never the bottleneck). Proconsul: ``proconsul connect proxy``
for ``web`` (upstream ``db``) and ``db``, with ``service-defaults`` ``Protocol = "http"`` for ``db`` so
both run in HTTP mode (routing, L7 intentions, per-request balancing); certificates from a real
``proconsul agent -dev``. HAProxy: ``mode http`` on both sides, ``ssl crt ... ca-file ... verify
required`` on both, the same EC P-256 leaves and roots; it does not check the SPIFFE URI SAN nor
evaluate intentions.

Each pair's two proxy processes are pinned to CPU 0; the load generator (``wrk``, 64 keep-alive
connections), the app and the agent to CPU 1. Figures: peak requests/s (``wrk``), and the p50 latency at
half of each pair's own peak rate minus the p50 of the same paced load sent to the app directly (the
latency the pair adds), measured with a paced client on 16 connections.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._util import (
    BIN,
    DATE,
    Proc,
    ensure_tool,
    free_port,
    http,
    machine,
    percentile,
    spawn_agent,
    taskset,
    wait_for_quiet_machine,
    write_section,
)
from bench.proxy import _wait_port

SECTION = "Connect proxy, HTTP mode"
PROXY_CPU, LOAD_CPU = 0, 1
PACED_CONNECTIONS = 16
REQUEST = b"GET / HTTP/1.1\r\nHost: db\r\n\r\n"


def _spawn(name: str, argv: list[str], cpu: int) -> Proc:
    log = open(f"/tmp/bench-proxy-http-{name}.log", "wb")  # noqa: SIM115 - handed to the child
    return Proc(subprocess.Popen([*taskset(cpu), *argv], stdout=log, stderr=subprocess.STDOUT), 0, name)


def _haproxy_conf(body: str) -> str:
    return ("global\n  nbthread 1\n  maxconn 4096\n  tune.ssl.default-dh-param 2048\n"
            "defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n"
            "  option http-keep-alive\n" + body)  # fmt: skip


def app_haproxy(haproxy: str, work: Path) -> tuple[Proc, int]:
    port = free_port()
    conf = work / "app.cfg"
    conf.write_text(_haproxy_conf(f"frontend app\n  bind 127.0.0.1:{port}\n"
                                  '  http-request return status 200 content-type text/plain string "ok"\n'))  # fmt: skip
    proc = _spawn("app", [haproxy, "-f", str(conf)], LOAD_CPU)
    _wait_port(port, proc)
    return proc, port


def haproxy_pair(haproxy: str, agent: Proc, app_port: int, work: Path) -> tuple[list[Proc], int]:
    import json

    roots = json.loads(http("GET", agent.url + "/v1/agent/connect/ca/roots")[2])
    (work / "roots.pem").write_text("".join(r["RootCert"] for r in roots["Roots"]))
    for svc in ("web", "db"):
        leaf = json.loads(http("GET", agent.url + f"/v1/agent/connect/ca/leaf/{svc}")[2])
        (work / f"{svc}.pem").write_text(leaf["CertPEM"] + leaf["PrivateKeyPEM"])
        os.chmod(work / f"{svc}.pem", 0o600)
    public, upstream = free_port(), free_port()
    (work / "db.cfg").write_text(_haproxy_conf(
        f"frontend db\n  bind 127.0.0.1:{public} ssl crt {work}/db.pem ca-file {work}/roots.pem verify required\n"
        f"  default_backend app\nbackend app\n  http-reuse always\n  server app 127.0.0.1:{app_port}\n"))  # fmt: skip
    (work / "web.cfg").write_text(_haproxy_conf(
        f"frontend web\n  bind 127.0.0.1:{upstream}\n  default_backend db\nbackend db\n  http-reuse always\n"
        f"  server db 127.0.0.1:{public} ssl crt {work}/web.pem ca-file {work}/roots.pem verify required\n"))  # fmt: skip
    server = _spawn("haproxy-db", [haproxy, "-f", str(work / "db.cfg")], PROXY_CPU)
    client = _spawn("haproxy-web", [haproxy, "-f", str(work / "web.cfg")], PROXY_CPU)
    _wait_port(public, server)
    _wait_port(upstream, client)
    _ready(upstream)
    return [client, server], upstream


def proconsul_pair(agent: Proc, app_port: int) -> tuple[list[Proc], int]:
    status, _, out = http("PUT", agent.url + "/v1/config", {"Kind": "service-defaults", "Name": "db", "Protocol": "http"})
    if status != 200:
        raise SystemExit(f"service-defaults write failed: {out!r}")
    public, upstream = free_port(), free_port()
    status, _, out = http("PUT", agent.url + "/v1/agent/service/register", {
        "Kind": "connect-proxy", "ID": "db-proxy", "Name": "db-sidecar-proxy", "Address": "127.0.0.1", "Port": public,
        "Proxy": {"DestinationServiceName": "db", "LocalServicePort": app_port},
        "Check": {"TTL": "10m", "Status": "passing"}})  # fmt: skip
    if status != 200:
        raise SystemExit(f"register failed: {out!r}")
    exe = str(BIN / "proconsul")
    common = ["-http-addr", f"127.0.0.1:{agent.port}", "-log-level", "warn"]
    server = _spawn("proconsul-db", [exe, "connect", "proxy", "-service", "db", "-service-addr",
                                     f"127.0.0.1:{app_port}", "-listen", f"127.0.0.1:{public}", *common], PROXY_CPU)  # fmt: skip
    client = _spawn("proconsul-web", [exe, "connect", "proxy", "-service", "web", "-upstream", f"db:{upstream}",
                                      *common], PROXY_CPU)  # fmt: skip
    _wait_port(public, server)
    _wait_port(upstream, client)
    _ready(upstream)
    time.sleep(1.0)  # both sides have followed their chains: new connections are in HTTP mode
    return [client, server], upstream


def _ready(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            status, _, body = http("GET", f"http://127.0.0.1:{port}/", timeout=2)
            if status == 200:
                return
            last = f"{status} {body!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise SystemExit(f"nothing gets through port {port}: {last}")


def peak(wrk: str, port: int, seconds: float, connections: int) -> float:
    out = subprocess.run([*taskset(LOAD_CPU), wrk, "-t1", f"-c{connections}", f"-d{seconds:g}s",
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True, check=True).stdout  # fmt: skip
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: .*", out)
    if errors:
        print(f"# wrk reported: {errors.group(0)}", flush=True)
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not found:
        raise SystemExit(f"wrk printed no rate:\n{out}")
    return float(found.group(1))


async def _paced(port: int, rate: float, seconds: float) -> list[float]:
    """``rate`` requests/s spread over PACED_CONNECTIONS keep-alive connections; each latency in ms."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    interval = PACED_CONNECTIONS / rate
    end = loop.time() + seconds

    async def one(offset: float) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        due = loop.time() + offset
        try:
            while due < end:
                await asyncio.sleep(max(0.0, due - loop.time()))
                t0 = time.perf_counter()
                writer.write(REQUEST)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
                await reader.readexactly(length)
                latencies.append((time.perf_counter() - t0) * 1000)
                due += interval
        finally:
            writer.close()

    await asyncio.gather(*(one(i * interval / PACED_CONNECTIONS) for i in range(PACED_CONNECTIONS)))
    return latencies


def paced_p50(port: int, rate: float, seconds: float) -> float:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {LOAD_CPU})
    try:
        import uvloop

        lat = uvloop.run(_paced(port, rate, seconds))
    except ImportError:  # pragma: no cover
        lat = asyncio.run(_paced(port, rate, seconds))
    return percentile(lat, 50)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--no-docs", action="store_true")
    args = ap.parse_args()
    haproxy = ensure_tool("haproxy", "haproxy")
    wrk = ensure_tool("wrk", "wrk")
    version = subprocess.run([haproxy, "-v"], capture_output=True, text=True).stdout.splitlines()[:1]
    busy = wait_for_quiet_machine(0.25, 60)
    m = machine()
    print(f"# {m['nproc']} CPUs, {m['cpu']}, load {m['load']}, busy {busy:.0%}; {version}", flush=True)
    agent = spawn_agent(LOAD_CPU)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        app, app_port = app_haproxy(haproxy, work)
        try:
            peak(wrk, app_port, 1, args.connections)  # warm-up
            for name in ("haproxy", "proconsul"):
                procs, port = haproxy_pair(haproxy, agent, app_port, work) if name == "haproxy" else \
                    proconsul_pair(agent, app_port)  # fmt: skip
                try:
                    peak(wrk, port, min(2.0, args.seconds), args.connections)  # warm-up
                    cpu0 = sum(p.cpu_seconds() for p in procs)
                    rps = peak(wrk, port, args.seconds, args.connections)
                    cpu = sum(p.cpu_seconds() for p in procs) - cpu0
                    half = rps / 2
                    p50 = paced_p50(port, half, args.seconds)
                    base = paced_p50(app_port, half, args.seconds)
                    results[name] = {"rps": rps, "p50": p50, "added": p50 - base, "half": half,
                                     "cpu_per_10k": cpu / max(1.0, rps * args.seconds) * 10_000}  # fmt: skip
                    r = results[name]
                    print(f"{name:10s} {rps:9.0f} req/s  p50 at {half:.0f}/s {p50:.3f} ms (added {r['added']:.3f} ms)"
                          f"  {r['cpu_per_10k']:.2f} CPU-s per 10k requests", flush=True)  # fmt: skip
                finally:
                    for p in procs:
                        p.stop()
        finally:
            app.stop()
            agent.stop()
    p, h = results["proconsul"], results["haproxy"]
    ratio = p["rps"] / h["rps"]
    print(f"ratio proconsul/haproxy: requests/s {ratio:.2f}x (target >= 0.5x); added p50 at half peak "
          f"{p['added']:.3f} ms (target <= 1 ms)", flush=True)  # fmt: skip
    if not args.no_docs:
        rows = "\n".join(f"| {n} | {r['rps']:.0f} | {r['half']:.0f} | {r['p50']:.3f} | {r['added']:.3f} | "
                         f"{r['cpu_per_10k']:.2f} |" for n, r in (("Proconsul sidecars", p), ("HAProxy", h)))  # fmt: skip
        body = f"""Date {DATE}; {m['nproc']} cores, {m['cpu']}; load {m['load']}; {m['code']}; {version[0] if version else 'haproxy'}.
`python -m bench.proxy_http --seconds {args.seconds:g} --connections {args.connections}`.

Path: wrk ({args.connections} keep-alive connections) -> client-side proxy (HTTP/1.1 on loopback) -> mutual TLS
-> server-side proxy -> app (`200 ok`), same EC P-256 leaves and roots from a `proconsul agent -dev`. Both
proxies of a pair pinned to CPU 0; wrk, the app and the agent to CPU 1. Latency: p50 of a paced load at half
the pair's peak on {PACED_CONNECTIONS} connections, minus the p50 of the same load sent to the app directly.

| pair | peak requests/s | paced at /s | p50 ms | added p50 ms | CPU-s per 10k requests |
| --- | --- | --- | --- | --- | --- |
{rows}

Ratio Proconsul/HAProxy: requests/s **{ratio:.2f}x** (target >= 0.5x); added p50 at half peak
**{p['added']:.3f} ms** (target <= 1 ms).
"""
        write_section(SECTION, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
