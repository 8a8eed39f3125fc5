"""The gossip encryption keyring: the keys a member can decrypt with, the primary one it encrypts with,
and their file in the data directory.

memberlist's ``Keyring`` (keyring.go) holds the keys, primary first; Serf writes them to a keyring file
(``serf/local.keyring`` under Consul's data dir) as a JSON list of base64 strings, primary first, after
every change, and Consul loads that file at start.  The operations and their refusals are memberlist's:
a key is 16, 24 or 32 bytes (AES-128, -192 or -256), ``use`` needs an installed key, the primary key
cannot be removed.

A ``Keyring`` is a plain object that one event loop owns; the codec (``registry.gossip.security``)
reads ``ciphers`` on every packet, so it keeps the AES-GCM objects built once per key.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["KEY_SIZES", "LAN_KEYRING_FILE", "Keyring", "KeyringError", "decode_base64", "decode_key", "encode_key", "generate_key"]

KEY_SIZES = (16, 24, 32)
LAN_KEYRING_FILE = "serf/local.keyring"  # Consul's SerfLANKeyring, relative to the data dir


class KeyringError(ValueError):
    """A key or keyring operation refused, in memberlist's and Serf's words."""


def generate_key() -> str:
    """A new key as ``consul keygen`` makes one: 32 random bytes (AES-256), standard base64."""
    return encode_key(secrets.token_bytes(32))


def encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def decode_base64(text: str) -> bytes:
    """Standard base64, refused as Go's base64.StdEncoding refuses it (``illegal base64 data at input
    byte N``, which Consul's messages carry)."""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise KeyringError(f"illegal base64 data at input byte {_bad_base64_offset(text)}") from None


def decode_key(text: str) -> bytes:
    """The bytes of a base64 key, refused unless 16, 24 or 32 bytes (memberlist's ValidateKey)."""
    raw = decode_base64(text)
    if len(raw) not in KEY_SIZES:
        raise KeyringError("key size must be 16, 24 or 32 bytes")
    return raw


def _bad_base64_offset(text: str) -> int:
    """Where Go's base64.StdEncoding.DecodeString stops: the first byte outside the alphabet, or the end
    of a string whose length is not a multiple of four."""
    alphabet = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
    for i, c in enumerate(text):
        if c not in alphabet and not (c == "=" and len(text) % 4 == 0 and i >= len(text) - 2):
            return i
    return len(text) - len(text) % 4


class Keyring:
    """Installed keys, primary first.  ``path`` (optional) is the keyring file rewritten after each
    change, as Serf's WriteKeyringFile does; ``None`` keeps the keys in memory only
    (``disable_keyring_file``)."""

    def __init__(self, keys: Sequence[bytes], path: Path | None = None) -> None:
        if not keys:
            raise KeyringError("empty primary key not allowed")
        for key in keys:
            if len(key) not in KEY_SIZES:
                raise KeyringError("key size must be 16, 24 or 32 bytes")
        self._keys: list[bytes] = []
        for key in keys:
            if key not in self._keys:
                self._keys.append(key)
        self.path = path
        self._ciphers: tuple[AESGCM, ...] = ()
        self._rebuild()

    # -- the file ------------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path, persist: bool = True) -> Keyring:
        """The keyring in ``path`` (a JSON list of base64 keys, the first the primary), as Consul's
        loadKeyringFile reads it.  Raises KeyringError saying what is wrong with the file."""
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            raise KeyringError(f"reading keyring file {path}: {exc.strerror}") from None
        except ValueError as exc:
            raise KeyringError(f"keyring file {path} is not a JSON list of keys: {exc}") from None
        if not isinstance(data, list) or not all(isinstance(k, str) for k in data):
            raise KeyringError(f"keyring file {path} is not a JSON list of keys")
        if not data:
            raise KeyringError(f"no keys present in keyring: {path}")
        try:
            keys = [decode_key(k) for k in data]
        except KeyringError as exc:
            raise KeyringError(f"keyring file {path}: {exc}") from None
        return cls(keys, path if persist else None)

    @staticmethod
    def init_file(path: Path, key: str) -> bool:
        """Write a keyring file holding ``key`` unless one exists (Consul's initKeyring); True if written."""
        decode_key(key)
        if path.exists():
            return False
        _write_keyring_file(path, [key])
        return True

    def save(self) -> None:
        if self.path is not None:
            _write_keyring_file(self.path, self.list_keys())

    # -- views ---------------------------------------------------------------------------------------

    @property
    def primary(self) -> bytes:
        return self._keys[0]

    def list_keys(self) -> list[str]:
        """Every installed key, base64, primary first."""
        return [encode_key(k) for k in self._keys]

    @property
    def primary_key(self) -> str:
        return encode_key(self._keys[0])

    @property
    def ciphers(self) -> tuple[AESGCM, ...]:
        """One AES-GCM per key, the primary first: what a packet is sealed with (the first) and opened with
        (each in turn, memberlist's decryptPayload)."""
        return self._ciphers

    # -- operations (memberlist's AddKey, UseKey, RemoveKey; each persisted as Serf does) ------------

    def install(self, key: str) -> None:
        raw = decode_key(key)
        if raw not in self._keys:
            self._keys.append(raw)
            self._changed()

    def use(self, key: str) -> None:
        raw = decode_key(key)
        if raw not in self._keys:
            raise KeyringError("requested key is not in the keyring")
        if raw != self._keys[0]:
            self._keys.remove(raw)
            self._keys.insert(0, raw)
            self._changed()

    def remove(self, key: str) -> None:
        raw = decode_key(key)
        if raw == self._keys[0]:
            raise KeyringError("removing the primary key is not allowed")
        if raw in self._keys:
            self._keys.remove(raw)
            self._changed()

    def _changed(self) -> None:
        self._rebuild()
        self.save()

    def _rebuild(self) -> None:
        self._ciphers = tuple(AESGCM(k) for k in self._keys)


def _write_keyring_file(path: Path, keys: list[str]) -> None:
    """Write atomically (a temporary file renamed over the old one), mode 0600 in a 0700 directory: the
    file holds secrets, and a crash mid-write must not leave an agent without its keys."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(keys, indent=2))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
