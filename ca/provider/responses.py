"""Consul's JSON shapes for the CA: /v1/connect/ca/roots (JSON and PEM), /v1/connect/ca/configuration,
and the IssuedCert of a signed leaf.

Built from the state's public parts only: no function here reads a private key (agent/structs/
connect_ca.go ``IndexedCARoots``, ``CARoot``, ``IssuedCert``; Go's time.Time and nil-slice JSON forms).
"""

from __future__ import annotations

from typing import Any

from ca import certs
from ca.provider.model import CARoot, CAState, LeafResult
from ca.spiffe import ServiceIdentity
from registry.gocompat import format_go_time

__all__ = ["ca_configuration_response", "issued_cert_response", "roots_pem", "roots_response"]


def _root_json(root: CARoot) -> dict[str, Any]:
    """Consul's CARoot JSON, field for field, plus ``RotatedOutAt`` on a root that was rotated out.

    Consul keeps a rotated-out root in the list (``Active: false``) until it has been out for
    2 x LeafCertTTL (leader_connect_ca.go ``pruneCARoots``) and records when it went out in
    ``CARoot.RotatedOutAt``, but marks that field ``json:"-"``: its API never says when a rotation
    happened. Proconsul publishes it, on rotated-out roots only, so the web UI (a client of this API)
    can show the rotation history; the active root's JSON stays exactly Consul's, and clients that
    decode into Consul's struct ignore the extra field."""
    out: dict[str, Any] = {
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
    if not root.active and root.rotated_out_at is not None:
        # After Active, where Consul's struct declares it.
        items = list(out.items())
        items.insert(list(out).index("Active") + 1, ("RotatedOutAt", format_go_time(root.rotated_out_at)))
        out = dict(items)
    return out


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
