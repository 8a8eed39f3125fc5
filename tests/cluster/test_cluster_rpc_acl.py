"""Server RPC under ACLs on a secure cluster of real processes (3 servers, mutual TLS on the server port,
ACLs on with default deny), as Consul's servers vet every client agent's RPC:

- a client agent's catalog writes (its anti-entropy) carry its agent token, and the servers
  check them: a client agent whose token lacks node:write on its node cannot register its node or its
  services, one whose token has it can (Consul's ``vetRegisterWithAuthorizer``);
- server-only RPC methods are refused to a connection whose certificate is not a server's, even one our CA
  signed (CVE-2021-37219), and a client cannot plant a server through ``hello``;
- a blocking query made through a client agent is cut off with 403 when its token is deleted while it
  waits.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from registry.config import Config, apply_mapping, load_file
from registry.raft.transport import RPCClient
from registry.tls import rpc_contexts
from tests.cluster.harness import Cluster, Reply, Server, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MakeCluster = Callable[..., Cluster]
MGMT = "7c2d0e61-3a4f-4b5e-8d9c-1e2f3a4b5c01"


def call(agent: Server, method: str, path: str, token: str = MGMT, body: object = None,
         timeout: float = 10) -> Reply:  # fmt: skip
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(agent.url + path, data=data, method=method, headers={"X-Consul-Token": token})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Reply(resp.status, resp.read(), dict(resp.headers.items()))
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.read(), dict(exc.headers.items()))


def write_config(path: Path, tokens: dict[str, str]) -> list[str]:
    path.write_text(json.dumps({"acl": {"enabled": True, "default_policy": "deny", "tokens": tokens}}))
    return ["-config-file", str(path)]


def rpc_as(cluster: Cluster, role: str, address: str, method: str, args: object) -> object:
    """One RPC to a server with the ``role`` certificate ("server" or "client") of the cluster's PKI."""
    cfg = Config()
    apply_mapping(cfg, load_file(cluster.tls_configs[role]), "test")
    _, ctx, hostname, _ = rpc_contexts(cfg)

    async def go() -> object:
        client = RPCClient(address, ctx, hostname)
        try:
            return await client.call(method, args, timeout=5)
        except Exception as exc:  # noqa: BLE001 - the test looks at what came back
            return exc
        finally:
            await client.close()

    return asyncio.run(go())


def node_names(server: Server) -> set[str]:
    reply = call(server, "GET", "/v1/catalog/nodes")
    assert reply.status == 200, reply.text
    return {n["Node"] for n in reply.json()}


def test_client_agents_write_only_what_their_token_may(make_cluster: MakeCluster, tmp_path: Path) -> None:
    cluster = make_cluster(3, tls=True)
    server_args = write_config(tmp_path / "acl-servers.json", {"initial_management": MGMT})
    for s in cluster.servers:
        s.extra_args += server_args
        s.token = MGMT
    leader = cluster.start()
    s1 = cluster.servers[0]
    wait_for("the management token", lambda: call(s1, "GET", "/v1/acl/token/self").status == 200, 60)

    # An agent token that may write its own node and the "web" service.
    rules = 'node "good" { policy = "write" }\nservice "web" { policy = "write" }\nnode_prefix "" { policy = "read" }'
    reply = call(s1, "PUT", "/v1/acl/policy", body={"Name": "good-agent", "Rules": rules})
    assert reply.status == 200, reply.text
    reply = call(s1, "PUT", "/v1/acl/token", body={"Policies": [{"Name": "good-agent"}]})
    assert reply.status == 200, reply.text
    good_token = reply.json()["SecretID"]
    # A token that may only read.
    reply = call(s1, "PUT", "/v1/acl/policy", body={"Name": "reader", "Rules": 'node_prefix "" { policy = "read" }'})
    assert reply.status == 200, reply.text
    reply = call(s1, "PUT", "/v1/acl/token", body={"Policies": [{"Name": "reader"}]})
    reader_token = reply.json()["SecretID"]

    good = cluster.add_client("good")
    good.extra_args += write_config(tmp_path / "acl-good.json", {"agent": good_token})
    bad = cluster.add_client("bad")
    bad.extra_args += write_config(tmp_path / "acl-bad.json", {"agent": reader_token})
    good.start()
    bad.start()
    for agent in (good, bad):
        wait_for(f"{agent.name}'s HTTP API", lambda a=agent: call(a, "GET", "/v1/agent/self").status == 200, 60)
        # The service is registered on the agent with a token that may (the agent's own HTTP check passes):
        # what reaches the catalog is up to the agent token its anti-entropy carries.
        reply = call(agent, "PUT", "/v1/agent/service/register", body={"Name": "web", "Port": 8080})
        assert reply.status == 200, reply.text

    def good_registered() -> bool:
        reply = call(s1, "GET", "/v1/catalog/node/good")
        return reply.status == 200 and reply.json() is not None and "web" in (reply.json().get("Services") or {})

    wait_for("the good client's node and service in the catalog", good_registered, 60)
    # The other client had as long and more: its writes are refused, so nothing it wrote is in the catalog.
    # Its node is there as the leader registers every gossip member (Consul's leader reconcile, whatever the
    # member's token): the node, its address and serfHealth, and nothing of the agent's own (no service, no
    # node metadata, no other check).
    time.sleep(3)
    reply = call(s1, "GET", "/v1/catalog/node/bad")
    assert reply.status == 200, reply.text
    node = reply.json()
    assert node is None or (node["Services"] == {} and node["Node"]["Meta"] == {"consul-network-segment": ""}), node
    reply = call(s1, "GET", "/v1/health/node/bad")
    assert [c["CheckID"] for c in reply.json()] in ([], ["serfHealth"]), reply.text
    assert "Permission denied" in bad.log_path.read_text()
    # The good client's liveness is accepted: its serfHealth stays passing.
    reply = call(s1, "GET", "/v1/health/node/good")
    assert {c["CheckID"]: c["Status"] for c in reply.json()}.get("serfHealth") == "passing"

    # CVE-2021-37219: a client certificate from the same CA reaches no server-only method.
    address = leader.address
    for method, args in (("apply", b"\x80"), ("raft_configuration", None), ("join", {"id": "x", "address": "y"}),
                         ("read_index", False), ("transfer_leader", None), ("remove_server", "x")):  # fmt: skip
        refused = rpc_as(cluster, "client", address, method, args)
        assert isinstance(refused, Exception) and getattr(refused, "status", None) == 403, (method, refused)
        assert "served to servers only" in str(refused)
    # hello answers a client (it finds the leader with it) but learns nothing from one.
    fake = {"id": "planted", "address": "127.0.0.9:1", "name": "planted"}
    reply = rpc_as(cluster, "client", address, "hello", fake)
    assert isinstance(reply, dict) and reply.get("leader"), reply
    assert "planted" not in (rpc_as(cluster, "server", address, "hello", None) or {}).get("known", {})
    # A server's certificate does reach them.
    config = rpc_as(cluster, "server", address, "raft_configuration", None)
    assert isinstance(config, list) and len(config) == 3, config
    # A client's RPC without a token that may is refused with Consul's text (a check update on "good").
    update = {"Type": "check.update", "Node": "good", "CheckID": "nope", "Status": "passing"}
    denied = rpc_as(cluster, "client", address, "client_apply", update)
    assert getattr(denied, "status", None) == 403 and "lacks permission 'node:write' on \"good\"" in str(denied)

    # A blocking query through a client agent is cut off with 403 when its token is deleted while it waits.
    reply = call(s1, "PUT", "/v1/acl/policy", body={"Name": "kv", "Rules": 'key_prefix "" { policy = "read" }'})
    reply = call(s1, "PUT", "/v1/acl/token", body={"Policies": [{"Name": "kv"}]})
    doomed = reply.json()
    assert call(s1, "PUT", "/v1/kv/watched", body="v").status == 200
    first = call(good, "GET", "/v1/kv/watched", doomed["SecretID"])
    assert first.status == 200, first.text
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(call, good, "GET", f"/v1/kv/watched?index={first.index}&wait=30s",
                              doomed["SecretID"], None, 40)  # fmt: skip
        time.sleep(0.5)
        assert not waiting.done()
        started = time.monotonic()
        assert call(s1, "DELETE", f"/v1/acl/token/{doomed['AccessorID']}").status == 200
        cut = waiting.result(timeout=10)
        elapsed = time.monotonic() - started
    assert (cut.status, cut.text) == (403, "ACL not found")
    assert elapsed < 1.0, f"the waiting query answered {elapsed:.2f}s after its token was deleted"
