"""Certificate builders: exact extensions, lifetimes and formats, checked with openssl verify."""

from __future__ import annotations

import hashlib
import random
import re
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from ca import certs
from ca.csr import make_csr, validate_csr
from ca.spiffe import ServiceIdentity

CLUSTER = "7f42f496-fbc7-8692-05ed-334aa5340c1e"
TD = f"{CLUSTER}.consul"
WEB = ServiceIdentity(TD, "default", "dc1", "web")
CN = "pri-abcd1234.consul.ca.7f42f496.consul"
SHA1_COLON = re.compile(r"^([0-9a-f]{2}:){19}[0-9a-f]{2}$")
SHA256_COLON = re.compile(r"^([0-9a-f]{2}:){31}[0-9a-f]{2}$")

Rng = Callable[[int], bytes]
Verify = Callable[..., subprocess.CompletedProcess[str]]


def pem(cert: x509.Certificate) -> str:
    return certs.cert_to_pem(cert)


def make_root(rng: Rng, now: datetime, key: certs.PrivateKey | None = None, ttl_days: int = 3650,
              td: str = TD, cluster: str = CLUSTER, cn: str = CN) -> tuple[certs.PrivateKey, x509.Certificate]:
    key = key or certs.generate_key()
    return key, certs.build_root(key, cluster, td, certs.new_root_serial(rng), now, timedelta(days=ttl_days), cn)


def make_leaf(rng: Rng, now: datetime, root_key: certs.PrivateKey, root: x509.Certificate,
              leaf_key: certs.PrivateKey | None = None, **kw: object) -> x509.Certificate:
    leaf_key = leaf_key or certs.generate_key()
    csr = validate_csr(make_csr(leaf_key, WEB), WEB, TD)
    return certs.build_leaf(csr, root_key, root, certs.new_serial(rng), now, timedelta(hours=72), **kw)  # type: ignore[arg-type]


def ext(cert: x509.Certificate, cls: type) -> x509.Extension:  # type: ignore[type-arg]
    return cert.extensions.get_extension_for_class(cls)


# ---------------------------------------------------------------------------------------------------
# keys and formats


@pytest.mark.parametrize(("kind", "bits"), [("ec", 256), ("ec", 384), ("rsa", 2048)])
def test_generate_key(kind: str, bits: int) -> None:
    key = certs.generate_key(kind, bits)
    assert certs.key_info(key) == (kind, bits)
    assert certs.key_info(key.public_key()) == (kind, bits)


@pytest.mark.parametrize(("kind", "bits", "msg"), [
    ("ec", 224, "EC key length must be one of (256, 384) bits"),
    ("ec", 521, "EC key length must be one of (256, 384) bits"),
    ("rsa", 1024, "RSA key length must be 2048 or 4096 bits"),
    ("dsa", 2048, "private key type must be either 'ec' or 'rsa'"),
])
def test_generate_key_rejects(kind: str, bits: int, msg: str) -> None:
    with pytest.raises(ValueError, match=re.escape(msg)):
        certs.generate_key(kind, bits)


def test_private_key_pem_round_trip() -> None:
    ec_key = certs.generate_key()
    ec_pem = certs.private_key_to_pem(ec_key)
    assert ec_pem.startswith("-----BEGIN EC PRIVATE KEY-----")
    assert certs.key_id(certs.private_key_from_pem(ec_pem)) == certs.key_id(ec_key)
    rsa_key = certs.generate_key("rsa", 2048)
    assert certs.private_key_to_pem(rsa_key).startswith("-----BEGIN RSA PRIVATE KEY-----")
    pkcs8 = ec_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    assert certs.key_id(certs.private_key_from_pem(pkcs8)) == certs.key_id(ec_key)


def test_key_id_is_sha256_of_spki() -> None:
    key = certs.generate_key()
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    assert certs.key_id(key) == hashlib.sha256(spki).digest()
    assert SHA256_COLON.match(certs.key_id_colon(key))
    assert certs.key_id_colon(key) == ":".join(f"{b:02x}" for b in hashlib.sha256(spki).digest())


def test_serial_formatting() -> None:
    assert certs.serial_colon(8) == "08"
    assert certs.serial_colon(0x1F2B) == "1f:2b"
    assert certs.serial_colon(0x0100) == "01:00"
    with pytest.raises(ValueError):
        certs.serial_colon(0)


def test_serials_are_random_wide_positive_and_deterministic_under_a_seed() -> None:
    a = [certs.new_serial(random.Random(7).randbytes) for _ in range(2)]
    assert a[0] == a[1]  # same seed, same serial: tests can pin them
    rng = random.Random(8).randbytes
    serials = {certs.new_serial(rng) for _ in range(1000)}
    assert len(serials) == 1000
    assert all(1 << 126 <= s < 1 << 127 for s in serials)
    assert all(len(certs.serial_colon(s)) == 47 for s in serials)  # 16 bytes
    roots = {certs.new_root_serial(rng) for _ in range(1000)}
    assert len(roots) == 1000
    assert all(1 << 62 <= s < 1 << 63 for s in roots)  # fits uint64 and int64
    with pytest.raises(ValueError):
        certs.new_serial(lambda n: b"\x00" * (n - 1))


def test_pem_helpers(rng: Rng, now: datetime) -> None:
    _, a = make_root(rng, now)
    _, b = make_root(rng, now)
    bundle = certs.pem_bundle([pem(a).rstrip("\n"), pem(b)])
    assert bundle.count("-----END CERTIFICATE-----\n") == 2
    assert [c.serial_number for c in certs.certs_from_pem(bundle)] == [a.serial_number, b.serial_number]
    with pytest.raises(ValueError):
        certs.cert_from_pem(bundle)
    with pytest.raises(ValueError):
        certs.certs_from_pem("garbage")


def test_naive_now_is_refused(rng: Rng) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        make_root(rng, datetime(2026, 1, 1))


# ---------------------------------------------------------------------------------------------------
# roots


def test_root_properties(rng: Rng, now: datetime, openssl_verify: Verify) -> None:
    key, root = make_root(rng, now)
    assert root.subject == root.issuer
    assert root.subject.rfc4514_string() == f"CN={CN}"
    assert root.not_valid_before_utc == now - timedelta(minutes=1)
    assert root.not_valid_after_utc == now + timedelta(days=3650)
    bc = ext(root, x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 2
    ku = ext(root, x509.KeyUsage)
    assert ku.critical
    assert ku.value.key_cert_sign and ku.value.crl_sign and ku.value.digital_signature
    assert not ku.value.key_encipherment and not ku.value.key_agreement
    assert ext(root, x509.SubjectKeyIdentifier).value.digest == certs.key_id(key)
    assert ext(root, x509.AuthorityKeyIdentifier).value.key_identifier == certs.key_id(key)
    assert certs.spiffe_uris(root) == [f"spiffe://{TD}"]
    assert isinstance(root.signature_hash_algorithm, type(certs.signature_hash(key)))
    # The root verifies as its own trust anchor.
    assert openssl_verify(pem(root), pem(root)).returncode == 0


def test_root_fingerprint(rng: Rng, now: datetime) -> None:
    _, root = make_root(rng, now)
    fp = certs.fingerprint_sha1_colon(root)
    assert SHA1_COLON.match(fp)
    der = root.public_bytes(serialization.Encoding.DER)
    assert fp == ":".join(f"{b:02x}" for b in hashlib.sha1(der).digest())


def test_root_refuses_mismatched_cluster(rng: Rng, now: datetime) -> None:
    with pytest.raises(ValueError):
        make_root(rng, now, cluster="other")
    with pytest.raises(ValueError):
        certs.build_root(certs.generate_key(), CLUSTER, TD, 1, now, timedelta(0), CN)


def test_p384_root_signs_with_sha384(rng: Rng, now: datetime) -> None:
    key, root = make_root(rng, now, key=certs.generate_key("ec", 384))
    assert root.signature_hash_algorithm is not None
    assert root.signature_hash_algorithm.name == "sha384"


# ---------------------------------------------------------------------------------------------------
# leaves


def test_leaf_properties(rng: Rng, now: datetime, openssl_verify: Verify) -> None:
    root_key, root = make_root(rng, now)
    leaf_key = certs.generate_key()
    leaf = make_leaf(rng, now, root_key, root, leaf_key)
    assert leaf.issuer == root.subject
    assert leaf.subject == x509.Name([])
    assert leaf.not_valid_before_utc == now - timedelta(minutes=1)
    assert leaf.not_valid_after_utc == now + timedelta(hours=72)
    assert leaf.serial_number >= 1 << 64
    bc = ext(leaf, x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = ext(leaf, x509.KeyUsage)
    assert ku.critical
    assert ku.value.digital_signature and ku.value.key_agreement
    assert not (ku.value.key_encipherment or ku.value.key_cert_sign or ku.value.crl_sign
                or ku.value.data_encipherment or ku.value.content_commitment)
    eku = ext(leaf, x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
    assert ext(leaf, x509.SubjectKeyIdentifier).value.digest == certs.key_id(leaf_key)
    assert ext(leaf, x509.AuthorityKeyIdentifier).value.key_identifier == certs.key_id(root_key)
    san = ext(leaf, x509.SubjectAlternativeName)
    assert san.critical  # empty subject => SAN must be critical (RFC 5280 4.2.1.6)
    assert list(san.value) == [x509.UniformResourceIdentifier(WEB.uri())]
    for purpose in ("sslclient", "sslserver"):
        result = openssl_verify(pem(leaf), pem(root), purpose=purpose)
        assert result.returncode == 0, result


def test_rsa_leaf_key_usage(rng: Rng, now: datetime, openssl_verify: Verify) -> None:
    root_key, root = make_root(rng, now, key=certs.generate_key("rsa", 2048))
    leaf = make_leaf(rng, now, root_key, root, certs.generate_key("rsa", 2048))
    ku = ext(leaf, x509.KeyUsage).value
    assert ku.digital_signature and ku.key_encipherment and not ku.key_agreement
    assert openssl_verify(pem(leaf), pem(root)).returncode == 0


def test_leaf_dns_and_ip_sans(rng: Rng, now: datetime) -> None:
    import ipaddress

    root_key, root = make_root(rng, now)
    leaf = make_leaf(rng, now, root_key, root, dns_sans=["localhost"],
                     ip_sans=[ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")])
    san = ext(leaf, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [WEB.uri()]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]


def test_leaf_expiry_is_enforced_by_openssl(rng: Rng, now: datetime,
                                            openssl_verify: Verify) -> None:
    root_key, root = make_root(rng, now)
    leaf = make_leaf(rng, now, root_key, root)
    ok = openssl_verify(pem(leaf), pem(root), at=now + timedelta(hours=71))
    assert ok.returncode == 0
    late = openssl_verify(pem(leaf), pem(root), at=now + timedelta(hours=73))
    assert late.returncode != 0 and "expired" in late.stdout + late.stderr
    early = openssl_verify(pem(leaf), pem(root), at=now - timedelta(minutes=5))
    assert early.returncode != 0


def test_leaf_does_not_verify_against_a_foreign_root(rng: Rng, now: datetime,
                                                     openssl_verify: Verify) -> None:
    root_key, root = make_root(rng, now)
    _, foreign = make_root(rng, now, cn=CN)  # same name, different key: AKID/signature must decide
    leaf = make_leaf(rng, now, root_key, root)
    assert openssl_verify(pem(leaf), pem(foreign)).returncode != 0


def test_build_leaf_refuses_multi_uri_csr(rng: Rng, now: datetime) -> None:
    root_key, root = make_root(rng, now)
    key = certs.generate_key()
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName([
               x509.UniformResourceIdentifier(WEB.uri()),
               x509.UniformResourceIdentifier(WEB.uri().replace("web", "db"))]), critical=False)
           .sign(key, certs.signature_hash(key)))
    with pytest.raises(ValueError, match="invalid number of URIs: 2"):
        certs.build_leaf(csr, root_key, root, 5, now, timedelta(hours=1))


# ---------------------------------------------------------------------------------------------------
# cross-signing


def test_cross_signed(rng: Rng, now: datetime, openssl_verify: Verify) -> None:
    old_key, old = make_root(rng, now - timedelta(days=30))
    new_key, new = make_root(rng, now, cn="pri-newroot1.consul.ca.7f42f496.consul")
    cross = certs.build_cross_signed(new, old_key, old, now, serial=12345)
    assert cross.subject == new.subject and cross.issuer == old.subject
    assert cross.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo) == \
        new.public_key().public_bytes(serialization.Encoding.DER,
                                      serialization.PublicFormat.SubjectPublicKeyInfo)
    assert ext(cross, x509.SubjectKeyIdentifier).value.digest == certs.key_id(new_key)
    assert ext(cross, x509.AuthorityKeyIdentifier).value.key_identifier == certs.key_id(old_key)
    assert ext(cross, x509.BasicConstraints).value.ca
    assert certs.spiffe_uris(cross) == [f"spiffe://{TD}"]
    assert cross.serial_number == 12345
    assert cross.not_valid_before_utc == now - timedelta(minutes=1)
    assert cross.not_valid_after_utc == now + timedelta(days=7)
    assert openssl_verify(pem(cross), pem(old)).returncode == 0

    leaf = make_leaf(rng, now, new_key, new)
    # Only the OLD root trusted, cross-signed cert as untrusted intermediate: verifies.
    assert openssl_verify(pem(leaf), pem(old), pem(cross)).returncode == 0
    # Without the intermediate it cannot.
    assert openssl_verify(pem(leaf), pem(old)).returncode != 0


def test_cross_signed_never_outlives_the_old_root(rng: Rng, now: datetime) -> None:
    old_key, old = make_root(rng, now, ttl_days=3)
    _, new = make_root(rng, now)
    cross = certs.build_cross_signed(new, old_key, old, now, ttl=timedelta(days=30))
    assert cross.not_valid_after_utc == old.not_valid_after_utc


def test_cross_signed_refuses_wrong_key_or_expired_old_root(rng: Rng, now: datetime) -> None:
    old_key, old = make_root(rng, now)
    _, new = make_root(rng, now)
    with pytest.raises(ValueError, match="does not match"):
        certs.build_cross_signed(new, certs.generate_key(), old, now)
    with pytest.raises(ValueError, match="expires"):
        certs.build_cross_signed(new, old_key, old, now + timedelta(days=3651))


def test_ec_and_rsa_types() -> None:
    assert isinstance(certs.generate_key(), ec.EllipticCurvePrivateKey)
    assert isinstance(certs.generate_key("rsa", 2048), rsa.RSAPrivateKey)


def test_utc_conversion_of_non_utc_now(rng: Rng) -> None:
    from datetime import timezone

    plus2 = datetime(2026, 3, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    _, root = make_root(rng, plus2)
    assert root.not_valid_before_utc == datetime(2026, 3, 1, 11, 59, tzinfo=UTC)
