"""``pip install`` works: a wheel built from this checkout (``pip wheel . --no-deps``) installs into a clean
virtualenv with its dependencies, and the installed ``proconsul`` runs: ``version``, then a dev agent that
answers HTTP. Slow (a build and an install, 1-3 minutes on a shared 2-core machine): it runs in ``make
soak`` and as its own step of ``.ci/run``, not in the unit suite."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from registry.testing import free_port

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.soak, pytest.mark.timeout(600)]


def run(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(argv)}\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    return out


def test_the_wheel_installs_into_a_clean_venv_and_runs(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "pip", "wheel", str(ROOT), "-w", str(dist), "--no-deps", "-q")
    wheels = list(dist.glob("proconsul-*.whl"))
    assert len(wheels) == 1, wheels
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", str(venv))
    run(str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheels[0]))
    version = run(str(venv / "bin" / "proconsul"), "version")
    assert version.stdout.startswith("Proconsul v")
    # The installed agent is the whole program, not just its entry point.
    port = free_port()
    agent = subprocess.Popen([str(venv / "bin" / "proconsul"), "agent", "-dev", "-serf-lan-port", "0", "-http-port", str(port),
                              "-dns-port", "-1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/status/leader", timeout=2) as resp:  # noqa: S310
                    assert json.loads(resp.read())
                    break
            except OSError:
                assert time.monotonic() < deadline, "the installed agent never answered"
                time.sleep(0.2)
    finally:
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0
