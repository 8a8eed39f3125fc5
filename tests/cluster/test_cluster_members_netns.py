"""A 20-agent pool with each agent in its own network namespace (3 servers, 17 client agents), as separate
machines on one switch: kill -9 one (critical in the catalog within 10 s), cut one off silently (suspected,
then alive again on heal without a restart, and never deregistered), restart one (it rejoins). Behind the
``soak`` marker: twenty processes take a while to start on a 2-core machine."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.cluster.harness import BIN, Server, http, wait_for
from tests.cluster.netns import NetnsCluster, NetnsServer

pytestmark = [pytest.mark.slow, pytest.mark.soak, pytest.mark.timeout(600)]

AGENTS = 20
SERVERS = 3
FAIL_WITHIN = 10.0


@dataclass
class NetnsClient(NetnsServer):
    """A client agent in namespace ``k``, joining the servers' RPC addresses as earlier configs name them."""

    def argv(self) -> list[str]:
        assert self.net is not None
        argv = [BIN, "agent", "-node", self.name, "-data-dir", str(self.data_dir), "-http-port", str(self.http_port),
                "-dns-port", "-1", "-bind", self.host, "-advertise", self.host, "-client", self.host,
                "-retry-interval", "1s"]  # fmt: skip
        for addr in self.join:
            argv += ["-retry-join", addr]
        if os.environ.get("CLUSTER_LOG_LEVEL"):
            argv += ["-log-level", os.environ["CLUSTER_LOG_LEVEL"]]
        return self.net.argv_in(self.k, argv + self.extra_args)


def members(agent: Server) -> dict[str, int]:
    reply = http("GET", agent.url + "/v1/agent/members", timeout=5)
    assert reply.status == 200, reply.text
    return {m["Name"]: m["Status"] for m in reply.json()}


def serf_status(server: Server, node: str) -> str | None:
    reply = server.get(f"/v1/health/node/{node}?stale")
    assert reply.status == 200, reply.text
    return next((c["Status"] for c in reply.json() if c["CheckID"] == "serfHealth"), None)


def test_twenty_agents_kill_partition_restart(make_netns_cluster: Callable[..., NetnsCluster]) -> None:
    cluster = make_netns_cluster(AGENTS)
    servers = cluster.servers[:SERVERS]
    for s in servers:
        s.bootstrap_expect = SERVERS
        s.join = [o.address for o in servers if o is not s]
    clients = [NetnsClient(k=s.k, name=f"c{s.k}", data_dir=s.data_dir, server_port=s.server_port,
                           http_port=s.http_port, join=[o.address for o in servers], bootstrap_expect=0,
                           log_path=s.log_path, server=False, net=cluster.net)  # fmt: skip
               for s in cluster.servers[SERVERS:]]
    cluster.servers = servers
    cluster.clients = list(clients)
    leader = cluster.start(timeout=120)
    for c in clients:
        c.start()
    everyone = [*servers, *clients]
    names = {a.name for a in everyone}
    wait_for("every agent in the leader's pool, alive", lambda: members(leader) == dict.fromkeys(names, 1), 180,
             interval=0.5)  # fmt: skip
    wait_for("every client passing in the catalog",
             lambda: all(serf_status(leader, c.name) == "passing" for c in clients), 60, interval=0.5)  # fmt: skip

    # kill -9 one: critical within 10 s.
    victim, cut, restarted = clients[0], clients[1], clients[2]
    victim.kill()
    killed = time.monotonic()
    wait_for(f"{victim.name} critical", lambda: serf_status(leader, victim.name) == "critical", FAIL_WITHIN + 10,
             interval=0.2)  # fmt: skip
    assert time.monotonic() - killed <= FAIL_WITHIN

    # A silent cut: failed while cut off, alive again on heal, without a restart.
    cluster.net.isolate(cut.k)
    wait_for(f"{cut.name} failed while cut off", lambda: members(leader)[cut.name] == 4, 30, interval=0.2)
    cluster.net.heal()
    wait_for(f"{cut.name} alive after the heal", lambda: members(leader)[cut.name] == 1, 90, interval=0.5)
    wait_for(f"{cut.name} passing after the heal", lambda: serf_status(leader, cut.name) == "passing", 30)
    assert cut.alive

    # A restart: it rejoins.
    restarted.kill()
    wait_for(f"{restarted.name} failed", lambda: members(leader)[restarted.name] == 4, 30, interval=0.2)
    restarted.start()
    wait_for(f"{restarted.name} alive again", lambda: serf_status(leader, restarted.name) == "passing", 60,
             interval=0.5)  # fmt: skip
