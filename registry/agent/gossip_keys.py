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

A keyring operation in Consul is a Serf query every member of the pool answers (Serf's internal queries
``_serf_list-keys``, ``_serf_install-key``, ``_serf_use-key``, ``_serf_remove-key``; keymanager.go). Here
too: ``KeyringOps.run`` asks the LAN pool (``attach``: the gossip driver's ``query``), every member runs
``local_op`` on its own keyring (``answer_query``, the handler each agent registers) and the origin sums
the answers with ``merge`` (``NumNodes`` the members expected to answer, ``Keys`` and ``PrimaryKeys``
how many of them hold each key, failures by member in ``Messages``). Without a pool (or ``local-only``
for a list) the operation is this agent's own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from registry.config import Config, ConfigError
from registry.gossip.codec import PacketCodec, PlainCodec
from registry.gossip.core import QueryError
from registry.gossip.keyring import LAN_KEYRING_FILE, Keyring, KeyringError, decode_base64, decode_key
from registry.gossip.security import EncryptedCodec

__all__ = ["KEYRING_QUERIES", "KeyringOps", "NodeKeyReply", "PoolAnswers", "gossip_codec", "has_gossip_key",
           "setup_keyring", "validate_encrypt"]

KEYRING_EXISTS_WARNING = "WARNING: LAN keyring exists but -encrypt given, using keyring"
# Serf's internal query names (serf/internal_query.go), by operation.
KEYRING_QUERIES = {"list": "_serf_list-keys", "install": "_serf_install-key", "use": "_serf_use-key",
                   "remove": "_serf_remove-key"}  # fmt: skip
_OPS = {name: op for op, name in KEYRING_QUERIES.items()}
# Asks the pool: (query name, payload) -> each member's answer by name, and the members expected to answer.
PoolAnswers = Callable[[str, bytes], Awaitable[tuple[dict[str, bytes], frozenset[str]]]]


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
        self._pool: PoolAnswers | None = None

    def attach(self, pool: PoolAnswers) -> None:
        """Run operations across the LAN pool from now on (``pool`` asks every member a query)."""
        self._pool = pool

    def answer_query(self, name: str, payload: bytes) -> bytes:
        """This member's answer to a keyring query (Serf's handleListKeys / handleModifyKeyring): the
        request is ``{"Key": <base64>}``, the answer Serf's nodeKeyResponse ``{Result, Message, Keys,
        PrimaryKey}``, msgpack-encoded."""
        op = _OPS[name]
        key = ""
        if op != "list":
            try:
                request = msgpack.unpackb(payload, raw=False, max_str_len=256, max_map_len=4)
                key = request["Key"] if isinstance(request, dict) and isinstance(request.get("Key"), str) else ""
            except Exception:  # noqa: BLE001 - any malformed request is answered as Serf answers it
                key = ""
            if not key:
                reply = NodeKeyReply(self.node, False, "Failed to decode key request")
                return _encode_reply(reply)
        return _encode_reply(self.local_op(op, key))
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

    async def run(self, op: str, key: str = "", local_only: bool = False) -> tuple[list[dict[str, Any]], str]:
        """The operation over the pool: Consul's list of KeyringResponse (one, the LAN pool of this
        datacenter) and the error text Consul's HTTP endpoint answers 500 with ("" if none)."""
        if op != "list":
            try:
                decode_base64(key)
            except KeyringError as exc:  # Serf refuses the request before querying anyone
                response = self._response([], str(exc))
                return [response], keyring_errors([response])
        if self._pool is None or local_only:
            response = merge(self.datacenter, [self.local_op(op, key)])
            return [response], keyring_errors([response])
        payload = b"" if op == "list" else msgpack.packb({"Key": key})
        try:
            answers, expected = await self._pool(KEYRING_QUERIES[op], payload)
        except QueryError as exc:  # e.g. this agent has left the pool: nobody would answer
            response = self._response([], str(exc))
            return [response], keyring_errors([response])
        replies = [_decode_reply(node, data) for node, data in sorted(answers.items())]
        response = merge(self.datacenter, replies, num_nodes=len(expected | answers.keys()))
        return [response], keyring_errors([response])

    def _response(self, replies: list[NodeKeyReply], error: str) -> dict[str, Any]:
        return {"WAN": False, "Datacenter": self.datacenter, "Segment": "", "Messages": {}, "Keys": {},
                "PrimaryKeys": {}, "NumNodes": len(replies), "Error": error}  # fmt: skip


def _encode_reply(reply: NodeKeyReply) -> bytes:
    return msgpack.packb({"Result": reply.ok, "Message": reply.message, "Keys": reply.keys,
                          "PrimaryKey": reply.primary})  # fmt: skip


def _decode_reply(node: str, data: bytes) -> NodeKeyReply:
    """A member's answer, or a failure saying it could not be read (Serf: "Failed to decode response")."""
    try:
        raw = msgpack.unpackb(data, raw=False, max_array_len=1024, max_map_len=8)
    except Exception:  # noqa: BLE001 - whatever a member sent, it is its failure, not ours
        raw = None
    if (not isinstance(raw, dict) or not isinstance(raw.get("Result"), bool)
            or not isinstance(raw.get("Message", ""), str) or not isinstance(raw.get("Keys", []), list)
            or not all(isinstance(k, str) for k in raw.get("Keys", []))
            or not isinstance(raw.get("PrimaryKey", ""), str)):  # fmt: skip
        return NodeKeyReply(node, False, "Failed to decode response")
    return NodeKeyReply(node, raw["Result"], raw.get("Message", ""), list(raw.get("Keys", [])),
                        raw.get("PrimaryKey", ""))  # fmt: skip


def merge(datacenter: str, replies: list[NodeKeyReply], num_nodes: int | None = None) -> dict[str, Any]:
    """The members' answers summed as Serf's keyManager does: each key counted once per member holding
    it, the failures' messages by member name, and Serf's errors: ``N/M nodes reported failure`` when any
    failed, ``N/M nodes reported success`` when fewer answered than ``num_nodes`` (the members asked;
    those that answered by default)."""
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
    nodes = len(replies) if num_nodes is None else max(num_nodes, len(replies))
    error = ""
    if failed:
        error = f"{failed}/{nodes} nodes reported failure"
    elif len(replies) != nodes:
        error = f"{len(replies)}/{nodes} nodes reported success"
    return {"WAN": False, "Datacenter": datacenter, "Segment": "", "Messages": messages, "Keys": keys,
            "PrimaryKeys": primary, "NumNodes": nodes, "Error": error}  # fmt: skip


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
