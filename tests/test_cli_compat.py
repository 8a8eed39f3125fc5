"""The `proconsul` client verbs Consul users reach for, against a real `agent -dev` process serving HTTP and
HTTPS with verify_incoming: kv export/import in Consul's JSON, snapshot decode, catalog -node-meta/-filter/
-near, services export, and the TLS client options (flags and environment) on every client command. The commands run
in this process (``tests.cli_run``) but for one real process per family (kv export, snapshot save and decode,
lock, connect proxy)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from registry.testing import free_port
from tests.cli_run import BIN, run_cli, run_process
from tests.test_cli import wait_http

# What the tests pass explicitly must not be overridden by the environment they run in.
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_", "PROCONSUL_"))}


def run(*args: str, env: dict[str, str] | None = None, input: bytes | None = None,  # noqa: A002
        process: bool = False) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
    """``proconsul <args>`` in this process (``tests.cli_run``), or as the console script with ``process``."""
    how = run_process if process else run_cli
    return how(*args, env={**CLEAN_ENV, **(env or {})}, input=input)


@dataclass(frozen=True)
class Agent:
    http: str  # 127.0.0.1:port
    https: str  # https://127.0.0.1:port
    pki: Path

    def __getitem__(self, name: str) -> str:
        return str(self.pki / name)

    @property
    def a(self) -> list[str]:
        return ["-http-addr", self.http]

    @property
    def client_tls(self) -> list[str]:
        return ["-ca-file", self["consul-agent-ca.pem"], "-client-cert", self["dc1-client-consul-0.pem"],
                "-client-key", self["dc1-client-consul-0-key.pem"]]  # fmt: skip


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    """One dev agent process for the module: HTTP, and HTTPS that requires a client certificate."""
    d = tmp_path_factory.mktemp("cli-compat")
    for args in (["ca", "create"], ["cert", "create", "-server"], ["cert", "create", "-client"]):
        out = subprocess.run([BIN, "tls", *args], cwd=d, capture_output=True, timeout=30)
        assert out.returncode == 0, out.stderr
    http_port, https_port = free_port(), free_port()
    config = d / "tls.json"
    config.write_text(json.dumps({
        "ports": {"https": https_port},
        "tls": {"defaults": {"ca_file": str(d / "consul-agent-ca.pem"), "cert_file": str(d / "dc1-server-consul-0.pem"),
                             "key_file": str(d / "dc1-server-consul-0-key.pem"), "verify_incoming": True}},
        "node_meta": {"env": "prod"},
    }))  # fmt: skip
    proc = subprocess.Popen([BIN, "agent", "-dev", "-serf-lan-port", "0", "-node", "compat-node", "-http-port", str(http_port), "-dns-port",
                             "-1", "-config-file", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        wait_http(http_port, proc)
        yield Agent(f"127.0.0.1:{http_port}", f"https://127.0.0.1:{https_port}", d)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def api(agent: Agent, method: str, path: str, body: object = None) -> object:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://{agent.http}{path}", data=data, method=method)
    with urllib.request.urlopen(req, timeout=10) as resp:
        raw = resp.read()
    return json.loads(raw) if raw.strip() else None


# ---------------------------------------------------------------------------------------------------- kv


def test_kv_export_is_consuls_json(agent: Agent) -> None:
    urllib.request.urlopen(urllib.request.Request(f"http://{agent.http}/v1/kv/exp1/one?flags=42", data=b"y<z",
                                                  method="PUT"), timeout=10).read()  # fmt: skip
    out = run("kv", "export", *agent.a, "/exp1", process=True)
    assert out.returncode == 0, out.stderr
    value = base64.b64encode(b"y<z").decode()
    # Go's json.MarshalIndent with a tab: the exact bytes Consul prints.
    assert out.stdout.decode() == f'[\n\t{{\n\t\t"key": "exp1/one",\n\t\t"flags": 42,\n\t\t"value": "{value}"\n\t}}\n]\n'
    assert run("kv", "export", *agent.a, "nothing-here").stdout.decode() == "[]\n"
    out = run("kv", "export", *agent.a, "a", "b")
    assert out.returncode == 1 and out.stderr.decode().strip() == "Too many arguments (expected 1, got 2)"


def test_kv_export_import_round_trip(agent: Agent, tmp_path: Path) -> None:
    values = {"rt/app/name": b"proconsul", "rt/app/bin": bytes(range(256)), "rt/dir/": b"", "rt/app/empty": b""}
    for key, value in values.items():
        req = urllib.request.Request(f"http://{agent.http}/v1/kv/{key}?flags=7", data=value, method="PUT")
        urllib.request.urlopen(req, timeout=10).read()
    out = run("kv", "export", *agent.a, "rt/")
    assert out.returncode == 0, out.stderr
    exported = json.loads(out.stdout)
    assert {e["key"] for e in exported} == set(values) and all(e["flags"] == 7 for e in exported)
    dump = tmp_path / "kv.json"
    dump.write_bytes(out.stdout)
    # Import under another prefix, from a file; then again at the root from stdin (after deleting).
    out = run("kv", "import", *agent.a, "-prefix", "copy", f"@{dump}")
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.decode().splitlines()) == sorted(f"Imported: copy/{k}" for k in values)
    assert run("kv", "delete", *agent.a, "-recurse", "rt/").returncode == 0
    out = run("kv", "import", *agent.a, "-", input=dump.read_bytes())
    assert out.returncode == 0, out.stderr
    for prefix in ("", "copy/"):
        again = json.loads(run("kv", "export", *agent.a, f"{prefix}rt/").stdout)
        assert {e["key"].removeprefix(prefix): (e["flags"], base64.b64decode(e["value"])) for e in again} == \
            {k: (7, v) for k, v in values.items()}
    # Inline JSON, and Consul's errors.
    assert run("kv", "import", *agent.a, '[{"key": "inline", "flags": 0, "value": "aGk="}]').returncode == 0
    assert run("kv", "get", *agent.a, "inline").stdout == b"hi\n"
    out = run("kv", "import", *agent.a)
    assert out.returncode == 1 and out.stderr.decode().strip() == "Error! Missing DATA argument"
    out = run("kv", "import", *agent.a, "{not json")
    assert out.returncode == 1 and out.stderr.decode().startswith("Cannot unmarshal data: ")
    out = run("kv", "import", *agent.a, '[{"key": "bad", "value": "***"}]')
    assert out.returncode == 1 and out.stderr.decode().startswith("Error base 64 decoding value for key bad: ")


# ---------------------------------------------------------------------------------------------------- snapshot


def test_snapshot_decode_prints_json_records(agent: Agent, tmp_path: Path) -> None:
    urllib.request.urlopen(urllib.request.Request(f"http://{agent.http}/v1/kv/snap/key", data=b"v", method="PUT"),
                           timeout=10).read()  # fmt: skip
    snap = tmp_path / "backup.snap"
    out = run("snapshot", "save", *agent.a, str(snap), process=True)
    assert out.returncode == 0, out.stderr
    out = run("snapshot", "decode", str(snap), process=True)
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.decode().splitlines()]
    assert records[0]["Type"] == "SnapshotHeader" and records[0]["Data"]["Index"] > 0
    by_type: dict[str, list[dict[str, object]]] = {}
    for r in records[1:]:
        by_type.setdefault(r["Type"], []).append(r["Data"])
    assert any(n["Node"] == "compat-node" for n in by_type["Node"])
    assert {"Key": "snap/key", "Value": "dg=="}.items() <= next(e for e in by_type["KVS"] if e["Key"] == "snap/key").items()
    assert any(c["CheckID"] == "serfHealth" for c in by_type["Check"])
    assert any(s["Service"] == "consul" for s in by_type["Service"])
    out = run("snapshot", "decode", str(tmp_path / "missing.snap"))
    assert out.returncode == 1 and out.stderr.decode().startswith("Error opening snapshot file: ")
    (tmp_path / "junk").write_bytes(b"not a snapshot")
    out = run("snapshot", "decode", str(tmp_path / "junk"))
    assert out.returncode == 1 and out.stderr.decode().startswith("Error reading snapshot: not a Proconsul snapshot")
    assert run("snapshot", "decode").stderr.decode().strip() == "Missing FILE argument"
    assert "not Consul's" in run("snapshot", "decode", "-h").stdout.decode()


# ---------------------------------------------------------------------------------------------------- catalog


def test_catalog_node_meta_filter_and_near(agent: Agent) -> None:
    api(agent, "PUT", "/v1/catalog/register", {"Node": "ext-dev", "Address": "10.0.0.2", "NodeMeta": {"env": "dev"},
                                               "Service": {"ID": "web-dev", "Service": "web", "Port": 80,
                                                           "Tags": ["dev"]}})  # fmt: skip
    api(agent, "PUT", "/v1/catalog/register", {"Node": "ext-prod", "Address": "10.0.0.3",
                                               "NodeMeta": {"env": "prod", "rack": "r1"},
                                               "Service": {"ID": "db-prod", "Service": "db", "Port": 5432}})  # fmt: skip

    def nodes(*flags: str) -> list[str]:
        out = run("catalog", "nodes", *agent.a, *flags)
        assert out.returncode == 0, out.stderr
        return [line.split()[0] for line in out.stdout.decode().splitlines()[1:]]

    def services(*flags: str) -> list[str]:
        out = run("catalog", "services", *agent.a, *flags)
        assert out.returncode == 0, out.stderr
        return out.stdout.decode().split()

    # -node-meta key=value, repeatable: every pair must match (it used to be sent as a stringified list).
    assert nodes("-node-meta", "env=prod") == ["compat-node", "ext-prod"]
    assert nodes("-node-meta", "env=prod", "-node-meta", "rack=r1") == ["ext-prod"]
    assert services("-node-meta", "env=dev") == ["web"]
    assert services("-node-meta", "env=prod", "-node-meta", "rack=r1") == ["db"]
    assert nodes("-filter", 'Meta.env == "dev"') == ["ext-dev"]
    assert services("-filter", 'ServiceName == "db"') == ["db"]
    assert services("-node", "ext-dev", "-filter", 'Service == "web"') == ["web"]
    assert nodes("-service", "web", "-filter", 'NodeMeta.env == "dev"') == ["ext-dev"]
    assert nodes("-near", "_agent") == ["compat-node", "ext-dev", "ext-prod"]
    out = run("catalog", "nodes", *agent.a, "-filter", "Meta.env ==")
    assert out.returncode == 1 and "Unexpected response code: 500 (Failed to create boolean expression evaluator" in out.stderr.decode()


# ---------------------------------------------------------------------------------------------------- services


def test_services_export(agent: Agent) -> None:
    out = run("services", "export", *agent.a, "-consumer-peers", "other")
    assert out.returncode == 1 and out.stderr.decode().strip() == "Missing the required -name flag"
    out = run("services", "export", *agent.a, "-name", "web")
    assert out.returncode == 1 and out.stderr.decode().strip() == "Missing the required -consumer-peers flag"
    out = run("services", "export", *agent.a, "-name", "web", "-consumer-peers", "a,,b")
    assert out.returncode == 1 and out.stderr.decode().strip() == 'Invalid peer ""'
    # Exporting needs the exported-services config entry, which this agent does not store: the agent's
    # refusal is reported as Consul reports a failed write.
    out = run("services", "export", *agent.a, "-name", "web", "-consumer-peers", "other-cluster")
    err = out.stderr.decode().strip()
    assert out.returncode == 1 and err.startswith("Error writing config entry: Unexpected response code: 400 ("), err
    assert "exported-services" in err


# ---------------------------------------------------------------------------------------------------- TLS


def test_a_reset_over_https_points_at_the_tls_options() -> None:
    """Refusing a client without a certificate, the agent sends its alert and closes; with the request already
    sent and unread, the client may see the close as a reset before it reads the alert. Over https that is
    reported as a TLS failure, over http (nothing there to refuse a certificate) as an agent not reached."""
    import errno

    import aiohttp

    from registry.cli.common import _tls_failure

    reset = aiohttp.ClientOSError(errno.ECONNRESET, "Connection reset by peer")
    assert _tls_failure(reset, https=True)
    assert _tls_failure(ConnectionResetError(), https=True)
    assert not _tls_failure(reset, https=False)
    refused = aiohttp.ClientOSError(errno.ECONNREFUSED, "Connection refused")
    assert not _tls_failure(refused, https=True)


def test_tls_client_options_against_verify_incoming(agent: Agent) -> None:
    https = ["-http-addr", agent.https]
    # No client certificate: the agent refuses the handshake, and the command says so.
    out = run("members", *https, "-ca-file", agent["consul-agent-ca.pem"])
    err = out.stderr.decode()
    assert out.returncode == 1 and err.startswith(f"Error connecting to Proconsul agent at {agent.https}: "), err
    assert "Check the TLS options" in err, err
    # With one (flags), the command works.
    out = run("members", *https, *agent.client_tls)
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().splitlines()[1].startswith("compat-node")
    # The CA is verified: without it the agent's certificate is not trusted.
    out = run("members", *https, "-client-cert", agent["dc1-client-consul-0.pem"],
              "-client-key", agent["dc1-client-consul-0-key.pem"])  # fmt: skip
    err = out.stderr.decode()
    assert out.returncode == 1 and f"{agent.https}: x509: " in err and "Check the TLS options" in err, err
    # ... unless verification is switched off.
    out = run("members", *https, "-client-cert", agent["dc1-client-consul-0.pem"],
              "-client-key", agent["dc1-client-consul-0-key.pem"], env={"CONSUL_HTTP_SSL_VERIFY": "false"})  # fmt: skip
    assert out.returncode == 0, out.stderr
    # The same from the environment, with CONSUL_HTTP_SSL making a bare address https.
    env = {"CONSUL_HTTP_ADDR": agent.https.removeprefix("https://"), "CONSUL_HTTP_SSL": "true",
           "CONSUL_CACERT": agent["consul-agent-ca.pem"], "CONSUL_CLIENT_CERT": agent["dc1-client-consul-0.pem"],
           "CONSUL_CLIENT_KEY": agent["dc1-client-consul-0-key.pem"]}  # fmt: skip
    assert run("kv", "put", "tls/key", "over-https", env=env).returncode == 0
    assert run("kv", "get", "tls/key", env=env).stdout == b"over-https\n"
    # -tls-server-name: the name verified (and sent as SNI) instead of the address's host.
    out = run("catalog", "datacenters", *https, *agent.client_tls, "-tls-server-name", "server.dc1.consul")
    assert out.returncode == 0, out.stderr
    out = run("catalog", "datacenters", *https, *agent.client_tls, "-tls-server-name", "wrong.example")
    assert out.returncode == 1 and "wrong.example" in out.stderr.decode(), out.stderr
    # A file that cannot be used is named.
    out = run("members", *https, "-ca-file", str(agent.pki / "nope.pem"))
    assert out.returncode == 1 and out.stderr.decode().startswith(f"Error loading CA {agent.pki / 'nope.pem'}: ")


def test_tls_ca_path_directory(agent: Agent) -> None:
    """CONSUL_CAPATH / -ca-path: a directory of CA certificates under their hashed names, as OpenSSL looks
    them up (the name is made by the openssl command)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command (Debian package openssl) to name the CA file by its hash")
    capath = agent.pki / "capath"
    capath.mkdir(exist_ok=True)
    digest = subprocess.run(["openssl", "x509", "-hash", "-noout", "-in", agent["consul-agent-ca.pem"]],
                            capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    (capath / f"{digest}.0").write_bytes(Path(agent["consul-agent-ca.pem"]).read_bytes())
    env = {"CONSUL_HTTP_ADDR": agent.https, "CONSUL_CAPATH": str(capath),
           "CONSUL_CLIENT_CERT": agent["dc1-client-consul-0.pem"],
           "CONSUL_CLIENT_KEY": agent["dc1-client-consul-0-key.pem"]}  # fmt: skip
    assert run("catalog", "datacenters", env=env).stdout.decode().split() == ["dc1"]
    out = run("catalog", "datacenters", "-ca-path", str(agent.pki / "empty-dir"), *(
        ["-http-addr", agent.https, "-client-cert", agent["dc1-client-consul-0.pem"],
         "-client-key", agent["dc1-client-consul-0-key.pem"]]))  # fmt: skip
    assert out.returncode == 1


def test_tls_options_reach_lock_and_the_connect_proxy(agent: Agent) -> None:
    https = ["-http-addr", agent.https]
    out = run("lock", *https, *agent.client_tls, "locks/tls", "true", process=True)
    assert out.returncode == 0, out.stderr
    out = run("lock", *https, "locks/tls", "true", process=True)
    assert out.returncode == 1
    # The proxy reads its registration over HTTPS: it reaches the agent, which knows no such service.
    out = run("connect", "proxy", *https, *agent.client_tls, "-sidecar-for", "nosuch", process=True)
    err = out.stderr.decode()
    assert out.returncode == 1 and "Error connecting" not in err and "nosuch" in err, err
