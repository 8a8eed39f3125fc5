"""``proconsul acl ...``, ``login`` and ``logout`` against a small fake agent: a real aiohttp server on 127.0.0.1
that records every request and answers with Consul's JSON shapes. Point ``AGENT`` at a real agent's
/v1/acl API (with ``CONSUL_HTTP_TOKEN`` set to a management token) to run the same commands against it."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from registry.cli.app import main

TOKEN = {
    "AccessorID": "6a1253d2-1785-24fd-91c2-f8e78c745511",
    "SecretID": "45a3bd52-07c7-47a4-52fd-0745e0cfe967",
    "Description": "Bootstrap Token (Global Management)",
    "Policies": [{"ID": "00000000-0000-0000-0000-000000000001", "Name": "global-management"}],
    "Local": False,
    "CreateTime": "2024-05-06T07:08:09.123400Z",
    "Hash": "X2AgaFhnQGRhSSF/h0m6qpX1wj/HJWbyXcxkEM/5GrY=",
    "CreateIndex": 12,
    "ModifyIndex": 12,
}
POLICY = {"ID": "e359bd81-baca-903e-7e64-1ccd9fdc78f5", "Name": "web-read", "Description": "",
          "Rules": 'service "web" { policy = "read" }', "Datacenters": ["dc1"], "Hash": "", "CreateIndex": 3,
          "ModifyIndex": 3}  # fmt: skip


@dataclass
class FakeAgent:
    """Records (method, path, query, body, token) and answers from ``answers`` (or a default)."""

    url: str = ""
    requests: list[tuple[str, str, dict[str, str], Any, str]] = field(default_factory=list)
    answers: dict[tuple[str, str], tuple[int, Any]] = field(default_factory=dict)

    def last(self) -> tuple[str, str, dict[str, str], Any, str]:
        return self.requests[-1]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAgent]:
    agent = FakeAgent()

    async def handle(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = json.loads(raw) if raw else None
        agent.requests.append((request.method, request.path, dict(request.query), body,
                               request.headers.get("X-Consul-Token", "")))  # fmt: skip
        status, answer = agent.answers.get((request.method, request.path), (200, None))
        if callable(answer):
            answer = answer(body)
        if status >= 400:
            return web.Response(status=status, text=answer)
        return web.json_response(answer)

    loop = asyncio.new_event_loop()
    started = threading.Event()
    state: dict[str, Any] = {}

    def serve() -> None:
        asyncio.set_event_loop(loop)

        async def start() -> None:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", handle)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            state["runner"] = runner
            agent.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
            started.set()

        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10)
    for var in ("CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE", "PROCONSUL_HTTP_ADDR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CONSUL_HTTP_ADDR", agent.url)
    yield agent
    asyncio.run_coroutine_threadsafe(state["runner"].cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------- tokens and the token flags


def test_bootstrap_prints_the_token_as_consul_does(fake: FakeAgent, capsys) -> None:
    fake.answers[("PUT", "/v1/acl/bootstrap")] = (200, TOKEN)
    code, out, _ = run(capsys, "acl", "bootstrap")
    assert code == 0
    assert out == (
        "AccessorID:       6a1253d2-1785-24fd-91c2-f8e78c745511\n"
        "SecretID:         45a3bd52-07c7-47a4-52fd-0745e0cfe967\n"
        "Description:      Bootstrap Token (Global Management)\n"
        "Local:            false\n"
        "Create Time:      2024-05-06 07:08:09.1234 +0000 UTC\n"
        "Policies:\n"
        "   00000000-0000-0000-0000-000000000001 - global-management\n"
    )
    assert fake.last()[:2] == ("PUT", "/v1/acl/bootstrap")


def test_bootstrap_refused_says_why(fake: FakeAgent, capsys) -> None:
    fake.answers[("PUT", "/v1/acl/bootstrap")] = (403, "Permission denied: ACL bootstrap no longer allowed (reset index: 7)")
    code, _, err = run(capsys, "acl", "bootstrap")
    assert code == 1
    assert err.strip() == ("Failed ACL bootstrapping: Unexpected response code: 403 (Permission denied: ACL bootstrap "
                           "no longer allowed (reset index: 7))")  # fmt: skip


def test_token_create_sends_every_link(fake: FakeAgent, capsys) -> None:
    fake.answers[("PUT", "/v1/acl/token")] = (200, lambda body: {**TOKEN, **body, "Policies": [
        {"ID": "p1", "Name": "web-read"}]})  # fmt: skip
    code, out, _ = run(capsys, "acl", "token", "create", "-description", "ci", "-policy-id", "p1", "-policy-name",
                       "web-read", "-role-id", "r1", "-role-name", "ops", "-service-identity", "web:dc1,dc2",
                       "-service-identity", "db", "-node-identity", "n1:dc1", "-templated-policy", "builtin/service",
                       "-var", "name:api", "-expires-ttl", "1h", "-local", "-accessor", "acc", "-secret", "sec",
                       "-token", "mgmt", "-format", "json")  # fmt: skip
    assert code == 0
    method, path, _, body, token = fake.last()
    assert (method, path, token) == ("PUT", "/v1/acl/token", "mgmt")
    assert body == {
        "Description": "ci", "Local": True,
        "Policies": [{"ID": "p1"}, {"Name": "web-read"}], "Roles": [{"ID": "r1"}, {"Name": "ops"}],
        "ServiceIdentities": [{"ServiceName": "web", "Datacenters": ["dc1", "dc2"]}, {"ServiceName": "db"}],
        "NodeIdentities": [{"NodeName": "n1", "Datacenter": "dc1"}],
        "TemplatedPolicies": [{"TemplateName": "builtin/service", "TemplateVariables": {"Name": "api"}}],
        "ExpirationTTL": "1h", "AccessorID": "acc", "SecretID": "sec",
    }  # fmt: skip
    assert json.loads(out)["Description"] == "ci"


def test_token_read_update_clone_delete_list(fake: FakeAgent, capsys) -> None:
    acc = TOKEN["AccessorID"]
    fake.answers[("GET", f"/v1/acl/token/{acc}")] = (200, {**TOKEN, "ServiceIdentities": [{"ServiceName": "web"}]})
    fake.answers[("GET", "/v1/acl/token/self")] = (200, TOKEN)
    fake.answers[("PUT", f"/v1/acl/token/{acc}")] = (200, lambda body: body)
    fake.answers[("PUT", f"/v1/acl/token/{acc}/clone")] = (200, lambda body: {**TOKEN, **body, "AccessorID": "new"})
    fake.answers[("DELETE", f"/v1/acl/token/{acc}")] = (200, True)
    fake.answers[("GET", "/v1/acl/tokens")] = (200, [TOKEN, {**TOKEN, "AccessorID": "two"}])

    code, out, _ = run(capsys, "acl", "token", "read", "-accessor-id", acc, "-meta")
    assert code == 0 and "Hash:             5f602068" in out and "Create Index:     12" in out
    assert "Service Identities:\n   web (Datacenters: all)\n" in out
    assert run(capsys, "acl", "token", "read", "-self")[0] == 0 and fake.last()[1] == "/v1/acl/token/self"

    code, out, _ = run(capsys, "acl", "token", "update", "-id", acc, "-description", "new", "-service-identity",
                       "db", "-merge-service-identities")  # fmt: skip
    assert code == 0 and out.startswith("Token updated successfully.\n")
    body = fake.last()[3]
    assert body["Description"] == "new"
    assert body["ServiceIdentities"] == [{"ServiceName": "web"}, {"ServiceName": "db"}]

    code, out, _ = run(capsys, "acl", "token", "clone", "-accessor-id", acc, "-description", "copy")
    assert code == 0 and out.startswith("Token cloned successfully.\nAccessorID:       new\n")

    assert run(capsys, "acl", "token", "delete", "-accessor-id", acc)[:2] == (0, f'Token "{acc}" deleted successfully\n')
    code, out, _ = run(capsys, "acl", "token", "list")
    assert code == 0 and out.count("AccessorID:") == 2 and "Legacy:           false" in out


def test_token_commands_refuse_bad_usage(fake: FakeAgent, capsys) -> None:
    assert run(capsys, "acl", "token", "read")[2].strip() == "Must specify the -accessor-id parameter"
    assert run(capsys, "acl", "token", "delete")[0] == 1
    assert run(capsys, "acl", "token", "read", "-self", "-id", "x")[2].strip() == (
        "Cannot use both -accessor-id and -self. Please use only one.")
    assert run(capsys, "acl", "token", "create", "-node-identity", "n1")[2].startswith("Error parsing node identities")
    assert run(capsys, "acl", "token", "list", "-format", "yaml")[2].startswith("Invalid format: yaml")
    assert fake.requests == []


@pytest.mark.parametrize(
    ("env", "flags", "expected"),
    [
        ({}, ["-token", "flag"], "flag"),
        ({"CONSUL_HTTP_TOKEN": "env"}, [], "env"),
        ({"CONSUL_HTTP_TOKEN": "env"}, ["-token", "flag"], "flag"),
        ({"CONSUL_HTTP_TOKEN_FILE": "FILE:envfile"}, ["-token", "flag"], "envfile"),
        ({"CONSUL_HTTP_TOKEN_FILE": "FILE:envfile"}, ["-token-file", "FILE:flagfile"], "flagfile"),
        ({"CONSUL_HTTP_TOKEN": "env"}, ["-token-file", "FILE:"], "env"),
        ({}, [], ""),
    ],
)
def test_token_precedence_follows_consul(fake: FakeAgent, capsys, monkeypatch, tmp_path: Path, env: dict,
                                         flags: list[str], expected: str) -> None:  # fmt: skip
    """Consul's api.NewClient: a token file with a token in it wins, then -token, then CONSUL_HTTP_TOKEN."""

    def resolve(value: str) -> str:
        if value.startswith("FILE:"):
            path = tmp_path / f"f{len(list(tmp_path.iterdir()))}"
            path.write_text(f"  {value[5:]}\n")
            return str(path)
        return value

    for k, v in env.items():
        monkeypatch.setenv(k, resolve(v))
    fake.answers[("GET", "/v1/acl/tokens")] = (200, [])
    assert run(capsys, "acl", "token", "list", *[resolve(f) for f in flags])[0] == 0
    assert fake.last()[4] == expected


def test_an_unreadable_token_file_is_an_error_that_names_the_file(fake: FakeAgent, capsys, tmp_path: Path) -> None:
    code, _, err = run(capsys, "acl", "token", "list", "-token-file", str(tmp_path / "missing"))
    assert code == 1
    assert err.strip() == f"Error loading token file: open {tmp_path / 'missing'}: no such file or directory"
    assert fake.requests == []


def test_other_commands_take_the_token_flags_too(fake: FakeAgent, capsys, tmp_path: Path) -> None:
    (tmp_path / "t").write_text("kv-token\n")
    fake.answers[("GET", "/v1/catalog/services")] = (200, {"consul": []})
    assert run(capsys, "catalog", "services", "-token-file", str(tmp_path / "t"))[0] == 0
    assert fake.last()[4] == "kv-token"


# ---------------------------------------------------------------------- policies, roles


def test_policy_create_reads_rules_from_a_file(fake: FakeAgent, capsys, tmp_path: Path) -> None:
    (tmp_path / "rules.hcl").write_text('service "web" { policy = "read" }')
    fake.answers[("PUT", "/v1/acl/policy")] = (200, lambda body: {**POLICY, **body})
    code, out, _ = run(capsys, "acl", "policy", "create", "-name", "web-read", "-rules", f"@{tmp_path / 'rules.hcl'}",
                       "-valid-datacenter", "dc1", "-description", "d")  # fmt: skip
    assert code == 0
    assert fake.last()[3] == {"Name": "web-read", "Description": "d", "Rules": 'service "web" { policy = "read" }',
                              "Datacenters": ["dc1"]}  # fmt: skip
    assert out == (f"ID:           {POLICY['ID']}\nName:         web-read\nDescription:  d\nDatacenters:  dc1\n"
                   'Rules:\nservice "web" { policy = "read" }\n')  # fmt: skip
    assert run(capsys, "acl", "policy", "create", "-rules", "x")[2].strip() == "Missing require '-name' flag"


def test_policy_read_by_name_update_delete_list(fake: FakeAgent, capsys) -> None:
    pid = POLICY["ID"]
    fake.answers[("GET", "/v1/acl/policy/name/web-read")] = (200, POLICY)
    fake.answers[("GET", f"/v1/acl/policy/{pid}")] = (200, POLICY)
    fake.answers[("PUT", f"/v1/acl/policy/{pid}")] = (200, lambda body: body)
    fake.answers[("DELETE", f"/v1/acl/policy/{pid}")] = (200, True)
    fake.answers[("GET", "/v1/acl/policies")] = (200, [POLICY])
    assert run(capsys, "acl", "policy", "read", "-name", "web-read")[0] == 0
    assert run(capsys, "acl", "policy", "update", "-id", pid, "-rules", 'key "a" { policy = "read" }')[0] == 0
    assert fake.last()[3]["Rules"] == 'key "a" { policy = "read" }' and fake.last()[3]["Name"] == "web-read"
    assert run(capsys, "acl", "policy", "delete", "-name", "web-read")[1] == f'Policy "{pid}" deleted successfully\n'
    code, out, _ = run(capsys, "acl", "policy", "list")
    assert out == f"web-read:\n   ID:           {pid}\n   Description:  \n   Datacenters:  dc1\n"
    assert run(capsys, "acl", "policy", "read")[2].strip() == "Must specify either the -id or -name parameters"


def test_policy_not_found_shows_consuls_answer(fake: FakeAgent, capsys) -> None:
    fake.answers[("GET", "/v1/acl/policy/name/nope")] = (403, "ACL not found")
    code, _, err = run(capsys, "acl", "policy", "read", "-name", "nope")
    assert code == 1 and err.strip() == 'Error reading policy "nope": Unexpected response code: 403 (ACL not found)'


def test_role_create_and_list(fake: FakeAgent, capsys) -> None:
    fake.answers[("PUT", "/v1/acl/role")] = (200, lambda body: {"ID": "r1", **body})
    code, out, _ = run(capsys, "acl", "role", "create", "-name", "ops", "-policy-name", "web-read",
                       "-templated-policy", "builtin/dns", "-node-identity", "n1:dc1")  # fmt: skip
    assert code == 0
    assert fake.last()[3] == {"Name": "ops", "Description": "", "Policies": [{"Name": "web-read"}],
                              "NodeIdentities": [{"NodeName": "n1", "Datacenter": "dc1"}],
                              "TemplatedPolicies": [{"TemplateName": "builtin/dns"}]}  # fmt: skip
    assert "Templated Policies:\n   builtin/dns\n      Datacenters: all\n" in out
    assert run(capsys, "acl", "role", "create", "-name", "x")[2].startswith("Cannot create a role without")
    fake.answers[("GET", "/v1/acl/roles")] = (200, [{"ID": "r1", "Name": "ops", "Description": "",
                                                     "Policies": [{"ID": "p", "Name": "web-read"}]}])  # fmt: skip
    assert run(capsys, "acl", "role", "list")[1] == "ops:\n   ID:           r1\n   Description:  \n   Policies:\n      p - web-read\n"
    fake.answers[("DELETE", "/v1/acl/role/r1")] = (200, True)
    assert run(capsys, "acl", "role", "delete", "-id", "r1")[1] == 'Role "r1" deleted successfully\n'


# ---------------------------------------------------------------------- auth methods, binding rules


def test_auth_method_create_with_config_from_a_file(fake: FakeAgent, capsys, tmp_path: Path) -> None:
    config = {"JWTValidationPubKeys": ["-----BEGIN PUBLIC KEY-----..."], "BoundAudiences": ["consul"]}
    (tmp_path / "c.json").write_text(json.dumps(config))
    fake.answers[("PUT", "/v1/acl/auth-method")] = (200, lambda body: body)
    code, out, _ = run(capsys, "acl", "auth-method", "create", "-type", "jwt", "-name", "ci", "-max-token-ttl", "10m",
                       "-config", f"@{tmp_path / 'c.json'}")  # fmt: skip
    assert code == 0
    assert fake.last()[3] == {"Name": "ci", "Type": "jwt", "MaxTokenTTL": "10m", "Config": config}
    assert out.startswith("Name:          ci\nType:          jwt\nDescription:   \nMaxTokenTTL:   10m\nConfig:\n{\n  ")
    fake.answers[("PUT", "/v1/acl/auth-method")] = (400, "Invalid Auth Method: Type should be one of: [jwt]")
    code, _, err = run(capsys, "acl", "auth-method", "create", "-type", "k8s", "-name", "x")
    assert code == 1 and err.strip().endswith("(Invalid Auth Method: Type should be one of: [jwt])")
    assert run(capsys, "acl", "auth-method", "create", "-name", "x")[2].strip() == "Missing required '-type' flag"


def test_auth_method_read_delete_list(fake: FakeAgent, capsys) -> None:
    fake.answers[("GET", "/v1/acl/auth-method/nope")] = (404, "")
    assert run(capsys, "acl", "auth-method", "read", "-name", "nope")[2].strip() == 'Auth method not found with name "nope"'
    fake.answers[("DELETE", "/v1/acl/auth-method/ci")] = (200, True)
    assert run(capsys, "acl", "auth-method", "delete", "-name", "ci")[1] == 'Auth-method "ci" deleted successfully\n'
    fake.answers[("GET", "/v1/acl/auth-methods")] = (200, [{"Name": "ci", "Type": "jwt", "Description": "d"}])
    assert run(capsys, "acl", "auth-method", "list")[1] == "ci:\n   Type:         jwt\n   Description:  d\n"


def test_binding_rule_create_and_list(fake: FakeAgent, capsys) -> None:
    fake.answers[("PUT", "/v1/acl/binding-rule")] = (200, lambda body: {"ID": "b1", **body})
    code, out, _ = run(capsys, "acl", "binding-rule", "create", "-method", "ci", "-bind-type", "templated-policy",
                       "-bind-name", "builtin/service", "-bind-vars", "name=${value.service}", "-selector",
                       'value.project == "shop"')  # fmt: skip
    assert code == 0
    assert fake.last()[3] == {"AuthMethod": "ci", "Selector": 'value.project == "shop"', "BindType": "templated-policy",
                              "BindName": "builtin/service", "BindVars": {"Name": "${value.service}"}}  # fmt: skip
    assert out == ("ID:           b1\nAuthMethod:   ci\nDescription:  \nBindType:     templated-policy\n"
                   "BindName:     builtin/service\nBindVars:     \n     - Name: ${value.service}\n"
                   'Selector:     value.project == "shop"\n')  # fmt: skip
    fake.answers[("GET", "/v1/acl/binding-rules")] = (200, [{"ID": "b1", "AuthMethod": "ci", "BindType": "node",
                                                             "BindName": "n", "Selector": ""}])  # fmt: skip
    assert run(capsys, "acl", "binding-rule", "list", "-method", "ci")[0] == 0
    assert fake.last()[2] == {"authmethod": "ci"}
    assert run(capsys, "acl", "binding-rule", "create", "-method", "ci", "-bind-type", "node")[2].strip() == (
        "Missing required '-bind-name' flag")
    fake.answers[("DELETE", "/v1/acl/binding-rule/b1")] = (200, True)
    assert run(capsys, "acl", "binding-rule", "delete", "-id", "b1")[1] == 'Binding rule "b1" deleted successfully\n'


# ---------------------------------------------------------------------- agent tokens, login, logout


@pytest.mark.parametrize(("kind", "path"), [("default", "default"), ("agent", "agent"), ("recovery", "agent_recovery"),
                                            ("replication", "replication"),
                                            ("config_file_service_registration", "config_file_service_registration")])  # fmt: skip
def test_set_agent_token(fake: FakeAgent, capsys, kind: str, path: str) -> None:
    code, out, _ = run(capsys, "acl", "set-agent-token", kind, "s3cr3t")
    assert (code, out) == (0, f'ACL token "{kind}" set successfully\n')
    assert fake.last()[:4] == ("PUT", f"/v1/agent/token/{path}", {}, {"Token": "s3cr3t"})


def test_set_agent_token_refuses_unknown_types(fake: FakeAgent, capsys) -> None:
    assert run(capsys, "acl", "set-agent-token", "bogus", "t")[2].strip() == "Unknown token type: bogus"
    assert run(capsys, "acl", "set-agent-token", "agent")[2].strip() == "Missing TYPE and TOKEN arguments"


def test_login_writes_the_secret_to_the_sink_and_logout_destroys_it(fake: FakeAgent, capsys, tmp_path: Path) -> None:
    (tmp_path / "jwt").write_text("eyJhbGciOiJSUzI1NiJ9.e30.c2ln\n")
    fake.answers[("POST", "/v1/acl/login")] = (200, {**TOKEN, "SecretID": "login-secret", "AuthMethod": "ci"})
    sink = tmp_path / "token"
    code, out, err = run(capsys, "login", "-method", "ci", "-bearer-token-file", str(tmp_path / "jwt"),
                         "-token-sink-file", str(sink), "-meta", "pod=web-1")  # fmt: skip
    assert (code, out, err) == (0, "", "")
    assert fake.last()[:4] == ("POST", "/v1/acl/login", {}, {"AuthMethod": "ci", "BearerToken":
                               "eyJhbGciOiJSUzI1NiJ9.e30.c2ln", "Meta": {"pod": "web-1"}})  # fmt: skip
    assert sink.read_text() == "login-secret"
    assert os.stat(sink).st_mode & 0o777 == 0o600
    fake.answers[("POST", "/v1/acl/logout")] = (200, True)
    assert run(capsys, "logout", "-token-file", str(sink))[0] == 0
    assert fake.last()[:2] == ("POST", "/v1/acl/logout") and fake.last()[4] == "login-secret"


def test_login_errors(fake: FakeAgent, capsys, tmp_path: Path) -> None:
    assert run(capsys, "login", "-bearer-token-file", "x", "-token-sink-file", "y")[2].strip() == (
        "Missing required '-method' flag")
    (tmp_path / "empty").write_text("  \n")
    assert run(capsys, "login", "-method", "ci", "-bearer-token-file", str(tmp_path / "empty"), "-token-sink-file",
               str(tmp_path / "s"))[2].strip() == f"No bearer token found in {tmp_path / 'empty'}"  # fmt: skip
    (tmp_path / "jwt").write_text("x.y.z")
    fake.answers[("POST", "/v1/acl/login")] = (403, "error validating claims: go-jose/go-jose/jwt: validation failed, "
                                                    "token is expired (exp)")  # fmt: skip
    code, _, err = run(capsys, "login", "-method", "ci", "-bearer-token-file", str(tmp_path / "jwt"),
                       "-token-sink-file", str(tmp_path / "s"))  # fmt: skip
    assert code == 1 and err.startswith("Error logging in: Unexpected response code: 403 (error validating claims")
    assert not (tmp_path / "s").exists()
    fake.answers[("POST", "/v1/acl/logout")] = (403, "Permission denied")
    assert run(capsys, "logout", "-token", "mgmt")[2].strip() == (
        "Error destroying token: Unexpected response code: 403 (Permission denied)")


def test_acl_usage(capsys) -> None:
    code, _, err = run(capsys, "acl")
    assert code == 1 and "token <create|read|update|delete|list|clone>" in err
    assert run(capsys, "acl", "policy", "frobnicate")[0] == 1
