"""The few DER encodings the issuing fast path writes (ca.certs.LeafTemplate, ca.csr.make_csr).

Encoding only: nothing here parses input from the network (CSRs are parsed by ``cryptography``).
Every function returns one complete TLV. The templates built from these are checked byte for byte
against ``cryptography``'s builders in tests/ca/test_ca_der.py.
"""

from __future__ import annotations

from datetime import datetime

__all__ = [
    "BOOLEAN_TRUE",
    "bit_string",
    "context",
    "extension",
    "integer",
    "octet_string",
    "oid",
    "sequence",
    "set_of",
    "time",
    "tlv",
]


def tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(size))) + size + content


def sequence(*parts: bytes) -> bytes:
    return tlv(0x30, b"".join(parts))


def set_of(*parts: bytes) -> bytes:
    """A SET OF with its elements in the order given (DER wants them sorted: callers pass one)."""
    return tlv(0x31, b"".join(parts))


def context(number: int, content: bytes, *, constructed: bool = True) -> bytes:
    """A context-specific tag [number]: EXPLICIT (constructed) or IMPLICIT on a primitive."""
    return tlv((0xA0 if constructed else 0x80) | number, content)


def integer(value: int) -> bytes:
    if value < 0:
        raise ValueError("only non-negative integers are encoded here")
    # Minimal two's complement: one extra byte when the top bit would read as a sign.
    return tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return tlv(0x06, bytes(body))


def octet_string(data: bytes) -> bytes:
    return tlv(0x04, data)


def bit_string(data: bytes, unused_bits: int = 0) -> bytes:
    return tlv(0x03, bytes((unused_bits,)) + data)


BOOLEAN_TRUE = b"\x01\x01\xff"


def extension(ext_oid: bytes, critical: bool, value: bytes) -> bytes:
    """An X.509 Extension; ``critical`` FALSE is the DEFAULT and so left out, as DER requires."""
    return sequence(ext_oid, BOOLEAN_TRUE if critical else b"", octet_string(value))


def time(t: datetime) -> bytes:
    """RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050; whole seconds, always Z.
    ``t`` must be UTC."""
    rest = f"{t.month:02d}{t.day:02d}{t.hour:02d}{t.minute:02d}{t.second:02d}Z"
    if 1950 <= t.year < 2050:
        return tlv(0x17, f"{t.year % 100:02d}{rest}".encode("ascii"))
    return tlv(0x18, f"{t.year:04d}{rest}".encode("ascii"))
