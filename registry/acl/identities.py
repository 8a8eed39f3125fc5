"""Built-in policies, service and node identities, and templated policies: grants that expand to rules.

Consul synthesizes a policy for each of these (agent/structs/acl.go ``SyntheticPolicy``,
acl_ce.go ``aclPolicyTemplateServiceIdentity``/``aclPolicyTemplateNodeIdentity``,
agent/structs/acl_templated_policy.go and its ``policies/ce/*.hcl``).  We build the same rules, but as
values rather than by formatting a name into HCL text and parsing it again: a name can then never
change the shape of the rules it lands in.  Names are still validated first, with Consul's rules and
messages (acl/validation.go), because the same names reach the catalog, SPIFFE IDs and logs; that is
the lesson of CVE-2021-41803 (node names templated into JWT claim checks without validation).

Built-in policies keep Consul's IDs and names: ``global-management`` (``...0001``) and
``builtin/global-read-only`` (``...0002``).  Their rules are Consul's verbatim, in HCL, and are parsed by
the same parser as any user policy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from registry.acl.rules import Access, PolicyRules, Rule, go_quote, parse_rules

__all__ = [
    "BUILTIN_POLICIES",
    "GLOBAL_MANAGEMENT_ID",
    "GLOBAL_MANAGEMENT_NAME",
    "GLOBAL_READ_ONLY_ID",
    "GLOBAL_READ_ONLY_NAME",
    "TEMPLATES",
    "BuiltinPolicy",
    "IdentityError",
    "NodeIdentity",
    "ServiceIdentity",
    "Template",
    "TemplatedPolicy",
    "is_valid_node_identity_name",
    "is_valid_service_identity_name",
    "template_rules",
]

GLOBAL_MANAGEMENT_ID = "00000000-0000-0000-0000-000000000001"
GLOBAL_MANAGEMENT_NAME = "global-management"
GLOBAL_READ_ONLY_ID = "00000000-0000-0000-0000-000000000002"
GLOBAL_READ_ONLY_NAME = "builtin/global-read-only"

# acl/validation.go: identity names are stricter than catalog names, and at most 256 characters.
_IDENTITY_NAME = re.compile(r"[a-z0-9](?:[a-z0-9\-_]*[a-z0-9])?")
IDENTITY_NAME_MAX_LENGTH = 256


class IdentityError(ValueError):
    """An identity or templated policy that Consul would refuse, with Consul's message."""


def is_valid_service_identity_name(name: str) -> bool:
    """Consul's ``IsValidServiceIdentityName``: lowercase alphanumerics, ``-`` and ``_``, 1..256."""
    return 1 <= len(name) <= IDENTITY_NAME_MAX_LENGTH and _IDENTITY_NAME.fullmatch(name) is not None


def is_valid_node_identity_name(name: str) -> bool:
    """Consul's ``IsValidNodeIdentityName`` (the same rule as for services)."""
    return is_valid_service_identity_name(name)


def _check_service_name(name: str) -> None:
    if name == "":
        raise IdentityError("Service identity is missing the service name field on this token")
    if not is_valid_service_identity_name(name):
        raise IdentityError(
            f"Service identity {go_quote(name)} has an invalid name. "
            "Only lowercase alphanumeric characters, '-' and '_' are allowed"
        )


def _check_node_name(name: str) -> None:
    if name == "":
        raise IdentityError("Node identity is missing the node name field on this token")
    if not is_valid_node_identity_name(name):
        raise IdentityError(
            f"Node identity {go_quote(name)} has an invalid name. "
            "Only lowercase alphanumeric characters, '-' and '_' are allowed"
        )


def _service_rules(name: str) -> PolicyRules:
    # service "<name>" write, "<name>-sidecar-proxy" write, service_prefix "" read, node_prefix "" read
    return PolicyRules(
        service=(Rule(name, Access.WRITE), Rule(f"{name}-sidecar-proxy", Access.WRITE)),
        service_prefix=(Rule("", Access.READ),),
        node_prefix=(Rule("", Access.READ),),
    )


def _node_rules(name: str) -> PolicyRules:
    # node "<name>" write (register itself, update coordinates), service_prefix "" read (anti-entropy)
    return PolicyRules(node=(Rule(name, Access.WRITE),), service_prefix=(Rule("", Access.READ),))


@dataclass(frozen=True, slots=True)
class ServiceIdentity:
    """``{"ServiceName": "web", "Datacenters": [...]}``: everything a service and its sidecar need."""

    service_name: str
    datacenters: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_service_name(self.service_name)

    def valid_in(self, datacenter: str) -> bool:
        return not self.datacenters or datacenter in self.datacenters

    def rules(self) -> PolicyRules:
        return _service_rules(self.service_name)


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """``{"NodeName": "n1", "Datacenter": "dc1"}``: what an agent needs for itself, in one datacenter."""

    node_name: str
    datacenter: str

    def __post_init__(self) -> None:
        _check_node_name(self.node_name)
        if self.datacenter == "":
            raise IdentityError("Node identity is missing the datacenter field on this token")

    def valid_in(self, datacenter: str) -> bool:
        return datacenter == self.datacenter

    def rules(self) -> PolicyRules:
        return _node_rules(self.node_name)


@dataclass(frozen=True, slots=True)
class Template:
    """A built-in policy template: Consul's name and reserved ID, and whether it takes ``Name``."""

    name: str
    id: str
    needs_name: bool
    description: str


def _dns_rules(_: str) -> PolicyRules:
    return PolicyRules(
        node_prefix=(Rule("", Access.READ),),
        service_prefix=(Rule("", Access.READ),),
        query_prefix=(Rule("", Access.READ),),
    )


def _nomad_server_rules(_: str) -> PolicyRules:
    return PolicyRules(
        acl=Access.WRITE,
        agent_prefix=(Rule("", Access.READ),),
        node_prefix=(Rule("", Access.READ),),
        service_prefix=(Rule("", Access.WRITE),),
    )


def _api_gateway_rules(name: str) -> PolicyRules:
    return PolicyRules(
        mesh=Access.READ,
        node_prefix=(Rule("", Access.READ),),
        service_prefix=(Rule("", Access.READ),),
        service=(Rule(name, Access.WRITE),),
    )


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template(
            "builtin/service",
            "00000000-0000-0000-0000-000000000003",
            True,
            "Gives the token or role permissions to register a service and discover services in the Consul "
            "catalog. It also gives the specified service's sidecar proxy the permission to discover and "
            "route traffic to other services.",
        ),
        Template(
            "builtin/node",
            "00000000-0000-0000-0000-000000000004",
            True,
            "Gives the token or role permissions for a register an agent/node into the catalog. A node is "
            "typically a consul agent but can also be a physical server, cloud instance or a container.",
        ),
        Template(
            "builtin/dns",
            "00000000-0000-0000-0000-000000000005",
            False,
            "Gives the token or role permissions for the Consul DNS to query services in the network.",
        ),
        Template(
            "builtin/nomad-server",
            "00000000-0000-0000-0000-000000000006",
            False,
            "Gives the token or role permissions required for integration with a nomad server.",
        ),
        Template(
            "builtin/api-gateway",
            "00000000-0000-0000-0000-000000000008",
            True,
            "Gives the token or role permissions for a Consul api gateway",
        ),
    )
}

_TEMPLATE_RULES = {
    "builtin/service": _service_rules,
    "builtin/node": _node_rules,
    "builtin/dns": _dns_rules,
    "builtin/nomad-server": _nomad_server_rules,
    "builtin/api-gateway": _api_gateway_rules,
}


def template_rules(template_name: str, name: str) -> PolicyRules:
    """The rules a template expands to for ``name``, unvalidated: for showing a template with a
    placeholder name (``/v1/acl/templated-policies``), never for granting."""
    return _TEMPLATE_RULES[template_name](name)


@dataclass(frozen=True, slots=True)
class TemplatedPolicy:
    """``{"TemplateName": "builtin/service", "TemplateVariables": {"Name": "web"}, "Datacenters": [...]}``."""

    template_name: str
    name: str = ""
    datacenters: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        template = TEMPLATES.get(self.template_name)
        if template is None:
            raise IdentityError(f"acl templated policy does not exist: {self.template_name}")
        if template.needs_name:
            if self.name == "":
                raise IdentityError(f"{self.template_name}: name is required")
            # Consul checks builtin/service and builtin/node names as identity names; we check every
            # name that lands in a rule, api-gateway included.
            if not is_valid_service_identity_name(self.name):
                kind = "node" if self.template_name == "builtin/node" else "service"
                raise IdentityError(
                    f"{kind} identity {go_quote(self.name)} has an invalid name. "
                    "Only lowercase alphanumeric characters, '-' and '_' are allowed"
                )

    def valid_in(self, datacenter: str) -> bool:
        return not self.datacenters or datacenter in self.datacenters

    def rules(self) -> PolicyRules:
        return _TEMPLATE_RULES[self.template_name](self.name)


@dataclass(frozen=True, slots=True)
class BuiltinPolicy:
    """A policy every cluster has, with Consul's reserved ID, name, description and Rules text."""

    id: str
    name: str
    description: str
    rules_text: str
    rules: PolicyRules


_GLOBAL_MANAGEMENT_RULES = """
acl = "write"
agent_prefix "" {
  policy = "write"
}
event_prefix "" {
  policy = "write"
}
key_prefix "" {
  policy = "write"
}
keyring = "write"
node_prefix "" {
  policy = "write"
}
operator = "write"
mesh = "write"
peering = "write"
query_prefix "" {
  policy = "write"
}
service_prefix "" {
  policy = "write"
  intentions = "write"
}
session_prefix "" {
  policy = "write"
}
"""

_GLOBAL_READ_ONLY_RULES = _GLOBAL_MANAGEMENT_RULES.replace('"write"', '"read"')

BUILTIN_POLICIES: dict[str, BuiltinPolicy] = {
    GLOBAL_MANAGEMENT_ID: BuiltinPolicy(
        GLOBAL_MANAGEMENT_ID,
        GLOBAL_MANAGEMENT_NAME,
        "Builtin Policy that grants unlimited access",
        _GLOBAL_MANAGEMENT_RULES,
        parse_rules(_GLOBAL_MANAGEMENT_RULES),
    ),
    GLOBAL_READ_ONLY_ID: BuiltinPolicy(
        GLOBAL_READ_ONLY_ID,
        GLOBAL_READ_ONLY_NAME,
        "Builtin Policy that grants unlimited read-only access to all components",
        _GLOBAL_READ_ONLY_RULES,
        parse_rules(_GLOBAL_READ_ONLY_RULES),
    ),
}
