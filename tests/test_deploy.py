"""The systemd units in deploy/: hardened as documented, and their ExecStart command lines -- run as systemd
would run them, with a fake ``$NOTIFY_SOCKET`` -- report READY=1 only once the agent answers HTTP (and a
server has a leader), say STOPPING=1 on the way down, create their data directory 0700, and a client agent
stopped with SIGTERM leaves the catalog (``leave_on_terminate``)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.testing import GOSSIP_KEY, free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = str(Path(sys.executable).with_name("proconsul"))
pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file's sections -> key -> values (a key may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.mark.parametrize("role", ["server", "client"])
def test_units_are_hardened_as_documented(role: str) -> None:
    service = parse_unit(ROOT / "deploy" / f"proconsul-{role}.service")["Service"]
    want = {"Type": "notify", "User": "proconsul", "ProtectSystem": "strict", "ReadWritePaths": "/var/lib/proconsul",
            "NoNewPrivileges": "yes", "PrivateTmp": "yes", "LimitNOFILE": "65536", "KillSignal": "SIGTERM",
            "Restart": "on-failure"}  # fmt: skip
    assert {k: service[k][-1] for k in want} == want
    assert shlex.split(service["ExecReload"][0])[1:] == ["-HUP", "$MAINPID"]
    assert shlex.split(service["ExecStart"][0]) == ["/usr/local/bin/proconsul", "agent", "-config-dir=/etc/proconsul.d/"]


@pytest.mark.parametrize("role", ["server", "client"])
def test_shipped_configs_load(role: str) -> None:
    from registry.config import Config, apply_mapping, load_file

    cfg = Config()
    apply_mapping(cfg, load_file(ROOT / "deploy" / "json" / f"{role}.json"), role)
    assert not cfg.unknown_keys
    assert cfg.server is (role == "server") and cfg.data_dir == "/var/lib/proconsul"


class Notifications:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def next(self, timeout: float) -> str:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode()

    def close(self) -> None:
        self.sock.close()


def http_get(port: int, path: str) -> tuple[int, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:  # noqa: S310 - loopback
        return resp.status, json.loads(resp.read() or b"null")


def start_unit(role: str, config: dict[str, object], workdir: Path) -> tuple[subprocess.Popen[bytes], Notifications]:
    """The unit's ExecStart with its paths substituted: this checkout's binary and a config dir of ours."""
    exec_start = parse_unit(ROOT / "deploy" / f"proconsul-{role}.service")["Service"]["ExecStart"][0]
    conf_dir = workdir / f"{role}.d"
    conf_dir.mkdir()
    (conf_dir / "proconsul.json").write_text(json.dumps(config))
    argv = [arg.replace("/usr/local/bin/proconsul", BIN).replace("/etc/proconsul.d/", f"{conf_dir}/")
            for arg in shlex.split(exec_start)]  # fmt: skip
    notes = Notifications(workdir / f"{role}.sock")
    log = (workdir / f"{role}.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, "NOTIFY_SOCKET": str(notes.path)})  # fmt: skip
    log.close()
    return proc, notes


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="pc-units-", dir="/tmp"))  # short: a unix socket path has 108 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_units_command_lines_boot_ready_and_a_client_leaves_on_sigterm(workdir: Path) -> None:
    s_http, s_rpc, c_http = free_port(), free_port(), free_port()
    server_cfg = {"node_name": "s1", "server": True, "bootstrap_expect": 1, "data_dir": str(workdir / "s1-data"),
                  "bind_addr": "127.0.0.1", "client_addr": "127.0.0.1", "insecure": True, "encrypt": GOSSIP_KEY,
                  "ports": {"http": s_http, "server": s_rpc, "dns": -1, "serf_lan": free_port()}}  # fmt: skip
    client_cfg = {"node_name": "c1", "data_dir": str(workdir / "c1-data"), "bind_addr": "127.0.0.1",
                  "client_addr": "127.0.0.1", "retry_join": [f"127.0.0.1:{s_rpc}"], "encrypt": GOSSIP_KEY,
                  "ports": {"http": c_http, "dns": -1, "serf_lan": free_port()}}  # fmt: skip
    procs: list[subprocess.Popen[bytes]] = []
    try:
        server, s_notes = start_unit("server", server_cfg, workdir)
        procs.append(server)
        assert s_notes.next(60) == "READY=1"
        # READY=1 came after the HTTP API answers and a leader is known.
        assert http_get(s_http, "/v1/status/leader")[1] == f"127.0.0.1:{s_rpc}"
        client, c_notes = start_unit("client", client_cfg, workdir)
        procs.append(client)
        assert c_notes.next(60) == "READY=1"
        assert http_get(c_http, "/v1/agent/self")[0] == 200
        deadline = time.monotonic() + 20
        while "c1" not in {n["Node"] for n in http_get(s_http, "/v1/catalog/nodes")[1]}:  # type: ignore[union-attr,index]
            assert time.monotonic() < deadline, "the client never registered"
            time.sleep(0.1)
        for d in ("s1-data", "c1-data"):
            assert stat.S_IMODE((workdir / d).stat().st_mode) == 0o700

        client.send_signal(signal.SIGTERM)
        assert client.wait(30) == 0
        assert c_notes.next(5) == "STOPPING=1"
        # leave_on_terminate (a client's default): gone from the catalog, not left to fail its checks.
        assert "c1" not in {n["Node"] for n in http_get(s_http, "/v1/catalog/nodes")[1]}  # type: ignore[union-attr,index]
        # And left in the gossip pool (Consul lists a left member, status 3, until it is reaped).
        status = {m["Name"]: m["Status"] for m in http_get(s_http, "/v1/agent/members")[1]}  # type: ignore[union-attr,index]
        assert status.get("c1") == 3, status

        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
        assert s_notes.next(5) == "STOPPING=1"
        # A server stopped by SIGTERM keeps its Raft state and its place (leave_on_terminate false).
        assert (workdir / "s1-data" / "node-id").exists()
    except BaseException:
        for role in ("server", "client"):
            log = workdir / f"{role}.log"
            if log.exists():
                print(f"===== {role}\n{log.read_text(errors='replace')[-4000:]}")
        raise
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
