"""The ACL system as a user drives it: a real ``proconsul agent -dev`` process with ACLs on (default deny) and
real ``proconsul`` commands against it (in this process through ``tests.cli_run``, with ``bootstrap`` and a
``login`` as real processes) -- bootstrap, policies from an HCL file, roles, tokens with
a service identity, the agent's default token, a jwt auth method with a key generated here, a binding rule,
``login`` with real signed JWTs (and refused ones), the sink token in use, ``logout``; then Local tokens,
the token-file precedence of every client command, and a token that expires while the agent runs.

The fake-agent tests in tests/test_cli_acl.py pin the exact requests and output; these check that the
same commands work end to end against the real API and tables.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from registry.testing import free_port
from tests.acl.jwtkit import new_key, public_pem, sign
from tests.cli_run import BIN, run_cli, run_process

KEY = new_key("RS256")
ANONYMOUS = "00000000-0000-0000-0000-000000000002"
# The shortest lifetime a token may have (Consul's acl token_min_expiration_ttl, 1m).
EXPIRY_S = 60


@dataclass
class Agent:
    addr: str
    mgmt: str  # the bootstrap token's SecretID
    expiring: dict[str, Any]  # a token created with -expires-ttl 1m when the agent started
    tmp: Path

    def run(self, *args: str, token: str | None = None, env: dict[str, str] | None = None, ok: bool = True,
            process: bool = False) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """One ``proconsul`` command, in this process (``tests.cli_run``) or with ``process`` as the console
        script; the management token comes from CONSUL_HTTP_TOKEN unless ``token``."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_HTTP", "PROCONSUL_HTTP"))}
        base["CONSUL_HTTP_ADDR"] = self.addr
        if token is not None:
            base["CONSUL_HTTP_TOKEN"] = token
        how = run_process if process else run_cli
        proc = how(*args, text=True, env={**base, **(env or {})})
        if ok:
            assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        return proc

    def json(self, *args: str, token: str | None = None, env: dict[str, str] | None = None) -> Any:
        return json.loads(self.run(*args, "-format", "json", token=self.mgmt if token is None else token,
                                   env=env).stdout)  # fmt: skip

    def http(self, method: str, path: str, body: Any = None, token: str = "") -> tuple[int, Any]:
        req = urllib.request.Request(f"http://{self.addr}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"X-Consul-Token": token} if token else {})  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()


def _wait_http(addr: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"agent exited early: {log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://{addr}/v1/status/leader", timeout=1) as r:
                if r.status == 200 and json.loads(r.read()):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"agent did not start: {log.read_text()}")


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    tmp = tmp_path_factory.mktemp("acl-cli")
    (tmp / "acl.json").write_text(json.dumps({"acl": {"enabled": True, "default_policy": "deny"}}))
    port = free_port()
    log = tmp / "agent.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([BIN, "agent", "-dev", "-serf-lan-port", "0", "-node", "acl-node", "-http-port", str(port), "-dns-port", "-1",
                                 "-config-file", str(tmp / "acl.json")], stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        addr = f"127.0.0.1:{port}"
        _wait_http(addr, proc, log)
        a = Agent(addr, "", {}, tmp)
        # `acl bootstrap` as an operator runs it first: pretty output, the secret on its line.
        boot = a.run("acl", "bootstrap", process=True)  # the console script, as an operator runs it
        fields = dict(line.split(":", 1) for line in boot.stdout.splitlines() if ":" in line)
        a.mgmt = fields["SecretID"].strip()
        assert fields["Description"].strip() == "Bootstrap Token (Global Management)"
        assert "global-management" in boot.stdout
        again = a.run("acl", "bootstrap", ok=False)
        assert again.returncode == 1
        assert "Failed ACL bootstrapping: Unexpected response code: 403 (Permission denied: ACL bootstrap no " \
               "longer allowed (reset index: " in again.stderr  # fmt: skip
        a.expiring = a.json("acl", "token", "create", "-description", "short-lived", "-expires-ttl", f"{EXPIRY_S}s",
                            "-service-identity", "web")  # fmt: skip
        assert _self(a, token=a.expiring["SecretID"]) == a.expiring["AccessorID"]  # it works until it expires
        yield a
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _self(agent: Agent, *args: str, token: str | None = None, env: dict[str, str] | None = None) -> str:
    """The AccessorID of the token a command actually sent (``acl token read -self``)."""
    return str(agent.json("acl", "token", "read", "-self", *args, token=token, env=env)["AccessorID"])


def test_policies_roles_and_tokens_through_the_cli(agent: Agent) -> None:
    rules = agent.tmp / "web.hcl"
    rules.write_text('service "web" {\n  policy = "write"\n}\nnode_prefix "" {\n  policy = "read"\n}\n')
    policy = agent.json("acl", "policy", "create", "-name", "web-write", "-description", "web writes",
                        "-rules", f"@{rules}")  # fmt: skip
    assert policy["Rules"] == rules.read_text() and policy["Name"] == "web-write"
    out = agent.run("acl", "policy", "read", "-name", "web-write", token=agent.mgmt).stdout
    assert out.startswith(f"ID:           {policy['ID']}\nName:         web-write\nDescription:  web writes\n")
    assert out.endswith(rules.read_text())
    bad = agent.tmp / "bad.hcl"
    bad.write_text('service "web" {\n  policy = "write"\n')
    refused = agent.run("acl", "policy", "create", "-name", "bad", "-rules", f"@{bad}", token=agent.mgmt, ok=False)
    assert refused.returncode == 1 and "Failed to create new policy: Unexpected response code: 400 (Failed to " \
                                      "parse ACL rules: " in refused.stderr  # fmt: skip
    updated = agent.json("acl", "policy", "update", "-id", policy["ID"], "-description", "web writes, v2")
    assert updated["Description"] == "web writes, v2" and updated["ModifyIndex"] > policy["ModifyIndex"]
    assert "web-write:" in agent.run("acl", "policy", "list", token=agent.mgmt).stdout

    role = agent.json("acl", "role", "create", "-name", "web-role", "-policy-name", "web-write",
                      "-node-identity", "acl-node:dc1")  # fmt: skip
    assert role["Policies"] == [{"ID": policy["ID"], "Name": "web-write"}]
    assert agent.json("acl", "role", "read", "-name", "web-role")["ID"] == role["ID"]
    role2 = agent.json("acl", "role", "update", "-id", role["ID"], "-description", "for web",
                       "-service-identity", "web-sidecar")  # fmt: skip
    assert role2["Description"] == "for web" and role2["ServiceIdentities"] == [{"ServiceName": "web-sidecar"}]
    assert role2["Policies"] == role["Policies"]  # merged, not replaced
    assert "web-role:" in agent.run("acl", "role", "list", token=agent.mgmt).stdout

    token = agent.json("acl", "token", "create", "-description", "web token", "-service-identity", "web:dc1",
                       "-role-name", "web-role")  # fmt: skip
    assert token["ServiceIdentities"] == [{"ServiceName": "web", "Datacenters": ["dc1"]}]
    assert token["Roles"] == [{"ID": role["ID"], "Name": "web-role"}] and token["Local"] is False
    # The token works: it reads itself, and its grants are what the identity, role and policy say.
    assert _self(agent, token=token["SecretID"]) == token["AccessorID"]
    status, answers = agent.http("POST", "/v1/internal/acl/authorize", [
        {"Resource": "service", "Segment": "web", "Access": "write"},
        {"Resource": "service", "Segment": "web-sidecar", "Access": "write"},
        {"Resource": "node", "Segment": "any", "Access": "read"},
        {"Resource": "key", "Segment": "app", "Access": "read"}], token=token["SecretID"])  # fmt: skip
    assert status == 200 and [x["Allow"] for x in answers] == [True, True, True, False]
    read = agent.run("acl", "token", "read", "-accessor-id", token["AccessorID"], token=agent.mgmt).stdout
    assert f"AccessorID:       {token['AccessorID']}\nSecretID:         {token['SecretID']}\n" in read
    assert "Description:      web token\nLocal:            false\n" in read
    listed = agent.json("acl", "token", "list")
    assert token["AccessorID"] in {t["AccessorID"] for t in listed}
    up = agent.json("acl", "token", "update", "-accessor-id", token["AccessorID"], "-description", "web token v2",
                    "-policy-name", "web-write")  # fmt: skip
    assert up["Description"] == "web token v2" and up["Policies"] == [{"ID": policy["ID"], "Name": "web-write"}]
    assert up["SecretID"] == token["SecretID"] and up["Roles"] == token["Roles"]
    clone = agent.json("acl", "token", "clone", "-accessor-id", token["AccessorID"], "-description", "copy")
    assert clone["AccessorID"] != token["AccessorID"] and clone["SecretID"] != token["SecretID"]
    assert clone["Policies"] == up["Policies"] and clone["Description"] == "copy"
    out = agent.run("acl", "token", "delete", "-accessor-id", clone["AccessorID"], token=agent.mgmt).stdout
    assert out == f'Token "{clone["AccessorID"]}" deleted successfully\n'
    gone = agent.run("acl", "token", "read", "-accessor-id", clone["AccessorID"], token=agent.mgmt, ok=False)
    assert gone.returncode == 1 and "403 (ACL not found)" in gone.stderr
    assert agent.run("acl", "token", "read", "-self", token=clone["SecretID"], ok=False).returncode == 1

    # Deleting the role and policy a token links drops the links; its other grants stay.
    agent.run("acl", "role", "delete", "-name", "web-role", token=agent.mgmt)
    agent.run("acl", "policy", "delete", "-name", "web-write", token=agent.mgmt)
    after = agent.json("acl", "token", "read", "-accessor-id", token["AccessorID"])
    assert "Policies" not in after and "Roles" not in after
    assert after["ServiceIdentities"] == token["ServiceIdentities"]


def test_jwt_login_with_the_sink_token_and_logout(agent: Agent) -> None:
    config = agent.tmp / "jwt.json"
    config.write_text(json.dumps({"JWTValidationPubKeys": [public_pem(KEY)], "BoundAudiences": ["consul"],
                                  "BoundIssuer": "https://ci.example",
                                  "ClaimMappings": {"service": "service", "project": "project"}}))  # fmt: skip
    method = agent.json("acl", "auth-method", "create", "-type", "jwt", "-name", "ci", "-max-token-ttl", "10m",
                        "-description", "CI jobs", "-config", f"@{config}")  # fmt: skip
    assert (method["Type"], method["MaxTokenTTL"]) == ("jwt", "10m0s")
    assert agent.json("acl", "auth-method", "read", "-name", "ci")["Config"]["BoundIssuer"] == "https://ci.example"
    assert "ci:" in agent.run("acl", "auth-method", "list", token=agent.mgmt).stdout
    upd = agent.json("acl", "auth-method", "update", "-name", "ci", "-display-name", "CI")
    assert upd["DisplayName"] == "CI" and upd["Config"] == method["Config"]  # merged over the stored method
    bad = agent.run("acl", "binding-rule", "create", "-method", "ci", "-bind-type", "service",
                    "-bind-name", "${value.team}", token=agent.mgmt, ok=False)  # fmt: skip
    assert bad.returncode == 1 and 'Invalid Binding Rule: invalid BindName: failed to validate bindType "service": ' \
                                   "error interpreting template: unknown variable accessed: value.team" in bad.stderr  # fmt: skip
    rule = agent.json("acl", "binding-rule", "create", "-method", "ci", "-bind-type", "service",
                      "-bind-name", "${value.service}", "-selector", 'value.project == "shop"')  # fmt: skip
    assert (rule["AuthMethod"], rule["BindName"]) == ("ci", "${value.service}")
    assert agent.json("acl", "binding-rule", "read", "-id", rule["ID"])["Selector"] == 'value.project == "shop"'
    assert [r["ID"] for r in agent.json("acl", "binding-rule", "list", "-method", "ci")] == [rule["ID"]]
    rule2 = agent.json("acl", "binding-rule", "update", "-id", rule["ID"], "-description", "shop services")
    assert rule2["Description"] == "shop services" and rule2["BindName"] == "${value.service}"

    now = time.time()
    claims = {"iss": "https://ci.example", "aud": "consul", "iat": now, "exp": now + 120, "service": "cart",
              "project": "shop"}  # fmt: skip
    bearer = agent.tmp / "jwt.txt"
    sink = agent.tmp / "sink"
    refused = {
        "expired": sign(KEY, "RS256", {**claims, "iat": now - 7200, "exp": now - 3600}),
        "wrong audience": sign(KEY, "RS256", {**claims, "aud": "vault"}),
        "wrong key": sign(new_key("RS256"), "RS256", claims),
    }
    texts = {
        "expired": "error validating claims: go-jose/go-jose/jwt: validation failed, token is expired (exp)",
        "wrong audience": "error validating claims: aud claim does not match any bound audience",
        "wrong key": "no known key successfully validated the token signature",
    }
    for name, jwt in refused.items():
        bearer.write_text(jwt)
        out = agent.run("login", "-method", "ci", "-bearer-token-file", str(bearer), "-token-sink-file", str(sink),
                        ok=False)  # fmt: skip
        assert out.returncode == 1, name
        assert out.stderr.strip() == f"Error logging in: Unexpected response code: 403 ({texts[name]})", name
        assert jwt not in out.stderr and not sink.exists()
    before = {t["AccessorID"] for t in agent.json("acl", "token", "list")}

    bearer.write_text(sign(KEY, "RS256", claims) + "\n")
    out = agent.run("login", "-method", "ci", "-bearer-token-file", str(bearer), "-token-sink-file", str(sink),
                    "-meta", "job=1234", process=True)  # fmt: skip
    assert out.stdout == "" and stat.S_IMODE(sink.stat().st_mode) == 0o600
    secret = sink.read_text()
    assert secret and secret not in out.stderr
    # The sink token in use: every client command reads it with -token-file.
    me = agent.json("acl", "token", "read", "-self", "-token-file", str(sink), token="")
    assert me["SecretID"] == secret and me["AuthMethod"] == "ci" and me["Local"] is True
    assert me["ServiceIdentities"] == [{"ServiceName": "cart"}]
    assert me["Description"] == 'token created via login: {"job":"1234"}'
    pretty = agent.run("acl", "token", "read", "-self", "-token-file", str(sink)).stdout
    assert "Auth Method:      ci (Namespace: )\n" in pretty and "Expiration Time:  " in pretty
    status, answers = agent.http("POST", "/v1/internal/acl/authorize", [
        {"Resource": "service", "Segment": "cart", "Access": "write"},
        {"Resource": "service", "Segment": "web", "Access": "write"}], token=secret)  # fmt: skip
    assert status == 200 and [x["Allow"] for x in answers] == [True, False]
    listed = agent.json("acl", "token", "list")
    assert {t["AccessorID"] for t in listed} - before == {me["AccessorID"]}

    # logout of a token no login made is refused; of the sink token, it deletes it.
    other = agent.run("logout", token=agent.mgmt, ok=False)
    assert other.stderr.strip() == ("Error destroying token: Unexpected response code: 403 (Permission denied: "
                                    "token wasn't created via login)")  # fmt: skip
    assert agent.run("logout", "-token-file", str(sink), token="").stdout == ""
    again = agent.run("logout", "-token-file", str(sink), token="", ok=False)
    assert again.stderr.strip() == "Error destroying token: Unexpected response code: 403 (ACL not found)"
    assert agent.run("acl", "token", "read", "-self", "-token-file", str(sink), token="", ok=False).returncode == 1
    assert me["AccessorID"] not in {t["AccessorID"] for t in agent.json("acl", "token", "list")}

    out = agent.run("acl", "binding-rule", "delete", "-id", rule["ID"], token=agent.mgmt)
    assert out.stdout == f'Binding rule "{rule["ID"]}" deleted successfully\n'
    out = agent.run("acl", "auth-method", "delete", "-name", "ci", token=agent.mgmt)
    assert out.stdout == 'Auth-method "ci" deleted successfully\n'
    assert agent.json("acl", "auth-method", "list") == []


def test_local_tokens(agent: Agent) -> None:
    local = agent.json("acl", "token", "create", "-description", "dc-local", "-local", "-service-identity", "api")
    assert local["Local"] is True
    read = agent.run("acl", "token", "read", "-accessor-id", local["AccessorID"], token=agent.mgmt).stdout
    assert "Local:            true\n" in read
    assert _self(agent, token=local["SecretID"]) == local["AccessorID"]
    # Locality is fixed at creation (Consul: "cannot toggle local mode").
    status, text = agent.http("PUT", f"/v1/acl/token/{local['AccessorID']}", {"Local": False}, token=agent.mgmt)
    assert (status, text) == (400, f"cannot toggle local mode of {local['AccessorID']}")
    assert agent.json("acl", "token", "update", "-accessor-id", local["AccessorID"], "-description", "x")["Local"]
    assert agent.json("acl", "token", "clone", "-accessor-id", local["AccessorID"])["Local"] is True
    # A service identity with datacenters cannot be local: the token would be useless elsewhere.
    bad = agent.run("acl", "token", "create", "-local", "-service-identity", "api:dc2", token=agent.mgmt, ok=False)
    assert bad.stderr.strip() == ('Failed to create new token: Unexpected response code: 400 (Service identity "api" '
                                  "cannot specify a list of datacenters on a local token)")  # fmt: skip
    # Login tokens are local unless their method says global.
    config = json.dumps({"JWTValidationPubKeys": [public_pem(KEY)]})
    for name, locality in (("local-m", "local"), ("global-m", "global")):
        agent.run("acl", "auth-method", "create", "-type", "jwt", "-name", name, "-token-locality", locality,
                  "-config", config, token=agent.mgmt)  # fmt: skip
        agent.run("acl", "binding-rule", "create", "-method", name, "-bind-type", "node", "-bind-name", "acl-node",
                  token=agent.mgmt)  # fmt: skip
    jwt = agent.tmp / "local.jwt"
    jwt.write_text(sign(KEY, "RS256", {"iat": time.time(), "exp": time.time() + 60}))
    for name, is_local in (("local-m", True), ("global-m", False)):
        sink = agent.tmp / f"{name}.sink"
        agent.run("login", "-method", name, "-bearer-token-file", str(jwt), "-token-sink-file", str(sink))
        me = agent.json("acl", "token", "read", "-self", "-token-file", str(sink), token="")
        assert me["Local"] is is_local and me["NodeIdentities"] == [{"NodeName": "acl-node", "Datacenter": "dc1"}]
        agent.run("acl", "auth-method", "delete", "-name", name, token=agent.mgmt)
        assert agent.run("acl", "token", "read", "-self", "-token-file", str(sink), token="", ok=False).returncode == 1


def test_token_file_precedence_of_client_commands(agent: Agent) -> None:
    """Consul's api.NewClient: a token file (-token-file, else CONSUL_HTTP_TOKEN_FILE) wins when it holds a
    token, then -token, then CONSUL_HTTP_TOKEN; the agent's default token only when none is given."""
    a, b, c, d = (agent.json("acl", "token", "create", "-description", f"precedence {n}") for n in "abcd")
    files = {}
    for name, tok in (("c", c), ("d", d)):
        files[name] = agent.tmp / f"{name}.token"
        files[name].write_text(f"  {tok['SecretID']}\n")
    empty = agent.tmp / "empty.token"
    empty.write_text("\n")
    env_file = {"CONSUL_HTTP_TOKEN_FILE": str(files["c"])}
    assert _self(agent, token=a["SecretID"]) == a["AccessorID"]
    assert _self(agent, "-token", b["SecretID"], token=a["SecretID"]) == b["AccessorID"]
    assert _self(agent, "-token", b["SecretID"], token=a["SecretID"], env=env_file) == c["AccessorID"]
    assert _self(agent, "-token-file", str(files["d"]), "-token", b["SecretID"], token=a["SecretID"],
                 env=env_file) == d["AccessorID"]  # fmt: skip
    assert _self(agent, "-token-file", str(empty), "-token", b["SecretID"]) == b["AccessorID"]
    assert _self(agent, token="") == ANONYMOUS
    missing = agent.tmp / "missing.token"
    out = agent.run("acl", "token", "read", "-self", "-token-file", str(missing), token=a["SecretID"], ok=False)
    assert out.returncode == 1
    assert out.stderr.strip() == f"Error loading token file: open {missing}: no such file or directory"
    assert a["SecretID"] not in out.stderr


def test_set_agent_token_default_is_used_for_requests_without_a_token(agent: Agent) -> None:
    default = agent.json("acl", "token", "create", "-description", "agent default", "-node-identity", "acl-node:dc1")
    out = agent.run("acl", "set-agent-token", "default", default["SecretID"], token=agent.mgmt)
    assert out.stdout == 'ACL token "default" set successfully\n'
    assert _self(agent, token="") == default["AccessorID"]
    assert _self(agent, token=agent.mgmt) != default["AccessorID"]  # a request's own token still wins
    refused = agent.run("acl", "set-agent-token", "nope", "x", token=agent.mgmt, ok=False)
    assert refused.stderr.strip() == "Unknown token type: nope"
    agent.run("acl", "set-agent-token", "default", "", token=agent.mgmt)
    assert _self(agent, token="") == ANONYMOUS


# Soak: waits out Consul's minimum token TTL (60 s) in real time. Covered in the suite by
# tests/acl/test_acl_api.py::test_expired_token_is_not_found_at_once_and_reaped (see the docstring).
@pytest.mark.soak
def test_a_token_expires_while_the_agent_runs(agent: Agent) -> None:
    """The token made with -expires-ttl 60s when the agent started (the shortest Consul allows; the fixture
    checked that it worked): from its ExpirationTime on it is refused (token/self, the UI's authorize), reads of it by
    AccessorID answer ACL not found and lists leave it out, whether or not the leader has reaped it yet.

    Behind ``soak`` (it waits about a minute of real time). In the suite,
    tests/acl/test_acl_api.py::test_expired_token_is_not_found_at_once_and_reaped covers the same outcomes in
    the process by moving the agent's clock past the expiry: the token is refused, its authorize batch
    answers 403, a read by AccessorID answers ACL not found and the list leaves it out while it is expired
    but not yet reaped, then the leader reaps it."""
    tok = agent.expiring
    assert tok["ExpirationTime"] > tok["CreateTime"]
    deadline = time.monotonic() + EXPIRY_S + 30
    while True:
        out = agent.run("acl", "token", "read", "-self", token=tok["SecretID"], ok=False)
        if out.returncode != 0:
            break
        assert time.monotonic() < deadline, "the token never expired"
        time.sleep(0.2)  # a command in this process costs milliseconds
    assert out.stderr.strip() == 'Error reading token "self": Unexpected response code: 403 (ACL not found)'
    by_id = agent.run("acl", "token", "read", "-accessor-id", tok["AccessorID"], token=agent.mgmt, ok=False)
    assert "403 (ACL not found)" in by_id.stderr
    assert tok["AccessorID"] not in {t["AccessorID"] for t in agent.json("acl", "token", "list")}
    status, _ = agent.http("POST", "/v1/internal/acl/authorize", [
        {"Resource": "service", "Segment": "web", "Access": "read"}], token=tok["SecretID"])  # fmt: skip
    assert status == 403
