"""Client agents against a 3-server cluster: catalog sync, failure detection and graceful leave."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from tests.cluster.harness import Cluster, Server, http, run_cli, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

MakeCluster = Callable[..., Cluster]
FAIL_WITHIN = 12.0  # heartbeats every 1 s, critical after 5 s of silence, plus a loaded machine's slack


def passing(server: Server, service: str) -> list[str]:
    reply = server.get(f"/v1/health/service/{service}?passing&stale")
    assert reply.status == 200, reply.text
    return [e["Node"]["Node"] for e in reply.json()]


def serf_status(server: Server, node: str) -> str | None:
    reply = server.get(f"/v1/health/node/{node}?stale")
    assert reply.status == 200, reply.text
    return next((c["Status"] for c in reply.json() if c["CheckID"] == "serfHealth"), None)


def catalog_nodes(server: Server) -> set[str]:
    reply = server.get("/v1/catalog/nodes?stale")
    assert reply.status == 200, reply.text
    return {n["Node"] for n in reply.json()}


def test_client_agents_fail_and_leave(make_cluster: MakeCluster) -> None:
    # Mutual TLS on the server port, as a production cluster runs.
    cluster = make_cluster(3, tls=True)
    cluster.start()
    servers = list(cluster.servers)
    c1 = cluster.add_client("client-1")
    c2 = cluster.add_client("client-2")
    c1.start()
    c2.start()

    def up(agent: Server) -> bool:
        return http("GET", agent.url + "/v1/agent/self", timeout=2).status == 200

    wait_for("client agents to answer", lambda: up(c1) and up(c2), 30)
    # /v1/agent/self describes the agent asked, on servers and on clients (which keep no catalog).
    for agent in [*servers, c1]:
        me = http("GET", agent.url + "/v1/agent/self").json()
        assert (me["Member"]["Name"], me["Config"]["Server"]) == (agent.name, agent.server), me["Member"]
        assert me["Stats"]["consul"]["server"] == ("true" if agent.server else "false")
    wait_for("client-1 to know the 3 servers", lambda: http("GET", c1.url + "/v1/agent/self").json()["Stats"]["consul"]
             ["known_servers"] == "3", 30)  # fmt: skip
    # The WAN pool: the servers, as <node>.<dc>; a client agent is in none and answers null, as Consul's.
    wan = http("GET", servers[0].url + "/v1/agent/members?wan=1").json()
    assert sorted(m["Name"] for m in wan) == sorted(f"{s.name}.dc1" for s in servers)
    assert http("GET", c1.url + "/v1/agent/members?wan=1").json() is None
    # Another datacenter through a client agent: Consul's error, not this datacenter's data.
    reply = http("GET", c1.url + "/v1/catalog/nodes?dc=dc9")
    assert (reply.status, reply.text) == (500, "No path to datacenter")
    # Register a service with a TTL check through client-1's own HTTP API, and pass the check.
    definition = {"Name": "x", "ID": "x1", "Port": 8080, "Check": {"TTL": "60s"}}
    reply = http("PUT", c1.url + "/v1/agent/service/register", json.dumps(definition).encode())
    assert reply.status == 200, reply.text
    reply = http("PUT", c1.url + "/v1/agent/check/pass/service:x1")
    assert reply.status == 200, reply.text
    # Every server sees client-1 alive and x passing; client-2 is in the catalog.
    for s in servers:
        wait_for(f"{s.name} to list x on client-1 as passing", lambda s=s: passing(s, "x") == ["client-1"], 30)
        wait_for(f"{s.name} to know client-2", lambda s=s: "client-2" in catalog_nodes(s), 30)
    assert serf_status(servers[0], "client-1") == "passing"
    # Reads through the client agent are answered by the servers.
    reply = http("GET", c1.url + "/v1/health/service/x?passing")
    assert reply.status == 200 and [e["Node"]["Node"] for e in reply.json()] == ["client-1"], reply.text

    # SIGKILL client-1: it stops heartbeating, the leader marks it critical, x drops out of ?passing.
    c1.kill()
    killed = time.monotonic()
    leader = cluster.wait_leader(among=servers)
    wait_for("client-1's serfHealth to go critical", lambda: serf_status(leader, "client-1") == "critical",
             FAIL_WITHIN + 10, interval=0.2)  # fmt: skip
    noticed = time.monotonic() - killed
    wait_for("x to drop out of ?passing", lambda: passing(leader, "x") == [], 10, interval=0.2)
    assert noticed <= FAIL_WITHIN, f"failure noticed after {noticed:.1f}s (heartbeat timeout is 5 s)"
    for s in servers:  # every server agrees once replicated
        wait_for(f"{s.name} to drop x", lambda s=s: passing(s, "x") == [], 10)
    # The node is still in the catalog (failed, not left): Consul keeps failed nodes until reaped.
    assert "client-1" in catalog_nodes(leader)

    # client-2 leaves gracefully through the CLI: it deregisters itself and its process exits.
    out = run_cli("leave", "-http-addr", c2.http_addr)
    assert out.returncode == 0 and "Graceful leave complete" in out.stdout, out.stderr
    assert c2.proc is not None
    assert c2.proc.wait(20) == 0, c2.log_tail()
    for s in servers:
        wait_for(f"{s.name} to drop client-2 from the catalog", lambda s=s: "client-2" not in catalog_nodes(s), 15)
    print(f"client-1 marked critical {noticed:.1f}s after SIGKILL")
