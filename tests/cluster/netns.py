"""Servers in their own Linux network namespaces, with links that are cut and healed silently.

``Netns(n)`` builds, in the root namespace, one Linux bridge with an address of its own and ``n`` network
namespaces, each joined to the bridge by a veth pair and given one address on the bridge's /24. Processes
started with ``argv_in(k, ...)`` run inside namespace k (``ip netns exec``) and reach the others over the
bridge, as separate hosts on one switch would. The test process stays in the root namespace and reaches
every member through the bridge's own address, which no fault ever touches.

A cut is silent: ``block(src, dst)`` adds src's address to a set that an nftables rule in dst's namespace
drops on input (with ``iptables`` as the fallback: a DROP rule in dst's INPUT chain). The packets leave
src normally and vanish before dst's TCP sees them, so neither end gets an RST, an ICMP error or a failed
``send``: exactly what a dead switch port or a dropping firewall does, and the case where a sender learns
of the loss only from its own timers. ``test_cluster_partitions.test_cut_is_silent`` checks that. Cuts are
per direction; ``cut`` blocks both, and ``partition``/``isolate``/``bridge`` build the usual shapes from it.

Names carry a random tag (bridge ``pcb<tag>``, veths ``pc<tag>h<k>``/``pc<tag>n<k>``, namespaces
``proconsul-<tag>-<k>``) and the subnet is one the machine does not use yet, so runs in parallel never
collide. The bridge's alias records the owning process id; ``sweep_stale()`` removes what a crashed run
(whose process is gone) left behind. ``close()`` kills the processes started in the namespaces, then
deletes the namespaces (which takes their veths and firewall rules with them) and the bridge, whatever
state a test left them in.

``NetnsCluster`` runs real Proconsul servers in those namespaces, started as users start them
(``proconsul agent -server -bootstrap-expect 3 -retry-join ...``), with the same interface as
``harness.Cluster``, so ``workload.Workload`` and its checks work unchanged.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.testing import GOSSIP_KEY
from tests.cluster.harness import BIN, Cluster, Server, wait_for

OWNER_ALIAS = "proconsul-netns pid="
SERVER_PORT = 8300
HTTP_PORT = 8500
NFT_TABLE = "proconsul_partition"


class NetnsError(RuntimeError):
    """A namespace, link or firewall command failed (the message has the command and its stderr)."""


def _bin(name: str) -> str | None:
    """Where a tool is: on PATH, or in /usr/sbin where Debian puts iproute2 and nftables (not always on a
    user's PATH)."""
    return shutil.which(name) or (f"/usr/sbin/{name}" if os.access(f"/usr/sbin/{name}", os.X_OK) else None)


def _run(*argv: str, check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    argv = (_bin(argv[0]) or argv[0], *argv[1:])
    if argv[1:3] == ("netns", "exec"):
        argv = (*argv[:4], _bin(argv[4]) or argv[4], *argv[5:])
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def firewall_tool() -> str | None:
    """``nft`` when installed, else ``iptables``, else None."""
    for tool in ("nft", "iptables"):
        if _bin(tool):
            return tool
    return None


def unavailable() -> str | None:
    """Why namespaces cannot be used here (a reason naming what is missing), or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (run as root, as CI does)"
    if _bin("ip") is None:
        return "`ip` is missing: install the Debian package iproute2"
    if firewall_tool() is None:
        return "no packet filter to cut links with: install the Debian package nftables (or iptables)"
    probe = f"proconsul-probe-{os.getpid()}-{random.randrange(1 << 32):08x}"
    try:
        made = _run("ip", "netns", "add", probe, check=False)
        if made.returncode != 0:
            return f"cannot create a network namespace: {made.stderr.strip()}"
    finally:
        _run("ip", "netns", "del", probe, check=False)
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale() -> list[str]:
    """Remove the bridges and namespaces of runs whose process is gone; returns what was removed."""
    removed: list[str] = []
    links = _run("ip", "-o", "link", "show", "type", "bridge", check=False).stdout
    for line in links.splitlines():
        name = line.split(":", 2)[1].strip().split("@")[0]
        if not name.startswith("pcb"):
            continue
        try:
            detail = Path(f"/sys/class/net/{name}/ifalias").read_text().strip()
        except OSError:
            continue
        if OWNER_ALIAS not in detail:
            continue
        try:
            pid = int(detail.split(OWNER_ALIAS, 1)[1].split()[0])
        except (IndexError, ValueError):
            continue
        if _pid_alive(pid):
            continue
        tag = name.removeprefix("pcb")
        for ns in _run("ip", "netns", "list", check=False).stdout.split("\n"):
            ns_name = ns.split(" ")[0]
            if ns_name.startswith(f"proconsul-{tag}-"):
                _kill_namespace_processes(ns_name)
                _run("ip", "netns", "del", ns_name, check=False)
                removed.append(ns_name)
        _run("ip", "link", "del", name, check=False)
        removed.append(name)
    return removed


def _kill_namespace_processes(ns: str) -> None:
    pids = _run("ip", "netns", "pids", ns, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def _used_prefixes() -> set[str]:
    out = _run("ip", "-4", "-o", "addr", "show", check=False).stdout
    used = set()
    for line in out.split("\n"):
        parts = line.split()
        if "inet" in parts:
            used.add(".".join(parts[parts.index("inet") + 1].split("/")[0].split(".")[:3]))
    return used


@dataclass
class Netns:
    """``n`` namespaces on one bridge; see the module docstring."""

    n: int = 3
    tag: str = field(default_factory=lambda: f"{random.randrange(1 << 24):06x}")
    prefix: str = ""
    firewall: str = field(default_factory=lambda: firewall_tool() or "")
    blocked_links: set[tuple[int, int]] = field(default_factory=set)
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)
    _created: list[str] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"pcb{self.tag}"

    def namespace(self, k: int) -> str:
        return f"proconsul-{self.tag}-{k}"

    def ip(self, k: int) -> str:
        """Member k's address (1-based)."""
        return f"{self.prefix}.{10 + k}"

    @property
    def host_ip(self) -> str:
        """The root namespace's address on the bridge: where the test process talks from."""
        return f"{self.prefix}.1"

    def member_of(self, ip: str) -> int | None:
        return next((k for k in range(1, self.n + 1) if self.ip(k) == ip), None)

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Netns:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create(self) -> Netns:
        reason = unavailable()
        if reason:
            raise NetnsError(reason)
        if not self.prefix:
            used = _used_prefixes()
            rng = random.Random()
            for _ in range(200):
                candidate = f"10.{rng.randrange(100, 250)}.{rng.randrange(1, 255)}"
                if candidate not in used:
                    self.prefix = candidate
                    break
            else:
                raise NetnsError("no free 10.x.y.0/24 subnet for the bridge")
        ipaddress.ip_address(self.host_ip)  # a malformed prefix fails here, before anything is created
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def _build(self) -> None:
        br = self.bridge
        _run("ip", "link", "add", br, "type", "bridge")
        self._created.append(f"link:{br}")
        _run("ip", "link", "set", "dev", br, "alias", f"{OWNER_ALIAS}{os.getpid()}")
        _run("ip", "addr", "add", f"{self.host_ip}/24", "dev", br)
        _run("ip", "link", "set", br, "up")
        for k in range(1, self.n + 1):
            ns, host_end, ns_end = self.namespace(k), f"pc{self.tag}h{k}", f"pc{self.tag}n{k}"
            _run("ip", "netns", "add", ns)
            self._created.append(f"netns:{ns}")
            _run("ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end)
            self._created.append(f"link:{host_end}")
            _run("ip", "link", "set", ns_end, "netns", ns)
            _run("ip", "link", "set", host_end, "master", br, "up")
            _run("ip", "-n", ns, "addr", "add", f"{self.ip(k)}/24", "dev", ns_end)
            _run("ip", "-n", ns, "link", "set", ns_end, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            self._firewall_setup(k)

    def close(self) -> None:
        """Kill what runs in the namespaces, delete them and the bridge; never raises."""
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        for item in reversed(self._created):
            kind, _, name = item.partition(":")
            if kind == "netns":
                _kill_namespace_processes(name)
                _run("ip", "netns", "del", name, check=False)
            else:
                _run("ip", "link", "del", name, check=False)
        self._created.clear()
        self.blocked_links.clear()

    # ------------------------------------------------------------------ processes

    def argv_in(self, k: int, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside member k's namespace."""
        return [_bin("ip") or "ip", "netns", "exec", self.namespace(k), *argv]

    def spawn(self, k: int, argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        """Start ``argv`` in namespace k in its own process group, output appended to ``log``; ``close``
        kills it."""
        with log.open("ab") as out:
            proc = subprocess.Popen(self.argv_in(k, argv), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        self.procs.append(proc)
        return proc

    # ------------------------------------------------------------------ faults

    def _firewall_setup(self, k: int) -> None:
        ns = self.namespace(k)
        if self.firewall == "nft":
            ruleset = (f"table inet {NFT_TABLE} {{\n"
                       f"  set blocked {{ type ipv4_addr; }}\n"
                       f"  chain input {{ type filter hook input priority -10; policy accept;\n"
                       f"    ip saddr @blocked drop\n  }}\n}}\n")  # fmt: skip
            proc = subprocess.run(self.argv_in(k, [_bin("nft") or "nft", "-f", "-"]), input=ruleset, text=True,
                                  capture_output=True, timeout=20)  # fmt: skip
            if proc.returncode != 0:
                raise NetnsError(f"nft in {ns}: {proc.stderr.strip()}")

    def _firewall(self, src: int, dst: int, add: bool) -> None:
        ns, addr = self.namespace(dst), self.ip(src)
        if self.firewall == "nft":
            verb = "add" if add else "delete"
            _run("ip", "netns", "exec", ns, "nft", verb, "element", "inet", NFT_TABLE, "blocked", f"{{ {addr} }}")
        else:
            _run("ip", "netns", "exec", ns, "iptables", "-w", "-I" if add else "-D", "INPUT", "-s", addr,
                 "-j", "DROP")  # fmt: skip

    def block(self, src: int, dst: int) -> None:
        """Silently drop every packet from member src to member dst (one direction)."""
        if (src, dst) not in self.blocked_links:
            self._firewall(src, dst, add=True)
            self.blocked_links.add((src, dst))

    def unblock(self, src: int, dst: int) -> None:
        if (src, dst) in self.blocked_links:
            self._firewall(src, dst, add=False)
            self.blocked_links.discard((src, dst))

    def cut(self, a: int, b: int) -> None:
        """Both directions between a and b."""
        self.block(a, b)
        self.block(b, a)

    def partition(self, *groups: Iterable[int]) -> None:
        """Cut every link between members of different groups (members in no group keep their links)."""
        sets = [set(g) for g in groups]
        for i, g in enumerate(sets):
            for h in sets[i + 1:]:
                for a in g:
                    for b in h:
                        self.cut(a, b)

    def isolate(self, k: int) -> None:
        """Member k hears nobody and nobody hears it."""
        self.partition([k], [m for m in range(1, self.n + 1) if m != k])

    def bridge_through(self, middle: int) -> None:
        """Every member still hears ``middle``; all the others are cut from each other."""
        ends = [m for m in range(1, self.n + 1) if m != middle]
        self.partition(*([e] for e in ends))

    def heal(self) -> None:
        for src, dst in sorted(self.blocked_links):
            self.unblock(src, dst)

    def describe(self) -> str:
        return ", ".join(f"{s}->{d}" for s, d in sorted(self.blocked_links)) or "none"


# ---------------------------------------------------------------------- Proconsul in namespaces


@dataclass
class NetnsServer(Server):
    """A server whose process runs in namespace ``k``: its address is its own, its ports are the defaults."""

    net: Netns | None = None

    @property
    def host(self) -> str:
        assert self.net is not None
        return self.net.ip(self.k)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.server_port}"

    def argv(self) -> list[str]:
        assert self.net is not None
        argv = [BIN, "agent", "-node", self.name, "-data-dir", str(self.data_dir), "-http-port", str(self.http_port),
                "-dns-port", "-1", "-encrypt", GOSSIP_KEY, "-server", "-insecure", "-bootstrap-expect", str(self.bootstrap_expect), "-bind", self.host,
                "-advertise", self.host, "-client", self.host, "-server-port", str(self.server_port),
                "-retry-interval", "1s"]  # fmt: skip
        for addr in self.join:
            argv += ["-retry-join", addr]
        if os.environ.get("CLUSTER_LOG_LEVEL"):
            argv += ["-log-level", os.environ["CLUSTER_LOG_LEVEL"]]
        return self.net.argv_in(self.k, argv + self.extra_args)


class NetnsCluster(Cluster):
    """n Proconsul servers, one per namespace of ``net`` (which it creates and, on ``close``, destroys)."""

    def __init__(self, n: int, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.net = Netns(n).create()
        self.servers: list[Server] = []
        self.clients: list[Server] = []
        addresses = [f"{self.net.ip(k)}:{SERVER_PORT}" for k in range(1, n + 1)]
        for k in range(1, n + 1):
            self.servers.append(NetnsServer(
                k=k, name=f"s{k}", data_dir=workdir / f"s{k}", server_port=SERVER_PORT, http_port=HTTP_PORT,
                join=[a for a in addresses if a != addresses[k - 1]], bootstrap_expect=n,
                log_path=workdir / f"s{k}.log", net=self.net,
            ))  # fmt: skip

    def close(self) -> None:
        for s in self.servers:
            with contextlib.suppress(Exception):
                s.kill()
        self.net.close()

    def add_client(self, name: str) -> Server:
        raise NotImplementedError("client agents are not placed in namespaces yet")

    def diagnostics(self) -> str:
        parts = [f"namespaces {self.net.namespace(1)}..; blocked links: {self.net.describe()}"]
        for s in self.servers:
            state = "running" if s.alive else f"exited {s.proc.returncode if s.proc else '-'}"
            parts.append(f"----- {s.name} ({s.address}, {state}) log tail:\n{s.log_tail()}")
        return "\n".join(parts)

    # The faults, by server rather than by position.
    def isolate_server(self, server: Server) -> None:
        self.net.isolate(server.k)

    def bridge_through(self, middle: Server) -> None:
        self.net.bridge_through(middle.k)

    def heal(self) -> None:
        self.net.heal()


# ---------------------------------------------------------------------- what a scenario measures


def applied_index(server: Server, timeout: float = 2.0) -> int:
    """The last log index the server has applied to its state store (its own view, never forwarded)."""
    reply = server.get("/v1/operator/raft/configuration?stale", timeout=timeout)
    if reply.status != 200:
        raise OSError(f"{server.name}: {reply.status} {reply.text}")
    return int(reply.json()["Index"])


def claims_leadership(server: Server) -> bool:
    """Whether the server names itself as the leader."""
    return server.leader_address() == server.address


@dataclass
class LeaderWatch:
    """Samples, every ``interval`` seconds, which servers claim to lead (each asked about itself), and
    counts leadership acquisitions: a server that claims to lead and did not in its previous sample. An
    election that loses and regains the same leader shows up too (it stops claiming while it campaigns)."""

    servers: Sequence[Any]
    claims: Any = None  # (member) -> bool; default: Proconsul's /v1/status/leader
    interval: float = 0.05
    acquisitions: list[tuple[float, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> LeaderWatch:
        self._thread = threading.Thread(target=self._run, name="leader-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> LeaderWatch:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        claims = self.claims or claims_leadership
        previous: dict[int, bool] = {}
        first = True
        while not self._stop.is_set():
            for i, s in enumerate(self.servers):
                try:
                    now_claims = bool(claims(s))
                except (OSError, ValueError, KeyError):
                    continue  # unknown this round: keep the previous sample
                if now_claims and not previous.get(i, False) and not first:
                    with self._lock:
                        self.acquisitions.append((time.monotonic(), getattr(s, "name", str(i))))
                previous[i] = now_claims
            first = False
            self._stop.wait(self.interval)

    def changes_since(self, t: float) -> list[tuple[float, str]]:
        with self._lock:
            return [a for a in self.acquisitions if a[0] >= t]


def measure_heal(members: Sequence[Any], healed_at: float, applied: Any = applied_index,
                 timeout: float = 120.0, interval: float = 0.02) -> float:  # fmt: skip
    """Seconds from ``healed_at`` until every member has applied the highest index any member had applied
    right after the heal (so everything committed while the link was down); ``applied(member)`` -> index."""
    target = max(_retry_applied(applied, m) for m in members)
    behind = list(members)
    deadline = healed_at + timeout
    while behind:
        still = []
        for m in behind:
            try:
                if applied(m) < target:
                    still.append(m)
            except (OSError, ValueError, KeyError):
                still.append(m)
        behind = still
        if not behind:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"{[getattr(m, 'name', m) for m in behind]} had not applied index {target} "
                                 f"{timeout:g}s after the heal")  # fmt: skip
        time.sleep(interval)
    return time.monotonic() - healed_at


def _retry_applied(applied: Any, member: Any) -> int:
    return int(wait_for("an applied index", lambda: applied(member) or None, 10, interval=0.02))
