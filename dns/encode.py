"""Encode resource records to wire chunks that can be reordered freely.

A cached answer is kept as one chunk per record so that every query can shuffle, cap and trim them by
joining bytes, without re-encoding. That only works if no chunk holds a compression pointer into another
chunk: here names compress against the question section only (it sits at the same offset in every
response built from the entry, because the entry is keyed by the question bytes), and names inside a
chunk are never offered as compression targets. dnslib does the record packing.
"""

from __future__ import annotations

import ipaddress

from dnslib import AAAA, CNAME, NS, PTR, SOA, SRV, TXT, A, DNSBuffer, DNSLabel
from dnslib import RR as DnsRR

from dns.records import RR, Name
from dns.wire import C_IN, T_A, T_AAAA, T_CNAME, T_NS, T_PTR, T_SOA, T_SRV, T_TXT

__all__ = ["Encoder"]


class _QuestionNames(dict[tuple[bytes, ...], int]):
    """dnslib's compression table, frozen: lookups hit the question's suffixes, new names are not learned."""

    def __setitem__(self, key: tuple[bytes, ...], value: int) -> None:
        return None


class Encoder:
    def __init__(self, question: bytes, qlabels: tuple[bytes, ...], compress: bool = True) -> None:
        self._prefix = bytes(12) + question
        self._qlabels = qlabels
        names = _QuestionNames()
        if compress:
            offset = 12
            for i, label in enumerate(qlabels):
                dict.__setitem__(names, tuple(qlabels[i:]), offset)
                offset += len(label) + 1
        self._names = names

    def encode(self, rr: RR) -> bytes:
        buf = DNSBuffer(self._prefix)
        buf.offset = len(self._prefix)
        buf.names = self._names
        owner = DNSLabel(self._qlabels if rr.owner is None else rr.owner)
        DnsRR(rname=owner, rtype=rr.rtype, rclass=C_IN, ttl=rr.ttl, rdata=_rdata(rr)).pack(buf)
        return bytes(buf.data[len(self._prefix) :])


def _label(name: Name) -> DNSLabel:
    return DNSLabel(name)


def _rdata(rr: RR) -> object:
    t, d = rr.rtype, rr.data
    if t == T_A:
        return A(str(ipaddress.IPv4Address(d)))
    if t == T_AAAA:
        return AAAA(str(ipaddress.IPv6Address(d)))
    if t == T_CNAME:
        return CNAME(_label(d))
    if t == T_NS:
        return NS(_label(d))
    if t == T_PTR:
        return PTR(_label(d))
    if t == T_SRV:
        priority, weight, port, target = d
        return SRV(priority=priority, weight=weight, port=port, target=_label(target))
    if t == T_TXT:
        return TXT(list(d))
    if t == T_SOA:
        mname, rname, serial, refresh, retry, expire, minimum = d
        return SOA(mname=_label(mname), rname=_label(rname), times=(serial, refresh, retry, expire, minimum))
    raise ValueError(f"cannot encode record type {t}")
