"""Prepared queries under ACLs, on a dev agent with the real resolver (default deny): the stored ``Token`` shown
only to acl:write, ``query``/``query_prefix`` rules on named queries, unnamed queries guarded by their ID
alone, and execute filtering instances with the query's own token when it has one (Consul's
PreparedQuery.Apply/Get/List/Execute and aclfilter)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from registry.testing import async_dev_agent
from tests.conftest import Http

MGMT = "2f0c5d2e-9b8a-4c7d-8e6f-5a4b3c2d1e02"
FILTERED = "X-Consul-Results-Filtered-By-ACLs"


def tok(secret: str) -> dict[str, Any]:
    return {"headers": {"X-Consul-Token": secret}}


@pytest.fixture
async def h() -> AsyncIterator[Http]:
    acl = {"enabled": True, "default_policy": "deny", "tokens": {"initial_management": MGMT}}
    async with async_dev_agent(acl=acl) as running, aiohttp.ClientSession() as session:
        h = Http(session, running.url)
        status, out, _ = await h.put("/v1/catalog/register", {
            "Node": "n1", "Address": "10.0.0.1", "Service": {"Service": "web", "ID": "web", "Port": 80}}, **tok(MGMT))
        assert status == 200, out
        yield h


async def token(h: Http, rules: str) -> tuple[str, str]:
    """A new token with these rules: (secret, accessor)."""
    status, pol, _ = await h.put("/v1/acl/policy", {"Name": f"p{abs(hash(rules))}", "Rules": rules}, **tok(MGMT))
    assert status == 200, pol
    status, t, _ = await h.put("/v1/acl/token", {"Policies": [{"ID": pol["ID"]}]}, **tok(MGMT))
    assert status == 200, t
    return t["SecretID"], t["AccessorID"]


async def create(h: Http, body: dict[str, Any], secret: str = MGMT) -> tuple[int, Any]:
    status, out, _ = await h.call("POST", "/v1/query", body, **tok(secret))
    return status, out


async def test_tokens_are_shown_to_acl_write_only(h: Http) -> None:
    status, named = await create(h, {"Name": "red", "Token": "stored-secret", "Service": {"Service": "web"}})
    assert status == 200
    status, unnamed = await create(h, {"Session": await session(h), "Token": "other-secret",
                                       "Service": {"Service": "web"}})
    assert status == 200, unnamed
    assert (await create(h, {"Name": "plain", "Service": {"Service": "web"}}))[0] == 200
    reader, _ = await token(h, 'query_prefix "" { policy = "read" }')
    status, listed, _ = await h.get("/v1/query", **tok(MGMT))
    assert {q["Name"]: q["Token"] for q in listed} == {"red": "stored-secret", "": "other-secret", "plain": ""}
    status, listed, headers = await h.get("/v1/query", **tok(reader))
    # A list redacts every token, empty or not, and leaves out the unnamed query.
    assert {q["Name"]: q["Token"] for q in listed} == {"red": "<hidden>", "plain": "<hidden>"}
    assert headers.get(FILTERED) == "true"
    status, one, _ = await h.get(f"/v1/query/{named['ID']}", **tok(reader))
    assert status == 200 and one[0]["Token"] == "<hidden>"
    # An unnamed query: whoever has the ID reads it, token redacted.
    nobody, _ = await token(h, 'node "none" { policy = "read" }')
    status, one, _ = await h.get(f"/v1/query/{unnamed['ID']}", **tok(nobody))
    assert status == 200 and one[0]["Token"] == "<hidden>"
    status, one, _ = await h.get(f"/v1/query/{unnamed['ID']}", **tok(MGMT))
    assert one[0]["Token"] == "other-secret"
    # Submitting the redacted form back is refused, as Consul does.
    status, text, _ = await h.put(f"/v1/query/{named['ID']}", {**one[0], "Name": "red", "Token": "<hidden>"},
                                  **tok(MGMT))
    assert (status, text) == (400, "Invalid prepared query: Bad Token '<hidden>', it looks like a query definition "
                                   "with a redacted token was submitted")


async def session(h: Http) -> str:
    status, out, _ = await h.put("/v1/session/create", {"Node": "n1", "Checks": []}, **tok(MGMT))
    assert status == 200, out
    return str(out["ID"])


async def test_query_rules_guard_named_queries(h: Http) -> None:
    writer, accessor = await token(h, 'query "mine" { policy = "write" }\nquery_prefix "team-" { policy = "write" }')
    assert (await create(h, {"Name": "mine", "Service": {"Service": "web"}}, writer))[0] == 200
    assert (await create(h, {"Name": "team-a", "Service": {"Service": "web"}}, writer))[0] == 200
    status, text = await create(h, {"Name": "other", "Service": {"Service": "web"}}, writer)
    assert (status, text) == (403, f"Permission denied: token with AccessorID '{accessor}' lacks permission "
                                   "'query:write' on \"other\"")
    # A catch-all template needs write on the empty prefix.
    status, _ = await create(h, {"Template": {"Type": "name_prefix_match"}, "Service": {"Service": "x"}}, writer)
    assert status == 403
    status, other = await create(h, {"Name": "other", "Service": {"Service": "web"}})
    assert status == 200
    status, text, _ = await h.get(f"/v1/query/{other['ID']}", **tok(writer))
    assert status == 403 and "lacks permission 'query:read' on \"other\"" in text
    status, text, _ = await h.get("/v1/query/other/explain", **tok(writer))
    assert status == 403
    # Renaming someone else's query, or one's own to a name one may not write, is refused.
    status, _, _ = await h.put(f"/v1/query/{other['ID']}", {"Name": "mine2", "Service": {"Service": "web"}},
                               **tok(writer))
    assert status == 403
    listed = {q["Name"] for q in (await h.get("/v1/query", **tok(writer)))[1]}
    assert listed == {"mine", "team-a"}
    assert (await h.delete(f"/v1/query/{other['ID']}", **tok(writer)))[0] == 403
    assert (await h.delete(f"/v1/query/{other['ID']}", **tok(MGMT)))[0] == 200
    # Anyone may create an unnamed query bound to a session.
    status, _ = await create(h, {"Session": await session(h), "Service": {"Service": "web"}}, writer)
    assert status == 200


async def test_execute_filters_with_the_querys_token_else_the_callers(h: Http) -> None:
    can_read, _ = await token(h, 'service "web" { policy = "read" }\nnode "n1" { policy = "read" }')
    caller, _ = await token(h, 'query_prefix "" { policy = "read" }')
    assert (await create(h, {"Name": "with-token", "Token": can_read, "Service": {"Service": "web"}}))[0] == 200
    assert (await create(h, {"Name": "without", "Service": {"Service": "web"}}))[0] == 200
    status, out, _ = await h.get("/v1/query/with-token/execute", **tok(caller))
    assert status == 200 and [n["Node"]["Node"] for n in out["Nodes"]] == ["n1"]
    status, out, headers = await h.get("/v1/query/without/execute", **tok(caller))
    assert status == 200 and out["Nodes"] == [] and headers.get(FILTERED) == "true"
    status, out, _ = await h.get("/v1/query/without/execute", **tok(can_read))
    assert [n["Node"]["Node"] for n in out["Nodes"]] == ["n1"]
    # A stored token that no longer exists fails the execution, as Consul's filter does.
    assert (await create(h, {"Name": "dead", "Token": "no-such-token", "Service": {"Service": "web"}}))[0] == 200
    status, text, _ = await h.get("/v1/query/dead/execute", **tok(caller))
    assert (status, text) == (403, "ACL not found")
