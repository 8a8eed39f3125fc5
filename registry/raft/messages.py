"""Raft values and the wire codec.

Everything here is an immutable value: log entries, the persistent HardState, snapshot metadata, cluster
configurations and every message the Raft core exchanges with its peers.  The pure core in
``registry.raft.node`` builds and consumes these; the driver moves them between disk and network.

Wire format: one msgpack array per message, ``[WIRE_VERSION, type_code, term, src, dst, *fields]``.
``decode_message`` treats its input as hostile: it accepts only exactly that shape, checks every field's
type and range, the structural invariants of the message (for example that the entries of an
AppendEntries are contiguous after ``prev_index`` and never from a term newer than the message), and raises
``MessageDecodeError`` for anything else.  It never raises any other exception and never evaluates or
unpickles anything.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

import msgpack

__all__ = [
    "WIRE_VERSION",
    "MAX_U64",
    "MAX_NODE_ID_BYTES",
    "MAX_MEMBERS",
    "MAX_ENTRY_BYTES",
    "MAX_ENTRIES_PER_MESSAGE",
    "MAX_CONTEXT_BYTES",
    "MAX_SNAPSHOT_BYTES",
    "MAX_FRAME_BYTES",
    "ENTRY_OVERHEAD",
    "EntryKind",
    "Entry",
    "HardState",
    "Configuration",
    "ConfState",
    "ConfChangeKind",
    "ConfChange",
    "SnapshotMeta",
    "Snapshot",
    "AppendEntries",
    "AppendEntriesResponse",
    "RequestVote",
    "RequestVoteResponse",
    "PreVote",
    "PreVoteResponse",
    "InstallSnapshot",
    "InstallSnapshotResponse",
    "Heartbeat",
    "HeartbeatResponse",
    "TimeoutNow",
    "ReadIndexRequest",
    "ReadIndexResponse",
    "Message",
    "MESSAGE_TYPES",
    "MessageDecodeError",
    "encode_message",
    "decode_message",
    "encode_entry",
    "decode_entry",
    "encode_config_entry",
    "decode_config_entry",
    "validate_node_id",
    "validate_message",
]

WIRE_VERSION: Final = 1
# Terms and indexes are unsigned 64-bit in spirit; capping at 2**63 - 1 keeps them signed-safe for any
# peer implementation and far beyond anything a real cluster reaches.
MAX_U64: Final = (1 << 63) - 1
MAX_NODE_ID_BYTES: Final = 128
MAX_MEMBERS: Final = 64
MAX_ENTRY_BYTES: Final = 16 * 1024 * 1024
MAX_ENTRIES_PER_MESSAGE: Final = 65536
MAX_CONTEXT_BYTES: Final = 256
# A snapshot travels as one InstallSnapshot message; the transport must frame messages this large.
MAX_SNAPSHOT_BYTES: Final = 1 << 30
MAX_FRAME_BYTES: Final = MAX_SNAPSHOT_BYTES + (1 << 20)
# msgpack framing of [term, index, kind, data] is at most ~30 bytes; counting it in batching limits keeps
# a stream of empty entries from producing unbounded messages under a byte limit.
ENTRY_OVERHEAD: Final = 32

# Node ids are server ids or host:port addresses (IPv6 in brackets); nothing that could confuse a log
# line, a file name or a shell.
_NODE_ID_RE: Final = re.compile(r"[A-Za-z0-9._:@\[\]-]+")


class MessageDecodeError(ValueError):
    """The bytes are not a valid Raft message (or entry, or configuration)."""


class EntryKind(IntEnum):
    NORMAL = 0  # client command for the state machine
    NOOP = 1  # appended by every new leader; commits the prior terms' entries (thesis 3.6.2)
    CONFIG = 2  # a membership change; data is encode_config_entry(configuration, change)


@dataclass(frozen=True, slots=True)
class Entry:
    term: int
    index: int
    kind: EntryKind
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class HardState:
    """What a server must persist before it answers anyone: Figure 2's currentTerm and votedFor, plus the
    commit index (not required for safety, but it lets a restarted server re-apply without waiting)."""

    term: int = 0
    vote: str | None = None
    commit: int = 0


@dataclass(frozen=True, slots=True)
class Configuration:
    """Cluster membership: voters count in quorums; learners only receive the log."""

    voters: frozenset[str]
    learners: frozenset[str] = frozenset()

    def members(self) -> frozenset[str]:
        return self.voters | self.learners

    def sorted_voters(self) -> tuple[str, ...]:
        # frozenset iteration order depends on the per-process string hash seed; anything that must be
        # deterministic (message order, the simulator's replay) iterates in sorted order instead.
        return tuple(sorted(self.voters))

    def sorted_members(self) -> tuple[str, ...]:
        return tuple(sorted(self.voters | self.learners))


ConfState = Configuration


class ConfChangeKind(IntEnum):
    ADD_LEARNER = 0
    PROMOTE_LEARNER = 1
    REMOVE_NODE = 2
    # The first entry of every founding server's log: the initial voters.  Its node_id is the lowest
    # voter id so that every founder writes a byte-identical entry.
    BOOTSTRAP = 3


@dataclass(frozen=True, slots=True)
class ConfChange:
    """One single-server membership change.  ``context`` is opaque to Raft (the driver puts the server's
    address there) and is carried in the log entry so every server learns it when the entry applies."""

    kind: ConfChangeKind
    node_id: str
    context: bytes = b""


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    index: int
    term: int
    configuration: Configuration


@dataclass(frozen=True, slots=True)
class Snapshot:
    meta: SnapshotMeta
    data: bytes


# ---------------------------------------------------------------------------------------------------
# Messages.  Every message carries the sender's term, its id and the destination id.


@dataclass(frozen=True, slots=True)
class AppendEntries:
    term: int
    src: str
    dst: str
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int


@dataclass(frozen=True, slots=True)
class AppendEntriesResponse:
    term: int
    src: str
    dst: str
    # On success: the highest index known to match the leader.  On rejection: the prev_index rejected.
    index: int
    reject: bool
    # On rejection, where the leader should probe next: the largest index <= min(prev_index, last index)
    # whose term is <= the rejected prev_term, and that entry's term (etcd's findConflictByTerm).
    hint_index: int = 0
    hint_term: int = 0


@dataclass(frozen=True, slots=True)
class RequestVote:
    term: int
    src: str
    dst: str
    last_index: int
    last_term: int
    # Set when campaigning because of TimeoutNow: voters must not apply leader stickiness.
    transfer: bool = False


@dataclass(frozen=True, slots=True)
class RequestVoteResponse:
    term: int
    src: str
    dst: str
    granted: bool


@dataclass(frozen=True, slots=True)
class PreVote:
    # term is the term the sender would campaign in (its current term + 1); receivers do not adopt it.
    term: int
    src: str
    dst: str
    last_index: int
    last_term: int


@dataclass(frozen=True, slots=True)
class PreVoteResponse:
    term: int
    src: str
    dst: str
    granted: bool


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    term: int
    src: str
    dst: str
    meta: SnapshotMeta
    data: bytes


@dataclass(frozen=True, slots=True)
class InstallSnapshotResponse:
    term: int
    src: str
    dst: str
    index: int  # the index the follower now matches (its commit if the snapshot was stale)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    term: int
    src: str
    dst: str
    commit: int
    round: int  # the leader's heartbeat round; echoed back, confirms ReadIndex batches and the lease


@dataclass(frozen=True, slots=True)
class HeartbeatResponse:
    term: int
    src: str
    dst: str
    round: int


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    term: int
    src: str
    dst: str


@dataclass(frozen=True, slots=True)
class ReadIndexRequest:
    term: int
    src: str
    dst: str
    context: bytes


@dataclass(frozen=True, slots=True)
class ReadIndexResponse:
    term: int
    src: str
    dst: str
    context: bytes
    index: int
    ok: bool


Message = (
    AppendEntries
    | AppendEntriesResponse
    | RequestVote
    | RequestVoteResponse
    | PreVote
    | PreVoteResponse
    | InstallSnapshot
    | InstallSnapshotResponse
    | Heartbeat
    | HeartbeatResponse
    | TimeoutNow
    | ReadIndexRequest
    | ReadIndexResponse
)

# ---------------------------------------------------------------------------------------------------
# Field validators.  Each takes the raw decoded value and returns the typed value or raises.


def _fail(what: str) -> MessageDecodeError:
    return MessageDecodeError(what)


def _u64(value: Any, name: str) -> int:
    # bool is a subclass of int; a True where an index belongs is a malformed frame, not 1.
    if type(value) is not int:
        raise _fail(f"{name}: expected an unsigned integer, got {type(value).__name__}")
    if value < 0 or value > MAX_U64:
        raise _fail(f"{name}: {value} out of range")
    return value


def _bool(value: Any, name: str) -> bool:
    if type(value) is not bool:
        raise _fail(f"{name}: expected a boolean, got {type(value).__name__}")
    return value


def _bytes(value: Any, name: str, limit: int) -> bytes:
    if type(value) is not bytes:
        raise _fail(f"{name}: expected bytes, got {type(value).__name__}")
    if len(value) > limit:
        raise _fail(f"{name}: {len(value)} bytes exceeds the limit of {limit}")
    return value


def validate_node_id(value: Any, name: str = "node id") -> str:
    if type(value) is not str:
        raise _fail(f"{name}: expected a string, got {type(value).__name__}")
    if not value or len(value) > MAX_NODE_ID_BYTES or _NODE_ID_RE.fullmatch(value) is None:
        raise _fail(f"{name}: {value!r} is not a valid node id (1-{MAX_NODE_ID_BYTES} of A-Za-z0-9._:@[]-)")
    return value


def _array(value: Any, name: str, limit: int) -> list[Any]:
    if type(value) is not list:
        raise _fail(f"{name}: expected an array, got {type(value).__name__}")
    if len(value) > limit:
        raise _fail(f"{name}: {len(value)} items exceeds the limit of {limit}")
    return value


def _id_set(value: Any, name: str) -> frozenset[str]:
    items = _array(value, name, MAX_MEMBERS)
    ids = frozenset(validate_node_id(v, name) for v in items)
    if len(ids) != len(items):
        raise _fail(f"{name}: duplicate node id")
    return ids


def _configuration(value: Any, name: str) -> Configuration:
    raw = _array(value, name, 2)
    if len(raw) != 2:
        raise _fail(f"{name}: expected [voters, learners]")
    voters = _id_set(raw[0], f"{name}.voters")
    learners = _id_set(raw[1], f"{name}.learners")
    if voters & learners:
        raise _fail(f"{name}: a node cannot be both voter and learner")
    if not voters:
        raise _fail(f"{name}: a configuration needs at least one voter")
    return Configuration(voters, learners)


def _configuration_wire(config: Configuration) -> list[list[str]]:
    return [sorted(config.voters), sorted(config.learners)]


def _meta(value: Any, name: str) -> SnapshotMeta:
    raw = _array(value, name, 3)
    if len(raw) != 3:
        raise _fail(f"{name}: expected [index, term, configuration]")
    index = _u64(raw[0], f"{name}.index")
    term = _u64(raw[1], f"{name}.term")
    if (index == 0) != (term == 0):
        raise _fail(f"{name}: index {index} with term {term}")
    return SnapshotMeta(index, term, _configuration(raw[2], f"{name}.configuration"))


def _meta_wire(meta: SnapshotMeta) -> list[Any]:
    return [meta.index, meta.term, _configuration_wire(meta.configuration)]


# Config entry payload: [voters, learners, change_kind, node_id, context].


def encode_config_entry(config: Configuration, change: ConfChange) -> bytes:
    return msgpack.packb(
        [sorted(config.voters), sorted(config.learners), int(change.kind), change.node_id, change.context],
        use_bin_type=True,
    )


def _config_entry_from_raw(raw: Any) -> tuple[Configuration, ConfChange]:
    items = _array(raw, "config entry", 5)
    if len(items) != 5:
        raise _fail("config entry: expected [voters, learners, kind, node_id, context]")
    config = _configuration([items[0], items[1]], "config entry")
    kind_raw = _u64(items[2], "config entry.kind")
    try:
        kind = ConfChangeKind(kind_raw)
    except ValueError:
        raise _fail(f"config entry: unknown change kind {kind_raw}") from None
    node_id = validate_node_id(items[3], "config entry.node_id")
    context = _bytes(items[4], "config entry.context", MAX_CONTEXT_BYTES)
    # The configuration must be the result of the change it records, or the entry is corrupt.
    if kind is ConfChangeKind.ADD_LEARNER and node_id not in config.learners:
        raise _fail("config entry: added learner missing from the configuration")
    if kind is ConfChangeKind.PROMOTE_LEARNER and node_id not in config.voters:
        raise _fail("config entry: promoted learner missing from voters")
    if kind is ConfChangeKind.REMOVE_NODE and node_id in config.members():
        raise _fail("config entry: removed node still in the configuration")
    if kind is ConfChangeKind.BOOTSTRAP and (config.learners or node_id != min(config.voters)):
        raise _fail("config entry: a bootstrap configuration names its lowest voter and has no learners")
    return config, ConfChange(kind, node_id, context)


def decode_config_entry(data: bytes) -> tuple[Configuration, ConfChange]:
    return _config_entry_from_raw(_unpack(data, MAX_ENTRY_BYTES))


def _entry_wire(entry: Entry) -> list[Any]:
    return [entry.term, entry.index, int(entry.kind), entry.data]


def _entry(value: Any, name: str) -> Entry:
    raw = _array(value, name, 4)
    if len(raw) != 4:
        raise _fail(f"{name}: expected [term, index, kind, data]")
    term = _u64(raw[0], f"{name}.term")
    index = _u64(raw[1], f"{name}.index")
    if term == 0 or index == 0:
        raise _fail(f"{name}: entries have a term and an index of at least 1")
    kind_raw = _u64(raw[2], f"{name}.kind")
    try:
        kind = EntryKind(kind_raw)
    except ValueError:
        raise _fail(f"{name}: unknown entry kind {kind_raw}") from None
    data = _bytes(raw[3], f"{name}.data", MAX_ENTRY_BYTES)
    if kind is EntryKind.NOOP and data:
        raise _fail(f"{name}: a no-op entry carries no data")
    if kind is EntryKind.CONFIG:
        _config_entry_from_raw(_unpack(data, MAX_ENTRY_BYTES))
    return Entry(term, index, kind, data)


def encode_entry(entry: Entry) -> bytes:
    """Encode one log entry (for the WAL); the same layout as inside AppendEntries."""
    return msgpack.packb(_entry_wire(entry), use_bin_type=True)


def decode_entry(data: bytes) -> Entry:
    return _entry(_unpack(data, MAX_ENTRY_BYTES + 1024), "entry")


def _entries(value: Any, name: str, prev_index: int, prev_term: int, term: int) -> tuple[Entry, ...]:
    items = _array(value, name, MAX_ENTRIES_PER_MESSAGE)
    out = []
    expect_index = prev_index + 1
    last_term = prev_term
    for i, item in enumerate(items):
        entry = _entry(item, f"{name}[{i}]")
        if entry.index != expect_index:
            raise _fail(f"{name}[{i}]: index {entry.index}, expected {expect_index} (entries must be contiguous)")
        if entry.term < last_term or entry.term > term:
            raise _fail(f"{name}[{i}]: term {entry.term} out of order (after {last_term}, message term {term})")
        out.append(entry)
        expect_index += 1
        last_term = entry.term
    return tuple(out)


def _unpack(data: Any, limit: int) -> Any:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _fail(f"expected bytes, got {type(data).__name__}")
    if len(data) > limit:
        raise _fail(f"frame of {len(data)} bytes exceeds the limit of {limit}")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=MAX_NODE_ID_BYTES * 4,
            max_bin_len=limit,
            max_array_len=MAX_ENTRIES_PER_MESSAGE + 16,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several unrelated types; all mean "not a valid frame"
        raise _fail(f"malformed msgpack: {type(exc).__name__}: {exc}") from None


# ---------------------------------------------------------------------------------------------------
# Per-type codecs.  Each type has a code, an encoder of its fields after (term, src, dst), and a decoder
# that validates those fields given the common header.

_Decoder = Callable[[int, str, str, list[Any]], Message]


def _need(fields: list[Any], n: int, name: str) -> None:
    if len(fields) != n:
        raise _fail(f"{name}: expected {n} fields after the header, got {len(fields)}")


def _dec_append(term: int, src: str, dst: str, f: list[Any]) -> Message:
    _need(f, 4, "AppendEntries")
    prev_index = _u64(f[0], "prev_index")
    prev_term = _u64(f[1], "prev_term")
    if prev_term > term:
        raise _fail("AppendEntries: prev_term newer than the message term")
    if prev_index == 0 and prev_term != 0:
        raise _fail("AppendEntries: index 0 has term 0")
    entries = _entries(f[2], "entries", prev_index, prev_term, term)
    commit = _u64(f[3], "commit")
    return AppendEntries(term, src, dst, prev_index, prev_term, entries, commit)


def _dec_append_resp(term: int, src: str, dst: str, f: list[Any]) -> Message:
    _need(f, 4, "AppendEntriesResponse")
    index = _u64(f[0], "index")
    reject = _bool(f[1], "reject")
    hint_index = _u64(f[2], "hint_index")
    hint_term = _u64(f[3], "hint_term")
    if not reject and (hint_index or hint_term):
        raise _fail("AppendEntriesResponse: a hint only accompanies a rejection")
    if hint_index > index:
        raise _fail("AppendEntriesResponse: hint beyond the rejected index")
    return AppendEntriesResponse(term, src, dst, index, reject, hint_index, hint_term)


def _dec_vote(term: int, src: str, dst: str, f: list[Any]) -> Message:
    _need(f, 3, "RequestVote")
    last_index, last_term = _last_log(f, term, "RequestVote")
    return RequestVote(term, src, dst, last_index, last_term, _bool(f[2], "transfer"))


def _dec_prevote(term: int, src: str, dst: str, f: list[Any]) -> Message:
    _need(f, 2, "PreVote")
    last_index, last_term = _last_log(f, term, "PreVote")
    return PreVote(term, src, dst, last_index, last_term)


def _last_log(f: list[Any], term: int, name: str) -> tuple[int, int]:
    last_index = _u64(f[0], "last_index")
    last_term = _u64(f[1], "last_term")
    if term == 0:
        raise _fail(f"{name}: campaigns happen in term 1 or later")
    if last_term >= term:
        raise _fail(f"{name}: a candidate's last log term is older than the term it campaigns in")
    if last_index == 0 and last_term != 0:
        raise _fail(f"{name}: index 0 has term 0")
    return last_index, last_term


def _dec_vote_resp(term: int, src: str, dst: str, f: list[Any]) -> Message:
    _need(f, 1, "RequestVoteResponse")
    return RequestVoteResponse(term, src, dst, _bool(f[0], "granted"))


def _dec_prevote_resp(term: int, src: str, dst: str, f: list[Any]) -> Message:
    _need(f, 1, "PreVoteResponse")
    return PreVoteResponse(term, src, dst, _bool(f[0], "granted"))


def _dec_snapshot(term: int, src: str, dst: str, f: list[Any]) -> Message:
    _need(f, 2, "InstallSnapshot")
    meta = _meta(f[0], "meta")
    if meta.index == 0:
        raise _fail("InstallSnapshot: the empty bootstrap state is never sent")
    if meta.term > term:
        raise _fail("InstallSnapshot: snapshot term newer than the message term")
    return InstallSnapshot(term, src, dst, meta, _bytes(f[1], "data", MAX_SNAPSHOT_BYTES))


def _dec_snapshot_resp(term: int, src: str, dst: str, f: list[Any]) -> Message:
    _need(f, 1, "InstallSnapshotResponse")
    return InstallSnapshotResponse(term, src, dst, _u64(f[0], "index"))


def _dec_heartbeat(term: int, src: str, dst: str, f: list[Any]) -> Message:
    _need(f, 2, "Heartbeat")
    return Heartbeat(term, src, dst, _u64(f[0], "commit"), _u64(f[1], "round"))


def _dec_heartbeat_resp(term: int, src: str, dst: str, f: list[Any]) -> Message:
    _need(f, 1, "HeartbeatResponse")
    return HeartbeatResponse(term, src, dst, _u64(f[0], "round"))


def _dec_timeout_now(term: int, src: str, dst: str, f: list[Any]) -> Message:
    _need(f, 0, "TimeoutNow")
    return TimeoutNow(term, src, dst)


def _dec_read_req(term: int, src: str, dst: str, f: list[Any]) -> Message:
    _need(f, 1, "ReadIndexRequest")
    return ReadIndexRequest(term, src, dst, _bytes(f[0], "context", MAX_CONTEXT_BYTES))


def _dec_read_resp(term: int, src: str, dst: str, f: list[Any]) -> Message:
    _need(f, 3, "ReadIndexResponse")
    context = _bytes(f[0], "context", MAX_CONTEXT_BYTES)
    index = _u64(f[1], "index")
    ok = _bool(f[2], "ok")
    if not ok and index:
        raise _fail("ReadIndexResponse: a refused read carries no index")
    return ReadIndexResponse(term, src, dst, context, index, ok)


def _enc_fields(msg: Message) -> list[Any]:
    match msg:
        case AppendEntries():
            return [msg.prev_index, msg.prev_term, [_entry_wire(e) for e in msg.entries], msg.commit]
        case AppendEntriesResponse():
            return [msg.index, msg.reject, msg.hint_index, msg.hint_term]
        case RequestVote():
            return [msg.last_index, msg.last_term, msg.transfer]
        case PreVote():
            return [msg.last_index, msg.last_term]
        case RequestVoteResponse() | PreVoteResponse():
            return [msg.granted]
        case InstallSnapshot():
            return [_meta_wire(msg.meta), msg.data]
        case InstallSnapshotResponse():
            return [msg.index]
        case Heartbeat():
            return [msg.commit, msg.round]
        case HeartbeatResponse():
            return [msg.round]
        case TimeoutNow():
            return []
        case ReadIndexRequest():
            return [msg.context]
        case ReadIndexResponse():
            return [msg.context, msg.index, msg.ok]
    raise TypeError(f"not a Raft message: {type(msg).__name__}")


# type -> (wire code, decoder).  Codes are part of the wire format: never renumber.
MESSAGE_TYPES: Final[dict[type, tuple[int, _Decoder]]] = {
    AppendEntries: (1, _dec_append),
    AppendEntriesResponse: (2, _dec_append_resp),
    RequestVote: (3, _dec_vote),
    RequestVoteResponse: (4, _dec_vote_resp),
    PreVote: (5, _dec_prevote),
    PreVoteResponse: (6, _dec_prevote_resp),
    InstallSnapshot: (7, _dec_snapshot),
    InstallSnapshotResponse: (8, _dec_snapshot_resp),
    Heartbeat: (9, _dec_heartbeat),
    HeartbeatResponse: (10, _dec_heartbeat_resp),
    TimeoutNow: (11, _dec_timeout_now),
    ReadIndexRequest: (12, _dec_read_req),
    ReadIndexResponse: (13, _dec_read_resp),
}
_DECODERS: Final[dict[int, _Decoder]] = {code: dec for code, dec in MESSAGE_TYPES.values()}
_LEADER_CODES: Final = frozenset(
    MESSAGE_TYPES[t][0] for t in (AppendEntries, InstallSnapshot, Heartbeat, TimeoutNow)
)


def encode_message(msg: Message) -> bytes:
    code = MESSAGE_TYPES[type(msg)][0]
    return msgpack.packb([WIRE_VERSION, code, msg.term, msg.src, msg.dst, *_enc_fields(msg)], use_bin_type=True)


def decode_message(data: bytes, max_bytes: int = MAX_FRAME_BYTES) -> Message:
    """Decode and validate one frame.  Returns a message or raises MessageDecodeError, nothing else."""
    raw = _unpack(data, max_bytes)
    if type(raw) is not list or len(raw) < 5:
        raise _fail("not a message frame: expected [version, type, term, src, dst, ...]")
    if type(raw[0]) is not int or raw[0] != WIRE_VERSION:
        raise _fail(f"unsupported wire version {raw[0]!r}")
    code = raw[1]
    decoder = _DECODERS.get(code) if type(code) is int else None
    if decoder is None:
        raise _fail(f"unknown message type {code!r}")
    term = _u64(raw[2], "term")
    src = validate_node_id(raw[3], "src")
    dst = validate_node_id(raw[4], "dst")
    if src == dst:
        raise _fail("a message from a node to itself")
    if term == 0 and code in _LEADER_CODES:
        raise _fail("leaders exist from term 1 on; a leader message in term 0 is invalid")
    return decoder(term, src, dst, raw[5:])


def validate_message(msg: Message) -> None:
    """Raise MessageDecodeError unless ``msg`` is a message decode_message could have returned.

    Tests use it to assert that decoding never yields an invalid value; it re-runs the decoder's checks on
    the encoded form so the two cannot drift apart."""
    if type(msg) not in MESSAGE_TYPES:
        raise _fail(f"not a Raft message: {type(msg).__name__}")
    try:
        encoded = encode_message(msg)
    except (TypeError, ValueError, OverflowError) as exc:
        raise _fail(f"unencodable message: {exc}") from None
    if decode_message(encoded) != msg:
        raise _fail("message does not survive a round trip")

