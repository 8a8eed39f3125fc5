"""Connect proxy benchmark: a pair of Proconsul sidecars vs a pair of stunnel instances, same run.

    .venv/bin/python -m bench.proxy [--megabytes 1024] [--streams 4] [--seconds 5] [--workers 32]
                                    [--stunnel-resume] [--no-docs]

Path measured, for both peers: load generator -> client side (plain TCP on loopback) -> mutual TLS ->
server side -> a local sink app. Proconsul: ``proconsul connect proxy -service web -upstream db:P`` and
``proconsul connect proxy -service db -service-addr <sink> -listen <P2>``, certificates and intentions
from a real ``proconsul agent -dev``. stunnel: ``client = yes`` on one side, ``verifyChain``+
``requireCert`` on both, with the same EC P-256 leaves (web and db) and the same roots from the agent.

TLS session resumption: the sidecars resume sessions as Envoy does (the web side keeps one session per
db instance, the db side issues one TLS 1.3 ticket per handshake; ``connect_proxy.tls``), so after the
first connection they skip the certificate exchange and its signature checks. ``--stunnel-resume``
lets stunnel's client do the same (its default): equal work, the comparison the new-connections target
is about. Without it stunnel's client gets ``sessionResume = no`` and does a full handshake on every
connection while the sidecars resume: not equal work (the sidecars do less), kept to compare with the
figures from before the sidecars resumed. Either way the sidecars still do per connection what stunnel
cannot: the server side parses the client's SPIFFE URI and decides the connection against the
intentions it follows (in process), both sides check the peer certificate's NotAfter (a resumed
session carries the certificate of its first handshake), the client side checks the server's URI SAN.

Both proxy processes of a pair are pinned to CPU 0; the load generator, the sink and the agent to
CPU 1. Figures: throughput (MB/s of payload, ``--streams`` connections each sending its share of
``--megabytes``; the sink acknowledges every byte), new connections per second (``--workers``
concurrent clients, each connection sends 9 bytes and waits for a 1-byte answer; ``--rounds`` slices of
``--seconds`` per pair, alternating between the pairs, both pairs up all along; the median slice), and
CPU seconds of the two proxy processes per GB carried and per 1,000 connections.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench._util import (
    BIN,
    DATE,
    Proc,
    ensure_tool,
    free_port,
    http,
    machine,
    spawn_agent,
    taskset,
    wait_for_quiet_machine,
    write_section,
)

SECTION = "Connect proxy"
PROXY_CPU, LOAD_CPU = 0, 1
CHUNK = 256 * 1024


# ---------------------------------------------------------------------- the sink app (a subprocess)


def run_sink(port: int) -> None:
    """Each connection: an 8-byte big-endian length, then that many bytes; answers b"k" once all arrived."""
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run

    class Sink(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t = transport
            self.head = b""
            self.left = -1

        def data_received(self, data: bytes) -> None:
            if self.left < 0:
                self.head += data
                if len(self.head) < 8:
                    return
                self.left = struct.unpack(">Q", self.head[:8])[0]
                data = self.head[8:]
            self.left -= len(data)
            if self.left == 0:
                self.t.write(b"k")  # type: ignore[attr-defined]

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Sink, "127.0.0.1", port, backlog=1024)
        await server.serve_forever()

    runner(main())


# ---------------------------------------------------------------------- load


def _stream(port: int, nbytes: int, errors: list[str]) -> None:
    buf = os.urandom(CHUNK)
    try:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(struct.pack(">Q", nbytes))
            left = nbytes
            while left:
                n = min(left, CHUNK)
                s.sendall(buf[:n])
                left -= n
            if s.recv(1) != b"k":
                errors.append("no acknowledgement")
    except OSError as exc:
        errors.append(str(exc))


def throughput(port: int, total: int, streams: int) -> tuple[float, list[str]]:
    errors: list[str] = []
    per = total // streams
    threads = [threading.Thread(target=_stream, args=(port, per, errors)) for _ in range(streams)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return per * streams / (time.perf_counter() - t0), errors


async def _connections(port: int, seconds: float, workers: int) -> tuple[int, int]:
    done = failed = 0
    deadline = time.perf_counter() + seconds
    msg = struct.pack(">Q", 1) + b"x"

    async def worker() -> None:
        nonlocal done, failed
        while time.perf_counter() < deadline:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(msg)
                ok = await asyncio.wait_for(reader.readexactly(1), 10) == b"k"
                writer.close()
                done += ok
                failed += not ok
            except (OSError, asyncio.IncompleteReadError, TimeoutError):
                failed += 1

    await asyncio.gather(*(worker() for _ in range(workers)))
    return done, failed


def connections_per_second(port: int, seconds: float, workers: int) -> tuple[float, int]:
    import uvloop

    t0 = time.perf_counter()
    done, failed = uvloop.run(_connections(port, seconds, workers))
    return done / (time.perf_counter() - t0), failed


# ---------------------------------------------------------------------- the two pairs


def _spawn(name: str, argv: list[str], cpu: int) -> Proc:
    log = open(f"/tmp/bench-proxy-{name}.log", "wb")  # noqa: SIM115 - handed to the child
    popen = subprocess.Popen([*taskset(cpu), *argv], stdout=log, stderr=subprocess.STDOUT)
    return Proc(popen, 0, name)


def _wait_port(port: int, proc: Proc, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise SystemExit(f"{proc.name} exited; see /tmp/bench-proxy-{proc.name}.log")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{proc.name} did not listen on {port}")


def _ready_through(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    errors: list[str] = []
    while time.monotonic() < deadline:
        errors.clear()
        _stream(port, 1, errors)
        if not errors:
            return
        time.sleep(0.1)
    raise SystemExit(f"nothing gets through port {port}: {errors}")


METRICS_PORTS: dict[str, int] = {}  # the sidecars' -metrics-addr ports, by service


def proconsul_pair(agent: Proc, sink_port: int) -> tuple[list[Proc], int]:
    public, upstream = free_port(), free_port()
    METRICS_PORTS.update(db=free_port(), web=free_port())
    status, _, out = http("PUT", agent.url + "/v1/agent/service/register", {
        "Kind": "connect-proxy", "ID": "db-proxy", "Name": "db-sidecar-proxy", "Address": "127.0.0.1", "Port": public,
        "Proxy": {"DestinationServiceName": "db", "LocalServicePort": sink_port},
        "Check": {"TTL": "10m", "Status": "passing"}})  # fmt: skip
    if status != 200:
        raise SystemExit(f"register failed: {out!r}")
    exe = str(BIN / "proconsul")
    common = ["-http-addr", f"127.0.0.1:{agent.port}", "-log-level", "warn"]
    server = _spawn("proconsul-db", [exe, "connect", "proxy", "-service", "db", "-service-addr",
                                     f"127.0.0.1:{sink_port}", "-listen", f"127.0.0.1:{public}", *common,
                                     "-metrics-addr", f"127.0.0.1:{METRICS_PORTS['db']}"], PROXY_CPU)  # fmt: skip
    client = _spawn("proconsul-web", [exe, "connect", "proxy", "-service", "web", "-upstream", f"db:{upstream}",
                                      *common, "-metrics-addr", f"127.0.0.1:{METRICS_PORTS['web']}"], PROXY_CPU)  # fmt: skip
    _wait_port(public, server)
    _wait_port(upstream, client)
    _ready_through(upstream)
    return [client, server], upstream


def stunnel_pair(stunnel: str, agent: Proc, sink_port: int, work: Path, resume: bool = False) -> tuple[list[Proc], int]:
    roots = http("GET", agent.url + "/v1/agent/connect/ca/roots")
    import json

    bundle = "".join(r["RootCert"] for r in json.loads(roots[2])["Roots"])
    (work / "roots.pem").write_text(bundle)
    for svc in ("web", "db"):
        leaf = json.loads(http("GET", agent.url + f"/v1/agent/connect/ca/leaf/{svc}")[2])
        (work / f"{svc}.pem").write_text(leaf["CertPEM"])
        (work / f"{svc}.key").write_text(leaf["PrivateKeyPEM"])
        os.chmod(work / f"{svc}.key", 0o600)
    public, upstream = free_port(), free_port()
    tls = "sslVersionMin = TLSv1.2\nverifyChain = yes\nrequireCert = yes\n"
    server_conf = (f"foreground = yes\npid =\ndebug = 3\n[db]\naccept = 127.0.0.1:{public}\n"
                   f"connect = 127.0.0.1:{sink_port}\ncert = {work}/db.pem\nkey = {work}/db.key\n"
                   f"CAfile = {work}/roots.pem\n{tls}")  # fmt: skip
    # stunnel's client resumes TLS sessions by default, which skips the certificate exchange and its
    # verification on every connection after the first, as the sidecars do: --stunnel-resume keeps that
    # default (equal work); without it every stunnel connection is a full handshake.
    client_conf = (f"foreground = yes\npid =\ndebug = 3\n[web]\nclient = yes\n"
                   f"sessionResume = {'yes' if resume else 'no'}\naccept = 127.0.0.1:{upstream}\n"
                   f"connect = 127.0.0.1:{public}\ncert = {work}/web.pem\nkey = {work}/web.key\n"
                   f"CAfile = {work}/roots.pem\n{tls}")  # fmt: skip
    (work / "server.conf").write_text(server_conf)
    (work / "client.conf").write_text(client_conf)
    server = _spawn("stunnel-db", [stunnel, str(work / "server.conf")], PROXY_CPU)
    client = _spawn("stunnel-web", [stunnel, str(work / "client.conf")], PROXY_CPU)
    _wait_port(public, server)
    _wait_port(upstream, client)
    _ready_through(upstream)
    return [client, server], upstream


def measure_throughput(name: str, procs: list[Proc], port: int, args: argparse.Namespace) -> dict[str, Any]:
    total = args.megabytes * 1024 * 1024
    throughput(port, 64 * 1024 * 1024, args.streams)  # warm-up
    cpu0 = sum(p.cpu_seconds() for p in procs)
    rate, errors = throughput(port, total, args.streams)
    cpu1 = sum(p.cpu_seconds() for p in procs)
    if errors:
        raise SystemExit(f"{name}: throughput run failed: {errors[:3]}")
    return {"mb_s": rate / 1e6, "cpu_per_gb": (cpu1 - cpu0) / (total / 1e9), "rounds": [], "conn_failed": 0,
            "conn_cpu": 0.0, "conns": 0.0}  # fmt: skip


def measure_connections(name: str, procs: list[Proc], port: int, args: argparse.Namespace,
                        out: dict[str, Any]) -> None:  # fmt: skip
    """One slice of ``--seconds`` of new connections; the figures are the median over the slices."""
    cpu0 = sum(p.cpu_seconds() for p in procs)
    cps, failed = connections_per_second(port, args.seconds, args.workers)
    out["conn_cpu"] += sum(p.cpu_seconds() for p in procs) - cpu0
    out["conns"] += cps * args.seconds
    out["conn_failed"] += failed
    out["rounds"].append(cps)
    out["conn_s"] = statistics.median(out["rounds"])
    out["cpu_per_1k_conn"] = out["conn_cpu"] / max(1.0, out["conns"]) * 1000


def sidecar_resumptions() -> tuple[float, float]:
    """(upstream connections the web sidecar made, how many of them resumed a TLS session), from its
    Prometheus text."""
    _, _, text = http("GET", f"http://127.0.0.1:{METRICS_PORTS['web']}/metrics")
    made = resumed = 0.0
    for line in text.decode().splitlines():
        if line.startswith('proconsul_proxy_upstream_connections_total{upstream="db",result="ok"}'):
            made = float(line.split()[-1])
        elif line.startswith('proconsul_proxy_tls_resumed_total{listener="db"}'):
            resumed = float(line.split()[-1])
    return made, resumed


def report(name: str, out: dict[str, Any]) -> None:
    print(f"{name:10s} {out['mb_s']:8.1f} MB/s  {out['cpu_per_gb']:6.2f} CPU-s/GB  {out['conn_s']:7.0f} conn/s "
          f"({out['conn_failed']} failed; slices {', '.join(f'{c:.0f}' for c in out['rounds'])})  "
          f"{out['cpu_per_1k_conn']:.2f} CPU-s per 1k conn", flush=True)  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--megabytes", type=int, default=1024)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--workers", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3,
                    help="new-connection slices per pair, alternating between the pairs (the figure is the median)")
    ap.add_argument("--no-docs", action="store_true")
    ap.add_argument("--stunnel-resume", action="store_true",
                    help="let stunnel's client resume TLS sessions (its default), as the sidecars do: equal work")
    ap.add_argument("--sink", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.sink:
        run_sink(args.sink)
        return 0

    stunnel = ensure_tool("stunnel4", "stunnel4")
    lines = subprocess.run([stunnel, "-version"], capture_output=True, text=True).stderr.splitlines()
    version = [ln.strip() for ln in lines if ln.strip().startswith("stunnel")][:1]
    busy = wait_for_quiet_machine(0.25, 60)
    m = machine()
    print(f"# {m['nproc']} CPUs, {m['cpu']}, load {m['load']}, busy {busy:.0%}; {version}", flush=True)
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {LOAD_CPU})
    agent = spawn_agent(LOAD_CPU)
    sink_port = free_port()
    sink = _spawn("sink", [sys.executable, "-m", "bench.proxy", "--sink", str(sink_port)], LOAD_CPU)
    results: dict[str, dict[str, Any]] = {}
    pairs: dict[str, tuple[list[Proc], int]] = {}
    try:
        _wait_port(sink_port, sink)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                # Both pairs stay up (idle, a pair costs nothing) so that the new-connection slices can
                # alternate between them: the machine's speed drifts, and only figures taken side by side
                # compare.
                pairs["stunnel"] = stunnel_pair(stunnel, agent, sink_port, Path(tmp), resume=args.stunnel_resume)
                pairs["proconsul"] = proconsul_pair(agent, sink_port)
                for name, (procs, port) in pairs.items():
                    results[name] = measure_throughput(name, procs, port, args)
                order = list(pairs)
                for r in range(max(1, args.rounds)):
                    for name in order if r % 2 == 0 else order[::-1]:
                        measure_connections(name, *pairs[name], args, results[name])
                for name, out in results.items():
                    report(name, out)
                made, resumed = sidecar_resumptions()
                results["proconsul"]["resumed"] = resumed / made if made else 0.0
                print(f"# the web sidecar resumed {resumed:.0f} of its {made:.0f} upstream connections", flush=True)
            finally:
                for procs, _ in pairs.values():
                    for proc in procs:
                        proc.stop()
    finally:
        sink.stop()
        agent.stop()
    p, s = results["proconsul"], results["stunnel"]
    ratios = {"throughput": p["mb_s"] / s["mb_s"], "conn": p["conn_s"] / s["conn_s"],
              "cpu_gb": p["cpu_per_gb"] / s["cpu_per_gb"]}  # fmt: skip
    per_slice = [a / b for a, b in zip(p["rounds"], s["rounds"], strict=True)]
    print(f"ratio proconsul/stunnel: throughput {ratios['throughput']:.2f}x, new connections {ratios['conn']:.2f}x "
          f"(per slice pair {', '.join(f'{x:.2f}' for x in per_slice)}), CPU per GB {ratios['cpu_gb']:.2f}x",
          flush=True)  # fmt: skip
    if not args.no_docs:
        rows = "\n".join(
            f"| {n} | {r['mb_s']:.0f} | {r['cpu_per_gb']:.2f} | {r['conn_s']:.0f} | {r['cpu_per_1k_conn']:.2f} |"
            for n, r in (("Proconsul sidecars", p), ("stunnel", s)))  # fmt: skip
        body = f"""Date {DATE}; {m['nproc']} cores, {m['cpu']}; load {m['load']}; {m['code']}; {version[0] if version else 'stunnel'}.
`python -m bench.proxy --megabytes {args.megabytes} --streams {args.streams} --seconds {args.seconds:g} --workers {args.workers} --rounds {args.rounds}{' --stunnel-resume' if args.stunnel_resume else ''}`.

Path: load generator -> client-side proxy (plain TCP on loopback) -> mutual TLS -> server-side proxy ->
sink app, same EC P-256 leaves and roots from a `proconsul agent -dev` for both peers. Both proxy processes
of a pair pinned to CPU 0; load generator, sink and agent to CPU 1. The sidecars resume TLS sessions (the
web sidecar resumed {p.get('resumed', 0.0):.0%} of its upstream connections, by its own metrics);
stunnel's client has `sessionResume = {'yes' if args.stunnel_resume else 'no'}`
({'both resume: equal work' if args.stunnel_resume else 'stunnel does a full handshake per connection: not equal work'}).

| pair | MB/s | CPU-s per GB (both proxies) | new connections/s (median slice) | CPU-s per 1k connections |
| --- | --- | --- | --- | --- |
{rows}

Ratio Proconsul/stunnel: throughput **{ratios['throughput']:.2f}x**, new connections **{ratios['conn']:.2f}x**,
CPU per GB **{ratios['cpu_gb']:.2f}x**. Targets (the mesh issue): throughput >= 0.9x, new authorized
connections >= 1.0x.

Reading the figures: both peers use the same OpenSSL for the record crypto (TLS 1.3, AES-GCM) and the
handshake (ECDHE and ECDSA on P-256), so the difference is what surrounds it. Per byte, the sidecar runs TLS
through `ssl.SSLObject` and memory BIOs (the price of half-close, which asyncio's TLS transport cannot do):
each chunk is copied once more per hop and every read costs a few event-loop callbacks in Python, where
stunnel calls SSL_read/SSL_write on the sockets. Two changes brought the sidecar from 0.53x to 0.80x-0.95x (three runs)
of stunnel's throughput: glibc malloc thresholds fixed at start-up (freed buffers of hundreds of KiB were
trimmed and faulted back in, over a third of the CPU), and no TLS session tickets on the public listener
(then unused; since 2026-12-07 the sidecars resume sessions and the listener issues one ticket per
handshake). Per connection, the sidecar does more than stunnel can: it parses the client's SPIFFE URI
strictly, the server side decides it against the intentions it follows (in process: no call to the agent
per connection), both sides check the peer certificate's NotAfter, and the client side checks the
server's URI SAN; stunnel only verifies the chain. Most of the per-connection cost of a full handshake is
in OpenSSL 3 (certificate decoding and verification), the same library stunnel uses; resumption skips
it on both peers. Runs on this shared 2-core machine vary by about +-10%.
"""
        write_section(SECTION, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
