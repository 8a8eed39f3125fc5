"""Snapshot store: round trips, retention, atomic creation, corruption fallback, streaming transfer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from registry.raft.snapshots import SnapshotCorruptError, SnapshotMeta, SnapshotStore

CONFIG = {"servers": [{"id": "a", "address": "10.0.0.1:8300", "voter": True}]}


def snapshot_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_create_and_latest_round_trip(tmp_path: Path) -> None:
    store = SnapshotStore.open(tmp_path / "snaps")
    assert store.latest() is None and store.list() == []
    data = bytes(range(256)) * 4000
    meta = store.create(120, 3, CONFIG, data)
    assert (meta.index, meta.term, meta.data_size) == (120, 3, len(data))
    assert meta.configuration == CONFIG
    assert meta.file_size == (tmp_path / "snaps" / meta.name).stat().st_size

    reopened = SnapshotStore.open(tmp_path / "snaps")
    latest = reopened.latest()
    assert latest is not None
    assert latest == (meta, data)
    assert reopened.list() == [meta]
    assert reopened.load(meta) == data


def test_empty_snapshot_data(tmp_path: Path) -> None:
    store = SnapshotStore.open(tmp_path)
    meta = store.create(1, 1, {}, b"")
    assert store.latest() == (meta, b"")


def test_keeps_the_newest_n(tmp_path: Path) -> None:
    store = SnapshotStore.open(tmp_path, retain=2)
    metas = [store.create(i * 10, 1 + i // 2, CONFIG, f"state-{i}".encode()) for i in range(1, 6)]
    assert store.list() == [metas[4], metas[3]]
    assert snapshot_files(tmp_path) == sorted([metas[3].name, metas[4].name])
    store3 = SnapshotStore.open(tmp_path, retain=3)
    store3.create(60, 4, CONFIG, b"six")
    assert [m.index for m in store3.list()] == [60, 50, 40]


def test_streamed_creation(tmp_path: Path) -> None:
    store = SnapshotStore.open(tmp_path)
    with store.begin_create(50, 2, CONFIG) as writer:
        for i in range(100):
            writer.write(f"chunk-{i};".encode())
        meta = writer.commit()
    expected = b"".join(f"chunk-{i};".encode() for i in range(100))
    assert store.latest() == (meta, expected)


def test_abandoned_writer_leaves_nothing(tmp_path: Path) -> None:
    store = SnapshotStore.open(tmp_path)
    previous = store.create(10, 1, CONFIG, b"previous")
    with store.begin_create(20, 1, CONFIG) as writer:
        writer.write(b"half of it")
    assert snapshot_files(tmp_path) == [previous.name]
    with pytest.raises(ValueError, match="already committed or aborted"):
        writer.write(b"more")


def test_crash_between_write_and_rename_leaves_the_previous_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SnapshotStore.open(tmp_path)
    previous = store.create(10, 1, CONFIG, b"previous")

    def crash(src: object, dst: object) -> None:
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "rename", crash)
    writer = store.begin_create(20, 2, CONFIG)
    writer.write(b"new state")
    # commit() writes and fsyncs the complete file, then "crashes" at the rename.
    with pytest.raises(OSError, match="simulated crash"):
        writer.commit()
    monkeypatch.undo()
    assert store.latest() == (previous, b"previous")
    # A temp file left by a real crash (no cleanup ran) is removed on the next open.
    (tmp_path / "incoming-abc.tmp").write_bytes(b"partial")
    reopened = SnapshotStore.open(tmp_path)
    assert snapshot_files(tmp_path) == [previous.name]
    assert reopened.latest() == (previous, b"previous")


@pytest.mark.parametrize(
    ("offset_from_end", "problem"),
    [
        (30, "data checksum mismatch"),  # inside the data
        (5, "trailer is missing"),  # inside the trailer's magic
    ],
)
def test_corrupt_newest_falls_back_to_previous(tmp_path: Path, offset_from_end: int, problem: str) -> None:
    store = SnapshotStore.open(tmp_path)
    older = store.create(10, 1, CONFIG, b"older state" * 10)
    newest = store.create(20, 2, CONFIG, b"newest state" * 10)
    path = tmp_path / newest.name
    raw = bytearray(path.read_bytes())
    raw[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(raw))
    with capture_logs() as logs:
        assert store.latest() == (older, b"older state" * 10)
    (event,) = logs
    assert event["event"] == "snapshot.corrupt_skipped" and event["log_level"] == "warning"
    assert event["file"] == str(path) and problem in event["problem"]
    # The damaged file is kept for the operator but no longer counts as a snapshot.
    assert snapshot_files(tmp_path) == sorted([older.name, newest.name + ".corrupt"])
    assert store.list() == [older]


def test_truncated_newest_falls_back(tmp_path: Path) -> None:
    store = SnapshotStore.open(tmp_path)
    older = store.create(10, 1, CONFIG, b"a" * 1000)
    newest = store.create(20, 1, CONFIG, b"b" * 1000)
    path = tmp_path / newest.name
    path.write_bytes(path.read_bytes()[:500])
    assert store.latest() == (older, b"a" * 1000)


def test_all_snapshots_corrupt_is_an_error_not_an_empty_state(tmp_path: Path) -> None:
    store = SnapshotStore.open(tmp_path)
    for index in (10, 20):
        meta = store.create(index, 1, CONFIG, b"state" * 10)
        path = tmp_path / meta.name
        raw = bytearray(path.read_bytes())
        raw[30] ^= 0xFF  # inside the metadata
        path.write_bytes(bytes(raw))
    with pytest.raises(SnapshotCorruptError, match="no older snapshot verifies either") as info:
        store.latest()
    assert "metadata checksum mismatch" in str(info.value) and "data directory" in str(info.value)


def test_stream_to_a_follower(tmp_path: Path) -> None:
    leader = SnapshotStore.open(tmp_path / "leader")
    follower = SnapshotStore.open(tmp_path / "follower")
    data = os.urandom(300_000)
    meta = leader.create(900, 7, CONFIG, data)
    wire = meta.to_wire()  # what InstallSnapshot carries
    announced = SnapshotMeta.from_wire(wire)
    assert announced == meta

    receiver = follower.begin_receive(announced)
    with leader.open_reader(meta) as reader:
        assert reader.size == meta.file_size
        for chunk in reader.chunks(chunk_size=64 * 1024):
            receiver.write(chunk)
    assert receiver.received == meta.file_size
    installed = receiver.commit()
    assert installed == meta
    assert follower.latest() == (meta, data)
    assert (tmp_path / "follower" / meta.name).read_bytes() == (tmp_path / "leader" / meta.name).read_bytes()


def test_resumable_reads_and_reader_survives_retention(tmp_path: Path) -> None:
    store = SnapshotStore.open(tmp_path, retain=1)
    meta = store.create(5, 1, CONFIG, b"x" * 5000)
    reader = store.open_reader(meta)
    store.create(6, 1, CONFIG, b"y")  # retention deletes snapshot 5 while it is being sent
    assert not (tmp_path / meta.name).exists()
    first = reader.read_at(0, 1000)
    rest = reader.read_at(1000, 10**6)
    assert len(first) + len(rest) == meta.file_size
    assert reader.read_at(meta.file_size, 10) == b""
    reader.close()
    with pytest.raises(ValueError, match="closed"):
        reader.read_at(0, 1)


def test_damaged_transfer_is_never_installed(tmp_path: Path) -> None:
    leader = SnapshotStore.open(tmp_path / "leader")
    follower = SnapshotStore.open(tmp_path / "follower")
    meta = leader.create(900, 7, CONFIG, b"important state" * 1000)
    with leader.open_reader(meta) as reader:
        raw = bytearray(b"".join(reader.chunks()))
    raw[len(raw) // 2] ^= 0x01

    receiver = follower.begin_receive(meta)
    receiver.write(bytes(raw))
    with pytest.raises(SnapshotCorruptError, match="data checksum mismatch"):
        receiver.commit()
    assert snapshot_files(tmp_path / "follower") == []
    assert follower.latest() is None


def test_transfer_of_a_different_snapshot_is_rejected(tmp_path: Path) -> None:
    leader = SnapshotStore.open(tmp_path / "leader")
    follower = SnapshotStore.open(tmp_path / "follower")
    real = leader.create(900, 7, CONFIG, b"state")
    announced = SnapshotMeta(index=901, term=7, configuration=CONFIG, data_size=5, file_size=real.file_size)
    receiver = follower.begin_receive(announced)
    with leader.open_reader(real) as reader:
        for chunk in reader.chunks():
            receiver.write(chunk)
    with pytest.raises(SnapshotCorruptError, match="expected 901/7"):
        receiver.commit()
    assert snapshot_files(tmp_path / "follower") == []


def test_short_and_long_transfers_are_rejected(tmp_path: Path) -> None:
    leader = SnapshotStore.open(tmp_path / "leader")
    follower = SnapshotStore.open(tmp_path / "follower")
    meta = leader.create(3, 1, CONFIG, b"0123456789" * 100)
    with leader.open_reader(meta) as reader:
        raw = b"".join(reader.chunks())

    short = follower.begin_receive(meta)
    short.write(raw[:-10])
    with pytest.raises(SnapshotCorruptError):
        short.commit()

    long = follower.begin_receive(meta)
    long.write(raw)
    with pytest.raises(SnapshotCorruptError, match="more than the announced"):
        long.write(b"extra")
    assert snapshot_files(tmp_path / "follower") == []


def test_invalid_snapshot_identity_is_rejected(tmp_path: Path) -> None:
    store = SnapshotStore.open(tmp_path)
    with pytest.raises(ValueError, match="index >= 1"):
        store.create(0, 1, CONFIG, b"")
    assert snapshot_files(tmp_path) == []
