"""Reload and validate against a real agent process started from a directory of HCL files: SIGHUP, the
HTTP endpoint and ``proconsul reload`` re-read the files and apply services and checks (added, changed,
removed; API-registered ones kept), the log level and a replaced TLS certificate (served to the next
HTTPS connection); a broken file is refused with Consul's text and the running config stays;
``proconsul validate`` says the same about the same files."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from registry.testing import GOSSIP_KEY, free_port
from tests.cli_run import run_cli, run_process

BIN = str(Path(sys.executable).with_name("proconsul"))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and two server certificates (dc1-server-consul-0 and -1), made by ``proconsul tls``."""
    d = tmp_path_factory.mktemp("pki")
    for args in (("ca", "create"), ("cert", "create", "-server"), ("cert", "create", "-server")):
        out = subprocess.run([BIN, "tls", *args], cwd=d, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
    return d


def base_hcl(pki: Path, https_port: int, cert: str, log_level: str) -> str:
    return f"""
log_level = "{log_level}"
encrypt   = "{GOSSIP_KEY}"
ports {{
  https = {https_port}
}}
tls {{
  defaults {{
    ca_file   = "{pki}/consul-agent-ca.pem"
    cert_file = "{pki}/{cert}.pem"
    key_file  = "{pki}/{cert}-key.pem"
  }}
}}
"""


SERVICES_V1 = """
services {
  name = "old"
  port = 1001
  check {
    id  = "old-ttl"
    ttl = "30s"
  }
}
services {
  name = "keep"
  port = 1002
  check {
    id  = "keep-ttl"
    ttl = "30s"
  }
}
"""

SERVICES_V2 = """
services {
  name = "keep"
  port = 1002
  check {
    id  = "keep-ttl"
    ttl = "30s"
  }
}
services {
  name = "new"
  port = 1003
  tags = ["v2"]
  checks = [
    { id = "new-tcp", tcp = "127.0.0.1:1", interval = "10s" },
    { id = "new-ttl", ttl = "1m" }
  ]
}
check {
  id   = "node-ttl"
  name = "node level"
  ttl  = "1m"
}
"""


class Agent:
    def __init__(self, proc: subprocess.Popen[bytes], http: int, https: int, log: Path) -> None:
        self.proc, self.http, self.https, self.log = proc, http, https, log

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, str]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.http}{path}", data=data, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def get(self, path: str) -> Any:
        status, text = self.request("GET", path)
        assert status == 200, text
        return json.loads(text)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([BIN, *args, "-http-addr", f"127.0.0.1:{self.http}"], capture_output=True, text=True,
                              timeout=30)  # fmt: skip


def until(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def running(pki: Path, tmp_path: Path) -> Iterator[Agent]:
    conf = tmp_path / "consul.d"
    conf.mkdir()
    http, https = free_port(), free_port()
    (conf / "base.hcl").write_text(base_hcl(pki, https, "dc1-server-consul-0", "info"))
    (conf / "services.hcl").write_text(SERVICES_V1)
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([BIN, "agent", "-dev", "-serf-lan-port", "0", "-node", "n1", "-config-dir", str(conf), "-http-port", str(http),
                                 "-dns-port", "-1", "-server-port", str(free_port())], stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip
    agent = Agent(proc, http, https, log)
    try:
        until(lambda: _up(agent))
        yield agent
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _up(agent: Agent) -> bool:
    assert agent.proc.poll() is None, agent.log.read_text()
    try:
        return {"old", "keep"} <= set(agent.get("/v1/agent/services"))
    except OSError:
        return False


def served_serial(port: int) -> int:
    """The serial of the certificate a new HTTPS connection is served."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def file_serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def test_reload_applies_services_checks_log_level_and_certificates(running: Agent, pki: Path) -> None:
    conf = running.log.parent / "consul.d"
    status, text = running.request("PUT", "/v1/agent/service/register", {"Name": "api-registered", "Port": 1004})
    assert status == 200, text
    assert served_serial(running.https) == file_serial(pki / "dc1-server-consul-0.pem")
    assert "log level changed" not in running.log.read_text()

    # SIGHUP: a service dropped, one kept, one added with two checks, a node check, debug logging, the
    # other certificate.
    (conf / "base.hcl").write_text(base_hcl(pki, running.https, "dc1-server-consul-1", "debug"))
    (conf / "services.hcl").write_text(SERVICES_V2)
    running.proc.send_signal(signal.SIGHUP)
    until(lambda: set(running.get("/v1/agent/services")) == {"keep", "new", "api-registered"})
    services = running.get("/v1/agent/services")
    assert services["new"]["Tags"] == ["v2"] and services["new"]["Port"] == 1003
    checks = running.get("/v1/agent/checks")
    assert {"keep-ttl", "new-tcp", "new-ttl", "node-ttl"} <= set(checks) and "old-ttl" not in checks
    assert checks["node-ttl"]["Name"] == "node level" and checks["new-ttl"]["ServiceID"] == "new"
    until(lambda: "old" not in {s["ServiceName"] for s in running.get("/v1/health/node/n1")} and
          "new" in running.get("/v1/catalog/services"))  # fmt: skip
    until(lambda: "log level changed" in running.log.read_text())
    assert served_serial(running.https) == file_serial(pki / "dc1-server-consul-1.pem")

    # The CLI (PUT /v1/agent/reload): another service.
    (conf / "more.hcl").write_text('services {\n  name = "third"\n  port = 1005\n}\n')
    out = running.cli("reload")
    assert out.returncode == 0 and out.stdout == "Configuration reload triggered\n", out.stderr
    assert set(running.get("/v1/agent/services")) == {"keep", "new", "api-registered", "third"}

    # A broken file: Consul's error, and nothing changes.
    (conf / "more.hcl").write_text('services {\n  name = "fourth"\n}\nbogus_key = true\n')
    status, text = running.request("PUT", "/v1/agent/reload")
    assert status == 500
    assert text == f"failed to parse {conf / 'more.hcl'}: 1 error occurred:\n\t* invalid config key bogus_key"
    out = running.cli("reload")
    assert out.returncode == 1 and out.stderr.startswith("Error reloading: failed to parse"), out.stderr
    assert set(running.get("/v1/agent/services")) == {"keep", "new", "api-registered", "third"}
    (conf / "more.hcl").write_text('services {\n  name = "fifth"\n  port = 70000\n}\n')
    status, text = running.request("PUT", "/v1/agent/reload")
    assert status == 500 and "Invalid service port 70000" in text, text
    running.proc.send_signal(signal.SIGHUP)
    until(lambda: "Reload config failed" in running.log.read_text())
    assert set(running.get("/v1/agent/services")) == {"keep", "new", "api-registered", "third"}
    assert served_serial(running.https) == file_serial(pki / "dc1-server-consul-1.pem")
    assert running.proc.poll() is None


def test_validate_command(pki: Path, tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.mkdir()
    (good / "base.hcl").write_text(base_hcl(pki, free_port(), "dc1-server-consul-0", "info"))
    (good / "services.hcl").write_text(SERVICES_V2)
    (good / "README").write_text("not config")

    def validate(*args: str, process: bool = False) -> subprocess.CompletedProcess[str]:
        """In this process (``tests.cli_run``), or as the console script with ``process``."""
        return (run_process if process else run_cli)("validate", *args, text=True)

    out = validate(str(good), process=True)
    assert out.returncode == 0 and out.stdout == "Configuration is valid!\n", out.stderr
    assert f"skipping file {good / 'README'}, extension must be .hcl or .json, or config format must be set" in out.stderr
    out = validate("-quiet", str(good / "base.hcl"), str(good / "services.hcl"))
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.json").write_text(json.dumps({"datacenter": "dc1", "ports": {"htp": 1}}))
    out = validate(str(good), str(bad))
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr == (f"Config validation failed: failed to parse {bad / 'a.json'}: 1 error occurred:\n"
                          f"\t* invalid config key ports.htp\n")  # fmt: skip
    assert validate().stderr == "Must specify at least one config file or directory\n"
    assert validate("-config-format", "yaml", str(good)).stderr == "-config-format must be either 'hcl' or 'json\n"
    conf = tmp_path / "agent.conf"
    conf.write_text(f'datacenter = "dc2"\nencrypt = "{GOSSIP_KEY}"\n')
    assert validate(str(conf)).returncode == 1
    assert validate("-config-format", "hcl", str(conf)).returncode == 0
    os.remove(conf)
