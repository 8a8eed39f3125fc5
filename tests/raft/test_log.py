"""RaftLog: truncation only on real conflicts, the Figure-13 snapshot rule, persistence watermarks."""

from __future__ import annotations

import pytest

from registry.raft.log import RaftLog, RaftLogError
from registry.raft.messages import Entry, EntryKind


def ents(*spec: tuple[int, int]) -> list[Entry]:
    """(index, term) pairs -> entries whose data names them, so mismatches are visible."""
    return [Entry(t, i, EntryKind.NORMAL, b"%d@%d" % (i, t)) for i, t in spec]


def run(first: int, last: int, term: int) -> list[Entry]:
    return ents(*[(i, term) for i in range(first, last + 1)])


def indexes_terms(log: RaftLog) -> list[tuple[int, int]]:
    return [(e.index, e.term) for e in log.entries(log.first_index, log.last_index + 1)]


def test_stale_reordered_append_whose_entries_match_truncates_nothing() -> None:
    log = RaftLog(0, 0, run(1, 10, 1), commit=3)
    # An old AppendEntries (prev 4, entries 5..6) arrives after the follower already has 1..10.
    assert log.maybe_append(4, 1, run(5, 6, 1)) == (6, 0)
    assert log.last_index == 10  # the classic lost-commit bug would cut the log back to 6
    # Same with a partially overlapping stale message that reaches the end.
    assert log.maybe_append(8, 1, run(9, 10, 1)) == (10, 0)
    assert log.last_index == 10
    # And with an empty heartbeat-like message.
    assert log.maybe_append(2, 1, []) == (2, 0)
    assert log.last_index == 10


def test_real_conflict_truncates_from_the_first_mismatch_only() -> None:
    log = RaftLog(0, 0, run(1, 3, 1) + run(4, 6, 2), commit=3)
    last_new, first_written = log.maybe_append(3, 1, run(4, 4, 2) + run(5, 7, 3)) or (0, 0)
    assert (last_new, first_written) == (7, 5)
    assert indexes_terms(log) == [(1, 1), (2, 1), (3, 1), (4, 2), (5, 3), (6, 3), (7, 3)]


def test_mismatched_prev_is_rejected_without_change() -> None:
    log = RaftLog(0, 0, run(1, 5, 2))
    assert log.maybe_append(5, 3, run(6, 6, 3)) is None
    assert log.maybe_append(9, 2, run(10, 10, 2)) is None
    assert log.last_index == 5


def test_committed_entries_are_never_truncated() -> None:
    log = RaftLog(0, 0, run(1, 5, 1), commit=4)
    with pytest.raises(RaftLogError):
        log.maybe_append(3, 1, run(4, 4, 2))
    assert indexes_terms(log) == [(i, 1) for i in range(1, 6)]


def test_append_below_snapshot_skips_the_compacted_prefix() -> None:
    log = RaftLog(5, 2, run(6, 8, 2), commit=5)
    # prev 3 is compacted: the entries up to 5 are committed and match; nothing is a conflict.
    assert log.maybe_append(3, 2, run(4, 7, 2)) == (7, 0)
    assert log.last_index == 8
    assert log.maybe_append(3, 2, run(4, 5, 2)) == (5, 0)


def test_find_conflict_by_term_skips_whole_terms() -> None:
    log = RaftLog(0, 0, run(1, 3, 1) + run(4, 6, 4) + run(7, 9, 5))
    assert log.find_conflict_by_term(9, 4) == 6
    assert log.find_conflict_by_term(9, 3) == 3
    assert log.find_conflict_by_term(5, 5) == 5
    assert log.find_conflict_by_term(20, 9) == 9
    assert log.find_conflict_by_term(9, 0) == 0


def test_snapshot_install_keeps_the_log_when_it_holds_the_snapshot_entry() -> None:
    log = RaftLog(0, 0, run(1, 10, 3), commit=2)
    assert log.install_snapshot(6, 3) is True  # Figure 13: same index and term -> keep the suffix
    assert log.last_index == 10 and log.snapshot_index == 0
    assert log.commit == 2  # the caller commits through the snapshot


def test_snapshot_install_discards_a_conflicting_log() -> None:
    log = RaftLog(0, 0, run(1, 10, 3), commit=2)
    assert log.install_snapshot(8, 4) is False  # entry 8 has term 3, not 4
    assert (log.snapshot_index, log.snapshot_term, log.last_index, log.commit) == (8, 4, 8, 8)
    assert len(log) == 0
    # A snapshot beyond the end of the log also replaces it.
    log = RaftLog(0, 0, run(1, 3, 1))
    assert log.install_snapshot(20, 2) is False
    assert log.first_index == 21


def test_restore_applies_figure_13_to_a_crash_between_snapshot_and_truncation() -> None:
    # Snapshot (8, 4) persisted, but the old entries were not discarded yet and entry 8 has term 3.
    log = RaftLog.restore(8, 4, run(1, 12, 3), commit=2)
    assert (log.snapshot_index, log.last_index, log.commit) == (8, 8, 8)
    # Old entries agree with the snapshot: the suffix survives.
    log = RaftLog.restore(8, 3, run(1, 12, 3), commit=2)
    assert (log.snapshot_index, log.last_index, log.commit) == (8, 12, 8)
    # Entries entirely below the snapshot are simply dropped.
    log = RaftLog.restore(8, 3, run(1, 5, 3), commit=5)
    assert (log.snapshot_index, log.last_index) == (8, 8)
    with pytest.raises(RaftLogError):
        RaftLog.restore(8, 3, run(10, 12, 3), commit=0)  # a gap is corruption
    with pytest.raises(RaftLogError):
        RaftLog.restore(0, 0, run(1, 3, 1), commit=5)  # commit beyond the durable log


def test_stable_watermark_survives_truncation_races() -> None:
    log = RaftLog(0, 0, run(1, 2, 1), commit=2)
    log.append(run(3, 6, 2))
    handed = log.take_unstable()
    assert [e.index for e in handed] == [3, 4, 5, 6]
    assert not log.has_unstable() and log.stable_index == 2
    # Before the driver acknowledges, a new leader overwrites from 5.
    assert log.maybe_append(4, 2, run(5, 5, 3)) == (5, 5)
    log.stable_to(6)  # the acknowledgement of the old hand-off
    assert log.stable_index == 4  # entry 5 now is the new one, which is not on disk yet
    assert [e.index for e in log.take_unstable()] == [5]
    log.stable_to(5)
    assert log.stable_index == 5


def test_compact_only_committed_and_stable() -> None:
    log = RaftLog(0, 0, run(1, 5, 1), commit=3)
    log.append(run(6, 7, 1))
    with pytest.raises(RaftLogError):
        log.compact(4)  # not committed
    log.compact(3)
    assert (log.snapshot_index, log.snapshot_term, log.first_index) == (3, 1, 4)
    assert log.term(3) == 1 and log.term(2) is None
    with pytest.raises(RaftLogError):
        log.entries(2, 5)
    log.commit_to(7)
    with pytest.raises(RaftLogError):
        log.compact(7)  # 6..7 were never persisted


def test_entries_respects_count_and_byte_limits() -> None:
    log = RaftLog(0, 0, [Entry(1, i, EntryKind.NORMAL, b"x" * 100) for i in range(1, 11)])
    assert len(log.entries(1, 11, max_count=3)) == 3
    assert len(log.entries(1, 11, max_bytes=300)) == 2  # 132 bytes each with framing overhead
    assert len(log.entries(1, 11, max_bytes=1)) == 1  # always at least one, so big entries still move
    assert log.entries(11, 20) == []


def test_constructor_rejects_broken_logs() -> None:
    with pytest.raises(RaftLogError):
        RaftLog(0, 0, ents((1, 1), (3, 1)))
    with pytest.raises(RaftLogError):
        RaftLog(0, 0, ents((1, 2), (2, 1)))
    with pytest.raises(RaftLogError):
        RaftLog(3, 0, [])
    log = RaftLog(0, 0, run(1, 2, 1))
    with pytest.raises(RaftLogError):
        log.append(ents((4, 1)))
    with pytest.raises(RaftLogError):
        log.commit_to(3)
