"""Membership by gossip with real processes: 3 servers and 3 client agents started as a user starts them
(the clients given the servers' RPC addresses, as earlier configs name them, which still works).

- every agent lists all six members, alive, with Consul's tags, and the leader's catalog has each node with
  serfHealth passing;
- kill -9 a client: its serfHealth is critical in the catalog within 10 s, and it is failed in the pool;
- restart it: alive again, passing;
- a clean ``proconsul leave``: the node is deregistered, the pool shows it left;
- ``proconsul force-leave`` of a failed client (after another kill -9): left, and out of the catalog;
- ``proconsul join`` of a new client through a server's gossip address; ``members`` shows Consul's columns.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.cluster.harness import Cluster, Server, http, run_cli, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MakeCluster = Callable[..., Cluster]
FAIL_WITHIN = 10.0


def members(agent: Server) -> dict[str, dict]:
    reply = http("GET", agent.url + "/v1/agent/members", timeout=5)
    assert reply.status == 200, reply.text
    return {m["Name"]: m for m in reply.json()}


def serf_status(server: Server, node: str) -> str | None:
    reply = server.get(f"/v1/health/node/{node}?stale")
    assert reply.status == 200, reply.text
    return next((c["Status"] for c in reply.json() if c["CheckID"] == "serfHealth"), None)


def in_catalog(server: Server, node: str) -> bool:
    reply = server.get(f"/v1/catalog/node/{node}?stale")
    return reply.status == 200 and reply.json() is not None


def test_members_fail_leave_rejoin_and_force_leave(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(3)
    leader = cluster.start()
    clients = [cluster.add_client(f"c{i}") for i in (1, 2, 3)]
    for c in clients:
        c.start()
    everyone = [*cluster.servers, *clients]
    names = {a.name for a in everyone}

    def all_alive(agent: Server) -> bool:
        seen = members(agent)
        return set(seen) == names and all(m["Status"] == 1 for m in seen.values())

    for agent in everyone:
        wait_for(f"{agent.name} to list every member alive", lambda a=agent: all_alive(a), 60, interval=0.2)
    seen = members(clients[0])
    assert {n for n, m in seen.items() if m["Tags"]["role"] == "consul"} == {"s1", "s2", "s3"}
    assert seen["s1"]["Tags"]["port"] == str(cluster.servers[0].server_port)
    assert seen["c1"]["Tags"]["role"] == "node" and seen["c1"]["Tags"]["dc"] == "dc1"
    for c in clients:
        wait_for(f"{c.name} passing in the catalog", lambda c=c: serf_status(leader, c.name) == "passing", 30)

    # kill -9 c1: critical within 10 s, failed in every view.
    c1, c2, c3 = clients
    c1.kill()
    killed = time.monotonic()
    wait_for("c1's serfHealth critical", lambda: serf_status(leader, "c1") == "critical", FAIL_WITHIN + 10,
             interval=0.2)  # fmt: skip
    noticed = time.monotonic() - killed
    assert noticed <= FAIL_WITHIN, f"failure reached the catalog after {noticed:.1f}s"
    wait_for("c2 to see c1 failed", lambda: members(c2)["c1"]["Status"] == 4, 15)

    # Restarted, it rejoins (from its snapshot and retry_join): alive and passing again.
    c1.start()
    wait_for("c1 passing again", lambda: serf_status(leader, "c1") == "passing", 30, interval=0.2)
    wait_for("c2 to see c1 alive", lambda: members(c2)["c1"]["Status"] == 1, 30)

    # A clean leave: the process exits, the node is deregistered, the pool shows it left.
    out = run_cli("leave", "-http-addr", c2.http_addr)
    assert out.returncode == 0 and "Graceful leave complete" in out.stdout, out.stderr
    assert c2.proc is not None and c2.proc.wait(20) == 0, c2.log_tail()
    wait_for("c2 out of the catalog", lambda: not in_catalog(leader, "c2"), 15)
    wait_for("c3 to see c2 left", lambda: members(c3)["c2"]["Status"] == 3, 15)

    # force-leave a failed member through the CLI: left, and out of the catalog.
    c1.kill()
    wait_for("c1 failed", lambda: members(c3)["c1"]["Status"] == 4, 30, interval=0.2)
    out = run_cli("force-leave", "-http-addr", c3.http_addr, "c1")
    assert out.returncode == 0, out.stderr
    assert members(c3)["c1"]["Status"] == 3
    wait_for("c1 out of the catalog", lambda: not in_catalog(leader, "c1"), 15)
    out = run_cli("force-leave", "-http-addr", c3.http_addr, "nobody")
    assert out.returncode == 1 and "agent: No node found with name 'nobody'" in out.stderr, out.stderr

    # A new client joined over the CLI through a server's gossip address (host:port).
    c4 = cluster.add_client("c4")
    c4.join = []
    c4.start()
    wait_for("c4's HTTP API", lambda: http("GET", c4.url + "/v1/agent/self", timeout=2).status == 200, 30)
    assert set(members(c4)) == {"c4"}  # not joined yet: it lists itself
    s1 = cluster.servers[0]
    gossip = f"{members(s1)['s1']['Addr']}:{members(s1)['s1']['Port']}"
    out = run_cli("join", "-http-addr", c4.http_addr, gossip)
    assert out.returncode == 0 and "Successfully joined cluster by contacting 1 nodes." in out.stdout, out.stderr
    wait_for("c4 in the catalog", lambda: serf_status(leader, "c4") == "passing", 30, interval=0.2)
    wait_for("s1 to see c4 alive", lambda: members(s1).get("c4", {}).get("Status") == 1, 30)
    out = run_cli("members", "-http-addr", s1.http_addr)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["Node", "Address", "Status", "Type", "Build", "Protocol", "DC", "Partition",
                                "Segment"]  # fmt: skip
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["s1"][2:4] == ["alive", "server"] and rows["c4"][2:4] == ["alive", "client"]
    assert rows["c2"][2] == "left"
    out = run_cli("members", "-http-addr", s1.http_addr, "-status", "left")
    assert out.returncode == 0 and {line.split()[0] for line in out.stdout.splitlines()[1:]} == {"c1", "c2"}
