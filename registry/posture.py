"""Secure by default: what makes an agent's configuration insecure, and what the agent does about it.

Consul starts with ACLs off and plaintext RPC unless told otherwise ("Consul is not secure-by-default",
its security model); Proconsul turns that around. Outside ``-dev`` a server refuses to start unless

- ACLs are on with ``default_policy = "deny"`` (``acl { enabled = true, default_policy = "deny" }``), and
- its server port requires mutual TLS: ``tls.internal_rpc.verify_incoming`` with a CA, a certificate and
  its key, and ``verify_server_hostname``, so that a certificate must name ``server.<dc>.<domain>`` to
  join the Raft cluster (CVE-2021-37219: a client agent's certificate from the same CA must never act
  as a server; Consul calls this setting critical).

Outside ``-dev`` every agent, server or client, also refuses to start unless its gossip is encrypted:
``encrypt`` is set, or a keyring file from an earlier run exists (``<data_dir>/serf/local.keyring``, which
wins over ``encrypt`` as in Consul). Unencrypted gossip lets anyone on the network read the member list and
forge ``suspect`` and ``dead`` messages that mark live machines critical.

``insecure: true`` (config) or ``-insecure`` (flag), Proconsul's own addition, starts such a server
anyway; the agent then says so in its log at start, in ``/v1/agent/self`` (``DebugConfig.Insecure``
and ``DebugConfig.InsecureReasons``) and with a warning-state node check, ``proconsul-insecure``. A client
agent is never refused (it holds no state); one that talks to the servers without verifying them
(``verify_outgoing`` and ``verify_server_hostname``) logs the warning and reports it in ``/v1/agent/self``
but gets no check, which would keep its applications out of ``?passing``. ``-dev`` is open on purpose and
gets neither refusal nor check.

Pure functions of the configuration: no IO beyond what ``load_tls_settings`` reads (nothing: it only
merges keys) and whether the keyring file exists.
"""

from __future__ import annotations

from pathlib import Path

from registry.config import Config, ConfigError
from registry.gossip.keyring import LAN_KEYRING_FILE
from registry.tls import load_tls_settings

INSECURE_CHECK_ID = "proconsul-insecure"
INSECURE_CHECK_NAME = "Proconsul insecure configuration"

SERVER_FIX = ("acl.enabled: true, acl.default_policy: deny, tls.defaults.ca_file/cert_file/key_file, "
              "tls.internal_rpc.verify_incoming: true and tls.internal_rpc.verify_server_hostname: true")  # fmt: skip
GOSSIP_REASON = ("gossip is not encrypted (encrypt): anyone on the network can read the member list and forge "
                 "failures")  # fmt: skip
GOSSIP_FIX = "encrypt: <a key from proconsul keygen, the same on every agent>"
CLIENT_FIX = ("tls.defaults.ca_file, tls.internal_rpc.verify_outgoing: true and "
              "tls.internal_rpc.verify_server_hostname: true")  # fmt: skip


def insecure_reasons(cfg: Config) -> list[str]:
    """What is insecure about this agent's configuration, one short sentence each (empty: nothing, or
    ``-dev``, which is open by design). A malformed ``tls`` block is not judged here: validation refuses
    it with its own message."""
    if cfg.dev:
        return []
    try:
        rpc = load_tls_settings(cfg).internal_rpc
    except ConfigError:
        return []
    reasons = []
    if not gossip_encrypted(cfg):
        reasons.append(GOSSIP_REASON)
    if cfg.server:
        if not cfg.acl.get("enabled"):
            reasons.append("ACLs are disabled: anyone who reaches the HTTP API can read and write everything")
        elif cfg.acl.get("default_policy", "allow") != "deny":
            reasons.append('the ACL default policy is "allow": requests without a token can do anything')
        if not (rpc.verify_incoming and rpc.has_ca and rpc.has_cert):
            reasons.append("the server port does not require mutual TLS (tls.internal_rpc.verify_incoming)")
        elif not rpc.verify_server_hostname:
            reasons.append("server certificates are not checked for server.<datacenter>.<domain> "
                           "(tls.internal_rpc.verify_server_hostname): a client certificate could join as a "
                           "server")  # fmt: skip
    elif not (rpc.verify_outgoing and rpc.verify_server_hostname and rpc.has_ca):
        reasons.append("RPC to the servers is not verified TLS (tls.internal_rpc.verify_outgoing and "
                       "verify_server_hostname): traffic and tokens can be read or forged on the network")  # fmt: skip
    return reasons


def gossip_encrypted(cfg: Config) -> bool:
    """Whether this agent's gossip will be encrypted: ``encrypt``, or a keyring file left by an earlier run
    (with ``disable_keyring_file`` only ``encrypt`` counts)."""
    if cfg.extra.get("encrypt"):
        return True
    if not cfg.data_dir or cfg.extra.get("disable_keyring_file"):
        return False
    return (Path(cfg.data_dir) / LAN_KEYRING_FILE).exists()


def client_refusal(cfg: Config) -> str:
    """The message a client agent without gossip encryption is refused with."""
    return "\n".join([
        "Refusing to start an agent whose gossip is not encrypted:",
        f"  - {GOSSIP_REASON}",
        "Make a key once and give the same one to every agent of the datacenter:",
        "  proconsul keygen",
        "then set it in a config file (encrypt: <key>) or pass -encrypt <key>.",
        f"To start {cfg.node_name!r} anyway, pass -insecure (or set insecure: true): it will say so in its log and in "
        "/v1/agent/self.",
    ])  # fmt: skip


def refusal(cfg: Config, reasons: list[str]) -> str:
    """The one message a refused server prints: what is wrong, which keys to set, the commands that make
    the files, and how to start anyway."""
    name = cfg.node_name
    dc = cfg.datacenter
    lines = [
        "Refusing to start a server that is not secure:",
        *(f"  - {r}" for r in reasons),
        "Set these keys in a config file (HCL, JSON or YAML; -config-file or -config-dir):",
        "  acl:",
        "    enabled: true",
        "    default_policy: deny",
        "  tls:",
        "    defaults:",
        "      ca_file: consul-agent-ca.pem",
        f"      cert_file: {dc}-server-consul-0.pem",
        f"      key_file: {dc}-server-consul-0-key.pem",
        "    internal_rpc:",
        "      verify_incoming: true",
        "      verify_server_hostname: true",
        "  encrypt: <the output of proconsul keygen, the same on every agent>",
        "Make the files with:",
        "  proconsul tls ca create",
        f"  proconsul tls cert create -server -dc {dc}   (once per server: {dc}-server-consul-0.pem, -1, -2, ...)",
        "Once the servers are up, create the management token and use its SecretID (CONSUL_HTTP_TOKEN or -token):",
        "  proconsul acl bootstrap",
        "cluster.yaml and the README's cluster section show a whole secure cluster.",
        f"To start {name!r} anyway, pass -insecure (or set insecure: true): it will say so in its log, in "
        f"/v1/agent/self and with the warning check {INSECURE_CHECK_ID!r}.",
    ]
    return "\n".join(lines)


def check_output(cfg: Config, reasons: list[str]) -> str:
    """The warning check's output: what is insecure and how to fix it."""
    fix = f"set {SERVER_FIX}" if cfg.server else f"set {CLIENT_FIX}"
    if GOSSIP_REASON in reasons:
        fix += f" and {GOSSIP_FIX}"
    return ("This agent runs with an insecure configuration: " + "; ".join(reasons) + ". To fix it, " + fix
            + " (see the README's cluster section), then restart the agent.")  # fmt: skip


def require_secure(cfg: Config) -> None:
    """A config validator (``config.validate``): refuse an insecure server, and any agent whose gossip is not
    encrypted, unless ``insecure`` is set."""
    if cfg.dev or cfg.insecure:
        return
    reasons = insecure_reasons(cfg)
    if cfg.server and reasons:
        raise ConfigError(refusal(cfg, reasons))
    if GOSSIP_REASON in reasons:
        raise ConfigError(client_refusal(cfg))
