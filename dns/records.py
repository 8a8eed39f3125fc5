"""Resource records as plain values: what the resolver decides, before anything is encoded.

Names are tuples of label bytes (``None`` as an owner means "the question name exactly as the client sent
it"), so a node name with a dot or non-ASCII characters is never re-parsed on the way to the wire.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from dns.wire import MAX_NAME, T_A, T_AAAA, T_CNAME, T_NS, T_PTR, T_SOA, T_SRV, T_TXT

__all__ = ["Name", "RR", "name_from", "a_or_aaaa", "cname", "srv", "txt", "soa", "ns", "ptr", "txt_strings"]

Name = tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class RR:
    owner: Name | None  # None: the question name, echoed byte for byte
    rtype: int
    ttl: int
    data: Any  # per type: see the constructors below


def name_from(*parts: str) -> Name | None:
    """Join textual parts ("web", "node", "dc1", "consul.") into labels; None if it cannot be a DNS name
    (an empty label, a label over 63 bytes, or more than 255 bytes on the wire)."""
    labels: list[bytes] = []
    for part in parts:
        for label in part.strip(".").split("."):
            raw = label.encode("utf-8", "surrogateescape")
            if not raw or len(raw) > 63:
                return None
            labels.append(raw)
    if sum(len(x) + 1 for x in labels) + 1 > MAX_NAME:
        return None
    return tuple(labels)


def a_or_aaaa(owner: Name | None, ttl: int, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> RR:
    return RR(owner, T_A if ip.version == 4 else T_AAAA, ttl, ip.packed)


def cname(owner: Name | None, ttl: int, target: Name) -> RR:
    return RR(owner, T_CNAME, ttl, target)


def ns(owner: Name | None, ttl: int, target: Name) -> RR:
    return RR(owner, T_NS, ttl, target)


def ptr(owner: Name | None, ttl: int, target: Name) -> RR:
    return RR(owner, T_PTR, ttl, target)


def srv(owner: Name | None, ttl: int, priority: int, weight: int, port: int, target: Name) -> RR:
    return RR(owner, T_SRV, ttl, (priority, weight, port, target))


def txt(owner: Name | None, ttl: int, text: str) -> RR:
    return RR(owner, T_TXT, ttl, txt_strings(text))


def txt_strings(text: str) -> tuple[bytes, ...]:
    """A TXT record holds character-strings of at most 255 bytes: split longer text across several."""
    raw = text.encode("utf-8", "surrogateescape")
    if not raw:
        return (b"",)
    return tuple(raw[i : i + 255] for i in range(0, len(raw), 255))


def soa(owner: Name, ttl: int, mname: Name, rname: Name, serial: int, refresh: int, retry: int, expire: int,
        minimum: int) -> RR:  # fmt: skip
    return RR(owner, T_SOA, ttl, (mname, rname, serial, refresh, retry, expire, minimum))
