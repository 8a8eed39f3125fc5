"""The Raft core's in-memory view of its log.

``RaftLog`` holds the entries after the latest snapshot, the snapshot's index and term, the commit index,
and two watermarks that connect it to the driver's disk:

* ``stable_index``: entries up to here are known to be on disk (the driver acknowledged a Ready that
  carried them).  The leader counts only these for itself when computing the commit index, so a
  commit never depends on an entry that a crash could still take away.
* the hand-off watermark: entries up to here were handed to the driver in a Ready that it has not
  acknowledged yet.  Entries after it are handed out in the next Ready.

When an entry at index i is overwritten because of a real conflict, both watermarks drop below i: the
driver wrote the old entry, and the new one is not on disk until a later Ready says so (the rabbitmq/ra
#637 bug was a stale watermark after a truncation).

Safety rules implemented here (each guards against a bug that a real Raft implementation shipped):

* ``maybe_append`` truncates only at the first entry whose term differs from ours.  An AppendEntries
  that is stale or reordered but whose entries all match changes nothing, even if our log is longer.
* Nothing at or below the commit index is ever truncated: that would be losing a committed entry, so it
  raises ``RaftLogError`` instead of silently doing it.
* ``install_snapshot`` applies the Figure-13 rule: if we hold an entry at the snapshot's index with the
  snapshot's term, our log is consistent with the snapshot and the suffix is kept; otherwise the whole
  log is discarded.  ``restore`` applies the same rule to what was found on disk after a crash that may
  have happened between persisting a snapshot and discarding the old entries.

Terms never decrease along a log, so lookups by term are binary searches; nothing here is quadratic in
the length of the log.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Sequence
from operator import attrgetter

from registry.raft.messages import ENTRY_OVERHEAD, Entry

__all__ = ["RaftLog", "RaftLogError"]

_term_of = attrgetter("term")


class RaftLogError(Exception):
    """An operation would break a log invariant (a caller bug or corrupt persisted state)."""


class RaftLog:
    __slots__ = ("_entries", "_snapshot_index", "_snapshot_term", "_commit", "_stable", "_handed")

    def __init__(
        self, snapshot_index: int = 0, snapshot_term: int = 0, entries: Sequence[Entry] = (), commit: int = 0
    ) -> None:
        """A log loaded from disk: every entry given is stable.  Use ``restore`` for raw persisted state
        that may need the Figure-13 rule applied."""
        if snapshot_index < 0 or snapshot_term < 0 or (snapshot_index == 0) != (snapshot_term == 0):
            raise RaftLogError(f"invalid snapshot position ({snapshot_index}, {snapshot_term})")
        self._snapshot_index = snapshot_index
        self._snapshot_term = snapshot_term
        self._entries: list[Entry] = []
        expect, last_term = snapshot_index + 1, snapshot_term
        for e in entries:
            if e.index != expect or e.term < last_term:
                raise RaftLogError(f"entry ({e.index}, {e.term}) does not follow ({expect - 1}, {last_term})")
            self._entries.append(e)
            expect, last_term = expect + 1, e.term
        if commit > self.last_index:
            raise RaftLogError(f"commit index {commit} is beyond the last entry {self.last_index}")
        self._commit = max(commit, snapshot_index)
        self._stable = self.last_index
        self._handed = self.last_index

    @classmethod
    def restore(
        cls, snapshot_index: int, snapshot_term: int, entries: Sequence[Entry], commit: int
    ) -> RaftLog:
        """Rebuild from persisted state.  Entries covered by the snapshot are dropped; if the persisted
        entry at the snapshot index has another term, the remaining entries belong to a log the snapshot
        replaced (a crash interrupted the install) and are dropped too (Figure 13)."""
        kept: list[Entry] = []
        for e in entries:
            if e.index < snapshot_index:
                continue
            if e.index == snapshot_index:
                if e.term != snapshot_term:
                    kept = []
                    break
                continue
            kept.append(e)
        if kept and kept[0].index != snapshot_index + 1:
            raise RaftLogError(f"persisted log has a gap after the snapshot at {snapshot_index}")
        return cls(snapshot_index, snapshot_term, kept, max(commit, snapshot_index))

    # ---------------------------------------------------------------------------------- positions

    @property
    def snapshot_index(self) -> int:
        return self._snapshot_index

    @property
    def snapshot_term(self) -> int:
        return self._snapshot_term

    @property
    def first_index(self) -> int:
        return self._snapshot_index + 1

    @property
    def last_index(self) -> int:
        return self._snapshot_index + len(self._entries)

    @property
    def last_term(self) -> int:
        return self._entries[-1].term if self._entries else self._snapshot_term

    @property
    def commit(self) -> int:
        return self._commit

    @property
    def stable_index(self) -> int:
        return self._stable

    def __len__(self) -> int:
        return len(self._entries)

    def reversed_entries(self) -> Iterator[Entry]:
        """Retained entries, newest first (for inspection; no copy)."""
        return reversed(self._entries)

    def term(self, index: int) -> int | None:
        """The term of the entry at ``index``, or None if it was compacted away or does not exist yet."""
        if index == self._snapshot_index:
            return self._snapshot_term
        offset = index - self._snapshot_index - 1
        if offset < 0 or offset >= len(self._entries):
            return None
        return self._entries[offset].term

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def entry(self, index: int) -> Entry:
        offset = index - self._snapshot_index - 1
        if offset < 0 or offset >= len(self._entries):
            raise RaftLogError(f"no entry at {index} (log holds {self.first_index}..{self.last_index})")
        return self._entries[offset]

    def entries(self, lo: int, hi: int, max_count: int | None = None, max_bytes: int | None = None) -> list[Entry]:
        """Entries lo..hi-1, cut after ``max_count`` entries or once ``max_bytes`` is exceeded (always at
        least one entry, so a single large entry still makes progress)."""
        if lo <= self._snapshot_index:
            raise RaftLogError(f"entries from {lo} were compacted (snapshot at {self._snapshot_index})")
        hi = min(hi, self.last_index + 1)
        if max_count is not None:
            hi = min(hi, lo + max(1, max_count))
        start = lo - self._snapshot_index - 1
        out = self._entries[start : max(start, hi - self._snapshot_index - 1)]
        if max_bytes is not None and len(out) > 1:
            size = 0
            for n, e in enumerate(out):
                size += len(e.data) + ENTRY_OVERHEAD
                if size > max_bytes and n > 0:
                    del out[n:]
                    break
        return out

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Election restriction (5.4.1): is a log ending at (last_index, last_term) at least as up to date
        as ours?"""
        my_term = self.last_term
        return last_term > my_term or (last_term == my_term and last_index >= self.last_index)

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """The largest index <= ``index`` whose term is <= ``term`` (or the snapshot index if no retained
        entry qualifies).  Used to skip whole terms when a follower rejects an AppendEntries."""
        index = min(index, self.last_index)
        if index <= self._snapshot_index:
            return index
        # Terms never decrease along the log, so the entries with term <= ``term`` form a prefix.
        n = bisect_right(self._entries, term, key=_term_of)
        return min(index, self._snapshot_index + n)

    # ---------------------------------------------------------------------------------- mutation

    def append(self, entries: Sequence[Entry]) -> None:
        """Leader-side append at the end of the log."""
        expect, last_term = self.last_index + 1, self.last_term
        for e in entries:
            if e.index != expect or e.term < last_term:
                raise RaftLogError(f"entry ({e.index}, {e.term}) does not follow ({expect - 1}, {last_term})")
            expect, last_term = expect + 1, e.term
        self._entries.extend(entries)

    def maybe_append(self, prev_index: int, prev_term: int, entries: Sequence[Entry]) -> tuple[int, int] | None:
        """Follower-side AppendEntries receiver rules 2-4.

        Returns None if the log does not contain ``prev_index`` with ``prev_term``.  Otherwise returns
        ``(last_new, first_written)``: the index of the last entry the message covers (everything up to
        it now matches the leader) and the index of the first entry actually written, or 0 if the log
        already contained them all.  Entries are only overwritten from the first real conflict on."""
        if prev_index < self._snapshot_index:
            # The prefix up to the snapshot is committed and therefore matches any legitimate leader; skip
            # it rather than treating "compacted" as a conflict (openraft #511).
            skip = self._snapshot_index - prev_index
            if skip >= len(entries):
                return prev_index + len(entries), 0
            if entries[skip - 1].term != self._snapshot_term:
                return None
            entries = entries[skip:]
            prev_index, prev_term = self._snapshot_index, self._snapshot_term
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        if not entries:
            return last_new, 0
        # Log matching: if we hold the message's last entry, we hold all of it.  The common case (a
        # duplicate or reordered message) costs one lookup.
        if self.match_term(last_new, entries[-1].term):
            return last_new, 0
        conflict = 0
        for e in entries:
            t = self.term(e.index)
            if t != e.term:
                conflict = e.index
                break
        if conflict == 0:
            return last_new, 0
        if conflict <= self.last_index:
            self._truncate_from(conflict)
        self._entries.extend(entries[conflict - prev_index - 1 :])
        return last_new, conflict

    def _truncate_from(self, index: int) -> None:
        if index <= self._commit:
            raise RaftLogError(f"refusing to truncate committed entries from {index} (commit {self._commit})")
        del self._entries[index - self._snapshot_index - 1 :]
        self._stable = min(self._stable, index - 1)
        self._handed = min(self._handed, index - 1)

    def commit_to(self, index: int) -> bool:
        """Raise the commit index; returns whether it moved."""
        if index <= self._commit:
            return False
        if index > self.last_index:
            raise RaftLogError(f"commit {index} beyond the last entry {self.last_index}")
        self._commit = index
        return True

    def install_snapshot(self, index: int, term: int) -> bool:
        """Figure 13 at snapshot install.  Returns True if we hold the snapshot's last entry with its term:
        the log is consistent with the snapshot, so it is kept whole (suffix included) and the caller just
        commits up to ``index``.  Otherwise the entire log is discarded and replaced by the snapshot, and
        False is returned."""
        if self.match_term(index, term):
            return True
        self._entries = []
        self._snapshot_index = index
        self._snapshot_term = term
        self._commit = index
        # The snapshot will be persisted by the Ready that carries it; from the log's point of view there
        # is nothing left to hand out or to wait for.
        self._stable = index
        self._handed = index
        return False

    def compact(self, index: int) -> None:
        """Forget entries up to ``index`` (the driver has persisted a snapshot covering them)."""
        if index <= self._snapshot_index:
            return
        if index > self._commit or index > self._stable:
            raise RaftLogError(
                f"cannot compact to {index}: only committed, persisted entries can be compacted "
                f"(commit {self._commit}, stable {self._stable})"
            )
        term = self.term(index)
        assert term is not None
        del self._entries[: index - self._snapshot_index]
        self._snapshot_index = index
        self._snapshot_term = term

    # ---------------------------------------------------------------------------------- persistence

    def has_unstable(self) -> bool:
        return self.last_index > self._handed

    def take_unstable(self) -> tuple[Entry, ...]:
        """Entries not yet handed to the driver; marks them handed."""
        if self.last_index <= self._handed:
            return ()
        start = self._handed - self._snapshot_index
        out = tuple(self._entries[start:])
        self._handed = self.last_index
        return out

    def stable_to(self, index: int) -> None:
        """The driver persisted entries up to ``index``.  Anything overwritten since it was handed out is
        not covered (the hand-off watermark dropped when it was overwritten)."""
        self._stable = max(self._stable, min(index, self._handed))
