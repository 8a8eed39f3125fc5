"""Intentions: precedence table, evaluation order, fail-closed decisions, config-entry conversion."""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ca.spiffe import AgentIdentity, ServiceIdentity
from registry.intentions import (
    REASON_DEFAULT_ACL,
    REASON_DEFAULT_INTENTION_POLICY,
    Decision,
    Intention,
    IntentionError,
    IntentionIndex,
    ServiceName,
    build_index,
    compute_precedence,
    config_entries_to_intentions,
    decide,
    decide_uri,
    intentions_to_config_entries,
    match,
    parse_service_name,
    sort_intentions,
    validate_config_entry,
)

TD = "7f42f496-fbc7-8692-05ed-334aa5340c1e.consul"

# (source pattern kind, destination pattern kind) -> precedence, from Consul's documented table.
TABLE = {
    ("exact", "exact"): 9, ("ns", "exact"): 8, ("all", "exact"): 7,
    ("exact", "ns"): 6, ("ns", "ns"): 5, ("all", "ns"): 4,
    ("exact", "all"): 3, ("ns", "all"): 2, ("all", "all"): 1,
}
PATTERN = {"exact": ("team", "web"), "ns": ("team", "*"), "all": ("*", "*")}


@pytest.mark.parametrize(("src", "dst"), list(TABLE))
def test_precedence_table(src: str, dst: str) -> None:
    sns, sname = PATTERN[src]
    dns, dname = PATTERN[dst]
    ixn = Intention(sname, dname if dname != "web" else "db", source_ns=sns, destination_ns=dns)
    assert ixn.precedence == TABLE[(src, dst)]


def test_precedence_ce_examples() -> None:
    assert Intention("web", "db").precedence == 9
    assert Intention("*", "db").precedence == 8
    assert Intention("web", "*").precedence == 6
    assert Intention("*", "*").precedence == 5
    assert compute_precedence("default", "web", "default", "db") == 9


kind_st = st.sampled_from(["exact", "ns", "all"])
ns_st = st.sampled_from(["default", "team", "Team"])
name_st = st.sampled_from(["web", "db", "api", "Web"])


@st.composite
def side(draw: st.DrawFn) -> tuple[str, str, str]:
    kind = draw(kind_st)
    if kind == "all":
        return kind, "*", "*"
    ns = draw(ns_st)
    return kind, ns, "*" if kind == "ns" else draw(name_st)


@given(side(), side())
def test_precedence_property(src: tuple[str, str, str], dst: tuple[str, str, str]) -> None:
    ixn = Intention(src[2], dst[2], source_ns=src[1], destination_ns=dst[1])
    assert ixn.precedence == TABLE[(src[0], dst[0])]


# ---------------------------------------------------------------------------------------------------
# decide against a brute-force reference


@st.composite
def intention_st(draw: st.DrawFn) -> Intention:
    _, sns, sname = draw(side())
    _, dns, dname = draw(side())
    l7 = dname != "*" and dns != "*" and draw(st.integers(0, 9)) == 0
    if l7:
        return Intention(sname, dname, action="", source_ns=sns, destination_ns=dns,
                         permissions=({"Action": "allow", "HTTP": {"PathPrefix": "/"}},))
    return Intention(sname, dname, action=draw(st.sampled_from(["allow", "deny"])),
                     source_ns=sns, destination_ns=dns, id=draw(st.sampled_from(["", "a", "b"])))


def _side_matches(pat_ns: str, pat_name: str, ns: str, name: str) -> bool:
    if pat_ns == "*":
        return True
    if pat_ns.lower() != ns.lower():
        return False
    return pat_name == "*" or pat_name.lower() == name.lower()


def reference(ixns: list[Intention], src: ServiceName, dst: ServiceName, default: bool) -> bool:
    cands = [i for i in ixns
             if _side_matches(i.source_ns, i.source_name, *src)
             and _side_matches(i.destination_ns, i.destination_name, *dst)]
    if not cands:
        return default
    best = max(c.precedence for c in cands)
    # Fail closed: among the highest-precedence matches, any deny (or L7) denies.
    return all(c.allows for c in cands if c.precedence == best)


exact_st = st.builds(ServiceName, st.sampled_from(["default", "team", "TEAM"]),
                     st.sampled_from(["web", "db", "api", "WEB", "cache"]))


@settings(max_examples=400)
@given(st.lists(intention_st(), max_size=25), exact_st, exact_st, st.booleans())
def test_decide_matches_reference(ixns: list[Intention], src: ServiceName, dst: ServiceName,
                                  default: bool) -> None:
    d = decide(build_index(ixns), src, dst, default)
    assert d.allowed == reference(ixns, src, dst, default)
    if d.matched is None:
        assert d.reason == REASON_DEFAULT_ACL
    else:
        assert _side_matches(d.matched.source_ns, d.matched.source_name, *src)
        assert _side_matches(d.matched.destination_ns, d.matched.destination_name, *dst)
        prefix = "Matched L7 intention: " if d.matched.permissions else "Matched L4 intention: "
        assert d.reason == prefix + str(d.matched)


@given(st.lists(intention_st(), max_size=25))
def test_decide_is_independent_of_input_order(ixns: list[Intention]) -> None:
    shuffled = list(ixns)
    random.Random(len(ixns)).shuffle(shuffled)
    a, b = build_index(ixns), build_index(shuffled)
    for src in [ServiceName("default", "web"), ServiceName("team", "api")]:
        for dst in [ServiceName("default", "db"), ServiceName("team", "web")]:
            assert decide(a, src, dst, True) == decide(b, src, dst, True)


@given(st.lists(intention_st(), max_size=25), exact_st, st.sampled_from(["source", "destination"]))
def test_match_is_sorted_and_complete(ixns: list[Intention], name: ServiceName, by: str) -> None:
    got = match(ixns, by, name)  # type: ignore[arg-type]
    want = [i for i in ixns if (_side_matches(i.source_ns, i.source_name, *name) if by == "source"
                                else _side_matches(i.destination_ns, i.destination_name, *name))]
    assert sorted(map(id, got)) == sorted(map(id, want))
    assert got == sort_intentions(got)
    assert [i.precedence for i in got] == sorted((i.precedence for i in got), reverse=True)


# ---------------------------------------------------------------------------------------------------
# decisions and reasons


def test_reasons_and_defaults() -> None:
    ix = build_index([Intention("web", "db"), Intention("*", "db", action="deny")])
    d = decide(ix, "web", "db", False)
    assert d == Decision(True, "Matched L4 intention: default/web => default/db (Precedence: 9, Action: ALLOW)",
                         d.matched)
    d = decide(ix, "api", "db", True)
    assert not d.allowed
    assert d.reason == "Matched L4 intention: default/* => default/db (Precedence: 8, Action: DENY)"
    assert decide(ix, "api", "cache", True) == Decision(True, REASON_DEFAULT_ACL, None)
    assert decide(ix, "api", "cache", False) == Decision(False, REASON_DEFAULT_ACL, None)
    d = decide(ix, "api", "cache", False, default_reason=REASON_DEFAULT_INTENTION_POLICY)
    assert d == Decision(False, "Default intention policy", None)


def test_l7_intention_is_a_deny_at_l4_cve_2021_36213() -> None:
    perms = ({"Action": "deny", "HTTP": {"PathPrefix": "/admin"}},)
    ix = build_index([Intention("web", "db", action="", permissions=perms)])
    for default in (True, False):
        d = decide(ix, "web", "db", default)
        assert not d.allowed
        assert d.reason.startswith("Matched L7 intention: default/web => default/db (Precedence: 9")
    allow_perms = ({"Action": "allow", "HTTP": {"PathPrefix": "/"}},)
    ix = build_index([Intention("web", "db", action="", permissions=allow_perms)])
    assert not decide(ix, "web", "db", True).allowed


def test_duplicates_resolve_deny_first() -> None:
    a = Intention("web", "db", action="allow", id="1")
    d = Intention("Web", "db", action="deny", id="2")
    for order in ([a, d], [d, a]):
        assert not decide(build_index(order), "web", "db", True).allowed


def test_matching_is_case_insensitive() -> None:
    ix = build_index([Intention("Web", "DB", action="deny")])
    assert not decide(ix, "web", "db", True).allowed
    assert not decide(ix, "WEB", "Db", True).allowed


def test_namespaces() -> None:
    ix = build_index([
        Intention("*", "db", source_ns="team", action="allow"),
        Intention("*", "*", source_ns="*", destination_ns="*", action="deny"),
    ])
    assert decide(ix, "team/web", "db", False).allowed
    assert not decide(ix, "other/web", "db", True).allowed
    assert not decide(ix, "team/web", "other/db", True).allowed


@pytest.mark.parametrize("bad", ["", "*", "a/b/c", "web*", "we b", "/web", "web/", "*/web", "../x", 5, None])
def test_unparseable_names_are_denied(bad: object) -> None:
    ix = build_index([Intention("*", "*", source_ns="*", destination_ns="*")])
    d = decide(ix, bad, "db", True)  # type: ignore[arg-type]
    assert not d.allowed and d.reason.startswith("Invalid source service") and d.matched is None
    d = decide(ix, "web", bad, True)  # type: ignore[arg-type]
    assert not d.allowed and d.reason.startswith("Invalid destination service")


def test_identities_as_sources() -> None:
    ix = build_index([Intention("web", "db")])
    assert decide(ix, ServiceIdentity(TD, "default", "dc1", "web"), "db", False).allowed
    # A partition we do not model is not silently folded into "default".
    foreign = ServiceIdentity(TD, "default", "dc1", "web", partition="other")
    assert not decide(ix, foreign, "db", True).allowed


def test_decide_uri() -> None:
    ix = build_index([Intention("web", "db")])
    web = ServiceIdentity(TD, "default", "dc1", "web").uri()
    assert decide_uri(ix, web, "db", False).allowed
    d = decide_uri(ix, web + "/", "db", True)
    assert d == Decision(False, "ClientCertURI not a valid Connect identifier", None)
    d = decide_uri(ix, AgentIdentity(TD, "dc1", "n1").uri(), "db", True)
    assert d == Decision(False, "ClientCertURI not a valid Service identifier", None)
    assert not decide_uri(ix, f"spiffe://{TD}/ns/default/dc/dc1/svc/w%65b", "db", True).allowed


def test_match_api() -> None:
    ixns = [Intention("web", "db"), Intention("*", "db", action="deny"), Intention("web", "*"),
            Intention("api", "cache")]
    got = match(ixns, "destination", "db")
    assert [(i.source_name, i.destination_name) for i in got] == [("web", "db"), ("*", "db"), ("web", "*")]
    got = match(build_index(ixns), "source", "default/web")
    assert [(i.source_name, i.destination_name) for i in got] == [("web", "db"), ("*", "db"), ("web", "*")]
    with pytest.raises(IntentionError, match="'by' parameter must be one of 'source' or 'destination'"):
        match(ixns, "sideways", "db")  # type: ignore[arg-type]
    with pytest.raises(IntentionError):
        match(ixns, "source", "a/b/c")


def test_evaluation_order_tie_break_is_lexical() -> None:
    ixns = [Intention("b", "db"), Intention("a", "db"), Intention("a", "cache")]
    assert [(i.source_name, i.destination_name) for i in sort_intentions(ixns)] == \
        [("a", "cache"), ("a", "db"), ("b", "db")]


def test_parse_service_name() -> None:
    assert parse_service_name("web") == ServiceName("default", "web")
    assert parse_service_name("team/web") == ServiceName("team", "web")
    assert parse_service_name("*/*", allow_wildcard=True) == ServiceName("*", "*")
    with pytest.raises(IntentionError, match="exact value cannot follow wildcard namespace"):
        parse_service_name("*/web", allow_wildcard=True)


# ---------------------------------------------------------------------------------------------------
# validation and JSON


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"source_name": "web*"}, "SourceName: wildcard character '*' cannot be used with partial values"),
    ({"destination_name": "*db"}, "DestinationName: wildcard character '*' cannot be used with partial values"),
    ({"source_ns": "te*m"}, "SourceNS: wildcard character '*' cannot be used with partial values"),
    ({"source_ns": "*"}, "SourceName: exact value cannot follow wildcard namespace"),
    ({"destination_ns": "*"}, "DestinationName: exact value cannot follow wildcard namespace"),
    ({"source_name": ""}, "SourceName must be set"),
    ({"destination_ns": ""}, "DestinationNS must be set"),
    ({"source_name": "a/b"}, "SourceName: invalid name 'a/b'"),
    ({"action": "permit"}, "Action must be set to 'allow' or 'deny'"),
    ({"action": ""}, "Action must be set to 'allow' or 'deny'"),
    ({"source_type": "external"}, "SourceType must be set to 'consul'"),
    ({"description": "x" * 513}, "Description exceeds maximum length 512"),
    ({"meta": {str(i): "" for i in range(65)}}, "Meta exceeds maximum element count 64"),
    ({"meta": {"k" * 129: ""}}, "exceeds maximum length 128"),
    ({"meta": {"k": "v" * 513}}, "Meta value for key 'k' exceeds maximum length 512"),
    ({"permissions": ({"Action": "allow"},)}, "Action must be omitted if Permissions are specified"),
    ({"permissions": ({"Action": "allow"},), "action": "", "destination_name": "*"},
     "Permissions cannot be specified on intentions with wildcarded destinations"),
])
def test_validation(kwargs: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"source_name": "web", "destination_name": "db"}
    base.update(kwargs)
    with pytest.raises(IntentionError) as exc:
        Intention(**base)  # type: ignore[arg-type]
    assert any(message in e for e in exc.value.errors), exc.value.errors


def test_multiple_errors_are_all_reported() -> None:
    with pytest.raises(IntentionError) as exc:
        Intention("", "", action="nope")
    assert len(exc.value.errors) == 3 and str(exc.value).startswith("3 errors occurred")


def test_api_json_round_trip() -> None:
    t = datetime(2018, 5, 21, 16, 41, 27, 977155, tzinfo=UTC)
    ixn = Intention("web", "db", action="deny", description="d", meta={"k": "v"}, id="8f246b77",
                    created_at=t, updated_at=t, create_index=11, modify_index=12)
    body = ixn.to_api_dict()
    assert body == {
        "ID": "8f246b77", "Description": "d", "SourceNS": "default", "SourceName": "web",
        "DestinationNS": "default", "DestinationName": "db", "SourceType": "consul", "Action": "deny",
        "Meta": {"k": "v"}, "Precedence": 9, "CreatedAt": "2018-05-21T16:41:27.977155Z",
        "UpdatedAt": "2018-05-21T16:41:27.977155Z", "CreateIndex": 11, "ModifyIndex": 12,
    }
    assert Intention.from_api_dict(json.loads(json.dumps(body))) == ixn
    assert Intention.from_api_dict({"sourcename": "web", "DESTINATIONNAME": "db", "Action": "allow",
                                    "SourceNS": "", "CreatedAt": "2018-05-21T16:41:27.977155457Z"}) == \
        Intention("web", "db", created_at=t)
    assert Intention("web", "db").to_api_dict()["CreatedAt"] == "0001-01-01T00:00:00Z"
    with pytest.raises(IntentionError):
        Intention.from_api_dict({"SourceName": 5, "DestinationName": "db", "Action": "allow"})
    with pytest.raises(IntentionError):
        Intention.from_api_dict({"SourceName": "web", "DestinationName": "db", "Action": "allow",
                                 "CreatedAt": "yesterday"})


def test_intentions_are_frozen_values() -> None:
    meta = {"k": "v"}
    ixn = Intention("web", "db", meta=meta)
    meta["k"] = "changed"
    assert ixn.meta["k"] == "v"
    with pytest.raises(TypeError):
        ixn.meta["k"] = "x"  # type: ignore[index]
    assert hash(ixn) == hash(Intention("web", "db", meta={"other": "x"}))


# ---------------------------------------------------------------------------------------------------
# service-intentions config entries


def test_legacy_to_config_entries() -> None:
    t = datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)
    ixns = [
        Intention("web", "db", id="id-1", meta={"a": "b"}, created_at=t, updated_at=t, create_index=3,
                  modify_index=4),
        Intention("*", "db", action="deny", id="id-2", description="nobody else", create_index=5,
                  modify_index=9),
        Intention("api", "cache", source_ns="team", destination_ns="team"),
    ]
    entries = intentions_to_config_entries(ixns)
    assert entries == [
        {"Kind": "service-intentions", "Name": "db", "Sources": [
            {"Name": "web", "Action": "allow", "Precedence": 9, "LegacyID": "id-1", "Type": "consul",
             "LegacyMeta": {"a": "b"}, "LegacyCreateTime": "2020-01-02T03:04:05Z",
             "LegacyUpdateTime": "2020-01-02T03:04:05Z"},
            {"Name": "*", "Action": "deny", "Precedence": 8, "LegacyID": "id-2", "Type": "consul",
             "Description": "nobody else"},
        ], "CreateIndex": 3, "ModifyIndex": 9},
        {"Kind": "service-intentions", "Name": "cache", "Namespace": "team", "Sources": [
            {"Name": "api", "Namespace": "team", "Action": "allow", "Precedence": 9, "Type": "consul"},
        ], "CreateIndex": 0, "ModifyIndex": 0},
    ]
    for e in entries:
        validate_config_entry(e)


def test_config_entries_to_legacy() -> None:
    entry = {"Kind": "service-intentions", "Name": "db", "Meta": {"owner": "dba"},
             "Sources": [{"Name": "web", "Action": "allow"}, {"Name": "*", "Action": "deny"}],
             "CreateIndex": 7, "ModifyIndex": 8}
    ixns = config_entries_to_intentions([entry])
    assert [str(i) for i in ixns] == [
        "default/web => default/db (Precedence: 9, Action: ALLOW)",
        "default/* => default/db (Precedence: 8, Action: DENY)",
    ]
    assert all(dict(i.meta) == {"owner": "dba"} and i.create_index == 7 and i.modify_index == 8 for i in ixns)
    back = intentions_to_config_entries(ixns)
    assert back[0]["Meta"] == {"owner": "dba"}
    assert [s["Name"] for s in back[0]["Sources"]] == ["web", "*"]


@given(st.lists(intention_st(), max_size=20))
def test_conversion_round_trips(ixns: list[Intention]) -> None:
    # One intention per (source, destination) pair, as Consul stores them.
    unique: dict[tuple[str, ...], Intention] = {}
    for i in ixns:
        unique.setdefault((i.source_ns.lower(), i.source_name.lower(), i.destination_ns, i.destination_name), i)
    legacy = sort_intentions(unique.values())
    entries = intentions_to_config_entries(legacy)
    assert config_entries_to_intentions(entries) == legacy
    assert intentions_to_config_entries(config_entries_to_intentions(entries)) == entries
    assert sum(len(e["Sources"]) for e in entries) == len(legacy)
    assert len({(e.get("Namespace", "default"), e["Name"]) for e in entries}) == len(entries)


@pytest.mark.parametrize(("entry", "message"), [
    ({"Kind": "service-intentions", "Sources": [{"Name": "web", "Action": "allow"}]}, "Name is required"),
    ({"Kind": "service-intentions", "Name": "db", "Sources": []}, "At least one source is required"),
    ({"Name": "db", "Sources": [{"Action": "allow"}]}, "Sources[0].Name is required"),
    ({"Name": "db", "Sources": [{"Name": "web"}]}, "Sources[0].Action must be set to 'allow' or 'deny'"),
    ({"Name": "db", "Sources": [{"Name": "w*", "Action": "allow"}]},
     "Sources[0].Name: wildcard character '*' cannot be used with partial values"),
    ({"Name": "db", "Sources": [{"Name": "web", "Action": "allow"}, {"Name": "web", "Action": "deny"}]},
     "Sources[1] defines 'default/web' more than once"),
    ({"Name": "db", "Sources": [{"Name": "web", "Action": "allow", "Type": "ext"}]},
     "Sources[0].Type must be set to 'consul'"),
    ({"Name": "*", "Sources": [{"Name": "web", "Permissions": [{"Action": "allow"}]}]},
     "Sources[0].Permissions cannot be specified on intentions with wildcarded destinations"),
    ({"Kind": "service-defaults", "Name": "db", "Sources": [{"Name": "web", "Action": "allow"}]},
     "Kind must be 'service-intentions'"),
])
def test_config_entry_validation(entry: dict[str, object], message: str) -> None:
    with pytest.raises(IntentionError) as exc:
        validate_config_entry(entry)
    assert message in exc.value.errors, exc.value.errors


def test_conflicting_entry_meta_is_refused() -> None:
    with pytest.raises(IntentionError, match="different Meta"):
        intentions_to_config_entries([Intention("web", "db", meta={"a": "1"}),
                                      Intention("api", "db", meta={"a": "2"})])


def test_index_rejects_non_intentions() -> None:
    with pytest.raises((TypeError, AttributeError)):
        IntentionIndex([{"SourceName": "web"}])  # type: ignore[list-item]


# ---------------------------------------------------------------------------------------------------
# timing (printed, not asserted)


@pytest.mark.soak
def test_decide_timing_with_10000_intentions() -> None:
    r = random.Random(42)
    services = [f"svc{i}" for i in range(2000)]
    ixns: dict[tuple[str, str], Intention] = {}
    while len(ixns) < 10_000:
        s = r.choice(services + ["*"])
        d = r.choice(services)
        ixns[(s, d)] = Intention(s, d, action=r.choice(["allow", "deny"]))
    start = time.perf_counter()
    index = build_index(ixns.values())
    built = time.perf_counter() - start
    pairs = [(r.choice(services), r.choice(services)) for _ in range(200_000)]
    start = time.perf_counter()
    for s, d in pairs:
        decide(index, s, d, False)
    elapsed = time.perf_counter() - start
    print(f"\nbuild_index(10,000 intentions): {built * 1000:.0f} ms; "
          f"decide: {len(pairs) / elapsed:,.0f}/s ({elapsed / len(pairs) * 1e6:.2f} us each)")
