"""Binding rules and logins: selectors, each bind type, interpolation of hostile claim values refused, the
token a login gets, and auth method checks -- all from real signed JWTs through the jwt validator."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry.acl.binding import BindingRule, BindingRuleError, Bindings, bind, interpolate
from registry.acl.errors import PermissionDenied
from registry.acl.identities import NodeIdentity, ServiceIdentity, TemplatedPolicy
from registry.acl.jwt import AuthMethodError, Identity
from registry.acl.login import login_description, plan_login
from registry.acl.objects import AuthMethod
from tests.acl.jwtkit import new_key, public_pem, sign

NOW = 1_800_000_000.0
KEY = new_key("ES256")
METHOD = AuthMethod.from_wire({
    "Name": "ci", "Type": "jwt", "MaxTokenTTL": "10m",
    "Config": {"JWTValidationPubKeys": [public_pem(KEY)], "BoundAudiences": ["consul"],
               "ClaimMappings": {"service": "service", "node": "node", "project": "project"},
               "ListClaimMappings": {"groups": "groups"}},
})  # fmt: skip
BLANK = METHOD.blank_identity()


def login(**claims: object) -> Identity:
    token = sign(KEY, "ES256", {"aud": "consul", "iat": NOW, "exp": NOW + 60, **claims})
    return METHOD.validator().validate_login(token, now=NOW)


def rule(bind_type: str, bind_name: str, selector: str = "", bind_vars_name: str = "") -> BindingRule:
    return BindingRule.checked(id="r", auth_method="ci", bind_type=bind_type, bind_name=bind_name,
                               selector=selector, bind_vars_name=bind_vars_name, blank=BLANK)  # fmt: skip


# ------------------------------------------------------------------ rule checks


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"auth_method": ""}, "Invalid Binding Rule: no AuthMethod is set"),
        ({"selector": "value.service =="}, "invalid Binding Rule: Selector is invalid: Failed to create boolean"),
        ({"selector": "nope.x == a"}, "invalid Binding Rule: Selector is invalid: "),
        ({"bind_type": ""}, "Invalid Binding Rule: no BindType is set"),
        ({"bind_name": ""}, "Invalid Binding Rule: no BindName is set"),
        ({"bind_type": "admin"}, 'Invalid Binding Rule: unknown BindType "admin"'),
        ({"bind_name": "${value.unknown}"},
         'Invalid Binding Rule: invalid BindName: failed to validate bindType "service": error interpreting '
         "template: unknown variable accessed: value.unknown"),
        ({"bind_name": "Web_${value.service}"},
         'Invalid Binding Rule: invalid BindName: failed to validate bindType "service": invalid bind name: '
         '"Web_fake"'),
        ({"bind_name": "${upper(value.service)}"},
         'Invalid Binding Rule: invalid BindName: failed to validate bindType "service": error interpreting '
         "template: only variables"),
        ({"bind_name": "${value.service"}, "Invalid Binding Rule: invalid BindName: failed to validate bindType "
                                           '"service": error interpreting template: unterminated'),
        ({"bind_type": "templated-policy", "bind_name": "builtin/nope"},
         'Invalid Binding Rule: invalid BindName: failed to validate bindType "templated-policy": Bind name for '
         "templated-policy bind type does not match existing template name: builtin/nope"),
        ({"bind_type": "templated-policy", "bind_name": "builtin/service"},
         "Invalid Binding Rule: invalid BindName: failed to validate bindType \"templated-policy\": templated "
         "policy failed validation: builtin/service: name is required"),
        ({"bind_type": "policy", "bind_name": "has space"},
         'Invalid Binding Rule: invalid BindName: failed to validate bindType "policy": invalid bind name: '
         '"has space"'),
    ],
)
def test_rules_are_checked_when_written(kwargs: dict, message: str) -> None:
    args = {"id": "r", "auth_method": "ci", "bind_type": "service", "bind_name": "web", "blank": BLANK, **kwargs}
    with pytest.raises(BindingRuleError) as err:
        BindingRule.checked(**args)
    assert str(err.value).startswith(message)


def test_from_wire_reads_consuls_json() -> None:
    r = BindingRule.from_wire({"ID": "x", "AuthMethod": "ci", "BindType": "templated-policy",
                               "BindName": "builtin/service", "BindVars": {"Name": "${value.service}"},
                               "Selector": "value.project == infra", "Description": "d"}, BLANK)  # fmt: skip
    assert (r.bind_type, r.bind_vars_name, r.selector, r.description) == (
        "templated-policy", "${value.service}", "value.project == infra", "d")


# ------------------------------------------------------------------ binding


def test_each_bind_type_produces_its_grant() -> None:
    rules = [
        rule("service", "${value.service}"),
        rule("node", "${value.node}"),
        rule("role", "deployer-${value.project}"),
        rule("policy", "read-${value.project}"),
        rule("templated-policy", "builtin/service", bind_vars_name="${value.service}-canary"),
        rule("templated-policy", "builtin/dns"),
    ]
    got = bind(rules, login(service="web", node="n1", project="shop"), "dc1")
    assert got == Bindings(
        service_identities=(ServiceIdentity("web"),),
        node_identities=(NodeIdentity("n1", "dc1"),),
        role_names=("deployer-shop",),
        policy_names=("read-shop",),
        templated_policies=(TemplatedPolicy("builtin/service", "web-canary"), TemplatedPolicy("builtin/dns")),
    )


def test_selectors_pick_the_rules_that_apply() -> None:
    rules = [
        rule("service", "web", 'value.project == "shop"'),
        rule("service", "db", '"dba" in list.groups'),
        rule("role", "ops", 'value.project != "shop" or list.groups contains "ops"'),
        rule("policy", "never", "value.project matches \"^x\""),
    ]
    got = bind(rules, login(project="shop", groups=["dev", "ops"]), "dc1")
    assert got.service_identities == (ServiceIdentity("web"),)
    assert got.role_names == ("ops",)
    assert got.policy_names == ()
    assert bind(rules, login(project="other", groups=["dba"]), "dc1").service_identities == (ServiceIdentity("db"),)
    assert bind(rules[:2], login(project="other"), "dc1").none()


@pytest.mark.parametrize(
    "hostile",
    [
        'web" { policy = "write" } service_prefix "',
        "web\nservice_prefix \"\" { policy = \"write\" }",
        "../../admin",
        "web*",
        "",
        "a" * 300,
        "${value.node}",
        "web\u0000",
    ],
)
def test_hostile_claim_values_are_refused_not_interpolated(hostile: str) -> None:
    """CVE-2021-41803: a claim value lands in a name only once that name validates."""
    for bind_type in ("service", "node", "role", "policy"):
        with pytest.raises(BindingRuleError, match="invalid bind name"):
            bind([rule(bind_type, "${value.service}")], login(service=hostile), "dc1")
    with pytest.raises(BindingRuleError, match="templated policy failed validation|invalid bind"):
        bind([rule("templated-policy", "builtin/service", bind_vars_name="${value.service}")],
             login(service=hostile), "dc1")  # fmt: skip


def test_upper_case_claims_are_refused_rather_than_silently_lowered() -> None:
    with pytest.raises(BindingRuleError, match="projected variables contain uppercase characters"):
        bind([rule("service", "${value.service}")], login(service="Web"), "dc1")


def test_a_rule_that_does_not_match_cannot_refuse_the_login() -> None:
    rules = [rule("service", "${value.service}", 'value.project == "shop"'), rule("node", "${value.node}")]
    assert bind(rules, login(service="BAD NAME", project="other", node="n1"), "dc1").node_identities == (
        NodeIdentity("n1", "dc1"),)


@given(st.text(max_size=40))
def test_interpolation_never_yields_an_invalid_service_name(value: str) -> None:
    try:
        got = bind([rule("service", "svc-${value.service}")], Identity({"service": value, "node": "", "project": ""},
                                                                        {"groups": ()}), "dc1")  # fmt: skip
    except BindingRuleError:
        return
    (identity,) = got.service_identities
    assert identity.service_name == f"svc-{value}"


def test_interpolate_escapes_and_variables() -> None:
    assert interpolate("a-$${value.x}-${value.x}", {"value.x": "Y"}) == "a-${value.x}-y"
    assert interpolate("plain", {}) == "plain"


# ------------------------------------------------------------------ the login token


ROLES = {"deployer-shop": ("role-1", "deployer-shop")}
POLICIES = {"read-shop": ("pol-1", "read-shop")}


def test_a_login_plans_a_local_expiring_token_with_links() -> None:
    rules = [rule("service", "${value.service}"), rule("role", "deployer-${value.project}"),
             rule("role", "missing"), rule("policy", "read-${value.project}")]  # fmt: skip
    token = plan_login(METHOD, rules, login(service="web", project="shop"), datacenter="dc1",
                       meta={"pod": "web-1"}, role_by_name=ROLES.get, policy_by_name=POLICIES.get)  # fmt: skip
    assert token.to_wire() == {
        "Description": 'token created via login: {"pod":"web-1"}',
        "AuthMethod": "ci",
        "Local": True,
        "Policies": [{"ID": "pol-1", "Name": "read-shop"}],
        "Roles": [{"ID": "role-1", "Name": "deployer-shop"}],
        "ServiceIdentities": [{"ServiceName": "web"}],
        "ExpirationTTL": "10m0s",
    }


def test_a_login_granted_nothing_is_refused() -> None:
    with pytest.raises(PermissionDenied, match="^Permission denied$"):
        plan_login(METHOD, [rule("role", "missing")], login(), datacenter="dc1", meta=None,
                   role_by_name=ROLES.get, policy_by_name=POLICIES.get)  # fmt: skip
    with pytest.raises(PermissionDenied):
        plan_login(METHOD, [], login(), datacenter="dc1", meta=None, role_by_name=ROLES.get,
                   policy_by_name=POLICIES.get)  # fmt: skip


def test_rules_of_other_methods_do_not_apply() -> None:
    other = BindingRule.checked(id="o", auth_method="other", bind_type="service", bind_name="web", blank=BLANK)
    with pytest.raises(PermissionDenied):
        plan_login(METHOD, [other], login(), datacenter="dc1", meta=None, role_by_name=ROLES.get,
                   policy_by_name=POLICIES.get)  # fmt: skip


def test_login_description_encodes_meta_as_go_does() -> None:
    assert login_description(None) == "token created via login"
    assert login_description({"b": "<x>", "a": "&"}) == 'token created via login: {"a":"\\u0026","b":"\\u003cx\\u003e"}'


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"Type": "jwt"}, "Invalid Auth Method: no Name is set"),
        ({"Name": "a b", "Type": "jwt"},
         "Invalid Auth Method: invalid Name. Only alphanumeric characters, '-' and '_' are allowed"),
        ({"Name": "k8s", "Type": "kubernetes"}, "Invalid Auth Method: Type should be one of: [jwt]"),
        ({"Name": "m", "Type": "jwt", "MaxTokenTTL": "48h"}, "MaxTokenTTL 48h0m0s cannot be more than 24h0m0s"),
        ({"Name": "m", "Type": "jwt", "MaxTokenTTL": "5s"}, "MaxTokenTTL 5s cannot be less than 1m0s"),
        ({"Name": "m", "Type": "jwt", "TokenLocality": "planet"},
         "Invalid Auth Method: TokenLocality should be one of 'local' or 'global'"),
        ({"Name": "m", "Type": "jwt"}, "Invalid Auth Method: exactly one of"),
    ],
)
def test_auth_methods_are_checked_with_consuls_texts(obj: dict, message: str) -> None:
    with pytest.raises(AuthMethodError) as err:
        AuthMethod.from_wire(obj)
    assert str(err.value).startswith(message)


def test_a_global_method_makes_global_tokens() -> None:
    method = AuthMethod.from_wire({"Name": "g", "Type": "jwt", "TokenLocality": "global",
                                   "Config": {"JWTValidationPubKeys": [public_pem(KEY)]}})  # fmt: skip
    r = BindingRule.checked(id="r", auth_method="g", bind_type="node", bind_name="n1", blank=method.blank_identity())
    token = sign(KEY, "ES256", {"iat": NOW, "exp": NOW + 60})
    planned = plan_login(method, [r], method.validator().validate_login(token, now=NOW), datacenter="dc2",
                         meta=None, role_by_name=ROLES.get, policy_by_name=POLICIES.get)  # fmt: skip
    assert planned.local is False and planned.node_identities == (NodeIdentity("n1", "dc2"),)
    assert "ExpirationTTL" not in planned.to_wire()
