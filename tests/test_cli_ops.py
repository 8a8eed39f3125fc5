"""The operations commands as an operator runs them, against a real ``agent -dev`` process:
``operator autopilot``, ``info``, ``maint`` and ``monitor``."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from registry.testing import free_port
from tests.test_cli import BIN, run, wait_http


@pytest.fixture(scope="module")
def dev() -> Iterator[str]:
    """A dev agent process; yields its HTTP address."""
    port = free_port()
    proc = subprocess.Popen([BIN, "agent", "-dev", "-node", "ops-node", "-http-port", str(port), "-dns-port", "-1"],
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


def ok(*args: str) -> str:
    out = run(*args)
    assert out.returncode == 0, out.stderr.decode() + out.stdout.decode()
    return out.stdout.decode()


def test_autopilot_get_set_and_state(dev: str) -> None:
    assert ok("operator", "autopilot", "get-config", "-http-addr", dev).splitlines() == [
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
