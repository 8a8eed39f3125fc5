"""ACL enforcement of the HTTP API on a live dev agent with ACLs on and default deny (StaticResolver tokens):
where the token comes from, Consul's 403 texts, filtered lists and their header, caches that never cross
tokens, blocking queries that see a permission change, and the CVE classes of the KV store and /v1/txn."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import aiohttp
import pytest

from registry.acl.resolver import StaticResolver
from registry.testing import RunningAgent, async_dev_agent
from tests.conftest import Http

NODE = "test-agent"
TOKENS = {
    "kv-app": 'key_prefix "app/" { policy = "write" }',
    "kv-read": 'key_prefix "" { policy = "read" }',
    "kv-tree": 'key_prefix "tree/" { policy = "write" }\nkey "tree/locked" { policy = "deny" }',
    "web-read": 'service "web" { policy = "read" }\nnode_prefix "" { policy = "read" }',
    "nodes-read": 'node_prefix "" { policy = "read" }',
}


def resolver() -> StaticResolver:
    return StaticResolver(TOKENS, default_policy="deny", management=("root",))


@pytest.fixture
async def acl_agent() -> AsyncIterator[RunningAgent]:
    async with async_dev_agent(acl_resolver=resolver()) as running:
        yield running


@pytest.fixture
async def h(acl_agent: RunningAgent) -> AsyncIterator[Http]:
    async with aiohttp.ClientSession() as session:
        yield Http(session, acl_agent.url)


def tok(secret: str) -> dict[str, dict[str, str]]:
    return {"headers": {"X-Consul-Token": secret}}


async def test_anonymous_is_refused_with_consuls_text_and_policy_header(h: Http) -> None:
    status, body, headers = await h.put("/v1/kv/app/x", raw=b"1")
    assert status == 403
    assert body == ("Permission denied: anonymous token lacks permission 'key:write' on \"app/x\". The anonymous "
                    "token is used implicitly when a request does not specify a token.")  # fmt: skip
    assert headers["X-Consul-Default-ACL-Policy"] == "deny"
    status, body, _ = await h.put("/v1/kv/app/x", raw=b"1", **tok("nope"))
    assert (status, body) == (403, "ACL not found")


async def test_token_precedence_query_then_header_then_bearer(h: Http) -> None:
    # ?token= wins over the header, the header over Authorization: Bearer (agent/http.go).
    assert (await h.put("/v1/kv/app/a?token=kv-app", raw=b"1", **tok("kv-read")))[0] == 200
    assert (await h.put("/v1/kv/app/a?token=kv-read", raw=b"1", **tok("kv-app")))[0] == 403
    both = {"X-Consul-Token": "kv-app", "Authorization": "Bearer kv-read"}
    assert (await h.put("/v1/kv/app/a", raw=b"1", headers=both))[0] == 200
    both = {"X-Consul-Token": "kv-read", "Authorization": "Bearer kv-app"}
    assert (await h.put("/v1/kv/app/a", raw=b"1", headers=both))[0] == 403
    assert (await h.put("/v1/kv/app/a", raw=b"1", headers={"Authorization": "bearer kv-app"}))[0] == 200
    status, body, _ = await h.put("/v1/kv/app/a", raw=b"1", headers={"Authorization": "Basic kv-app"})
    assert status == 403 and "anonymous token" in body


async def test_denied_write_changes_nothing(h: Http) -> None:
    assert (await h.put("/v1/kv/other/k", raw=b"v", **tok("root")))[0] == 200
    status, body, _ = await h.put("/v1/kv/other/k", raw=b"evil", **tok("kv-app"))
    assert status == 403 and "lacks permission 'key:write' on \"other/k\"" in body
    status, body, _ = await h.get("/v1/kv/other/k?raw", **tok("root"))
    assert (status, body) == (200, "v")


async def test_recursive_delete_under_a_deny_is_refused_cve_2019_12291(h: Http) -> None:
    for key in ("tree/a", "tree/locked"):
        assert (await h.put(f"/v1/kv/{key}", raw=b"v", **tok("root")))[0] == 200
    status, body, _ = await h.delete("/v1/kv/tree/?recurse", **tok("kv-tree"))
    assert status == 403 and "key:write" in body
    status, keys, _ = await h.get("/v1/kv/tree/?keys", **tok("root"))
    assert keys == ["tree/a", "tree/locked"]
    assert (await h.delete("/v1/kv/tree/a", **tok("kv-tree")))[0] == 200


async def test_txn_checks_every_operation_cve_2021_38698(h: Http) -> None:
    v = base64.b64encode(b"x").decode()
    ops = [{"KV": {"Verb": "set", "Key": "app/ok", "Value": v}}, {"KV": {"Verb": "set", "Key": "secret", "Value": v}}]
    status, body, _ = await h.put("/v1/txn", ops, **tok("kv-app"))
    assert status == 409
    assert body["Results"] is None
    assert [e["OpIndex"] for e in body["Errors"]] == [1]
    assert "lacks permission 'key:write' on \"secret\"" in body["Errors"][0]["What"]
    assert (await h.get("/v1/kv/app/ok", **tok("root")))[0] == 404  # nothing of it was applied
    ops = [{"KV": {"Verb": "delete-tree", "Key": "tree/"}}]
    assert (await h.put("/v1/txn", ops, **tok("kv-tree")))[0] == 409
    # Reads in a transaction are filtered, not refused.
    assert (await h.put("/v1/kv/app/r", raw=b"1", **tok("root")))[0] == 200
    assert (await h.put("/v1/kv/zz", raw=b"1", **tok("root")))[0] == 200
    ops = [{"KV": {"Verb": "get", "Key": "app/r"}}, {"KV": {"Verb": "get", "Key": "zz"}}]
    status, body, headers = await h.put("/v1/txn", ops, **tok("kv-app"))
    assert status == 200 and [r["KV"]["Key"] for r in body["Results"]] == ["app/r"]


async def test_lists_are_filtered_with_the_header_only_for_a_presented_token(h: Http) -> None:
    for key in ("app/1", "other/2"):
        assert (await h.put(f"/v1/kv/{key}", raw=b"v", **tok("root")))[0] == 200
    status, keys, headers = await h.get("/v1/kv/?keys", **tok("kv-app"))
    assert status == 200 and keys == ["app/1"]
    assert headers["X-Consul-Results-Filtered-By-ACLs"] == "true"
    status, keys, headers = await h.get("/v1/kv/?keys", **tok("root"))
    assert keys == ["app/1", "other/2"] and "X-Consul-Results-Filtered-By-ACLs" not in headers
    status, nodes, headers = await h.get("/v1/catalog/nodes")
    assert (status, nodes) == (200, []) and "X-Consul-Results-Filtered-By-ACLs" not in headers


async def test_cached_answers_never_cross_tokens(h: Http) -> None:
    """The hot cache and the rendered-body cache are per authorizer: the same URL asked by a management
    token and then by a narrower one answers each its own list, however often it is asked."""
    web = {"Name": "web", "Port": 80}
    assert (await h.put("/v1/agent/service/register", web, **tok("root")))[0] == 200
    assert (await h.put("/v1/agent/service/register", {"Name": "db", "Port": 5432}, **tok("root")))[0] == 200
    for _ in range(3):
        status, services, _ = await h.get("/v1/catalog/services", **tok("root"))
        assert {"web", "db", "consul"} <= set(services)
        status, services, headers = await h.get("/v1/catalog/services", **tok("web-read"))
        assert set(services) == {"web"} and headers["X-Consul-Results-Filtered-By-ACLs"] == "true"
        status, services, _ = await h.get("/v1/catalog/services")
        assert services == {}
    status, body, _ = await h.get("/v1/catalog/service/db", **tok("web-read"))
    assert (status, body) == (200, [])
    status, body, _ = await h.get("/v1/catalog/service/web", **tok("web-read"))
    assert [s["ServiceName"] for s in body] == ["web"]


async def test_acl_off_agent_answers_everything_and_says_allow(http: Http) -> None:
    status, _, headers = await http.put("/v1/kv/x", raw=b"1", headers={"X-Consul-Token": "whatever"})
    assert status == 200 and headers["X-Consul-Default-ACL-Policy"] == "allow"


async def test_config_tokens_reach_the_resolver() -> None:
    """``acl.tokens.initial_management`` is a management token from the first leadership; a request with no
    token uses ``acl.tokens.default``, which answers "ACL not found" until a token with that secret exists
    and then grants what its policy grants."""
    default = "6a1ab5fd-6a5e-4a2a-9d8b-0e51c4b0d0a1"
    acl = {"enabled": True, "default_policy": "deny", "tokens": {"initial_management": "boot", "default": default}}
    async with async_dev_agent(acl=acl) as running, aiohttp.ClientSession() as session:
        h = Http(session, running.url)
        assert (await h.put("/v1/kv/k", raw=b"1", **tok("boot")))[0] == 200
        assert (await h.put("/v1/kv/k", raw=b"1"))[:2] == (403, "ACL not found")
        assert (await h.put("/v1/kv/k", raw=b"1", **tok("other")))[1] == "ACL not found"
        status, policy, _ = await h.put("/v1/acl/policy", {"Name": "k", "Rules": 'key "k" { policy = "write" }'},
                                        **tok("boot"))  # fmt: skip
        assert status == 200, policy
        status, token, _ = await h.put("/v1/acl/token", {"SecretID": default, "Policies": [{"ID": policy["ID"]}]},
                                       **tok("boot"))  # fmt: skip
        assert status == 200, token
        assert (await h.put("/v1/kv/k", raw=b"1"))[0] == 200
        status, body, _ = await h.put("/v1/kv/other", raw=b"1")
        assert status == 403 and f"token with AccessorID '{token['AccessorID']}'" in body
