"""Pure certificate builders for the Connect CA: keys, roots, cross-signed roots, leaves, formats.

Everything that would otherwise come from the environment is an argument: ``now`` (a timezone-aware
datetime), keys, serial numbers and the random byte source used to draw serials. Key generation and
signatures use OpenSSL's own CSPRNG through ``cryptography``; nothing here reads a clock or touches IO.

Formats follow Consul (agent/connect/parsing.go, agent/connect/ca/provider_consul.go):

- key IDs (SubjectKeyId / AuthorityKeyId, and ``SigningKeyID`` in the roots API) are the SHA-256 of the
  DER SubjectPublicKeyInfo, printed as lowercase colon hex;
- a root's ``ID`` is the SHA-1 fingerprint of its DER, lowercase colon hex;
- a leaf's ``SerialNumber`` is the colon hex of the serial's minimal big-endian bytes;
- private keys are PEM "EC PRIVATE KEY" (SEC1) or "RSA PRIVATE KEY" (PKCS#1), as Go writes them.
"""

from __future__ import annotations

import binascii
import hashlib
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca import der

__all__ = [
    "CLOCK_SKEW_ALLOWANCE",
    "CROSS_SIGNED_DEFAULT_TTL",
    "LeafTemplate",
    "PrivateKey",
    "PublicKey",
    "RandomBytes",
    "build_cross_signed",
    "build_leaf",
    "build_root",
    "cert_from_pem",
    "cert_to_pem",
    "certs_from_pem",
    "colon_hex",
    "der_to_pem",
    "fingerprint_sha1_colon",
    "general_names",
    "generate_key",
    "key_id",
    "key_id_colon",
    "key_info",
    "new_root_serial",
    "new_serial",
    "pem_bundle",
    "private_key_from_pem",
    "private_key_to_pem",
    "serial_colon",
    "signature_algorithm",
    "signature_hash",
    "spiffe_uris",
]

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
# A source of random bytes: os.urandom in production, random.Random(seed).randbytes in tests.
RandomBytes = Callable[[int], bytes]

# Consul backdates NotBefore by one minute so that servers and proxies whose clocks run slightly
# behind still accept a certificate the moment it is issued.
CLOCK_SKEW_ALLOWANCE = timedelta(minutes=1)
# Consul's cross-signed certificate lives 7 days: long enough for every proxy to learn the new root.
CROSS_SIGNED_DEFAULT_TTL = timedelta(days=7)

_EC_CURVES: dict[int, ec.EllipticCurve] = {256: ec.SECP256R1(), 384: ec.SECP384R1()}
_RSA_BITS = (2048, 4096)


# --------------------------------------------------------------------------------------------------
# Keys


def generate_key(key_type: str = "ec", bits: int = 256) -> PrivateKey:
    """A new private key: ``ec`` with 256 (P-256) or 384 (P-384) bits, or ``rsa`` with 2048 or 4096."""
    if key_type == "ec":
        curve = _EC_CURVES.get(bits)
        if curve is None:
            raise ValueError("EC key length must be one of (256, 384) bits")
        return ec.generate_private_key(curve)
    if key_type == "rsa":
        if bits not in _RSA_BITS:
            raise ValueError("RSA key length must be 2048 or 4096 bits")
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    raise ValueError("private key type must be either 'ec' or 'rsa'")


def key_info(key: PrivateKey | PublicKey) -> tuple[str, int]:
    """(``"ec"``|``"rsa"``, bits) for a key, as Consul reports PrivateKeyType / PrivateKeyBits."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return "ec", key.curve.key_size
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return "rsa", key.key_size
    raise TypeError(f"unsupported key type {type(key).__name__}")


def _public(key: PrivateKey | PublicKey) -> PublicKey:
    if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        return key.public_key()
    return key


def key_id(key: PrivateKey | PublicKey) -> bytes:
    """Consul's KeyId: SHA-256 of the DER SubjectPublicKeyInfo (32 bytes). Not RFC 5280's SHA-1 of
    the bit string, but any stable unique value is allowed and matching Consul keeps SigningKeyID
    comparable with certificates Consul issued."""
    der = _public(key).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).digest()


def colon_hex(data: bytes) -> str:
    """Lowercase hex bytes joined by ':' (Consul's connect.HexString)."""
    return data.hex(":")


def key_id_colon(key: PrivateKey | PublicKey) -> str:
    """A key's ID as Consul prints SigningKeyID."""
    return colon_hex(key_id(key))


def signature_hash(key: PrivateKey) -> hashes.HashAlgorithm:
    # Match the hash to the curve strength; P-256 and RSA use SHA-256 as Go's SigAlgoForKey does.
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


# --------------------------------------------------------------------------------------------------
# Serials and fingerprints


def new_serial(rng: RandomBytes) -> int:
    """A random leaf serial: 126 random bits with bit 126 set, so it is positive, never zero, always
    16 bytes long, and far beyond the 64 bits of entropy CA/B rules ask for."""
    raw = rng(16)
    if len(raw) != 16:
        raise ValueError("random source returned the wrong number of bytes")
    return (int.from_bytes(raw, "big") & ((1 << 127) - 1)) | (1 << 126)


def new_root_serial(rng: RandomBytes) -> int:
    """A random root serial that fits Consul's ``SerialNumber uint64`` JSON field (Go clients fail to
    decode anything wider) and a signed int64 (msgpack, other stores): 62 random bits, bit 62 set."""
    raw = rng(8)
    if len(raw) != 8:
        raise ValueError("random source returned the wrong number of bytes")
    return (int.from_bytes(raw, "big") & ((1 << 63) - 1)) | (1 << 62)


def serial_colon(serial: int) -> str:
    """A serial as Consul prints it in leaf responses: colon hex of its minimal big-endian bytes."""
    if serial <= 0:
        raise ValueError("serial numbers are positive")
    return colon_hex(serial.to_bytes((serial.bit_length() + 7) // 8, "big"))


def fingerprint_sha1_colon(cert: x509.Certificate) -> str:
    """SHA-1 of the DER certificate, lowercase colon hex: a root's ``ID`` / ``ActiveRootID``."""
    return colon_hex(cert.fingerprint(hashes.SHA1()))


# --------------------------------------------------------------------------------------------------
# PEM helpers


def cert_to_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def certs_from_pem(data: str | bytes) -> list[x509.Certificate]:
    """Every CERTIFICATE block in ``data`` (at least one), in order."""
    raw = data.encode("ascii") if isinstance(data, str) else data
    certs = x509.load_pem_x509_certificates(raw)
    if not certs:
        raise ValueError("no PEM-encoded certificate found")
    return certs


def cert_from_pem(data: str | bytes) -> x509.Certificate:
    """Exactly one certificate; a bundle is refused so a chain is never silently cut to its head."""
    certs = certs_from_pem(data)
    if len(certs) != 1:
        raise ValueError(f"expected one PEM certificate, found {len(certs)}")
    return certs[0]


def private_key_to_pem(key: PrivateKey) -> str:
    """Unencrypted "EC PRIVATE KEY" / "RSA PRIVATE KEY" PEM, the forms Consul stores and serves."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode("ascii")


def private_key_from_pem(data: str | bytes) -> PrivateKey:
    """An EC or RSA private key from SEC1, PKCS#1 or PKCS#8 PEM (unencrypted)."""
    raw = data.encode("ascii") if isinstance(data, str) else data
    key = serialization.load_pem_private_key(raw, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"unsupported private key type {type(key).__name__}: want EC or RSA")
    return key


def spiffe_uris(cert: x509.Certificate | x509.CertificateSigningRequest) -> list[str]:
    """The URI SANs of a certificate or CSR (empty if it has no SAN extension)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))


# --------------------------------------------------------------------------------------------------
# Builders


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    return now.astimezone(UTC)


def _ski(key: PrivateKey | PublicKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier(key_id(key))


def _aki(key: PrivateKey | PublicKey) -> x509.AuthorityKeyIdentifier:
    return x509.AuthorityKeyIdentifier(key_identifier=key_id(key), authority_cert_issuer=None,
                                       authority_cert_serial_number=None)


def build_root(
    key: PrivateKey,
    cluster_id: str,
    trust_domain: str,
    serial: int,
    now: datetime,
    ttl: timedelta,
    common_name: str,
    *,
    path_length: int | None = 2,
) -> x509.Certificate:
    """A self-signed Connect root as Consul's built-in provider makes it.

    CA:true (critical), KeyUsage certSign + cRLSign + digitalSignature (critical), SubjectKeyId =
    AuthorityKeyId = key ID, one URI SAN ``spiffe://<trust_domain>``. Valid from ``now`` minus the clock
    skew allowance until ``now + ttl``.

    ``path_length`` defaults to 2 (Consul sets none) so a leaked root key cannot mint arbitrarily deep
    chains, while still allowing the deepest chain Connect builds: root -> cross-signed root (rotation)
    -> datacenter intermediate -> leaf. ``cluster_id`` must be the first label of ``trust_domain``.
    """
    now = _utc(now)
    if ttl <= timedelta(0):
        raise ValueError("root TTL must be positive")
    if trust_domain.split(".", 1)[0] != cluster_id:
        raise ValueError(f"trust domain {trust_domain!r} does not belong to cluster {cluster_id!r}")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - CLOCK_SKEW_ALLOWANCE)
        .not_valid_after(now + ttl)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(_ski(key), critical=False)
        .add_extension(_aki(key), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]),
            critical=False,
        )
    )
    return builder.sign(key, signature_hash(key))


def build_cross_signed(
    new_root_cert: x509.Certificate,
    old_root_key: PrivateKey,
    old_root_cert: x509.Certificate,
    now: datetime,
    *,
    serial: int | None = None,
    ttl: timedelta = CROSS_SIGNED_DEFAULT_TTL,
) -> x509.Certificate:
    """The new root re-issued by the old root, for rotation.

    Same subject, public key, SubjectKeyId, SAN, basic constraints and key usage as ``new_root_cert``;
    issuer and AuthorityKeyId are the old root's. A leaf signed by the new root names the new root's
    subject and key ID as its issuer, so it chains through this certificate to the old root: peers that
    have not yet learned the new root keep accepting new leaves.

    Valid from ``now`` minus the clock skew allowance for ``ttl`` (Consul: 7 days), never past the old
    root's own expiry. ``serial`` defaults to the new root's serial (unique under the old issuer, since
    root serials are random).
    """
    now = _utc(now)
    if old_root_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != old_root_cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise ValueError("old root key does not match the old root certificate")
    not_after = min(now + ttl, old_root_cert.not_valid_after_utc)
    not_before = now - CLOCK_SKEW_ALLOWANCE
    if not_after <= not_before:
        raise ValueError("old root expires before the cross-signed certificate could be valid")
    builder = (
        x509.CertificateBuilder()
        .subject_name(new_root_cert.subject)
        .issuer_name(old_root_cert.subject)
        .public_key(new_root_cert.public_key())
        .serial_number(serial if serial is not None else new_root_cert.serial_number)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    for ext in new_root_cert.extensions:
        # The authority is the old root now; everything else describes the new root's key and role.
        if isinstance(ext.value, x509.AuthorityKeyIdentifier):
            continue
        builder = builder.add_extension(ext.value, critical=ext.critical)
    builder = builder.add_extension(_aki(old_root_key), critical=False)
    return builder.sign(old_root_key, signature_hash(old_root_key))


# Fixed parts of every leaf, DER-encoded once (RFC 5280 4.1, 4.2.1).
_V3 = der.context(0, der.integer(2))
_EMPTY_NAME = der.sequence()
_OID_SKI, _OID_AKI = der.oid("2.5.29.14"), der.oid("2.5.29.35")
_OID_SAN = der.oid("2.5.29.17")
_BASIC_CONSTRAINTS_LEAF = der.extension(der.oid("2.5.29.19"), True, der.sequence())  # CA:false
# KeyUsage bits: digitalSignature (0) + keyAgreement (4) for EC; digitalSignature + keyEncipherment (2)
# for RSA (TLS key transport). DER drops trailing zero bits and says how many it dropped.
_KEY_USAGE_EC = der.extension(der.oid("2.5.29.15"), True, der.bit_string(b"\x88", 3))
_KEY_USAGE_RSA = der.extension(der.oid("2.5.29.15"), True, der.bit_string(b"\xa0", 5))
_EXT_KEY_USAGE = der.extension(
    der.oid("2.5.29.37"),
    False,
    der.sequence(der.oid(ExtendedKeyUsageOID.CLIENT_AUTH.dotted_string),
                 der.oid(ExtendedKeyUsageOID.SERVER_AUTH.dotted_string)),
)  # fmt: skip
_SIG_ECDSA_SHA256 = der.sequence(der.oid("1.2.840.10045.4.3.2"))
_SIG_ECDSA_SHA384 = der.sequence(der.oid("1.2.840.10045.4.3.3"))
_SIG_RSA_SHA256 = der.sequence(der.oid("1.2.840.113549.1.1.11"), b"\x05\x00")
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
_ECDSA_SHA384 = ec.ECDSA(hashes.SHA384())


def signature_algorithm(key: PrivateKey) -> tuple[bytes, Callable[[bytes], bytes]]:
    """The AlgorithmIdentifier DER a signature by ``key`` carries, and a function that makes one
    (the hash chosen as ``signature_hash`` does)."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.key_size >= 384:
            return _SIG_ECDSA_SHA384, lambda data: key.sign(data, _ECDSA_SHA384)
        return _SIG_ECDSA_SHA256, lambda data: key.sign(data, _ECDSA_SHA256)
    if isinstance(key, rsa.RSAPrivateKey):
        pkcs1 = padding.PKCS1v15()
        sha256 = hashes.SHA256()
        return _SIG_RSA_SHA256, lambda data: key.sign(data, pkcs1, sha256)
    raise TypeError(f"unsupported signing key type {type(key).__name__}")


def general_names(uri: str, dns_sans: Iterable[str] = (),
                  ip_sans: Iterable[ipaddress.IPv4Address | ipaddress.IPv6Address] = ()) -> bytes:  # fmt: skip
    """GeneralNames DER: the URI ([6] IA5String), then DNS names ([2]) and IP addresses ([7])."""
    parts = [der.context(6, uri.encode("ascii"), constructed=False)]
    parts += [der.context(2, d.encode("ascii"), constructed=False) for d in dns_sans]
    parts += [der.context(7, ip.packed, constructed=False) for ip in ip_sans]
    return der.sequence(*parts)


def der_to_pem(data: bytes, label: str) -> str:
    """PEM text of a DER block: base64 in 64-character lines, as OpenSSL and Go write it."""
    body = b"".join([binascii.b2a_base64(data[i : i + 48]) for i in range(0, len(data), 48)])
    return f"-----BEGIN {label}-----\n{body.decode('ascii')}-----END {label}-----\n"


class LeafTemplate:
    """Issues Connect leaves for one signing key and certificate.

    The issuer name, AuthorityKeyId, signature algorithm and fixed extensions are encoded once; a leaf
    is then the per-certificate fields written around them and one signature. The result is the same
    DER ``cryptography``'s CertificateBuilder writes for these fields (tests/ca/test_ca_der.py checks it
    byte for byte), at a fraction of the Python work per certificate. Profile (see ``build_leaf``):
    empty subject, CA:false, KeyUsage, ExtendedKeyUsage clientAuth + serverAuth, SubjectKeyId of the
    leaf key, AuthorityKeyId of the signing key, the critical SAN.
    """

    def __init__(self, signing_key: PrivateKey, signing_cert: x509.Certificate) -> None:
        self.signing_key = signing_key
        self.signing_cert = signing_cert
        self.serial = signing_cert.serial_number
        self._alg, self._sign = signature_algorithm(signing_key)
        self._issuer = signing_cert.subject.public_bytes()
        self._aki = der.extension(_OID_AKI, False, der.sequence(der.context(0, key_id(signing_key), constructed=False)))

    def issue(self, spki: bytes, is_rsa: bool, serial: int, not_before: datetime, not_after: datetime,
              names: bytes) -> bytes:  # fmt: skip
        """The DER certificate. ``spki`` is the leaf key's DER SubjectPublicKeyInfo, ``names`` its
        GeneralNames DER (see ``general_names``); times are UTC and cut to whole seconds."""
        extensions = der.context(3, der.sequence(
            _BASIC_CONSTRAINTS_LEAF,
            _KEY_USAGE_RSA if is_rsa else _KEY_USAGE_EC,
            _EXT_KEY_USAGE,
            der.extension(_OID_SKI, False, der.octet_string(hashlib.sha256(spki).digest())),
            self._aki,
            der.extension(_OID_SAN, True, names),
        ))  # fmt: skip
        tbs = der.sequence(
            _V3,
            der.integer(serial),
            self._alg,
            self._issuer,
            der.sequence(der.time(not_before), der.time(not_after)),
            _EMPTY_NAME,
            spki,
            extensions,
        )
        return der.sequence(tbs, self._alg, der.bit_string(self._sign(tbs)))


def build_leaf(
    csr: x509.CertificateSigningRequest,
    signing_key: PrivateKey,
    signing_cert: x509.Certificate,
    serial: int,
    now: datetime,
    ttl: timedelta,
    *,
    dns_sans: Iterable[str] = (),
    ip_sans: Iterable[ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
    not_after: datetime | None = None,
) -> x509.Certificate:
    """A Connect leaf for an already validated CSR (see ca.csr.validate_csr).

    NotBefore = now - 1 minute (clock skew allowance), NotAfter = now + ttl (or ``not_after`` if
    given, e.g. clamped to the issuer's expiry). Empty subject; the identity is the single URI SAN
    copied from the CSR, plus the given DNS and IP SANs; the SAN extension is critical because the
    subject is empty (RFC 5280 4.2.1.6). CA:false, KeyUsage digitalSignature + keyAgreement (EC) or
    digitalSignature + keyEncipherment (RSA: TLS key transport), ExtendedKeyUsage clientAuth +
    serverAuth only, SubjectKeyId from the CSR key, AuthorityKeyId from the signing key.

    The signer's hot path uses a cached ``LeafTemplate`` directly; this builds one per call.
    """
    now = _utc(now)
    if ttl <= timedelta(0):
        raise ValueError("leaf TTL must be positive")
    uris = spiffe_uris(csr)
    if len(uris) != 1:
        # Defence in depth: validate_csr already refuses this (CVE-2022-40716).
        raise ValueError(f"CSR SAN contains an invalid number of URIs: {len(uris)}")
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise ValueError(f"unsupported CSR key type {type(public_key).__name__}")
    end = _utc(not_after) if not_after is not None else now + ttl
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    cert = LeafTemplate(signing_key, signing_cert).issue(
        spki,
        isinstance(public_key, rsa.RSAPublicKey),
        serial,
        (now - CLOCK_SKEW_ALLOWANCE).replace(microsecond=0),
        end.replace(microsecond=0),
        general_names(uris[0], dns_sans, ip_sans),
    )
    return x509.load_der_x509_certificate(cert)


def pem_bundle(pems: Sequence[str]) -> str:
    """Concatenate PEM blocks, each ending in exactly one newline (Consul's EnsureTrailingNewline)."""
    return "".join([p if p[-1:] == "\n" else p + "\n" for p in pems])

