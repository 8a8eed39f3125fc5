"""Shared helpers for the benchmarks: tools, the machine, spawning agents, HTTP calls and the docs table.

Nothing here measures anything; each ``bench/*.py`` module does its own measuring and prints its own figures.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DOCS = ROOT / "docs" / "benchmarks.md"
DATE = time.strftime("%Y-%m-%d")


# ---------------------------------------------------------------------- tools and the machine


def _find(binary: str) -> str | None:
    # Debian puts daemons such as knotd in /usr/sbin, which is not always on a user's PATH.
    return shutil.which(binary) or (f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").exists() else None)


def ensure_tool(binary: str, package: str) -> str:
    """Return the path of ``binary``, installing Debian's ``package`` first when it is missing."""
    path = _find(binary)
    if path:
        return path
    print(f"# {binary} missing: apt-get install -y {package}", flush=True)
    install = ["apt-get", "install", "-y", "-qq", package]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
    if subprocess.run(install, **quiet).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(install, check=True, stdout=subprocess.DEVNULL, env=env)
    path = _find(binary)
    if not path:
        raise SystemExit(f"{binary} is still missing after installing {package}")
    return path


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def code_version() -> str:
    """The commit being measured, and whether the server's code differs from it in the work tree."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "registry", "dns", "ca", "connect_proxy"],
                               cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit"
    return f"commit {head}" + (" plus uncommitted changes to the server's code" if dirty else "")


def machine() -> dict[str, str]:
    return {"nproc": str(os.cpu_count()), "cpu": cpu_model(), "load": loadavg(), "code": code_version()}


def busy_fraction(interval: float = 1.0) -> float:
    """Fraction of all cores busy over ``interval`` seconds, from /proc/stat."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields), idle

    t0, i0 = sample()
    time.sleep(interval)
    t1, i1 = sample()
    total = t1 - t0
    return 1.0 - (i1 - i0) / total if total else 0.0


def wait_for_quiet_machine(max_busy: float = 0.15, timeout: float | None = None) -> float:
    """Wait until other work (e.g. someone's test run) leaves the cores idle; return the last busy fraction.

    The benchmark pins its server and its load generator to one core each, so anything else running skews
    it. After ``timeout`` (default: $BENCH_QUIET_TIMEOUT or 120 s) it goes ahead and says so, rather than
    never measuring.
    """
    if timeout is None:
        timeout = float(os.environ.get("BENCH_QUIET_TIMEOUT", "120"))
    deadline = time.monotonic() + timeout
    busy = busy_fraction()
    while busy > max_busy and time.monotonic() < deadline:
        print(f"# machine busy ({busy:.0%} of cores, load {loadavg()}); waiting", flush=True)
        time.sleep(4)
        busy = busy_fraction()
    if busy > max_busy:
        print(f"# WARNING: machine still busy ({busy:.0%} of cores); measuring anyway", flush=True)
    return busy


def cpu_snapshot(exclude: set[int]) -> dict[int, int]:
    """CPU ticks used so far by each user-space process but ``exclude`` and this one's own family."""
    me = os.getpid()
    out: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid in exclude or pid == me:
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if pid == 2 or fields[1] == "2" or int(fields[1]) == me:  # kernel threads; our own load generator
            continue
        out[pid] = int(fields[11]) + int(fields[12])
    return out


def others_cpu_seconds(before: dict[int, int], after: dict[int, int]) -> float:
    """CPU seconds other processes used between two snapshots: how much other work competed with a run.

    Processes that lived through the run count their growth, new ones their whole time; ones that ended
    during it are missed (their time is only visible in a parent's reaped-children figure, which would count
    a whole test run's time at once).
    """
    ticks = sum(t - before.get(pid, 0) for pid, t in after.items() if t >= before.get(pid, 0))
    return ticks / os.sysconf("SC_CLK_TCK")


def raise_nofile(want: int = 65536) -> int:
    """Raise this process's open-file limit as far as allowed (root may raise the hard limit too)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target_hard in (max(hard, want), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, target_hard), target_hard))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ---------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def taskset(cpu: int | None) -> list[str]:
    if cpu is None or shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        return []
    return ["taskset", "-c", str(cpu)]


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    port: int
    name: str

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far, from /proc/<pid>/stat."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def affinity(self) -> str:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list"):
                return line.split(":", 1)[1].strip()
        return "?"

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def spawn_server(
    name: str,
    argv: Sequence[str],
    port: int,
    cpu: int | None,
    ready_path: str,
    nofile: int | None = None,
    timeout: float = 20.0,
) -> Proc:
    """Start a server process pinned to ``cpu`` and wait until ``GET ready_path`` answers 200."""
    preexec: Callable[[], Any] | None = None
    if nofile is not None:
        want = nofile

        def preexec() -> None:  # runs in the child before exec: the limit is inherited by the server
            raise_nofile(want)

    log = open(f"/tmp/bench-{name}-{port}.log", "wb")  # noqa: SIM115 - handed to the child
    popen = subprocess.Popen([*taskset(cpu), *argv], stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec)
    proc = Proc(popen, port, name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise SystemExit(f"{name} exited with {popen.returncode}; see {log.name}")
        try:
            if http("GET", proc.url + ready_path, timeout=1)[0] == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.05)
    proc.stop()
    raise SystemExit(f"{name} did not answer on port {port} within {timeout}s; see {log.name}")


def spawn_agent(cpu: int | None, nofile: int | None = None, config_files: Sequence[str] = (),
                name: str = "proconsul", max_conns_per_client: int | None = None) -> Proc:  # fmt: skip
    """The agent exactly as a user starts it: ``proconsul agent -dev`` (on uvloop, as the CLI runs), with
    ``config_files``. ``max_conns_per_client`` sets Consul's ``limits.http_max_conns_per_client`` (0: no
    limit) for loads that hold more than its default 200 connections from one IP."""
    port = free_port()
    argv = [str(BIN / "proconsul"), "agent", "-dev", "-serf-lan-port", "0", "-http-port", str(port), "-dns-port", "-1"]
    for path in config_files:
        argv += ["-config-file", path]
    if max_conns_per_client is not None:
        with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="proconsul-limits-", delete=False) as f:
            json.dump({"limits": {"http_max_conns_per_client": max_conns_per_client}}, f)
        argv += ["-config-file", f.name]
    return spawn_server(name, argv, port, cpu, "/v1/status/leader", nofile=nofile)


def accept_queue(port: int) -> int:
    """Connections waiting in the accept queue of the listener on ``port`` (from /proc/net/tcp)."""
    hexport = f":{port:04X}"
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if parts[1].endswith(hexport) and parts[3] == "0A":  # LISTEN: rx_queue is the accept backlog
                return int(parts[4].split(":")[1], 16)
    return 0


async def drain_accept_queue(port: int, timeout: float = 10.0) -> None:
    """Wait until the server on ``port`` has accepted every pending connection (or ``timeout``)."""
    import asyncio

    deadline = time.monotonic() + timeout
    while accept_queue(port) and time.monotonic() < deadline:
        await asyncio.sleep(0.002)


def wait_idle(proc: Proc, quiet: float = 0.5, timeout: float = 60.0) -> bool:
    """Wait until ``proc`` uses (almost) no CPU for ``quiet`` seconds: it has handled everything sent to it."""
    deadline = time.monotonic() + timeout
    last = proc.cpu_seconds()
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = proc.cpu_seconds()
        if now - last <= 0.02 * quiet:
            return True
        last = now
    return False


# ---------------------------------------------------------------------- HTTP


def http(method: str, url: str, body: Any = None, timeout: float = 10.0,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    """One request with the standard library (no Accept-Encoding, like wrk): (status, headers, body)."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


def http_body(method: str, url: str, body: Any = None, timeout: float = 10.0) -> tuple[int, bytes]:
    """``http`` without the headers: (status, body)."""
    status, _, data = http(method, url, body, timeout)
    return status, data


def wait_until(what: str, fn: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll ``fn`` every 50 ms until it returns something true (returned); connection errors and half-formed
    answers count as not yet. Exits with a message after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = fn()
            if value:
                return value
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def register_instance(
    base: str, service: str, i: int, tags: Sequence[str] = (), node: str | None = None, token: str = ""
) -> None:
    """Register instance ``i`` of ``service`` on its own node with a passing check, through /v1/catalog/register."""
    node = node or f"{service}-node-{i}"
    sid = f"{service}-{i}"
    payload = {
        "Node": node,
        "Address": f"10.0.{i // 250}.{i % 250 + 1}",
        "Service": {"ID": sid, "Service": service, "Port": 8080, "Tags": list(tags)},
        "Check": {
            "CheckID": f"service:{sid}",
            "Name": f"{service} alive",
            "Status": "passing",
            "ServiceID": sid,
        },
    }
    status, _, out = http("PUT", base + "/v1/catalog/register", payload,
                          headers={"X-Consul-Token": token} if token else None)  # fmt: skip
    if status != 200:
        raise SystemExit(f"register {sid} failed: {status} {out[:200]!r}")


# ---------------------------------------------------------------------- figures


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of ``values``."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(-(-q * len(ordered) // 100)) - 1))
    return ordered[k]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def markdown_table(rows: Sequence[tuple[str, str, str, str]]) -> str:
    lines = ["| figure | measured | target | result |", "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def machine_line(m: dict[str, str]) -> str:
    return (f"Date {DATE}; machine: {m['nproc']} cores, {m['cpu']}; load average at the time {m['load']}; "
            f"code: {m['code']}.")  # fmt: skip


def update_docs_section(title: str, body: str, path: Path = DOCS) -> None:
    """Put a benchmark's output into the ``## title`` section of docs/benchmarks.md, keeping everything else.

    The output goes between two comment markers, so notes written by hand in the same section (profiles,
    findings) survive the next run; a section without the markers is replaced up to the next ``## ``, and a
    missing one is appended. Other benchmarks (DNS, CA, ...) own other sections of the same file.
    """
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    begin, end = f"<!-- bench output: {title} -->", f"<!-- end of bench output: {title} -->"
    generated = f"{begin}\n{body.strip()}\n{end}"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    found = pattern.search(text)
    if found is None:
        text = text.rstrip("\n") + f"\n\n## {title}\n\n{generated}\n"
    elif begin in found.group(0) and end in found.group(0):
        section = found.group(0)
        a, b = section.index(begin), section.index(end) + len(end)
        text = text[: found.start()] + section[:a] + generated + section[b:] + text[found.end() :]
    else:
        text = text[: found.start()] + f"## {title}\n\n{generated}\n\n" + text[found.end() :]
        text = text.rstrip("\n") + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_section(title: str, body: str, path: Path = DOCS) -> None:
    """Replace the ``## title`` section (up to the next ``## ``) and leave every other section alone."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
