"""Stable store: durable term and vote, atomic replacement, corruption detection."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from registry.raft.stable import StableStore, StableStoreCorruptError


def test_fresh_store_defaults(tmp_path: Path) -> None:
    store = StableStore.open(tmp_path / "raft")
    assert (store.term, store.vote, dict(store.metadata)) == (0, None, {})
    assert not store.path.exists()


def test_round_trip(tmp_path: Path) -> None:
    store = StableStore.open(tmp_path)
    store.save(3, None)
    store.save(3, "node-b")
    store.set_metadata("node_id", "1c4b0d3e-aaaa")
    store.set_metadata("cluster_id", b"\x01\x02")
    store.set_metadata("protocol", 3)
    reopened = StableStore.open(tmp_path)
    assert (reopened.term, reopened.vote) == (3, "node-b")
    assert dict(reopened.metadata) == {"node_id": "1c4b0d3e-aaaa", "cluster_id": b"\x01\x02", "protocol": 3}
    reopened.save(4, None)  # a new term clears the vote and keeps the metadata
    again = StableStore.open(tmp_path)
    assert (again.term, again.vote, again.metadata["node_id"]) == (4, None, "1c4b0d3e-aaaa")


def test_save_is_durable_before_returning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = StableStore.open(tmp_path)
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync-dir" if os.path.isdir(os.readlink(f"/proc/self/fd/{fd}")) else "fsync-file")
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    store.save(1, "me")
    assert events == ["fsync-file", "rename", "fsync-dir"]


def test_unchanged_save_does_no_io(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = StableStore.open(tmp_path)
    store.save(2, "a")
    store.set_metadata("node_id", "n1")
    calls: list[int] = []
    monkeypatch.setattr(os, "fsync", calls.append)
    store.save(2, "a")
    store.set_metadata("node_id", "n1")
    assert calls == []


def test_raft_invariants_are_enforced(tmp_path: Path) -> None:
    store = StableStore.open(tmp_path)
    store.save(5, "a")
    with pytest.raises(ValueError, match="backwards"):
        store.save(4, None)
    with pytest.raises(ValueError, match="already voted for 'a' in term 5"):
        store.save(5, "b")
    with pytest.raises(ValueError, match="already voted"):
        store.save(5, None)
    assert (StableStore.open(tmp_path).term, StableStore.open(tmp_path).vote) == (5, "a")


def test_crash_between_write_and_rename_keeps_the_old_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = StableStore.open(tmp_path)
    store.save(7, "old-vote")

    def crash(src: object, dst: object) -> None:
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        store.save(8, "new-vote")
    monkeypatch.undo()
    leftover = tmp_path / "raft-stable.tmp"
    assert leftover.exists()  # the new value was fully written, just never renamed into place
    assert (store.term, store.vote) == (7, "old-vote")  # in memory too: it never became durable
    reopened = StableStore.open(tmp_path)
    assert (reopened.term, reopened.vote) == (7, "old-vote")
    assert not leftover.exists()


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda b: b[:-1], "header says"),
        (lambda b: b[:10], "shorter than its header"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "checksum mismatch"),
        (lambda b: b"XXXXXXXX" + b[8:], "bad magic"),
        (lambda b: b"", "shorter than its header"),
    ],
)
def test_corrupt_file_is_a_clear_error(tmp_path: Path, damage: object, problem: str) -> None:
    store = StableStore.open(tmp_path)
    store.save(9, "x")
    path = store.path
    path.write_bytes(damage(path.read_bytes()))  # type: ignore[operator]
    with pytest.raises(StableStoreCorruptError, match=problem) as info:
        StableStore.open(tmp_path)
    message = str(info.value)
    assert str(path) in message and "vote twice" in message and "remove-peer" in message


def test_metadata_types_are_checked(tmp_path: Path) -> None:
    store = StableStore.open(tmp_path)
    with pytest.raises(TypeError):
        store.set_metadata("bad", 1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.set_metadata("bad", True)
