"""Gossip messages and their wire form.

Every message is an immutable value.  The pure core (``registry.gossip.core``) builds and consumes them;
the driver moves them between sockets.  Message kinds and their type codes follow hashicorp/memberlist
(net.go: ping 0, indirect ping 1, ack 2, suspect 3, alive 4, dead 5, push-pull 6, user 8, nack 11), and
Serf's queries ride in the user message with Serf's codes (messages.go: query 4, query response 5,
relay 9); the
encoding is our own.

Wire format
===========

A UDP packet is ``WIRE_VERSION`` (one byte) followed by one msgpack array of messages (a compound packet,
memberlist's compoundMsg without its separate framing), each message an array ``[type, *fields]``.  A
stream frame (TCP: push-pull and the TCP fallback ping) is the version byte followed by one message.  The
driver hands packets through a ``PacketCodec`` first (``registry.gossip.codec``), the seam for encryption.

``decode_packet`` and ``decode_stream`` treat their input as hostile: msgpack is read with bounds on every
length, nothing is evaluated or unpickled, each field's type and range is checked, and anything else raises
``MessageDecodeError`` (and nothing else).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Final, NamedTuple

import msgpack

__all__ = [
    "WIRE_VERSION",
    "MAX_NAME_BYTES",
    "MAX_TAGS_BYTES",
    "MAX_PAYLOAD_BYTES",
    "MAX_PACKET_BYTES",
    "MAX_STREAM_BYTES",
    "MAX_PUSH_STATES",
    "MAX_U32",
    "Address",
    "MemberState",
    "Ping",
    "IndirectPing",
    "Ack",
    "Nack",
    "Suspect",
    "Alive",
    "Dead",
    "PushState",
    "PushPull",
    "Query",
    "QueryResponse",
    "Relay",
    "MAX_RELAY_FACTOR",
    "MAX_QUERY_NAME_BYTES",
    "MAX_QUERY_PAYLOAD_BYTES",
    "MAX_RESPONSE_BYTES",
    "MAX_QUERY_FILTERS",
    "Message",
    "Broadcast",
    "StreamMessage",
    "MessageDecodeError",
    "encode_message",
    "encode_packet",
    "decode_packet",
    "encode_stream",
    "decode_stream",
    "encoded_size",
    "validate_tags",
    "validate_name",
]

WIRE_VERSION: Final = 1
MAX_U32: Final = (1 << 32) - 1
MAX_NAME_BYTES: Final = 256
MAX_HOST_BYTES: Final = 255
MAX_TAGS_BYTES: Final = 512  # memberlist's MetaMaxSize: Serf's tags travel in the node's meta
MAX_TAGS: Final = 64
MAX_PAYLOAD_BYTES: Final = 1024  # an ack's payload: Serf puts the member's network coordinate there
MAX_PACKET_BYTES: Final = 65507  # the largest UDP payload over IPv4
MAX_PACKET_MESSAGES: Final = 1024
MAX_STREAM_BYTES: Final = 32 * 1024 * 1024  # memberlist allows 20 MiB of push-pull node state
MAX_PUSH_STATES: Final = 250_000
# Serf's queries (query.go): the name, the request payload and the answers are bounded.  Serf refuses a
# query or a response over 1 KiB (QuerySizeLimit, QueryResponseSizeLimit); a response up to that fits a UDP
# packet, a larger one (up to MAX_RESPONSE_BYTES) goes to the origin over TCP instead of being refused.
MAX_QUERY_NAME_BYTES: Final = 128
MAX_QUERY_PAYLOAD_BYTES: Final = 1024
MAX_RESPONSE_BYTES: Final = 64 * 1024
MAX_QUERY_FILTERS: Final = 64
MAX_QUERY_TIMEOUT_MS: Final = 600_000
MAX_RELAY_FACTOR: Final = 5  # Serf's QueryParam.RelayFactor is at most 5

_HOST_RE: Final = re.compile(r"[A-Za-z0-9.:%_\-\[\]]+")


class MessageDecodeError(ValueError):
    """Bytes that are not a valid gossip packet or stream frame."""


class Address(NamedTuple):
    """Where a member listens: the same port serves UDP and TCP (Serf's LAN port, 8301 by default)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class MemberState(IntEnum):
    """memberlist's NodeStateType values, which are also their wire codes."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


class _Code(IntEnum):
    PING = 0
    INDIRECT_PING = 1
    ACK = 2
    SUSPECT = 3
    ALIVE = 4
    DEAD = 5
    PUSH_PULL = 6
    USER = 8  # memberlist's userMsg: Serf's own messages ride in it, a Serf type code second
    NACK = 11


class _SerfCode(IntEnum):
    """Serf's messageType codes (messages.go) of the messages carried in memberlist's user message."""

    QUERY = 4
    QUERY_RESPONSE = 5
    RELAY = 9


@dataclass(frozen=True, slots=True)
class Ping:
    """A probe.  ``target`` names the member meant, so a ping reaching a new process on an old address
    is not answered for the wrong node; ``source``/``source_addr`` say where to send the ack."""

    seq: int
    target: str
    source: str
    source_addr: Address


@dataclass(frozen=True, slots=True)
class IndirectPing:
    """Ping-req: ask the receiver to ping ``target`` for us and forward its ack (and a nack if ``nack``
    and no ack came within the probe timeout: Lifeguard's signal that the helper itself is healthy)."""

    seq: int
    target: str
    target_addr: Address
    nack: bool
    source: str
    source_addr: Address


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int
    payload: bytes = b""


@dataclass(frozen=True, slots=True)
class Nack:
    seq: int


@dataclass(frozen=True, slots=True)
class Suspect:
    incarnation: int
    node: str
    source: str


@dataclass(frozen=True, slots=True)
class Alive:
    incarnation: int
    node: str
    addr: Address
    tags: Mapping[str, str]
    version: int = 1


@dataclass(frozen=True, slots=True)
class Dead:
    """Failure of ``node``, or, with ``left``, its own announcement that it leaves (memberlist encodes a
    leave as a dead message from the node itself; the flag says so explicitly)."""

    incarnation: int
    node: str
    source: str
    left: bool = False


@dataclass(frozen=True, slots=True)
class PushState:
    name: str
    addr: Address
    tags: Mapping[str, str]
    incarnation: int
    state: MemberState


@dataclass(frozen=True, slots=True)
class PushPull:
    """A full state exchange over TCP: the request carries the sender's member list, the reply the
    receiver's.  ``join`` marks the exchange a join (memberlist's pushPullHeader.Join)."""

    join: bool
    source: str
    states: tuple[PushState, ...]


@dataclass(frozen=True, slots=True)
class Query:
    """Serf's query (messageQueryType): ``name`` and ``payload`` asked of every member that passes the
    filters, disseminated like membership news; each answers straight to ``source_addr``.

    ``id`` with ``source`` names the query (a member handles each once); ``timeout_ms`` is relative
    (members' clocks differ), each receiver's deadline is its own receipt time plus it; ``ack`` asks every
    member to acknowledge receipt (Serf's queryFlagAck).  Filters (Serf's filterNode, filterTag): only the
    named members, only members whose tag values match the regular expressions.  ``relay_factor``: each
    answer is also sent through that many random members (Serf's relayed responses), so a lossy path to
    the origin does not lose it."""

    id: int
    name: str
    payload: bytes
    source: str
    source_addr: Address
    timeout_ms: int
    ack: bool = False
    filter_nodes: tuple[str, ...] = ()
    filter_tags: Mapping[str, str] = field(default_factory=dict)
    relay_factor: int = 0


@dataclass(frozen=True, slots=True)
class QueryResponse:
    """Serf's messageQueryResponseType: ``source``'s answer (or, with ``ack``, acknowledgement) to the
    query ``id`` of the member it is sent to."""

    id: int
    source: str
    ack: bool
    payload: bytes = b""


@dataclass(frozen=True, slots=True)
class Relay:
    """Serf's messageRelayType: forward ``response`` to ``to`` (the query's origin)."""

    to: Address
    response: QueryResponse


Message = Ping | IndirectPing | Ack | Nack | Suspect | Alive | Dead | Query | QueryResponse | Relay
Broadcast = Suspect | Alive | Dead | Query
StreamMessage = PushPull | Ping | Ack | QueryResponse


def _fail(text: str) -> MessageDecodeError:
    return MessageDecodeError(text)


# -- encoding ---------------------------------------------------------------------------------------


def _fields(msg: Message | PushPull) -> list[Any]:
    match msg:
        case Ping():
            return [_Code.PING, msg.seq, msg.target, msg.source, msg.source_addr.host, msg.source_addr.port]
        case IndirectPing():
            return [_Code.INDIRECT_PING, msg.seq, msg.target, msg.target_addr.host, msg.target_addr.port,
                    msg.nack, msg.source, msg.source_addr.host, msg.source_addr.port]  # fmt: skip
        case Ack():
            return [_Code.ACK, msg.seq, bytes(msg.payload)]
        case Nack():
            return [_Code.NACK, msg.seq]
        case Suspect():
            return [_Code.SUSPECT, msg.incarnation, msg.node, msg.source]
        case Alive():
            return [_Code.ALIVE, msg.incarnation, msg.node, msg.addr.host, msg.addr.port, dict(msg.tags),
                    msg.version]  # fmt: skip
        case Dead():
            return [_Code.DEAD, msg.incarnation, msg.node, msg.source, msg.left]
        case Query():
            return [_Code.USER, _SerfCode.QUERY, msg.id, msg.name, bytes(msg.payload), msg.source,
                    msg.source_addr.host, msg.source_addr.port, msg.timeout_ms, msg.ack, list(msg.filter_nodes),
                    dict(msg.filter_tags), msg.relay_factor]  # fmt: skip
        case QueryResponse():
            return [_Code.USER, _SerfCode.QUERY_RESPONSE, msg.id, msg.source, msg.ack, bytes(msg.payload)]
        case Relay():
            return [_Code.USER, _SerfCode.RELAY, msg.to.host, msg.to.port, _fields(msg.response)]
        case PushPull():
            states = [[s.name, s.addr.host, s.addr.port, dict(s.tags), s.incarnation, int(s.state)]
                      for s in msg.states]  # fmt: skip
            return [_Code.PUSH_PULL, msg.join, msg.source, states]
    raise TypeError(f"not a gossip message: {type(msg).__name__}")


def encode_message(msg: Message | PushPull) -> bytes:
    """One message as a msgpack array (the element of a packet)."""
    return msgpack.packb(_fields(msg), use_bin_type=True)


def encoded_size(msg: Message) -> int:
    return len(encode_message(msg))


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def encode_packet(messages: list[bytes] | tuple[bytes, ...]) -> bytes:
    """A packet of already encoded messages (the core sizes packets by these encodings)."""
    return bytes((WIRE_VERSION,)) + _array_header(len(messages)) + b"".join(messages)


def encode_stream(msg: StreamMessage) -> bytes:
    return bytes((WIRE_VERSION,)) + encode_message(msg)


# -- decoding ---------------------------------------------------------------------------------------


def _unpack(data: bytes, limit: int, max_array: int, max_bin: int = MAX_PAYLOAD_BYTES) -> Any:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _fail(f"expected bytes, got {type(data).__name__}")
    if len(data) < 2:
        raise _fail("too short")
    if len(data) > limit:
        raise _fail(f"{len(data)} bytes exceed the limit of {limit}")
    if data[0] != WIRE_VERSION:
        raise _fail(f"unsupported wire version {data[0]}")
    try:
        return msgpack.unpackb(
            memoryview(data)[1:],
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=MAX_TAGS_BYTES,
            max_bin_len=max_bin,
            max_array_len=max_array,
            max_map_len=MAX_TAGS,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several unrelated types; all mean "not a valid packet"
        raise _fail(f"malformed msgpack: {type(exc).__name__}") from None


def _int(v: Any, what: str, hi: int = MAX_U32, lo: int = 0) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise _fail(f"{what}: expected an integer in [{lo}, {hi}]")
    return v


def _bool(v: Any, what: str) -> bool:
    if type(v) is not bool:
        raise _fail(f"{what}: expected a boolean")
    return v


def validate_name(v: Any, what: str = "node") -> str:
    if type(v) is not str or not v or len(v.encode()) > MAX_NAME_BYTES:
        raise _fail(f"{what}: expected a non-empty name of at most {MAX_NAME_BYTES} bytes")
    return v


def _addr(host: Any, port: Any, what: str) -> Address:
    if type(host) is not str or not 0 < len(host) <= MAX_HOST_BYTES or not _HOST_RE.fullmatch(host):
        raise _fail(f"{what}: not a host")
    return Address(host, _int(port, f"{what} port", 65535, 1))


def validate_tags(v: Any) -> dict[str, str]:
    """Serf's tags: string keys and values, at most 512 bytes encoded (memberlist's MetaMaxSize)."""
    if type(v) is not dict or len(v) > MAX_TAGS:
        raise _fail("tags: expected a map of strings")
    for k, val in v.items():
        if type(k) is not str or type(val) is not str or not k:
            raise _fail("tags: expected a map of strings")
    if len(msgpack.packb(v)) > MAX_TAGS_BYTES:
        raise _fail(f"tags: more than {MAX_TAGS_BYTES} bytes encoded")
    return v


def _need(raw: list[Any], n: int, name: str) -> None:
    if len(raw) != n:
        raise _fail(f"{name}: expected {n} fields, got {len(raw)}")


def _ping(r: list[Any]) -> Ping:
    _need(r, 6, "ping")
    return Ping(_int(r[1], "seq"), validate_name(r[2], "target"), validate_name(r[3], "source"),
                _addr(r[4], r[5], "source"))  # fmt: skip


def _indirect(r: list[Any]) -> IndirectPing:
    _need(r, 9, "indirect ping")
    return IndirectPing(_int(r[1], "seq"), validate_name(r[2], "target"), _addr(r[3], r[4], "target"),
                        _bool(r[5], "nack"), validate_name(r[6], "source"), _addr(r[7], r[8], "source"))  # fmt: skip


def _ack(r: list[Any]) -> Ack:
    _need(r, 3, "ack")
    if type(r[2]) is not bytes:
        raise _fail("ack: payload must be bytes")
    return Ack(_int(r[1], "seq"), r[2])


def _nack(r: list[Any]) -> Nack:
    _need(r, 2, "nack")
    return Nack(_int(r[1], "seq"))


def _suspect(r: list[Any]) -> Suspect:
    _need(r, 4, "suspect")
    return Suspect(_int(r[1], "incarnation"), validate_name(r[2]), validate_name(r[3], "source"))


def _alive(r: list[Any]) -> Alive:
    _need(r, 7, "alive")
    return Alive(_int(r[1], "incarnation"), validate_name(r[2]), _addr(r[3], r[4], "alive"), validate_tags(r[5]),
                 _int(r[6], "version", 255, 1))  # fmt: skip


def _dead(r: list[Any]) -> Dead:
    _need(r, 5, "dead")
    return Dead(_int(r[1], "incarnation"), validate_name(r[2]), validate_name(r[3], "source"), _bool(r[4], "left"))


def _push_pull(r: list[Any]) -> PushPull:
    _need(r, 4, "push-pull")
    if type(r[3]) is not list or len(r[3]) > MAX_PUSH_STATES:
        raise _fail("push-pull: expected a list of member states")
    states = []
    for s in r[3]:
        if type(s) is not list or len(s) != 6:
            raise _fail("push-pull: a member state has 6 fields")
        state = _int(s[5], "state", 3)
        states.append(PushState(validate_name(s[0]), _addr(s[1], s[2], "member"), validate_tags(s[3]),
                                _int(s[4], "incarnation"), MemberState(state)))  # fmt: skip
    return PushPull(_bool(r[1], "join"), validate_name(r[2], "source"), tuple(states))


def _query(r: list[Any]) -> Query:
    _need(r, 13, "query")
    name = r[3]
    if type(name) is not str or not name or len(name.encode()) > MAX_QUERY_NAME_BYTES:
        raise _fail(f"query: a name of at most {MAX_QUERY_NAME_BYTES} bytes")
    if type(r[4]) is not bytes or len(r[4]) > MAX_QUERY_PAYLOAD_BYTES:
        raise _fail(f"query: a payload of at most {MAX_QUERY_PAYLOAD_BYTES} bytes")
    nodes = r[10]
    if type(nodes) is not list or len(nodes) > MAX_QUERY_FILTERS:
        raise _fail("query: filter_nodes must be a list of names")
    tags = r[11]
    if type(tags) is not dict or len(tags) > MAX_QUERY_FILTERS:
        raise _fail("query: filter_tags must be a map of strings")
    for k, v in tags.items():
        if type(k) is not str or type(v) is not str:
            raise _fail("query: filter_tags must be a map of strings")
    return Query(_int(r[2], "id"), name, r[4], validate_name(r[5], "source"), _addr(r[6], r[7], "source"),
                 _int(r[8], "timeout", MAX_QUERY_TIMEOUT_MS, 1), _bool(r[9], "ack"),
                 tuple(validate_name(n, "filter node") for n in nodes), tags,
                 _int(r[12], "relay factor", MAX_RELAY_FACTOR))  # fmt: skip


def _query_response(r: list[Any]) -> QueryResponse:
    _need(r, 6, "query response")
    if type(r[5]) is not bytes or len(r[5]) > MAX_RESPONSE_BYTES:
        raise _fail(f"query response: a payload of at most {MAX_RESPONSE_BYTES} bytes")
    return QueryResponse(_int(r[2], "id"), validate_name(r[3], "source"), _bool(r[4], "ack"), r[5])


def _relay(r: list[Any]) -> Relay:
    _need(r, 5, "relay")
    inner = r[4]
    if type(inner) is not list or len(inner) < 2 or inner[:2] != [_Code.USER, _SerfCode.QUERY_RESPONSE]:
        raise _fail("relay: only a query response is relayed")
    response = _query_response(inner)
    if len(response.payload) > MAX_PAYLOAD_BYTES:
        raise _fail(f"relay: a payload of at most {MAX_PAYLOAD_BYTES} bytes")
    return Relay(_addr(r[2], r[3], "relay"), response)


_SERF_DECODERS: Final[dict[int, Callable[[list[Any]], Message]]] = {
    _SerfCode.QUERY: _query,
    _SerfCode.QUERY_RESPONSE: _query_response,
    _SerfCode.RELAY: _relay,
}


def _user(r: list[Any]) -> Message:
    if len(r) < 2 or type(r[1]) is not int or r[1] not in _SERF_DECODERS:
        raise _fail("unknown Serf message type")
    return _SERF_DECODERS[r[1]](r)


def _stream_user(r: list[Any]) -> QueryResponse:
    if len(r) < 2 or r[1] != _SerfCode.QUERY_RESPONSE:
        raise _fail("only a query response travels in a stream")
    return _query_response(r)


_PACKET_DECODERS: Final[dict[int, Callable[[list[Any]], Message]]] = {
    _Code.PING: _ping,
    _Code.INDIRECT_PING: _indirect,
    _Code.ACK: _ack,
    _Code.NACK: _nack,
    _Code.SUSPECT: _suspect,
    _Code.ALIVE: _alive,
    _Code.DEAD: _dead,
    _Code.USER: _user,
}
_STREAM_DECODERS: Final[dict[int, Callable[[list[Any]], StreamMessage]]] = {
    _Code.PING: _ping,
    _Code.ACK: _ack,
    _Code.PUSH_PULL: _push_pull,
    _Code.USER: _stream_user,
}


def _decode_one(raw: Any, table: Mapping[int, Callable[[list[Any]], Any]]) -> Any:
    if type(raw) is not list or not raw or type(raw[0]) is not int:
        raise _fail("a message is an array [type, ...]")
    decoder = table.get(raw[0])
    if decoder is None:
        raise _fail(f"unknown or misplaced message type {raw[0]}")
    return decoder(raw)


def decode_packet(data: bytes) -> list[Message]:
    """Decode and validate one UDP packet.  Returns its messages or raises MessageDecodeError."""
    raw = _unpack(data, MAX_PACKET_BYTES, MAX_PACKET_MESSAGES)
    if type(raw) is not list or not raw:
        raise _fail("a packet is a non-empty array of messages")
    return [_decode_one(m, _PACKET_DECODERS) for m in raw]


def decode_stream(data: bytes) -> StreamMessage:
    """Decode and validate one stream frame (without the driver's length prefix)."""
    return _decode_one(_unpack(data, MAX_STREAM_BYTES, MAX_PUSH_STATES, MAX_RESPONSE_BYTES), _STREAM_DECODERS)
