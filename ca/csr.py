"""CSR validation for the Connect CA (server side) and CSR creation (agent side).

A leaf certificate is an identity document, so the CSR is treated as hostile input. ``validate_csr``
accepts a request only if it is a single well-formed PEM CSR whose signature verifies, whose key is EC
P-256/P-384 or RSA of at least 2048 bits, and whose Subject Alternative Name holds exactly one URI:
the canonical SPIFFE text of the identity the caller has already authorised (CVE-2022-40716: a CSR
with extra URI SANs once got certificates for services the token could not write). Error messages
follow Consul's (agent/consul/leader_connect_ca.go, AuthorizeAndSignCertificate / SignCertificate)
where Consul has one.

Pure module: no IO, no clock.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ca import der
from ca.certs import PrivateKey, der_to_pem, general_names, signature_algorithm
from ca.spiffe import (
    AgentIdentity,
    Identity,
    InvalidSpiffeURI,
    ServerIdentity,
    ServiceIdentity,
    SigningIdentity,
    parse_uri,
)

__all__ = ["CSRError", "CheckedCSR", "MAX_CSR_PEM_BYTES", "MAX_RSA_BITS", "check_csr", "make_csr", "validate_csr"]

# A P-256 CSR is ~500 bytes and an RSA-4096 one ~1.7 KiB; anything this large is not a Connect CSR
# and is refused before any parsing work is spent on it.
MAX_CSR_PEM_BYTES = 16 * 1024
# RSA keys above this make signature checks expensive for no security gain (a cheap DoS lever).
MAX_RSA_BITS = 8192
_ACCEPTED_CURVES = {"secp256r1", "secp384r1"}

_VERSION_1 = der.integer(0)
_EMPTY_NAME = der.sequence()
_OID_SAN = der.oid("2.5.29.17")
_OID_EXTENSION_REQUEST = der.oid("1.2.840.113549.1.9.14")  # PKCS #9 extensionRequest

_PEM_BLOCK_RE = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")


class CSRError(ValueError):
    """The CSR cannot be signed. ``str(err)`` is the reason, worded for the API caller."""


def _load(pem: str | bytes) -> x509.CertificateSigningRequest:
    if isinstance(pem, str):
        try:
            raw = pem.encode("ascii")
        except UnicodeEncodeError:
            raise CSRError("Failed to parse CSR: PEM must be ASCII") from None
    elif isinstance(pem, bytes):
        raw = pem
    else:
        raise CSRError(f"Failed to parse CSR: expected PEM text, got {type(pem).__name__}")
    if len(raw) > MAX_CSR_PEM_BYTES:
        raise CSRError(f"Failed to parse CSR: larger than {MAX_CSR_PEM_BYTES} bytes")
    if raw.count(b"-----BEGIN ") == 1 and b"-----BEGIN CERTIFICATE REQUEST-----" in raw:
        blocks = [b"CERTIFICATE REQUEST"]  # what the search below finds, without searching
    else:
        blocks = _PEM_BLOCK_RE.findall(raw)
    if not blocks:
        raise CSRError("Failed to parse CSR: no PEM-encoded data found")
    if blocks != [b"CERTIFICATE REQUEST"]:
        # A second block (a smuggled certificate or key, or a second CSR) is never expected.
        kinds = ", ".join(b.decode() for b in blocks)
        raise CSRError(f"Failed to parse CSR: want exactly one CERTIFICATE REQUEST block, found: {kinds}")
    try:
        return x509.load_pem_x509_csr(raw)
    except ValueError as err:
        raise CSRError(f"Failed to parse CSR: {err}") from None


def _check_key(csr: x509.CertificateSigningRequest) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    try:
        key = csr.public_key()
    except (ValueError, TypeError) as err:
        raise CSRError(f"CSR public key is not supported: {err}") from None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _ACCEPTED_CURVES:
            raise CSRError(f"CSR key type is not supported: EC curve {key.curve.name} (want P-256 or P-384)")
    elif isinstance(key, rsa.RSAPublicKey):
        if not 2048 <= key.key_size <= MAX_RSA_BITS:
            raise CSRError(
                f"CSR key type is not supported: RSA {key.key_size} bits (want 2048 to {MAX_RSA_BITS})"
            )
    else:
        raise CSRError(f"CSR key type is not supported: {type(key).__name__} (want EC or RSA)")
    return key


def _extensions(csr: x509.CertificateSigningRequest) -> x509.Extensions:
    try:
        return csr.extensions
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as err:
        # Duplicate or undecodable extensions: two SAN extensions is a classic parser-differential trick.
        raise CSRError(f"Failed to parse CSR extensions: {err}") from None


@dataclass(frozen=True, slots=True)
class CheckedCSR:
    """A CSR that may be signed, with what the signer needs from it."""

    csr: x509.CertificateSigningRequest
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey
    uri: str
    dns_sans: tuple[str, ...]
    ip_sans: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]

    @property
    def is_rsa(self) -> bool:
        return isinstance(self.public_key, rsa.RSAPublicKey)

    @property
    def spki(self) -> bytes:
        """The key's DER SubjectPublicKeyInfo, as the certificate will carry it."""
        return self.public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def validate_csr(pem: str | bytes, expected: ServiceIdentity | AgentIdentity, trust_domain: str,
                 **allowed: Collection[Any]) -> x509.CertificateSigningRequest:  # fmt: skip
    """``check_csr`` (same arguments), returning the parsed CSR."""
    return check_csr(pem, expected, trust_domain, **allowed).csr


def check_csr(
    pem: str | bytes,
    expected: ServiceIdentity | AgentIdentity,
    trust_domain: str,
    *,
    allowed_dns_sans: Collection[str] = (),
    allowed_ip_sans: Collection[ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
) -> CheckedCSR:
    """Return the checked CSR if it may be signed for ``expected``; raise CSRError otherwise.

    ``expected`` is the identity the caller has already authorised (the service the ACL token may
    write, the agent's node); ``trust_domain`` is this cluster's. The CSR's single URI SAN must be
    exactly ``expected.uri()``. DNS and IP SANs are refused unless listed in ``allowed_dns_sans`` /
    ``allowed_ip_sans`` (identity in Connect is the URI alone, but a DNS SAN such as
    ``server.dc1.consul`` would let a client pass server hostname verification). The CSR must not ask
    for a CA certificate. Its subject and other requested extensions are ignored because the signer
    never copies them.
    """
    if not isinstance(expected, ServiceIdentity | AgentIdentity):
        raise TypeError("expected identity must be a ServiceIdentity or AgentIdentity")
    if expected.trust_domain != trust_domain:
        raise ValueError(
            f"expected identity is in trust domain {expected.trust_domain!r}, not {trust_domain!r}"
        )

    csr = _load(pem)
    key = _check_key(csr)
    try:
        signature_ok = csr.is_signature_valid
    except (ValueError, TypeError):
        signature_ok = False
    if not signature_ok:
        raise CSRError("CSR signature is invalid")

    # One pass over the extensions and the names; the checks then run in a fixed order so that a
    # CSR with several faults always gets the same message.
    san: x509.SubjectAlternativeName | None = None
    for ext in _extensions(csr):
        value = ext.value
        if type(value) is x509.BasicConstraints and value.ca:
            raise CSRError("CSR must not request a CA certificate")
        if type(value) is x509.SubjectAlternativeName:
            san = value
    if san is None:
        raise CSRError("CSR SAN contains an invalid number of URIs: 0")
    uris: list[str] = []
    dns: list[str] = []
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    other: set[str] = set()
    email = False
    for n in san:
        kind = type(n)
        if kind is x509.UniformResourceIdentifier:
            uris.append(n.value)
        elif kind is x509.DNSName:
            dns.append(n.value)
        elif kind is x509.IPAddress:
            ips.append(n.value)
        elif kind is x509.RFC822Name:
            email = True
        else:
            other.add(kind.__name__)
    if len(uris) != 1:
        raise CSRError(f"CSR SAN contains an invalid number of URIs: {len(uris)}")
    if email:
        raise CSRError("CSR SAN does not allow specifying email addresses")
    if other:
        raise CSRError(f"CSR SAN contains unsupported name types: {', '.join(sorted(other))}")
    for d in dns:
        if d not in allowed_dns_sans:
            raise CSRError(f"CSR SAN requests a DNS name that is not allowed: {d!r}")
    for ip in ips:
        if ip not in allowed_ip_sans:
            raise CSRError(f"CSR SAN requests an IP address that is not allowed: {ip}")

    uri = uris[0]
    if uri != expected.uri():
        # Not the one identity allowed: parse it only to say what is wrong with it.
        try:
            identity = parse_uri(uri)
        except InvalidSpiffeURI as err:
            raise CSRError(f"CSR SAN URI is not a valid SPIFFE ID: {err}") from None
        _check_identity(identity, expected, trust_domain)
        raise CSRError(f"SPIFFE ID in CSR does not match the requested identity: {uri}, want {expected.uri()}")
    return CheckedCSR(csr, key, uri, tuple(dns), tuple(ips))


def _check_identity(identity: Identity, expected: ServiceIdentity | AgentIdentity, td: str) -> None:
    if isinstance(identity, SigningIdentity | ServerIdentity):
        raise CSRError("SPIFFE ID in CSR must be a service or agent ID")
    if identity.trust_domain != td:
        raise CSRError(
            f"SPIFFE ID in CSR from a different trust domain: {identity.trust_domain}, we are {td}"
        )
    if type(identity) is not type(expected):
        kind = "a service" if isinstance(expected, ServiceIdentity) else "an agent"
        raise CSRError(f"SPIFFE ID in CSR must be {kind} ID")
    if identity.datacenter != expected.datacenter:
        raise CSRError(
            f"SPIFFE ID in CSR from a different datacenter: {identity.datacenter}, "
            f"we are {expected.datacenter}"
        )
    if identity != expected:
        raise CSRError(
            f"SPIFFE ID in CSR does not match the requested identity: {identity.uri()}, "
            f"want {expected.uri()}"
        )


def make_csr(
    key: PrivateKey,
    identity_uri: str | ServiceIdentity | AgentIdentity,
    dns_sans: Iterable[str] = (),
    ip_sans: Iterable[ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
) -> str:
    """A PEM CSR for ``identity_uri`` signed by ``key``, as a Consul agent makes it: empty subject,
    a SAN with the one SPIFFE URI (critical, since the subject is empty) and any DNS / IP names.
    The URI must be the canonical text of a service or agent identity."""
    if isinstance(identity_uri, str):
        identity = parse_uri(identity_uri)
    else:
        identity = identity_uri
    if not isinstance(identity, ServiceIdentity | AgentIdentity):
        raise ValueError("a leaf CSR must name a service or agent identity")
    # Written from a template (as cryptography's CSR builder would write it, byte for byte: see
    # tests/ca/test_ca_der.py): the builder's Python checks were a fifth of an agent's cost per leaf.
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    san = der.extension(_OID_SAN, True, general_names(identity.uri(), dns_sans, ip_sans))
    info = der.sequence(_VERSION_1, _EMPTY_NAME, spki, der.context(0, der.sequence(_OID_EXTENSION_REQUEST, der.set_of(der.sequence(san)))))
    alg, sign = signature_algorithm(key)
    return der_to_pem(der.sequence(info, alg, der.bit_string(sign(info))), "CERTIFICATE REQUEST")
