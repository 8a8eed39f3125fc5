"""Durable Raft term and vote, plus small metadata such as the node id and cluster id.

Raft requires currentTerm and votedFor to be on stable storage before a server answers any RPC
(Figure 2): a server that forgets its vote after a crash can vote twice in one term and help elect
two leaders. So ``save`` returns only after the new value is on disk, and the file is replaced
atomically: write a temporary file, fsync it, rename it over the old one, fsync the directory. A crash
at any point leaves either the old or the new file, never a mix.

File format: magic "PCSTABLE" | version u16 | reserved u16 | payload length u32 | crc32(payload) u32 |
msgpack payload {"term": int, "vote": str | None, "meta": {str: str | int | bytes}}.

The store does not lock its directory; the caller holds the data-directory lock (the WAL takes one).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from registry.raft.durable import (
    FRAME_HEADER,
    FrameChecksumError,
    FrameError,
    decode_frame_header,
    decode_frame_payload,
    encode_frame,
    fsync_dir,
)

__all__ = ["MetaValue", "StableState", "StableStore", "StableStoreCorruptError"]

MetaValue = str | int | bytes

_MAGIC = b"PCSTABLE"
_VERSION = 1
_TMP_SUFFIX = ".tmp"
DEFAULT_FILENAME = "raft-stable"


class StableStoreCorruptError(Exception):
    """The stable-state file cannot be trusted."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(
            f"Raft stable state file {path} is corrupt: {problem}. It holds this server's current term "
            "and the vote it cast; guessing them could let the server vote twice in one term and help "
            "elect two leaders, so Proconsul refuses to start. To recover: stop the server, move its "
            "data directory aside, remove it from the cluster with 'consul operator raft remove-peer', "
            "and start it with an empty data directory so it rejoins as a new member, or restore the data "
            "directory from a backup."
        )


@dataclass(frozen=True)
class StableState:
    term: int = 0
    vote: str | None = None
    metadata: Mapping[str, MetaValue] = field(default_factory=lambda: MappingProxyType({}))


def _encode(state: StableState) -> bytes:
    return encode_frame(_MAGIC, _VERSION, {"term": state.term, "vote": state.vote, "meta": dict(state.metadata)})


def _decode(path: Path, raw: bytes) -> StableState:
    if len(raw) < FRAME_HEADER.size:
        raise StableStoreCorruptError(path, f"file is {len(raw)} bytes, shorter than its header")
    try:
        length, crc = decode_frame_header(raw, _MAGIC, _VERSION, "a Proconsul stable-state file")
    except FrameError as exc:
        raise StableStoreCorruptError(path, exc.problem) from None
    payload = raw[FRAME_HEADER.size :]
    if len(payload) != length:
        raise StableStoreCorruptError(path, f"header says {length} payload bytes, file has {len(payload)}")
    try:
        value = decode_frame_payload(payload, crc)
    except FrameChecksumError:
        raise StableStoreCorruptError(path, "checksum mismatch") from None
    except FrameError as exc:
        raise StableStoreCorruptError(path, f"payload is not valid ({exc.problem})") from exc
    try:
        term, vote, meta = value["term"], value["vote"], value["meta"]
    except (KeyError, TypeError) as exc:
        raise StableStoreCorruptError(path, f"payload is not valid ({exc})") from exc
    if type(term) is not int or term < 0 or not (vote is None or isinstance(vote, str)):
        raise StableStoreCorruptError(path, "payload has an invalid term or vote")
    if not isinstance(meta, dict):
        raise StableStoreCorruptError(path, "payload has invalid metadata")
    return StableState(term=term, vote=vote, metadata=MappingProxyType(dict(meta)))


class StableStore:
    """Term, vote and small metadata in one atomically replaced, checksummed file."""

    def __init__(self, path: Path, state: StableState) -> None:
        # Use StableStore.open().
        self._path = path
        self._state = state

    @classmethod
    def open(cls, directory: str | os.PathLike[str], *, filename: str = DEFAULT_FILENAME) -> StableStore:
        """Load the stored state (term 0, no vote, no metadata if the file does not exist yet).

        A leftover temporary file is from a save that crashed before its rename; the save never
        returned, so its value was never relied on and the file is removed. Raises
        StableStoreCorruptError if the stored file is damaged.
        """
        path = Path(directory)
        if not path.exists():
            path.mkdir(parents=True)
            fsync_dir(path.parent)
        target = path / filename
        tmp = target.with_name(target.name + _TMP_SUFFIX)
        if tmp.exists():
            tmp.unlink()
            fsync_dir(path)
        state = _decode(target, target.read_bytes()) if target.exists() else StableState()
        return cls(target, state)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def state(self) -> StableState:
        return self._state

    @property
    def term(self) -> int:
        return self._state.term

    @property
    def vote(self) -> str | None:
        return self._state.vote

    @property
    def metadata(self) -> Mapping[str, MetaValue]:
        return self._state.metadata

    def save(self, term: int, vote: str | None) -> None:
        """Durably record the current term and the vote cast in it (None: not voted yet).

        Rejects what Raft never does, because doing it would be a bug in the caller that breaks
        election safety: lowering the term, or changing a vote already cast in the same term.
        """
        current = self._state
        if term < current.term:
            raise ValueError(f"term would go backwards: {current.term} -> {term}")
        if term == current.term and current.vote is not None and vote != current.vote:
            raise ValueError(
                f"already voted for {current.vote!r} in term {term}; cannot change it to {vote!r}"
            )
        if term == current.term and vote == current.vote:
            return  # already durable
        self._write(StableState(term=term, vote=vote, metadata=current.metadata))

    def set_metadata(self, key: str, value: MetaValue) -> None:
        """Durably store one metadata value (node id, cluster id, ...)."""
        if not isinstance(key, str):
            raise TypeError("metadata keys are strings")
        if not isinstance(value, str | int | bytes) or isinstance(value, bool):
            raise TypeError(f"metadata values are str, int or bytes, not {type(value).__name__}")
        if self._state.metadata.get(key) == value:
            return
        meta = dict(self._state.metadata)
        meta[key] = value
        self._write(
            StableState(term=self._state.term, vote=self._state.vote, metadata=MappingProxyType(meta))
        )

    def _write(self, state: StableState) -> None:
        tmp = self._path.with_name(self._path.name + _TMP_SUFFIX)
        data = _encode(state)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self._path)
        fsync_dir(self._path.parent)
        # Only now is the new value durable, so only now does the in-memory view change.
        self._state = state
