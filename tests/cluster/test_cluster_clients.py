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


def known_servers(client: Server) -> str:
    """The servers a client agent's router holds (Consul's Stats known_servers)."""
    stats = http("GET", client.url + "/v1/agent/self", timeout=5).json()["Stats"]
    return str(stats["consul"]["known_servers"])


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


def client_bytes(cluster: Cluster) -> dict[int, int]:
    """Bytes client agents sent to each server's RPC port (the relay in front of it counts them; the
    test process itself speaks HTTP only)."""
    return {s.k: cluster.relay.forwarded.get((None, s.k), 0) for s in cluster.servers}


def test_client_writes_go_through_the_picked_server(make_cluster: MakeCluster) -> None:
    """Consul's client RPC: a client agent sends its writes to the server its router picked, which forwards
    them to the leader; a leader change costs the client nothing (no leader look-ups at the other servers);
    a picked server that dies is replaced by another and the writes go on."""
    cluster = make_cluster(3)
    leader = cluster.start()
    c1 = cluster.add_client("client-1")
    c1.start()
    wait_for("client-1 to answer", lambda: http("GET", c1.url + "/v1/agent/self", timeout=2).status == 200, 30)
    wait_for("client-1 to know the 3 servers", lambda: http("GET", c1.url + "/v1/agent/self").json()["Stats"]
             ["consul"]["known_servers"] == "3", 30)  # fmt: skip
    # Its retry_join names the servers' RPC ports, which it tries as gossip addresses and asks over RPC for
    # their gossip address, one after another: those bytes are not RPCs, so the count starts once it is done.
    wait_for("client-1's retry_join to finish", lambda: "Join cluster completed" in c1.log_path.read_text(), 60)
    registered = 0

    def register_and_see(via: Server, timeout: float = 30) -> None:
        """A service registered through client-1 reaches the catalog (its anti-entropy's client_apply)."""
        nonlocal registered
        registered += 1
        name = f"svc-{registered}"
        reply = http("PUT", c1.url + "/v1/agent/service/register", json.dumps({"Name": name, "Port": 80}).encode())
        assert reply.status == 200, reply.text
        wait_for(f"{name} in {via.name}'s catalog", lambda: "client-1" in [
            e["Node"] for e in via.get(f"/v1/catalog/service/{name}?stale").json()], timeout)  # fmt: skip

    register_and_see(leader)
    # Which server client-1 talks to: the only one its calls reach from now on (the router keeps its pick
    # for minutes). Make it a follower, so that its writes must be forwarded.
    before = client_bytes(cluster)
    register_and_see(leader)
    grew = [k for k, n in client_bytes(cluster).items() if n > before[k]]
    assert len(grew) == 1, (before, client_bytes(cluster))
    picked = next(s for s in cluster.servers if s.k == grew[0])
    if picked is leader:
        other = next(s for s in cluster.servers if s is not leader)
        reply = http("POST", f"{leader.url}/v1/operator/raft/transfer-leader?id={other.node_id}")
        assert reply.status == 200, reply.text
        leader = cluster.wait_leader(exclude=picked)
    assert picked is not leader
    before = client_bytes(cluster)
    for _ in range(3):
        register_and_see(leader)
    after = client_bytes(cluster)
    assert after[picked.k] > before[picked.k]
    assert {k: after[k] - before[k] for k in after if k != picked.k} == {k: 0 for k in after if k != picked.k}

    # Kill the leader: client-1 keeps writing through its server, which finds the new leader; nothing of
    # client-1's reaches any other server (no storm of leader look-ups from the clients).
    before = client_bytes(cluster)
    leader.kill()
    killed = time.monotonic()
    old_leader = leader
    leader = cluster.wait_leader(among=[s for s in cluster.servers if s is not old_leader])
    # The pool reports the dead server failed, and client-1's router drops it (Consul's RemoveServer on
    # Serf's failed event): it is no longer among the servers picked.
    wait_for("client-1's router to drop the dead server", lambda: known_servers(c1) == "2",
             max(1.0, FAIL_WITHIN - (time.monotonic() - killed)))  # fmt: skip
    register_and_see(leader)
    register_and_see(leader)
    after = client_bytes(cluster)
    assert all(after[k] == before[k] for k in after if k != picked.k), (before, after, picked.name)

    # The picked server dies (the old leader back first, to keep a quorum): the next writes move to
    # another server.
    old_leader.start()
    cluster.wait_caught_up()
    wait_for("client-1's router to take the restarted server back", lambda: known_servers(c1) == "3", 30)
    picked.kill()  # (if it leads by now, this is a leader change as well)
    survivors = [s for s in cluster.servers if s is not picked]
    leader = cluster.wait_leader(among=survivors)
    before = client_bytes(cluster)
    register_and_see(leader)
    register_and_see(leader)
    after = client_bytes(cluster)
    assert any(after[s.k] > before[s.k] for s in survivors), (before, after)


def coord_json(x_ms: float) -> dict[str, object]:
    """A coordinate on the first axis, ``x_ms`` milliseconds from the origin (Consul's JSON)."""
    return {"Vec": [x_ms / 1000.0] + [0.0] * 7, "Error": 0.1, "Adjustment": 0.0, "Height": 1e-5}


def test_near_agent_on_a_client_agent_is_the_client(make_cluster: MakeCluster) -> None:
    """``?near=_agent`` on a client agent's catalog and health endpoints, and a prepared query's own
    ``Near: "_agent"`` executed through a client agent, sort from the client agent's node (Consul's client
    names itself in the request it forwards), not from the server that answers."""
    cluster = make_cluster(1)
    # The agents' own coordinates stay where the test puts them (their first send is an hour away), and the
    # leader applies updates at once.
    quiet = ["-hcl", 'sync_coordinate_interval_min = "1h"']
    cluster.servers[0].extra_args += [*quiet, "-hcl", 'consul { coordinate { update_period = "50ms" } }']
    server = cluster.start()
    c1 = cluster.add_client("client-1")
    c1.extra_args += quiet
    c1.start()
    wait_for("client-1 in the catalog", lambda: "client-1" in catalog_nodes(server), 30)
    for name in ("n-near", "n-mid", "n-far"):
        reply = server.put("/v1/catalog/register", json.dumps({
            "Node": name, "Address": "10.0.0.9", "Service": {"Service": "web", "Port": 80}}))  # fmt: skip
        assert reply.status == 200, reply.text
    for agent in (server, c1):
        reply = http("PUT", agent.url + "/v1/agent/service/register", json.dumps({"Name": "web", "Port": 80}).encode())
        assert reply.status == 200, reply.text
    wait_for("web on both agents in the catalog", lambda: {e["Node"] for e in server.get(
        "/v1/catalog/service/web").json()} == {"n-near", "n-mid", "n-far", "client-1", server.name}, 30)  # fmt: skip
    # On a line: the server at -100 ms, client-1 at 0, then n-near (2), n-mid (10), n-far (40).
    coords = {server.name: -100.0, "client-1": 0.0, "n-near": 2.0, "n-mid": 10.0, "n-far": 40.0}
    for node, x in coords.items():
        reply = server.put("/v1/coordinate/update", json.dumps({"Node": node, "Coord": coord_json(x)}))
        assert reply.status == 200, reply.text
    wait_for("the coordinates applied", lambda: {e["Node"] for e in server.get("/v1/coordinate/nodes").json()}
             >= set(coords), 10)  # fmt: skip
    from_client = ["client-1", "n-near", "n-mid", "n-far", server.name]
    from_server = [server.name, "client-1", "n-near", "n-mid", "n-far"]

    def nodes(agent: Server, path: str, key: Callable[[dict], str]) -> list[str]:
        reply = http("GET", agent.url + path)
        assert reply.status == 200, (path, reply.text)
        found = reply.json()
        return [key(e) for e in (found["Nodes"] if isinstance(found, dict) else found)]

    assert nodes(c1, "/v1/catalog/nodes?near=_agent", lambda e: e["Node"]) == from_client
    assert nodes(c1, "/v1/catalog/service/web?near=_agent", lambda e: e["Node"]) == from_client
    assert nodes(c1, "/v1/health/service/web?near=_agent", lambda e: e["Node"]["Node"]) == from_client
    assert nodes(server, "/v1/catalog/nodes?near=_agent", lambda e: e["Node"]) == from_server
    # A prepared query whose Near is "_agent": executed through client-1, it sorts from client-1.
    reply = http("POST", server.url + "/v1/query",
                 json.dumps({"Name": "web-near", "Service": {"Service": "web", "Near": "_agent"}}).encode())
    assert reply.status == 200, reply.text
    qid = reply.json()["ID"]
    for _ in range(5):  # the instances are shuffled first: the sort decides every time
        assert nodes(c1, f"/v1/query/{qid}/execute", lambda e: e["Node"]["Node"]) == from_client
        assert nodes(c1, "/v1/query/web-near/execute", lambda e: e["Node"]["Node"]) == from_client
        assert nodes(server, f"/v1/query/{qid}/execute", lambda e: e["Node"]["Node"]) == from_server
    # ?near on the execution still wins over the query's Near.
    assert nodes(c1, f"/v1/query/{qid}/execute?near=n-far", lambda e: e["Node"]["Node"]) == [
        "n-far", "n-mid", "n-near", "client-1", server.name]  # fmt: skip
