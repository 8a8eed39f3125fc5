"""validate_csr: every class of bad CSR is refused with a CSRError, good ones pass."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from ca import certs
from ca.csr import CSRError, make_csr, validate_csr
from ca.spiffe import AgentIdentity, ServiceIdentity

TD = "7f42f496-fbc7-8692-05ed-334aa5340c1e.consul"
WEB = ServiceIdentity(TD, "default", "dc1", "web")
DB = ServiceIdentity(TD, "default", "dc1", "db")
NODE = AgentIdentity(TD, "dc1", "node-1")

_KEY = certs.generate_key()


def build(
    names: Sequence[x509.GeneralName] | None,
    key: object = None,
    *,
    extra: Sequence[x509.ExtensionType] = (),
    subject: x509.Name | None = None,
) -> str:
    key = key or _KEY
    b = x509.CertificateSigningRequestBuilder().subject_name(subject or x509.Name([]))
    if names is not None:
        b = b.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
    for e in extra:
        b = b.add_extension(e, critical=True)
    algo = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = b.sign(key, algo)  # type: ignore[arg-type]
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def uri(u: str) -> x509.UniformResourceIdentifier:
    return x509.UniformResourceIdentifier(u)


def refused(pem: str | bytes, message: str, expected: ServiceIdentity | AgentIdentity = WEB, **kw: object) -> None:
    with pytest.raises(CSRError, match=re.escape(message)):
        validate_csr(pem, expected, TD, **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------
# accepted


@pytest.mark.parametrize(("kind", "bits"), [("ec", 256), ("ec", 384), ("rsa", 2048)])
def test_accepts_supported_keys(kind: str, bits: int) -> None:
    key = certs.generate_key(kind, bits)
    csr = validate_csr(make_csr(key, WEB), WEB, TD)
    assert certs.spiffe_uris(csr) == [WEB.uri()]
    assert certs.key_id(csr.public_key()) == certs.key_id(key)  # type: ignore[arg-type]


def test_accepts_agent_csr_and_bytes_input() -> None:
    pem = make_csr(_KEY, NODE.uri()).encode()
    assert certs.spiffe_uris(validate_csr(pem, NODE, TD)) == [NODE.uri()]


def test_accepts_allowed_dns_and_ip_sans() -> None:
    lo = ipaddress.ip_address("127.0.0.1")
    pem = make_csr(_KEY, NODE, dns_sans=["localhost"], ip_sans=[lo])
    validate_csr(pem, NODE, TD, allowed_dns_sans={"localhost"}, allowed_ip_sans={lo})


def test_subject_is_ignored_not_trusted() -> None:
    # A CN naming another service changes nothing: identity is the URI SAN alone.
    pem = build([uri(WEB.uri())], subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "db")]))
    validate_csr(pem, WEB, TD)


# ---------------------------------------------------------------------------------------------------
# refused: encoding


def test_garbage() -> None:
    refused("garbage", "Failed to parse CSR: no PEM-encoded data found")
    refused("", "Failed to parse CSR")
    refused(b"\xff\xfe", "Failed to parse CSR")
    refused("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "Failed to parse CSR")
    refused("caf\u00e9", "Failed to parse CSR: PEM must be ASCII")
    with pytest.raises(CSRError):
        validate_csr(None, WEB, TD)  # type: ignore[arg-type]


def test_wrong_pem_type_and_extra_blocks() -> None:
    good = make_csr(_KEY, WEB)
    key_pem = certs.private_key_to_pem(_KEY)
    refused(key_pem, "want exactly one CERTIFICATE REQUEST block")
    refused(good + good, "want exactly one CERTIFICATE REQUEST block")
    refused(good + key_pem, "want exactly one CERTIFICATE REQUEST block")


def test_oversized() -> None:
    refused(make_csr(_KEY, WEB) + " " * 20000, "larger than")


def test_bad_signature() -> None:
    good = x509.load_pem_x509_csr(make_csr(_KEY, WEB).encode())
    der = bytearray(good.public_bytes(serialization.Encoding.DER))
    # Flip a bit inside the signed part (the SAN URI text), leaving the signature as it was.
    i = der.find(b"svc/web")
    der[i + 4] ^= 0x01  # "web" -> "vb"-ish: the URI changes, the signature no longer matches
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    refused(tampered, "CSR signature is invalid")


# ---------------------------------------------------------------------------------------------------
# refused: keys


@pytest.mark.parametrize(
    ("key", "what"),
    [
        (ec.generate_private_key(ec.SECP521R1()), "EC curve secp521r1"),
        (ec.generate_private_key(ec.SECP256K1()), "EC curve secp256k1"),
        (rsa.generate_private_key(public_exponent=65537, key_size=1024), "RSA 1024 bits"),
        (ed25519.Ed25519PrivateKey.generate(), "Ed25519PublicKey"),
    ],
    ids=["p521", "secp256k1", "rsa1024", "ed25519"],
)
def test_unsupported_keys(key: object, what: str) -> None:
    refused(build([uri(WEB.uri())], key), f"CSR key type is not supported: {what}")


# ---------------------------------------------------------------------------------------------------
# refused: SAN contents


def test_no_san_or_no_uri() -> None:
    refused(build(None), "CSR SAN contains an invalid number of URIs: 0")
    refused(build([x509.DNSName("web.service.consul")]), "CSR SAN contains an invalid number of URIs: 0")


def test_multiple_uris_cve_2022_40716() -> None:
    refused(build([uri(WEB.uri()), uri(DB.uri())]), "CSR SAN contains an invalid number of URIs: 2")
    refused(build([uri(WEB.uri()), uri(WEB.uri())]), "CSR SAN contains an invalid number of URIs: 2")
    refused(build([uri(DB.uri()), uri(WEB.uri())]), "CSR SAN contains an invalid number of URIs: 2")


def test_email() -> None:
    refused(build([uri(WEB.uri()), x509.RFC822Name("a@example.com")]),
            "CSR SAN does not allow specifying email addresses")


def test_other_name_types() -> None:
    refused(build([uri(WEB.uri()), x509.RegisteredID(x509.ObjectIdentifier("1.2.3.4"))]),
            "CSR SAN contains unsupported name types: RegisteredID")
    dn = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "db")])
    refused(build([uri(WEB.uri()), x509.DirectoryName(dn)]),
            "CSR SAN contains unsupported name types: DirectoryName")


def test_dns_and_ip_not_allowed_by_default() -> None:
    refused(build([uri(WEB.uri()), x509.DNSName("server.dc1.consul")]),
            "CSR SAN requests a DNS name that is not allowed: 'server.dc1.consul'")
    refused(build([uri(WEB.uri()), x509.IPAddress(ipaddress.ip_address("10.0.0.1"))]),
            "CSR SAN requests an IP address that is not allowed: 10.0.0.1")
    refused(build([uri(WEB.uri()), x509.DNSName("evil")]), "not allowed",
            allowed_dns_sans={"localhost"})


@pytest.mark.parametrize(
    "bad_uri",
    [
        "http://example.com/ns/default/dc/dc1/svc/web",
        f"spiffe://{TD}/ns/default/dc/dc1/svc/%77eb",
        f"spiffe://{TD}/ns/default/dc/dc1/svc/web/",
        f"spiffe://{TD}/ns/default/dc/dc1/svc/web?x",
        f"spiffe://{TD.upper()}/ns/default/dc/dc1/svc/web",
        f"spiffe://{TD}/ap/default/ns/default/dc/dc1/svc/web",
        f"spiffe://user@{TD}/ns/default/dc/dc1/svc/web",
    ],
)
def test_uri_that_does_not_parse(bad_uri: str) -> None:
    refused(build([uri(bad_uri)]), "CSR SAN URI is not a valid SPIFFE ID")


def test_foreign_trust_domain() -> None:
    foreign = ServiceIdentity("11111111-2222-3333-4444-555555555555.consul", "default", "dc1", "web")
    refused(build([uri(foreign.uri())]),
            f"SPIFFE ID in CSR from a different trust domain: {foreign.trust_domain}, we are {TD}")


def test_identity_not_the_expected_one() -> None:
    refused(make_csr(_KEY, WEB), "SPIFFE ID in CSR does not match the requested identity", expected=DB)
    other_ns = ServiceIdentity(TD, "team-a", "dc1", "web")
    refused(make_csr(_KEY, other_ns), "does not match the requested identity")
    other_part = ServiceIdentity(TD, "default", "dc1", "web", partition="p1")
    refused(make_csr(_KEY, other_part), "does not match the requested identity")
    refused(make_csr(_KEY, ServiceIdentity(TD, "default", "dc2", "web")),
            "SPIFFE ID in CSR from a different datacenter: dc2, we are dc1")
    refused(make_csr(_KEY, AgentIdentity(TD, "dc1", "node-2")), "does not match", expected=NODE)


def test_identity_kind_mismatch() -> None:
    refused(make_csr(_KEY, NODE), "SPIFFE ID in CSR must be a service ID")
    refused(make_csr(_KEY, WEB), "SPIFFE ID in CSR must be an agent ID", expected=NODE)
    refused(build([uri(f"spiffe://{TD}")]), "SPIFFE ID in CSR must be a service or agent ID")
    refused(build([uri(f"spiffe://{TD}/agent/server/dc/dc1")]), "SPIFFE ID in CSR must be a service or agent ID")


def test_ca_request() -> None:
    refused(build([uri(WEB.uri())], extra=[x509.BasicConstraints(ca=True, path_length=None)]),
            "CSR must not request a CA certificate")
    # Asking for CA:false is harmless (and never copied).
    validate_csr(build([uri(WEB.uri())], extra=[x509.BasicConstraints(ca=False, path_length=None)]), WEB, TD)


def test_caller_mistakes_are_not_csr_errors() -> None:
    with pytest.raises(ValueError) as exc:
        validate_csr(make_csr(_KEY, WEB), WEB, "other.consul")
    assert not isinstance(exc.value, CSRError)
    with pytest.raises(TypeError):
        validate_csr(make_csr(_KEY, WEB), "web", TD)  # type: ignore[arg-type]


def test_make_csr_refuses_non_leaf_identities() -> None:
    with pytest.raises(ValueError):
        make_csr(_KEY, f"spiffe://{TD}")
    with pytest.raises(ValueError):
        make_csr(_KEY, f"spiffe://{TD}/agent/server/dc/dc1")
