"""Connect through a client agent: a real server process and a real client agent process. The client
keeps no replica, so roots, signatures and authorize decisions reach it over the server RPC port; the
private key of each leaf is made on the client and never leaves it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ca import certs
from registry.testing import GOSSIP_KEY, free_port

BIN = str(Path(sys.executable).with_name("proconsul"))
pytestmark = pytest.mark.slow


def call(method: str, url: str, body: object = None) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw.strip() else None
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_for(what: str, check: Callable[[], object], procs: list[subprocess.Popen[bytes]], timeout: float = 30) -> object:
    deadline = time.monotonic() + timeout
    while True:
        for p in procs:
            assert p.poll() is None, p.stderr.read().decode() if p.stderr else "agent exited"
        try:
            result = check()
            if result:
                return result
        except OSError:
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    tmp = tmp_path_factory.mktemp("connect-client")
    server_port, server_http, client_http = free_port(), free_port(), free_port()
    server = subprocess.Popen([BIN, "agent", "-serf-lan-port", "0", "-server", "-insecure", "-bootstrap-expect", "1", "-node", "s1", "-bind", "127.0.0.1",
                               "-data-dir", str(tmp / "s1"), "-server-port", str(server_port),
                               "-http-port", str(server_http), "-dns-port", "-1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    procs = [server]
    s_url, c_url = f"http://127.0.0.1:{server_http}", f"http://127.0.0.1:{client_http}"
    try:
        wait_for("the CA", lambda: call("GET", s_url + "/v1/connect/ca/roots")[1]["Roots"], procs)  # type: ignore[index]
        client = subprocess.Popen([BIN, "agent", "-serf-lan-port", "0", "-node", "c1", "-bind", "127.0.0.1", "-data-dir", str(tmp / "c1"),
                                   "-retry-join", f"127.0.0.1:{server_port}", "-http-port", str(client_http), "-encrypt", GOSSIP_KEY,
                                   "-dns-port", "-1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        procs.append(client)

        def client_has_roots() -> bool:
            status, body = call("GET", c_url + "/v1/agent/connect/ca/roots")
            return status == 200 and bool(body["Roots"])  # type: ignore[index]

        wait_for("the client to follow the roots", client_has_roots, procs)
        yield s_url, c_url
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(15)


def test_client_agent_leaf_roots_and_authorize(cluster: tuple[str, str], tmp_path: Path) -> None:
    s_url, c_url = cluster
    _, server_roots = call("GET", s_url + "/v1/connect/ca/roots")
    _, client_roots = call("GET", c_url + "/v1/agent/connect/ca/roots")
    assert client_roots == server_roots
    status, leaf = call("GET", c_url + "/v1/agent/connect/ca/leaf/web")
    assert status == 200, leaf
    td = server_roots["TrustDomain"]  # type: ignore[index]
    assert leaf["ServiceURI"] == f"spiffe://{td}/ns/default/dc/dc1/svc/web"  # type: ignore[index]
    cert = certs.certs_from_pem(leaf["CertPEM"])[0]  # type: ignore[index]
    assert certs.key_id(certs.private_key_from_pem(leaf["PrivateKeyPEM"])) == certs.key_id(cert.public_key())  # type: ignore[index]
    (tmp_path / "roots.pem").write_text("".join(r["RootCert"] for r in server_roots["Roots"]))  # type: ignore[index]
    (tmp_path / "leaf.pem").write_text(leaf["CertPEM"])  # type: ignore[index]
    out = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "roots.pem"), str(tmp_path / "leaf.pem")],
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr

    web = leaf["ServiceURI"]  # type: ignore[index]
    status, out_ = call("POST", c_url + "/v1/agent/connect/authorize", {"Target": "db", "ClientCertURI": web})
    assert (status, out_) == (200, {"Authorized": True, "Reason": "Default behavior configured by ACLs"})
    assert call("PUT", s_url + "/v1/connect/intentions/exact?source=web&destination=db", {"Action": "deny"})[0] == 200
    status, out_ = call("POST", c_url + "/v1/agent/connect/authorize", {"Target": "db", "ClientCertURI": web})
    assert status == 200 and out_["Authorized"] is False  # type: ignore[index]
    status, text = call("POST", c_url + "/v1/agent/connect/authorize", {"Target": "db", "ClientCertURI": web + "/x"})
    assert (status, text) == (400, "ClientCertURI not a valid Connect identifier")


def test_client_agent_follows_a_rotation(cluster: tuple[str, str]) -> None:
    s_url, c_url = cluster
    _, before = call("GET", c_url + "/v1/agent/connect/ca/leaf/api")
    status, text = call("PUT", s_url + "/v1/connect/ca/configuration",
                        {"Provider": "consul", "Config": {"PrivateKeyType": "ec", "PrivateKeyBits": 384}})  # fmt: skip
    assert status == 200, text
    _, roots = call("GET", s_url + "/v1/connect/ca/roots")
    active = next(r for r in roots["Roots"] if r["Active"])  # type: ignore[index]

    def renewed() -> dict | None:
        # A plain fetch revalidates: once the client has followed the new roots, it gets a new leaf.
        _, leaf = call("GET", c_url + "/v1/agent/connect/ca/leaf/api")
        return leaf if leaf["SerialNumber"] != before["SerialNumber"] else None  # type: ignore[index]

    after = wait_for("a leaf from the new root", renewed, [], timeout=20)
    chain = certs.certs_from_pem(after["CertPEM"])  # type: ignore[index]
    assert chain[0].issuer == certs.cert_from_pem(active["RootCert"]).subject
    assert len(chain) == 2  # the cross-signed new root ships with the leaf
