"""Fleet membership benchmark: three real servers and a simulated fleet of client agents gossiping with them.

Three ``proconsul agent -server -bootstrap-expect 3 -encrypt KEY -insecure`` processes are pinned to one core;
the load generator (``bench.fleet_sim``: N ``GossipNode`` cores speaking the real, encrypted gossip protocol
to the servers; its docstring says what is modelled) is pinned to the other, and so is this orchestrator.
The fleet grows through ``--sizes`` (each joiner push-pulls with a server, as ``retry_join`` does); each
size is held ``--settle`` seconds, then measured for ``--window`` seconds, then faults are injected:

* live nodes ever marked critical (a blocking watch on ``/v1/health/state/critical``; every serfHealth
  check seen critical whose member was not killed) -- target 0, joiners included (no flapping);
* leader changes (every server's ``/v1/status/leader`` polled twice a second) -- target 0;
* the leader's CPU with the fleet minus the same servers without it (membership's share) -- <= 0.05 core;
* KV write p99 at 50 writes/s with the fleet vs without it -- <= 1.5x;
* one member killed: seconds until the catalog shows its serfHealth critical -- <= 10 s;
* 100 killed at once: seconds until the last is critical -- <= 12 s -- and the Raft entries written
  meanwhile (the KV load paused: the leader's LastIndex delta, MemberBatch entries plus any coordinate
  batch) -- <= 5;
* three members paused 3 s: suspected (suspicions of them seen in the fleet's traffic), refuted (their
  incarnation rose) and never critical;
* per-agent gossip cost: the generator's CPU and bytes sent per agent per second (it includes the
  generator's own bookkeeping, so it is an upper bound);
* the leader's event-loop stall p99 (``consul.runtime.event_loop_lag``, read every second) under the
  fleet, and the longest during a ``GET /v1/snapshot`` of the whole state -- below the 500 ms at which a
  follower could start an election.

    python -m bench.fleet [--sizes 1000,5000,10000] [--settle 60] [--window 60] [--docs]
    python -m bench.fleet --quick          (200 and 500 agents, short windows: a smoke run)

``--docs`` writes the "Fleet membership" section of docs/benchmarks.md and nothing else in it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._util import (
    DATE,
    cpu_model,
    free_port,
    loadavg,
    percentile,
    raise_nofile,
    taskset,
    update_docs_section,
    wait_for_quiet_machine,
)
from bench.kv_probe import read_samples
from registry.gossip.keyring import generate_key

PROCONSUL = str(Path(sys.executable).with_name("proconsul"))
SECTION = "Fleet membership"
SERVER_CPU, LOAD_CPU = 0, 1
KV_RATE = 50.0
PAUSED = 3  # members paused at once (a pause is suspected only if someone probes it meanwhile)
TARGET_CPU, TARGET_KV_RATIO, TARGET_KILL, TARGET_KILL100, TARGET_ENTRIES, TARGET_STALL = 0.05, 1.5, 10.0, 12.0, 5, 0.5


# ---------------------------------------------------------------------- HTTP (stdlib, from threads)


def call(method: str, url: str, body: bytes | None = None, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


# ---------------------------------------------------------------------- the servers


@dataclass
class ServerProc:
    name: str
    http_port: int
    rpc_port: int
    serf_port: int
    data_dir: Path
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def rpc_address(self) -> str:
        return f"127.0.0.1:{self.rpc_port}"

    def start(self, key: str, peers: list[ServerProc]) -> None:
        argv = [PROCONSUL, "agent", "-server", "-bootstrap-expect", "3", "-insecure", "-encrypt", key,
                "-node", self.name, "-data-dir", str(self.data_dir), "-bind", "127.0.0.1", "-client", "127.0.0.1",
                "-http-port", str(self.http_port), "-server-port", str(self.rpc_port), "-dns-port", "-1",
                "-serf-lan-port", str(self.serf_port), "-serf-lan-bind", "127.0.0.1", "-retry-interval", "1s",
                "-log-level", "warn"]  # fmt: skip
        for p in peers:
            if p is not self:
                argv += ["-retry-join", f"127.0.0.1:{p.serf_port}"]
        with self.log.open("ab") as log:
            self.popen = subprocess.Popen([*taskset(SERVER_CPU), *argv], stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip

    def cpu_seconds(self) -> float:
        """User + system CPU of the process and its reaped children (forked snapshot writers)."""
        assert self.popen is not None
        fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)


class Servers:
    def __init__(self, workdir: Path) -> None:
        self.key = generate_key()
        self.procs = [ServerProc(f"s{k}", free_port(), free_port(), free_port(), workdir / f"s{k}",
                                 workdir / f"s{k}.log") for k in (1, 2, 3)]  # fmt: skip

    def start(self) -> None:
        for p in self.procs:
            p.start(self.key, self.procs)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.leader() is not None:
                status, _, _ = call("PUT", self.leader().url + "/v1/kv/fleet/probe", b"x")  # type: ignore[union-attr]
                if status == 200:
                    return
            for p in self.procs:
                if p.popen is not None and p.popen.poll() is not None:
                    raise SystemExit(f"{p.name} exited; see {p.log}")
            time.sleep(0.2)
        raise SystemExit("no leader within 90 s")

    def leader_address(self, p: ServerProc) -> str:
        try:
            status, _, body = call("GET", p.url + "/v1/status/leader", timeout=3)
        except OSError:
            return ""
        return str(json.loads(body) or "") if status == 200 else ""

    def leader(self) -> ServerProc | None:
        views = {self.leader_address(p) for p in self.procs}
        if len(views) != 1:
            return None
        addr = views.pop()
        return next((p for p in self.procs if p.rpc_address == addr), None)

    def stop(self) -> None:
        for p in self.procs:
            p.stop()


# ---------------------------------------------------------------------- the watchers


class KVProbe:
    """``bench.kv_probe`` on the load generator's core at real-time priority: the KV writes' latency as the
    servers give it, without the waits for the simulator's core and this process's interpreter lock that a
    thread here would add to each write (what earlier runs of this benchmark measured)."""

    def __init__(self, url: str) -> None:
        fd, self.path = tempfile.mkstemp(prefix="kv-probe-", suffix=".txt")
        os.close(fd)
        argv = [sys.executable, "-m", "bench.kv_probe", url, str(KV_RATE), self.path]
        self.popen = subprocess.Popen([*taskset(LOAD_CPU), *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True)  # fmt: skip
        assert self.popen.stdout is not None
        ready = self.popen.stdout.readline().split()
        self.priority = " ".join(ready[1:]) or "unknown"

    def send(self, word: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(word + "\n")
        self.popen.stdin.flush()

    def samples(self) -> list[tuple[float, float, int]]:
        return read_samples(self.path)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.send("quit")
        try:
            self.popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.popen.kill()




@dataclass
class Watch:
    """Background measurements over the whole run, each in its own thread."""

    servers: Servers
    leader: ServerProc
    first_critical: dict[str, float] = field(default_factory=dict)
    leader_changes: list[tuple[float, str]] = field(default_factory=list)
    lag: list[tuple[float, float]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    probe: KVProbe | None = None

    def start(self) -> None:
        self.probe = KVProbe(self.leader.url)
        for fn in (self._critical, self._leaders, self._lag):
            threading.Thread(target=fn, daemon=True).start()

    def kv_on(self, on: bool) -> None:
        assert self.probe is not None
        self.probe.send("on" if on else "off")

    def close(self) -> None:
        self.stop.set()
        if self.probe is not None:
            self.probe.close()

    @property
    def kv_errors(self) -> int:
        return sum(1 for _, _, status in self.probe.samples() if status != 200) if self.probe is not None else 0

    def _critical(self) -> None:
        index = 0
        while not self.stop.is_set():
            try:
                status, headers, body = call(
                    "GET", f"{self.leader.url}/v1/health/state/critical?index={index}&wait=10s&stale", timeout=30)
            except OSError:
                time.sleep(0.2)
                continue
            now = time.monotonic()
            if status != 200:
                time.sleep(0.2)
                continue
            index = int(headers.get("X-Consul-Index", "0"))
            for check in json.loads(body):
                if check.get("CheckID") == "serfHealth":
                    self.first_critical.setdefault(check["Node"], now)

    def _leaders(self) -> None:
        current = self.leader.rpc_address
        while not self.stop.is_set():
            time.sleep(0.5)
            views = {a for a in (self.servers.leader_address(p) for p in self.servers.procs) if a}
            if len(views) == 1 and (addr := views.pop()) != current:
                current = addr
                self.leader_changes.append((time.monotonic(), addr))

    def _lag(self) -> None:
        while not self.stop.is_set():
            time.sleep(1.0)
            try:
                status, _, body = call("GET", self.leader.url + "/v1/agent/metrics", timeout=5)
            except OSError:
                continue
            if status != 200:
                continue
            for g in json.loads(body).get("Gauges", []):
                if g.get("Name", "").endswith("runtime.event_loop_lag"):
                    self.lag.append((time.monotonic(), float(g["Value"]) / 1000.0))

    def kv_p99(self, t0: float, t1: float) -> float:
        assert self.probe is not None
        return percentile([lat for at, lat, status in self.probe.samples() if t0 <= at <= t1 and status == 200], 99)

    def lag_p99(self, t0: float, t1: float) -> tuple[float, float]:
        values = [v for at, v in self.lag if t0 <= at <= t1]
        return percentile(values, 99), max(values, default=float("nan"))


# ---------------------------------------------------------------------- the load generator


class FleetProc:
    def __init__(self, servers: Servers, view: int, seed: int) -> None:
        port = free_port()
        spec = ",".join(f"{p.name}=127.0.0.1:{p.serf_port}" for p in servers.procs)
        argv = [sys.executable, "-m", "bench.fleet_sim", "--servers", spec, "--key", servers.key, "--port", str(port),
                "--view", str(view), "--seed", str(seed)]  # fmt: skip
        self.popen = subprocess.Popen([*taskset(LOAD_CPU), *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      cwd=Path(__file__).resolve().parent.parent)  # fmt: skip
        self.lock = threading.Lock()
        if not json.loads(self._line()).get("ready"):
            raise SystemExit("the load generator did not start")

    def _line(self) -> str:
        assert self.popen.stdout is not None
        line = self.popen.stdout.readline()
        if not line:
            raise SystemExit(f"the load generator exited ({self.popen.poll()})")
        return line.decode()

    def ask(self, op: str, **args: Any) -> Any:
        assert self.popen.stdin is not None
        with self.lock:
            self.popen.stdin.write(json.dumps({"op": op, **args}).encode() + b"\n")
            self.popen.stdin.flush()
            return json.loads(self._line())

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)


# ---------------------------------------------------------------------- the run


@dataclass
class Step:
    size: int
    join_seconds: float = 0.0
    leader_cpu: float = 0.0
    kv_p99: float = 0.0
    lag_p99: float = 0.0
    lag_max: float = 0.0
    agent_cpu: float = 0.0
    agent_bytes: float = 0.0
    server_rtt_p99: float = 0.0
    generator_cpu: float = 0.0
    generator_stalls: int = 0
    kill1: float = float("nan")
    kill100: float = float("nan")
    kill100_entries: int = -1
    pause: str = ""
    pause_ok: bool = False
    live_critical: int = 0
    leader_changes: int = 0
    news_queued: int = 0


def wait_for(what: str, fn: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return True
        time.sleep(interval)
    print(f"# timed out waiting for {what}", flush=True)
    return False


def passing_members(leader: ServerProc) -> int:
    status, _, body = call("GET", leader.url + "/v1/health/state/passing?stale", timeout=30)
    if status != 200:
        return -1
    return sum(1 for c in json.loads(body) if c.get("CheckID") == "serfHealth")


def last_index(leader: ServerProc) -> int:
    status, _, body = call("GET", leader.url + "/v1/operator/autopilot/health", timeout=10)
    if status != 200:
        return -1
    return max(int(s.get("LastIndex", 0)) for s in json.loads(body)["Servers"])


def measure_window(watch: Watch, leader: ServerProc, fleet: FleetProc | None, window: float) -> dict[str, float]:
    watch.kv_on(True)
    time.sleep(1.0)
    r0 = fleet.ask("report") if fleet else None
    c0, t0 = leader.cpu_seconds(), time.monotonic()
    time.sleep(window)
    c1, t1 = leader.cpu_seconds(), time.monotonic()
    r1 = fleet.ask("report") if fleet else None
    lag99, lagmax = watch.lag_p99(t0, t1)
    out = {"leader_cpu": (c1 - c0) / (t1 - t0), "kv_p99": watch.kv_p99(t0, t1), "lag_p99": lag99, "lag_max": lagmax}
    if r0 is not None and r1 is not None:
        span = r1["at"] - r0["at"]
        alive = max(1, r1["alive"])
        sent = lambda r: r["stats"].get("agent_bytes_out", 0) + r["stats"].get("server_bytes_out", 0)  # noqa: E731
        out["generator_cpu"] = (r1["cpu"] - r0["cpu"]) / span
        out["agent_cpu"] = out["generator_cpu"] / alive
        out["agent_bytes"] = (sent(r1) - sent(r0)) / span / alive
        out["server_rtt_p99"] = percentile(r1["rtts"], 99)
        out["generator_stalls"] = r1["stalls"] - r0["stalls"]
        out["news_queued"] = r1["stats"].get("news_queued", 0)
    return out


def run(args: argparse.Namespace) -> tuple[list[Step], dict[str, Any]]:
    raise_nofile()
    affinity = os.sched_getaffinity(0)
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {LOAD_CPU})
    workdir = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    servers = Servers(workdir)
    fleet: FleetProc | None = None
    info: dict[str, Any] = {"load_before": loadavg()}
    steps: list[Step] = []
    try:
        servers.start()
        leader = servers.leader()
        assert leader is not None
        watch = Watch(servers, leader)
        watch.start()
        time.sleep(args.settle_base)
        base = measure_window(watch, leader, None, args.window)
        info["base"] = base
        print(f"# without the fleet: leader {base['leader_cpu']:.3f} core, KV p99 {base['kv_p99'] * 1000:.1f} ms, "
              f"loop stall p99 {base['lag_p99'] * 1000:.0f} ms", flush=True)  # fmt: skip
        fleet = FleetProc(servers, args.view, args.seed)
        killed: set[str] = set()
        for size in args.sizes:
            step = Step(size)
            t_grow = time.monotonic()
            out = fleet.ask("grow", to=size, rate=args.join_rate)
            step.join_seconds = out["seconds"]
            wait_for(f"{size} members passing in the catalog",
                     lambda size=size: passing_members(leader) >= size + 3 - len(killed), 120, 1.0)  # fmt: skip
            print(f"# {size} agents joined in {time.monotonic() - t_grow:.0f} s; settling {args.settle:.0f} s",
                  flush=True)  # fmt: skip
            time.sleep(args.settle)
            m = measure_window(watch, leader, fleet, args.window)
            for k, v in m.items():
                setattr(step, k, v)
            # One machine killed.
            victim = fleet.ask("kill", count=1)
            killed.update(victim["killed"])
            name = victim["killed"][0]
            if wait_for(f"{name} critical", lambda name=name: name in watch.first_critical, 60):
                step.kill1 = watch.first_critical[name] - victim["at"]
            # A hundred at once, the KV load paused so the Raft index counts membership entries.
            watch.kv_on(False)
            time.sleep(2.0)
            i0 = last_index(leader)
            many = fleet.ask("kill", count=min(100, size // 10))
            killed.update(many["killed"])
            names = list(many["killed"])
            if wait_for("the killed members critical", lambda names=names: all(n in watch.first_critical for n in names),
                        90):  # fmt: skip
                step.kill100 = max(watch.first_critical[n] for n in names) - many["at"]
                time.sleep(2.0)
                step.kill100_entries = last_index(leader) - i0
            watch.kv_on(True)
            # A few paused for 3 s each: suspected, refuting, never failed.
            paused = fleet.ask("pause", seconds=3.0, count=PAUSED)["paused"]
            time.sleep(args.pause_watch)
            seen = [fleet.ask("describe", name=n) for n in paused]
            suspected = [d for d in seen if d["suspicions_seen"]]
            refuted = [d for d in suspected if d["incarnation"] > 1]
            critical = [n for n in paused if n in watch.first_critical]
            step.pause = (f"{len(suspected)} of {len(paused)} suspected, {len(refuted)} of those refuted, "
                          f"{len(critical)} critical")  # fmt: skip
            step.pause_ok = bool(suspected) and len(refuted) == len(suspected) and not critical
            step.live_critical = len(set(watch.first_critical) - killed)
            step.leader_changes = len(watch.leader_changes)
            steps.append(step)
            print_step(step, base, flush=True)
        # A snapshot of the whole state on the leader under the largest fleet.
        t0 = time.monotonic()
        status, _, body = call("GET", leader.url + "/v1/snapshot", timeout=120)
        t1 = time.monotonic()
        time.sleep(2.5)
        info["snapshot"] = {"status": status, "seconds": t1 - t0, "bytes": len(body),
                            "lag_max": max((v for at, v in watch.lag if t0 <= at <= t1 + 2.5), default=float("nan"))}
        info["live_critical"] = sorted(set(watch.first_critical) - killed)
        info["kv_errors"] = watch.kv_errors
        info["kv_priority"] = watch.probe.priority if watch.probe is not None else "normal"
        info["fleet"] = fleet.ask("report")
        watch.close()
    finally:
        info["load_after"] = loadavg()
        if fleet is not None:
            fleet.stop()
        servers.stop()
        os.sched_setaffinity(0, affinity)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"# server logs and data in {workdir}")
    return steps, info


# ---------------------------------------------------------------------- the table


def rows(steps: list[Step], base: dict[str, float], snapshot: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The figures with their targets and a verdict each (PASS / MISS)."""
    out: list[tuple[str, str, str, str]] = []

    def v(ok: bool) -> str:
        return "PASS" if ok else "MISS"

    for s in steps:
        n = f"{s.size:,}"
        share = s.leader_cpu - base["leader_cpu"]
        ratio = s.kv_p99 / base["kv_p99"] if base["kv_p99"] > 0 else float("nan")
        out += [
            (f"{n}: live nodes ever critical", str(s.live_critical), "0", v(s.live_critical == 0)),
            (f"{n}: leader changes so far", str(s.leader_changes), "0", v(s.leader_changes == 0)),
            (f"{n}: leader CPU for membership", f"{share:.3f} core ({s.leader_cpu:.3f} - {base['leader_cpu']:.3f})",
             f"<= {TARGET_CPU} core", v(share <= TARGET_CPU)),
            (f"{n}: KV write p99 at 50/s", f"{s.kv_p99 * 1000:.1f} ms ({ratio:.2f}x of {base['kv_p99'] * 1000:.1f})",
             f"<= {TARGET_KV_RATIO}x", v(ratio <= TARGET_KV_RATIO)),
            (f"{n}: a killed member critical after", f"{s.kill1:.1f} s", f"<= {TARGET_KILL:.0f} s",
             v(s.kill1 <= TARGET_KILL)),
            (f"{n}: {min(100, s.size // 10)} killed at once: last critical after, Raft entries",
             f"{s.kill100:.1f} s, {s.kill100_entries}", f"<= {TARGET_KILL100:.0f} s, <= {TARGET_ENTRIES}",
             v(s.kill100 <= TARGET_KILL100 and 0 <= s.kill100_entries <= TARGET_ENTRIES)),
            (f"{n}: {PAUSED} members paused 3 s", s.pause, "suspected, refuted, 0 critical", v(s.pause_ok)),
            (f"{n}: leader event-loop stall p99 / max", f"{s.lag_p99 * 1000:.0f} / {s.lag_max * 1000:.0f} ms",
             f"< {TARGET_STALL * 1000:.0f} ms", v(s.lag_max < TARGET_STALL)),
            (f"{n}: per agent: gossip CPU, bytes sent", f"{s.agent_cpu * 1e6:.0f} µs/s, {s.agent_bytes:.0f} B/s",
             "constant in the size", "-"),
            (f"{n}: a server's ack to a probe, p99", f"{s.server_rtt_p99 * 1000:.1f} ms", "-", "-"),
        ]  # fmt: skip
    if snapshot:
        out.append(("snapshot save of the whole state (leader): duration, longest stall",
                    f"{snapshot['seconds']:.2f} s ({snapshot['bytes'] / 1e6:.1f} MB), "
                    f"{snapshot['lag_max'] * 1000:.0f} ms", f"< {TARGET_STALL * 1000:.0f} ms",
                    v(snapshot["lag_max"] < TARGET_STALL)))  # fmt: skip
    return out


def print_step(s: Step, base: dict[str, float], flush: bool = True) -> None:
    for a, b, c, d in rows([s], base, {}):
        print(f"{a:<72} {b:<44} {c:<22} {d}", flush=flush)
    print(f"#   joined in {s.join_seconds:.0f} s; generator {s.generator_cpu:.2f} core, {s.generator_stalls} agent "
          f"stalls in the window, {s.news_queued} news queued", flush=flush)  # fmt: skip


def markdown(steps: list[Step], info: dict[str, Any], args: argparse.Namespace) -> str:
    table = ["| figure | measured | target | result |", "| --- | --- | --- | --- |"]
    table += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows(steps, info["base"], info.get("snapshot", {}))]
    return "\n".join([
        f"Date {DATE}; machine: {os.cpu_count()} cores, {cpu_model()}; load average before {info['load_before']}, "
        f"after {info['load_after']}.",
        "",
        "Method: `python -m bench.fleet " + " ".join(sys.argv[1:]) + "`. Three `proconsul agent -server "
        "-bootstrap-expect 3 -encrypt ... -insecure` processes pinned to one core; the load generator "
        "(`bench/fleet_sim.py`: one `GossipNode` per simulated client agent, each at its own loopback address, "
        "the real encrypted wire protocol to the servers over one multiplexed UDP socket and TCP listener, "
        f"partial views of about {args.view} neighbours) and this orchestrator pinned to the other. Joins are "
        f"push-pulls with a server at {args.join_rate:g}/s; each size settles {args.settle:g} s and is measured "
        f"for {args.window:g} s with 50 KV writes/s (from `bench/kv_probe.py`, a process of its own on the "
        f"generator's core at {info.get('kv_priority', 'normal')} priority, so that a write's time is the "
        "servers', not a wait for the simulator's core); then one member is killed, a tenth of the size (at most 100) "
        f"at once, and {PAUSED} are paused 3 s. Baseline (no fleet): leader "
        f"{info['base']['leader_cpu']:.3f} core, KV p99 {info['base']['kv_p99'] * 1000:.1f} ms.",
        "",
        *table,
    ])  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,5000,10000")
    p.add_argument("--settle", type=float, default=60.0)
    p.add_argument("--settle-base", type=float, default=10.0)
    p.add_argument("--window", type=float, default=60.0)
    p.add_argument("--pause-watch", type=float, default=30.0, help="seconds to watch a paused member")
    p.add_argument("--join-rate", type=float, default=50.0, help="joins a second")
    p.add_argument("--view", type=int, default=16)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="200 and 500 agents, short windows")
    p.add_argument("--keep", action="store_true", help="keep the servers' logs and data dirs")
    p.add_argument("--docs", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.sizes, args.settle, args.window, args.pause_watch, args.settle_base = "200,500", 10.0, 15.0, 15.0, 5.0
    args.sizes = [int(x) for x in args.sizes.split(",")]
    wait_for_quiet_machine(max_busy=0.5)
    steps, info = run(args)
    snap = info.get("snapshot", {})
    print(f"# snapshot save: {snap}", flush=True)
    print(f"# live nodes ever critical: {info['live_critical'][:20]}; KV errors {info['kv_errors']}", flush=True)
    print(f"# generator: {json.dumps(info['fleet']['stats'])}", flush=True)
    print(f"# load average before {info['load_before']}, after {info['load_after']}", flush=True)
    if args.docs:
        update_docs_section(SECTION, markdown(steps, info, args))


if __name__ == "__main__":
    main()
