"""The CA state to and from the replicated store: a msgpack-ready dict, private keys included.

This is state, not API output. Decoding re-checks what a corrupted or tampered store could break
(version, each root's ID against its certificate, the active root's key against its certificate).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from ca import certs
from ca.provider.config import CAConfig, same_public_key
from ca.provider.model import CAError, CARoot, CAState

__all__ = ["MSGPACK_VERSION", "from_msgpack_dict", "to_msgpack_dict"]

MSGPACK_VERSION = 1


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
            if not same_public_key(key, cert.public_key()):
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
