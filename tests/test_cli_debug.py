"""``proconsul debug`` (Consul's ``consul debug``) and ``GET /v1/agent/host`` against a real ``agent -dev``
process: the bundle's files and archive as Consul lays them out, ``-archive=false``, an interrupted capture
still archived, and each validation error with Consul's words. The host parsers are tested on fixed text."""

from __future__ import annotations

import json
import signal
import subprocess
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from registry.hostinfo import collect, cpu_info, host_info, memory
from registry.testing import free_port
from tests.test_cli import BIN, run, wait_http

MEMINFO = """MemTotal:       16000000 kB
MemFree:         4000000 kB
MemAvailable:   10000000 kB
Buffers:          500000 kB
Cached:          3000000 kB
SReclaimable:     500000 kB
SwapTotal:             0 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
"""

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 85
model name\t: Intel(R) Xeon(R) Processor
stepping\t: 7
microcode\t: 0x1
cpu MHz\t\t: 2999.998
cache size\t: 16384 KB
physical id\t: 0
core id\t\t: 0
cpu cores\t: 2
flags\t\t: fpu vme sse2

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor
cpu MHz\t\t: 2999.998
"""


def test_host_parsers_give_gopsutils_fields() -> None:
    mem = memory(MEMINFO)
    kib = 1024
    assert mem["total"] == 16_000_000 * kib and mem["available"] == 10_000_000 * kib
    # gopsutil on Linux: used = total - free - buffers - cached, cached counting reclaimable slab.
    assert mem["cached"] == 3_500_000 * kib and mem["used"] == (16_000_000 - 4_000_000 - 500_000 - 3_500_000) * kib
    assert mem["usedPercent"] == pytest.approx(50.0) and mem["hugePageSize"] == 2048 * kib
    cpus = cpu_info(CPUINFO)
    assert [c["cpu"] for c in cpus] == [0, 1]
    assert cpus[0] == {"cpu": 0, "vendorId": "GenuineIntel", "family": "6", "model": "85", "stepping": 7,
                       "physicalId": "0", "coreId": "0", "cores": 2, "modelName": "Intel(R) Xeon(R) Processor",
                       "mhz": 2999.998, "cacheSize": 16384, "flags": ["fpu", "vme", "sse2"], "microcode": "0x1"}  # fmt: skip
    assert cpus[1]["stepping"] == 0 and cpus[1]["cores"] == 1 and cpus[1]["flags"] == []
    host = host_info(hostname="h1", uptime="1234.56 999.0\n", stat="cpu 1 2 3\nbtime 1700000000\n",
                     os_release='ID=debian\nVERSION_ID="12"\n', kernel="6.1.0", arch="x86_64", procs=42,
                     host_id="abc")  # fmt: skip
    assert (host["hostname"], host["uptime"], host["bootTime"], host["procs"], host["os"]) == ("h1", 1234, 1700000000, 42, "linux")
    assert (host["platform"], host["platformFamily"], host["platformVersion"]) == ("debian", "debian", "12")
    assert (host["kernelVersion"], host["kernelArch"], host["hostId"]) == ("6.1.0", "x86_64", "abc")


def test_collect_names_what_it_could_not_read(tmp_path: Path) -> None:
    here = collect()
    assert here["Errors"] is None and here["Memory"]["total"] > 0 and here["CPU"] and here["Host"]["hostname"]
    assert here["Disk"]["path"] == "/" and here["Disk"]["total"] > 0
    assert abs(here["CollectionTime"] / 1e9 - time.time()) < 60
    # A root without /proc: every block that needs it is named in Errors, and the answer is still whole.
    (tmp_path / "proc").mkdir()
    bare = collect(tmp_path)
    assert bare["Memory"] is None and bare["CPU"] is None and bare["Host"] is None
    assert [e.split(":")[0] for e in bare["Errors"]] == ["memory", "cpu", "host"]
    assert bare["Disk"]["total"] > 0


@pytest.fixture(scope="module")
def dev() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([BIN, "agent", "-dev", "-serf-lan-port", "0", "-node", "debug-node", "-http-port", str(port),
                             "-dns-port", "-1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    wait_http(port, proc)
    yield f"127.0.0.1:{port}"
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)


def get(addr: str, path: str) -> Any:
    with urllib.request.urlopen(f"http://{addr}{path}", timeout=10) as resp:
        return json.loads(resp.read())


def test_agent_host_and_enable_debug(dev: str) -> None:
    host = get(dev, "/v1/agent/host")
    assert set(host) == {"Memory", "CPU", "Host", "Disk", "CollectionTime", "Errors"}
    assert host["Memory"]["total"] > 0 and host["CPU"][0]["modelName"] is not None and host["Disk"]["path"] == "/"
    # consul debug reads the key before it asks for Go profiles, which Proconsul never serves (-dev included).
    assert get(dev, "/v1/agent/self")["DebugConfig"]["EnableDebug"] is False


def _debug(dev: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([BIN, "debug", "-http-addr", dev, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip


def test_a_capture_is_consuls_bundle(dev: str, tmp_path: Path) -> None:
    archived, plain = tmp_path / "bundle", tmp_path / "plain"
    started = time.monotonic()
    a = _debug(dev, "-duration", "10s", "-interval", "5s", "-output", str(archived))
    b = _debug(dev, "-duration=10s", "-interval=5s", "-output", str(plain), "-archive=false", "-capture", "agent",
               "-capture", "logs")  # fmt: skip
    # Something to log while the capture records the agent's log at trace level: once its first interval has
    # passed, so the log stream is surely attached however slowly the command started.
    assert a.stdout is not None
    head: list[str] = []
    while not head or not (head[-1].startswith("==> Capture successful") and head[-1].endswith(" (1)")):
        head.append(a.stdout.readline().rstrip("\n"))
        assert head[-1] or a.poll() is None, head
    req = urllib.request.Request(f"http://{dev}/v1/agent/service/register", method="PUT",
                                 data=json.dumps({"Name": "debugged", "Port": 80}).encode())  # fmt: skip
    urllib.request.urlopen(req, timeout=10).read()
    out_a, err_a = a.communicate(timeout=60)
    out_b, err_b = b.communicate(timeout=60)
    assert a.returncode == 0 and b.returncode == 0, err_a + err_b
    assert time.monotonic() - started >= 12  # the duration and Consul's 2 s of grace
    lines = head + out_a.splitlines()
    assert lines[0] == "==> Starting debugger and capturing static information..."
    assert lines[1].startswith("     Agent Version: '1.") and lines[2] == "          Interval: '5s'"
    assert lines[3] == "          Duration: '10s'" and lines[4] == f"            Output: '{archived}.tar.gz'"
    assert lines[5] == "           Capture: 'metrics, logs, host, agent, members'"
    assert any(line.startswith("==> Capture successful ") and line.endswith(" (2)") for line in lines)
    assert lines[-1] == f"    Saved debug archive: {archived}.tar.gz"
    assert "Unable to capture pprof" in err_a  # asked for by default, and said why it is not there
    assert not archived.exists() and not list(tmp_path.glob("*.tmp*"))
    with tarfile.open(f"{archived}.tar.gz") as tar:
        names = set(tar.getnames())
        files = {n.removeprefix("bundle/"): tar.extractfile(n).read() for n in names if tar.getmember(n).isfile()}  # type: ignore[union-attr]
    assert set(files) == {"agent.json", "host.json", "members.json", "index.json", "consul.log", "metrics.json",
                          "listpeers.json"}  # fmt: skip
    assert json.loads(files["agent.json"])["Config"]["NodeName"] == "debug-node"
    assert json.loads(files["members.json"])[0]["Name"].startswith("debug-node")
    assert json.loads(files["host.json"])["Memory"]["total"] > 0
    assert json.loads(files["index.json"]) == {"Version": 1, "AgentVersion": lines[1].split("'")[1], "Interval": "5s",
                                               "Duration": "12s", "Targets": ["metrics", "logs", "host", "agent", "members"]}  # fmt: skip
    assert b"debugged" in files["consul.log"]
    metrics = json.JSONDecoder().raw_decode(files["metrics.json"].decode().lstrip())[0]
    assert "Gauges" in metrics and "Timestamp" in metrics
    peers = files["listpeers.json"].decode().splitlines()
    assert peers[0].split() == ["Node", "ID", "Address", "State", "Voter", "RaftProtocol", "Commit", "Index",
                                "Trails", "Leader", "By"]  # fmt: skip
    assert peers[1].split()[0] == "debug-node" and peers[1].split()[3] == "leader" and peers[1].split()[-1] == "-"
    # -archive=false leaves the directory, with only what was asked for.
    assert plain.is_dir() and not Path(f"{plain}.tar.gz").exists()
    assert {p.name for p in plain.iterdir()} == {"agent.json", "consul.log", "index.json", "listpeers.json"}
    assert out_b.splitlines()[-1] == f"    Saved debug archive: {plain}"
    assert "pprof" not in err_b


def test_an_interrupted_capture_is_still_archived(dev: str, tmp_path: Path) -> None:
    out = tmp_path / "cut"
    proc = _debug(dev, "-duration", "5m", "-interval", "5s", "-output", str(out), "-capture", "agent", "-capture", "metrics")
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("==> Capture successful") or not line:
            break
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Error encountered during collection: stopping collection due to shutdown signal" in err
    assert rest.splitlines()[-1] == f"    Saved debug archive: {out}.tar.gz"
    with tarfile.open(f"{out}.tar.gz") as tar:
        assert {"cut/agent.json", "cut/index.json", "cut/metrics.json"} <= set(tar.getnames())


@pytest.mark.parametrize(("args", "error"), [
    (["-duration", "5s"], "==> Capture validation failed: duration must be longer than 10s"),
    (["-interval", "1s"], "==> Capture validation failed: interval must be longer than 5s"),
    (["-duration", "20s", "-interval", "30s"], "==> Capture validation failed: duration (20s) must be longer than interval (30s)"),
    (["-capture", "agent", "-capture", "everything"], "==> Capture validation failed: target not found: everything"),
    (["-since", "1h"], "==> -since runs HashiCorp's hcdiag, which Proconsul does not ship; capture the present with "
                       "-duration instead."),
    (["extra"], "==> debug: Too many arguments provided, expected 0"),
])  # fmt: skip
def test_bad_flags_are_refused_as_consul_words_them(dev: str, tmp_path: Path, args: list[str], error: str) -> None:
    out = run("debug", "-http-addr", dev, "-output", str(tmp_path / "x"), *args)
    assert out.returncode == 1 and out.stderr.decode().strip().splitlines()[-1] == error
    assert not (tmp_path / "x").exists()


def test_an_existing_output_or_no_agent_is_refused(dev: str, tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    out = run("debug", "-http-addr", dev, "-output", str(tmp_path / "taken"), "-capture", "agent")
    assert out.returncode == 1
    assert out.stderr.decode().strip() == f"==> Capture validation failed: output directory already exists: {tmp_path / 'taken'}"
    out = run("debug", "-http-addr", f"127.0.0.1:{free_port()}", "-output", str(tmp_path / "y"))
    err = out.stderr.decode().strip()
    assert out.returncode == 1 and not (tmp_path / "y").exists()
    assert err == ("==> Capture validation failed: error querying target agent: [Errno 111] Connection refused. "
                   "verify connectivity and agent address")


def test_an_answer_that_is_not_an_agents_is_refused(tmp_path: Path) -> None:
    """Something else on the port (a web server answering HTML): a clear refusal, nothing written."""
    import http.server
    import threading

    class NotAnAgent(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = b"<html>hello</html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotAnAgent)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = run("debug", "-http-addr", f"127.0.0.1:{server.server_address[1]}", "-output", str(tmp_path / "z"))
    finally:
        server.shutdown()
    assert out.returncode == 1
    assert out.stderr.decode().strip() == "==> Capture validation failed: agent response did not contain version key"
    assert not (tmp_path / "z").exists()
