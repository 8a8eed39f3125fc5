"""Secure by default: which configurations are insecure, the refusal, and what `-insecure` says (a log
line at start, /v1/agent/self, the proconsul-insecure warning check) -- with a real agent process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from registry.config import Config, ConfigError, apply_mapping
from registry.posture import INSECURE_CHECK_ID, insecure_reasons, require_secure
from registry.testing import GOSSIP_KEY, free_port

BIN = str(Path(sys.executable).with_name("proconsul"))
TLS_SERVER = {"defaults": {"ca_file": "ca.pem", "cert_file": "s.pem", "key_file": "s-key.pem",
                           "verify_incoming": True, "verify_outgoing": True},
              "internal_rpc": {"verify_server_hostname": True}}  # fmt: skip
SECURE_ACL = {"enabled": True, "default_policy": "deny"}


def cfg(**keys: Any) -> Config:
    """A config with gossip encryption unless ``encrypt`` says otherwise (None: no key)."""
    c = Config(node_name="n1")
    keys.setdefault("encrypt", GOSSIP_KEY)
    if keys["encrypt"] is None:
        del keys["encrypt"]
    apply_mapping(c, keys)
    return c


def test_a_server_needs_acl_deny_and_mutual_tls() -> None:
    assert insecure_reasons(cfg(server=True, acl=SECURE_ACL, tls=TLS_SERVER)) == []
    both = insecure_reasons(cfg(server=True))
    assert len(both) == 2 and "ACLs are disabled" in both[0] and "verify_incoming" in both[1]
    allow = insecure_reasons(cfg(server=True, acl={"enabled": True}, tls=TLS_SERVER))
    assert allow == ['the ACL default policy is "allow": requests without a token can do anything']
    no_hostname = {"defaults": {**TLS_SERVER["defaults"]}}  # verify_incoming but any cert may be a server
    (reason,) = insecure_reasons(cfg(server=True, acl=SECURE_ACL, tls=no_hostname))
    assert "verify_server_hostname" in reason
    # The flat keys Consul still reads count too.
    flat = cfg(server=True, acl=SECURE_ACL, ca_file="ca.pem", cert_file="s.pem", key_file="s-key.pem",
               verify_incoming=True, verify_server_hostname=True)  # fmt: skip
    assert insecure_reasons(flat) == []


def test_dev_is_open_and_clients_need_verified_tls() -> None:
    assert insecure_reasons(cfg(dev=True)) == []
    (reason,) = insecure_reasons(cfg())
    assert "verify_outgoing" in reason
    client_tls = {"defaults": {"ca_file": "ca.pem", "verify_outgoing": True}, "internal_rpc": {"verify_server_hostname": True}}
    assert insecure_reasons(cfg(tls=client_tls)) == []


def test_refusal_names_the_keys_and_insecure_starts_anyway() -> None:
    with pytest.raises(ConfigError) as err:
        require_secure(cfg(server=True, data_dir="/tmp/x"))
    text = str(err.value)
    for needed in ("enabled: true", "default_policy: deny", "verify_incoming: true", "verify_server_hostname: true",
                   "proconsul tls ca create", "proconsul tls cert create -server", "proconsul acl bootstrap",
                   "-insecure"):  # fmt: skip
        assert needed in text, needed
    require_secure(cfg(server=True, insecure=True))
    require_secure(cfg(dev=True))
    require_secure(cfg())  # a client agent with encrypted gossip is warned about its RPC, never refused
    with pytest.raises(ConfigError, match="insecure must be true or false"):
        cfg(insecure="yes")


def test_every_agent_outside_dev_needs_gossip_encryption(tmp_path: Path) -> None:
    """No ``encrypt`` (and no keyring file from an earlier run): a client agent is refused too, with the
    commands that fix it; a server names it with its other reasons; ``-insecure`` and ``-dev`` start."""
    secure_server = {"server": True, "data_dir": str(tmp_path), "acl": SECURE_ACL, "tls": TLS_SERVER}
    (reason,) = insecure_reasons(cfg(encrypt=None, **secure_server))
    assert reason.startswith("gossip is not encrypted (encrypt)")
    with pytest.raises(ConfigError) as err:
        require_secure(cfg(encrypt=None, **secure_server))
    assert "encrypt: <the output of proconsul keygen" in str(err.value)
    with pytest.raises(ConfigError) as err:
        require_secure(cfg(encrypt=None, data_dir=str(tmp_path)))
    text = str(err.value)
    assert text.startswith("Refusing to start an agent whose gossip is not encrypted:")
    for needed in ("proconsul keygen", "-encrypt <key>", "-insecure"):
        assert needed in text, needed
    require_secure(cfg(encrypt=None, insecure=True))
    require_secure(cfg(encrypt=None, dev=True))
    # A keyring file left by an earlier run counts, as in Consul (the file wins over encrypt).
    ring = tmp_path / "serf" / "local.keyring"
    ring.parent.mkdir()
    ring.write_text(json.dumps([GOSSIP_KEY]))
    require_secure(cfg(encrypt=None, **secure_server))
    assert insecure_reasons(cfg(encrypt=None, disable_keyring_file=True, **secure_server))


def test_config_blocks_merge_into_earlier_ones() -> None:
    c = cfg(tls={"defaults": {"ca_file": "ca.pem", "verify_incoming": True}})
    apply_mapping(c, {"tls": {"defaults": {"cert_file": "s.pem", "key_file": "k.pem"}}})
    assert c.tls["defaults"] == {"ca_file": "ca.pem", "verify_incoming": True, "cert_file": "s.pem", "key_file": "k.pem"}


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def test_insecure_server_says_so_everywhere(tmp_path: Path) -> None:
    refused = subprocess.run([BIN, "agent", "-serf-lan-port", "0", "-server", "-bootstrap-expect", "1", "-data-dir", str(tmp_path / "r"),
                              "-http-port", str(free_port()), "-dns-port", "-1"],
                             capture_output=True, text=True, timeout=30)  # fmt: skip
    assert refused.returncode == 1 and "Refusing to start a server that is not secure" in refused.stderr

    http_port = free_port()
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([BIN, "agent", "-serf-lan-port", "0", "-server", "-insecure", "-bootstrap-expect", "1", "-node", "s1",
                                 "-bind", "127.0.0.1", "-server-port", str(free_port()), "-data-dir", str(tmp_path / "d"),
                                 "-http-port", str(http_port), "-dns-port", "-1"],
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    base = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 30
        check = None
        while time.monotonic() < deadline and check is None:
            try:
                checks = _get(base + "/v1/health/node/s1")
                check = next((c for c in checks if c["CheckID"] == INSECURE_CHECK_ID), None)
            except OSError:
                pass
            time.sleep(0.1)
        assert check is not None, log.read_text()
        assert check["Status"] == "warning"
        assert "ACLs are disabled" in check["Output"] and "verify_incoming" in check["Output"]
        assert "To fix it, set acl.enabled: true, acl.default_policy: deny" in check["Output"]
        debug = _get(base + "/v1/agent/self")["DebugConfig"]
        assert debug["Insecure"] is True and len(debug["InsecureReasons"]) == 3  # ACLs, TLS, gossip
        assert "gossip is not encrypted" in check["Output"] and "encrypt: <a key from proconsul keygen" in check["Output"]
        assert "agent running with an insecure configuration" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(15)


def test_dev_agent_has_no_insecure_check() -> None:
    from registry.testing import dev_agent

    with dev_agent() as agent:
        base = f"http://127.0.0.1:{agent.http_port}"
        assert _get(base + "/v1/agent/self")["DebugConfig"]["Insecure"] is False
        assert INSECURE_CHECK_ID not in _get(base + "/v1/agent/checks")


def test_a_client_agent_without_verified_tls_is_warned_without_a_check(tmp_path: Path) -> None:
    """A client agent talking plaintext RPC says so (log, /v1/agent/self) but gets no warning node check,
    which would keep its applications out of ?passing answers."""
    http_port = free_port()
    log = tmp_path / "client.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([BIN, "agent", "-serf-lan-port", "0", "-node", "c1", "-bind", "127.0.0.1", "-encrypt", GOSSIP_KEY, "-retry-join",
                                 f"127.0.0.1:{free_port()}", "-data-dir", str(tmp_path / "c"),
                                 "-http-port", str(http_port), "-dns-port", "-1"],
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    base = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 30
        debug = None
        while time.monotonic() < deadline and debug is None:
            try:
                debug = _get(base + "/v1/agent/self")["DebugConfig"]
            except OSError:
                time.sleep(0.1)
        assert debug is not None, log.read_text()
        assert debug["Insecure"] is True and any("verify_outgoing" in r for r in debug["InsecureReasons"])
        assert INSECURE_CHECK_ID not in _get(base + "/v1/agent/checks")
        assert "agent running with an insecure configuration" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(15)
