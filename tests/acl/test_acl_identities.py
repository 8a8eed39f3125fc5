"""Identities, templated policies and built-in policies expand to Consul's rules; bad names never do."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry.acl.identities import (
    BUILTIN_POLICIES,
    GLOBAL_MANAGEMENT_ID,
    GLOBAL_READ_ONLY_ID,
    TEMPLATES,
    IdentityError,
    NodeIdentity,
    ServiceIdentity,
    TemplatedPolicy,
    is_valid_service_identity_name,
)
from registry.acl.rules import Access, PolicyRules, Rule, parse_rules

# Consul's synthetic rules (agent/structs/acl_ce.go and acltemplatedpolicy/policies/ce/*.hcl) as text.
CONSUL_SERVICE_IDENTITY = """
service "web" {
	policy = "write"
}
service "web-sidecar-proxy" {
	policy = "write"
}
service_prefix "" {
	policy = "read"
}
node_prefix "" {
	policy = "read"
}"""
CONSUL_NODE_IDENTITY = """
node "n1" {
	policy = "write"
}
service_prefix "" {
	policy = "read"
}"""


def test_service_identity_expands_as_consul_synthesizes_it() -> None:
    assert ServiceIdentity("web").rules() == parse_rules(CONSUL_SERVICE_IDENTITY)
    assert TemplatedPolicy("builtin/service", "web").rules() == parse_rules(CONSUL_SERVICE_IDENTITY)


def test_node_identity_expands_as_consul_synthesizes_it() -> None:
    assert NodeIdentity("n1", "dc1").rules() == parse_rules(CONSUL_NODE_IDENTITY)
    assert TemplatedPolicy("builtin/node", "n1").rules() == parse_rules(CONSUL_NODE_IDENTITY)


def test_other_templates() -> None:
    assert TemplatedPolicy("builtin/dns").rules() == PolicyRules(
        node_prefix=(Rule("", Access.READ),),
        service_prefix=(Rule("", Access.READ),),
        query_prefix=(Rule("", Access.READ),),
    )
    gateway = TemplatedPolicy("builtin/api-gateway", "gw").rules()
    assert gateway.mesh is Access.READ and gateway.service == (Rule("gw", Access.WRITE),)
    nomad = TemplatedPolicy("builtin/nomad-server").rules()
    assert nomad.acl is Access.WRITE and nomad.service_prefix == (Rule("", Access.WRITE),)
    assert TEMPLATES["builtin/service"].id == "00000000-0000-0000-0000-000000000003"
    assert TEMPLATES["builtin/dns"].id == "00000000-0000-0000-0000-000000000005"


def test_datacenter_scoping() -> None:
    assert ServiceIdentity("web").valid_in("dc9")
    assert ServiceIdentity("web", ("dc1",)).valid_in("dc1")
    assert not ServiceIdentity("web", ("dc1",)).valid_in("dc2")
    assert NodeIdentity("n1", "dc1").valid_in("dc1") and not NodeIdentity("n1", "dc1").valid_in("dc2")


@pytest.mark.parametrize(
    "name", ["Web", "web.", "-web", "web-", "we b", "x" * 257, 'a"}\nacl = "write', "web\n", "wéb", "*"]
)
def test_invalid_names_are_refused_before_any_rule_exists(name: str) -> None:
    with pytest.raises(IdentityError, match="has an invalid name. Only lowercase alphanumeric"):
        ServiceIdentity(name)
    with pytest.raises(IdentityError, match="has an invalid name"):
        NodeIdentity(name, "dc1")
    with pytest.raises(IdentityError, match="has an invalid name"):
        TemplatedPolicy("builtin/service", name)
    with pytest.raises(IdentityError, match="has an invalid name"):
        TemplatedPolicy("builtin/api-gateway", name)


def test_missing_fields_use_consuls_messages() -> None:
    with pytest.raises(IdentityError, match="^Service identity is missing the service name field on this token$"):
        ServiceIdentity("")
    with pytest.raises(IdentityError, match="^Node identity is missing the datacenter field on this token$"):
        NodeIdentity("n1", "")
    with pytest.raises(IdentityError, match="^acl templated policy does not exist: builtin/nope$"):
        TemplatedPolicy("builtin/nope")
    with pytest.raises(IdentityError, match="name is required"):
        TemplatedPolicy("builtin/service")


@given(st.text(max_size=300))
def test_a_name_either_is_refused_or_lands_verbatim_in_exactly_its_rules(name: str) -> None:
    try:
        rules = ServiceIdentity(name).rules()
    except IdentityError:
        assert not is_valid_service_identity_name(name)
        return
    assert [r.name for r in rules.service] == [name, f"{name}-sidecar-proxy"]
    assert rules.rule_count() == 4 and rules.acl is None and not rules.key_prefix


def test_builtin_policies_keep_consuls_ids_names_and_rules() -> None:
    management = BUILTIN_POLICIES[GLOBAL_MANAGEMENT_ID]
    assert (management.id, management.name) == ("00000000-0000-0000-0000-000000000001", "global-management")
    assert management.description == "Builtin Policy that grants unlimited access"
    rules = management.rules
    for name in ("acl", "keyring", "operator", "mesh", "peering"):
        assert getattr(rules, name) is Access.WRITE
    for block in ("agent_prefix", "event_prefix", "key_prefix", "node_prefix", "query_prefix", "session_prefix"):
        assert getattr(rules, block) == (Rule("", Access.WRITE),)
    assert rules.service_prefix == (Rule("", Access.WRITE, Access.WRITE),)
    read_only = BUILTIN_POLICIES[GLOBAL_READ_ONLY_ID]
    assert (read_only.id, read_only.name) == ("00000000-0000-0000-0000-000000000002", "builtin/global-read-only")
    assert read_only.rules.service_prefix == (Rule("", Access.READ, Access.READ),)
    assert read_only.rules.acl is Access.READ and read_only.rules.rule_count() == rules.rule_count() == 12
