"""Certificates for the cluster's own TLS (agent RPC, Raft, HTTPS), as ``consul tls`` makes them.

Not the Connect CA: this is the operator's agent CA, created once with ``proconsul tls ca create`` and
used to sign server and client certificates (``proconsul tls cert create -server|-client``). Shapes
follow Consul's command/tls and tlsutil: EC P-256 keys, a CA named "Consul Agent CA <serial>", server
certificates for ``server.<dc>.<domain>`` + ``localhost`` + 127.0.0.1, client certificates for
``client.<dc>.<domain>``, both usable for server and client authentication; NotBefore backdated one
minute for clock skew.

Pure module: ``now`` and keys are arguments; serials come from the caller's random source.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca import certs
from ca.certs import PrivateKey, RandomBytes

__all__ = ["agent_ca", "agent_cert", "new_agent_serial"]

CA_DEFAULT_DAYS = 1825
CERT_DEFAULT_DAYS = 365


def new_agent_serial(rng: RandomBytes) -> int:
    """A positive random serial below 2**128, as Consul's GenerateSerialNumber draws one."""
    return (int.from_bytes(rng(16), "big") >> 1) or 1


def agent_ca(
    key: PrivateKey,
    serial: int,
    now: datetime,
    *,
    days: int = CA_DEFAULT_DAYS,
    common_name: str = "",
    permitted_dns: Sequence[str] = (),
) -> x509.Certificate:
    """A self-signed agent CA. With ``permitted_dns`` it carries a critical name constraint so it can
    only vouch for those DNS names (Consul's -name-constraint)."""
    if days <= 0:
        raise ValueError("days must be positive")
    name = x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Proconsul"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name or f"Consul Agent CA {serial}"),
    ])  # fmt: skip
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - certs.CLOCK_SKEW_ALLOWANCE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .add_extension(x509.SubjectKeyIdentifier(certs.key_id(key)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier(certs.key_id(key), None, None), critical=False
        )
    )
    if permitted_dns:
        builder = builder.add_extension(
            x509.NameConstraints(permitted_subtrees=[x509.DNSName(d) for d in permitted_dns], excluded_subtrees=None),
            critical=True,
        )
    return builder.sign(key, certs.signature_hash(key))


def agent_cert(
    key: PrivateKey,
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    serial: int,
    now: datetime,
    *,
    name: str,
    dns_names: Iterable[str],
    ip_addresses: Iterable[ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
    days: int = CERT_DEFAULT_DAYS,
    client_only: bool = False,
) -> x509.Certificate:
    """A server, client or CLI certificate signed by the agent CA. ``client_only`` (the CLI
    certificate) leaves out serverAuth."""
    if days <= 0:
        raise ValueError("days must be positive")
    if certs.key_id(ca_key) != certs.key_id(ca_cert.public_key()):
        raise ValueError("the CA key does not belong to the CA certificate")
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client_only else [
        ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    sans += [x509.IPAddress(ip) for ip in ip_addresses]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - certs.CLOCK_SKEW_ALLOWANCE)
        .not_valid_after(min(now + timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=True, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier(certs.key_id(key)), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier(certs.key_id(ca_key), None, None), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, certs.signature_hash(ca_key))
