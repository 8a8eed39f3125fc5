"""``proconsul intention`` and ``proconsul connect ca`` as a user runs them, against a real
``proconsul agent -dev`` process, checking output and exit codes (check: 0 allowed, 1 denied, 2 error). The
commands run in this process (``tests.cli_run``); the exit-code test and one ``connect ca`` call run the console
script as a real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.testing import free_port
from tests.cli_run import BIN, run_cli, run_process


@pytest.fixture(scope="module")
def addr() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([BIN, "agent", "-dev", "-serf-lan-port", "0", "-node", "cli-connect", "-http-port", str(port), "-dns-port", "-1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 20
    while True:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "agent exited"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/connect/ca/roots", timeout=1) as r:
                if json.loads(r.read())["Roots"]:
                    break
        except OSError:
            pass
        assert time.monotonic() < deadline, "agent did not start"
        time.sleep(0.05)
    yield f"127.0.0.1:{port}"
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)


def run(addr: str, *args: str, process: bool = False) -> subprocess.CompletedProcess[str]:
    """``proconsul <args>`` in this process (``tests.cli_run``), or as the console script."""
    how = run_process if process else run_cli
    return how(*args, text=True, env={**os.environ, "CONSUL_HTTP_ADDR": addr})


def test_intention_lifecycle_and_exit_codes(addr: str) -> None:
    out = run(addr, "intention", "list")
    assert out.returncode == 2 and out.stderr.strip() == "There are no intentions."
    out = run(addr, "intention", "create", "web", "db")
    assert (out.returncode, out.stdout.strip()) == (0, "Created: web => db (allow)")
    out = run(addr, "intention", "check", "web", "db")
    assert (out.returncode, out.stdout.strip()) == (0, "Allowed")
    out = run(addr, "intention", "create", "-deny", "web", "db")
    assert out.returncode == 1 and "duplicate intention found" in out.stderr
    out = run(addr, "intention", "create", "-deny", "-replace", "-meta", "ticket=42", "web", "db")
    assert (out.returncode, out.stdout.strip()) == (0, "Created: web => db (deny)")
    out = run(addr, "intention", "check", "web", "db")
    assert (out.returncode, out.stdout.strip()) == (1, "Denied")
    assert run(addr, "intention", "create", "-deny", "*", "*").returncode == 0
    assert run(addr, "intention", "create", "-allow", "*", "db").returncode == 0
    out = run(addr, "intention", "check", "api", "db")
    assert (out.returncode, out.stdout.strip()) == (0, "Allowed")
    out = run(addr, "intention", "check", "api", "cache")
    assert (out.returncode, out.stdout.strip()) == (1, "Denied")
    out = run(addr, "intention", "match", "db")
    assert out.returncode == 0 and out.stdout.splitlines() == ["web => db (deny)", "* => db (allow)", "* => * (deny)"]
    out = run(addr, "intention", "match", "-source", "web")
    assert out.stdout.splitlines() == ["web => db (deny)", "* => db (allow)", "* => * (deny)"]
    out = run(addr, "intention", "list")
    lines = out.stdout.splitlines()
    assert out.returncode == 0 and lines[0].split() == ["ID", "Source", "Action", "Destination", "Precedence"]
    assert [line.split()[1:] for line in lines[1:]] == [["web", "deny", "db", "9"], ["*", "allow", "db", "8"],
                                                        ["*", "deny", "*", "5"]]  # fmt: skip
    ixn_id = lines[1].split()[0]
    out = run(addr, "intention", "get", "web", "db")
    got = dict(line.split(None, 1) for line in out.stdout.splitlines())
    assert got["Source:"] == "web" and got["Action:"] == "deny" and got["ID:"] == ixn_id
    assert got["Meta[ticket]:"] == "42"
    assert run(addr, "intention", "get", ixn_id).stdout == out.stdout
    out = run(addr, "intention", "get", "nope", "db")
    assert out.returncode == 1 and 'Intention not found with source "nope" and destination "db"' in out.stderr
    out = run(addr, "intention", "delete", ixn_id)
    assert (out.returncode, out.stdout.strip()) == (0, "Intention deleted.")
    out = run(addr, "intention", "delete", "*", "db")
    assert (out.returncode, out.stdout.strip()) == (0, "Intention deleted.")
    out = run(addr, "intention", "check", "web", "db")
    assert (out.returncode, out.stdout.strip()) == (1, "Denied")  # only * => * deny is left


def test_intention_check_errors_exit_2(addr: str) -> None:
    """As real processes: the exit codes are what a script sees."""
    out = run(addr, "intention", "check", "web", process=True)
    assert out.returncode == 2 and "requires exactly two arguments" in out.stderr
    out = run(addr, "intention", "check", "we/b/x", "db", process=True)
    assert out.returncode == 2 and "Error checking the connection" in out.stderr
    out = run(addr, "intention", "check", "-no-such-flag", "web", "db", process=True)
    assert out.returncode == 2
    out = run(f"127.0.0.1:{free_port()}", "intention", "check", "web", "db", process=True)  # nobody listening
    assert out.returncode == 2 and "Error checking the connection" in out.stderr


def test_connect_ca_get_and_set_config(addr: str, tmp_path: Path) -> None:
    out = run(addr, "connect", "ca", "get-config", process=True)
    assert out.returncode == 0, out.stderr
    config = json.loads(out.stdout)
    assert config["Provider"] == "consul" and config["Config"]["LeafCertTTL"] == "72h"
    new = tmp_path / "ca.json"
    new.write_text(json.dumps({"Provider": "consul", "Config": {"LeafCertTTL": "48h", "PrivateKeyType": "rsa",
                                                                "PrivateKeyBits": 2048}}))  # fmt: skip
    out = run(addr, "connect", "ca", "set-config", "-config-file", str(new))
    assert (out.returncode, out.stdout.strip()) == (0, "Configuration updated!")
    assert json.loads(run(addr, "connect", "ca", "get-config").stdout)["Config"]["LeafCertTTL"] == "48h"
    with urllib.request.urlopen(f"http://{addr}/v1/connect/ca/roots") as r:
        roots = json.loads(r.read())
    active = next(r for r in roots["Roots"] if r["Active"])
    assert len(roots["Roots"]) == 2 and active["PrivateKeyType"] == "rsa"
    new.write_text(json.dumps({"Provider": "consul", "Config": {"LeafCertTTL": "1m"}}))
    out = run(addr, "connect", "ca", "set-config", "-config-file", str(new))
    assert out.returncode == 1 and "leaf cert TTL must be greater or equal than 1h0m0s" in out.stderr
    out = run(addr, "connect", "ca", "set-config")
    assert out.returncode == 1 and "-config-file must be set" in out.stderr
