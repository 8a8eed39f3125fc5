"""SPIFFE identity construction and the strict parser."""

from __future__ import annotations

import string

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from ca.spiffe import (
    AgentIdentity,
    InvalidSpiffeURI,
    ServerIdentity,
    ServiceIdentity,
    SigningIdentity,
    parse_uri,
    trust_domain_from_cluster_id,
)

CLUSTER = "7f42f496-fbc7-8692-05ed-334aa5340c1e"
TD = f"{CLUSTER}.consul"


def test_trust_domain_from_cluster_id() -> None:
    assert trust_domain_from_cluster_id(CLUSTER) == TD
    for bad in ["", "UPPER-CASE", "a.b", "has space", "-leading"]:
        with pytest.raises(InvalidSpiffeURI):
            trust_domain_from_cluster_id(bad)


@pytest.mark.parametrize(
    ("uri", "identity"),
    [
        (f"spiffe://{TD}/ns/default/dc/dc1/svc/web", ServiceIdentity(TD, "default", "dc1", "web")),
        (f"spiffe://{TD}/ns/team-a/dc/us_east.1/svc/db", ServiceIdentity(TD, "team-a", "us_east.1", "db")),
        (
            f"spiffe://{TD}/ap/part1/ns/default/dc/dc1/svc/web",
            ServiceIdentity(TD, "default", "dc1", "web", partition="part1"),
        ),
        (f"spiffe://{TD}/agent/client/dc/dc1/id/node-1", AgentIdentity(TD, "dc1", "node-1")),
        (f"spiffe://{TD}/ap/p/agent/client/dc/dc1/id/n", AgentIdentity(TD, "dc1", "n", partition="p")),
        (f"spiffe://{TD}/agent/server/dc/dc1", ServerIdentity(TD, "dc1")),
        (f"spiffe://{TD}", SigningIdentity(TD)),
    ],
)
def test_parse_valid(uri: str, identity: object) -> None:
    parsed = parse_uri(uri)
    assert parsed == identity
    assert type(parsed) is type(identity)
    assert parsed.uri() == uri


def test_signing_identity_parts() -> None:
    s = SigningIdentity(TD)
    assert s.cluster_id == CLUSTER
    assert s.domain == "consul"
    assert s.can_sign(ServiceIdentity(TD, "default", "dc1", "web"))
    assert not s.can_sign(ServiceIdentity("other.consul", "default", "dc1", "web"))


BAD_URIS = [
    "",
    "web",
    f"http://{TD}/ns/default/dc/dc1/svc/web",
    f"SPIFFE://{TD}/ns/default/dc/dc1/svc/web",
    f"Spiffe://{TD}/ns/default/dc/dc1/svc/web",
    f"spiffe:/{TD}/ns/default/dc/dc1/svc/web",
    f"spiffe:///{TD}/ns/default/dc/dc1/svc/web",
    f"spiffe://user@{TD}/ns/default/dc/dc1/svc/web",
    f"spiffe://user:pw@{TD}/ns/default/dc/dc1/svc/web",
    f"spiffe://{TD}:8443/ns/default/dc/dc1/svc/web",
    f"spiffe://{TD}/ns/default/dc/dc1/svc/web?x=1",
    f"spiffe://{TD}/ns/default/dc/dc1/svc/web#frag",
    f"spiffe://{TD}/ns/default/dc/dc1/svc/web%2Fdb",
    f"spiffe://{TD}/ns/default/dc/dc1/svc/%77eb",
    f"spiffe://{TD}/ns/default/dc/dc1/svc/web/",
    f"spiffe://{TD}/",
    f"spiffe://{TD}//ns/default/dc/dc1/svc/web",
    f"spiffe://{TD}/ns//dc/dc1/svc/web",
    f"spiffe://{TD}/ns/default/dc/dc1/svc/web/extra",
    f"spiffe://{TD}/ns/default/dc/dc1/svc",
    f"spiffe://{TD}/ns/default/dc/dc1/svc/web/svc/db",
    f"spiffe://{TD}/ns/./dc/dc1/svc/web",
    f"spiffe://{TD}/ns/../dc/dc1/svc/web",
    f"spiffe://{TD}/ns/default/dc/dc1/svc/..",
    f"spiffe://{TD}/ns/default/dc/dc1/svc/web\\db",
    f"spiffe://{TD}/ns/default/dc/dc1/svc/we b",
    f"spiffe://{TD}/ns/default/dc/dc1/svc/web\n",
    f" spiffe://{TD}/ns/default/dc/dc1/svc/web",
    f"spiffe://{TD}/ns/default/dc/dc1/svc/w*b",
    f"spiffe://{TD}/ns/default/dc/dc1/svc/*",
    f"spiffe://{TD}/ns/default/dc/dc1/svc/wéb",
    f"spiffe://{TD}/ap/default/ns/default/dc/dc1/svc/web",
    f"spiffe://{TD}/ap/p/agent/server/dc/dc1",
    f"spiffe://{TD}/agent/node1",
    f"spiffe://{TD}/agent/client/dc/dc1/id",
    f"spiffe://{TD}/agent/server/dc/dc1/id/x",
    f"spiffe://{TD}/gateway/mesh/dc/dc1",
    f"spiffe://{TD}/NS/default/dc/dc1/svc/web",
    f"spiffe://{TD.upper()}/ns/default/dc/dc1/svc/web",
    "spiffe://7F42F496-fbc7-8692-05ed-334aa5340c1e.consul/ns/default/dc/dc1/svc/web",
    f"spiffe://{TD}./ns/default/dc/dc1/svc/web",
    f"spiffe://.{TD}/ns/default/dc/dc1/svc/web",
    f"spiffe://{CLUSTER}..consul/ns/default/dc/dc1/svc/web",
    "spiffe://consul/ns/default/dc/dc1/svc/web",
    "spiffe://",
    "spiffe:///ns/default/dc/dc1/svc/web",
    "spiffe://-bad.consul/ns/default/dc/dc1/svc/web",
    "spiffe://[::1]/ns/default/dc/dc1/svc/web",
    f"spiffe://{TD}/ns/default/dc/dc1/svc/" + "a" * 300,
    "spiffe://" + ("a" * 60 + ".") * 40 + "consul",
]


@pytest.mark.parametrize("uri", BAD_URIS)
def test_parse_rejects(uri: str) -> None:
    with pytest.raises(InvalidSpiffeURI):
        parse_uri(uri)


def test_parse_rejects_non_strings() -> None:
    for value in [None, b"spiffe://a.consul", 5]:
        with pytest.raises(InvalidSpiffeURI):
            parse_uri(value)  # type: ignore[arg-type]


def test_constructors_refuse_unwritable_values() -> None:
    with pytest.raises(InvalidSpiffeURI):
        ServiceIdentity(TD, "default", "dc1", "web/db")
    with pytest.raises(InvalidSpiffeURI):
        ServiceIdentity(TD, "default", "dc1", "")
    with pytest.raises(InvalidSpiffeURI):
        ServiceIdentity("Bad.Consul", "default", "dc1", "web")
    with pytest.raises(InvalidSpiffeURI):
        AgentIdentity(TD, "dc1", "node%41")
    with pytest.raises(InvalidSpiffeURI):
        ServerIdentity(TD, "..")


# ---------------------------------------------------------------------------------------------------
# Properties

name_st = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9._-]{0,20}\Z")
label_st = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?\Z")
td_st = st.builds(lambda labels: ".".join(labels), st.lists(label_st, min_size=2, max_size=4))
partition_st = st.one_of(st.just("default"), name_st)

identity_st = st.one_of(
    st.builds(ServiceIdentity, td_st, name_st, name_st, name_st, partition_st),
    st.builds(AgentIdentity, td_st, name_st, name_st, partition_st),
    st.builds(ServerIdentity, td_st, name_st),
    st.builds(SigningIdentity, td_st),
)


@given(identity_st)
def test_round_trip(identity: object) -> None:
    uri = identity.uri()  # type: ignore[attr-defined]
    assert parse_uri(uri) == identity


@given(st.text(max_size=120))
def test_random_text_parses_only_to_its_own_canonical_form(text: str) -> None:
    try:
        ident = parse_uri(text)
    except InvalidSpiffeURI:
        return
    assert ident.uri() == text


URI_ALPHABET = string.ascii_letters + string.digits + "/:%?#@.-_*\\ \t" + "é"


@st.composite
def mutated(draw: st.DrawFn) -> tuple[object, str]:
    ident = draw(identity_st)
    uri = ident.uri()
    op = draw(st.sampled_from(["insert", "delete", "replace", "swapcase", "pct", "slash", "dup"]))
    i = draw(st.integers(0, len(uri) - 1))
    if op == "insert":
        m = uri[:i] + draw(st.sampled_from(URI_ALPHABET)) + uri[i:]
    elif op == "delete":
        m = uri[:i] + uri[i + 1 :]
    elif op == "replace":
        m = uri[:i] + draw(st.sampled_from(URI_ALPHABET)) + uri[i + 1 :]
    elif op == "swapcase":
        m = uri[:i] + uri[i].swapcase() + uri[i + 1 :]
    elif op == "pct":
        m = uri[:i] + f"%{ord(uri[i]):02X}" + uri[i + 1 :]
    elif op == "slash":
        m = uri + "/"
    else:
        m = uri[:i] + uri[i:] + uri[i:]
    return ident, m


@given(mutated())
def test_mutations_never_parse_to_a_wrong_identity(case: tuple[object, str]) -> None:
    original, m = case
    assume(m != original.uri())  # type: ignore[attr-defined]
    try:
        ident = parse_uri(m)
    except InvalidSpiffeURI:
        return
    # Whatever it parsed to, it is exactly the identity the mutated text spells, never the original.
    assert ident.uri() == m
    assert ident != original
