"""/v1/acl/login and /v1/acl/logout over HTTP on a real dev agent, with an in-memory ``LoginBackend`` standing
in for the ACL tables (the real tables: test_acl_login_store.py); JWKS served by a real aiohttp server on
127.0.0.1 and from a file."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from registry.acl.binding import BindingRule
from registry.acl.errors import ACLNotFound, PermissionDenied
from registry.acl.login import LoginToken
from registry.acl.objects import AuthMethod
from registry.api.acl_login import LoginService
from registry.testing import RunningAgent, async_dev_agent
from tests.acl.jwtkit import jwk, new_key, public_pem, sign

KEY = new_key("RS256")


class MemoryBackend:
    """The ACL tables as dicts of checked rows: what ``StoreBackend`` reads from the real store."""

    def __init__(self) -> None:
        self.methods: dict[str, AuthMethod] = {}
        self.rules: list[BindingRule] = []
        self.roles = {"deployer": ("11111111-1111-1111-1111-111111111111", "deployer")}
        self.policies: dict[str, tuple[str, str]] = {}
        self.tokens: dict[str, dict[str, Any]] = {}  # secret -> token JSON
        self._ids = itertools.count(1)

    def add_method(self, wire: dict[str, Any]) -> None:
        self.methods[wire["Name"]] = AuthMethod.from_wire(wire)

    def add_rule(self, wire: dict[str, Any]) -> None:
        self.rules.append(BindingRule.from_wire(wire, self.methods[wire["AuthMethod"]].blank_identity()))

    def auth_method(self, name: str) -> AuthMethod | None:
        return self.methods.get(name)

    def binding_rules(self, method: str) -> Sequence[BindingRule]:
        return [r for r in self.rules if r.auth_method == method]

    def role_by_name(self, name: str) -> tuple[str, str] | None:
        return self.roles.get(name)

    def policy_by_name(self, name: str) -> tuple[str, str] | None:
        return self.policies.get(name)

    async def create_token(self, token: LoginToken) -> Mapping[str, Any]:
        n = next(self._ids)
        secret = f"secret-{n}"
        out = {"AccessorID": f"accessor-{n}", "SecretID": secret, **token.to_wire()}
        self.tokens[secret] = out
        return out

    async def delete_login_token(self, secret: str) -> None:
        token = self.tokens.get(secret)
        if token is None:
            raise ACLNotFound()
        if not token.get("AuthMethod"):
            raise PermissionDenied()
        del self.tokens[secret]


@pytest.fixture
async def running() -> AsyncIterator[tuple[RunningAgent, MemoryBackend, aiohttp.ClientSession]]:
    async with async_dev_agent() as agent, aiohttp.ClientSession() as session:
        backend = MemoryBackend()
        backend.add_method({"Name": "ci", "Type": "jwt", "MaxTokenTTL": "1h", "Config": {
            "JWTValidationPubKeys": [public_pem(KEY)], "BoundAudiences": ["consul"],
            "ClaimMappings": {"service": "service"}}})  # fmt: skip
        backend.add_rule({"ID": "r1", "AuthMethod": "ci", "BindType": "service", "BindName": "${value.service}",
                          "Selector": 'value.service != ""'})  # fmt: skip
        backend.add_rule({"ID": "r2", "AuthMethod": "ci", "BindType": "role", "BindName": "deployer",
                          "Selector": 'value.service == "deploy"'})  # fmt: skip
        agent.agent.api.acl_login = LoginService(backend, "dc1")
        yield agent, backend, session


def jwt(**claims: Any) -> str:
    now = time.time()
    return sign(KEY, "RS256", {"aud": "consul", "iat": now, "exp": now + 60, **claims})


async def post(session: aiohttp.ClientSession, url: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    async with session.post(url, data=data, **kw) as resp:
        raw = await resp.read()
        if resp.content_type == "application/json":
            return resp.status, json.loads(raw)
        return resp.status, raw.decode()


async def test_login_creates_a_token_and_logout_deletes_it(running) -> None:
    agent, backend, session = running
    status, token = await post(session, f"{agent.url}/v1/acl/login",
                               {"AuthMethod": "ci", "BearerToken": jwt(service="web"), "Meta": {"pod": "web-1"}})  # fmt: skip
    assert status == 200, token
    assert token["ServiceIdentities"] == [{"ServiceName": "web"}]
    assert token["Description"] == 'token created via login: {"pod":"web-1"}'
    assert (token["AuthMethod"], token["Local"], token["ExpirationTTL"]) == ("ci", True, "1h0m0s")
    status, body = await post(session, f"{agent.url}/v1/acl/logout", headers={"X-Consul-Token": token["SecretID"]})
    assert (status, body) == (200, True)
    assert backend.tokens == {}
    status, body = await post(session, f"{agent.url}/v1/acl/logout", headers={"X-Consul-Token": token["SecretID"]})
    assert (status, body) == (403, "ACL not found")


async def test_login_binds_roles_by_name(running) -> None:
    agent, _, session = running
    status, token = await post(session, f"{agent.url}/v1/acl/login", {"AuthMethod": "ci", "BearerToken": jwt(service="deploy")})
    assert status == 200
    assert token["Roles"] == [{"ID": "11111111-1111-1111-1111-111111111111", "Name": "deployer"}]


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        ({"AuthMethod": "nope", "BearerToken": "x"}, 403, 'ACL not found: auth method "nope" not found'),
        ({"AuthMethod": "ci", "BearerToken": ""}, 403, "missing jwt"),
        ({"AuthMethod": "ci", "BearerToken": "garbage"}, 403,
         "error parsing token: go-jose/go-jose: compact JWS format must have three parts"),
        ({"AuthMethod": "ci", "BearerToken": "EXPIRED"}, 403,
         "error validating claims: go-jose/go-jose/jwt: validation failed, token is expired (exp)"),
        ({"AuthMethod": "ci", "BearerToken": "WRONGKEY"}, 403, "no known key successfully validated the token signature"),
        ({"AuthMethod": "ci", "BearerToken": "NOSERVICE"}, 403, "Permission denied"),
        ({"AuthMethod": "ci", "BearerToken": "HOSTILE"}, 403, 'invalid bind name: "web\\" { policy = \\"write\\" }"'),
        ({"AuthMethod": 7}, 400, "Failed to decode request body"),
        ([1, 2], 400, "Failed to decode request body"),
    ],
)
async def test_refused_logins_answer_4xx_with_consuls_text(running, body: Any, status: int, text: str) -> None:
    agent, backend, session = running
    now = time.time()
    bearer = {"EXPIRED": sign(KEY, "RS256", {"aud": "consul", "service": "web", "exp": now - 3600}),
              "WRONGKEY": sign(new_key("RS256"), "RS256", {"aud": "consul", "service": "web", "exp": now + 60}),
              "NOSERVICE": jwt(), "HOSTILE": jwt(service='web" { policy = "write" }')}  # fmt: skip
    if isinstance(body, dict) and body.get("BearerToken") in bearer:
        body = {**body, "BearerToken": bearer[body["BearerToken"]]}
    got_status, got = await post(session, f"{agent.url}/v1/acl/login", body)
    assert got_status == status
    assert got.startswith(text)
    assert backend.tokens == {}
    if isinstance(body, dict) and isinstance(body.get("BearerToken"), str) and body["BearerToken"]:
        assert body["BearerToken"] not in got


async def test_logout_of_a_token_not_from_a_login_is_refused(running) -> None:
    agent, backend, session = running
    backend.tokens["mgmt"] = {"AccessorID": "a", "SecretID": "mgmt", "AuthMethod": ""}
    status, body = await post(session, f"{agent.url}/v1/acl/logout", headers={"Authorization": "Bearer mgmt"})
    assert (status, body) == (403, "Permission denied")
    assert "mgmt" in backend.tokens
    assert await post(session, f"{agent.url}/v1/acl/logout") == (403, "ACL not found")


async def test_without_acls_login_answers_acl_support_disabled(agent: RunningAgent) -> None:
    async with aiohttp.ClientSession() as session:
        assert await post(session, f"{agent.url}/v1/acl/login", {"AuthMethod": "ci", "BearerToken": "x"}) == (
            401, "ACL support disabled")
        assert await post(session, f"{agent.url}/v1/acl/logout") == (401, "ACL support disabled")


async def test_jwks_from_a_url_and_from_a_file(running, tmp_path: Path) -> None:
    agent, backend, session = running
    ec = new_key("ES256")
    served = {"keys": [jwk(ec, "k1")]}
    fetches = []

    async def keys(request: web.Request) -> web.Response:
        fetches.append(1)
        return web.json_response(served)

    app = web.Application()
    app.router.add_get("/jwks", keys)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        backend.add_method({"Name": "idp", "Type": "jwt", "Config": {
            "JWKSURL": f"http://127.0.0.1:{port}/jwks", "ClaimMappings": {"service": "service"}}})  # fmt: skip
        backend.add_rule({"ID": "r3", "AuthMethod": "idp", "BindType": "service", "BindName": "${value.service}"})
        now = time.time()
        bearer = sign(ec, "ES256", {"service": "api", "iat": now, "exp": now + 60}, header={"kid": "k1"})
        for _ in range(2):
            status, token = await post(session, f"{agent.url}/v1/acl/login", {"AuthMethod": "idp", "BearerToken": bearer})
            assert status == 200, token
        assert len(fetches) == 1  # cached
        rotated = new_key("ES256")
        served["keys"] = [jwk(rotated, "k2")]
        bearer2 = sign(rotated, "ES256", {"service": "api", "iat": now, "exp": now + 60}, header={"kid": "k2"})
        status, _ = await post(session, f"{agent.url}/v1/acl/login", {"AuthMethod": "idp", "BearerToken": bearer2})
        # A new key within min_refresh of the last fetch is not fetched again (no refetch storm).
        assert status == 403 and len(fetches) == 1
    finally:
        await runner.cleanup()
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk(ec, "k1")]}))
    backend.add_method({"Name": "file", "Type": "jwt", "Config": {"JWKSURL": f"file://{path}"}})
    backend.add_rule({"ID": "r4", "AuthMethod": "file", "BindType": "node", "BindName": "n1"})
    status, token = await post(session, f"{agent.url}/v1/acl/login", {"AuthMethod": "file", "BearerToken": bearer})
    assert status == 200 and token["NodeIdentities"] == [{"NodeName": "n1", "Datacenter": "dc1"}]
    bad = tmp_path / "bad.json"
    bad.write_text("secret-looking garbage")
    backend.add_method({"Name": "file2", "Type": "jwt", "Config": {"JWKSURL": f"file://{bad}"}})
    status, text = await post(session, f"{agent.url}/v1/acl/login", {"AuthMethod": "file2", "BearerToken": bearer})
    assert status == 500 and "garbage" not in text and "error fetching JWKS" in text
