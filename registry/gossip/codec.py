"""The packet codec seam: what the driver does to every packet and stream frame between the core's
encoding and the socket.

``PlainCodec`` passes bytes through.  Gossip encryption (Serf's ``encrypt`` key, AES-GCM with a keyring)
is a ``PacketCodec`` too: ``seal`` adds its overhead (reported by ``overhead`` so the core keeps packets
under the MTU), ``open`` raises ``PacketRejected`` for anything it cannot authenticate, and the driver
drops and counts such packets like any other garbage.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["PacketCodec", "PacketRejected", "PlainCodec"]


class PacketRejected(ValueError):
    """A packet or frame the codec will not accept (unauthenticated, wrongly keyed, malformed)."""


class PacketCodec(Protocol):
    @property
    def overhead(self) -> int:
        """Bytes ``seal`` adds to a packet."""
        ...

    def seal(self, data: bytes) -> bytes: ...

    def open(self, data: bytes) -> bytes:
        """The plaintext of ``data``, or PacketRejected."""
        ...


class PlainCodec:
    """No encryption: the bytes as they are."""

    @property
    def overhead(self) -> int:
        return 0

    def seal(self, data: bytes) -> bytes:
        return data

    def open(self, data: bytes) -> bytes:
        return data
