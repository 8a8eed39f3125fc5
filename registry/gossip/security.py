"""Gossip encryption: an AES-GCM ``PacketCodec`` over a ``Keyring``, as memberlist's security.go does it,
plus a guard against replays that memberlist lacks.

A sealed packet or stream frame is memberlist's encryption version 1: a version byte (1), a random 12-byte
nonce, then the AES-GCM ciphertext with its 16-byte tag, under the keyring's primary key (16, 24 or 32
bytes: AES-128, -192 or -256).  On receipt every installed key is tried in turn, primary first, as
memberlist's decryptPayload does; so a rotation (install everywhere, use everywhere, remove everywhere)
never drops a packet.

**Replays.** memberlist authenticates packets but accepts a recorded one again: an eavesdropper could
replay a ``suspect`` or ``dead`` message, or a push-pull carrying a stale member list, at will.  Here the
plaintext under the encryption starts with the sender's wall-clock time (8 bytes, milliseconds since the
epoch), authenticated with the rest; a receiver refuses a packet stamped more than ``replay_window``
(5 minutes, Kerberos' default allowance for clock skew) from its own clock, and within the window it
remembers every nonce it accepted until the window has passed over it and refuses a nonce seen twice.
Why both, rather than one: a replay cache alone must remember nonces forever (or let an old packet in
once it forgets), and a time window alone lets a packet be replayed as often as wished inside the
window; together the cache only needs the nonces of the last window (bounded by ``replay_cache_max``,
a few MB at the busiest member's rate), and nothing older than the window gets in.  The cost is a
requirement memberlist does not make: members' clocks must agree within the window (any NTP-synced
fleet does; a member whose clock is off by more sees its packets refused and counted as ``stale``).

**Rolling upgrades.** ``verify_incoming`` false accepts a packet no key opens as plaintext (memberlist's
GossipVerifyIncoming); ``verify_outgoing`` false sends plaintext (GossipVerifyOutgoing).  The steps to
turn encryption on in a running pool are in docs/operations.md.

What is refused is counted in ``stats`` (``truncated``, ``bad_version``, ``undecryptable``, ``stale``,
``replayed``, ``plaintext_refused``) and raised as ``PacketRejected``, which the driver drops and counts;
never anything else.  The clock is an argument, so tests drive it.
"""

from __future__ import annotations

import os
import struct
import time
from collections import Counter, OrderedDict
from collections.abc import Callable

from cryptography.exceptions import InvalidTag

from registry.gossip.codec import PacketRejected
from registry.gossip.keyring import Keyring
from registry.gossip.messages import WIRE_VERSION, MessageDecodeError, decode_packet, decode_stream

__all__ = ["ENCRYPTION_VERSION", "OVERHEAD", "EncryptedCodec"]

ENCRYPTION_VERSION = 1  # memberlist's version 1: AES-GCM, no padding
NONCE_SIZE = 12
TAG_SIZE = 16
_STAMP = struct.Struct(">Q")
OVERHEAD = 1 + NONCE_SIZE + TAG_SIZE + _STAMP.size  # 37 bytes: version, nonce, tag, timestamp
REPLAY_WINDOW = 300.0
REPLAY_CACHE_MAX = 200_000


class EncryptedCodec:
    """Seals with the keyring's primary key and opens with any of its keys, refusing replays.

    ``clock`` returns wall-clock seconds (``time.time``); ``nonce`` returns 12 random bytes
    (``os.urandom``): both are arguments so a test can fix them."""

    def __init__(
        self,
        keyring: Keyring,
        *,
        verify_incoming: bool = True,
        verify_outgoing: bool = True,
        clock: Callable[[], float] = time.time,
        nonce: Callable[[int], bytes] = os.urandom,
        replay_window: float = REPLAY_WINDOW,
        replay_cache_max: int = REPLAY_CACHE_MAX,
    ) -> None:
        self.keyring = keyring
        self.verify_incoming = verify_incoming
        self.verify_outgoing = verify_outgoing
        self._clock = clock
        self._nonce = nonce
        self.replay_window = replay_window
        self._window_ms = int(replay_window * 1000)
        self._cache_max = replay_cache_max
        # nonce -> the time (ms) after which the window refuses its packet anyway, in insertion order;
        # senders' clocks move forward, so the oldest entries are (nearly) the first to expire.
        self._seen: OrderedDict[bytes, int] = OrderedDict()
        self.stats: Counter[str] = Counter()

    @property
    def overhead(self) -> int:
        return OVERHEAD

    def seal(self, data: bytes) -> bytes:
        if not self.verify_outgoing:
            return data
        nonce = self._nonce(NONCE_SIZE)
        stamp = _STAMP.pack(int(self._clock() * 1000))
        return bytes((ENCRYPTION_VERSION,)) + nonce + self.keyring.ciphers[0].encrypt(nonce, stamp + data, None)

    def open(self, data: bytes) -> bytes:
        opened = self._decrypt(data)
        if isinstance(opened, str):
            if self.verify_incoming:
                self.stats["plaintext_refused" if _looks_plain(data) else opened] += 1
                raise PacketRejected("no installed key could decrypt the message")
            self.stats["plaintext_accepted"] += 1
            return data
        nonce, stamp, body = opened
        now_ms = int(self._clock() * 1000)
        if abs(now_ms - stamp) > self._window_ms:
            self.stats["stale"] += 1
            raise PacketRejected("timestamp outside the replay window")
        self._expire(now_ms)
        if nonce in self._seen:
            self.stats["replayed"] += 1
            raise PacketRejected("replayed")
        if len(self._seen) >= self._cache_max:
            self._seen.popitem(last=False)
            self.stats["replay_cache_evicted"] += 1
        self._seen[nonce] = stamp + self._window_ms
        return body

    def _decrypt(self, data: bytes) -> tuple[bytes, int, bytes] | str:
        """(nonce, timestamp ms, payload) if some installed key opens ``data``, else why not."""
        if len(data) < OVERHEAD:
            return "truncated"
        if data[0] != ENCRYPTION_VERSION:
            return "bad_version"
        nonce = data[1 : 1 + NONCE_SIZE]
        sealed = data[1 + NONCE_SIZE :]
        for cipher in self.keyring.ciphers:
            try:
                plain = cipher.decrypt(nonce, sealed, None)
            except InvalidTag:
                continue
            (stamp,) = _STAMP.unpack_from(plain)  # a tag that verifies covers at least the 8-byte stamp
            return nonce, stamp, plain[_STAMP.size :]
        return "undecryptable"

    def _expire(self, now_ms: int) -> None:
        seen = self._seen
        while seen:
            nonce, until = next(iter(seen.items()))
            if until >= now_ms:
                return
            del seen[nonce]


def _looks_plain(data: bytes) -> bool:
    """A packet or stream frame of the unencrypted wire format: from a member that does not encrypt (yet),
    which a rolling upgrade sees and an attacker may send (called only for a refused packet, to count it).

    Only what the wire decoder accepts as gossip (a packet of valid messages, or one valid stream message)
    counts. An encrypted packet under a key we lack starts with the same version byte followed by random
    bytes, and random bytes parse as *some* msgpack value too often to go by the shape: a 53-byte packet
    parsed as exactly one array starting with an integer (a run of fixints and short strings that happens to
    add up to the length) for 21 of 300,000 random nonces, one in 14,000, and was counted as plaintext. Random bytes that also pass every field
    check of a gossip message are far beyond reach."""
    if len(data) < 2 or data[0] != WIRE_VERSION:
        return False
    for decode in (decode_packet, decode_stream):
        try:
            decode(data)
        except MessageDecodeError:
            continue
        return True
    return False
