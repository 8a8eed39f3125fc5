"""Rules text: Consul's grammar in HCL and JSON, Consul's error texts, and properties of the grammar."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry.acl.rules import (
    LABELED,
    SINGLETONS,
    Access,
    PolicyRules,
    Rule,
    RulesError,
    go_quote,
    parse_rules,
    render_hcl,
    render_json,
)

DOCS_EXAMPLE = """
# the example of Consul's acl-rules page, more or less
service_prefix "" {
  policy = "read"
}
service "app" {
  policy = "write"
  intentions = "read"
}
key_prefix "foo/" {
  policy = "write"
}
key "foo/bar/secret" {
  policy = "deny"
}
key_prefix "list/" {
  policy = "list"
}
node_prefix "" { policy = "read" }
session_prefix "" { policy = "write" }
agent "n1" { policy = "write" }
event_prefix "deploy-" { policy = "write" }
query "q" { policy = "read" }
operator = "read"
acl = "write"
mesh = "write"
peering = "read"
keyring = "deny"
"""


def test_every_resource_of_consuls_grammar() -> None:
    rules = parse_rules(DOCS_EXAMPLE)
    assert rules.service_prefix == (Rule("", Access.READ),)
    assert rules.service == (Rule("app", Access.WRITE, Access.READ),)
    assert rules.key_prefix == (Rule("foo/", Access.WRITE), Rule("list/", Access.LIST))
    assert rules.key == (Rule("foo/bar/secret", Access.DENY),)
    assert rules.node_prefix == (Rule("", Access.READ),)
    assert rules.session_prefix == (Rule("", Access.WRITE),)
    assert rules.agent == (Rule("n1", Access.WRITE),)
    assert rules.event_prefix == (Rule("deploy-", Access.WRITE),)
    assert rules.query == (Rule("q", Access.READ),)
    assert (rules.operator, rules.acl, rules.mesh, rules.peering, rules.keyring) == (
        Access.READ, Access.WRITE, Access.WRITE, Access.READ, Access.DENY,
    )  # fmt: skip
    assert rules.rule_count() == 15


def test_json_is_the_same_grammar() -> None:
    text = json.dumps(
        {
            "service": {"app": {"policy": "write", "intentions": "read"}},
            "key_prefix": {"foo/": {"policy": "write"}},
            "operator": "read",
            "node": [{"n1": {"policy": "write"}}, {"n1": {"policy": "deny"}}],
        }
    )
    rules = parse_rules(text)
    assert rules.service == (Rule("app", Access.WRITE, Access.READ),)
    assert rules.key_prefix == (Rule("foo/", Access.WRITE),)
    assert rules.node == (Rule("n1", Access.WRITE), Rule("n1", Access.DENY))
    assert rules.operator is Access.READ


def test_empty_rules_and_empty_singletons_mean_nothing_set() -> None:
    assert parse_rules("") == PolicyRules()
    assert parse_rules('operator = ""\nkeyring = ""') == PolicyRules()
    assert parse_rules("# only a comment\n") == PolicyRules()


def test_dispositions_are_case_insensitive_as_in_consul() -> None:
    assert parse_rules('service "a" { policy = "WRITE" }').service == (Rule("a", Access.WRITE),)
    assert parse_rules('operator = "Read"').operator is Access.READ


def test_list_is_a_key_disposition_only() -> None:
    assert parse_rules('key "a" { policy = "list" }').key == (Rule("a", Access.LIST),)
    with pytest.raises(RulesError, match="^Invalid node_prefix policy"):
        parse_rules('node_prefix "" { policy = "list" }')
    with pytest.raises(RulesError, match='^Invalid operator policy: "list"$'):
        parse_rules('operator = "list"')


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'service "web" { policy = "nope" }',
            'Invalid service policy: &acl.ServiceRule{Name:"web", Policy:"nope", Intentions:"", '
            "EnterpriseRule:acl.EnterpriseRule{}}",
        ),
        (
            'service_prefix "" {\n  policy = "read"\n  intentions = "list"\n}',
            'Invalid service_prefix intentions policy: &acl.ServiceRule{Name:"", Policy:"read", '
            'Intentions:"list", EnterpriseRule:acl.EnterpriseRule{}}',
        ),
        ('agent "n" { policy = "x" }', 'Invalid agent policy: &acl.AgentRule{Node:"n", Policy:"x"}'),
        ('agent_prefix "" {\n}', 'Invalid agent_prefix policy: &acl.AgentRule{Node:"", Policy:""}'),
        (
            'key "a\\tb" { policy = "nope" }',
            'Invalid key policy: &acl.KeyRule{Prefix:"a\\tb", Policy:"nope", EnterpriseRule:acl.EnterpriseRule{}}',
        ),
        ('session "n" { policy = "x" }', 'Invalid session policy: &acl.SessionRule{Node:"n", Policy:"x"}'),
        ('event_prefix "" { policy = "x" }', 'Invalid event_prefix policy: &acl.EventRule{Event:"", Policy:"x"}'),
        ('query "q" { policy = "x" }', 'Invalid query policy: &acl.PreparedQueryRule{Prefix:"q", Policy:"x"}'),
        ('acl = "nope"', 'Invalid acl policy: "nope"'),
        ('keyring = "nope"', 'Invalid keyring policy: "nope"'),
        ('operator = "nope"', 'Invalid operator policy: "nope"'),
        ('mesh = "nope"', 'Invalid mesh policy: "nope"'),
        ('peering = "nope"', 'Invalid peering policy: "nope"'),
        ('{ "peering": "nope" }', 'Invalid peering policy: "nope"'),
        ('{ "service": { "web": { "policy": "nope" } } }', "Invalid service policy: &acl.ServiceRule{Name:"),
    ],
)
def test_invalid_dispositions_use_consuls_texts(text: str, message: str) -> None:
    with pytest.raises(RulesError) as info:
        parse_rules(text)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('service "a" {', "Failed to parse ACL rules: At 1:14: unexpected end of input, expected '}'"),
        ('servce "x" { policy = "read" }', 'Failed to parse ACL rules: At 1:1: unknown resource "servce"'),
        ('service "x" {\n  policy = "read"\n  intentons = "read"\n}', "unknown argument \"intentons\" in service"),
        ('session "a" { intentions = "read" }', 'unknown argument "intentions" in session "a"'),
        (
            'operator = "read"\noperator = "write"',
            'Failed to parse ACL rules: The argument "operator" at 2:1 was already set. '
            "Each argument can only be defined once",
        ),
        ('service "a" {\n  policy = "deny"\n  policy = "write"\n}', 'The argument "policy" at 3:3 was already set'),
        ('{"operator": "read", "operator": "write"}', 'The argument "operator" was already set'),
        ('operator = "${var.x}"', "interpolation (${...}) is not allowed"),
        ('service "a" { policy = read }', "policy must be a string, not an expression"),
        ('service = "read"', 'service needs a name: service "<name>"'),
        ('service "a" "b" { policy = "read" }', "service needs exactly one label"),
        ('service "a" {\n  inner {\n  }\n}', 'unexpected block "inner" inside service "a"'),
        ("{]", "Failed to parse ACL rules: At 1:2:"),
        ('{"service": "read"}', 'service needs a name'),
        ('{"operator": 1}', "operator must be a string, not a number"),
        ('{"service": {"a": 1}}', 'service \'a\' must be an object, not a number'),
        ("[1]", "Failed to parse ACL rules: "),
        ('{"service": {"a": {"policy": true}}}', "policy must be a string, not a boolean"),
    ],
)
def test_malformed_rules_are_refused_with_a_message(text: str, message: str) -> None:
    with pytest.raises(RulesError) as info:
        parse_rules(text)
    assert message in str(info.value)


def test_json_values_of_the_wrong_shape_are_refused() -> None:
    with pytest.raises(RulesError, match="operator must be a string, not a list"):
        parse_rules('{"operator": []}')
    with pytest.raises(RulesError, match="operator takes a value"):
        parse_rules('{"operator": {"x": {"policy": "read"}}}')


def test_hcl_string_escapes_are_decoded() -> None:
    rules = parse_rules('key "a\\"b\\\\c\\n\\u00e9$${x}" { policy = "read" }')
    assert rules.key == (Rule('a"b\\c\né${x}', Access.READ),)


def test_go_quote_matches_strconv_quote() -> None:
    assert go_quote('a"b\\c\n\x00\x7f\u200b\U0001f600') == '"a\\"b\\\\c\\n\\x00\\x7f\\u200b\U0001f600"'


# ------------------------------------------------------------------------------------ properties

NAMES = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
LEVELS = st.sampled_from([Access.DENY, Access.READ, Access.WRITE])


@st.composite
def policy_rules(draw: st.DrawFn) -> PolicyRules:
    values: dict[str, object] = {}
    for kind in LABELED:
        for suffix in ("", "_prefix"):
            levels = st.sampled_from(list(Access)) if kind == "key" else LEVELS
            intentions = st.none() | LEVELS if kind == "service" else st.none()
            rule = st.builds(Rule, NAMES, levels, intentions)
            values[f"{kind}{suffix}"] = tuple(draw(st.lists(rule, max_size=3)))
    for name in SINGLETONS:
        values[name] = draw(st.none() | LEVELS)
    return PolicyRules(**values)  # type: ignore[arg-type]


@given(policy_rules())
def test_hcl_round_trip(rules: PolicyRules) -> None:
    assert parse_rules(render_hcl(rules)) == rules


@given(policy_rules())
def test_json_round_trip(rules: PolicyRules) -> None:
    text = render_json(rules)
    assert parse_rules(text) == rules
    if text.strip() != "{}":
        assert text.lstrip().startswith("{")


GARBAGE = st.one_of(
    st.text(max_size=200),
    st.text(alphabet='{}[]"=\\$%:,#/*\n \tservicekypolrdw_-"', max_size=120),
    st.builds(
        lambda a, b, c: f'{a} "{b}" {{ policy = "{c}" }}',
        st.sampled_from(["service", "key_prefix", "operator", "nope", ""]),
        st.text(max_size=8),
        st.text(max_size=8),
    ),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=6),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
        max_leaves=12,
    ).map(json.dumps),
)


@given(GARBAGE)
def test_garbage_only_ever_raises_rules_error(text: str) -> None:
    try:
        rules = parse_rules(text)
    except RulesError as exc:
        assert str(exc)
    else:
        assert isinstance(rules, PolicyRules)


def test_deep_nesting_is_a_rules_error_not_a_crash() -> None:
    for text in ("{" * 100_000, '{"a":' + "[" * 100_000, "a = " + "(" * 5_000 + '"x"' + ")" * 5_000):
        with pytest.raises(RulesError):
            parse_rules(text)
