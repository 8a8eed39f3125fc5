"""Who is on the other end of a connection, and where to send one: pure decisions, no IO.

Identity on the mesh is the certificate's one SPIFFE URI SAN, parsed strictly (``ca.spiffe.parse_uri``),
never a host name or a CN (CVE-2021-32574: a proxy that checks only the chain lets any service in the
mesh impersonate any other).
"""

from __future__ import annotations

import calendar
import functools
import random
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from ca.spiffe import InvalidSpiffeURI, ServiceIdentity, parse_uri


class IdentityError(Exception):
    """The peer's certificate does not name the identity this connection needs."""


def uri_sans(peercert: Mapping[str, Any] | None) -> list[str]:
    """The URI SANs of a certificate as ``ssl`` decodes it (``getpeercert()``)."""
    if not peercert:
        return []
    return [str(v) for k, v in peercert.get("subjectAltName", ()) if k == "URI"]


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@functools.lru_cache(maxsize=1024)
def _cert_time(text: str) -> float:
    """``ssl``'s rendering of an ASN.1 time, ``"Dec  7 12:00:00 2026 GMT"``, as epoch seconds (what
    ``ssl.cert_time_to_seconds`` answers; parsed here because this core imports no ``ssl``)."""
    month, day, hms, year, zone = text.split()
    if zone != "GMT":
        raise ValueError(f"time data {text!r} is not GMT")
    h, m, sec = (int(x) for x in hms.split(":"))
    return float(calendar.timegm((int(year), _MONTHS.index(month) + 1, int(day), h, m, sec, 0, 0, 0)))


def not_after(peercert: Mapping[str, Any] | None) -> float:
    """A certificate's NotAfter as ``ssl`` decodes it, in seconds since the epoch (0 when it has none,
    so that a certificate without one counts as expired). Parsed once per distinct value."""
    text = (peercert or {}).get("notAfter")
    if not isinstance(text, str):
        return 0.0
    try:
        return _cert_time(text)
    except ValueError:
        return 0.0


def check_not_expired(peercert: Mapping[str, Any] | None, now: float) -> None:
    """The peer's certificate must still be valid at ``now`` (epoch seconds).

    A full handshake has OpenSSL check this already; a resumed TLS session does not look at the
    certificate again (it carries the one of the handshake that made the session, and a session
    lives up to 2 hours, longer than a leaf may have left), so every connection checks it here."""
    expires = not_after(peercert)
    if now > expires:
        if not expires:
            raise IdentityError("peer certificate has no NotAfter")
        raise IdentityError(f"peer certificate expired at {datetime.fromtimestamp(expires, UTC):%Y-%m-%dT%H:%M:%SZ}")


def client_identity(uris: Sequence[str], trust_domain: str) -> ServiceIdentity:
    """The service an inbound client speaks for: exactly one URI SAN, the canonical SPIFFE ID of a
    service in our trust domain. Agent, server and signing identities are refused."""
    if len(uris) != 1:
        raise IdentityError(f"client certificate has {len(uris)} URI SANs, want exactly one")
    try:
        ident = parse_uri(uris[0])
    except InvalidSpiffeURI as exc:
        raise IdentityError(f"client certificate URI is not a Connect identity: {exc}") from None
    if not isinstance(ident, ServiceIdentity):
        raise IdentityError(f"client certificate URI {uris[0]} is not a service identity")
    if ident.trust_domain != trust_domain:
        raise IdentityError(f"client certificate is from trust domain {ident.trust_domain!r}, "
                            f"not this cluster's {trust_domain!r}")  # fmt: skip
    return ident


def service_uri(trust_domain: str, datacenter: str, service: str) -> str:
    return ServiceIdentity(trust_domain, "default", datacenter, service).uri()


def check_server(uris: Sequence[str], expected: str) -> None:
    """An upstream's certificate must carry exactly one URI SAN, equal to the destination's SPIFFE ID."""
    if len(uris) != 1:
        raise IdentityError(f"server certificate has {len(uris)} URI SANs, want exactly one ({expected})")
    if uris[0] != expected:
        raise IdentityError(f"server presented {uris[0]}, want {expected}")


def serial_colon(hex_serial: str) -> str:
    """``ssl``'s serial (upper-case hex) in Consul's form: lower-case bytes joined by colons."""
    h = hex_serial.lower()
    if len(h) % 2:
        h = "0" + h
    return ":".join(h[i : i + 2] for i in range(0, len(h), 2))


def instances(health: Any) -> list[tuple[str, int]]:
    """Addresses of the proxies in a /v1/health/connect/<service> answer: the service's address and
    port, falling back to the node's address. Malformed entries are skipped, duplicates dropped."""
    out: list[tuple[str, int]] = []
    if not isinstance(health, list):
        return out
    for entry in health:
        if not isinstance(entry, Mapping):
            continue
        svc = entry.get("Service") or {}
        node = entry.get("Node") or {}
        if not isinstance(svc, Mapping) or not isinstance(node, Mapping):
            continue
        host = svc.get("Address") or node.get("Address")
        port = svc.get("Port")
        if not host or not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            continue
        addr = (str(host), port)
        if addr not in out:
            out.append(addr)
    return out


def choose(candidates: Iterable[tuple[str, int]], tried: set[tuple[str, int]], rng: random.Random) -> tuple[str, int] | None:
    """A random instance not tried yet for this connection, or None when all have been."""
    left = [c for c in candidates if c not in tried]
    return rng.choice(left) if left else None


def backoff(attempt: int, first: float, cap: float) -> float:
    """Delay before retry number ``attempt`` (0-based): doubling from ``first`` up to ``cap``."""
    return min(cap, first * (2 ** min(attempt, 30)))
