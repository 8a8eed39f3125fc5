"""Property: the authorize decision fails closed. With no intentions and a default of allow, the only
certificate URIs ever authorized are the canonical SPIFFE IDs of services in this cluster's trust
domain; every other string (near misses of a valid ID included) is a 400 or a deny."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ca.spiffe import ServiceIdentity, parse_uri
from registry.testing import RunningAgent, dev_agent


@pytest.fixture(scope="module")
def running() -> Iterator[RunningAgent]:
    with dev_agent(dns_port=-1) as agent:
        yield agent


def _trust_domain(running: RunningAgent) -> str:
    state = running.agent.connect.ca_state()
    assert state is not None
    return state.trust_domain


@st.composite
def near_misses(draw: st.DrawFn, td: str) -> str:
    valid = ServiceIdentity(td, "default", draw(st.sampled_from(["dc1", "dc2"])),
                            draw(st.sampled_from(["web", "db", "a.b", "x_y"]))).uri()  # fmt: skip
    op = draw(st.sampled_from(["insert", "delete", "replace", "case", "append", "prefix", "keep"]))
    i = draw(st.integers(0, len(valid) - 1))
    ch = draw(st.sampled_from(list("/%.:@?#*\\ -_Aa0\x00\u00e9") + ["%2F", "%2f", "/..", "//"]))
    if op == "insert":
        return valid[:i] + ch + valid[i:]
    if op == "delete":
        return valid[:i] + valid[i + 1 :]
    if op == "replace":
        return valid[:i] + ch + valid[i + 1 :]
    if op == "case":
        return valid[:i] + valid[i:].upper()
    if op == "append":
        return valid + ch
    if op == "prefix":
        return ch + valid
    return valid


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_only_canonical_service_ids_of_our_trust_domain_are_allowed(running: RunningAgent, data: st.DataObject) -> None:
    td = _trust_domain(running)
    uri = data.draw(st.one_of(near_misses(td), st.text(max_size=120),
                              st.just("spiffe://99999999-2222-4333-8444-555555555555.consul/ns/default/dc/dc1/svc/web")))  # fmt: skip
    status, body = running.call(running.agent.connect.authorize("db", uri))
    if status == 200 and body["Authorized"]:
        identity = parse_uri(uri)
        assert isinstance(identity, ServiceIdentity) and identity.trust_domain == td and identity.uri() == uri
    else:
        assert status == 400 or body["Authorized"] is False
