"""SPIFFE identities as Consul's Connect CA builds them, with a strict parser.

Identity shapes (Consul agent/connect/uri_*.go):

- signing / root:  ``spiffe://<trust-domain>``  (trust domain = ``<cluster-id>.consul``)
- service:         ``spiffe://<td>/ns/<ns>/dc/<dc>/svc/<service>``
                   (prefixed by ``/ap/<partition>`` only when the partition is not ``default``)
- client agent:    ``spiffe://<td>/agent/client/dc/<dc>/id/<node>``  (same partition rule)
- server:          ``spiffe://<td>/agent/server/dc/<dc>``

Consul's own parser is lenient: it percent-decodes path segments and accepts any host. That leniency
is how a certificate can name one thing and be read as another, so this parser accepts exactly the
canonical text of one identity and nothing else: for every string ``s`` that parses,
``parse_uri(s).uri() == s``. Two different strings therefore never parse to the same identity, and a
parsed identity never holds a value the string did not literally spell.

Pure module: no IO, no clock.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

__all__ = [
    "AgentIdentity",
    "Identity",
    "InvalidSpiffeURI",
    "MAX_NAME_LENGTH",
    "MAX_URI_LENGTH",
    "ServerIdentity",
    "ServiceIdentity",
    "SigningIdentity",
    "is_valid_name",
    "is_valid_trust_domain",
    "parse_uri",
    "trust_domain_from_cluster_id",
]

SCHEME_PREFIX = "spiffe://"
DEFAULT_PARTITION = "default"
# The SPIFFE ID specification caps an ID at 2048 bytes; anything longer is not an ID.
MAX_URI_LENGTH = 2048
# Consul has no hard cap on service names; 256 leaves room for every real name while keeping
# attacker-sized segments out of certificates and logs.
MAX_NAME_LENGTH = 256

# A path segment value (namespace, datacenter, service, node, partition). It must start with an
# alphanumeric or underscore so "." and ".." (dot-segments that URL normalisers collapse) can never be
# a value, and it admits no "%" (no percent-encoding: one spelling per value), no "/", no "*".
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
# One DNS label of a trust domain: lowercase only. An uppercase host would be "the same" trust domain
# to a case-insensitive comparer and a different one to a byte comparer; refusing it removes the doubt.
_LABEL_RE = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


class InvalidSpiffeURI(ValueError):
    """Raised for any string that is not the canonical text of a Consul SPIFFE identity, and for
    identity values that could not be written as one."""


def is_valid_name(value: object) -> bool:
    """True if ``value`` may be a namespace, datacenter, service, node or partition segment."""
    return isinstance(value, str) and (value in _COMMON_NAMES or _valid_name(value))


# Names every identity repeats (namespace, partition, the datacenter): known good without a regex.
_COMMON_NAMES = frozenset({"default"})


def _valid_name(value: str) -> bool:
    return 0 < len(value) <= MAX_NAME_LENGTH and _NAME_RE.fullmatch(value) is not None


def is_valid_trust_domain(value: object) -> bool:
    """True if ``value`` is a lowercase DNS name of at least two labels (``<cluster-id>.consul``)."""
    return isinstance(value, str) and _valid_trust_domain(value)


@functools.lru_cache(maxsize=64)  # a cluster has one trust domain; every identity checks it
def _valid_trust_domain(value: str) -> bool:
    if not 0 < len(value) <= 253:
        return False
    labels = value.split(".")
    return len(labels) >= 2 and all(_LABEL_RE.fullmatch(label) for label in labels)


def trust_domain_from_cluster_id(cluster_id: str) -> str:
    """Consul's trust domain for a cluster: ``<cluster-id>.consul``, always the ``.consul`` TLD
    whatever the DNS domain is. The cluster ID must already be lowercase (Consul generates a
    lowercase UUID); an uppercase one is refused rather than silently folded."""
    td = f"{cluster_id}.consul"
    if not isinstance(cluster_id, str) or "." in cluster_id or not is_valid_trust_domain(td):
        raise InvalidSpiffeURI(f"invalid cluster ID {cluster_id!r}: want a lowercase UUID-like label")
    return td


def _check_td(td: str) -> None:
    if not is_valid_trust_domain(td):
        raise InvalidSpiffeURI(f"invalid trust domain {td!r}")


def _check_name(kind: str, value: str) -> None:
    if not is_valid_name(value):
        raise InvalidSpiffeURI(f"invalid {kind} {value!r}")


@dataclass(frozen=True, slots=True)
class SigningIdentity:
    """The CA's own identity, ``spiffe://<trust-domain>``; root and intermediate certs carry it."""

    trust_domain: str

    def __post_init__(self) -> None:
        _check_td(self.trust_domain)

    @property
    def cluster_id(self) -> str:
        """The part of the trust domain before the first dot, as Consul splits it."""
        return self.trust_domain.split(".", 1)[0]

    @property
    def domain(self) -> str:
        return self.trust_domain.split(".", 1)[1]

    def uri(self) -> str:
        return SCHEME_PREFIX + self.trust_domain

    def can_sign(self, identity: Identity) -> bool:
        """A CA may only sign identities inside its own trust domain."""
        return identity.trust_domain == self.trust_domain


@dataclass(frozen=True, slots=True)
class ServiceIdentity:
    """A service (or its sidecar proxy, which presents the service's identity)."""

    trust_domain: str
    namespace: str
    datacenter: str
    service: str
    partition: str = DEFAULT_PARTITION

    def __post_init__(self) -> None:
        _check_td(self.trust_domain)
        _check_name("namespace", self.namespace)
        _check_name("datacenter", self.datacenter)
        _check_name("service", self.service)
        _check_name("partition", self.partition)

    def uri(self) -> str:
        prefix = "" if self.partition == DEFAULT_PARTITION else f"/ap/{self.partition}"
        return (
            f"{SCHEME_PREFIX}{self.trust_domain}{prefix}"
            f"/ns/{self.namespace}/dc/{self.datacenter}/svc/{self.service}"
        )


@dataclass(frozen=True, slots=True)
class AgentIdentity:
    """A client agent (auto-encrypt / auto-config TLS). ``node`` is what Consul calls the Agent."""

    trust_domain: str
    datacenter: str
    node: str
    partition: str = DEFAULT_PARTITION

    def __post_init__(self) -> None:
        _check_td(self.trust_domain)
        _check_name("datacenter", self.datacenter)
        _check_name("node", self.node)
        _check_name("partition", self.partition)

    def uri(self) -> str:
        prefix = "" if self.partition == DEFAULT_PARTITION else f"/ap/{self.partition}"
        return f"{SCHEME_PREFIX}{self.trust_domain}{prefix}/agent/client/dc/{self.datacenter}/id/{self.node}"


@dataclass(frozen=True, slots=True)
class ServerIdentity:
    """A Consul server. Kept distinct from AgentIdentity so callers authorise by role
    (CVE-2021-37219: "signed by our CA" must never be read as "is a server")."""

    trust_domain: str
    datacenter: str

    def __post_init__(self) -> None:
        _check_td(self.trust_domain)
        _check_name("datacenter", self.datacenter)

    def uri(self) -> str:
        return f"{SCHEME_PREFIX}{self.trust_domain}/agent/server/dc/{self.datacenter}"


Identity = ServiceIdentity | AgentIdentity | ServerIdentity | SigningIdentity

# Characters that are never part of a canonical identity. Checked up front so that the error says what
# is wrong (a query, a fragment, userinfo, a port, an encoding) instead of a generic "bad format".
_FORBIDDEN = {
    "%": "percent-encoding is not allowed",
    "?": "a query is not allowed",
    "#": "a fragment is not allowed",
    "@": "userinfo is not allowed",
    ":": "a port is not allowed",
    "\\": "backslashes are not allowed",
}


def parse_uri(value: str) -> Identity:
    """Parse the canonical text of a Consul SPIFFE identity.

    Returns a ServiceIdentity, AgentIdentity, ServerIdentity or SigningIdentity; raises
    InvalidSpiffeURI for anything else: another scheme (or ``SPIFFE://``), userinfo, a port, a query
    or fragment, percent-encoding, an uppercase or malformed host, empty / dot / extra path segments,
    a trailing slash, ``/ap/default`` (the default partition is spelled by omission), characters
    outside ``[A-Za-z0-9._-]`` in values, or a string longer than 2048 bytes.
    """
    if not isinstance(value, str):
        raise InvalidSpiffeURI(f"SPIFFE ID must be a string, not {type(value).__name__}")
    if len(value) > MAX_URI_LENGTH:
        raise InvalidSpiffeURI(f"SPIFFE ID is longer than {MAX_URI_LENGTH} characters")
    # Printable ASCII leaves the space as the only whitespace character (a per-character scan here
    # was a measurable share of the leaf-signing path).
    if not value.isascii() or not value.isprintable() or " " in value:
        raise InvalidSpiffeURI("SPIFFE ID must be printable ASCII without whitespace")
    if not value.startswith(SCHEME_PREFIX):
        raise InvalidSpiffeURI("SPIFFE ID must have 'spiffe' scheme")
    rest = value[len(SCHEME_PREFIX) :]
    for ch, why in _FORBIDDEN.items():
        if ch in rest:
            raise InvalidSpiffeURI(f"SPIFFE ID is not in the expected format: {why}")

    host, sep, path = rest.partition("/")
    if not is_valid_trust_domain(host):
        raise InvalidSpiffeURI(f"SPIFFE ID has an invalid trust domain {host!r}")
    if not sep:
        return SigningIdentity(host)

    segments = path.split("/")
    # Catches "spiffe://td/", "//" and trailing slashes: every segment must be a non-empty value.
    if any(s == "" for s in segments):
        raise InvalidSpiffeURI("SPIFFE ID path has an empty segment")

    identity = _parse_path(host, segments)
    if identity is None:
        raise InvalidSpiffeURI(f"SPIFFE ID is not in the expected format: {value}")
    # Belt and braces: the whole point of this parser is one spelling per identity.
    if identity.uri() != value:
        raise InvalidSpiffeURI(f"SPIFFE ID is not in canonical form: {value}")
    return identity


def _parse_path(td: str, segs: list[str]) -> Identity | None:
    partition = DEFAULT_PARTITION
    if len(segs) >= 2 and segs[0] == "ap":
        if segs[1] == DEFAULT_PARTITION:
            # Consul writes the default partition by leaving "/ap/..." out; accepting the long form
            # would give one identity two spellings.
            raise InvalidSpiffeURI("SPIFFE ID must omit '/ap/default' (default partition)")
        partition = segs[1]
        segs = segs[2:]
        allowed_with_partition = True
    else:
        allowed_with_partition = False

    try:
        if len(segs) == 6 and segs[0] == "ns" and segs[2] == "dc" and segs[4] == "svc":
            return ServiceIdentity(td, segs[1], segs[3], segs[5], partition)
        if len(segs) == 6 and segs[:2] == ["agent", "client"] and segs[2] == "dc" and segs[4] == "id":
            return AgentIdentity(td, segs[3], segs[5], partition)
        if (
            not allowed_with_partition
            and len(segs) == 4
            and segs[:2] == ["agent", "server"]
            and segs[2] == "dc"
        ):
            return ServerIdentity(td, segs[3])
    except InvalidSpiffeURI as err:
        raise InvalidSpiffeURI(f"SPIFFE ID is not in the expected format: {err}") from None
    return None
