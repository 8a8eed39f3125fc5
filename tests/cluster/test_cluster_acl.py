"""ACLs on clusters of real processes with a client agent: the initial management token works on every
agent, tokens created through one server resolve everywhere, a deleted token is refused by the client
agent's own resolver within a second of the DELETE, and login/logout work through a client agent."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.acl.jwtkit import new_key, public_pem, sign
from tests.cluster.harness import Cluster, Reply, Server, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

MakeCluster = Callable[..., Cluster]
MGMT = "5b1c0c5e-6a43-4b8c-9c35-0a4b1a6f0f01"


def call(agent: Server, method: str, path: str, token: str, body: object = None) -> Reply:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(agent.url + path, data=data, method=method, headers={"X-Consul-Token": token})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return Reply(resp.status, resp.read(), dict(resp.headers.items()))
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.read(), dict(exc.headers.items()))


def acl_config(path: Path) -> list[str]:
    path.write_text(json.dumps({"acl": {"enabled": True, "default_policy": "deny",
                                        "tokens": {"initial_management": MGMT}}}))  # fmt: skip
    return ["-config-file", str(path)]


def test_a_deleted_token_is_refused_by_a_client_agent_within_a_second(make_cluster: MakeCluster,
                                                                       tmp_path: Path) -> None:  # fmt: skip
    cluster = make_cluster(3)
    args = acl_config(tmp_path / "acl.json")
    for s in cluster.servers:
        s.extra_args += args
        s.token = MGMT  # the harness's own probes (a leader that takes writes) need it under default deny
    cluster.start()
    client = cluster.add_client("client-1")
    client.extra_args += args
    client.start()
    agents = [*cluster.servers, client]
    wait_for("the initial management token on every agent",
             lambda: all(call(a, "GET", "/v1/acl/token/self", MGMT).status == 200 for a in agents), 60)  # fmt: skip
    s1 = cluster.servers[0]
    reply = call(s1, "PUT", "/v1/acl/token", MGMT, {"Description": "doomed"})
    assert reply.status == 200, reply.text
    tok = reply.json()
    wait_for("the new token to resolve everywhere",
             lambda: all(call(a, "GET", "/v1/acl/token/self", tok["SecretID"]).status == 200 for a in agents), 30)
    started = time.monotonic()
    assert call(s1, "DELETE", f"/v1/acl/token/{tok['AccessorID']}", MGMT).status == 200
    refused = call(client, "GET", "/v1/acl/token/self", tok["SecretID"])
    while refused.status != 403 and time.monotonic() - started < 5:
        time.sleep(0.01)
        refused = call(client, "GET", "/v1/acl/token/self", tok["SecretID"])
    elapsed = time.monotonic() - started
    assert (refused.status, refused.text) == (403, "ACL not found")
    assert elapsed < 1.0, f"the client agent still accepted a deleted token {elapsed:.3f}s after the DELETE"
    # The client agent refused it through its own resolver, and the servers agree.
    assert all(call(a, "GET", "/v1/acl/token/self", tok["SecretID"]).status == 403 for a in agents)
    # A second bootstrap is refused: initial_management bootstrapped the cluster.
    reply = call(s1, "PUT", "/v1/acl/bootstrap", "")
    assert reply.status == 403 and reply.text.startswith("Permission denied: ACL bootstrap no longer allowed")


def test_login_and_logout_through_a_client_agent(make_cluster: MakeCluster, tmp_path: Path) -> None:
    """A client agent keeps no ACL tables: /v1/acl/login and /logout go to a server, as every /v1/acl call
    but token/self does, and the token a login made through it resolves on it and on the server."""
    cluster = make_cluster(1)
    args = acl_config(tmp_path / "acl.json")
    cluster.servers[0].extra_args += args
    cluster.servers[0].token = MGMT  # the harness's own probes (a leader that takes writes) need it under deny
    cluster.start()
    client = cluster.add_client("client-1")
    client.extra_args += args
    client.start()
    server = cluster.servers[0]
    wait_for("the initial management token on the client",
             lambda: call(client, "GET", "/v1/acl/token/self", MGMT).status == 200, 60)  # fmt: skip
    key = new_key("ES256")
    method = {"Name": "ci", "Type": "jwt", "Config": {"JWTValidationPubKeys": [public_pem(key)],
                                                      "ClaimMappings": {"service": "service"}}}  # fmt: skip
    assert call(client, "PUT", "/v1/acl/auth-method", MGMT, method).status == 200
    rule = {"AuthMethod": "ci", "BindType": "service", "BindName": "${value.service}"}
    assert call(client, "PUT", "/v1/acl/binding-rule", MGMT, rule).status == 200
    now = time.time()
    bearer = sign(key, "ES256", {"iat": now, "exp": now + 60, "service": "web"})
    reply = call(client, "POST", "/v1/acl/login", "", {"AuthMethod": "ci", "BearerToken": bearer})
    assert reply.status == 200, reply.text
    token = reply.json()
    assert token["AuthMethod"] == "ci" and token["ServiceIdentities"] == [{"ServiceName": "web"}]
    for agent in (server, client):
        wait_for("the login token to resolve",
                 lambda a=agent: call(a, "GET", "/v1/acl/token/self", token["SecretID"]).status == 200, 30)  # fmt: skip
    refused = call(client, "POST", "/v1/acl/logout", MGMT)
    assert (refused.status, refused.text) == (403, "Permission denied: token wasn't created via login")
    out = call(client, "POST", "/v1/acl/logout", token["SecretID"])
    assert (out.status, out.json()) == (200, True)
    wait_for("the logged-out token to be refused everywhere",
             lambda: all(call(a, "GET", "/v1/acl/token/self", token["SecretID"]).status == 403
                         for a in (server, client)), 5)  # fmt: skip
