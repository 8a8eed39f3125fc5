"""The agent's gossip encryption: its config keys, its keyring (loaded at start as Consul loads it), the
packet codec the gossip driver is given, and the keyring operations behind ``/v1/operator/keyring``.

Consul's rules (agent/config/builder.go, agent/keyring.go setupBaseKeyrings):
- ``encrypt`` is a base64 key of 16, 24 or 32 bytes (``encrypt has invalid key: ...`` otherwise);
- with a data dir, the keyring lives in ``<data_dir>/serf/local.keyring``: ``encrypt`` creates that file
  when there is none, and once it exists the file wins: ``encrypt`` is ignored with the warning
  ``WARNING: LAN keyring exists but -encrypt given, using keyring`` (keys installed and made primary by
  keyring operations survive a restart that still passes the original key);
- ``disable_keyring_file`` (and ``-dev``, which has no data dir) keeps the keys in memory only;
- ``encrypt_verify_incoming`` / ``encrypt_verify_outgoing`` (default true) are relaxed during a rolling
  upgrade from an unencrypted pool.

A keyring operation in Consul is a Serf query every member of the pool answers; ``KeyringOps`` runs the
operation on this agent's own keyring and answers in the same shape (one pool, this datacenter's LAN, with
``NumNodes`` the members that answered). Fanning it out to every member is the gossip pool's to do: the
pool's query calls ``KeyringOps.local_op`` on each member and sums the answers with ``merge``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.config import Config, ConfigError
from registry.gossip.codec import PacketCodec, PlainCodec
from registry.gossip.keyring import LAN_KEYRING_FILE, Keyring, KeyringError, decode_base64, decode_key
from registry.gossip.security import EncryptedCodec

__all__ = ["KeyringOps", "NodeKeyReply", "gossip_codec", "has_gossip_key", "setup_keyring", "validate_encrypt"]

KEYRING_EXISTS_WARNING = "WARNING: LAN keyring exists but -encrypt given, using keyring"


def validate_encrypt(cfg: Config) -> None:
    """A config validator: ``encrypt`` and its switches, refused with Consul's words."""
    key = cfg.extra.get("encrypt")
    if key is not None:
        if not isinstance(key, str):
            raise ConfigError(f"encrypt must be a string, got {key!r}")
        if key:
            try:
                decode_key(key)
            except KeyringError as exc:
                raise ConfigError(f"encrypt has invalid key: {exc}") from None
    for name in ("encrypt_verify_incoming", "encrypt_verify_outgoing", "disable_keyring_file"):
        value = cfg.extra.get(name)
        if value is not None and not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")


def keyring_path(cfg: Config) -> Path | None:
    """Where this agent keeps its keyring file, or None (no data dir, ``-dev``, ``disable_keyring_file``)."""
    if cfg.dev or not cfg.data_dir or cfg.extra.get("disable_keyring_file"):
        return None
    return Path(cfg.data_dir) / LAN_KEYRING_FILE


def has_gossip_key(cfg: Config) -> bool:
    """Whether this agent will encrypt gossip: an ``encrypt`` key, or a keyring file from an earlier run."""
    if cfg.extra.get("encrypt"):
        return True
    path = keyring_path(cfg)
    return path is not None and path.exists()


def setup_keyring(cfg: Config) -> tuple[Keyring | None, list[str]]:
    """This agent's keyring (None: gossip is not encrypted) and the warnings to log, by Consul's rules
    above. Raises ConfigError when the keyring file cannot be read or written."""
    key = cfg.extra.get("encrypt") or ""
    path = keyring_path(cfg)
    warnings: list[str] = []
    try:
        if path is None:
            return (Keyring([decode_key(key)]) if key else None), warnings
        if key:
            if path.exists():
                warnings.append(KEYRING_EXISTS_WARNING)
            else:
                Keyring.init_file(path, key)
        if not path.exists():
            return None, warnings
        return Keyring.load(path), warnings
    except KeyringError as exc:
        raise ConfigError(f"Failed to configure keyring: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"Failed to configure keyring: {path}: {exc.strerror or exc}") from None


def gossip_codec(cfg: Config, keyring: Keyring | None) -> PacketCodec:
    """What the gossip driver seals and opens packets with: AES-GCM over the keyring with the config's
    verify switches, or plain bytes when gossip is not encrypted."""
    if keyring is None:
        return PlainCodec()
    return EncryptedCodec(keyring, verify_incoming=bool(cfg.extra.get("encrypt_verify_incoming", True)),
                          verify_outgoing=bool(cfg.extra.get("encrypt_verify_outgoing", True)))  # fmt: skip


@dataclass
class NodeKeyReply:
    """One member's answer to a keyring query (Serf's nodeKeyResponse): whether it did it, why not, and
    its keys (for a list)."""

    node: str
    ok: bool
    message: str = ""
    keys: list[str] = field(default_factory=list)
    primary: str = ""


class KeyringOps:
    """The keyring operations of ``/v1/operator/keyring`` and ``proconsul keyring``, answered in Consul's
    shape (``structs.KeyringResponse``)."""

    def __init__(self, node: str, datacenter: str, keyring: Keyring | None) -> None:
        self.node = node
        self.datacenter = datacenter
        self.keyring = keyring

    def local_op(self, op: str, key: str = "") -> NodeKeyReply:
        """Run ``op`` (list, install, use, remove) on this member's keyring, as Serf's internal query
        handlers do (handleListKeys, handleModifyKeyring), with their messages."""
        ring = self.keyring
        if ring is None:
            message = ("Keyring is empty (encryption not enabled)" if op == "list"
                       else "No keyring to modify (encryption not enabled)")  # fmt: skip
            return NodeKeyReply(self.node, False, message)
        try:
            if op == "install":
                ring.install(key)
            elif op == "use":
                ring.use(key)
            elif op == "remove":
                ring.remove(key)
        except KeyringError as exc:
            return NodeKeyReply(self.node, False, str(exc))
        except OSError as exc:
            return NodeKeyReply(self.node, False, f"Failed to write keyring file: {exc.strerror or exc}")
        return NodeKeyReply(self.node, True, keys=ring.list_keys(), primary=ring.primary_key)

    def run(self, op: str, key: str = "") -> tuple[list[dict[str, Any]], str]:
        """The operation over the pool: Consul's list of KeyringResponse (one, the LAN pool of this
        datacenter) and the error text Consul's HTTP endpoint answers 500 with ("" if none)."""
        if op != "list":
            try:
                decode_base64(key)
            except KeyringError as exc:  # Serf refuses the request before querying anyone
                response = self._response([], str(exc))
                return [response], keyring_errors([response])
        replies = [self.local_op(op, key)]
        response = merge(self.datacenter, replies)
        return [response], keyring_errors([response])

    def _response(self, replies: list[NodeKeyReply], error: str) -> dict[str, Any]:
        return {"WAN": False, "Datacenter": self.datacenter, "Segment": "", "Messages": {}, "Keys": {},
                "PrimaryKeys": {}, "NumNodes": len(replies), "Error": error}  # fmt: skip


def merge(datacenter: str, replies: list[NodeKeyReply]) -> dict[str, Any]:
    """The members' answers summed as Serf's keyManager does: each key counted once per member holding
    it, the failures' messages by member name, and Serf's error when any failed."""
    keys: dict[str, int] = {}
    primary: dict[str, int] = {}
    messages: dict[str, str] = {}
    failed = 0
    for reply in replies:
        if not reply.ok:
            failed += 1
            messages[reply.node] = reply.message
        for k in reply.keys:
            keys[k] = keys.get(k, 0) + 1
        if reply.primary:
            primary[reply.primary] = primary.get(reply.primary, 0) + 1
    error = f"{failed}/{len(replies)} nodes reported failure" if failed else ""
    return {"WAN": False, "Datacenter": datacenter, "Segment": "", "Messages": messages, "Keys": keys,
            "PrimaryKeys": primary, "NumNodes": len(replies), "Error": error}  # fmt: skip


def keyring_errors(responses: list[dict[str, Any]]) -> str:
    """The error Consul's keyring endpoint returns (keyringErrorsOrNil), in go-multierror's format:
    each pool's error, then each member's message."""
    errors: list[str] = []
    for response in responses:
        if response["Error"]:
            pool = "WAN" if response["WAN"] else f"{response['Datacenter']} (LAN)"
            errors.append(f"{pool} error: {response['Error']}")
            errors.extend(f"{node}: {message}" for node, message in sorted(response["Messages"].items()))
    if not errors:
        return ""
    head = "1 error occurred:" if len(errors) == 1 else f"{len(errors)} errors occurred:"
    return head + "\n\t" + "\n\t".join(f"* {e}" for e in errors) + "\n\n"
