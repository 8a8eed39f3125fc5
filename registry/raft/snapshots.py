"""Raft snapshot store: checksummed snapshot files, the newest few kept, streamed to followers.

One file per snapshot, named ``<index, 20 digits>-<term, 20 digits>.snap``::

    header   magic "PCSNAPv1" | version u16 | reserved u16 | meta length u32 | crc32(meta) u32
    meta     msgpack {"index": int, "term": int, "configuration": dict}
    data     the state machine's bytes, opaque here
    trailer  data length u64 | crc32(data) u32 | magic "PCSNAEND"

The checksum of the data sits in a trailer so a snapshot can be written as a stream (the FSM does not
have to build it in memory first). Files only appear complete: they are written to a temporary name,
fsynced, renamed and the directory fsynced, so a crash leaves the previous snapshots untouched.

Followers receive the leader's file byte for byte (``open_reader`` -> chunks -> ``begin_receive``)
and verify it end to end before it is renamed into place, so a damaged transfer is never installed.

Compaction policy belongs to the caller: ``latest()`` falls back to an older snapshot when the newest
is damaged, which only helps if the WAL still holds the entries after that older snapshot (keep some
trailing log when compacting, as hashicorp/raft's TrailingLogs does).
"""

from __future__ import annotations

import os
import re
import struct
import tempfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import structlog

from registry.raft.durable import (
    FRAME_HEADER,
    FrameChecksumError,
    FrameError,
    decode_frame_header,
    decode_frame_payload,
    encode_frame,
    fsync_dir,
)

__all__ = [
    "SnapshotCorruptError",
    "SnapshotMeta",
    "SnapshotReader",
    "SnapshotReceiver",
    "SnapshotStore",
    "SnapshotWriter",
]

log = structlog.get_logger(__name__)

_MAGIC = b"PCSNAPv1"
_END_MAGIC = b"PCSNAEND"
_VERSION = 1
_TRAILER = struct.Struct(">QI8s")  # data length, crc32(data), end magic
_NAME = re.compile(r"^(\d{20})-(\d{20})\.snap$")
_TMP_SUFFIX = ".tmp"
_CORRUPT_SUFFIX = ".corrupt"
_READ_CHUNK = 1 << 20
_MAX_META = 64 << 20


class SnapshotCorruptError(Exception):
    """A snapshot file (stored or being received) failed verification."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"Raft snapshot {path} is corrupt: {problem}")


@dataclass(frozen=True)
class SnapshotMeta:
    """What identifies a snapshot and what a follower needs to know before receiving it."""

    index: int
    term: int
    configuration: Mapping[str, Any] = field(hash=False)
    data_size: int
    file_size: int

    @property
    def name(self) -> str:
        return _file_name(self.index, self.term)

    def to_wire(self) -> dict[str, Any]:
        """A msgpack-ready dict for the InstallSnapshot RPC."""
        return {
            "index": self.index,
            "term": self.term,
            "configuration": dict(self.configuration),
            "data_size": self.data_size,
            "file_size": self.file_size,
        }

    @classmethod
    def from_wire(cls, value: Mapping[str, Any]) -> SnapshotMeta:
        return cls(
            index=int(value["index"]),
            term=int(value["term"]),
            configuration=dict(value["configuration"]),
            data_size=int(value["data_size"]),
            file_size=int(value["file_size"]),
        )


def _file_name(index: int, term: int) -> str:
    return f"{index:020d}-{term:020d}.snap"


def _encode_header(index: int, term: int, configuration: Mapping[str, Any]) -> bytes:
    if index < 1 or term < 1:
        raise ValueError(f"a snapshot needs index >= 1 and term >= 1, got index={index} term={term}")
    return encode_frame(_MAGIC, _VERSION, {"index": index, "term": term, "configuration": dict(configuration)})


def _read_meta(path: Path, f: BinaryIO) -> tuple[SnapshotMeta, int, int]:
    """Parse header, meta and trailer: (meta, data offset, data crc). Does not read the data."""
    f.seek(0, os.SEEK_END)
    file_size = f.tell()
    f.seek(0)
    head = f.read(FRAME_HEADER.size)
    if len(head) < FRAME_HEADER.size:
        raise SnapshotCorruptError(path, f"file is {file_size} bytes, shorter than its header")
    try:
        meta_len, meta_crc = decode_frame_header(head, _MAGIC, _VERSION, "a Proconsul snapshot")
    except FrameError as exc:
        raise SnapshotCorruptError(path, exc.problem) from None
    if meta_len > _MAX_META or FRAME_HEADER.size + meta_len + _TRAILER.size > file_size:
        raise SnapshotCorruptError(
            path, f"metadata length {meta_len} does not fit in a {file_size}-byte file"
        )
    try:
        value = decode_frame_payload(f.read(meta_len), meta_crc)
    except FrameChecksumError:
        raise SnapshotCorruptError(path, "metadata checksum mismatch") from None
    except FrameError as exc:
        raise SnapshotCorruptError(path, f"metadata is not valid ({exc.problem})") from exc
    try:
        index, term, configuration = value["index"], value["term"], value["configuration"]
    except (KeyError, TypeError) as exc:
        raise SnapshotCorruptError(path, f"metadata is not valid ({exc})") from exc
    if type(index) is not int or type(term) is not int or not isinstance(configuration, dict):
        raise SnapshotCorruptError(path, "metadata has an invalid index, term or configuration")
    data_offset = FRAME_HEADER.size + meta_len
    f.seek(file_size - _TRAILER.size)
    data_len, data_crc, end_magic = _TRAILER.unpack(f.read(_TRAILER.size))
    if end_magic != _END_MAGIC:
        raise SnapshotCorruptError(path, "trailer is missing (the file is truncated or damaged)")
    if data_offset + data_len + _TRAILER.size != file_size:
        raise SnapshotCorruptError(
            path, f"trailer says {data_len} data bytes, which does not match the file size"
        )
    meta = SnapshotMeta(
        index=index, term=term, configuration=configuration, data_size=data_len, file_size=file_size
    )
    return meta, data_offset, data_crc


def _verify_data(path: Path, f: BinaryIO, offset: int, size: int, expected_crc: int, keep: bool) -> bytes:
    """Check the data checksum, reading in chunks; returns the data if ``keep``, else b""."""
    f.seek(offset)
    crc = 0
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = f.read(min(_READ_CHUNK, remaining))
        if not chunk:
            raise SnapshotCorruptError(path, "file ended inside the data")
        crc = zlib.crc32(chunk, crc)
        if keep:
            chunks.append(chunk)
        remaining -= len(chunk)
    if crc != expected_crc:
        raise SnapshotCorruptError(path, "data checksum mismatch")
    return b"".join(chunks)


def _verify_file(path: Path, *, keep: bool = True) -> tuple[SnapshotMeta, bytes]:
    """Parse and fully verify a snapshot file; the data is returned only if ``keep``."""
    with path.open("rb") as f:
        meta, offset, crc = _read_meta(path, f)
        data = _verify_data(path, f, offset, meta.data_size, crc, keep)
    return meta, data


class _TempSnapshot:
    """A snapshot file under construction under a temporary name in the store's directory."""

    def __init__(self, store: SnapshotStore) -> None:
        self._store = store
        fd, name = tempfile.mkstemp(dir=store.directory, prefix="incoming-", suffix=_TMP_SUFFIX)
        self._path = Path(name)
        self._file: BinaryIO | None = os.fdopen(fd, "wb")
        self._done = False

    def _write_raw(self, chunk: bytes) -> None:
        if self._file is None:
            raise ValueError("snapshot writer is already committed or aborted")
        self._file.write(chunk)

    def _finish(
        self, expected_index: int, expected_term: int, expected_file_size: int | None
    ) -> SnapshotMeta:
        """Flush, fsync, verify, rename into place, fsync the directory, apply retention."""
        if self._file is None:
            raise ValueError("snapshot writer is already committed or aborted")
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            # Verify what is on disk, not what we meant to write: this is what a restart will read.
            meta, _ = _verify_file(self._path, keep=False)
            if (meta.index, meta.term) != (expected_index, expected_term):
                raise SnapshotCorruptError(
                    self._path,
                    f"it is snapshot {meta.index}/{meta.term}, expected {expected_index}/{expected_term}",
                )
            if expected_file_size is not None and meta.file_size != expected_file_size:
                raise SnapshotCorruptError(
                    self._path, f"received {meta.file_size} bytes, expected {expected_file_size}"
                )
            final = self._store.directory / meta.name
            os.rename(self._path, final)
            fsync_dir(self._store.directory)
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._store._apply_retention()
        return meta

    def abort(self) -> None:
        """Discard the partial snapshot. Safe to call more than once, and after a failed commit."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if not self._done:
            self._path.unlink(missing_ok=True)
            self._done = True

    def __enter__(self) -> _TempSnapshot:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        # Leaving the block without commit (or with an exception) discards the snapshot.
        self.abort()


class SnapshotWriter(_TempSnapshot):
    """Streams a new snapshot from the state machine: ``write`` data chunks, then ``commit``."""

    def __init__(self, store: SnapshotStore, index: int, term: int, configuration: Mapping[str, Any]) -> None:
        header = _encode_header(index, term, configuration)  # validates before creating a file
        super().__init__(store)
        self._index = index
        self._term = term
        self._crc = 0
        self._size = 0
        self._write_raw(header)

    def write(self, chunk: bytes) -> None:
        self._write_raw(chunk)
        self._crc = zlib.crc32(chunk, self._crc)
        self._size += len(chunk)

    def commit(self) -> SnapshotMeta:
        self._write_raw(_TRAILER.pack(self._size, self._crc, _END_MAGIC))
        return self._finish(self._index, self._term, None)


class SnapshotReceiver(_TempSnapshot):
    """Receives a leader's snapshot file as raw chunks; ``commit`` verifies it before installing it."""

    def __init__(self, store: SnapshotStore, meta: SnapshotMeta) -> None:
        super().__init__(store)
        self._meta = meta
        self._received = 0

    @property
    def received(self) -> int:
        """Bytes received so far (the offset the leader should continue from)."""
        return self._received

    def write(self, chunk: bytes) -> None:
        if self._received + len(chunk) > self._meta.file_size:
            self.abort()
            raise SnapshotCorruptError(
                self._path, f"leader sent more than the announced {self._meta.file_size} bytes"
            )
        self._write_raw(chunk)
        self._received += len(chunk)

    def commit(self) -> SnapshotMeta:
        """Verify checksums, index, term and size; install; raise SnapshotCorruptError if it is bad."""
        return self._finish(self._meta.index, self._meta.term, self._meta.file_size)


class SnapshotReader:
    """Reads a stored snapshot file as raw bytes, for sending it to a follower in chunks.

    The file stays open, so the transfer finishes even if retention deletes the snapshot meanwhile.
    """

    def __init__(self, meta: SnapshotMeta, path: Path) -> None:
        self.meta = meta
        self._fd: int | None = os.open(path, os.O_RDONLY)

    @property
    def size(self) -> int:
        return self.meta.file_size

    def read_at(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes starting at ``offset`` (empty at the end): resumable transfers."""
        if self._fd is None:
            raise ValueError("snapshot reader is closed")
        return os.pread(self._fd, min(size, max(0, self.size - offset)), offset)

    def chunks(self, chunk_size: int = _READ_CHUNK) -> Iterator[bytes]:
        offset = 0
        while offset < self.size:
            chunk = self.read_at(offset, chunk_size)
            if not chunk:
                raise SnapshotCorruptError(Path(self.meta.name), "file is shorter than its metadata says")
            yield chunk
            offset += len(chunk)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> SnapshotReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SnapshotStore:
    """Snapshots in one directory, newest ``retain`` kept. Create with ``SnapshotStore.open``."""

    def __init__(self, directory: Path, retain: int) -> None:
        self._dir = directory
        self._retain = retain

    @classmethod
    def open(cls, directory: str | os.PathLike[str], *, retain: int = 2) -> SnapshotStore:
        """Open (creating if needed) the store; leftover partial snapshots from a crash are removed."""
        if retain < 1:
            raise ValueError("retain must be at least 1")
        path = Path(directory)
        if not path.exists():
            path.mkdir(parents=True)
            fsync_dir(path.parent)
        leftovers = [p for p in path.iterdir() if p.name.endswith(_TMP_SUFFIX)]
        for leftover in leftovers:
            leftover.unlink()
        if leftovers:
            fsync_dir(path)
        return cls(path, retain)

    @property
    def directory(self) -> Path:
        return self._dir

    def create(self, index: int, term: int, configuration: Mapping[str, Any], data: bytes) -> SnapshotMeta:
        """Durably store a snapshot of the state machine at log ``index``/``term``."""
        writer = SnapshotWriter(self, index, term, configuration)
        try:
            writer.write(data)
            return writer.commit()
        finally:
            writer.abort()  # no-op after a successful commit

    def begin_create(self, index: int, term: int, configuration: Mapping[str, Any]) -> SnapshotWriter:
        """Stream a snapshot instead of passing its data at once; ``commit`` or ``abort`` it."""
        return SnapshotWriter(self, index, term, configuration)

    def list(self) -> list[SnapshotMeta]:
        """Stored snapshots, newest first. Reads headers only; data is verified by ``load``/``latest``.

        Files whose header cannot be read are skipped with a warning (``latest`` deals with them).
        """
        out = []
        for path in self._paths_newest_first():
            try:
                with path.open("rb") as f:
                    out.append(_read_meta(path, f)[0])
            except SnapshotCorruptError as exc:
                log.warning("snapshot.unreadable", file=str(path), problem=exc.problem)
        return out

    def load(self, meta: SnapshotMeta) -> bytes:
        """The data of a stored snapshot, checksum verified."""
        stored, data = _verify_file(self._dir / meta.name)
        if (stored.index, stored.term) != (meta.index, meta.term):
            raise SnapshotCorruptError(self._dir / meta.name, "file does not hold the snapshot its name says")
        return data

    def latest(self) -> tuple[SnapshotMeta, bytes] | None:
        """The newest snapshot that verifies, or None if there are no snapshots.

        A damaged newer snapshot is renamed to ``*.corrupt`` (kept for the operator, out of the way of
        retention) and logged, and the next older one is tried. If snapshots exist but none verifies,
        SnapshotCorruptError is raised: starting from an empty state machine would be wrong.
        """
        failures: list[SnapshotCorruptError] = []
        for path in self._paths_newest_first():
            try:
                meta, data = _verify_file(path)
                if meta.name != path.name:
                    raise SnapshotCorruptError(path, f"file holds snapshot {meta.index}/{meta.term}")
            except SnapshotCorruptError as exc:
                quarantined = path.with_name(path.name + _CORRUPT_SUFFIX)
                os.rename(path, quarantined)
                fsync_dir(self._dir)
                log.warning(
                    "snapshot.corrupt_skipped",
                    file=str(path),
                    problem=exc.problem,
                    moved_to=str(quarantined),
                    action="falling back to the previous snapshot",
                )
                failures.append(exc)
                continue
            return meta, data
        if failures:
            raise SnapshotCorruptError(
                failures[0].path,
                f"{failures[0].problem}; no older snapshot verifies either ({len(failures)} damaged, moved "
                "to *.corrupt). Restore the data directory from a backup, or start this server with an "
                "empty data directory so it receives a snapshot from the leader",
            )
        return None

    def open_reader(self, meta: SnapshotMeta) -> SnapshotReader:
        """Open a stored snapshot's file for sending it to a follower."""
        return SnapshotReader(meta, self._dir / meta.name)

    def begin_receive(self, meta: SnapshotMeta) -> SnapshotReceiver:
        """Start receiving a snapshot a leader announced with ``meta`` (see SnapshotMeta.to_wire)."""
        return SnapshotReceiver(self, meta)

    def _paths_newest_first(self) -> list[Path]:
        found = []
        for child in self._dir.iterdir():
            match = _NAME.match(child.name)
            if match:
                found.append(((int(match.group(1)), int(match.group(2))), child))
        found.sort(reverse=True)
        return [path for _key, path in found]

    def _apply_retention(self) -> None:
        stale = self._paths_newest_first()[self._retain :]
        for path in stale:
            path.unlink(missing_ok=True)
        if stale:
            fsync_dir(self._dir)
