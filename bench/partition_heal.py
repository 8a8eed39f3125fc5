"""Partition heal: how long after a silent partition heals until every server has caught up, Proconsul
against etcd in the same run, on the same network-namespace harness as the cluster tests.

Each system runs 3 members, each in its own network namespace on one bridge (``tests/cluster/netns.py``),
started as their users start them: ``proconsul agent -server -bootstrap-expect 3 -retry-join ...`` and
``etcd --initial-cluster ...`` (etcd 3.4: heartbeat 100 ms, election timeout 1,000 ms, pre-vote on).
Four writer threads put a new key every ~10 ms each through the members in turn (2 s timeout). Links are
cut silently (dropped on input by nftables in the receiving namespace: no RST, no ICMP) and healed.
Scenarios, each per partition length:

- ``follower``: one follower cut off from both others;
- ``leader``: the leader cut off (the other two elect a new one);
- ``bridge``: the leader and one follower cannot hear each other, the third member hears both;
- ``bridge_after_heal``: a follower cut off for 8 s, healed, and 1 s later a bridge through that
  follower (the leader and the other follower cannot hear each other; it hears both), for the partition
  length: the rejoined follower must already know the leader again, or it helps depose it.

Figures per run: the heal time (from the heal until every member has applied the highest log index any
member had applied at the heal: Proconsul's ``/v1/operator/raft/configuration?stale`` ``Index``, etcd's
``raftAppliedIndex`` from ``/v3/maintenance/status``, both asked of each member directly), and the leader
changes (a member starting to name itself leader, sampled every 50 ms; for ``bridge_after_heal`` counted
from the start of the bridge). Each cell is the median over ``--rounds``; systems alternate within a round.

    python -m bench.partition_heal [--lengths 5,15,30] [--long] [--rounds 1] [--scenarios a,b] [--docs]

``--long`` adds 60 s and 120 s. etcd (Debian ``etcd-server``) and nftables are installed with apt-get when
missing; it must run as root. ``--docs`` rewrites the "Partition heal" section of docs/benchmarks.md, keeping
its "Baseline" subsection (the figures from before the transport reset stalled links) as it is.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench._util import cpu_model, ensure_tool, http_body, loadavg, wait_until, write_section
from tests.cluster.netns import LeaderWatch, Netns, measure_heal, sweep_stale, unavailable

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "Partition heal"
PROCONSUL = str(Path(sys.executable).with_name("proconsul"))
SCENARIOS = ("follower", "leader", "bridge", "bridge_after_heal")
FIRST_PARTITION, BRIDGE_AFTER = 8.0, 1.0
HEAL_GOAL, HEAL_MEDIAN_GOAL = 1.0, 0.5  # seconds: every heal, and the median over all of Proconsul's
BASELINE = "### Baseline"
WRITERS, WRITE_PAUSE, WRITE_TIMEOUT = 4, 0.01, 2.0


# ---------------------------------------------------------------------- the two systems


@dataclass
class Member:
    k: int
    name: str
    ip: str


@dataclass
class System:
    """A 3-member cluster in the namespaces of ``net``."""

    net: Netns
    workdir: Path
    name: str = ""
    members: list[Member] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.members = [Member(k, f"{self.name[0]}{k}", self.net.ip(k)) for k in range(1, self.net.n + 1)]

    def start(self) -> None:
        for m in self.members:
            self.net.spawn(m.k, self.argv(m), self.workdir / f"{m.name}.log")
        wait_until(f"{self.name} to elect a leader and take a write",
                   lambda: (leader := self.leader()) is not None and self.write(leader, "warm"), 60)  # fmt: skip

    def leader(self, among: list[Member] | None = None) -> Member | None:
        claiming = [m for m in (among or self.members) if self._claims_quietly(m)]
        return claiming[0] if len(claiming) == 1 else None

    def _claims_quietly(self, m: Member) -> bool:
        try:
            return self.claims(m)
        except (OSError, ValueError, KeyError):
            return False

    def argv(self, m: Member) -> list[str]:
        raise NotImplementedError

    def claims(self, m: Member) -> bool:
        """Whether m says it is the leader."""
        raise NotImplementedError

    def applied(self, m: Member) -> int:
        """The last log index m has applied."""
        raise NotImplementedError

    def write(self, m: Member, key: str) -> bool:
        raise NotImplementedError


class Proconsul(System):
    def __init__(self, net: Netns, workdir: Path) -> None:
        super().__init__(net, workdir, "proconsul")

    def argv(self, m: Member) -> list[str]:
        argv = [PROCONSUL, "agent", "-serf-lan-port", "0", "-server", "-insecure", "-bootstrap-expect", "3", "-node", m.name,
                "-data-dir", str(self.workdir / m.name), "-bind", m.ip, "-advertise", m.ip, "-client", m.ip,
                "-server-port", "8300", "-http-port", "8500", "-dns-port", "-1", "-log-level", "warn"]  # fmt: skip
        for other in self.members:
            if other is not m:
                argv += ["-retry-join", f"{other.ip}:8300"]
        return argv

    def claims(self, m: Member) -> bool:
        status, body = http("GET", f"http://{m.ip}:8500/v1/status/leader")
        return status == 200 and json.loads(body) == f"{m.ip}:8300"

    def applied(self, m: Member) -> int:
        status, body = http("GET", f"http://{m.ip}:8500/v1/operator/raft/configuration?stale")
        if status != 200:
            raise OSError(f"{m.name}: {status}")
        return int(json.loads(body)["Index"])

    def write(self, m: Member, key: str) -> bool:
        status, body = http("PUT", f"http://{m.ip}:8500/v1/kv/bench/{key}", b"0123456789abcdef", WRITE_TIMEOUT)
        return status == 200 and body.strip() == b"true"


class Etcd(System):
    def __init__(self, net: Netns, workdir: Path, binary: str) -> None:
        self.binary = binary
        super().__init__(net, workdir, "etcd")

    def argv(self, m: Member) -> list[str]:
        initial = ",".join(f"{o.name}=http://{o.ip}:2380" for o in self.members)
        return [self.binary, "--name", m.name, "--data-dir", str(self.workdir / m.name),
                "--listen-client-urls", f"http://{m.ip}:2379", "--advertise-client-urls", f"http://{m.ip}:2379",
                "--listen-peer-urls", f"http://{m.ip}:2380", "--initial-advertise-peer-urls", f"http://{m.ip}:2380",
                "--initial-cluster", initial, "--initial-cluster-state", "new", "--initial-cluster-token", "heal",
                "--heartbeat-interval", "100", "--election-timeout", "1000", "--pre-vote",
                "--logger", "zap", "--log-level", "warn"]  # fmt: skip

    def _status(self, m: Member) -> dict[str, object]:
        status, body = http("POST", f"http://{m.ip}:2379/v3/maintenance/status", b"{}")
        if status != 200:
            raise OSError(f"{m.name}: {status}")
        return dict(json.loads(body))

    def claims(self, m: Member) -> bool:
        st = self._status(m)
        return str(st.get("leader")) == str(st["header"]["member_id"])  # type: ignore[index]

    def applied(self, m: Member) -> int:
        return int(self._status(m)["raftAppliedIndex"])  # type: ignore[call-overload]

    def write(self, m: Member, key: str) -> bool:
        body = json.dumps({"key": base64.b64encode(f"bench/{key}".encode()).decode(), "value": "MDEyMzQ1Njc4OWFi"})
        status, out = http("POST", f"http://{m.ip}:2379/v3/kv/put", body.encode(), WRITE_TIMEOUT)
        return status == 200 and b'"header"' in out and b'"error"' not in out


# ---------------------------------------------------------------------- load and scenarios


class Writers:
    """A steady write load through every member in turn (a member that does not answer costs its
    writer one timeout and the next write goes elsewhere)."""

    def __init__(self, system: System) -> None:
        self.system = system
        self.stop_event = threading.Event()
        self.acked = 0
        self.failed = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(WRITERS)]

    def __enter__(self) -> Writers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(WRITE_TIMEOUT + 5)

    def _run(self, i: int) -> None:
        n = 0
        while not self.stop_event.is_set():
            n += 1
            member = self.system.members[(i + n) % len(self.system.members)]
            try:
                ok = self.system.write(member, f"w{i}-{n}")
            except OSError:
                ok = False
            with self.lock:
                if ok:
                    self.acked += 1
                else:
                    self.failed += 1
            time.sleep(WRITE_PAUSE)


@dataclass
class Run:
    system: str
    scenario: str
    seconds: float
    heal: float
    leader_changes: int
    acked: int
    failed: int
    load: str = field(default_factory=lambda: f"{os.getloadavg()[0]:.1f}")


def http(method: str, url: str, body: bytes | None = None, timeout: float = 2.0) -> tuple[int, bytes]:
    return http_body(method, url, body, timeout)


def run_one(system: System, scenario: str, seconds: float) -> Run:
    system.start()
    leader = system.leader()
    assert leader is not None
    follower, other = [m for m in system.members if m is not leader]
    watch = LeaderWatch(system.members, claims=system.claims)
    with Writers(system) as writers:
        time.sleep(2.0)
        watch.start()
        counted_from = time.monotonic()
        if scenario == "follower":
            system.net.isolate(follower.k)
        elif scenario == "leader":
            system.net.isolate(leader.k)
            wait_until("a leader on the majority side", lambda: system.leader([follower, other]), 60)
        elif scenario == "bridge":
            system.net.bridge_through(other.k)
        else:
            system.net.isolate(follower.k)
            time.sleep(FIRST_PARTITION)
            system.net.heal()
            time.sleep(BRIDGE_AFTER)
            counted_from = time.monotonic()
            system.net.bridge_through(follower.k)
        time.sleep(seconds)
        system.net.heal()
        healed = time.monotonic()
        heal = measure_heal(system.members, healed, applied=system.applied, timeout=max(90.0, 3 * seconds))
        time.sleep(1.0)
        watch.stop()
    return Run(system.name, scenario, seconds, heal, len(watch.changes_since(counted_from)), writers.acked,
               writers.failed)  # fmt: skip


def run_isolated(kind: str, scenario: str, seconds: float, etcd_bin: str) -> Run:
    """One system, one scenario, in fresh namespaces and data dirs that are removed afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix=f"heal-{kind}-"))
    net = Netns(3).create()
    try:
        system: System = Etcd(net, workdir, etcd_bin) if kind == "etcd" else Proconsul(net, workdir)
        return run_one(system, scenario, seconds)
    finally:
        net.close()
        shutil.rmtree(workdir, ignore_errors=True)


# ---------------------------------------------------------------------- report


def _label(scenario: str, seconds: float) -> str:
    return {
        "follower": f"a follower cut off {seconds:g} s",
        "leader": f"the leader cut off {seconds:g} s",
        "bridge": f"a bridge (one member hears both others) {seconds:g} s",
        "bridge_after_heal": f"a bridge through a follower {seconds:g} s, starting {BRIDGE_AFTER:g} s after "
                             f"its {FIRST_PARTITION:g} s partition healed",
    }[scenario]  # fmt: skip


def table(runs: list[Run], scenarios: list[str], lengths: list[float]) -> str:
    lines = ["| partition | etcd: heal | Proconsul: heal | ratio | etcd: leader changes | Proconsul: leader changes |",
             "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for scenario in scenarios:
        for seconds in lengths:
            cell = {}
            for name in ("etcd", "proconsul"):
                mine = [r for r in runs if r.system == name and r.scenario == scenario and r.seconds == seconds]
                if mine:
                    cell[name] = (statistics.median(r.heal for r in mine), [r.leader_changes for r in mine])
            if len(cell) < 2:
                continue
            (e_heal, e_ch), (p_heal, p_ch) = cell["etcd"], cell["proconsul"]
            lines.append(f"| {_label(scenario, seconds)} | {e_heal:.2f} s | {p_heal:.2f} s | {p_heal / e_heal:.2f}x"
                         f" | {', '.join(map(str, e_ch))} | {', '.join(map(str, p_ch))} |")  # fmt: skip
    return "\n".join(lines)


def verdict(runs: list[Run]) -> str:
    """Each system's heals in one line, then Proconsul against the goals: every heal within HEAL_GOAL,
    their median within HEAL_MEDIAN_GOAL, no leader change from a bridge right after a heal."""
    figures = []
    for name, label in (("proconsul", "Proconsul"), ("etcd", "etcd")):
        heals = sorted(r.heal for r in runs if r.system == name)
        if heals:
            figures.append(f"{label}: {len(heals)} heals, median {statistics.median(heals):.2f} s, longest "
                           f"{heals[-1]:.2f} s")  # fmt: skip
    mine = [r for r in runs if r.system == "proconsul"]
    if not mine:
        return "; ".join(figures)
    heals = [r.heal for r in mine]
    changes = sum(r.leader_changes for r in mine if r.scenario == "bridge_after_heal")
    met = max(heals) <= HEAL_GOAL and statistics.median(heals) <= HEAL_MEDIAN_GOAL and not changes
    goal = (f"Goal (every heal within {HEAL_GOAL:g} s, their median within {HEAL_MEDIAN_GOAL:g} s, no leader "
            f"change from a bridge right after a heal): **{'met' if met else 'missed'}** ({changes} leader "
            "change(s) from such bridges).")  # fmt: skip
    return "; ".join(figures) + ".\n\n" + goal


def baseline_subsection() -> str:
    """The section's "Baseline" subsection as it stands in docs/benchmarks.md ("" when there is none)."""
    text = DOCS.read_text() if DOCS.exists() else ""
    found = re.search(rf"^## {re.escape(SECTION)}\n.*?(?=^## |\Z)", text, re.S | re.M)
    if not found or BASELINE not in found.group(0):
        return ""
    return found.group(0)[found.group(0).index(BASELINE):].strip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="5,15,30", help="partition lengths in seconds, comma-separated")
    ap.add_argument("--long", action="store_true", help="add 60 s and 120 s partitions")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--docs", action="store_true", help="write the section into docs/benchmarks.md")
    args = ap.parse_args(argv)
    lengths = [float(x) for x in args.lengths.split(",") if x] + ([60.0, 120.0] if args.long else [])
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenarios {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    if os.geteuid() != 0:
        raise SystemExit("bench.partition_heal needs root (network namespaces)")
    ensure_tool("ip", "iproute2")
    ensure_tool("nft", "nftables")
    etcd_bin = ensure_tool("etcd", "etcd-server")
    reason = unavailable()
    if reason:
        raise SystemExit(reason)
    sweep_stale()
    load_before = loadavg()
    date = time.strftime("%Y-%m-%d")
    started = time.monotonic()
    runs: list[Run] = []
    for rnd in range(args.rounds):
        for scenario in scenarios:
            for seconds in lengths:
                order = ("etcd", "proconsul") if rnd % 2 == 0 else ("proconsul", "etcd")
                for kind in order:
                    run = run_isolated(kind, scenario, seconds, etcd_bin)
                    runs.append(run)
                    print(f"# round {rnd + 1} {kind:9} {scenario:17} {seconds:5g}s: heal {run.heal:6.2f} s, "
                          f"leader changes {run.leader_changes}, writes {run.acked} acked / {run.failed} failed, "
                          f"load {loadavg()}", flush=True)  # fmt: skip
    minutes = (time.monotonic() - started) / 60
    body = table(runs, scenarios, lengths)
    summary = verdict(runs)
    print(body)
    print(summary)
    if args.docs:
        samples = "; ".join(f"{r.system} {r.scenario} {r.seconds:g}s {r.heal:.2f} (load {r.load})" for r in runs)
        baseline = baseline_subsection()
        write_section(SECTION, "\n\n".join(part for part in [
            f"Measured by `python -m bench.partition_heal --lengths {args.lengths}"
            f"{' --long' if args.long else ''} --rounds {args.rounds}` (its docstring has the method): 3 etcd "
            "members and 3 Proconsul servers, each member in its own network namespace, one cluster at a time, "
            "a steady write load through every member; links cut silently (packets dropped) and healed. "
            "Heal: from the heal until every member has applied the highest index any member had applied at "
            "the heal. Leader changes: members starting to claim leadership, per run (for the bridge after a "
            "heal, from the start of the bridge).",
            f"Date {date}; machine: {os.cpu_count()} cores, {cpu_model()}; load average {load_before} before "
            f"and {loadavg()} after the {minutes:.0f}-minute run. Other engineers' tests share the machine, "
            "so single runs are noisy.",
            "A peer stream that stops being acknowledged is reset within about a second "
            "(`registry/raft/links.py`, `registry/raft/transport.py`: Raft silence for an election timeout with "
            "bytes unacknowledged, TCP_USER_TIMEOUT 1 s, keepalive, a failed dial of 0.25 s followed by the next within 0.1 s), so "
            "nothing fresh waits behind a stale backlog and the heal no longer grows with the partition.",
            body,
            summary,
            f"Samples (s, with the 1-minute load average at the end of each run): {samples}.",
            baseline,
        ] if part), DOCS)  # fmt: skip
        print(f"# wrote the {SECTION!r} section of {DOCS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
