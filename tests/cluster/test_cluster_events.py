"""User events across a real 3-server cluster and a client agent: an event fired on any agent reaches every
agent exactly once (its own buffer, each with the same ID and Lamport time), a node filter keeps it off the
agents it does not name, and a blocking list on the client wakes on a fire from a server."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import pytest

from tests.cluster.harness import Cluster, Server, http, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def listed(agent: Server, name: str) -> list[dict[str, object]]:
    reply = http("GET", f"{agent.url}/v1/event/list?name={name}", timeout=5)
    assert reply.status == 200, reply.text
    return list(reply.json())


def test_every_agent_sees_each_event_once(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(3)
    cluster.start()
    client = cluster.add_client("client-1")
    client.start()
    wait_for("the client agent", lambda: http("GET", client.url + "/v1/agent/self", timeout=2).status == 200, 30)
    wait_for("the client to reach the ring",
             lambda: http("PUT", client.url + "/v1/event/fire/warmup", timeout=5).status == 200, 30)  # fmt: skip
    agents = [*cluster.servers, client]
    wait_for("warmup everywhere", lambda: all(listed(a, "warmup") for a in agents), 30)

    fired = http("PUT", client.url + "/v1/event/fire/deploy", b"v2", timeout=10)
    assert fired.status == 200, fired.text
    event_id = fired.json()["ID"]
    wait_for("deploy everywhere", lambda: all(listed(a, "deploy") for a in agents), 30)
    time.sleep(1.0)  # any duplicate had its chance to arrive
    seen = {a.name: [(e["ID"], e["LTime"], e["Payload"]) for e in listed(a, "deploy")] for a in agents}
    ltime = seen["client-1"][0][1]
    assert seen == {a.name: [(event_id, ltime, "djI=")] for a in agents}

    # A node filter: only client-1 keeps it, though it was fired on a server.
    s1 = cluster.servers[0]
    index = http("GET", client.url + "/v1/event/list?name=only-client", timeout=5).index
    woke: dict[str, object] = {}

    def block() -> None:
        reply = http("GET", f"{client.url}/v1/event/list?name=only-client&index={index}&wait=20s", timeout=30)
        woke["at"], woke["body"] = time.monotonic(), reply.json()

    waiter = threading.Thread(target=block)
    waiter.start()
    time.sleep(0.3)
    fired_at = time.monotonic()
    reply = http("PUT", s1.url + "/v1/event/fire/only-client?node=^client-", timeout=10)
    assert reply.status == 200, reply.text
    waiter.join(30)
    assert woke["at"] - fired_at < 10  # type: ignore[operator]
    assert [e["ID"] for e in woke["body"]] == [reply.json()["ID"]]  # type: ignore[union-attr]
    time.sleep(1.0)
    assert [listed(s, "only-client") for s in cluster.servers] == [[], [], []]
    assert json.dumps(listed(client, "only-client")) == json.dumps(woke["body"])
