"""The wire codec: round trips, and strict rejection of anything malformed (Hypothesis)."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry.raft.messages import (
    MAX_U64,
    AppendEntries,
    AppendEntriesResponse,
    ConfChange,
    ConfChangeKind,
    Configuration,
    Entry,
    EntryKind,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    Message,
    MessageDecodeError,
    PreVote,
    PreVoteResponse,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    SnapshotMeta,
    TimeoutNow,
    decode_config_entry,
    decode_entry,
    decode_message,
    encode_config_entry,
    encode_entry,
    encode_message,
    validate_message,
)

ids = st.sampled_from(["n1", "n2", "n3", "10.0.0.1:8300", "[::1]:8300", "a" * 128])
u64 = st.integers(min_value=0, max_value=MAX_U64)
small = st.integers(min_value=0, max_value=50)


@st.composite
def configurations(draw: st.DrawFn) -> Configuration:
    members = draw(st.lists(ids, min_size=1, max_size=5, unique=True))
    n_voters = draw(st.integers(min_value=1, max_value=len(members)))
    return Configuration(frozenset(members[:n_voters]), frozenset(members[n_voters:]))


@st.composite
def config_entry_data(draw: st.DrawFn) -> bytes:
    config = draw(configurations())
    learners = sorted(config.learners)
    if learners and draw(st.booleans()):
        change = ConfChange(ConfChangeKind.ADD_LEARNER, learners[0], draw(st.binary(max_size=8)))
    elif len(config.voters) > 1 and draw(st.booleans()):
        change = ConfChange(ConfChangeKind.PROMOTE_LEARNER, sorted(config.voters)[0])
    else:
        change = ConfChange(ConfChangeKind.REMOVE_NODE, "removed-node")
        config = Configuration(config.voters - {"removed-node"}, config.learners - {"removed-node"})
    return encode_config_entry(config, change)


@st.composite
def entry_runs(draw: st.DrawFn, prev_index: int, prev_term: int, max_term: int) -> tuple[Entry, ...]:
    n = draw(st.integers(min_value=0, max_value=5))
    out = []
    term = max(prev_term, 1)
    for i in range(n):
        term = draw(st.integers(min_value=term, max_value=max(term, max_term)))
        kind = draw(st.sampled_from(list(EntryKind)))
        if kind is EntryKind.NOOP:
            data = b""
        elif kind is EntryKind.CONFIG:
            data = draw(config_entry_data())
        else:
            data = draw(st.binary(max_size=32))
        out.append(Entry(term, prev_index + 1 + i, kind, data))
    return tuple(out)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    src, dst = draw(st.lists(ids, min_size=2, max_size=2, unique=True))
    term = draw(st.integers(min_value=1, max_value=1000))
    kind = draw(st.integers(min_value=0, max_value=12))
    if kind == 0:
        prev_index = draw(small)
        prev_term = 0 if prev_index == 0 else draw(st.integers(min_value=1, max_value=term))
        entries = draw(entry_runs(prev_index, prev_term, term))
        return AppendEntries(term, src, dst, prev_index, prev_term, entries, draw(u64))
    if kind == 1:
        index = draw(u64)
        if draw(st.booleans()):
            hint = draw(st.integers(min_value=0, max_value=index))
            return AppendEntriesResponse(term, src, dst, index, True, hint, draw(u64))
        return AppendEntriesResponse(term, src, dst, index, False)
    if kind in (2, 3):
        last_index = draw(small)
        last_term = 0 if last_index == 0 else draw(st.integers(min_value=1, max_value=term - 1)) if term > 1 else 0
        if last_term == 0:
            last_index = 0
        if kind == 2:
            return RequestVote(term, src, dst, last_index, last_term, draw(st.booleans()))
        return PreVote(term, src, dst, last_index, last_term)
    if kind == 4:
        return RequestVoteResponse(term, src, dst, draw(st.booleans()))
    if kind == 5:
        return PreVoteResponse(term, src, dst, draw(st.booleans()))
    if kind == 6:
        meta = SnapshotMeta(draw(st.integers(min_value=1, max_value=10**9)), term, draw(configurations()))
        return InstallSnapshot(term, src, dst, meta, draw(st.binary(max_size=64)))
    if kind == 7:
        return InstallSnapshotResponse(term, src, dst, draw(u64))
    if kind == 8:
        return Heartbeat(term, src, dst, draw(u64), draw(u64))
    if kind == 9:
        return HeartbeatResponse(term, src, dst, draw(u64))
    if kind == 10:
        return TimeoutNow(term, src, dst)
    if kind == 11:
        return ReadIndexRequest(term, src, dst, draw(st.binary(max_size=32)))
    if draw(st.booleans()):
        return ReadIndexResponse(term, src, dst, draw(st.binary(max_size=32)), draw(u64), True)
    return ReadIndexResponse(term, src, dst, draw(st.binary(max_size=32)), 0, False)


def _decode_is_safe(data: bytes) -> None:
    """The property: decode_message returns a valid message or raises MessageDecodeError, nothing else."""
    try:
        msg = decode_message(data)
    except MessageDecodeError:
        return
    validate_message(msg)
    assert decode_message(encode_message(msg)) == msg


@given(messages())
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_round_trip(msg: Message) -> None:
    validate_message(msg)
    assert decode_message(encode_message(msg)) == msg


@given(st.binary(max_size=256))
@settings(max_examples=1000)
def test_random_bytes_never_crash_the_decoder(data: bytes) -> None:
    _decode_is_safe(data)


@given(messages(), st.data())
@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_frames_are_valid_or_rejected(msg: Message, data: st.DataObject) -> None:
    frame = bytearray(encode_message(msg))
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        op = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        if op == "truncate":
            del frame[data.draw(st.integers(min_value=0, max_value=len(frame))) :]
        elif not frame:
            frame.append(data.draw(st.integers(min_value=0, max_value=255)))
        elif op == "flip":
            frame[data.draw(st.integers(min_value=0, max_value=len(frame) - 1))] = data.draw(
                st.integers(min_value=0, max_value=255)
            )
        elif op == "insert":
            frame.insert(
                data.draw(st.integers(min_value=0, max_value=len(frame))),
                data.draw(st.integers(min_value=0, max_value=255)),
            )
        else:
            del frame[data.draw(st.integers(min_value=0, max_value=len(frame) - 1))]
    _decode_is_safe(bytes(frame))


# Structurally plausible msgpack values in the frame's shape, with wrong types and ranges in the fields.
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),  # what msgpack can carry
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.binary(max_size=8),
)
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=5), max_leaves=20)


@given(st.integers(min_value=0, max_value=15), st.lists(_values, max_size=8), st.data())
@settings(max_examples=800)
def test_wrongly_typed_fields_are_rejected(code: int, fields: list[object], data: st.DataObject) -> None:
    header = [data.draw(st.sampled_from([1, 1, 1, 0, 2, True])), code]
    header += [data.draw(st.one_of(st.integers(min_value=0, max_value=5), _scalars))]
    header += [data.draw(st.one_of(ids, _scalars)), data.draw(st.one_of(ids, _scalars))]
    _decode_is_safe(msgpack.packb(header + fields, use_bin_type=True))


def test_specific_malformations_raise_decode_error() -> None:
    good = encode_message(AppendEntries(3, "n1", "n2", 4, 2, (Entry(3, 5, EntryKind.NORMAL, b"x"),), 4))
    assert isinstance(decode_message(good), AppendEntries)

    def frame(*items: object) -> bytes:
        return msgpack.packb(list(items), use_bin_type=True)

    bad = [
        good + b"\x00",  # trailing garbage
        frame(2, 1, 3, "n1", "n2", 4, 2, [], 4),  # unknown version
        frame(1, 99, 3, "n1", "n2"),  # unknown type
        frame(1, 1, 3, "n1", "n1", 4, 2, [], 4),  # to itself
        frame(1, 1, -1, "n1", "n2", 4, 2, [], 4),  # negative term
        frame(1, 1, 2**63, "n1", "n2", 4, 2, [], 4),  # term out of range
        frame(1, 1, True, "n1", "n2", 4, 2, [], 4),  # bool where an int belongs
        frame(1, 1, 3, "n 1", "n2", 4, 2, [], 4),  # bad node id
        frame(1, 1, 3, "", "n2", 4, 2, [], 4),  # empty node id
        frame(1, 1, 3, "n1", "n2", 4, 2, [[3, 6, 0, b"x"]], 4),  # entry not contiguous
        frame(1, 1, 3, "n1", "n2", 4, 2, [[4, 5, 0, b"x"]], 4),  # entry newer than the message term
        frame(1, 1, 3, "n1", "n2", 4, 2, [[1, 5, 0, b"x"]], 4),  # entry older than prev_term
        frame(1, 1, 3, "n1", "n2", 4, 2, [[3, 5, 7, b"x"]], 4),  # unknown entry kind
        frame(1, 1, 3, "n1", "n2", 4, 2, [[3, 5, 1, b"x"]], 4),  # no-op with data
        frame(1, 1, 3, "n1", "n2", 4, 2, [[3, 5, 2, b"\xc1"]], 4),  # config entry with garbage
        frame(1, 1, 3, "n1", "n2", 4, 2, [[3, 5, 0, "x"]], 4),  # str where bytes belong
        frame(1, 1, 3, "n1", "n2", 0, 2, [], 4),  # index 0 with a term
        frame(1, 1, 0, "n1", "n2", 0, 0, [], 0),  # AppendEntries in term 0
        frame(1, 1, 3, "n1", "n2", 4, 2, [], 4, 5),  # extra field
        frame(1, 3, 3, "n1", "n2", 4, 3, False),  # candidate's last term not older than its term
        frame(1, 13, 3, "n1", "n2", b"c", 7, False),  # refused read with an index
        frame(1, 7, 3, "n1", "n2", [5, 2, [["n1"], ["n1"]]], b""),  # voter and learner at once
        frame(1, 7, 3, "n1", "n2", [5, 2, [[], []]], b""),  # no voters
        frame(1, 7, 3, "n1", "n2", [5, 2, [["n1", "n1"], []]], b""),  # duplicate voter
        frame(1, 7, 3, "n1", "n2", [0, 0, [["n1"], []]], b""),  # empty bootstrap snapshot
        msgpack.packb({"a": 1}),  # a map
        b"\xd4\x01\x00",  # an extension type
        b"",
    ]
    for data in bad:
        with pytest.raises(MessageDecodeError):
            decode_message(data)
    with pytest.raises(MessageDecodeError):
        decode_message("not bytes")  # type: ignore[arg-type]
    with pytest.raises(MessageDecodeError):
        decode_message(good, max_bytes=len(good) - 1)


def test_config_entry_must_match_its_change() -> None:
    config = Configuration(frozenset({"n1", "n2"}), frozenset({"n3"}))
    data = encode_config_entry(config, ConfChange(ConfChangeKind.ADD_LEARNER, "n3", b"10.0.0.3:8300"))
    assert decode_config_entry(data) == (config, ConfChange(ConfChangeKind.ADD_LEARNER, "n3", b"10.0.0.3:8300"))
    with pytest.raises(MessageDecodeError):
        decode_config_entry(encode_config_entry(config, ConfChange(ConfChangeKind.REMOVE_NODE, "n3")))
    with pytest.raises(MessageDecodeError):
        decode_config_entry(encode_config_entry(config, ConfChange(ConfChangeKind.PROMOTE_LEARNER, "n3")))
    with pytest.raises(MessageDecodeError):
        decode_config_entry(encode_config_entry(config, ConfChange(ConfChangeKind.BOOTSTRAP, "n1")))


def test_entry_codec_round_trip_and_rejects_garbage() -> None:
    e = Entry(7, 42, EntryKind.NORMAL, b"payload")
    assert decode_entry(encode_entry(e)) == e
    for data in (b"", b"\x93\x01\x02\x03", msgpack.packb([0, 1, 0, b""]), msgpack.packb([1, 1, 0, "s"])):
        with pytest.raises(MessageDecodeError):
            decode_entry(data)
