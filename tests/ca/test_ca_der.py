"""The issuing fast path writes DER by hand (ca.der, certs.LeafTemplate, csr.make_csr): each template
must write exactly the bytes ``cryptography``'s builders write for the same fields, for every key type
and SAN mix, and its signature must verify."""

from __future__ import annotations

import base64
import ipaddress
import random
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from ca import certs, der
from ca.csr import make_csr, validate_csr
from ca.spiffe import AgentIdentity, ServiceIdentity

CLUSTER = "7f42f496-fbc7-8692-05ed-334aa5340c1e"
TD = f"{CLUSTER}.consul"
WEB = ServiceIdentity(TD, "default", "dc1", "web")
NODE = AgentIdentity(TD, "dc1", "node-1")
NOW = datetime(2026, 11, 25, 12, 30, 45, 123456, tzinfo=UTC)

_KEYS: dict[tuple[str, int], certs.PrivateKey] = {}


def key(kind: str, bits: int) -> certs.PrivateKey:
    """Keys are slow to make (RSA): one per kind for the whole module."""
    if (kind, bits) not in _KEYS:
        _KEYS[kind, bits] = certs.generate_key(kind, bits)
    return _KEYS[kind, bits]


def reference_leaf(csr: x509.CertificateSigningRequest, signing_key: certs.PrivateKey,
                   signing_cert: x509.Certificate, serial: int, not_before: datetime, not_after: datetime,
                   names: list[x509.GeneralName]) -> x509.Certificate:  # fmt: skip
    """The leaf profile written with cryptography's CertificateBuilder: the oracle for LeafTemplate."""
    pub = csr.public_key()
    is_rsa = isinstance(pub, rsa.RSAPublicKey)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(signing_cert.subject)
        .public_key(pub)  # type: ignore[arg-type]
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, is_rsa, False, not is_rsa, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)  # fmt: skip
        .add_extension(x509.SubjectKeyIdentifier(certs.key_id(pub)), critical=False)  # type: ignore[arg-type]
        .add_extension(x509.AuthorityKeyIdentifier(certs.key_id(signing_key), None, None), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=True)
        .sign(signing_key, certs.signature_hash(signing_key))
    )


ROOT_KINDS = [("ec", 256), ("ec", 384), ("rsa", 2048)]
LEAF_KINDS = [("ec", 256), ("ec", 384), ("rsa", 2048)]
SANS = [
    ([], []),
    (["localhost", "server.dc1.consul"], []),
    ([], [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]),
    (["a.example"], [ipaddress.ip_address("10.0.0.7")]),
]


@pytest.mark.parametrize("root_kind", ROOT_KINDS, ids=lambda k: f"root-{k[0]}{k[1]}")
@pytest.mark.parametrize("leaf_kind", LEAF_KINDS, ids=lambda k: f"leaf-{k[0]}{k[1]}")
@pytest.mark.parametrize("sans", SANS, ids=["uri", "dns", "ip", "dns+ip"])
def test_leaf_template_writes_what_the_builder_writes(root_kind: tuple[str, int], leaf_kind: tuple[str, int],
                                                      sans: tuple[list[str], list]) -> None:  # fmt: skip
    rng = random.Random(f"{root_kind}{leaf_kind}{sans}")
    root_key = key(*root_kind)
    root = certs.build_root(root_key, CLUSTER, TD, certs.new_root_serial(rng.randbytes), NOW, timedelta(days=3650),
                            "pri-1.consul.ca.7f42f496.consul")  # fmt: skip
    dns, ips = sans
    identity = NODE if dns or ips else WEB
    csr = validate_csr(make_csr(key(*leaf_kind), identity, dns, ips), identity, TD,
                       allowed_dns_sans=set(dns), allowed_ip_sans=set(ips))  # fmt: skip
    serial = certs.new_serial(rng.randbytes)
    not_before, not_after = NOW - timedelta(minutes=1), NOW + timedelta(hours=72)
    ours = certs.build_leaf(csr, root_key, root, serial, NOW, timedelta(hours=72), dns_sans=dns, ip_sans=ips)
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri())]
    names += [x509.DNSName(d) for d in dns] + [x509.IPAddress(ip) for ip in ips]
    theirs = reference_leaf(csr, root_key, root, serial, not_before, not_after, names)
    assert ours.tbs_certificate_bytes == theirs.tbs_certificate_bytes
    assert ours.signature_algorithm_oid == theirs.signature_algorithm_oid
    ours.verify_directly_issued_by(root)


@pytest.mark.parametrize(
    "not_after",
    [datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC), datetime(2050, 1, 1, tzinfo=UTC), datetime(2101, 6, 1, tzinfo=UTC)],
    ids=["utctime", "generalizedtime", "next-century"],
)  # fmt: skip
def test_validity_switches_to_generalized_time_in_2050(not_after: datetime) -> None:
    root_key = key("ec", 256)
    root = certs.build_root(root_key, CLUSTER, TD, 1 << 62, NOW, timedelta(days=365 * 90), "r")
    csr = validate_csr(make_csr(key("ec", 256), WEB), WEB, TD)
    ours = certs.build_leaf(csr, root_key, root, 1 << 126, NOW, timedelta(days=1), not_after=not_after)
    theirs = reference_leaf(csr, root_key, root, 1 << 126, NOW - timedelta(minutes=1), not_after,
                            [x509.UniformResourceIdentifier(WEB.uri())])  # fmt: skip
    assert ours.tbs_certificate_bytes == theirs.tbs_certificate_bytes
    assert ours.not_valid_after_utc == not_after


@pytest.mark.parametrize("leaf_kind", LEAF_KINDS, ids=lambda k: f"{k[0]}{k[1]}")
@pytest.mark.parametrize("sans", SANS, ids=["uri", "dns", "ip", "dns+ip"])
def test_make_csr_writes_what_the_builder_writes(leaf_kind: tuple[str, int], sans: tuple[list[str], list]) -> None:
    dns, ips = sans
    k = key(*leaf_kind)
    ours = x509.load_pem_x509_csr(make_csr(k, NODE, dns, ips).encode())
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(NODE.uri())]
    names += [x509.DNSName(d) for d in dns] + [x509.IPAddress(ip) for ip in ips]
    theirs = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName(names), critical=True)
        .sign(k, certs.signature_hash(k))
    )
    assert ours.tbs_certrequest_bytes == theirs.tbs_certrequest_bytes
    assert ours.signature_algorithm_oid == theirs.signature_algorithm_oid
    assert ours.is_signature_valid


def test_pem_matches_the_library() -> None:
    root_key = key("ec", 256)
    root = certs.build_root(root_key, CLUSTER, TD, 1 << 62, NOW, timedelta(days=10), "r")
    data = root.public_bytes(serialization.Encoding.DER)
    assert certs.der_to_pem(data, "CERTIFICATE") == certs.cert_to_pem(root)


@pytest.mark.parametrize("n", [0, 1, 127, 128, 255, 256, 65535, 65536, 1 << 126, (1 << 127) - 1])
def test_integer_and_lengths(n: int) -> None:
    enc = der.integer(n)
    assert enc[0] == 0x02
    body = enc[2:] if enc[1] < 0x80 else enc[2 + (enc[1] & 0x7F) :]
    assert int.from_bytes(body, "big", signed=True) == n
    assert body[0] & 0x80 == 0 and (len(body) == 1 or body[0] != 0 or body[1] & 0x80)  # minimal


@pytest.mark.parametrize("size", [0, 1, 127, 128, 255, 256, 70000])
def test_long_form_lengths(size: int) -> None:
    enc = der.octet_string(b"x" * size)
    if size < 128:
        assert enc[1] == size
    else:
        width = enc[1] & 0x7F
        assert enc[1] & 0x80 and int.from_bytes(enc[2 : 2 + width], "big") == size
        assert enc[2] != 0  # minimal length bytes


def test_oid_encoding_matches_known_values() -> None:
    # Known encodings (X.690 8.19): subjectAltName and ecdsa-with-SHA256.
    assert der.oid("2.5.29.17") == bytes.fromhex("0603551d11")
    assert der.oid("1.2.840.10045.4.3.2") == bytes.fromhex("06082a8648ce3d040302")


def test_template_signature_verifies_with_the_root_key() -> None:
    for kind in ROOT_KINDS:
        root_key = key(*kind)
        root = certs.build_root(root_key, CLUSTER, TD, 1 << 62, NOW, timedelta(days=10), "r")
        csr = validate_csr(make_csr(key("ec", 256), WEB), WEB, TD)
        leaf = certs.build_leaf(csr, root_key, root, 12345, NOW, timedelta(hours=1))
        pub = root_key.public_key()
        if isinstance(pub, ec.EllipticCurvePublicKey):
            pub.verify(leaf.signature, leaf.tbs_certificate_bytes, ec.ECDSA(leaf.signature_hash_algorithm))  # type: ignore[arg-type]
        else:
            from cryptography.hazmat.primitives.asymmetric import padding

            pub.verify(leaf.signature, leaf.tbs_certificate_bytes, padding.PKCS1v15(), hashes.SHA256())
        assert base64.b64decode(certs.cert_to_pem(leaf).split("-----")[2]) == leaf.public_bytes(serialization.Encoding.DER)
