"""The seam between ACL state and ACL enforcement: a secret in, an authorizer out.

Enforcement (the HTTP API's dispatch, DNS, the server RPC handlers) asks a ``TokenResolver``; what stands
behind it differs by agent: a server resolves from its replica of the ACL tables, a client agent asks a
server and caches the answer until the servers' ACL index moves (Consul's ``ACLResolver`` with its token
and policy caches, agent/acl.go). The empty secret is the anonymous token (Consul falls back to the agent's
``acl.tokens.default`` first: ``default_secret``).

``StaticResolver`` answers from a fixed table of rules. It is what enforcement tests use to exercise every
route against a token that lacks a permission and one that has it, with no ACL tables at all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from registry.acl.authorizer import Authorizer, compile_rules
from registry.acl.errors import ANONYMOUS_TOKEN_ID, ACLNotFound
from registry.acl.rules import PolicyRules, parse_rules

__all__ = ["TOPIC_ACL", "StaticResolver", "TokenResolver"]

# The watch topic of every ACL table: a blocking query whose answer depends on the caller's permissions
# adds it, so narrowing a policy or deleting a token wakes it.
TOPIC_ACL = ("acl",)


class TokenResolver(Protocol):
    # The clock token expiry is judged by (ns since the epoch), which the token reads use too; None: the
    # caller's wall clock (this module reads no clock).
    clock_ns: Callable[[], int] | None

    @property
    def enabled(self) -> bool:
        """False when ``acl.enabled`` is off: nothing is enforced and ``resolve`` allows everything."""

    @property
    def default_policy(self) -> str:
        """``acl.default_policy``: "allow" or "deny" (the ``X-Consul-Default-ACL-Policy`` header)."""

    def default_secret(self) -> str:
        """The agent's ``acl.tokens.default`` (set by config or ``/v1/agent/token/default``), else ""."""

    async def resolve(self, secret: str) -> Authorizer:
        """The authorizer of the token with this secret ("" for the anonymous token). Raises ``ACLNotFound``
        for a secret that matches no token, or one that has expired."""


class StaticResolver:
    """A resolver over fixed tokens: ``{secret: rules}`` where rules are ACL rules text (HCL or JSON) or
    parsed ``PolicyRules``; the secret doubles as the accessor ID in denial messages. ``management`` lists
    secrets that may do everything. The anonymous token ("") has ``anonymous`` rules (none by default)."""

    def __init__(
        self,
        tokens: Mapping[str, str | PolicyRules],
        *,
        default_policy: str = "deny",
        management: tuple[str, ...] = (),
        anonymous: str | PolicyRules = "",
        default_token: str = "",
        enabled: bool = True,
        clock_ns: Callable[[], int] | None = None,
    ) -> None:
        if default_policy not in ("allow", "deny"):
            raise ValueError(f"default_policy must be 'allow' or 'deny', not {default_policy!r}")
        self._enabled = enabled
        self.clock_ns = clock_ns
        self._default_policy = default_policy
        self._default_token = default_token
        allow = default_policy == "allow"
        self._authz: dict[str, Authorizer] = {
            secret: compile_rules([_rules(rules)], default_allow=allow, accessor_id=secret)
            for secret, rules in tokens.items()
        }
        for secret in management:
            self._authz[secret] = Authorizer.management(secret)
        self._authz[""] = compile_rules([_rules(anonymous)], default_allow=allow, accessor_id=ANONYMOUS_TOKEN_ID)
        self._open = Authorizer.management()

    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def default_policy(self) -> str:
        return self._default_policy if self._enabled else "allow"

    def default_secret(self) -> str:
        return self._default_token

    def resolve_now(self, secret: str) -> Authorizer:
        """``resolve`` without waiting: the table is in memory."""
        if not self._enabled:
            return self._open
        found = self._authz.get(secret)
        if found is None:
            raise ACLNotFound()
        return found

    async def resolve(self, secret: str) -> Authorizer:
        return self.resolve_now(secret)


def _rules(rules: str | PolicyRules) -> PolicyRules:
    return parse_rules(rules) if isinstance(rules, str) else rules


# What an agent's own token may do until the ACL tables say otherwise: register itself and read the
# catalog (the rules Consul's documentation gives an agent token).
