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

The package follows those seams: ``config`` (CAConfig, its validation and Consul's texts), ``model``
(CAState, roots, signing, rotation, pruning), ``responses`` (Consul's JSON shapes) and ``codec`` (the
replicated-store encoding). Go's duration and time formats come from ``registry.gocompat`` and are
re-exported here for the callers that render CA times.
"""

from __future__ import annotations

from ca.provider.codec import from_msgpack_dict, to_msgpack_dict
from ca.provider.config import CAConfig, CAConfigError, parse_ca_configuration
from ca.provider.model import (
    CAError,
    CARoot,
    CAState,
    ExpiryWarning,
    LeafResult,
    check_signer,
    expiry_warnings,
    identity_from_uri,
    initialize,
    needs_auto_rotation,
    prune,
    rotate,
    sign_leaf,
    update_config,
)
from ca.provider.responses import ca_configuration_response, issued_cert_response, roots_pem, roots_response
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
