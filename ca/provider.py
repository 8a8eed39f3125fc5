"""Consul's built-in CA provider as a pure state machine over immutable values.

The replicated store keeps one ``CAState``; every operation takes the current state plus ``now`` and a
random byte source and returns either a new state (initialize, rotate, update_config, prune) or a
value (sign_leaf, roots_response, ...). Nothing here reads a clock, does IO or keeps globals, so the
leader can run it inside a Raft apply and every replica computes the same thing from the same log.

Behaviour follows Consul (agent/connect/ca/provider_consul.go, agent/consul/leader_connect_ca.go,
agent/structs/connect_ca.go):

- the primary's root signs leaves directly; roots are listed by ``/v1/connect/ca/roots``;
- rotation makes a new root, has the old active root cross-sign it, ships the cross-signed certificate
  in the new root's ``IntermediateCerts`` (so new leaves chain to the old root too), marks the old
  root inactive but still trusted, and drops it once every leaf it signed has expired (Consul: after
  2 x LeafCertTTL);
- CA configuration uses Consul's keys, defaults and validation messages.

Private keys live only in ``CAState`` / ``CARoot`` (excluded from ``repr``) and in ``to_msgpack_dict``
(replicated state). No function that builds API output reads them. An inactive root's key is
discarded at rotation: its only remaining job, cross-signing its successor, is done by then.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509

from ca import certs
from ca.certs import RandomBytes
from ca.csr import check_csr
from ca.spiffe import (
    AgentIdentity,
    InvalidSpiffeURI,
    ServiceIdentity,
    SigningIdentity,
    parse_uri,
    trust_domain_from_cluster_id,
)
from registry.gocompat import format_go_duration, format_go_time, parse_go_duration

__all__ = [
    "CAConfig",
    "CAConfigError",
    "CAError",
    "CARoot",
    "CAState",
    "ExpiryWarning",
    "LeafResult",
    "ca_configuration_response",
    "check_signer",
    "expiry_warnings",
    "format_go_duration",
    "format_go_time",
    "from_msgpack_dict",
    "identity_from_uri",
    "initialize",
    "issued_cert_response",
    "needs_auto_rotation",
    "parse_ca_configuration",
    "parse_go_duration",
    "prune",
    "roots_pem",
    "roots_response",
    "rotate",
    "sign_leaf",
    "to_msgpack_dict",
    "update_config",
]

PROVIDER_CONSUL = "consul"
ROOT_NAME = "Consul CA Primary Cert"
MIN_LEAF_CERT_TTL = timedelta(hours=1)
MAX_LEAF_CERT_TTL = timedelta(hours=8760)
# Consul checks intermediates hourly; 3h leaves time to renew one (structs.CommonCAProviderConfig).
MIN_INTERMEDIATE_CERT_TTL = timedelta(hours=3)
# Our own rule (Consul has none): a root must outlive several leaf lifetimes, or auto-rotation would
# fire again at once and retired roots could expire before the leaves they signed.
ROOT_TO_LEAF_TTL_MIN_RATIO = 4
# Consul: an inactive root is dropped once it has been inactive for 2 x LeafCertTTL.
PRUNE_LEAF_TTL_MULTIPLE = 2
AUTO_ROTATE_FRACTION = 0.2
AUTO_ROTATE_MIN_LEAF_TTL_MULTIPLE = 3
EXPIRY_WARNING_THRESHOLD = timedelta(days=30)
MSGPACK_VERSION = 1


class CAError(Exception):
    """The CA cannot do what was asked in its current state (e.g. the active root has expired)."""


class CAConfigError(ValueError):
    """Invalid CA configuration; the message says which value and what is accepted."""


def _utc(now: datetime) -> datetime:
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    return now.astimezone(UTC)


# --------------------------------------------------------------------------------------------------
# Configuration


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
            if not _same_public_key(cert.public_key(), certs.private_key_from_pem(self.private_key)):
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


def _same_public_key(a: certs.PublicKey | certs.PrivateKey, b: certs.PublicKey | certs.PrivateKey) -> bool:
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


# --------------------------------------------------------------------------------------------------
# State


@dataclass(frozen=True)
class CARoot:
    """One trusted root. ``private_key_pem`` is set only on the active root and never leaves this
    state except through ``to_msgpack_dict``."""

    id: str
    name: str
    serial: int
    signing_key_id: str
    external_trust_domain: str
    not_before: datetime
    not_after: datetime
    root_cert_pem: str
    intermediate_certs: tuple[str, ...]
    active: bool
    private_key_type: str
    private_key_bits: int
    private_key_pem: str = field(default="", repr=False)
    rotated_out_at: datetime | None = None
    # When an inactive root stops being trusted: rotation time + 2 x the longest leaf TTL in force.
    prune_after: datetime | None = None
    # True if the operator supplied this root (PrivateKey + RootCert); we cannot renew those ourselves.
    external: bool = False
    create_index: int = 0
    modify_index: int = 0

    def certificate(self) -> x509.Certificate:
        return certs.cert_from_pem(self.root_cert_pem)


@dataclass(frozen=True)
class CAState:
    """Everything the built-in CA needs, as one replicated value. Exactly one root is active."""

    cluster_id: str
    trust_domain: str
    config: CAConfig
    roots: tuple[CARoot, ...]
    config_create_index: int = 0
    config_modify_index: int = 0

    def __post_init__(self) -> None:
        active = [r for r in self.roots if r.active]
        if len(active) != 1:
            raise CAError(f"CA state must have exactly one active root, has {len(active)}")
        if not active[0].private_key_pem:
            raise CAError("the active root has no private key")
        if trust_domain_from_cluster_id(self.cluster_id) != self.trust_domain:
            raise CAError("trust domain does not match the cluster ID")

    @functools.cached_property
    def active_root(self) -> CARoot:  # the state is immutable, so this is found once
        return next(r for r in self.roots if r.active)


@dataclass(frozen=True, slots=True)
class LeafResult:
    """A signed leaf. ``cert_pem`` is the leaf alone; ``chain_pem`` is the leaf followed by the active
    root's intermediates (the cross-signed root after a rotation), which is what Consul returns as
    ``CertPEM`` and what a proxy should present."""

    cert_pem: str
    chain_pem: str
    serial: int
    serial_colon: str
    valid_after: datetime
    valid_before: datetime
    identity: ServiceIdentity | AgentIdentity
    uri: str
    root_id: str
    signing_key_id: str


@dataclass(frozen=True)
class ExpiryWarning:
    root_id: str
    name: str
    not_after: datetime
    remaining: timedelta
    expired: bool
    message: str


def _uid(rng: RandomBytes, n: int = 8) -> str:
    # Consul's CompactUID: a short lowercase alphanumeric tag that makes each root's CN unique.
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
    return "".join(alphabet[b % 36] for b in rng(n))


def _make_root(
    cluster_id: str,
    trust_domain: str,
    config: CAConfig,
    now: datetime,
    rng: RandomBytes,
    index: int,
) -> CARoot:
    """A new active root per ``config``: generated, built from the operator's key, or the operator's
    own certificate (validated to be a root for this trust domain)."""
    external = bool(config.root_cert)
    if config.private_key:
        key = certs.private_key_from_pem(config.private_key)
    else:
        key = certs.generate_key(config.private_key_type, config.private_key_bits)
    if external:
        cert = certs.cert_from_pem(config.root_cert)
        _check_external_root(cert, trust_domain, now)
    else:
        cn = f"pri-{_uid(rng)}.consul.ca.{cluster_id[:8]}.consul"
        cert = certs.build_root(
            key, cluster_id, trust_domain, certs.new_root_serial(rng), now, config.root_ttl, cn
        )
    kind, bits = certs.key_info(key)
    return CARoot(
        id=certs.fingerprint_sha1_colon(cert),
        name=ROOT_NAME,
        serial=cert.serial_number,
        signing_key_id=certs.key_id_colon(key),
        external_trust_domain=cluster_id,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        root_cert_pem=certs.cert_to_pem(cert),
        intermediate_certs=(),
        active=True,
        private_key_type=kind,
        private_key_bits=bits,
        private_key_pem=certs.private_key_to_pem(key),
        external=external,
        create_index=index,
        modify_index=index,
    )


def _check_external_root(cert: x509.Certificate, trust_domain: str, now: datetime) -> None:
    uris = certs.spiffe_uris(cert)
    want = SigningIdentity(trust_domain).uri()
    if uris != [want]:
        raise CAConfigError(f"RootCert must have exactly one URI SAN {want!r}, has {uris!r}")
    if cert.serial_number >= 1 << 64:
        # Consul's roots API carries SerialNumber as uint64.
        raise CAConfigError("RootCert serial number does not fit in 64 bits")
    if cert.not_valid_after_utc <= now:
        raise CAConfigError("RootCert has expired")


def initialize(
    cluster_id: str, config: CAConfig, now: datetime, rng: RandomBytes, *, index: int = 0
) -> CAState:
    """Bootstrap the CA: one active root for ``<cluster_id>.consul``. ``index`` (the Raft index of the
    bootstrap entry) stamps CreateIndex/ModifyIndex."""
    now = _utc(now)
    trust_domain = trust_domain_from_cluster_id(cluster_id)
    root = _make_root(cluster_id, trust_domain, config, now, rng, index)
    return CAState(
        cluster_id=cluster_id,
        trust_domain=trust_domain,
        config=config,
        roots=(root,),
        config_create_index=index,
        config_modify_index=index,
    )


def sign_leaf(
    state: CAState,
    csr_pem: str | bytes,
    identity: ServiceIdentity | AgentIdentity,
    now: datetime,
    ttl: timedelta | None,
    rng: RandomBytes,
    *,
    allowed_dns_sans: Collection[str] = (),
    allowed_ip_sans: Collection[ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
    signer: certs.LeafTemplate | None = None,
) -> LeafResult:
    """Sign ``csr_pem`` for ``identity`` with the active root.

    ``identity`` is what the caller authorised (ACL service:write on the service, node:write on the
    node); the CSR must name exactly it (ca.csr.validate_csr; raises CSRError otherwise). ``ttl``
    defaults to the configured LeafCertTTL. NotBefore = now - 1 minute; NotAfter = now + ttl, clamped
    to the root's expiry. The serial is 126 random bits drawn from ``rng``. DNS / IP SANs in the CSR
    are copied only if listed in ``allowed_*``. Raises CAError if the active root has expired.
    The state does not change (serials are random, not a counter), so no new state is returned.

    ``signer`` is a LeafTemplate of the active root's key and certificate (a caller's cache, to skip
    parsing PEM and encoding the fixed fields on every signature); check it once with ``check_signer``.
    """
    now = _utc(now)
    root = state.active_root
    if root.not_after <= now:
        raise CAError(
            f"root expired: certificate expired, expiration date: {format_go_time(root.not_after)}"
        )
    checked = check_csr(
        csr_pem,
        identity,
        state.trust_domain,
        allowed_dns_sans=allowed_dns_sans,
        allowed_ip_sans=allowed_ip_sans,
    )
    if ttl is None:
        ttl = state.config.leaf_ttl
    if ttl <= timedelta(0):
        raise ValueError("leaf TTL must be positive")
    if signer is None:
        signer = certs.LeafTemplate(certs.private_key_from_pem(root.private_key_pem), root.certificate())
    elif signer.serial != root.serial:
        # A cheap guard against handing in another root's material (serials are 62 random bits);
        # whoever builds the cache checks the key and certificate in full once (see check_signer).
        raise ValueError("signer is not the active root's key and certificate")
    serial = certs.new_serial(rng)
    # Certificates carry whole seconds.
    not_before = (now - certs.CLOCK_SKEW_ALLOWANCE).replace(microsecond=0)
    not_after = min(now + ttl, root.not_after).replace(microsecond=0)
    leaf = signer.issue(
        checked.spki,
        checked.is_rsa,
        serial,
        not_before,
        not_after,
        certs.general_names(checked.uri, checked.dns_sans, checked.ip_sans),
    )
    leaf_pem = certs.der_to_pem(leaf, "CERTIFICATE")
    return LeafResult(
        cert_pem=leaf_pem,
        chain_pem=certs.pem_bundle([leaf_pem, *root.intermediate_certs]),
        serial=serial,
        serial_colon=certs.serial_colon(serial),
        valid_after=not_before,
        valid_before=not_after,
        identity=identity,
        uri=checked.uri,
        root_id=root.id,
        signing_key_id=root.signing_key_id,
    )


def check_signer(state: CAState, signer: certs.LeafTemplate) -> None:
    """Raise ValueError unless ``signer`` is exactly the active root's key and certificate."""
    root = state.active_root
    key, cert = signer.signing_key, signer.signing_cert
    if certs.fingerprint_sha1_colon(cert) != root.id or certs.key_id_colon(key) != root.signing_key_id:
        raise ValueError("signer is not the active root's key and certificate")


def rotate(
    state: CAState, new_config: CAConfig, now: datetime, rng: RandomBytes, *, index: int = 0
) -> CAState:
    """Replace the active root with a new one made per ``new_config``.

    The old active root cross-signs the new root (``IntermediateCerts`` of the new root), so leaves of
    the new root also verify for peers that still trust only the old root. The old root stays in the
    roots list, inactive and trusted, until ``prune`` drops it 2 x the longest leaf TTL later; its
    private key is discarded now. If ``new_config`` yields the very certificate already active (same
    operator-supplied root), only the configuration changes. An expired old root is not asked to
    cross-sign (nobody can validly trust it any more).
    """
    now = _utc(now)
    old = state.active_root
    new_root = _make_root(state.cluster_id, state.trust_domain, new_config, now, rng, index)
    if new_root.id == old.id:
        return replace(state, config=new_config, config_modify_index=index or state.config_modify_index)

    longest_leaf_ttl = max(state.config.leaf_ttl, new_config.leaf_ttl)
    keep_for = PRUNE_LEAF_TTL_MULTIPLE * longest_leaf_ttl
    if old.not_after > now:
        cross = certs.build_cross_signed(
            new_root.certificate(),
            certs.private_key_from_pem(old.private_key_pem),
            old.certificate(),
            now,
            serial=certs.new_root_serial(rng),
            # Consul uses 7 days; with long leaf TTLs the cross-signed cert must live as long as the
            # old root stays trusted, so it covers the whole keep window.
            ttl=max(certs.CROSS_SIGNED_DEFAULT_TTL, keep_for),
        )
        new_root = replace(new_root, intermediate_certs=(certs.cert_to_pem(cross),))

    retired = replace(
        old,
        active=False,
        private_key_pem="",
        rotated_out_at=now,
        prune_after=now + keep_for,
        modify_index=index or old.modify_index,
    )
    roots = tuple(retired if r.id == old.id else r for r in state.roots) + (new_root,)
    return replace(
        state,
        config=new_config,
        roots=roots,
        config_modify_index=index or state.config_modify_index,
    )


def update_config(
    state: CAState, new_config: CAConfig, now: datetime, rng: RandomBytes, *, index: int = 0
) -> CAState:
    """Apply a configuration change: rotate if the key material changed (private key, root cert, key
    type or bits, as Consul's provider ID does), otherwise only replace the configuration."""
    if new_config.key_material() != state.config.key_material():
        return rotate(state, new_config, now, rng, index=index)
    return replace(state, config=new_config, config_modify_index=index or state.config_modify_index)


def prune(state: CAState, now: datetime, *, index: int = 0) -> CAState:
    """Drop inactive roots whose leaves have all expired (``prune_after`` passed, or the root itself
    expired) and intermediates that have expired. Returns ``state`` itself when nothing changes."""
    now = _utc(now)
    kept: list[CARoot] = []
    changed = False
    for root in state.roots:
        if not root.active and (
            (root.prune_after is not None and root.prune_after <= now) or root.not_after <= now
        ):
            changed = True
            continue
        live = tuple(
            pem for pem in root.intermediate_certs if certs.cert_from_pem(pem).not_valid_after_utc > now
        )
        if live != root.intermediate_certs:
            root = replace(root, intermediate_certs=live, modify_index=index or root.modify_index)
            changed = True
        kept.append(root)
    if not changed:
        return state
    return replace(state, roots=tuple(kept))


def needs_auto_rotation(
    state: CAState,
    now: datetime,
    *,
    fraction: float = AUTO_ROTATE_FRACTION,
    min_remaining: timedelta | None = None,
) -> bool:
    """True when the active root should be replaced: less than ``fraction`` of its lifetime is left,
    or less than ``min_remaining`` (default 3 x LeafCertTTL, so the retired root outlives the 2 x
    LeafCertTTL it stays trusted), whichever is larger; also true once it has expired.
    Operator-supplied roots are never auto-rotated (we hold no way to renew them); expiry_warnings
    still reports them."""
    now = _utc(now)
    root = state.active_root
    if root.external:
        return False
    if not 0 <= fraction < 1:
        raise ValueError("fraction must be in [0, 1)")
    floor = min_remaining if min_remaining is not None else (
        AUTO_ROTATE_MIN_LEAF_TTL_MULTIPLE * state.config.leaf_ttl
    )
    lifetime = root.not_after - root.not_before
    threshold = max(lifetime * fraction, floor)
    return root.not_after - now <= threshold


def expiry_warnings(
    state: CAState, now: datetime, threshold: timedelta = EXPIRY_WARNING_THRESHOLD
) -> list[ExpiryWarning]:
    """Warnings for the CA health check: the active root, if it expires within ``threshold`` (or has
    expired). Inactive roots and cross-signed certificates are short-lived by design and not reported."""
    now = _utc(now)
    root = state.active_root
    remaining = root.not_after - now
    if remaining > threshold:
        return []
    expired = remaining <= timedelta(0)
    when = format_go_time(root.not_after)
    if expired:
        msg = f"CA root certificate {root.id} expired at {when}; leaf certificates can no longer be signed"
    else:
        msg = (
            f"CA root certificate {root.id} expires in {format_go_duration(remaining)} (at {when}); "
            "rotate the CA (PUT /v1/connect/ca/configuration)"
        )
    return [ExpiryWarning(root.id, root.name, root.not_after, remaining, expired, msg)]


# --------------------------------------------------------------------------------------------------
# API output (no private material)


def _root_json(root: CARoot) -> dict[str, Any]:
    return {
        "ID": root.id,
        "Name": root.name,
        "SerialNumber": root.serial,
        "SigningKeyID": root.signing_key_id,
        "ExternalTrustDomain": root.external_trust_domain,
        "NotBefore": format_go_time(root.not_before),
        "NotAfter": format_go_time(root.not_after),
        "RootCert": certs.pem_bundle([root.root_cert_pem]),
        # Go marshals a nil slice as null; Consul shows null when a root has no intermediates.
        "IntermediateCerts": [certs.pem_bundle([p]) for p in root.intermediate_certs] or None,
        "Active": root.active,
        "PrivateKeyType": root.private_key_type,
        "PrivateKeyBits": root.private_key_bits,
        "CreateIndex": root.create_index,
        "ModifyIndex": root.modify_index,
    }


def roots_response(state: CAState) -> dict[str, Any]:
    """The JSON body of GET /v1/connect/ca/roots. Roots are ordered by ID, as Consul's state store
    iterates them."""
    return {
        "ActiveRootID": state.active_root.id,
        "TrustDomain": state.trust_domain,
        "Roots": [_root_json(r) for r in sorted(state.roots, key=lambda r: r.id)],
    }


def roots_pem(state: CAState) -> str:
    """The body of GET /v1/connect/ca/roots?pem=true: every root then its intermediates, as PEM."""
    pems: list[str] = []
    for r in sorted(state.roots, key=lambda r: r.id):
        pems.append(r.root_cert_pem)
        pems.extend(r.intermediate_certs)
    return certs.pem_bundle(pems)


def ca_configuration_response(state: CAState) -> dict[str, Any]:
    """The JSON body of GET /v1/connect/ca/configuration (PrivateKey filtered out, as Consul does)."""
    return {
        "Provider": state.config.provider,
        "Config": state.config.to_api_dict(),
        "State": None,
        "ForceWithoutCrossSigning": state.config.force_without_cross_signing,
        "CreateIndex": state.config_create_index,
        "ModifyIndex": state.config_modify_index,
    }


def issued_cert_response(result: LeafResult, *, private_key_pem: str = "", index: int = 0) -> dict[str, Any]:
    """Consul's IssuedCert JSON (GET /v1/agent/connect/ca/leaf/:service). The agent, which made the
    key, passes ``private_key_pem``; the server-side sign RPC leaves it empty (omitted, as Go's
    omitempty does)."""
    out: dict[str, Any] = {"SerialNumber": result.serial_colon, "CertPEM": result.chain_pem}
    if private_key_pem:
        out["PrivateKeyPEM"] = private_key_pem
    if isinstance(result.identity, ServiceIdentity):
        out["Service"] = result.identity.service
        out["ServiceURI"] = result.uri
    else:
        out["Agent"] = result.identity.node
        out["AgentURI"] = result.uri
    out["ValidAfter"] = format_go_time(result.valid_after)
    out["ValidBefore"] = format_go_time(result.valid_before)
    out["CreateIndex"] = index
    out["ModifyIndex"] = index
    return out


# --------------------------------------------------------------------------------------------------
# Replicated-store encoding (includes the private key: this is state, not API output)


def _ts(t: datetime | None) -> int | None:
    # Integer microseconds since the epoch: exact, compact, and msgpack-native.
    if t is None:
        return None
    return (t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _dt(v: int | None) -> datetime | None:
    if v is None:
        return None
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=v)


def to_msgpack_dict(state: CAState) -> dict[str, Any]:
    """A msgpack-ready dict (str keys, ints, strs, lists, bools, None) of the whole state."""
    c = state.config
    return {
        "v": MSGPACK_VERSION,
        "cluster_id": state.cluster_id,
        "trust_domain": state.trust_domain,
        "config": {
            "leaf_cert_ttl": c.leaf_cert_ttl,
            "intermediate_cert_ttl": c.intermediate_cert_ttl,
            "root_cert_ttl": c.root_cert_ttl,
            "rotation_period": c.rotation_period,
            "private_key_type": c.private_key_type,
            "private_key_bits": c.private_key_bits,
            "csr_max_per_second": c.csr_max_per_second,
            "csr_max_concurrent": c.csr_max_concurrent,
            "private_key": c.private_key,
            "root_cert": c.root_cert,
            "force_without_cross_signing": c.force_without_cross_signing,
            "provider": c.provider,
        },
        "config_create_index": state.config_create_index,
        "config_modify_index": state.config_modify_index,
        "roots": [
            {
                "id": r.id,
                "name": r.name,
                "serial": r.serial,
                "signing_key_id": r.signing_key_id,
                "external_trust_domain": r.external_trust_domain,
                "not_before": _ts(r.not_before),
                "not_after": _ts(r.not_after),
                "root_cert_pem": r.root_cert_pem,
                "intermediate_certs": list(r.intermediate_certs),
                "active": r.active,
                "private_key_type": r.private_key_type,
                "private_key_bits": r.private_key_bits,
                "private_key_pem": r.private_key_pem,
                "rotated_out_at": _ts(r.rotated_out_at),
                "prune_after": _ts(r.prune_after),
                "external": r.external,
                "create_index": r.create_index,
                "modify_index": r.modify_index,
            }
            for r in state.roots
        ],
    }


def from_msgpack_dict(data: Mapping[str, Any]) -> CAState:
    """Inverse of to_msgpack_dict. Re-checks what a corrupted or tampered store could break: the
    version, each root's ID against its certificate, and the active root's key against its cert."""
    if data.get("v") != MSGPACK_VERSION:
        raise CAError(f"unsupported CA state version {data.get('v')!r}")
    config = CAConfig(**dict(data["config"]))
    roots: list[CARoot] = []
    for r in data["roots"]:
        cert = certs.cert_from_pem(r["root_cert_pem"])
        if certs.fingerprint_sha1_colon(cert) != r["id"]:
            raise CAError(f"root {r['id']} does not match its certificate")
        if r["private_key_pem"]:
            key = certs.private_key_from_pem(r["private_key_pem"])
            if not _same_public_key(key, cert.public_key()):
                raise CAError(f"root {r['id']} private key does not match its certificate")
        roots.append(
            CARoot(
                id=r["id"],
                name=r["name"],
                serial=r["serial"],
                signing_key_id=r["signing_key_id"],
                external_trust_domain=r["external_trust_domain"],
                not_before=_dt(r["not_before"]),  # type: ignore[arg-type]
                not_after=_dt(r["not_after"]),  # type: ignore[arg-type]
                root_cert_pem=r["root_cert_pem"],
                intermediate_certs=tuple(r["intermediate_certs"]),
                active=r["active"],
                private_key_type=r["private_key_type"],
                private_key_bits=r["private_key_bits"],
                private_key_pem=r["private_key_pem"],
                rotated_out_at=_dt(r["rotated_out_at"]),
                prune_after=_dt(r["prune_after"]),
                external=r["external"],
                create_index=r["create_index"],
                modify_index=r["modify_index"],
            )
        )
    return CAState(
        cluster_id=data["cluster_id"],
        trust_domain=data["trust_domain"],
        config=config,
        roots=tuple(roots),
        config_create_index=data["config_create_index"],
        config_modify_index=data["config_modify_index"],
    )


def identity_from_uri(uri: str) -> ServiceIdentity | AgentIdentity:
    """Parse a leaf identity URI (service or agent) strictly; raise InvalidSpiffeURI otherwise."""
    ident = parse_uri(uri)
    if not isinstance(ident, ServiceIdentity | AgentIdentity):
        raise InvalidSpiffeURI("not a service or agent identity")
    return ident

