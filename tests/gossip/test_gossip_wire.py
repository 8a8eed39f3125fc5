"""The gossip wire format: every message round-trips, and no input makes the decoder raise anything but
MessageDecodeError (hostile packets are dropped and counted by the driver, never crash it)."""

from __future__ import annotations

import random

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry.gossip.core import GossipNode
from registry.gossip.messages import (
    MAX_TAGS_BYTES,
    Ack,
    Address,
    Alive,
    Dead,
    IndirectPing,
    MemberState,
    MessageDecodeError,
    Nack,
    Ping,
    PushPull,
    PushState,
    Suspect,
    decode_packet,
    decode_stream,
    encode_message,
    encode_packet,
    encode_stream,
)

A = Address("10.0.0.1", 8301)
B = Address("fe80::1", 8301)
MESSAGES = [
    Ping(1, "node-b", "node-a", A),
    IndirectPing(2, "node-c", B, True, "node-a", A),
    Ack(3, b"\x01\x02"),
    Ack(4),
    Nack(5),
    Suspect(7, "node-c", "node-a"),
    Alive(8, "node-a", A, {"role": "consul", "dc": "dc1", "port": "8300"}, 1),
    Dead(9, "node-c", "node-a", False),
    Dead(9, "node-a", "node-a", True),
]


def _packet(msgs: list) -> bytes:
    return encode_packet([encode_message(m) for m in msgs])


def test_every_packet_message_round_trips() -> None:
    assert decode_packet(_packet(MESSAGES)) == MESSAGES
    for m in MESSAGES:
        assert decode_packet(_packet([m])) == [m]


def test_a_large_compound_packet_round_trips() -> None:
    msgs = [Suspect(i, f"n{i}", "me") for i in range(300)]  # > 65535 bytes header forms are exercised
    assert decode_packet(_packet(msgs)) == msgs


def test_stream_messages_round_trip() -> None:
    states = tuple(PushState(f"n{i}", Address("10.0.0.2", 8301 + i), {"role": "node"}, i, MemberState(i % 4))
                   for i in range(4))  # fmt: skip
    for m in (PushPull(True, "node-a", states), PushPull(False, "b", ()), Ping(1, "b", "a", A), Ack(1, b"x")):
        assert decode_stream(encode_stream(m)) == m


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01",
        b"\x02\x91\x92\x00\x01",  # wrong version
        b"\x01\x90",  # no messages
        b"\x01\xc1",  # a reserved msgpack byte
        b"\x01" + msgpack.packb([[99, 1]]),  # unknown type
        b"\x01" + msgpack.packb([[6, True, "a", []]]),  # push-pull is stream-only
        b"\x01" + msgpack.packb([[0, 1, "b", "a", "10.0.0.1"]]),  # a field short
        b"\x01" + msgpack.packb([[0, -1, "b", "a", "10.0.0.1", 1]]),  # negative seq
        b"\x01" + msgpack.packb([[0, 1 << 32, "b", "a", "10.0.0.1", 1]]),  # seq beyond u32
        b"\x01" + msgpack.packb([[0, True, "b", "a", "10.0.0.1", 1]]),  # a bool is not an int
        b"\x01" + msgpack.packb([[0, 1, "", "a", "10.0.0.1", 1]]),  # empty name
        b"\x01" + msgpack.packb([[0, 1, "b", "a", "10.0.0.1", 0]]),  # port 0
        b"\x01" + msgpack.packb([[0, 1, "b", "a", "a b", 1]]),  # not a host
        b"\x01" + msgpack.packb([[4, 1, "a", "10.0.0.1", 1, {"k": 1}, 1]]),  # tag value not a string
        b"\x01" + msgpack.packb([[4, 1, "a", "10.0.0.1", 1, {"k": "v" * 600}, 1]]),  # tags too big
        b"\x01" + msgpack.packb([[4, 1, "a", "10.0.0.1", 1, {}, 0]]),  # version 0
        b"\x01" + msgpack.packb([[5, 1, "a", "b", 1]]),  # left is not a bool
        b"\x01" + msgpack.packb([[2, 1, "text"]]),  # payload is not bytes
        b"\x01" + msgpack.packb([{"a": 1}]),  # a map is not a message
        b"\x01" + b"\x91" * 5000,  # deep nesting
        b"\x01" + msgpack.packb([[0, 1, "b", "a", "10.0.0.1", 1]])[:-1],  # truncated
        b"\x01" + msgpack.packb([[0, 1, "b", "a", "10.0.0.1", 1]]) + b"\x00",  # trailing bytes
        b"\x01" + msgpack.packb([[2, 1, b"x" * 2000]]),  # payload too long
        b"\x01" + msgpack.packb([[2, 1, b""]] * 2000),  # too many messages
        b"\x01" * 70000,  # larger than any UDP packet
    ],
)
def test_bad_packets_are_refused(data: bytes) -> None:
    with pytest.raises(MessageDecodeError):
        decode_packet(data)


def test_bad_stream_frames_are_refused() -> None:
    for data in (
        b"\x01" + msgpack.packb([6, True, "a", [["n", "10.0.0.1", 1, {}, 1, 7]]]),  # state 7
        b"\x01" + msgpack.packb([6, True, "a", [["n", "10.0.0.1", 1, {}, 1]]]),  # short state
        b"\x01" + msgpack.packb([3, 1, "a", "b"]),  # suspect is packet-only
        b"\x01" + msgpack.packb([6, True, "a", "not a list"]),
    ):
        with pytest.raises(MessageDecodeError):
            decode_stream(data)


def test_tags_at_the_limit_pass_and_one_byte_more_fails() -> None:
    value = "x" * max(n for n in range(MAX_TAGS_BYTES) if len(msgpack.packb({"k": "x" * n})) <= MAX_TAGS_BYTES)
    assert len(msgpack.packb({"k": value})) == MAX_TAGS_BYTES
    ok = Alive(1, "a", A, {"k": value}, 1)
    assert decode_packet(_packet([ok])) == [ok]
    with pytest.raises(MessageDecodeError):
        decode_packet(_packet([Alive(1, "a", A, {"k": value + "x"}, 1)]))


@given(st.binary(max_size=2048))
def test_random_bytes_never_crash_the_decoder(data: bytes) -> None:
    for blob in (data, b"\x01" + data):
        for decode in (decode_packet, decode_stream):
            try:
                decode(blob)
            except MessageDecodeError:
                pass


@given(st.integers(0, len(MESSAGES) - 1), st.lists(st.tuples(st.integers(0, 4096), st.integers(0, 255)), max_size=8),
       st.integers(0, 4096))  # fmt: skip
def test_mutated_packets_decode_to_valid_messages_or_are_refused(which: int, flips: list, cut: int) -> None:
    data = bytearray(_packet(MESSAGES[which:] + MESSAGES[:which]))
    for pos, value in flips:
        data[pos % len(data)] = value
    data = data[: max(1, len(data) - cut % 8)] if cut % 3 == 0 else data
    try:
        msgs = decode_packet(bytes(data))
    except MessageDecodeError:
        return
    # Whatever survives is a valid message that re-encodes to something that decodes the same...
    assert decode_packet(_packet(msgs)) == msgs
    # ...and a member handles it without raising, whatever it claims.
    node = GossipNode("node-a", A, now=0.0, rng=random.Random(which))
    node.receive(0.0, [Alive(1, "node-c", B, {}, 1)])
    node.receive(0.1, msgs)
    node.tick(node.next_deadline())
    assert node.local_member.state is MemberState.ALIVE
