"""Inbound authorization in process: the intentions that name this service as destination, and the
default for when none matches. Pure: no IO.

Where the data comes from (``proxy.Proxy`` follows both with blocking queries):

- ``GET /v1/connect/intentions/match?by=destination&name=<service>``: what Consul's proxycfg follows for
  an Envoy sidecar (its ``IntentionMatch`` watch, by destination), so the sidecar holds exactly the
  intentions that can decide a connection to it, ordered by precedence. A service identity's
  ``service:write`` grants the ``intentions:read`` it needs. ``/v1/agent/connect/authorize`` (what Consul's
  built-in proxy calls) is an HTTP round trip per connection; following the match list makes each
  decision a few dictionary lookups (``registry.intentions.decide``: precedence, deny-first ties,
  L7 intentions deny at L4).
- The default when nothing matches: the agent's ``default_intention_policy`` if it sets one
  (``DebugConfig.DefaultIntentionPolicy`` in ``/v1/agent/self``), else its ACL default policy, which every
  answer carries in ``X-Consul-Default-ACL-Policy`` (allow without ACLs), as the agent's own
  authorize endpoint decides.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ca.spiffe import ServiceIdentity
from registry.intentions import (
    REASON_DEFAULT_ACL,
    REASON_DEFAULT_INTENTION_POLICY,
    Decision,
    Intention,
    IntentionIndex,
    decide,
)

__all__ = ["Authorizer", "intentions_from_match"]


def intentions_from_match(body: Any, service: str) -> list[Intention]:
    """The intentions of a ``/v1/connect/intentions/match`` answer for ``service``. Raises ValueError on
    a malformed answer (the caller keeps what it had)."""
    if not isinstance(body, Mapping):
        raise ValueError("intention match answer is not an object")
    items = body.get(service)
    if items is None:  # keys are the names as asked; tolerate a case difference
        items = next((v for k, v in body.items() if str(k).lower() == service.lower()), [])
    if not isinstance(items, list):
        raise ValueError(f"intention match answer for {service!r} is not a list")
    return [Intention.from_api_dict(i) for i in items]


@dataclass(frozen=True, slots=True)
class Authorizer:
    """One immutable snapshot of what decides inbound connections to ``service``; replaced whole on
    every change, so a decision never sees half an update."""

    service: str
    index: IntentionIndex
    acl_default_allow: bool = True
    intention_policy: str = ""  # the agent's default_intention_policy: "", "allow" or "deny"

    @property
    def default(self) -> tuple[bool, str]:
        if self.intention_policy:
            return self.intention_policy == "allow", REASON_DEFAULT_INTENTION_POLICY
        return self.acl_default_allow, REASON_DEFAULT_ACL

    def decide(self, source: ServiceIdentity) -> Decision:
        allow, reason = self.default
        return decide(self.index, source, self.service, allow, default_reason=reason)

    def replace(self, **changes: Any) -> Authorizer:
        from dataclasses import replace

        return replace(self, **changes)
