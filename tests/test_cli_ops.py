"""The operations commands as an operator runs them, against a real ``agent -dev`` process:
``operator autopilot``, ``info``, ``maint`` and ``monitor``. The commands run in this process
(``tests.cli_run``) but for one real process per command and the ``monitor`` streams."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from registry.testing import free_port
from tests.cli_run import run_process
from tests.test_cli import BIN, run, wait_http


@pytest.fixture(scope="module")
def dev() -> Iterator[str]:
    """A dev agent process; yields its HTTP address."""
    port = free_port()
    proc = subprocess.Popen([BIN, "agent", "-dev", "-serf-lan-port", "0", "-node", "ops-node", "-http-port", str(port), "-dns-port", "-1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    wait_http(port, proc)
    yield f"127.0.0.1:{port}"
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)


def api(addr: str, method: str, path: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://{addr}{path}", data=data, method=method)
    with urllib.request.urlopen(req, timeout=5) as resp:
        raw = resp.read()
    return json.loads(raw) if raw.strip() else None


def ok(*args: str, process: bool = False) -> str:
    """The command's stdout, after checking it succeeded: in this process, or as the console script."""
    out = run_process(*args) if process else run(*args)
    assert out.returncode == 0, out.stderr.decode() + out.stdout.decode()
    return out.stdout.decode()


def test_autopilot_get_set_and_state(dev: str) -> None:
    assert ok("operator", "autopilot", "get-config", "-http-addr", dev, process=True).splitlines() == [
        "CleanupDeadServers = true", "LastContactThreshold = 200ms", "MaxTrailingLogs = 250", "MinQuorum = 0",
        "ServerStabilizationTime = 10s", 'RedundancyZoneTag = ""', "DisableUpgradeMigration = false",
        'UpgradeVersionTag = ""']  # fmt: skip
    out = ok("operator", "autopilot", "set-config", "-http-addr", dev, "-cleanup-dead-servers=false",
             "-min-quorum", "3", "-last-contact-threshold", "1.5s", "-server-stabilization-time=30s")
    assert out.strip() == "Configuration updated!"
    conf = api(dev, "GET", "/v1/operator/autopilot/configuration")
    assert (conf["CleanupDeadServers"], conf["MinQuorum"], conf["LastContactThreshold"],
            conf["ServerStabilizationTime"], conf["MaxTrailingLogs"]) == (False, 3, "1.5s", "30s", 250)  # fmt: skip
    bad = run("operator", "autopilot", "set-config", "-http-addr", dev, "-min-quorum", "three")
    assert bad.returncode != 0 and b"invalid syntax" in bad.stderr
    pretty = ok("operator", "autopilot", "state", "-http-addr", dev).splitlines()
    assert pretty[0] == "Healthy:                      true" and pretty[1] == "Failure Tolerance:            0"
    assert "      Status:          leader" in pretty and "      Node Status:     alive" in pretty
    state = json.loads(ok("operator", "autopilot", "state", "-format", "json", "-http-addr", dev))
    assert state["Healthy"] is True and state["Voters"] == [state["Leader"]]
    assert run("operator", "autopilot", "state", "-format", "yaml", "-http-addr", dev).returncode == 1


def test_info_prints_the_stats_sections(dev: str) -> None:
    out = ok("info", "-http-addr", dev, process=True)
    sections = [line[:-1] for line in out.splitlines() if not line.startswith("\t")]
    assert sections == ["agent", "build", "consul", "raft", "runtime", "serf_lan"]
    assert "\tleader = true" in out.splitlines() and "\tserver = true" in out.splitlines()
    assert any(line.startswith("\tversion = ") for line in out.splitlines())
    stats = api(dev, "GET", "/v1/agent/self")["Stats"]
    assert f"\tapplied_index = {stats['raft']['applied_index']}" in out or "applied_index" in out


def test_maint_node_and_service(dev: str) -> None:
    api(dev, "PUT", "/v1/agent/service/register", {"Name": "maint-web", "ID": "maint-web1", "Port": 80})
    assert ok("maint", "-http-addr", dev, process=True) == ""
    assert ok("maint", "-enable", "-reason", "disk swap", "-http-addr", dev).strip() == "Node maintenance is now enabled"
    assert ok("maint", "-enable", "-service", "maint-web1", "-http-addr", dev).strip() == \
        'Service maintenance is now enabled for "maint-web1"'  # fmt: skip
    listed = ok("maint", "-http-addr", dev)
    assert "Node:\n  Name:   ops-node\n  Reason: disk swap\n" in listed
    assert "Service:\n  ID:     maint-web1\n  Reason: " in listed
    checks = api(dev, "GET", "/v1/agent/checks")
    assert checks["_node_maintenance"]["Status"] == "critical" and checks["_node_maintenance"]["Notes"] == "disk swap"
    assert ok("maint", "-disable", "-http-addr", dev).strip() == "Node maintenance is now disabled"
    assert ok("maint", "-disable", "-service", "maint-web1", "-http-addr", dev).strip() == \
        'Service maintenance is now disabled for "maint-web1"'  # fmt: skip
    assert ok("maint", "-http-addr", dev) == ""
    for args, err in ((("-enable", "-disable"), "Only one of -enable or -disable may be provided"),
                      (("-reason", "x"), "Reason may only be provided with -enable"),
                      (("-service", "x"), "Service requires either -enable or -disable")):  # fmt: skip
        out = run("maint", *args, "-http-addr", dev)
        assert out.returncode == 1 and err in out.stderr.decode()
    out = run("maint", "-enable", "-service", "nope", "-http-addr", dev)
    assert out.returncode == 1 and "Error enabling service maintenance: Unexpected response code: 404" in \
        out.stderr.decode()  # fmt: skip


class Streamed:
    """A ``proconsul monitor`` process whose output a thread collects."""

    def __init__(self, dev: str, *flags: str) -> None:
        import threading

        self.proc = subprocess.Popen([BIN, "monitor", "-http-addr", dev, *flags], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)  # fmt: skip
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append(raw.decode())

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def test_monitor_streams_filtered_lines_text_and_json(dev: str) -> None:
    import time

    api(dev, "PUT", "/v1/agent/check/register", {"Name": "mon", "CheckID": "mon-ttl", "TTL": "300s"})
    text, as_json, errors = Streamed(dev, "-log-level", "info"), Streamed(dev, "-log-json"), \
        Streamed(dev, "-log-level", "ERROR")  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        flip = 0
        while time.monotonic() < deadline:
            flip += 1
            api(dev, "PUT", f"/v1/agent/check/{'pass' if flip % 2 else 'fail'}/mon-ttl")
            seen = [lines for lines in (text.lines, as_json.lines)
                    if sum("check status changed" in line for line in lines) >= 2]  # fmt: skip
            if len(seen) == 2:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"monitors saw: {text.lines[-5:]} {as_json.lines[-5:]}")
        assert all("\x1b[" not in line for line in text.lines), "colour codes in a piped stream"
        changed = [line for line in text.lines if "check status changed" in line]
        assert "check=mon-ttl" in changed[0] and "[info" in changed[0]
        events = [json.loads(line) for line in as_json.lines]
        assert any(e["event"] == "check status changed" and e["check"] == "mon-ttl" and e["level"] == "info"
                   for e in events)  # fmt: skip
        assert not any("check status changed" in line for line in errors.lines)  # below the error level
    finally:
        for m in (text, as_json, errors):
            m.close()
    # The clients are gone; the agent carries on (and answers a bad level with Consul's 400).
    try:
        api(dev, "GET", "/v1/agent/monitor?loglevel=bogus")
        raise AssertionError("a bad log level was accepted")
    except urllib.error.HTTPError as exc:
        assert exc.code == 400 and exc.read().decode() == "Unknown log level: bogus"
    assert api(dev, "GET", "/v1/agent/self")["Config"]["NodeName"] == "ops-node"
