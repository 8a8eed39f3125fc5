"""The CA's replicated state and its transitions: bootstrap, leaf signing, rotation with cross-signing,
pruning, auto-rotation and expiry warnings.

Every operation takes the current ``CAState`` plus ``now`` and a random byte source and returns a new
state or a value; nothing reads a clock, does IO or keeps globals, so every replica computes the same
thing from the same log (agent/connect/ca/provider_consul.go, agent/consul/leader_connect_ca.go).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from cryptography import x509

from ca import certs
from ca.certs import RandomBytes
from ca.csr import check_csr
from ca.provider.config import CAConfig, CAConfigError
from ca.spiffe import (
    AgentIdentity,
    InvalidSpiffeURI,
    ServiceIdentity,
    SigningIdentity,
    parse_uri,
    trust_domain_from_cluster_id,
)
from registry.gocompat import format_go_duration, format_go_time

__all__ = [
    "AUTO_ROTATE_FRACTION",
    "AUTO_ROTATE_MIN_LEAF_TTL_MULTIPLE",
    "EXPIRY_WARNING_THRESHOLD",
    "PRUNE_LEAF_TTL_MULTIPLE",
    "ROOT_NAME",
    "CAError",
    "CARoot",
    "CAState",
    "ExpiryWarning",
    "LeafResult",
    "check_signer",
    "expiry_warnings",
    "identity_from_uri",
    "initialize",
    "needs_auto_rotation",
    "prune",
    "rotate",
    "sign_leaf",
    "update_config",
]

ROOT_NAME = "Consul CA Primary Cert"
# Consul: an inactive root is dropped once it has been inactive for 2 x LeafCertTTL.
PRUNE_LEAF_TTL_MULTIPLE = 2
AUTO_ROTATE_FRACTION = 0.2
AUTO_ROTATE_MIN_LEAF_TTL_MULTIPLE = 3
EXPIRY_WARNING_THRESHOLD = timedelta(days=30)


class CAError(Exception):
    """The CA cannot do what was asked in its current state (e.g. the active root has expired)."""


def _utc(now: datetime) -> datetime:
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    return now.astimezone(UTC)


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


def identity_from_uri(uri: str) -> ServiceIdentity | AgentIdentity:
    """Parse a leaf identity URI (service or agent) strictly; raise InvalidSpiffeURI otherwise."""
    ident = parse_uri(uri)
    if not isinstance(ident, ServiceIdentity | AgentIdentity):
        raise InvalidSpiffeURI("not a service or agent identity")
    return ident
