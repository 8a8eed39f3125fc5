"""The framed record shared by the stable store and snapshot metadata, and the directory fsync."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.raft.durable import (
    FRAME_HEADER,
    FrameChecksumError,
    FrameError,
    decode_frame_header,
    decode_frame_payload,
    encode_frame,
    fsync_dir,
)

MAGIC = b"PCTEST01"


def test_a_frame_round_trips() -> None:
    raw = encode_frame(MAGIC, 3, {"term": 7, "vote": "a", "blob": b"\x00\x01"})
    length, crc = decode_frame_header(raw, MAGIC, 3, "a test file")
    payload = raw[FRAME_HEADER.size :]
    assert len(payload) == length
    assert decode_frame_payload(payload, crc) == {"term": 7, "vote": "a", "blob": b"\x00\x01"}


def test_header_refusals_name_the_problem() -> None:
    raw = encode_frame(MAGIC, 1, [1])
    with pytest.raises(FrameError, match=r"^bad magic \(not a test file\)$"):
        decode_frame_header(b"XXXXXXXX" + raw[8:], MAGIC, 1, "a test file")
    with pytest.raises(FrameError, match="^unsupported format version 1$"):
        decode_frame_header(raw, MAGIC, 2, "a test file")


def test_payload_checksum_and_decoding() -> None:
    raw = encode_frame(MAGIC, 1, {"a": 1})
    _, crc = decode_frame_header(raw, MAGIC, 1, "x")
    payload = raw[FRAME_HEADER.size :]
    with pytest.raises(FrameChecksumError):
        decode_frame_payload(payload[:-1] + bytes([payload[-1] ^ 1]), crc)
    import zlib

    garbage = b"\xc1"  # never valid msgpack
    with pytest.raises(FrameError) as err:
        decode_frame_payload(garbage, zlib.crc32(garbage))
    assert not isinstance(err.value, FrameChecksumError)


def test_fsync_dir(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    fsync_dir(tmp_path)
