"""The `proconsul` command as a user runs it: a real `agent -dev` process and the client verbs.

The client verbs run in this process (``tests.cli_run``: the console script's ``main(argv)`` with its own
stdin, stdout, stderr and environment), which checks the same output and exit codes in milliseconds instead of
a process start each; ``test_client_verbs_as_real_processes`` runs each family here as the console script,
and the tests of the agent's own start, stop and leave use real processes throughout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.testing import free_port
from tests.cli_run import BIN, run_cli, run_process

__all__ = ["BIN", "run", "wait_http"]


def run(*args: str, env: dict | None = None, input: bytes | None = None) -> subprocess.CompletedProcess:  # noqa: A002
    """``proconsul <args>`` in this process, with ``env`` added to this process's environment."""
    return run_cli(*args, env={**os.environ, **(env or {})}, input=input)


def wait_http(port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"agent exited early: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/status/leader", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("agent did not start")


@pytest.fixture(scope="module")
def agent_proc() -> Iterator[tuple[int, subprocess.Popen]]:
    port = free_port()
    # The gossip pool on -dev's default port, 8301, as Consul's (the other tests here pick free ones).
    # The log goes to stdout, which nobody reads for the module's life: not a pipe, whose 64 KiB would
    # eventually block the agent's writes (and the agent).
    proc = subprocess.Popen([BIN, "agent", "-dev", "-node", "cli-node", "-http-port", str(port), "-dns-port", "-1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    wait_http(port, proc)
    yield port, proc
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)


def addr(port: int) -> str:
    return f"127.0.0.1:{port}"


def test_version() -> None:
    out = run_process("version")
    assert out.returncode == 0 and out.stdout.decode().startswith("Proconsul v")
    assert run_process("-version").returncode == 0


def test_members_and_catalog(agent_proc) -> None:
    port, _ = agent_proc
    out = run("members", "-http-addr", addr(port))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.decode().splitlines()
    assert lines[0].split() == ["Node", "Address", "Status", "Type", "Build", "Protocol", "DC", "Partition", "Segment"]
    assert lines[1].split()[:4] == ["cli-node", "127.0.0.1:8301", "alive", "server"]
    out = run("catalog", "datacenters", f"--http-addr={addr(port)}")
    assert out.stdout.decode().split() == ["dc1"]
    out = run("catalog", "nodes", env={"CONSUL_HTTP_ADDR": addr(port)})
    assert out.stdout.decode().splitlines()[1].startswith("cli-node")
    out = run("catalog", "services", env={"PROCONSUL_HTTP_ADDR": f"http://{addr(port)}"})
    assert "consul" in out.stdout.decode().split()


def test_services_register_deregister(agent_proc, tmp_path: Path) -> None:
    port, _ = agent_proc
    out = run("services", "register", "-name", "web", "-port", "8080", "-tag", "v1", "-http-addr", addr(port))
    assert out.returncode == 0 and out.stdout.decode().strip() == "Registered service: web"
    definition = tmp_path / "svc.json"
    definition.write_text(json.dumps({"service": {"name": "db", "id": "db1", "port": 5432}}))
    out = run("services", "register", str(definition), "-http-addr", addr(port))
    assert out.returncode == 0, out.stderr
    out = run("catalog", "services", "-tags", "-http-addr", addr(port))
    text = out.stdout.decode()
    assert "web" in text and "v1" in text and "db" in text
    assert run("services", "deregister", "-id", "db1", "-http-addr", addr(port)).returncode == 0
    out = run("services", "deregister", "-id", "nope", "-http-addr", addr(port))
    assert out.returncode == 1 and "Unknown service ID" in out.stderr.decode()
    out = run("services", "register", "-name", "bad", "-port", "99999", "-http-addr", addr(port))
    assert out.returncode == 1 and "Invalid service port" in out.stderr.decode()


def test_kv_commands(agent_proc, tmp_path: Path) -> None:
    port, _ = agent_proc
    a = ["-http-addr", addr(port)]
    out = run("kv", "put", *a, "app/name", "proconsul")
    assert out.stdout.decode().strip() == "Success! Data written to: app/name"
    assert run("kv", "get", *a, "app/name").stdout == b"proconsul\n"
    f = tmp_path / "v.txt"
    f.write_bytes(b"from file")
    run("kv", "put", *a, "app/file", f"@{f}")
    run("kv", "put", *a, "app/stdin", "-", input=b"from stdin")
    out = run("kv", "get", *a, "-recurse", "app/")
    assert out.stdout.decode().splitlines() == ["app/file:from file", "app/name:proconsul", "app/stdin:from stdin"]
    out = run("kv", "get", *a, "-keys", "")
    assert out.stdout.decode().split() == ["app/"]
    detailed = run("kv", "get", *a, "-detailed", "app/name").stdout.decode()
    modify = int(next(line.split()[1] for line in detailed.splitlines() if line.startswith("ModifyIndex")))
    out = run("kv", "put", *a, "-cas", "-modify-index", str(modify + 100), "app/name", "x")
    assert out.returncode == 1 and out.stderr.decode().strip() == "Error! Did not write to app/name: CAS failed"
    out = run("kv", "put", *a, "-cas", f"-modify-index={modify}", "app/name", "y")
    assert out.returncode == 0
    out = run("kv", "get", *a, "missing")
    assert out.returncode == 1 and out.stderr.decode().strip() == "Error! No key exists at: missing"
    out = run("kv", "delete", *a, "-recurse", "app/")
    assert out.stdout.decode().strip() == "Success! Deleted keys with prefix: app/"
    assert run("kv", "get", *a, "app/name").returncode == 1


def test_kv_put_acquire_and_release(agent_proc) -> None:
    import json
    import urllib.request

    port, _ = agent_proc
    a = ["-http-addr", addr(port)]

    def new_session() -> str:
        req = urllib.request.Request(f"http://{addr(port)}/v1/session/create", data=b"{}", method="PUT")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())["ID"]

    s1, s2 = new_session(), new_session()
    out = run("kv", "put", *a, "-acquire", "lock/k", "v")
    assert out.returncode == 1
    assert out.stderr.decode().strip() == "Error! Missing -session (required with -acquire and -release)"
    out = run("kv", "put", *a, "-acquire", f"-session={s1}", "lock/k", "v")
    assert out.stdout.decode().strip() == "Success! Lock acquired on: lock/k"
    detailed = run("kv", "get", *a, "-detailed", "lock/k").stdout.decode()
    assert ["Session", s1] in [line.split() for line in detailed.splitlines()]
    out = run("kv", "put", *a, "-acquire", "-session", s2, "lock/k", "w")
    assert out.returncode == 1 and out.stderr.decode().strip() == "Error! Did not acquire lock"
    out = run("kv", "put", *a, "-release", f"-session={s2}", "lock/k")
    assert out.returncode == 1 and out.stderr.decode().strip() == "Error! Did not release lock"
    out = run("kv", "put", *a, "-release", f"-session={s1}", "lock/k", "v")
    assert out.stdout.decode().strip() == "Success! Lock released on: lock/k"


def test_members_detailed_status_join_and_force_leave_texts(agent_proc) -> None:
    """Consul's members -detailed (every tag, key=value, sorted) and -status (exit 2 when nothing
    matches); join and force-leave with Consul's messages."""
    port, _ = agent_proc
    out = run("members", "-http-addr", addr(port), "-detailed")
    lines = out.stdout.decode().splitlines()
    assert out.returncode == 0 and lines[0].split() == ["Node", "Address", "Status", "Tags"]
    node, address, status, tags = lines[1].split()
    assert (node, address, status) == ("cli-node", "127.0.0.1:8301", "alive")
    pairs = tags.split(",")
    assert pairs == sorted(pairs) and "role=consul" in pairs and "dc=dc1" in pairs and "port=8300" in pairs
    assert run("members", "-http-addr", addr(port), "-status", "^failed$").returncode == 2
    out = run("members", "-http-addr", addr(port), "-status", "(")
    assert out.returncode == 1 and out.stderr.decode().startswith("Failed to compile status regexp")

    out = run("join", "-http-addr", addr(port))
    assert out.returncode == 1 and out.stderr.decode().strip() == "At least one address to join must be specified."
    out = run("join", "-http-addr", addr(port), "127.0.0.1:1")
    err = out.stderr.decode()
    assert out.returncode == 1 and err.startswith("Error joining address '127.0.0.1:1': Unexpected response code: 500")
    assert err.rstrip().endswith("Failed to join any nodes.")
    out = run("join", "-http-addr", addr(port), "127.0.0.1:8301")  # itself: one member answered
    assert out.returncode == 0 and out.stdout.decode().strip() == "Successfully joined cluster by contacting 1 nodes."
    out = run("force-leave", "-http-addr", addr(port), "ghost")
    assert out.returncode == 1
    assert out.stderr.decode().strip() == ("Error force leaving: Unexpected response code: 500 "
                                           "(agent: No node found with name 'ghost')")  # fmt: skip


def test_unreachable_agent_says_what_to_do() -> None:
    out = run("members", "-http-addr", f"127.0.0.1:{free_port()}")
    assert out.returncode == 1
    assert "Is the agent running?" in out.stderr.decode()


def test_unreachable_agent_error_names_the_address_and_the_cause() -> None:
    """The whole message, as the CLI printed it with urllib: the OS's words for the failure, not the library's."""
    port = free_port()
    out = run("kv", "get", "--http-addr", f"127.0.0.1:{port}", "k")
    assert out.returncode == 1
    assert out.stderr.decode() == (f"Error connecting to Proconsul agent at http://127.0.0.1:{port}: "
                                   "[Errno 111] Connection refused\n"
                                   "Is the agent running? Set -http-addr or CONSUL_HTTP_ADDR to point at it.\n")  # fmt: skip


def test_commands_are_registered_explicitly_and_share_the_flag_forms() -> None:
    """Every verb is in one table (no import-time discovery), and every flag takes Consul's two spellings."""
    import argparse

    from registry.cli.app import COMMANDS
    from registry.cli.common import http_config, http_options, opt, parser

    assert sorted(COMMANDS) == ["acl", "agent", "catalog", "config", "connect", "debug", "event", "force-leave", "info",
                                "intention", "join", "keygen", "keyring", "kv", "leave", "lock", "login", "logout",
                                "maint", "members", "monitor", "operator", "reload", "rtt", "services", "snapshot",
                                "tls", "validate", "version", "watch"]  # fmt: skip
    p: argparse.ArgumentParser = parser("proconsul test", "test")
    http_options(p)
    opt(p, "node-meta", action="append", default=[])
    args = p.parse_args(["-http-addr", "h:1", "--token=t", "--datacenter", "dc2", "-stale", "-node-meta=a:b",
                         "--node-meta", "c:d"])  # fmt: skip
    assert args.node_meta == ["a:b", "c:d"]
    cfg = http_config(args)
    assert (cfg.address, cfg.token, cfg.datacenter, cfg.stale) == ("http://h:1", "t", "dc2", True)


def test_python_dash_m_runs_the_cli() -> None:
    out = subprocess.run([sys.executable, "-m", "registry.cli", "version"], capture_output=True, timeout=30)
    assert out.returncode == 0 and out.stdout.decode().startswith("Proconsul v")


def test_second_agent_on_taken_port_fails_fast(agent_proc) -> None:
    port, _ = agent_proc
    started = time.monotonic()
    out = subprocess.run([BIN, "agent", "-dev", "-serf-lan-port", "0", "-http-port", str(port), "-dns-port", "-1"], capture_output=True,
                         timeout=20)  # fmt: skip
    assert out.returncode == 1
    assert time.monotonic() - started < 10
    err = out.stderr.decode()
    assert f"Error starting HTTP listener on 127.0.0.1:{port}" in err and "Address already in use" in err


def test_config_file_and_bad_config(tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "agent.json"
    cfg.write_text(json.dumps({"node_name": "from-file", "ports": {"http": port, "dns": -1},
                               "enable_script_checks": True, "acl": {"enabled": False},
                               "performance": {"raft_multiplier": 1}}))  # fmt: skip
    proc = subprocess.Popen([BIN, "agent", "-dev", "-serf-lan-port", "0", "-config-file", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    try:
        wait_http(port, proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/agent/self") as r:
            me = json.loads(r.read())
        assert me["Config"]["NodeName"] == "from-file" and me["DebugConfig"]["EnableScriptChecks"] is True
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0, "Ctrl-C shuts down cleanly"
    bad = tmp_path / "bad.yaml"
    bad.write_text("ports: [1, 2]\n")
    out = subprocess.run([BIN, "agent", "-dev", "-serf-lan-port", "0", "-config-file", str(bad)], capture_output=True, timeout=20)
    assert out.returncode == 1 and "'ports' expected a map, got 'slice'" in out.stderr.decode()
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"unknown_consul_knob": 1}))  # a key Consul does not have: refused, as Consul does
    out = subprocess.run([BIN, "agent", "-dev", "-serf-lan-port", "0", "-config-file", str(unknown)], capture_output=True, timeout=20)
    assert out.returncode == 1
    assert out.stderr.decode() == f"==> failed to parse {unknown}: 1 error occurred:\n\t* invalid config key unknown_consul_knob\n"
    bad_dns = tmp_path / "dns.yaml"
    bad_dns.write_text("dns_config:\n  udp_answer_limit: -4\n")
    out = subprocess.run([BIN, "agent", "-dev", "-serf-lan-port", "0", "-http-port", str(free_port()), "-dns-port", str(free_port()),
                          "-config-file", str(bad_dns)], capture_output=True, timeout=20)  # fmt: skip
    assert out.returncode == 1 and "dns_config.udp_answer_limit must be an integer" in out.stderr.decode()
    assert "Traceback" not in out.stderr.decode() + out.stdout.decode()
    out = subprocess.run([BIN, "agent", "-server"], capture_output=True, timeout=20)
    assert out.returncode == 1 and "data_dir is required" in out.stderr.decode()


def test_sigterm_shuts_down_cleanly() -> None:
    port = free_port()
    proc = subprocess.Popen([BIN, "agent", "-dev", "-serf-lan-port", "0", "-http-port", str(port), "-dns-port", "-1", "-log-json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    wait_http(port, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    lines = [json.loads(line) for line in proc.stdout.read().decode().splitlines() if line.startswith("{")]
    assert any(e.get("event") == "agent stopped" for e in lines), lines


def test_leave_command() -> None:
    port = free_port()
    proc = subprocess.Popen([BIN, "agent", "-dev", "-serf-lan-port", "0", "-http-port", str(port), "-dns-port", "-1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    wait_http(port, proc)
    out = run_process("leave", "-http-addr", addr(port))
    assert out.returncode == 0 and "Graceful leave complete" in out.stdout.decode()
    assert proc.wait(10) == 0


def test_client_verbs_as_real_processes(agent_proc) -> None:
    """The console script end to end for each client family the other tests here run in this process (members,
    join, catalog, services, kv with stdin), with the address from the environment; output and exit codes."""
    port, _ = agent_proc
    env = {**os.environ, "CONSUL_HTTP_ADDR": addr(port)}
    out = run_process("members", env=env)
    assert out.returncode == 0 and out.stdout.decode().splitlines()[1].split()[:3] == ["cli-node", "127.0.0.1:8301", "alive"]
    out = run_process("join", env=env)
    assert out.returncode == 1 and out.stderr.decode().strip() == "At least one address to join must be specified."
    out = run_process("services", "register", "-name", "proc-web", "-port", "8081", env=env)
    assert out.returncode == 0 and out.stdout.decode().strip() == "Registered service: proc-web"
    assert "proc-web" in run_process("catalog", "services", env=env).stdout.decode().split()
    assert run_process("services", "deregister", "-id", "proc-web", env=env).returncode == 0
    out = run_process("kv", "put", "proc/stdin", "-", input=b"from stdin", env=env)
    assert out.returncode == 0 and out.stdout.decode().strip() == "Success! Data written to: proc/stdin"
    assert run_process("kv", "get", "proc/stdin", env=env).stdout == b"from stdin\n"
    out = run_process("kv", "get", "proc/missing", env=env)
    assert out.returncode == 1 and out.stderr.decode().strip() == "Error! No key exists at: proc/missing"
    assert run_process("kv", "delete", "proc/stdin", env=env).returncode == 0
