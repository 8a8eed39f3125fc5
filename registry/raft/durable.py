"""Durable files: the pieces the WAL, the snapshot store and the stable store share.

A file is durable once its bytes are fsynced and, when it was created or renamed, its directory is
fsynced too (the rename itself lives in the directory; etcd's and hashicorp/raft's file stores do the
same). Small self-describing records (the stable state, a snapshot's metadata) share one frame:

    magic 8 bytes | version u16 | reserved u16 | payload length u32 | crc32(payload) u32 | msgpack payload
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import Any

import msgpack

FRAME_HEADER = struct.Struct(">8sHHII")  # magic, version, reserved, payload length, crc32(payload)


class FrameError(Exception):
    """A framed record cannot be trusted; ``problem`` says why, in words for an operator."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


class FrameChecksumError(FrameError):
    pass


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (created, renamed, removed files) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def encode_frame(magic: bytes, version: int, value: Any) -> bytes:
    payload = msgpack.packb(value, use_bin_type=True)
    return FRAME_HEADER.pack(magic, version, 0, len(payload), zlib.crc32(payload)) + payload


def decode_frame_header(head: bytes, magic: bytes, version: int, what: str) -> tuple[int, int]:
    """Check a frame's header; answers (payload length, payload crc). ``what`` names the file kind in the
    bad-magic problem ("a Proconsul snapshot")."""
    found_magic, found_version, _reserved, length, crc = FRAME_HEADER.unpack_from(head, 0)
    if found_magic != magic:
        raise FrameError(f"bad magic (not {what})")
    if found_version != version:
        raise FrameError(f"unsupported format version {found_version}")
    return length, crc


def decode_frame_payload(payload: bytes, crc: int) -> Any:
    """The msgpack value of a payload whose length is already checked: FrameChecksumError when its bytes
    do not match the header's checksum, FrameError when they match but do not decode."""
    if zlib.crc32(payload) != crc:
        raise FrameChecksumError("checksum mismatch")
    try:
        return msgpack.unpackb(payload, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise FrameError(str(exc)) from exc
