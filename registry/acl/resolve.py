"""From a token to its authorizer: the policies it links, directly and through roles, plus identities.

Consul's resolver (agent/consul/acl.go ``resolveTokenToIdentityAndPolicies``) collects, for the
datacenter it runs in: the token's policies, each role's policies, the synthetic policies of the
token's and roles' service identities, node identities and templated policies; policies limited to
other datacenters are left out, as are links to policies or roles that no longer exist (a deleted
policy simply stops granting).  Everything collected is merged and compiled into one authorizer that
falls back to the agent's ``default_policy``.

The tables of policies and roles are passed in (a state-store snapshot later); this module only
computes.  Built-in policies are known here and need not be in the table.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from registry.acl.authorizer import Authorizer, compile_rules
from registry.acl.identities import BUILTIN_POLICIES, NodeIdentity, ServiceIdentity, TemplatedPolicy
from registry.acl.rules import PolicyRules, parse_rules

__all__ = ["Policy", "Role", "Token", "compile_token", "token_rules"]


@dataclass(frozen=True, slots=True)
class Policy:
    """An ACL policy as stored: ``Rules`` is parsed once, when the policy is written or loaded."""

    id: str
    name: str
    rules: PolicyRules
    datacenters: tuple[str, ...] = ()

    @classmethod
    def from_source(cls, id: str, name: str, rules: str, datacenters: tuple[str, ...] = ()) -> Policy:
        """Parse ``rules`` (HCL or JSON); raises ``RulesError`` with Consul's text when invalid."""
        return cls(id, name, parse_rules(rules), datacenters)

    def valid_in(self, datacenter: str) -> bool:
        return not self.datacenters or datacenter in self.datacenters


@dataclass(frozen=True, slots=True)
class Role:
    """An ACL role: a named bundle of policies and identities that tokens link to."""

    id: str
    name: str
    policy_ids: tuple[str, ...] = ()
    service_identities: tuple[ServiceIdentity, ...] = ()
    node_identities: tuple[NodeIdentity, ...] = ()
    templated_policies: tuple[TemplatedPolicy, ...] = ()


@dataclass(frozen=True, slots=True)
class Token:
    """What a token grants (its links); secrets and metadata live with the store, not here."""

    accessor_id: str
    policy_ids: tuple[str, ...] = ()
    role_ids: tuple[str, ...] = ()
    service_identities: tuple[ServiceIdentity, ...] = ()
    node_identities: tuple[NodeIdentity, ...] = ()
    templated_policies: tuple[TemplatedPolicy, ...] = ()


def _policy(policy_id: str, policies: Mapping[str, Policy]) -> Policy | None:
    found = policies.get(policy_id)
    if found is not None:
        return found
    builtin = BUILTIN_POLICIES.get(policy_id)
    if builtin is not None:
        return Policy(builtin.id, builtin.name, builtin.rules)
    return None


def token_rules(
    token: Token,
    *,
    policies: Mapping[str, Policy],
    roles: Mapping[str, Role],
    datacenter: str,
) -> Iterator[PolicyRules]:
    """Every rule set that applies to ``token`` in ``datacenter`` (unmerged, in Consul's order)."""
    grants: list[Token | Role] = [token]
    grants.extend(role for rid in dict.fromkeys(token.role_ids) if (role := roles.get(rid)) is not None)
    seen: set[str] = set()
    for grant in grants:
        for pid in grant.policy_ids:
            policy = _policy(pid, policies)
            if policy is not None and policy.id not in seen and policy.valid_in(datacenter):
                seen.add(policy.id)
                yield policy.rules
    for grant in grants:
        for identity in (*grant.service_identities, *grant.node_identities, *grant.templated_policies):
            if identity.valid_in(datacenter):
                yield identity.rules()


def compile_token(
    token: Token,
    *,
    policies: Mapping[str, Policy],
    roles: Mapping[str, Role],
    datacenter: str,
    default_policy: str,
) -> Authorizer:
    """The authorizer for ``token``: its rules merged, falling back to ``default_policy`` (allow|deny)."""
    if default_policy not in ("allow", "deny"):
        raise ValueError(f"default_policy must be 'allow' or 'deny', not {default_policy!r}")
    return compile_rules(
        token_rules(token, policies=policies, roles=roles, datacenter=datacenter),
        default_allow=default_policy == "allow",
        accessor_id=token.accessor_id,
    )
