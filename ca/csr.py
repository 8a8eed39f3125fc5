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

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ca.certs import PrivateKey, signature_hash
from ca.spiffe import (
    AgentIdentity,
    Identity,
    InvalidSpiffeURI,
    ServerIdentity,
    ServiceIdentity,
    SigningIdentity,
    parse_uri,
)

__all__ = ["CSRError", "MAX_CSR_PEM_BYTES", "MAX_RSA_BITS", "make_csr", "validate_csr"]

# A P-256 CSR is ~500 bytes and an RSA-4096 one ~1.7 KiB; anything this large is not a Connect CSR
# and is refused before any parsing work is spent on it.
MAX_CSR_PEM_BYTES = 16 * 1024
# RSA keys above this make signature checks expensive for no security gain (a cheap DoS lever).
MAX_RSA_BITS = 8192
_ACCEPTED_CURVES = {"secp256r1", "secp384r1"}

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


def _check_key(csr: x509.CertificateSigningRequest) -> None:
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


def _extensions(csr: x509.CertificateSigningRequest) -> x509.Extensions:
    try:
        return csr.extensions
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as err:
        # Duplicate or undecodable extensions: two SAN extensions is a classic parser-differential trick.
        raise CSRError(f"Failed to parse CSR extensions: {err}") from None


def validate_csr(
    pem: str | bytes,
    expected: ServiceIdentity | AgentIdentity,
    trust_domain: str,
    *,
    allowed_dns_sans: Collection[str] = (),
    allowed_ip_sans: Collection[ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
) -> x509.CertificateSigningRequest:
    """Return the parsed CSR if it may be signed for ``expected``; raise CSRError otherwise.

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
    _check_key(csr)
    try:
        signature_ok = csr.is_signature_valid
    except (ValueError, TypeError):
        signature_ok = False
    if not signature_ok:
        raise CSRError("CSR signature is invalid")

    exts = _extensions(csr)
    try:
        bc = exts.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is not None and bc.ca:
        raise CSRError("CSR must not request a CA certificate")

    try:
        san = exts.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CSRError("CSR SAN contains an invalid number of URIs: 0") from None
    names = list(san)
    uris = [n.value for n in names if isinstance(n, x509.UniformResourceIdentifier)]
    if len(uris) != 1:
        raise CSRError(f"CSR SAN contains an invalid number of URIs: {len(uris)}")
    if any(isinstance(n, x509.RFC822Name) for n in names):
        raise CSRError("CSR SAN does not allow specifying email addresses")
    other = [
        type(n).__name__
        for n in names
        if not isinstance(n, x509.UniformResourceIdentifier | x509.DNSName | x509.IPAddress)
    ]
    if other:
        raise CSRError(f"CSR SAN contains unsupported name types: {', '.join(sorted(set(other)))}")
    for n in names:
        if isinstance(n, x509.DNSName) and n.value not in allowed_dns_sans:
            raise CSRError(f"CSR SAN requests a DNS name that is not allowed: {n.value!r}")
        if isinstance(n, x509.IPAddress) and n.value not in allowed_ip_sans:
            raise CSRError(f"CSR SAN requests an IP address that is not allowed: {n.value}")

    try:
        identity = parse_uri(uris[0])
    except InvalidSpiffeURI as err:
        raise CSRError(f"CSR SAN URI is not a valid SPIFFE ID: {err}") from None
    _check_identity(identity, expected, trust_domain)
    return csr


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
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri())]
    names += [x509.DNSName(d) for d in dns_sans]
    names += [x509.IPAddress(ip) for ip in ip_sans]
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName(names), critical=True)
        .sign(key, signature_hash(key))
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")
