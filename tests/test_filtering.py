"""registry.filtering: go-bexpr's grammar, error texts and typed semantics, without any server.

Expected error texts are go-bexpr 0.1.2's (the version Consul pins): its parser's messages for syntax
errors and its validator's for selectors, operators and values.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry import filtering
from registry.filtering import (
    AGENT_SERVICE,
    CHECK_SERVICE_NODE,
    HEALTH_CHECK,
    INTENTION,
    NODE,
    NODE_SERVICE,
    SERVICE_NODE,
    FilterError,
    Map,
    Prim,
    Slice,
    Struct,
    compile_filter,
    parse,
)
from registry.gocompat import go_parse_bool, go_parse_int, go_quote

# ---------------------------------------------------------------------- fixtures

ENTRY = {  # a /v1/health/service item, as Proconsul renders it
    "Node": {"ID": "9f0c", "Node": "n1", "Address": "10.0.0.1", "Datacenter": "dc1",
             "TaggedAddresses": {"lan": "10.0.0.1"}, "Meta": {"rack": "a", "": "blank"}},
    "Service": {"ID": "web1", "Service": "web", "Tags": ["v1", "primary"], "Address": "",
                "TaggedAddresses": {"lan": {"Address": "10.0.0.1", "Port": 80}},
                "Meta": {"env": "prod", "team name": "core"}, "Port": 80,
                "Weights": {"Passing": 3, "Warning": 1}, "EnableTagOverride": True,
                "Proxy": {"Mode": "", "MeshGateway": {}, "Expose": {}}, "Connect": {}},
    "Checks": [
        {"Node": "n1", "CheckID": "serfHealth", "Status": "passing", "ServiceTags": [], "ExposedPort": 0},
        {"Node": "n1", "CheckID": "service:web1", "Status": "critical", "ServiceTags": ["v1"], "ExposedPort": 0},
    ],
}  # fmt: skip


def ok(expr: str, obj: object = ENTRY, schema: Struct = CHECK_SERVICE_NODE) -> bool:
    return compile_filter(expr, schema).matches(obj)


def err(expr: str, schema: Struct = CHECK_SERVICE_NODE) -> str:
    with pytest.raises(FilterError) as info:
        compile_filter(expr, schema)
    assert str(info.value) == filtering.ERROR_PREFIX + info.value.detail
    return info.value.detail


# ---------------------------------------------------------------------- grammar


def m(sel: str, op: str, value: str | None = None) -> tuple:
    return ("match", sel.split("."), op, value)


def test_precedence_and_over_or_not_over_and() -> None:
    a, b, c = m("a", "==", "1"), m("b", "==", "2"), m("c", "==", "3")
    expected = ("or", [("and", [a, ("not", b)]), c])
    assert parse("a == 1 and not b == 2 or c == 3") == expected
    assert parse("(a == 1 and (not b == 2)) or c == 3") == expected
    assert parse("a == 1 and (not b == 2 or c == 3)") == ("and", [a, ("or", [("not", b), c])])
    assert parse("a == 1 or b == 2 and c == 3") == ("or", [a, ("and", [b, c])])
    assert parse("not (a == 1 or b == 2)") == ("not", ("or", [a, b]))


def test_chains_parentheses_and_double_negation() -> None:
    a = m("a", "==", "1")
    assert parse("(a == 1)") == a
    assert parse("  ( ( a == 1 ) )  ") == a
    assert parse("not not a == 1") == a
    assert parse("not not not a == 1") == ("not", a)
    assert parse("not (not a == 1)") == a
    assert parse("a == 1 or a == 1 or a == 1") == ("or", [a, a, a])
    assert parse("(a == 1 or a == 1) or a == 1") == ("or", [a, a, a])
    assert parse("a == 1\tand\na == 1\r\nand a == 1") == ("and", [a, a, a])


def test_every_operator_form() -> None:
    assert parse("x == y") == m("x", "==", "y")
    assert parse("x==y") == m("x", "==", "y")
    assert parse("x != y") == m("x", "!=", "y")
    assert parse("x is empty") == m("x", "is empty")
    assert parse("x is not empty") == m("x", "is not empty")
    assert parse("y in x") == m("x", "in", "y")
    assert parse("y not in x") == m("x", "not in", "y")
    assert parse("x contains y") == m("x", "in", "y")  # contains is `in` with the operands swapped
    assert parse("x not contains y") == m("x", "not in", "y")
    assert parse("x matches y") == m("x", "matches", "y")
    assert parse("x not matches y") == m("x", "not matches", "y")


def test_keywords_are_not_reserved() -> None:
    assert parse("not == 1") == m("not", "==", "1")
    assert parse("in in in") == m("in", "in", "in")
    assert parse("is is empty") == m("is", "is empty")
    assert parse("and == or") == m("and", "==", "or")


def test_selectors_and_index_expressions() -> None:
    assert parse("Service.Meta.env == x") == m("Service.Meta.env", "==", "x")
    assert parse('Meta["a b-c"] == x') == ("match", ["Meta", "a b-c"], "==", "x")
    assert parse('Meta[ `k` ].x == x') == ("match", ["Meta", "k", "x"], "==", "x")
    assert parse('v in foo["abc-def ghi åß∂ƒ"]') == ("match", ["foo", "abc-def ghi åß∂ƒ"], "in", "v")
    assert parse("a_1.B2 == x") == ("match", ["a_1", "B2"], "==", "x")


def test_values() -> None:
    def value(text: str) -> str:
        return parse(f"x == {text}")[3]

    assert value("bare") == "bare"
    assert value("dotted.sel") == "dotted.sel"  # a selector used as a value is its dotted text
    assert value('a.b["c d"]') == "a.b.c d"
    assert value("42") == "42"
    assert value("-7") == "-7"
    assert value("0.25") == "0.25"
    assert value("-0.5") == "-0.5"
    assert value("true") == "true"
    assert value('"with space"') == "with space"
    assert value('"tab\\there"') == "tab\there"
    assert value('"\\u00e9\\x41\\101\\\\"') == "éAA\\"
    assert value('"\\U0001F600"') == "\U0001f600"
    assert value("`raw\\n`") == "raw\\n"  # backticks: no escapes
    assert value("`a\r\nb`") == "a\nb"  # ... and carriage returns dropped, as Go's Unquote does
    assert value('""') == ""
    assert value("``") == ""


# Inputs and texts from go-bexpr's parser (position "line:column (byte offset)", then the rule).
SYNTAX_ERRORS = {
    "foo": '1:4 (3): no match found, expected: "!=", ".", "==", "[", [ \\t\\r\\n] or [a-zA-Z0-9_]',
    "Address == 10.10.10.10": '1:17 (16): rule "number": Invalid number literal',
    'foo == "12x': '1:12 (11): rule "string": Unterminated string literal',
    "foo == `12x": '1:12 (11): rule "string": Unterminated string literal',
    "foo == 3x": '1:9 (8): rule "number": Invalid number literal',
    "foo[3] == abc": '1:5 (4): rule "index": Invalid index',
    'x in foo["abc"': '1:15 (14): rule "index": Unclosed index expression',
    'foo["abc" == 3': '1:11 (10): rule "index": Unclosed index expression',
    "x in 32": '1:6 (5): rule "match": Invalid selector',
    "32 == 32": '1:4 (3): no match found, expected: "in", "not" or [ \\t\\r\\n]',
    "32 is empty": '1:4 (3): no match found, expected: "in", "not" or [ \\t\\r\\n]',
    "x in foo abc": '1:10 (9): no match found, expected: "and", "or", [ \\t\\r\\n] or EOF',
    "x in foo and ": '1:14 (13): no match found, expected: "(", "-", "0", "\\"", "`", "not", [ \\t\\r\\n], '
    "[1-9] or [a-zA-Z]",
    "x in foo or not ": '1:17 (16): no match found, expected: "!=", "(", "-", "0", "==", "\\"", "`", '
    '"contains", "in", "is", "matches", "not", [ \\t\\r\\n], [1-9] or [a-zA-Z]',
    "(foo == 4": '1:10 (9): rule "grouping": Unmatched parentheses',
    "": '1:1 (0): no match found, expected: "(", "-", "0", "\\"", "`", "not", [ \\t\\r\\n], [1-9] or [a-zA-Z]',
    "Node==host-name": '1:11 (10): no match found, expected: ".", "[", [ \\t\\r\\n], [a-zA-Z0-9_] or EOF',
    "x is emptyx": "1:11 (10): no match found, expected: [ \\t\\r\\n] or EOF",
    "Meta.é == 1": "1:6 (5): no match found, expected: [a-zA-Z]",
    # byte offsets count UTF-8 bytes, columns count characters; a newline starts line 2 at column 0
    'x == "éé" y': '1:11 (12): no match found, expected: "and", "or", [ \\t\\r\\n] or EOF',
    "x == 1\nand": "2:4 (10): no match found, expected: [ \\t\\r\\n]",
    # go-bexpr's string rule ends at the first '"', so \" cannot be written; Go's Unquote then fails
    'x == "a\\"b"': '1:6 (5): rule "string": invalid syntax',
    'x == "a\\qb"': '1:6 (5): rule "string": invalid syntax',
    'x == "a\nb"': '1:6 (5): rule "string": invalid syntax',
    "x == \"\\'\"": '1:6 (5): rule "string": invalid syntax',
    'x == "\\ud800"': '1:6 (5): rule "string": invalid syntax',
    "x == 080": '1:7 (6): rule "number": Invalid number literal',
    "Interval == 10s": '1:15 (14): rule "number": Invalid number literal',  # durations must be quoted
    "x == 1.": '1:7 (6): rule "number": Invalid number literal',
    "x == 1 or(y == 2)": "1:10 (9): no match found, expected: [ \\t\\r\\n]",  # "or" needs whitespace after
}


@pytest.mark.parametrize("text", list(SYNTAX_ERRORS))
def test_syntax_errors_have_go_bexpr_text(text: str) -> None:
    with pytest.raises(FilterError) as info:
        parse(text)
    assert info.value.detail == SYNTAX_ERRORS[text]
    assert str(info.value).startswith("Failed to create boolean expression evaluator: ")


def test_deep_and_long_expressions() -> None:
    a = m("a", "==", "1")
    assert parse("(" * 31 + "a == 1" + ")" * 31) == a
    assert err("(" * 40 + "Node.Node == x" + ")" * 40) == "1:34 (33): expression nests deeper than 32 parentheses"
    assert "nests deeper" in err("(" * 5000)
    assert parse("not " * 3000 + "a == 1") == a  # an even number of nots cancels
    assert parse(" or ".join(["a == 1"] * 3000)) == ("or", [a] * 3000)
    long_chain = compile_filter(" and ".join(["Service.Port == 80"] * 2000), CHECK_SERVICE_NODE)
    assert long_chain.matches(ENTRY)


# ---------------------------------------------------------------------- validation against the schema


def test_unknown_selectors() -> None:
    assert err("Nope == 1") == 'Selector "Nope" is not valid'
    assert err("Service.Nope == 1") == 'Selector "Service.Nope" is not valid'
    assert err("Checks.Nope == 1") == 'Selector "Checks.Nope" is not valid'
    assert err("Service.Meta.env.deeper == 1") == 'Selector "Service.Meta.env.deeper" is not valid'
    assert err("Service.Tags.x == 1") == 'Selector "Service.Tags.x" is not valid'
    assert err("service.Service == web") == 'Selector "service" is not valid'  # case-sensitive
    assert err('Service["Meta"]["a\\tb"].c == 1') == 'Selector "Service.Meta.a\\tb.c" is not valid'
    assert err("Definition.HTTP == x", HEALTH_CHECK) == 'Selector "Definition" is not valid'  # bexpr:"-"
    assert err("CreateIndex == 1", SERVICE_NODE) == 'Selector "CreateIndex" is not valid'


def test_operators_each_type_supports() -> None:
    assert err("Service == web") == 'Invalid match operator "Equal" for selector "Service"'
    assert err("Service.Tags == v1") == 'Invalid match operator "Equal" for selector "Service.Tags"'
    assert err("Service.Meta != x") == 'Invalid match operator "Not Equal" for selector "Service.Meta"'
    assert err("Checks == x") == 'Invalid match operator "Equal" for selector "Checks"'
    assert err("x in Checks") == 'Invalid match operator "In" for selector "Checks"'
    assert err("Service.Port contains 8") == 'Invalid match operator "In" for selector "Service.Port"'
    assert err("Service.Port matches 8") == 'Invalid match operator "Matches" for selector "Service.Port"'
    assert err("Service.Service is empty") == 'Invalid match operator "Is Empty" for selector "Service.Service"'
    assert err("Service.Meta.env is not empty") == (
        'Invalid match operator "Is Not Empty" for selector "Service.Meta.env"'
    )
    assert err("Service.Tags matches x") == 'Invalid match operator "Matches" for selector "Service.Tags"'
    assert err("Service.EnableTagOverride not matches x") == (
        'Invalid match operator "Not Matches" for selector "Service.EnableTagOverride"'
    )


def test_values_are_converted_to_the_field_type() -> None:
    assert err("Service.Port == abc") == (
        'Failed to coerce value "abc" for selector "Service.Port": strconv.ParseInt: parsing "abc": invalid syntax'
    )
    assert err("Service.Port == 1.5") == (
        'Failed to coerce value "1.5" for selector "Service.Port": strconv.ParseInt: parsing "1.5": invalid syntax'
    )
    assert err("Service.Port == 99999999999999999999") == (
        'Failed to coerce value "99999999999999999999" for selector "Service.Port": '
        'strconv.ParseInt: parsing "99999999999999999999": value out of range'
    )
    assert err("Service.EnableTagOverride == yes") == (
        'Failed to coerce value "yes" for selector "Service.EnableTagOverride": '
        'strconv.ParseBool: parsing "yes": invalid syntax'
    )
    assert ok('Service.Port == "0x50"') and ok('Service.Port == "0120"') and ok('Service.Port == "8_0"')
    assert ok("Service.EnableTagOverride == T") and ok('Service.EnableTagOverride == "1"')


def test_regular_expressions_are_checked_when_compiled() -> None:
    assert err("Service.Service matches `(`") == (
        'Failed to compile regular expression "(": error parsing regexp: missing closing ): `(`'
    )
    assert err('Service.Service matches "[a"') == (
        'Failed to compile regular expression "[a": error parsing regexp: missing closing ]: `[a`'
    )
    assert err("Service.Service matches `*`") == (
        'Failed to compile regular expression "*": error parsing regexp: missing argument to repetition '
        "operator: `*`"
    )
    # Perl features RE2 does not have are refused rather than given Python's meaning
    assert "invalid or unsupported Perl syntax: `(?=`" in err("Service.Service matches `w(?=e)`")
    assert "invalid or unsupported Perl syntax: `(?<!`" in err("Service.Service matches `(?<!x)b`")
    assert "invalid escape sequence: `\\1`" in err("Service.Service matches `(a)\\1`")
    assert "invalid nested repetition operator: `*+`" in err("Service.Service matches `a*+`")
    assert ok("Service.Service matches `^w.b\\z`") and ok("Service.Service matches `[(]?we`")


def test_validation_reports_the_first_error_left_to_right() -> None:
    assert err("Nope == 1 or Service.Port == x") == 'Selector "Nope" is not valid'
    assert err("Service.Port == 80 and (Service.Tags == x or Nope == 1)") == (
        'Invalid match operator "Equal" for selector "Service.Tags"'
    )
    assert err("not Service.Port == x").startswith('Failed to coerce value "x"')


# ---------------------------------------------------------------------- evaluation


def test_strings() -> None:
    assert ok("Service.Service == web") and not ok("Service.Service == Web")  # case-sensitive
    assert ok("Service.Service != db") and not ok("Service.Service != web")
    assert ok("eb in Service.Service") and ok("Service.Service contains we")  # substring
    assert ok('"" in Service.Service') and not ok("x in Service.Service")
    assert ok("x not in Service.Service") and ok("Service.Service not contains bd")
    assert ok("Service.Service matches `^w`") and not ok("Service.Service matches `^e`")
    assert ok("Service.Service matches eb")  # unanchored, like Go's regexp.Match
    assert ok("Service.Service not matches `^db$`")
    assert ok('Service.Address == ""') and ok("Service.Address == ``")


def test_lists_of_strings() -> None:
    assert ok("v1 in Service.Tags") and ok("Service.Tags contains primary")
    assert not ok("v in Service.Tags")  # membership, not substring
    assert ok("v2 not in Service.Tags") and not ok("Service.Tags not contains v1")
    assert ok("Service.Tags is not empty") and not ok("Service.Tags is empty")
    assert ok("Checks.ServiceTags is empty")  # the node check has no tags: any element matches


def test_maps() -> None:
    assert ok("Service.Meta.env == prod") and ok('Service.Meta["env"] == prod')
    assert ok('Service.Meta["team name"] == core')
    assert ok("env in Service.Meta") and not ok("prod in Service.Meta")  # key membership
    assert ok("Service.Meta contains env") and ok("Service.Meta not contains nope")
    assert ok("Service.Meta is not empty") and not ok("Service.Meta is empty")
    assert ok('"" in Node.Meta') and ok('Node.Meta[""] == blank')
    assert ok("lan in Node.TaggedAddresses") and ok("Node.TaggedAddresses.lan == `10.0.0.1`")
    assert ok("Service.TaggedAddresses.lan.Port == 80") and ok("Service.TaggedAddresses.lan.Address matches `^10\\.`")
    assert ok("Service.TaggedAddresses is not empty")


def test_missing_map_keys_follow_go_bexpr() -> None:
    # ==, in/contains and `is not empty` are false; !=, not in, is empty, matches, not matches are true
    assert not ok("Service.Meta.nope == x")
    assert ok("Service.Meta.nope != x")
    assert not ok("x in Service.Meta.nope") and not ok("Service.Meta.nope contains x")
    assert ok("x not in Service.Meta.nope")
    assert ok("Service.Meta.nope matches `^never$`")  # go-bexpr's rule for an absent key, quirk included
    assert ok("Service.Meta.nope not matches `.*`")
    assert not ok("Service.TaggedAddresses.wan.Port == 0")
    assert ok("Service.TaggedAddresses.wan.Port != 0")
    schema = Struct({"Headers": Map(Slice(Prim("string")))})
    assert ok("Headers.X is empty", {"Headers": {}}, schema)
    assert not ok("Headers.X is not empty", {"Headers": {}}, schema)
    assert ok("Headers.X is not empty", {"Headers": {"X": ["1"]}}, schema)
    assert ok("a in Headers.X", {"Headers": {"X": ["a"]}}, schema)


def test_numbers_and_bools() -> None:
    assert ok("Service.Port == 80") and ok("Service.Port != 81") and not ok("Service.Port == 8")
    assert ok('Service.Port == "+80"')  # Go's ParseInt takes a sign; "+80" is no number literal, so quote it
    assert err("Service.Port == +80").startswith("1:17 (16): no match found")
    assert ok("Service.Weights.Passing == 3") and ok("Service.Weights.Warning != 3")
    assert ok("Service.EnableTagOverride == true") and ok("Service.EnableTagOverride != false")
    assert ok("Service.EnableTagOverride == TRUE") and not ok("Service.EnableTagOverride == 0")


def test_selecting_through_lists_means_any_element() -> None:
    assert ok("Checks.Status == critical") and ok("Checks.Status == passing")
    assert not ok("Checks.Status == warning")
    assert ok("Checks.Status != passing")  # the critical check is not passing
    assert ok("Checks.Status != critical")  # ... and the serf check is not critical
    assert not ok("Checks.Status != passing", {**ENTRY, "Checks": [ENTRY["Checks"][0]]})
    assert ok("Checks.CheckID matches `^service:`")
    assert ok("v1 in Checks.ServiceTags") and ok("v1 not in Checks.ServiceTags")
    no_checks = {**ENTRY, "Checks": []}
    assert ok("Checks is empty", no_checks)
    for expr in ("Checks.Status == passing", "Checks.Status != passing", "x not in Checks.ServiceTags"):
        assert not ok(expr, no_checks)  # nothing to match against: false, even for negated operators
    assert ok("not Checks.Status == passing", no_checks)


def test_absent_fields_are_go_zero_values() -> None:
    bare = {"Node": {}, "Service": {"Service": "web"}}  # as if Consul's struct had empty fields
    assert ok('Node.Node == ""', bare) and ok("Service.Port == 0", bare)
    assert ok("Service.EnableTagOverride == false", bare) and ok("Service.Tags is empty", bare)
    assert ok("Service.Meta is empty", bare) and ok("Checks is empty", bare)
    assert ok('Service.Proxy.DestinationServiceName == ""', bare)
    assert ok("Service.Connect.Native == false", bare) and ok("Service.Proxy.Upstreams is empty", bare)
    assert not ok("Service.Proxy.Upstreams.DestinationName != x", bare)  # no upstreams: nothing matches
    assert ok("Service.Port == 0", {"Node": None, "Service": {"Port": None}})


def test_agent_service_proxy_fields_sent_in_any_spelling() -> None:
    svc = {"ID": "web-sidecar-proxy", "Service": "web-sidecar-proxy", "Kind": "connect-proxy", "Port": 21000,
           "Proxy": {"destination_service_name": "web", "localServicePort": 8080,
                     "upstreams": [{"DestinationName": "db", "local_bind_port": 9191}]},
           "Connect": {"native": True}}  # fmt: skip
    assert ok("Proxy.DestinationServiceName == web", svc, AGENT_SERVICE)
    assert ok("Proxy.LocalServicePort == 8080", svc, AGENT_SERVICE)
    assert ok("Proxy.Upstreams.LocalBindPort == 9191", svc, AGENT_SERVICE)
    assert ok("Connect.Native == true", svc, AGENT_SERVICE)
    assert ok("Kind == `connect-proxy`", svc, AGENT_SERVICE)
    assert ok("Proxy.Upstreams is not empty", svc, AGENT_SERVICE)
    assert ok("Proxy.MeshGateway.Mode == ``", svc, AGENT_SERVICE)


def test_every_endpoint_schema_accepts_its_documented_selectors() -> None:
    for schema, exprs in {
        NODE: ["Node == n", "ID == x", "Address == a", "Datacenter == dc1", "Meta.k == v", "k in Meta",
               "TaggedAddresses.lan == x", "PeerName == p", "Partition == p"],
        SERVICE_NODE: ["ServiceName == web", "v1 in ServiceTags", "NodeMeta.rack == a", "ServicePort == 80",
                       "ServiceConnect.Native == true", "ServiceProxy.DestinationServiceName == web",
                       "ServiceWeights.Passing == 1", "ServiceTaggedAddresses.lan.Port == 1",
                       "ServiceProxy.Upstreams.DestinationName == db", "ServiceEnableTagOverride == false",
                       "ServiceKind == ``", "ServiceSocketPath == ``", "ServiceMeta is empty"],
        NODE_SERVICE: ["Service == web", "Kind == x", "Tags is empty", "Connect.Native == true",
                       "Proxy.TransparentProxy.OutboundListenerPort == 15001", "Proxy.Expose.Paths.Path == `/h`",
                       "Proxy.AccessLogs.Enabled == true", "Proxy.EnvoyExtensions.Name == x"],
        HEALTH_CHECK: ["Status == passing", "CheckID == serfHealth", "ServiceTags is empty", "Type == ttl",
                       "ExposedPort == 0", "Interval == `10s`", "Notes == x", "Output contains x"],
        INTENTION: ["SourceName == web", "DestinationName == db", "Action == allow", "Precedence == 9",
                    "Meta.k == v", "SourceType == consul", "Description == x", "ID == x"],
    }.items():  # fmt: skip
        for expr in exprs:
            compile_filter(expr, schema)


def test_filter_helpers_and_cache() -> None:
    f = compile_filter("Service.Port == 80", CHECK_SERVICE_NODE)
    assert f is compile_filter("Service.Port == 80", CHECK_SERVICE_NODE)  # compiled once, then reused
    other = {**ENTRY, "Service": {**ENTRY["Service"], "Port": 81}}
    assert f.select([ENTRY, other, ENTRY]) == [ENTRY, ENTRY]
    assert f.select_values({"a": ENTRY, "b": other}) == {"a": ENTRY}
    assert compile_filter("Port == 80", NODE_SERVICE).matches(ENTRY["Service"])


# ---------------------------------------------------------------------- the package's seams


def test_each_seam_works_on_its_own() -> None:
    from registry.filtering.literals import coerce
    from registry.filtering.regexp import go_regexp
    from registry.filtering.schema import INT, STRING, subfield

    # the schema answers which field type a selector part reaches
    assert subfield(CHECK_SERVICE_NODE, "Service") is NODE_SERVICE
    assert subfield(CHECK_SERVICE_NODE, "Checks") is not None
    assert subfield(subfield(CHECK_SERVICE_NODE, "Checks"), "Status") is STRING  # through the list
    assert subfield(NODE, "Meta") is not None and subfield(subfield(NODE, "Meta"), "any key") is STRING
    assert subfield(NODE, "Nope") is None and subfield(STRING, "x") is None
    # literals take the field's Go type with strconv's rules
    assert coerce(INT, "0x10") == 16 and coerce(STRING, "0x10") == "0x10"
    with pytest.raises(ValueError, match="strconv.ParseInt"):
        coerce(INT, "ten")
    # RE2 patterns run on Python's re: \z is the end of text, Perl-only syntax is refused
    assert go_regexp("^web\\z").search("web") and not go_regexp("^web\\z").search("web\n")
    with pytest.raises(ValueError, match="unsupported Perl syntax"):
        go_regexp("(?=x)")
    # the parser alone gives the tree the compiler consumes
    assert parse("not Port == 80") == ("not", ("match", ["Port"], "==", "80"))


# ---------------------------------------------------------------------- Go conversions


def test_go_parse_int() -> None:
    assert go_parse_int("80") == 80 and go_parse_int("-80") == -80 and go_parse_int("+8") == 8
    assert go_parse_int("0x1F") == 31 and go_parse_int("0o17") == 15 and go_parse_int("0b101") == 5
    assert go_parse_int("017") == 15 and go_parse_int("0") == 0 and go_parse_int("1_000") == 1000
    assert go_parse_int("-9223372036854775808") == -(2**63)
    for bad, reason in [("", "invalid syntax"), ("-", "invalid syntax"), ("1_", "invalid syntax"),
                        ("_1", "invalid syntax"), ("0x", "invalid syntax"), ("08", "invalid syntax"),
                        ("9223372036854775808", "value out of range"), ("1e3", "invalid syntax"),
                        ("18446744073709551616", "value out of range")]:  # fmt: skip
        with pytest.raises(ValueError) as info:
            go_parse_int(bad)
        assert str(info.value) == f"strconv.ParseInt: parsing {go_quote(bad)}: {reason}"


def test_go_parse_bool_and_quote() -> None:
    assert [go_parse_bool(s) for s in ("1", "t", "T", "TRUE", "true", "True")] == [True] * 6
    assert [go_parse_bool(s) for s in ("0", "f", "F", "FALSE", "false", "False")] == [False] * 6
    with pytest.raises(ValueError, match=r'^strconv.ParseBool: parsing "yes": invalid syntax$'):
        go_parse_bool("yes")
    assert go_quote('a"b\\c') == '"a\\"b\\\\c"'
    assert go_quote("tab\there\n\x01\x7f") == '"tab\\there\\n\\x01\\x7f"'
    assert go_quote("é\u00a0\U0001f600") == '"é\\u00a0\U0001f600"'


# ---------------------------------------------------------------------- fuzzing

_TOKENS = st.sampled_from([
    " ", "  ", "\t", "\n", "(", ")", "[", "]", ".", '"', "`", "\\", "-", "0", "1", "42", "3.5", "==", "!=",
    "and", "or", "not", "in", "is", "empty", "contains", "matches", "Service", "Tags", "Meta", "env", "Checks",
    "Status", "Port", "Node", "x", "é", "\\u00e9", "\\x", "*", "+", "?", "{", "}", "^", "$", "|", "_",
])  # fmt: skip
_SCHEMAS = st.sampled_from([CHECK_SERVICE_NODE, NODE, NODE_SERVICE, AGENT_SERVICE, SERVICE_NODE, HEALTH_CHECK])
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(
        ["Service", "Tags", "Meta", "env", "Checks", "Status", "Port", "Node", "x", "Proxy", "Upstreams"]),
        inner, max_size=4),
    max_leaves=12,
)  # fmt: skip


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.lists(_TOKENS, max_size=25).map("".join) | st.text(max_size=40), schema=_SCHEMAS, obj=_JSON)
def test_fuzz_only_filter_errors_and_evaluation_never_raises(text: str, schema: Struct, obj: object) -> None:
    try:
        f = compile_filter(text, schema)
    except FilterError as exc:
        assert str(exc).startswith(filtering.ERROR_PREFIX)
        return
    assert f.matches(obj) in (True, False)
    assert f.matches(ENTRY) in (True, False)


@settings(max_examples=200, deadline=None)
@given(key=st.text(max_size=8), value=st.text(max_size=8))
def test_fuzz_string_literals_round_trip(key: str, value: str) -> None:
    # a backtick literal holds anything but a backtick; the value compares equal to the map entry
    if "`" in key or "`" in value or "\r" in key or "\r" in value:
        return
    expr = f"Service.Meta[`{key}`] == `{value}`"
    obj = {"Service": {"Meta": {key: value}}}
    assert compile_filter(expr, CHECK_SERVICE_NODE).matches(obj)
