"""Segmented write-ahead log for the Raft log.

On-disk layout: one directory holding segment files named ``<first index, 20 digits>.wal`` and a
``LOCK`` file. A segment is a 24-byte header followed by records::

    header  magic "PCWALSEG" | version u16 | reserved u16 | first_index u64 | crc32(header[0:20]) u32
    record  length u32 | crc32(length bytes + payload) u32 | payload = msgpack [index, term, kind, data]

Design decisions, and why:

- Group commit. ``append`` hands the encoded batch to the kernel with one ``write`` and ``sync`` issues
  one ``fsync`` for everything appended since the last sync. The fsync is the expensive part (hundreds
  of microseconds), so the driver appends many proposals and syncs once.
- Only the newest segment can be torn. When a segment fills up it is fsynced ("sealed") before the next
  one is created, and a new segment only appears through write-temp/fsync/rename/fsync-dir, so after a
  crash every segment but the last is complete and has a valid header. A damaged older segment is
  therefore real corruption, never a crash artefact, and we refuse to start.
- Compaction deletes whole segment files and nothing else. There is no free list or page map that grows
  with history (Consul's BoltDB freelist turned a write burst into a long outage), so the cost of an
  append does not depend on how much was ever written or deleted.
- Reads of entries that are appended but not yet synced are allowed: a Raft leader may send entries to
  followers while its own fsync is in flight (Raft thesis 10.2.1); it must not count itself in the
  commit quorum until ``sync`` returns.
- After a failed write or fsync the WAL refuses all further use. Once fsync has reported an error the
  kernel may have dropped the dirty pages, so a retry that "succeeds" proves nothing (PostgreSQL's
  fsyncgate); the safe move is to restart and recover from what is really on disk.

The class is not thread-safe: the Raft driver owns it (it may call it from one executor thread).
"""

from __future__ import annotations

import fcntl
import os
import re
import struct
import zlib
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import msgpack
import structlog

from registry.raft.durable import fsync_dir

__all__ = [
    "DEFAULT_MAX_SEGMENT_BYTES",
    "Entry",
    "RecoveryReport",
    "TornTail",
    "WAL",
    "WALClosedError",
    "WALCorruptError",
    "WALError",
    "WALFailedError",
    "WALLockedError",
]

log = structlog.get_logger(__name__)

DEFAULT_MAX_SEGMENT_BYTES = 64 * 1024 * 1024

_SEGMENT_MAGIC = b"PCWALSEG"
_SEGMENT_VERSION = 1
_SEGMENT_HEADER = struct.Struct(">8sHHQI")  # magic, version, reserved, first_index, crc
_SEGMENT_HEADER_SIZE = _SEGMENT_HEADER.size  # 24
_RECORD_HEADER = struct.Struct(">II")  # payload length, crc
_RECORD_HEADER_SIZE = _RECORD_HEADER.size  # 8
# A record payload is a msgpack fixarray of 4 elements, so its first byte is always 0x94. Recovery
# uses this to skip quickly over bytes that cannot start a record when it looks for valid data after
# a damaged one.
_PAYLOAD_FIRST_BYTE = 0x94
# Longest payload accepted. Bounded by the u32 length field; anything larger in a header read back
# from disk is damage, not data.
_MAX_PAYLOAD = 0xFFFF_FFFF
# Torn-write detection granularity: the smallest unit a disk writes atomically.
_SECTOR = 512
_SEGMENT_NAME = re.compile(r"^(\d{20})\.wal$")
_LOCK_NAME = "LOCK"
_TMP_SUFFIX = ".tmp"


class Entry(NamedTuple):
    """One Raft log entry, as stored. A plain tuple, so callers can pass and unpack tuples."""

    index: int
    term: int
    kind: int
    data: bytes


class WALError(Exception):
    """Base class for WAL errors."""


class WALCorruptError(WALError):
    """The log on disk is damaged in a way that is not explained by a crash during a write."""

    def __init__(self, path: Path, offset: int, problem: str) -> None:
        self.path = path
        self.offset = offset
        self.problem = problem
        super().__init__(
            f"Raft WAL segment {path} is corrupt at byte offset {offset}: {problem}. This is not a torn "
            "write from a crash, so Proconsul refuses to start rather than silently drop committed log "
            "entries. To recover this server: stop it, move its data directory aside (keep it for "
            "analysis), start it with an empty data directory so it rejoins and receives a snapshot "
            "from the leader (if it was a voter that cannot rejoin, remove it first with "
            "'consul operator raft remove-peer'), or restore the data directory from a backup."
        )


class WALFailedError(WALError):
    """A write or fsync failed earlier; the in-memory view can no longer be trusted to match the disk."""


class WALClosedError(WALError):
    """The WAL was used after close()."""


class WALLockedError(WALError):
    """Another process (or another WAL object in this process) has the directory open."""


@dataclass(frozen=True)
class TornTail:
    """What recovery cut from the end of the newest segment."""

    path: Path
    offset: int
    dropped_bytes: int
    reason: str


@dataclass(frozen=True)
class RecoveryReport:
    """What ``WAL.open`` found on disk."""

    segments: int
    entries: int
    first_index: int
    last_index: int
    torn_tail: TornTail | None = None
    removed_empty_segment: Path | None = None
    removed_temp_files: tuple[Path, ...] = ()


@dataclass
class _Segment:
    first_index: int
    path: Path
    # Byte offset of each record and the term of each entry, indexed by (index - first_index). These
    # grow with the live log only; compaction drops them together with the file.
    offsets: array = field(default_factory=lambda: array("Q"))
    terms: array = field(default_factory=lambda: array("Q"))
    size: int = _SEGMENT_HEADER_SIZE
    fd: int | None = None
    writable: bool = False

    @property
    def count(self) -> int:
        return len(self.offsets)

    @property
    def last_index(self) -> int:
        return self.first_index + len(self.offsets) - 1

    def record_end(self, position: int) -> int:
        """Byte offset just past the record at ``position`` (0-based within the segment)."""
        if position + 1 < len(self.offsets):
            return self.offsets[position + 1]
        return self.size


def _segment_name(first_index: int) -> str:
    return f"{first_index:020d}.wal"


def _segment_header(first_index: int) -> bytes:
    body = _SEGMENT_HEADER.pack(_SEGMENT_MAGIC, _SEGMENT_VERSION, 0, first_index, 0)[:-4]
    return body + zlib.crc32(body).to_bytes(4, "big")


def _encode_record(index: int, term: int, kind: int, data: bytes) -> bytes:
    payload = msgpack.packb((index, term, kind, data), use_bin_type=True)
    length = len(payload).to_bytes(4, "big")
    crc = zlib.crc32(payload, zlib.crc32(length))
    return length + crc.to_bytes(4, "big") + payload


def _decode_payload(payload: bytes | memoryview) -> Entry | None:
    """Decode a payload whose checksum already matched; None if it is not a well-formed entry."""
    try:
        value = msgpack.unpackb(payload, use_list=False, raw=False)
    except (ValueError, msgpack.UnpackException):
        return None
    if not isinstance(value, tuple) or len(value) != 4:
        return None
    index, term, kind, data = value
    if (
        not (type(index) is int and type(term) is int and type(kind) is int and isinstance(data, bytes))
        or index < 1
        or term < 0
        or kind < 0
    ):
        return None
    return Entry(index, term, kind, data)


def _record_at(buf: bytes | memoryview, offset: int) -> tuple[Entry, int] | str:
    """Parse the record at ``offset``: (entry, end offset) or a description of what is wrong."""
    remaining = len(buf) - offset
    if remaining < _RECORD_HEADER_SIZE:
        return f"partial record header ({remaining} of {_RECORD_HEADER_SIZE} bytes)"
    length, crc = _RECORD_HEADER.unpack_from(buf, offset)
    if length == 0:
        return "record length is zero"
    start = offset + _RECORD_HEADER_SIZE
    if length > len(buf) - start:
        return f"partial record (header says {length} payload bytes, {len(buf) - start} present)"
    payload = buf[start : start + length]
    if zlib.crc32(payload, zlib.crc32(length.to_bytes(4, "big"))) != crc:
        return "record checksum mismatch"
    entry = _decode_payload(payload)
    if entry is None:
        return "record checksum matches but the payload is not a log entry"
    return entry, start + length


def _valid_record_after(buf: bytes, start: int) -> int | None:
    """Offset of the first checksum-valid record that begins at or after ``start``, if any.

    Used only on the error path to tell a torn tail (nothing valid follows) from damage in the middle.
    """
    position = start + _RECORD_HEADER_SIZE
    while True:
        hit = buf.find(bytes((_PAYLOAD_FIRST_BYTE,)), position)
        if hit < 0:
            return None
        candidate = hit - _RECORD_HEADER_SIZE
        if isinstance(_record_at(buf, candidate), tuple):
            return candidate
        position = hit + 1


def _record_extent(buf: bytes, offset: int) -> int:
    """End of the bytes the (damaged) record at ``offset`` claims, clamped to the file."""
    if len(buf) - offset < _RECORD_HEADER_SIZE:
        return len(buf)
    (length,) = struct.unpack_from(">I", buf, offset)
    if length == 0 or offset + _RECORD_HEADER_SIZE + length > len(buf):
        return min(len(buf), offset + _RECORD_HEADER_SIZE)
    return offset + _RECORD_HEADER_SIZE + length


def _touches_zero_sector(buf: bytes, start: int, end: int) -> bool:
    """True if an aligned sector overlapping [start, end) exists in the file and is entirely zero.

    A sector of zeros where a record should be is what a file system shows for a page that never
    reached the disk before a crash, even when later pages of the same unsynced write did (etcd #6378).
    """
    sector = (start // _SECTOR) * _SECTOR
    while sector < end:
        chunk = buf[sector : sector + _SECTOR]
        if len(chunk) == _SECTOR and chunk.count(0) == _SECTOR:
            return True
        sector += _SECTOR
    return False


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class WAL:
    """A segmented, checksummed, group-committed Raft log. Create with ``WAL.open``.

    Indexes are Raft log indexes (1-based). Ranges are half-open: ``entries(lo, hi)`` is [lo, hi).
    An empty log reports ``first_index == last_index == 0`` and accepts any index >= 1 as its next
    entry (a follower that installs a snapshot discards its log and continues at snapshot index + 1);
    a non-empty log only accepts ``last_index + 1``.
    """

    def __init__(self, directory: Path, lock_fd: int, max_segment_bytes: int) -> None:
        # Use WAL.open(); the constructor only wires fields.
        self._dir = directory
        self._lock_fd: int | None = lock_fd
        self._max_segment_bytes = max_segment_bytes
        self._segments: list[_Segment] = []
        self._dirty = False
        self._failed: str | None = None
        self.recovery = RecoveryReport(0, 0, 0, 0)

    # ------------------------------------------------------------------ opening and recovery

    @classmethod
    def open(
        cls, directory: str | os.PathLike[str], *, max_segment_bytes: int = DEFAULT_MAX_SEGMENT_BYTES
    ) -> WAL:
        """Open (creating if needed) the WAL in ``directory`` and recover it.

        Recovery cuts a torn tail of the newest segment (logged as ``wal.torn_tail_cut``) and raises
        ``WALCorruptError`` for anything else that is damaged or out of order. Afterwards
        ``first_index``/``last_index`` describe the recovered log, ``iter_entries()`` replays it and
        ``recovery`` says what was found.
        """
        if max_segment_bytes < _SEGMENT_HEADER_SIZE + _RECORD_HEADER_SIZE + 1:
            raise ValueError(f"max_segment_bytes={max_segment_bytes} is too small")
        path = Path(directory)
        if not path.exists():
            path.mkdir(parents=True)
            fsync_dir(path.parent)
        lock_fd = os.open(path / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise WALLockedError(
                f"Raft WAL directory {path} is already in use by another Proconsul process (or another "
                "open WAL in this one); two servers must not share a data directory."
            ) from None
        wal = cls(path, lock_fd, max_segment_bytes)
        try:
            wal._recover()
        except BaseException:
            wal._close_files()
            raise
        return wal

    def _recover(self) -> None:
        removed_tmp: list[Path] = []
        names: list[tuple[int, Path]] = []
        for child in self._dir.iterdir():
            if child.name.endswith(_TMP_SUFFIX):
                # A segment that was being created when we crashed; it was never renamed into place,
                # so nothing in it was ever acknowledged.
                child.unlink()
                removed_tmp.append(child)
                continue
            match = _SEGMENT_NAME.match(child.name)
            if match:
                names.append((int(match.group(1)), child))
        if removed_tmp:
            fsync_dir(self._dir)
        names.sort()

        torn: TornTail | None = None
        removed_empty: Path | None = None
        expected_next: int | None = None
        for position, (first_index, path) in enumerate(names):
            is_last = position == len(names) - 1
            if expected_next is not None and first_index != expected_next:
                raise WALCorruptError(
                    path,
                    0,
                    f"segment starts at index {first_index} but the previous segment ends at "
                    f"{expected_next - 1} (a segment file is missing or left over)",
                )
            previous_term = self._segments[-1].terms[-1] if self._segments else 0
            segment, torn_here = self._recover_segment(path, first_index, is_last, previous_term)
            if torn_here is not None:
                torn = torn_here
            if segment.count == 0:
                if not is_last:
                    raise WALCorruptError(path, _SEGMENT_HEADER_SIZE, "segment holds no records")
                # Created and renamed into place, then crashed before its first record was durable.
                path.unlink()
                fsync_dir(self._dir)
                removed_empty = path
                continue
            self._segments.append(segment)
            expected_next = segment.last_index + 1

        if self._segments:
            active = self._segments[-1]
            active.fd = os.open(active.path, os.O_RDWR | os.O_APPEND)
            active.writable = True
        self.recovery = RecoveryReport(
            segments=len(self._segments),
            entries=len(self),
            first_index=self.first_index,
            last_index=self.last_index,
            torn_tail=torn,
            removed_empty_segment=removed_empty,
            removed_temp_files=tuple(removed_tmp),
        )

    def _recover_segment(
        self, path: Path, first_index: int, is_last: bool, previous_term: int
    ) -> tuple[_Segment, TornTail | None]:
        buf = path.read_bytes()
        if len(buf) < _SEGMENT_HEADER_SIZE:
            raise WALCorruptError(path, 0, f"segment header is truncated ({len(buf)} bytes)")
        magic, version, _reserved, header_index, crc = _SEGMENT_HEADER.unpack_from(buf, 0)
        if magic != _SEGMENT_MAGIC or zlib.crc32(buf[: _SEGMENT_HEADER_SIZE - 4]) != crc:
            raise WALCorruptError(path, 0, "segment header is damaged (bad magic or checksum)")
        if version != _SEGMENT_VERSION:
            raise WALCorruptError(path, 0, f"unsupported segment format version {version}")
        if header_index != first_index:
            raise WALCorruptError(
                path,
                0,
                f"segment header says first index {header_index} but the file name says {first_index}",
            )

        segment = _Segment(first_index=first_index, path=path)
        offset = _SEGMENT_HEADER_SIZE
        expected = first_index
        problem: str | None = None
        while offset < len(buf):
            parsed = _record_at(buf, offset)
            if isinstance(parsed, str):
                problem = parsed
                break
            entry, end = parsed
            if entry.index != expected:
                # The checksum is fine, so this is not damage from a crash: the log is out of order.
                raise WALCorruptError(
                    path, offset, f"found index {entry.index} where {expected} was expected"
                )
            last_term = segment.terms[-1] if segment.terms else previous_term
            if entry.term < last_term:
                raise WALCorruptError(
                    path, offset, f"term goes backwards ({last_term} -> {entry.term}) at index {entry.index}"
                )
            segment.offsets.append(offset)
            segment.terms.append(entry.term)
            offset = end
            expected += 1
        segment.size = offset
        if problem is None:
            return segment, None

        if not is_last:
            raise WALCorruptError(
                path,
                offset,
                f"{problem} in a sealed segment (older segments are fsynced before a new one is "
                "started, so a crash cannot leave them incomplete)",
            )
        follower = _valid_record_after(buf, offset + 1)
        if follower is not None and not _touches_zero_sector(buf, offset, _record_extent(buf, offset)):
            raise WALCorruptError(path, offset, f"{problem}, and a valid record follows at offset {follower}")
        # A torn tail: the end of the last unsynced batch. Nothing from it was acknowledged (an
        # acknowledged entry was covered by an fsync, which would have made it whole), so cut it.
        torn = TornTail(path=path, offset=offset, dropped_bytes=len(buf) - offset, reason=problem)
        log.warning(
            "wal.torn_tail_cut",
            file=str(path),
            offset=offset,
            dropped_bytes=len(buf) - offset,
            reason=problem,
            kept_last_index=segment.last_index if segment.count else None,
        )
        fd = os.open(path, os.O_RDWR)
        try:
            os.ftruncate(fd, offset)
            os.fsync(fd)
        finally:
            os.close(fd)
        return segment, torn

    # ------------------------------------------------------------------ queries

    @property
    def directory(self) -> Path:
        return self._dir

    @property
    def first_index(self) -> int:
        """Index of the oldest entry still stored, or 0 when the log is empty."""
        return self._segments[0].first_index if self._segments else 0

    @property
    def last_index(self) -> int:
        """Index of the newest entry (synced or not), or 0 when the log is empty."""
        return self._segments[-1].last_index if self._segments else 0

    @property
    def last_term(self) -> int:
        """Term of the newest entry, or 0 when the log is empty."""
        return self._segments[-1].terms[-1] if self._segments else 0

    @property
    def segment_count(self) -> int:
        return len(self._segments)

    @property
    def has_unsynced(self) -> bool:
        """True if entries were appended (or a file changed) since the last ``sync``."""
        return self._dirty

    def __len__(self) -> int:
        return self.last_index - self.first_index + 1 if self._segments else 0

    def term_at(self, index: int) -> int | None:
        """Term of the entry at ``index``, or None if the log does not hold it."""
        segment = self._find(index)
        if segment is None:
            return None
        return segment.terms[index - segment.first_index]

    def entries(self, lo: int, hi: int, *, max_bytes: int | None = None) -> list[Entry]:
        """Entries with lo <= index < hi, read back from disk with checksums verified.

        ``max_bytes`` caps the encoded size of the result (for sizing AppendEntries), but the first
        entry is always returned so progress is possible. Raises IndexError unless
        first_index <= lo <= hi <= last_index + 1.
        """
        self._check_usable()
        if lo == hi:
            return []
        if not self._segments or not (self.first_index <= lo < hi <= self.last_index + 1):
            raise IndexError(
                f"entries [{lo}, {hi}) are not all in the log (holds [{self.first_index}, {self.last_index}])"
            )
        out: list[Entry] = []
        budget = max_bytes
        index = lo
        for segment in self._segments_from(lo):
            if index >= hi:
                break
            start_pos = index - segment.first_index
            stop_pos = min(hi, segment.last_index + 1) - segment.first_index
            start = segment.offsets[start_pos]
            if budget is not None:
                # Shrink the range before reading so a small cap does not read whole segments. Only
                # the very first entry is taken regardless of the cap.
                stop = start_pos if out else start_pos + 1
                while stop < stop_pos and segment.record_end(stop) - start <= budget:
                    stop += 1
                if stop == start_pos:
                    break
                stop_pos = stop
            end = segment.record_end(stop_pos - 1)
            buf = self._pread(segment, start, end - start)
            offset = 0
            for _ in range(stop_pos - start_pos):
                parsed = _record_at(buf, offset)
                if isinstance(parsed, str) or parsed[0].index != index:
                    problem = parsed if isinstance(parsed, str) else f"found index {parsed[0].index}"
                    raise WALCorruptError(segment.path, start + offset, f"on read: {problem}")
                entry, offset = parsed
                out.append(entry)
                index += 1
            if budget is not None:
                budget -= end - start
                if budget <= 0 or index <= segment.last_index:
                    break
        return out

    def iter_entries(self, lo: int | None = None, *, batch: int = 4096) -> Iterator[Entry]:
        """Yield every entry from ``lo`` (default: the first) to the last, reading in batches."""
        index = self.first_index if lo is None else lo
        while self._segments and index <= self.last_index:
            chunk = self.entries(index, min(self.last_index + 1, index + batch))
            yield from chunk
            index += len(chunk)

    # ------------------------------------------------------------------ writes

    def append(self, entries: Iterable[tuple[int, int, int, bytes]]) -> None:
        """Append entries after the last one; they are durable only after the next ``sync``.

        The whole batch is validated first (consecutive indexes continuing the log, terms never going
        backwards), so an invalid batch changes nothing. The bytes go to the kernel in one write per
        segment touched; when a segment would exceed ``max_segment_bytes`` it is sealed (fsynced) and a
        new one is created, which is the only time append itself waits for the disk.
        """
        self._check_usable()
        batch = [Entry(int(i), int(t), int(k), bytes(d)) for i, t, k, d in entries]
        if not batch:
            return
        expected = self.last_index + 1 if self._segments else batch[0].index
        previous_term = self.last_term
        for entry in batch:
            if entry.index != expected:
                raise ValueError(f"log entry index {entry.index} does not follow {expected - 1}")
            if entry.index < 1:
                raise ValueError(f"log indexes start at 1, got {entry.index}")
            if entry.term < previous_term:
                raise ValueError(
                    f"term goes backwards at index {entry.index}: {previous_term} -> {entry.term}"
                )
            if entry.kind < 0:
                raise ValueError(f"entry kind must be >= 0, got {entry.kind}")
            expected += 1
            previous_term = entry.term

        pending = bytearray()
        pending_offsets: list[int] = []
        pending_terms: list[int] = []
        segment = self._segments[-1] if self._segments else None
        for entry in batch:
            record = _encode_record(*entry)
            if len(record) - _RECORD_HEADER_SIZE > _MAX_PAYLOAD:
                raise ValueError(f"log entry {entry.index} is too large ({len(record)} bytes)")
            if segment is not None:
                used = segment.size + len(pending)
                if used + len(record) > self._max_segment_bytes and (segment.count or pending_offsets):
                    self._write_pending(segment, pending, pending_offsets, pending_terms)
                    self._seal(segment)
                    segment = None
            if segment is None:
                segment = self._create_segment(entry.index)
                pending, pending_offsets, pending_terms = bytearray(), [], []
            pending_offsets.append(segment.size + len(pending))
            pending_terms.append(entry.term)
            pending += record
        assert segment is not None
        self._write_pending(segment, pending, pending_offsets, pending_terms)

    def sync(self) -> None:
        """Make everything appended so far durable with a single fsync of the active segment."""
        self._check_usable()
        if not self._dirty or not self._segments:
            return
        segment = self._segments[-1]
        assert segment.fd is not None
        try:
            os.fsync(segment.fd)
        except OSError as exc:
            self._fail(f"fsync of {segment.path} failed: {exc}")
            raise WALFailedError(self._failed) from exc
        self._dirty = False

    def truncate_suffix(self, from_index: int) -> None:
        """Durably delete every entry with index >= ``from_index`` (a conflicting suffix).

        A ``from_index`` at or below ``first_index`` empties the log (used when a snapshot replaces
        the whole log); one above ``last_index`` changes nothing. Returns after the change is on disk.
        """
        self._check_usable()
        if not self._segments or from_index > self.last_index:
            return
        removed_any = False
        try:
            while self._segments and self._segments[-1].first_index >= from_index:
                # Newest first: a crash part way through leaves a contiguous prefix of the old log.
                segment = self._segments.pop()
                self._close_segment(segment)
                segment.path.unlink()
                removed_any = True
            if removed_any:
                fsync_dir(self._dir)
            if self._segments:
                # The remaining newest segment becomes the active one. If it was sealed it is already
                # durable; if it holds the cut point, the fsync after ftruncate also covers any of its
                # unsynced appends before the cut.
                segment = self._segments[-1]
                if not segment.writable:
                    self._reopen_writable(segment)
                keep = from_index - segment.first_index
                if keep < segment.count:
                    cut = segment.offsets[keep]
                    assert segment.fd is not None
                    os.ftruncate(segment.fd, cut)
                    os.fsync(segment.fd)
                    del segment.offsets[keep:]
                    del segment.terms[keep:]
                    segment.size = cut
        except OSError as exc:
            self._fail(f"truncating the log from index {from_index} failed: {exc}")
            raise WALFailedError(self._failed) from exc
        self._dirty = False

    def compact(self, up_to_index: int) -> int:
        """Delete whole segments whose entries all have index <= ``up_to_index``; return how many.

        Meant for entries covered by a snapshot. The newest segment is never deleted, so the log is
        never emptied by compaction and the entry at the snapshot index usually stays readable.
        Nothing is rewritten and no bookkeeping is kept about what was removed.
        """
        self._check_usable()
        removed = 0
        try:
            while len(self._segments) > 1 and self._segments[0].last_index <= up_to_index:
                # Oldest first: a crash part way through leaves a contiguous suffix.
                segment = self._segments.pop(0)
                self._close_segment(segment)
                segment.path.unlink()
                removed += 1
            if removed:
                fsync_dir(self._dir)
        except OSError as exc:
            self._fail(f"compacting the log up to index {up_to_index} failed: {exc}")
            raise WALFailedError(self._failed) from exc
        return removed

    def close(self) -> None:
        """Sync anything pending (unless the WAL has failed), close files and release the lock."""
        if self._lock_fd is None:
            return
        try:
            if self._failed is None:
                self.sync()
        finally:
            self._close_files()

    def __enter__(self) -> WAL:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _check_usable(self) -> None:
        if self._lock_fd is None:
            raise WALClosedError(f"the WAL in {self._dir} is closed")
        if self._failed is not None:
            raise WALFailedError(
                f"the WAL in {self._dir} is unusable after an earlier I/O failure ({self._failed}); "
                "restart the server so it recovers from what is really on disk"
            )

    def _fail(self, reason: str) -> None:
        self._failed = reason
        log.error("wal.failed", directory=str(self._dir), reason=reason)

    def _close_files(self) -> None:
        for segment in self._segments:
            self._close_segment(segment)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    @staticmethod
    def _close_segment(segment: _Segment) -> None:
        if segment.fd is not None:
            os.close(segment.fd)
            segment.fd = None
            segment.writable = False

    def _reopen_writable(self, segment: _Segment) -> None:
        self._close_segment(segment)
        segment.fd = os.open(segment.path, os.O_RDWR | os.O_APPEND)
        segment.writable = True

    def _find(self, index: int) -> _Segment | None:
        if not self._segments or not (self.first_index <= index <= self.last_index):
            return None
        lo, hi = 0, len(self._segments) - 1
        while lo < hi:  # last segment whose first_index <= index
            mid = (lo + hi + 1) // 2
            if self._segments[mid].first_index <= index:
                lo = mid
            else:
                hi = mid - 1
        return self._segments[lo]

    def _segments_from(self, index: int) -> Iterator[_Segment]:
        first = self._find(index)
        started = False
        for segment in self._segments:
            started = started or segment is first
            if started:
                yield segment

    def _pread(self, segment: _Segment, offset: int, size: int) -> bytes:
        if segment.fd is None:
            # Sealed segments are opened on first read and kept open until compaction or close.
            segment.fd = os.open(segment.path, os.O_RDONLY)
        chunks = []
        while size > 0:
            chunk = os.pread(segment.fd, size, offset)
            if not chunk:
                raise WALCorruptError(segment.path, offset, "on read: file is shorter than recovered")
            chunks.append(chunk)
            offset += len(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def _create_segment(self, first_index: int) -> _Segment:
        path = self._dir / _segment_name(first_index)
        if path.exists():
            raise WALError(f"segment {path} already exists; the log's in-memory view is inconsistent")
        tmp = path.with_name(path.name + _TMP_SUFFIX)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                _write_all(fd, _segment_header(first_index))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, path)
            fsync_dir(self._dir)
            fd = os.open(path, os.O_RDWR | os.O_APPEND)
        except OSError as exc:
            self._fail(f"creating segment {path} failed: {exc}")
            raise WALFailedError(self._failed) from exc
        segment = _Segment(first_index=first_index, path=path, fd=fd, writable=True)
        self._segments.append(segment)
        return segment

    def _write_pending(
        self, segment: _Segment, pending: bytearray, offsets: list[int], terms: list[int]
    ) -> None:
        if not pending:
            return
        assert segment.fd is not None and segment.writable
        try:
            _write_all(segment.fd, pending)
        except OSError as exc:
            # Try to put the file back the way the in-memory view describes it, so a restart does not
            # find half a batch; either way stop, because part of this batch may already sit in an
            # earlier segment and the caller cannot tell how much of it is there.
            try:
                os.ftruncate(segment.fd, segment.size)
            except OSError:
                pass
            self._fail(f"write to {segment.path} failed: {exc}")
            raise WALFailedError(self._failed) from exc
        segment.offsets.extend(offsets)
        segment.terms.extend(terms)
        segment.size += len(pending)
        self._dirty = True

    def _seal(self, segment: _Segment) -> None:
        """fsync a full segment before starting the next, so only the newest segment can be torn."""
        assert segment.fd is not None
        try:
            os.fsync(segment.fd)
        except OSError as exc:
            self._fail(f"fsync of {segment.path} failed: {exc}")
            raise WALFailedError(self._failed) from exc
        os.close(segment.fd)
        segment.fd = None
        segment.writable = False
