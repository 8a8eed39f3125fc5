"""Auth methods, binding rules, login and logout over the real ACL tables of a dev agent with ACLs on.

Auth method and binding rule writes are checked once, when written, by the auth method and binding rule
checks (Consul's ``AuthMethodSet``/``BindingRuleSet`` order and texts: the stored rows first, then the
jwt Config, then Selector, BindType and BindName against the method's blank identity); a login verifies a
real signed JWT against the stored method, creates its token through the log, and the token works (it is
resolved like any other); logout deletes only tokens a login made.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from registry.testing import RunningAgent, async_dev_agent
from tests.acl.jwtkit import new_key, public_pem, sign
from tests.conftest import Http

KEY = new_key("ES256")


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[tuple[Http, dict[str, Any], RunningAgent]]:
    async with async_dev_agent(acl={"enabled": True, "default_policy": "deny"}, data_dir=str(tmp_path)) as running, \
            aiohttp.ClientSession() as session:  # fmt: skip
        http = Http(session, running.url)
        status, boot, _ = await http.put("/v1/acl/bootstrap")
        assert status == 200, boot
        yield http, {"headers": {"X-Consul-Token": boot["SecretID"]}}, running


def _method(**config: Any) -> dict[str, Any]:
    return {"Name": "ci", "Type": "jwt", "MaxTokenTTL": "10m", "Config": {
        "JWTValidationPubKeys": [public_pem(KEY)], "BoundAudiences": ["consul"], "BoundIssuer": "https://ci.example",
        "ClaimMappings": {"service": "service", "project": "project"}, **config}}  # fmt: skip


def _jwt(key: Any = KEY, **claims: Any) -> str:
    now = time.time()
    return sign(key, "ES256", {"iss": "https://ci.example", "aud": "consul", "iat": now, "exp": now + 60, **claims})


async def test_auth_method_writes_are_checked_once_with_consuls_texts(h) -> None:
    http, t, running = h
    status, text, _ = await http.put("/v1/acl/auth-method", _method(JWTValidationPubKeys=["not a key"]), **t)
    assert (status, text) == (400, "Invalid Auth Method: error parsing public key JWTValidationPubKeys[0]: "
                                   "data does not contain any valid RSA, ECDSA, or ED25519 public keys")  # fmt: skip
    status, text, _ = await http.put("/v1/acl/auth-method", {**_method(), "MaxTokenTTL": "48h"}, **t)
    assert (status, text) == (400, "MaxTokenTTL 48h0m0s cannot be more than 24h0m0s")
    status, text, _ = await http.put("/v1/acl/auth-method", _method(Surprise=1), **t)
    assert status == 400 and text.endswith("* '' has invalid keys: Surprise")
    assert running.agent.store.acl_auth_methods == {}  # nothing half-written
    status, m, _ = await http.put("/v1/acl/auth-method", _method(), **t)
    assert status == 200 and m["Type"] == "jwt" and m["Config"]["BoundIssuer"] == "https://ci.example"
    # An update may leave the Type out (the stored one stays) but may not change it.
    status, m2, _ = await http.put("/v1/acl/auth-method/ci", {"Description": "CI jobs", "Config": _method()["Config"]}, **t)
    assert status == 200 and (m2["Type"], m2["Description"]) == ("jwt", "CI jobs")
    assert m2["CreateIndex"] == m["CreateIndex"] < m2["ModifyIndex"]
    status, text, _ = await http.put("/v1/acl/auth-method/ci", {"Type": "kubernetes"}, **t)
    assert (status, text) == (400, "the Type field of an Auth Method is immutable")
    stored = running.agent.store.acl_auth_methods["ci"]
    assert stored.config.static_keys and stored.blank_identity().values == {"service": "", "project": ""}


async def test_binding_rule_writes_are_checked_against_their_method(h) -> None:
    http, t, _ = await _with_method(h)
    cases = [
        ({"AuthMethod": "nope", "BindType": "service", "BindName": "web"}, 'cannot find auth method with name "nope"'),
        ({"AuthMethod": "ci", "BindType": "service", "BindName": "${value.team}"},
         'Invalid Binding Rule: invalid BindName: failed to validate bindType "service": error interpreting '
         "template: unknown variable accessed: value.team"),
        ({"AuthMethod": "ci", "BindType": "service", "BindName": "web", "Selector": "value.service =="},
         "invalid Binding Rule: Selector is invalid: "),
        ({"AuthMethod": "ci", "BindType": "admin", "BindName": "web"}, 'Invalid Binding Rule: unknown BindType "admin"'),
        ({"AuthMethod": "ci", "BindType": "templated-policy", "BindName": "builtin/nope"},
         'Invalid Binding Rule: invalid BindName: failed to validate bindType "templated-policy": Bind name for '
         "templated-policy bind type does not match existing template name: builtin/nope"),
    ]  # fmt: skip
    for body, text in cases:
        status, got, _ = await http.put("/v1/acl/binding-rule", body, **t)
        assert status == 400 and got.startswith(text), (body, got)
    assert (await http.get("/v1/acl/binding-rules", **t))[1] == []
    status, rule, _ = await http.put("/v1/acl/binding-rule", {
        "AuthMethod": "ci", "BindType": "service", "BindName": "${value.service}",
        "Selector": 'value.project == "shop"'}, **t)  # fmt: skip
    assert status == 200 and rule["AuthMethod"] == "ci"
    path = f"/v1/acl/binding-rule/{rule['ID']}"
    # An update may leave AuthMethod out (it keeps the rule's) and is checked against that method.
    status, updated, _ = await http.put(path, {"BindType": "node", "BindName": "${value.project}-runner"}, **t)
    assert status == 200 and (updated["AuthMethod"], updated["BindType"]) == ("ci", "node")
    status, got, _ = await http.put(path, {"BindType": "node", "BindName": "${value.nope}"}, **t)
    assert status == 400 and "unknown variable accessed: value.nope" in got
    await http.put("/v1/acl/auth-method", {**_method(), "Name": "other"}, **t)
    status, got, _ = await http.put(path, {"AuthMethod": "other", "BindType": "node", "BindName": "n"}, **t)
    assert (status, got) == (400, "the AuthMethod field of an Binding Rule is immutable")
    missing = "00000000-1111-4111-8111-000000000000"
    status, got, _ = await http.put(f"/v1/acl/binding-rule/{missing}", {"BindType": "node", "BindName": "n"}, **t)
    assert (status, got) == (400, f"cannot find binding rule {missing}")
    status, got, _ = await http.put("/v1/acl/binding-rule/not-a-uuid", {"BindType": "node", "BindName": "n"}, **t)
    assert (status, got) == (400, "Binding Rule ID invalid UUID")
    assert (await http.get(path, **t))[1]["BindName"] == "${value.project}-runner"


async def _with_method(h) -> tuple[Http, dict[str, Any], RunningAgent]:
    http, t, running = h
    status, body, _ = await http.put("/v1/acl/auth-method", _method(), **t)
    assert status == 200, body
    return http, t, running


async def _login(http: Http, bearer: str, **extra: Any) -> tuple[int, Any]:
    status, body, _ = await http.call("POST", "/v1/acl/login", {"AuthMethod": "ci", "BearerToken": bearer, **extra})
    return status, body


async def test_login_over_the_tables_makes_a_working_token_and_logout_deletes_it(h) -> None:
    http, t, running = await _with_method(h)
    _, role, _ = await http.put("/v1/acl/role", {"Name": "deployer", "ServiceIdentities": [{"ServiceName": "deploy"}]},
                                **t)  # fmt: skip
    for rule in ({"BindType": "service", "BindName": "${value.service}", "Selector": 'value.project == "shop"'},
                 {"BindType": "role", "BindName": "deployer", "Selector": 'value.service == "web"'},
                 {"BindType": "role", "BindName": "not-created-yet"}):  # fmt: skip
        assert (await http.put("/v1/acl/binding-rule", {"AuthMethod": "ci", **rule}, **t))[0] == 200
    status, token = await _login(http, _jwt(service="web", project="shop"), Meta={"job": "42"})
    assert status == 200, token
    assert token["AuthMethod"] == "ci" and token["Local"] is True
    assert token["Description"] == 'token created via login: {"job":"42"}'
    assert token["ServiceIdentities"] == [{"ServiceName": "web"}]
    assert token["Roles"] == [{"ID": role["ID"], "Name": "deployer"}]  # the missing role grants nothing
    assert "ExpirationTime" in token  # MaxTokenTTL 10m
    secret = {"headers": {"X-Consul-Token": token["SecretID"]}}
    status, me, _ = await http.get("/v1/acl/token/self", **secret)
    assert status == 200 and me["AccessorID"] == token["AccessorID"]
    status, answers, _ = await http.call("POST", "/v1/internal/acl/authorize", [
        {"Resource": "service", "Segment": "web", "Access": "write"},
        {"Resource": "service", "Segment": "deploy", "Access": "write"},
        {"Resource": "service", "Segment": "db", "Access": "write"}], **secret)  # fmt: skip
    assert status == 200 and [a["Allow"] for a in answers] == [True, True, False]
    listed = (await http.get("/v1/acl/tokens?authmethod=ci", **t))[1]
    assert [x["AccessorID"] for x in listed] == [token["AccessorID"]]
    # Logout deletes the login's token, once; a token no login made is refused with Consul's text.
    status, text, _ = await http.call("POST", "/v1/acl/logout", **t)
    assert (status, text) == (403, "Permission denied: token wasn't created via login")
    status, ok, _ = await http.call("POST", "/v1/acl/logout", headers={"Authorization": f"Bearer {token['SecretID']}"})
    assert (status, ok) == (200, True)
    assert token["AccessorID"] not in running.agent.store.acl_tokens
    assert (await http.call("POST", "/v1/acl/logout", **secret))[:2] == (403, "ACL not found")
    assert (await http.get("/v1/acl/token/self", **secret))[:2] == (403, "ACL not found")


async def test_refused_logins_create_nothing(h) -> None:
    http, t, running = await _with_method(h)
    await http.put("/v1/acl/binding-rule", {"AuthMethod": "ci", "BindType": "service", "BindName": "${value.service}",
                                            "Selector": 'value.service != ""'}, **t)  # fmt: skip
    before = set(running.agent.store.acl_tokens)
    now = time.time()
    cases = [
        (sign(KEY, "ES256", {"iss": "https://ci.example", "aud": "consul", "service": "web", "exp": now - 3600}),
         "error validating claims: go-jose/go-jose/jwt: validation failed, token is expired (exp)"),
        (_jwt(aud="someone-else", service="web"), "error validating claims: aud claim does not match any bound audience"),
        (_jwt(new_key("ES256"), service="web"), "no known key successfully validated the token signature"),
        (_jwt(iss="https://evil.example", service="web"),
         "error validating claims: go-jose/go-jose/jwt: validation failed, invalid issuer claim (iss)"),
        (_jwt(), "Permission denied"),  # no service claim: the rule's selector does not match, nothing is bound
        (_jwt(service="Web"), 'invalid bind name: the projected variables contain uppercase characters'),
    ]  # fmt: skip
    for bearer, text in cases:
        status, got = await _login(http, bearer)
        assert status == 403 and got.startswith(text), got
        assert bearer not in got
    status, got = await _login(http, _jwt(service="web"), AuthMethod="nope")
    assert (status, got) == (403, 'ACL not found: auth method "nope" not found')
    assert set(running.agent.store.acl_tokens) == before


async def test_deleting_the_method_deletes_its_rules_and_login_tokens(h) -> None:
    http, t, running = await _with_method(h)
    await http.put("/v1/acl/binding-rule", {"AuthMethod": "ci", "BindType": "service", "BindName": "api"}, **t)
    status, token = await _login(http, _jwt())
    assert status == 200, token
    assert (await http.delete("/v1/acl/auth-method/ci", **t))[1] is True
    assert token["AccessorID"] not in running.agent.store.acl_tokens
    assert (await http.get("/v1/acl/binding-rules", **t))[1] == []
    assert (await _login(http, _jwt()))[0] == 403
