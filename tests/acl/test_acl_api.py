"""The ACL API of a real dev agent with ACLs on, over HTTP: py-consul where it has the call, raw HTTP elsewhere.

Bootstrap (once, and again through the reset index file), tokens, policies, roles, auth methods, binding rules,
templated policies, the UI's authorize batch, agent tokens and their persistence, expiry, and Consul's texts
for what it refuses.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import consul
import pytest

from registry.testing import RunningAgent, async_dev_agent, dev_agent
from tests.conftest import Http

ANON = "00000000-0000-0000-0000-000000000002"
GM = "00000000-0000-0000-0000-000000000001"


@pytest.fixture
async def acl_agent(tmp_path: Path) -> AsyncIterator[RunningAgent]:
    async with async_dev_agent(acl={"enabled": True, "default_policy": "deny",
                                    "enable_token_persistence": True}, data_dir=str(tmp_path)) as running:  # fmt: skip
        yield running


@pytest.fixture
async def h(acl_agent: RunningAgent) -> AsyncIterator[Http]:
    async with aiohttp.ClientSession() as session:
        yield Http(session, acl_agent.url)


async def _bootstrap(h: Http) -> dict[str, Any]:
    status, body, _ = await h.put("/v1/acl/bootstrap")
    assert status == 200, body
    return body


def _tok(secret: str) -> dict[str, dict[str, str]]:
    return {"headers": {"X-Consul-Token": secret}}


async def test_bootstrap_once_then_403_with_the_reset_index_then_reset(h: Http, acl_agent: RunningAgent,
                                                                       tmp_path: Path) -> None:  # fmt: skip
    boot = await _bootstrap(h)
    assert boot["ID"] == boot["SecretID"] and boot["Description"] == "Bootstrap Token (Global Management)"
    assert boot["Policies"] == [{"ID": GM, "Name": "global-management"}] and boot["Local"] is False
    status, text, _ = await h.put("/v1/acl/bootstrap")
    reset = acl_agent.agent.store.acl_can_bootstrap()[1]
    assert (status, text) == (403, f"Permission denied: ACL bootstrap no longer allowed (reset index: {reset})")
    (tmp_path / "acl-bootstrap-reset").write_text(f"{reset + 1}\n")
    status, text, _ = await h.put("/v1/acl/bootstrap")
    assert status == 400 and text == f"Invalid bootstrap reset index (specified {reset + 1}, reset index: {reset})"
    (tmp_path / "acl-bootstrap-reset").write_text(str(reset))
    again = await _bootstrap(h)
    assert not (tmp_path / "acl-bootstrap-reset").exists()  # used once: a snapshot restore cannot reuse it
    assert again["AccessorID"] != boot["AccessorID"]
    status, _, _ = await h.put("/v1/acl/bootstrap")
    assert status == 403


async def test_acl_endpoints_answer_401_when_acls_are_off(http: Http) -> None:
    for method, path in (("PUT", "/v1/acl/bootstrap"), ("GET", "/v1/acl/tokens"), ("GET", "/v1/acl/policies"),
                         ("GET", "/v1/acl/token/self"), ("PUT", "/v1/agent/token/default"),
                         ("GET", "/v1/acl/replication")):  # fmt: skip
        status, text, _ = await http.call(method, path)
        assert (status, text) == (401, "ACL support disabled"), path


async def test_builtins_and_anonymous_exist_from_the_first_leadership(h: Http) -> None:
    boot = await _bootstrap(h)
    _, policies, _ = await h.get("/v1/acl/policies", **_tok(boot["SecretID"]))
    assert [p["Name"] for p in policies if p["ID"].startswith("00000000")] == [
        "global-management", "builtin/global-read-only"]
    assert all("Rules" not in p for p in policies)  # list stubs
    status, anon, _ = await h.get(f"/v1/acl/token/{ANON}", **_tok(boot["SecretID"]))
    assert status == 200 and anon["SecretID"] == "anonymous" and anon["Description"] == "Anonymous Token"
    status, text, _ = await h.delete(f"/v1/acl/token/{ANON}", **_tok(boot["SecretID"]))
    assert (status, text) == (400, "Delete operation not permitted on the anonymous token")
    status, text, _ = await h.delete(f"/v1/acl/policy/{GM}", **_tok(boot["SecretID"]))
    assert (status, text) == (400, "Delete operation not permitted on the builtin global-management policy")


def test_tokens_policies_roles_with_py_consul(tmp_path: Path) -> None:
    with dev_agent(acl={"enabled": True, "default_policy": "deny"}) as running:
        anon = consul.Consul(host="127.0.0.1", port=running.http_port)
        import urllib.request

        req = urllib.request.Request(f"{running.url}/v1/acl/bootstrap", method="PUT")
        with urllib.request.urlopen(req) as resp:
            mgmt = json.loads(resp.read())["SecretID"]
        c = consul.Consul(host="127.0.0.1", port=running.http_port, token=mgmt)
        web_read = {"service": {"web": {"policy": "read"}}}  # py-consul sends rules as JSON
        pol = c.acl.policy.create("web-read", description="read web", rules=web_read)
        assert pol["Name"] == "web-read" and json.loads(pol["Rules"]) == web_read
        assert c.acl.policy.read(pol["ID"])["Description"] == "read web"
        with pytest.raises(consul.ConsulException, match='Invalid Policy: A Policy with Name "web-read" already exists'):
            c.acl.policy.create("web-read", rules=web_read)
        with pytest.raises(consul.ConsulException, match=r"Invalid service policy: &acl\.ServiceRule"):
            c.acl.policy.create("broken", rules={"service": {"web": {"policy": "sideways"}}})
        role = c.acl.role.create("web-role", policies_name=["web-read"])
        assert role["Policies"] == [{"ID": pol["ID"], "Name": "web-read"}]
        assert c.acl.role.read_by_name("web-role")["ID"] == role["ID"]
        tok = c.acl.token.create(description="web", policies_name=["web-read"], roles_name=["web-role"],
                                 service_identities=[{"ServiceName": "api"}], local=True)  # fmt: skip
        assert tok["Policies"] == [{"ID": pol["ID"], "Name": "web-read"}] and tok["Local"] is True
        assert tok["Roles"] == [{"ID": role["ID"], "Name": "web-role"}]
        assert tok["ServiceIdentities"] == [{"ServiceName": "api"}]
        assert c.acl.token.read_self(token=tok["SecretID"])["AccessorID"] == tok["AccessorID"]
        listed = {t["AccessorID"] for t in c.acl.token.list(policy=pol["ID"])}
        assert listed == {tok["AccessorID"]}
        assert {t["AccessorID"] for t in c.acl.token.list(servicename="api")} == {tok["AccessorID"]}
        assert {t["AccessorID"] for t in c.acl.token.list(role=role["ID"])} == {tok["AccessorID"]}
        clone = c.acl.token.clone(tok["AccessorID"], description="copy")
        assert clone["Description"] == "copy" and clone["SecretID"] != tok["SecretID"]
        assert clone["Policies"] == tok["Policies"]
        updated = c.acl.token.update(tok["AccessorID"], description="web2", policies_name=["web-read"], local=True)
        assert updated["Description"] == "web2" and updated["SecretID"] == tok["SecretID"]
        assert updated["CreateIndex"] == tok["CreateIndex"] < updated["ModifyIndex"]
        # Renaming a policy shows through every link; deleting it drops the links.
        c.acl.policy.update(pol["ID"], "web-read-2", rules=web_read)
        assert c.acl.token.read(tok["AccessorID"])["Policies"] == [{"ID": pol["ID"], "Name": "web-read-2"}]
        assert c.acl.policy.delete(pol["ID"]) is True
        assert "Policies" not in c.acl.token.read(tok["AccessorID"])
        assert c.acl.token.delete(tok["AccessorID"]) is True
        with pytest.raises(consul.ConsulException, match="ACL not found"):
            c.acl.token.read(tok["AccessorID"])
        with pytest.raises(consul.ConsulException, match="ACL not found"):
            anon.acl.token.read_self(token=tok["SecretID"])
        assert c.acl.role.delete(role["ID"]) is True


async def test_token_validation_texts(h: Http) -> None:
    mgmt = (await _bootstrap(h))["SecretID"]
    t = _tok(mgmt)
    cases = [
        ({"Policies": [{"Name": "nope"}]}, 'No such ACL policy with name "nope"'),
        ({"Policies": [{"ID": "11111111-2222-3333-4444-555555555555"}]},
         'No such ACL policy with ID "11111111-2222-3333-4444-555555555555"'),
        ({"Roles": [{"Name": "nope"}]}, 'No such ACL role with name "nope"'),
        ({"ExpirationTTL": "1h", "ExpirationTime": "2999-01-01T00:00:00Z"},
         "Token Expiration TTL and Expiration Time cannot both be set"),
        ({"ExpirationTTL": "1s"}, "ExpirationTime cannot be less than 1m0s in the future (was 1s)"),
        ({"ExpirationTTL": "48h"}, "ExpirationTime cannot be more than 24h0m0s in the future (was 48h0m0s)"),
        ({"AccessorID": "not-a-uuid"}, "Invalid Token: AccessorID is not a valid UUID"),
        ({"SecretID": "00000000-0000-0000-0000-000000000009"},
         'Invalid Token: UUIDs with the prefix "00000000-0000-0000-0000-0000000000" are reserved'),
        ({"ServiceIdentities": [{"ServiceName": "Bad Name"}]},
         'Service identity "Bad Name" has an invalid name. Only lowercase alphanumeric characters, \'-\' and \'_\' are allowed'),
        ({"NodeIdentities": [{"NodeName": "n1"}]}, "Node identity is missing the datacenter field on this token"),
        ({"AuthMethod": "jwt"}, "AuthMethod field is disallowed outside of Login"),
    ]  # fmt: skip
    before = len((await h.get("/v1/acl/tokens", **t))[1])
    for body, text in cases:
        status, got, _ = await h.put("/v1/acl/token", body, **t)
        assert (status, got) == (400, text), body
    assert len((await h.get("/v1/acl/tokens", **t))[1]) == before
    status, got, _ = await h.put("/v1/acl/policy", {"Name": "p", "Rules": 'service "web" {'}, **t)
    assert status == 400 and got.startswith("Failed to parse ACL rules: ")
    status, got, _ = await h.put("/v1/acl/policy", {"Name": "bad name"}, **t)
    assert (status, got) == (400, "Invalid Policy: invalid Name. Only alphanumeric characters, '-' and '_' are allowed")
    status, got, _ = await h.put("/v1/acl/token", raw=b"{not json", **t)
    assert status == 400 and got.startswith("Token decoding failed")
    status, tok, _ = await h.put("/v1/acl/token", {"Description": "x"}, **t)
    status, got, _ = await h.put(f"/v1/acl/token/{tok['AccessorID']}", {"SecretID": tok["AccessorID"]}, **t)
    assert (status, got) == (400, "Changing a tokens SecretID is not permitted")
    status, got, _ = await h.put(f"/v1/acl/token/{tok['AccessorID']}", {"Local": True}, **t)
    assert (status, got) == (400, f"cannot toggle local mode of {tok['AccessorID']}")
    status, got, _ = await h.delete(f"/v1/acl/token/{(await h.get('/v1/acl/token/self', **t))[1]['AccessorID']}", **t)
    assert (status, got) == (400, "Deletion of the request's authorization token is not permitted")


async def test_list_redacts_secrets_for_a_reader_without_acl_write(h: Http) -> None:
    mgmt = (await _bootstrap(h))["SecretID"]
    _, pol, _ = await h.put("/v1/acl/policy", {"Name": "acl-read", "Rules": 'acl = "read"'}, **_tok(mgmt))
    _, reader, _ = await h.put("/v1/acl/token", {"Policies": [{"ID": pol["ID"]}]}, **_tok(mgmt))
    _, as_reader, _ = await h.get("/v1/acl/tokens", **_tok(reader["SecretID"]))
    assert as_reader and {t["SecretID"] for t in as_reader} == {"<hidden>"}
    _, as_mgmt, _ = await h.get("/v1/acl/tokens", **_tok(mgmt))
    assert reader["SecretID"] in {t["SecretID"] for t in as_mgmt}
    _, one, _ = await h.get(f"/v1/acl/token/{reader['AccessorID']}", **_tok(reader["SecretID"]))
    assert one["SecretID"] == "<hidden>"


async def test_expired_token_is_not_found_at_once_and_reaped(h: Http, acl_agent: RunningAgent) -> None:
    mgmt = (await _bootstrap(h))["SecretID"]
    _, tok, _ = await h.put("/v1/acl/token", {"ExpirationTTL": "2m"}, **_tok(mgmt))
    assert tok["ExpirationTime"] > tok["CreateTime"]
    assert (await h.get("/v1/acl/token/self", **_tok(tok["SecretID"])))[0] == 200
    agent = acl_agent.agent
    real = agent.acl.clock_ns  # type: ignore[attr-defined]
    agent.acl.clock_ns = lambda: real() + 3 * 60 * 10**9  # type: ignore[attr-defined]
    with pytest.raises(Exception, match="ACL not found"):
        await agent.acl.resolve(tok["SecretID"])
    # Expired but not yet reaped: every read path judges expiry by the same clock as the resolver.
    assert tok["AccessorID"] in agent.store.acl_tokens
    assert (await h.get(f"/v1/acl/token/{tok['AccessorID']}", **_tok(mgmt)))[:2] == (403, "ACL not found")
    status, listed, _ = await h.get("/v1/acl/tokens", **_tok(mgmt))
    assert status == 200 and tok["AccessorID"] not in {t["AccessorID"] for t in listed}
    status, _, _ = await h.call("POST", "/v1/internal/acl/authorize", [
        {"Resource": "service", "Segment": "web", "Access": "read"}], **_tok(tok["SecretID"]))  # fmt: skip
    assert status == 403
    assert agent.acl_leader is not None
    agent.acl_leader.clock_ns = agent.acl.clock_ns  # type: ignore[attr-defined]
    await agent.acl_leader.step()
    assert tok["AccessorID"] not in agent.store.acl_tokens


async def test_roles_auth_methods_binding_rules_templated(h: Http) -> None:
    t = _tok((await _bootstrap(h))["SecretID"])
    status, role, _ = await h.put("/v1/acl/role", {"Name": "r1", "NodeIdentities": [
        {"NodeName": "n1", "Datacenter": "dc1"}], "TemplatedPolicies": [
        {"TemplateName": "builtin/service", "TemplateVariables": {"Name": "api"}}]}, **t)  # fmt: skip
    assert status == 200 and role["NodeIdentities"] == [{"NodeName": "n1", "Datacenter": "dc1"}]
    status, text, _ = await h.put("/v1/acl/role", {"Name": "r1"}, **t)
    assert (status, text) == (400, 'Invalid Role: A Role with Name "r1" already exists')
    assert (await h.get("/v1/acl/role/name/r1", **t))[1]["ID"] == role["ID"]
    assert (await h.get("/v1/acl/role/name/nope", **t))[:2] == (403, "ACL not found")
    status, text, _ = await h.put("/v1/acl/binding-rule", {"AuthMethod": "m1", "BindType": "service",
                                                             "BindName": "x"}, **t)  # fmt: skip
    assert (status, text) == (400, 'cannot find auth method with name "m1"')
    status, text, _ = await h.put("/v1/acl/auth-method", {"Name": "m1", "Type": "kubernetes"}, **t)
    assert (status, text) == (400, "Invalid Auth Method: Type should be one of: [jwt]")
    status, text, _ = await h.put("/v1/acl/auth-method", {"Name": "m1", "Type": "jwt", "Config": {"BoundIssuer": "ci"}},
                                  **t)  # fmt: skip
    assert (status, text) == (400, "Invalid Auth Method: exactly one of 'JWTValidationPubKeys', 'JWKSURL', or "
                                   "'OIDCDiscoveryURL' must be set for type \"jwt\"")  # fmt: skip
    config = {"BoundIssuer": "ci", "JWKSURL": "https://idp.example/jwks"}
    status, m, _ = await h.put("/v1/acl/auth-method", {"Name": "m1", "Type": "jwt", "MaxTokenTTL": "10m",
                                                        "Config": config}, **t)  # fmt: skip
    assert status == 200 and m["MaxTokenTTL"] == "10m0s" and m["Config"] == config
    status, b, _ = await h.put("/v1/acl/binding-rule", {"AuthMethod": "m1", "BindType": "service",
                                                         "BindName": "web"}, **t)  # fmt: skip
    assert status == 200 and b["AuthMethod"] == "m1"
    status, text, _ = await h.put("/v1/acl/binding-rule", {"AuthMethod": "m1", "BindType": "bogus",
                                                            "BindName": "web"}, **t)  # fmt: skip
    assert (status, text) == (400, 'Invalid Binding Rule: unknown BindType "bogus"')
    assert [x["ID"] for x in (await h.get("/v1/acl/binding-rules?authmethod=m1", **t))[1]] == [b["ID"]]
    assert [x["Name"] for x in (await h.get("/v1/acl/auth-methods", **t))[1]] == ["m1"]
    assert (await h.delete("/v1/acl/auth-method/m1", **t))[1] is True
    assert (await h.get(f"/v1/acl/binding-rule/{b['ID']}", **t))[0] == 404  # went with its method
    _, templates, _ = await h.get("/v1/acl/templated-policies", **t)
    assert "builtin/service" in templates and "{{.Name}}" in templates["builtin/service"]["Template"]
    status, text, _ = await h.get("/v1/acl/templated-policy/name/builtin/nope", **t)
    assert (status, text) == (400, "Invalid templated policy Name: builtin/nope")



async def test_replication_status_is_a_primarys_without_a_token(h: Http) -> None:
    """Monitoring checks poll it without a token (Consul asks for none); a Proconsul cluster is its own
    primary, so replication is off, with Go's zero times."""
    await _bootstrap(h)
    status, out, _ = await h.get("/v1/acl/replication")
    assert status == 200 and out == {
        "Enabled": False, "Running": False, "SourceDatacenter": "", "ReplicationType": "", "ReplicatedIndex": 0,
        "ReplicatedRoleIndex": 0, "ReplicatedTokenIndex": 0, "LastSuccess": "0001-01-01T00:00:00Z",
        "LastError": "0001-01-01T00:00:00Z", "LastErrorMessage": ""}  # fmt: skip


async def test_internal_authorize_and_agent_tokens(h: Http, acl_agent: RunningAgent, tmp_path: Path) -> None:
    t = _tok((await _bootstrap(h))["SecretID"])
    _, pol, _ = await h.put("/v1/acl/policy", {"Name": "svc", "Rules": 'service_prefix "web" { policy = "write" }'}, **t)
    _, tok, _ = await h.put("/v1/acl/token", {"Policies": [{"Name": "svc"}]}, **t)
    batch = [{"Resource": "service", "Segment": "web1", "Access": "write"},
             {"Resource": "service", "Segment": "db", "Access": "read"},
             {"Resource": "acl", "Access": "read"}]  # fmt: skip
    status, out, _ = await h.call("POST", "/v1/internal/acl/authorize", batch, **_tok(tok["SecretID"]))
    assert status == 200 and [o["Allow"] for o in out] == [True, False, False]
    status, text, _ = await h.call("POST", "/v1/internal/acl/authorize", [{"Resource": "nope", "Access": "read"}],
                                   **_tok(tok["SecretID"]))  # fmt: skip
    assert (status, text) == (400, 'Invalid ACL resource requested: "nope"')
    status, _, _ = await h.put("/v1/agent/token/default", {"Token": tok["SecretID"]}, **t)
    assert status == 200 and acl_agent.agent.acl.default_secret() == tok["SecretID"]
    # No token on the request: the agent's default token is used.
    assert (await h.get("/v1/acl/token/self"))[1]["AccessorID"] == tok["AccessorID"]
    assert json.loads((tmp_path / "acl-tokens.json").read_text()) == {"default": tok["SecretID"]}
    assert (tmp_path / "acl-tokens.json").stat().st_mode & 0o777 == 0o600
    status, text, _ = await h.put("/v1/agent/token/bogus", {"Token": "x"}, **t)
    assert (status, text) == (404, 'Token "bogus" is unknown')
    # An agent recovery token resolves to management on this agent only.
    await h.put("/v1/agent/token/agent_recovery", {"Token": "11111111-0000-4000-8000-000000000000"}, **t)
    authz = await acl_agent.agent.acl.resolve("11111111-0000-4000-8000-000000000000")
    assert authz.acl_write()
    await asyncio.sleep(0)
