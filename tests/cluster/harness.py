"""Real Proconsul server processes on loopback, started as a user starts them, behind a fault relay.

``Cluster(n, workdir)`` runs ``proconsul agent -server -bootstrap-expect n`` n times, each in its own process
group with its own data dir, loopback IPs (see ``relay``) and free ports, and ``close()`` SIGKILLs every
process group it started, whatever state the test left them in. Every wait polls with a deadline.

HTTP here is synchronous (urllib): the harness is driven from the test's thread, while the concurrent load
(``workload``) runs on its own event loop in another thread.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from registry.testing import GOSSIP_KEY
from tests.cluster.relay import FaultRelay, advertise_ip, bind_ip

BIN = str(Path(sys.executable).with_name("proconsul"))
T = TypeVar("T")


class ClusterError(AssertionError):
    """A cluster did not reach the state a test waited for (with the details needed to see why)."""


def wait_for(what: str, fn: Callable[[], T | None], timeout: float, interval: float = 0.05) -> T:
    """Poll ``fn`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = fn()
            if value:
                return value
        except (OSError, ValueError, KeyError) as exc:
            last_exc = exc
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout:g}s waiting for {what}"
                               + (f" (last error: {last_exc!r})" if last_exc else ""))  # fmt: skip
        time.sleep(interval)


# ---------------------------------------------------------------------- HTTP


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body) if self.body.strip() else None

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    @property
    def index(self) -> int:
        return int(self.headers.get("X-Consul-Index", "0"))


def http(method: str, url: str, body: bytes | None = None, timeout: float = 10.0, token: str = "") -> Reply:
    """One request (with ``token`` as X-Consul-Token when given); HTTP errors are returned, connection
    failures raise OSError."""
    req = urllib.request.Request(url, data=body, method=method, headers={"X-Consul-Token": token} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Reply(resp.status, resp.read(), dict(resp.headers.items()))
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.read(), dict(exc.headers.items()))
    except urllib.error.URLError as exc:
        raise OSError(f"{method} {url}: {exc.reason}") from exc


def kv_value(entry: dict[str, Any]) -> str:
    return base64.b64decode(entry["Value"]).decode() if entry.get("Value") else ""


# ---------------------------------------------------------------------- ports


def _bindable(ip: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((ip, port))
        except OSError:
            return False
    return True


def free_port(*ips: str) -> int:
    """A port the OS gave us on the first IP that is also free on all the others."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind((ips[0], 0))
            port = int(s.getsockname()[1])
        if all(_bindable(ip, port) for ip in ips[1:]):
            return port
    raise OSError(f"no common free port on {ips}")


# ---------------------------------------------------------------------- processes


@dataclass
class Server:
    """One agent process: a server (``k`` >= 1, behind the relay) or a client agent (``server=False``)."""

    k: int  # servers: 1-based position, their IPs are advertise_ip(k) / bind_ip(k)
    name: str
    data_dir: Path
    server_port: int
    http_port: int
    join: list[str]
    bootstrap_expect: int
    log_path: Path
    server: bool = True
    serf_port: int = 0  # the gossip pool's port (stable across restarts: members know each other by address)
    extra_args: list[str] = field(default_factory=list)
    token: str = ""  # what the harness's own requests present, on a cluster with ACLs on
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def host(self) -> str:
        """Where its HTTP API listens (clients dial servers from 127.0.0.1, which the relay never faults)."""
        return advertise_ip(self.k) if self.server else "127.0.0.1"

    @property
    def address(self) -> str:
        """The Raft address peers dial (the relay in front of it)."""
        return f"{advertise_ip(self.k)}:{self.server_port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def http_addr(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def node_id(self) -> str:
        return (self.data_dir / "node-id").read_text().strip()

    def argv(self) -> list[str]:
        argv = [BIN, "agent", "-node", self.name, "-data-dir", str(self.data_dir), "-http-port", str(self.http_port),
                "-dns-port", "-1", "-encrypt", GOSSIP_KEY]  # fmt: skip
        # Gossip goes straight between agents (the relay carries the server port's TCP only): a server's pool
        # binds its advertise address; joins are retried every second rather than Consul's 30 s.
        argv += ["-serf-lan-port", str(self.serf_port), "-retry-interval", "1s"]
        if self.server:
            argv += ["-server", "-insecure", "-bootstrap-expect", str(self.bootstrap_expect), "-bind", bind_ip(self.k),
                     "-advertise", advertise_ip(self.k), "-client", advertise_ip(self.k),
                     "-server-port", str(self.server_port), "-serf-lan-bind", advertise_ip(self.k)]  # fmt: skip
        else:
            argv += ["-bind", "127.0.0.1", "-client", "127.0.0.1"]
        for addr in self.join:
            argv += ["-retry-join", addr]
        if os.environ.get("CLUSTER_LOG_LEVEL"):
            argv += ["-log-level", os.environ["CLUSTER_LOG_LEVEL"]]
        return argv + self.extra_args

    def start(self) -> None:
        assert not self.alive, f"{self.name} is already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        log.write(f"\n===== start #{self.starts + 1}: {' '.join(self.argv())}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)  # fmt: skip
        log.close()
        self.starts += 1

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group: no shutdown code runs, unsynced data is gone."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (graceful shutdown, as Ctrl-C) and wait; returns the exit code."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ClusterError(f"{self.name} did not stop within {timeout:g}s of SIGTERM") from None

    def get(self, path: str, timeout: float = 10.0) -> Reply:
        return http("GET", self.url + path, timeout=timeout, token=self.token)

    def put(self, path: str, body: bytes | str = b"", timeout: float = 10.0) -> Reply:
        return http("PUT", self.url + path, body.encode() if isinstance(body, str) else body, timeout=timeout,
                    token=self.token)  # fmt: skip

    def leader_address(self) -> str:
        """What this server believes: the leader's Raft address, or "" (raises OSError when down)."""
        reply = self.get("/v1/status/leader", timeout=3)
        return str(reply.json() or "") if reply.status == 200 else ""

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def make_pki(workdir: Path) -> dict[str, Path]:
    """A CA, a server and a client certificate made with ``proconsul tls``, as the README tells a user to,
    and the agent config files (Consul's ``tls`` block) for each role: mutual TLS on the server port and
    servers checked for ``server.dc1.consul``."""
    workdir.mkdir(parents=True, exist_ok=True)
    for args in (("ca", "create"), ("cert", "create", "-server"), ("cert", "create", "-client")):
        out = subprocess.run([BIN, "tls", *args], cwd=workdir, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise ClusterError(f"proconsul tls {' '.join(args)}: {out.stderr}")
    configs = {}
    for role, cert in (("server", "dc1-server-consul-0"), ("client", "dc1-client-consul-0")):
        path = workdir / f"tls-{role}.json"
        path.write_text(json.dumps({"tls": {
            "defaults": {"ca_file": str(workdir / "consul-agent-ca.pem"), "cert_file": str(workdir / f"{cert}.pem"),
                         "key_file": str(workdir / f"{cert}-key.pem"), "verify_incoming": True,
                         "verify_outgoing": True},
            "internal_rpc": {"verify_server_hostname": True}}}))  # fmt: skip
        configs[role] = path
    return configs


class Cluster:
    """n servers, a relay in front of each; the test drives faults through ``relay``. With ``tls``, every
    agent (servers and the clients added later) talks mutual TLS on the server port (``make_pki``)."""

    def __init__(self, n: int, workdir: Path, relay: FaultRelay | None = None, tls: bool = False) -> None:
        self.workdir = workdir
        self.relay = relay or FaultRelay()
        self.servers: list[Server] = []
        self.clients: list[Server] = []
        self.tls_configs = make_pki(workdir / "pki") if tls else {}
        ports = [free_port(advertise_ip(k), bind_ip(k)) for k in range(1, n + 1)]
        addresses = [f"{advertise_ip(k)}:{p}" for k, p in zip(range(1, n + 1), ports, strict=True)]
        for k, port in zip(range(1, n + 1), ports, strict=True):
            self.servers.append(Server(
                k=k, name=f"s{k}", data_dir=workdir / f"s{k}", server_port=port,
                http_port=free_port(advertise_ip(k)), join=[a for a in addresses if a != addresses[k - 1]],
                bootstrap_expect=n, log_path=workdir / f"s{k}.log", serf_port=free_port(advertise_ip(k)),
            ))  # fmt: skip
            self.relay.add_server(k, port)
            if tls:
                self.servers[-1].extra_args += ["-config-file", str(self.tls_configs["server"])]

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for s in self.servers + self.clients:
            with contextlib.suppress(Exception):
                s.kill()
        self.relay.close()

    # ------------------------------------------------------------------ lifecycle

    def add_client(self, name: str) -> Server:
        """A client agent (not started): no -server, -retry-join at the servers' server ports."""
        agent = Server(k=0, name=name, data_dir=self.workdir / name, server_port=0, http_port=free_port("127.0.0.1"),
                       join=[s.address for s in self.servers], bootstrap_expect=0, log_path=self.workdir / f"{name}.log",
                       server=False, serf_port=free_port("127.0.0.1"))  # fmt: skip
        if self.tls_configs:
            agent.extra_args += ["-config-file", str(self.tls_configs["client"])]
        self.clients.append(agent)
        return agent

    def start(self, timeout: float = 60.0) -> Server:
        for s in self.servers:
            s.start()
        return self.wait_leader(timeout=timeout)

    @property
    def alive(self) -> list[Server]:
        return [s for s in self.servers if s.alive]

    def by_address(self, address: str) -> Server | None:
        return next((s for s in self.servers if s.address == address), None)

    def by_node_id(self, node_id: str) -> Server:
        return next(s for s in self.servers if s.node_id == node_id)

    def others(self, server: Server) -> list[Server]:
        return [s for s in self.servers if s is not server]

    def _agreed_leader(self, among: Iterable[Server]) -> Server | None:
        among = [s for s in among if s.alive]
        views = []
        for s in among:
            try:
                views.append(s.leader_address())
            except OSError:
                views.append("")
        if not views or len(set(views)) != 1 or not views[0]:
            return None
        leader = self.by_address(views[0])
        return leader if leader is not None and leader in among else None

    def wait_leader(self, among: Iterable[Server] | None = None, timeout: float = 30.0,
                    exclude: Server | None = None) -> Server:  # fmt: skip
        """Every running server in ``among`` (default: all running) names the same leader, one of them,
        and it accepts a write."""
        group = list(among) if among is not None else None

        def ready() -> Server | None:
            candidates = group if group is not None else self.alive
            leader = self._agreed_leader(candidates)
            if leader is None or leader is exclude:
                return None
            reply = leader.put("/v1/kv/_harness/probe", str(time.time()), timeout=5)
            return leader if reply.status == 200 and reply.body.strip() == b"true" else None

        return wait_for("an agreed leader that accepts writes", ready, timeout, interval=0.1)

    def wait_caught_up(self, servers: Iterable[Server] | None = None, timeout: float = 30.0) -> int:
        """Every server's applied state reaches the leader's current commit (by X-Consul-Index of the
        KV table after a write through the leader); returns that index."""
        leader = self.wait_leader(timeout=timeout)
        reply = leader.put("/v1/kv/_harness/sync", str(time.time()))
        assert reply.status == 200, reply.text
        target = leader.get("/v1/kv/_harness/sync?consistent").index
        group = list(servers) if servers is not None else self.alive
        for s in group:
            wait_for(f"{s.name} to apply index {target}",
                     lambda s=s: s.get("/v1/kv/_harness/sync?stale", timeout=3).index >= target, timeout)  # fmt: skip
        return target

    def raft_configuration(self, via: Server) -> list[dict[str, Any]]:
        reply = via.get("/v1/operator/raft/configuration")
        if reply.status != 200:
            raise ClusterError(f"raft configuration from {via.name}: {reply.status} {reply.text}")
        return list(reply.json()["Servers"])

    def diagnostics(self) -> str:
        parts = [f"relay links blocked: {self.relay.blocked()}; bytes forwarded per link: {self.relay.forwarded}"]
        for s in self.servers + self.clients:
            state = "running" if s.alive else f"exited {s.proc.returncode if s.proc else '-'}"
            parts.append(f"----- {s.name} ({s.address}, http {s.http_addr}, {state}) log tail:\n{s.log_tail()}")
        return "\n".join(parts)


def run_cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=timeout)
