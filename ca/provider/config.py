"""The ``consul`` CA provider's configuration: Consul's keys, defaults, validation and texts.

Consul keeps the provider configuration as the raw map the operator sent (agent/structs/connect_ca.go,
``CAConfiguration``; ``ConsulCAProviderConfig`` for the built-in provider) and validates it when it is
set; the texts of the errors below are Consul's where Consul has them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from cryptography import x509

from ca import certs
from registry.gocompat import format_go_duration, parse_go_duration

__all__ = [
    "MAX_LEAF_CERT_TTL",
    "MIN_INTERMEDIATE_CERT_TTL",
    "MIN_LEAF_CERT_TTL",
    "PROVIDER_CONSUL",
    "ROOT_TO_LEAF_TTL_MIN_RATIO",
    "CAConfig",
    "CAConfigError",
    "parse_ca_configuration",
    "same_public_key",
]

PROVIDER_CONSUL = "consul"
MIN_LEAF_CERT_TTL = timedelta(hours=1)
MAX_LEAF_CERT_TTL = timedelta(hours=8760)
# Consul checks intermediates hourly; 3h leaves time to renew one (structs.CommonCAProviderConfig).
MIN_INTERMEDIATE_CERT_TTL = timedelta(hours=3)
# Our own rule (Consul has none): a root must outlive several leaf lifetimes, or auto-rotation would
# fire again at once and retired roots could expire before the leaves they signed.
ROOT_TO_LEAF_TTL_MIN_RATIO = 4


class CAConfigError(ValueError):
    """Invalid CA configuration; the message says which value and what is accepted."""


def _duration_field(name: str, value: str) -> timedelta:
    try:
        return parse_go_duration(value)
    except ValueError:
        raise CAConfigError(f"{name}: invalid duration {value!r}, want a Go duration such as \"72h\"") from None


@dataclass(frozen=True)
class CAConfig:
    """The ``consul`` provider's configuration, with Consul's defaults.

    Durations are kept as the strings the operator wrote (Consul stores the raw map and echoes it),
    and validated on construction. ``private_key`` / ``root_cert`` are an operator-supplied CA (both,
    or the key alone to have a root built from it); ``private_key`` never appears in ``repr`` or in
    API output.
    """

    leaf_cert_ttl: str = "72h"
    intermediate_cert_ttl: str = "8760h"
    root_cert_ttl: str = "87600h"
    rotation_period: str = "2160h"  # legacy key, unused by the consul provider; echoed back
    private_key_type: str = "ec"
    private_key_bits: int = 256
    csr_max_per_second: float = 50.0
    csr_max_concurrent: int = 0
    private_key: str = field(default="", repr=False)
    root_cert: str = ""
    force_without_cross_signing: bool = False
    provider: str = PROVIDER_CONSUL

    def __post_init__(self) -> None:
        self.validate()

    @property
    def leaf_ttl(self) -> timedelta:
        return _duration_field("LeafCertTTL", self.leaf_cert_ttl)

    @property
    def root_ttl(self) -> timedelta:
        return _duration_field("RootCertTTL", self.root_cert_ttl)

    @property
    def intermediate_ttl(self) -> timedelta:
        return _duration_field("IntermediateCertTTL", self.intermediate_cert_ttl)

    def key_material(self) -> tuple[str, str, str, int]:
        """What identifies the CA key; a change here means a new root (Consul's provider ID)."""
        return (self.private_key, self.root_cert, self.private_key_type, self.private_key_bits)

    def validate(self) -> None:
        if self.provider != PROVIDER_CONSUL:
            raise CAConfigError(
                f"CA provider {self.provider!r} is not supported: only the built-in \"consul\" provider is"
            )
        leaf = self.leaf_ttl
        if leaf < MIN_LEAF_CERT_TTL:
            raise CAConfigError(
                f"leaf cert TTL must be greater or equal than {format_go_duration(MIN_LEAF_CERT_TTL)}"
            )
        if leaf > MAX_LEAF_CERT_TTL:
            raise CAConfigError(f"leaf cert TTL must be less than {format_go_duration(MAX_LEAF_CERT_TTL)}")
        inter = self.intermediate_ttl
        if inter < MIN_INTERMEDIATE_CERT_TTL:
            raise CAConfigError("Intermediate Cert TTL must be greater or equal than 3h")
        if inter < 3 * leaf:
            raise CAConfigError(
                "Intermediate Cert TTL must be greater or equal than 3 * LeafCertTTL "
                f"(>={format_go_duration(3 * leaf)})."
            )
        if self.root_ttl < ROOT_TO_LEAF_TTL_MIN_RATIO * leaf:
            raise CAConfigError(
                f"Root Cert TTL must be greater or equal than {ROOT_TO_LEAF_TTL_MIN_RATIO} * LeafCertTTL "
                f"(>={format_go_duration(ROOT_TO_LEAF_TTL_MIN_RATIO * leaf)}), so roots can be rotated "
                "before the leaves they signed outlive them."
            )
        _duration_field("RotationPeriod", self.rotation_period)
        if self.private_key_type == "ec":
            if self.private_key_bits not in (256, 384):
                raise CAConfigError("EC key length must be one of (256, 384) bits")
        elif self.private_key_type == "rsa":
            if self.private_key_bits not in (2048, 4096):
                raise CAConfigError("RSA key length must be 2048 or 4096 bits")
        else:
            raise CAConfigError("private key type must be either 'ec' or 'rsa'")
        if not self.csr_max_per_second >= 0:  # also rejects NaN
            raise CAConfigError("CSRMaxPerSecond must be zero (no limit) or positive")
        if self.csr_max_concurrent < 0:
            raise CAConfigError("CSRMaxConcurrent must be zero (no limit) or positive")
        if self.root_cert and not self.private_key:
            raise CAConfigError("must provide a private key when providing a root cert")
        if self.private_key:
            try:
                key = certs.private_key_from_pem(self.private_key)
            except ValueError as err:
                raise CAConfigError(f"PrivateKey: cannot parse PEM private key: {err}") from None
            kind, bits = certs.key_info(key)
            if (kind, bits) not in (("ec", 256), ("ec", 384), ("rsa", 2048), ("rsa", 4096)):
                raise CAConfigError(f"PrivateKey: unsupported key {kind} {bits} bits")
        if self.root_cert:
            try:
                cert = certs.cert_from_pem(self.root_cert)
            except ValueError as err:
                raise CAConfigError(f"RootCert: cannot parse PEM certificate: {err}") from None
            if not same_public_key(cert.public_key(), certs.private_key_from_pem(self.private_key)):
                raise CAConfigError("RootCert: certificate does not match PrivateKey")
            try:
                bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
            except x509.ExtensionNotFound:
                bc = None
            if bc is None or not bc.ca:
                raise CAConfigError("RootCert: certificate is not a CA certificate")

    def to_api_dict(self) -> dict[str, Any]:
        """The ``Config`` map as Consul's GET /v1/connect/ca/configuration shows it (no PrivateKey)."""
        out: dict[str, Any] = {
            "LeafCertTTL": self.leaf_cert_ttl,
            "IntermediateCertTTL": self.intermediate_cert_ttl,
            "RootCertTTL": self.root_cert_ttl,
            "RotationPeriod": self.rotation_period,
            "PrivateKeyType": self.private_key_type,
            "PrivateKeyBits": self.private_key_bits,
            "CSRMaxPerSecond": _json_number(self.csr_max_per_second),
            "CSRMaxConcurrent": self.csr_max_concurrent,
        }
        if self.root_cert:
            out["RootCert"] = self.root_cert
        return out


def _json_number(v: float) -> int | float:
    # Go prints float32(50) as 50; Python's json would print 50.0.
    return int(v) if float(v).is_integer() else v


def same_public_key(a: certs.PublicKey | certs.PrivateKey, b: certs.PublicKey | certs.PrivateKey) -> bool:
    """Whether two keys (public or private) are halves of one key pair, compared by their key IDs."""
    return certs.key_id(a) == certs.key_id(b)


# Config keys by their case- and underscore-insensitive spelling: Consul decodes the map with
# mapstructure (case-insensitive) and the agent config uses snake_case.
_CONFIG_KEYS = {
    "leafcertttl": "leaf_cert_ttl",
    "intermediatecertttl": "intermediate_cert_ttl",
    "rootcertttl": "root_cert_ttl",
    "rotationperiod": "rotation_period",
    "privatekeytype": "private_key_type",
    "privatekeybits": "private_key_bits",
    "csrmaxpersecond": "csr_max_per_second",
    "csrmaxconcurrent": "csr_max_concurrent",
    "privatekey": "private_key",
    "rootcert": "root_cert",
}
_STR_FIELDS = {
    "leaf_cert_ttl": "LeafCertTTL",
    "intermediate_cert_ttl": "IntermediateCertTTL",
    "root_cert_ttl": "RootCertTTL",
    "rotation_period": "RotationPeriod",
    "private_key_type": "PrivateKeyType",
    "private_key": "PrivateKey",
    "root_cert": "RootCert",
}


def _coerce_int(name: str, v: Any) -> int:
    # Weakly typed like Consul's decoder: 256, 256.0 and "256" are all 256.
    if isinstance(v, bool):
        raise CAConfigError(f"{name} must be a number")
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            pass
    raise CAConfigError(f"{name} must be an integer, got {v!r}")


def _coerce_float(name: str, v: Any) -> float:
    if isinstance(v, bool):
        raise CAConfigError(f"{name} must be a number")
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            pass
    raise CAConfigError(f"{name} must be a number, got {v!r}")


def parse_ca_configuration(body: Mapping[str, Any]) -> CAConfig:
    """Validate a PUT /v1/connect/ca/configuration body (``{"Provider", "Config", "ForceWithoutCrossSigning"}``).

    Keys match case-insensitively, and ``Config`` keys also in snake_case (leaf_cert_ttl). Keys missing
    from ``Config`` take Consul's defaults: like Consul, a PUT replaces the whole map rather than
    merging into the current one. Unknown keys are ignored, as Consul's decoder ignores them.
    Raises CAConfigError with Consul's wording.
    """
    if not isinstance(body, Mapping):
        raise CAConfigError("CA configuration must be a JSON object")
    top = {str(k).lower().replace("_", ""): v for k, v in body.items()}
    provider = top.get("provider", PROVIDER_CONSUL)
    if not isinstance(provider, str):
        raise CAConfigError("Provider must be a string")
    raw = top.get("config")
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise CAConfigError("Config must be a JSON object")
    force = top.get("forcewithoutcrosssigning", False)
    if not isinstance(force, bool):
        raise CAConfigError("ForceWithoutCrossSigning must be a boolean")

    fields: dict[str, Any] = {}
    for key, value in raw.items():
        attr = _CONFIG_KEYS.get(str(key).lower().replace("_", ""))
        if attr is None:
            continue
        if attr in _STR_FIELDS:
            if not isinstance(value, str):
                raise CAConfigError(f"{_STR_FIELDS[attr]} must be a string, got {value!r}")
            fields[attr] = value
        elif attr == "private_key_bits":
            fields[attr] = _coerce_int("PrivateKeyBits", value)
        elif attr == "csr_max_concurrent":
            fields[attr] = _coerce_int("CSRMaxConcurrent", value)
        elif attr == "csr_max_per_second":
            fields[attr] = _coerce_float("CSRMaxPerSecond", value)
    return CAConfig(**fields, provider=provider.lower() or PROVIDER_CONSUL,
                    force_without_cross_signing=force)
