"""py-consul, an existing Consul client library, against a real Proconsul dev agent: it must just work."""

from __future__ import annotations

import threading
import time

import consul
import pytest

from registry.testing import RunningAgent, dev_agent


def wait_for(predicate, timeout: float = 10.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


@pytest.fixture
def c(proconsul_agent: RunningAgent) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=proconsul_agent.http_port)


def test_register_and_discover(c: consul.Consul) -> None:
    c.agent.service.register("web", service_id="web1", address="10.1.1.1", port=8080, tags=["v1"],
                             check=consul.Check.ttl("30s"), meta={"team": "a"})  # fmt: skip
    c.agent.service.register("web", service_id="web2", address="10.1.1.2", port=8080, tags=["v2"])
    assert set(c.agent.services()) == {"web1", "web2"}
    index, nodes = c.health.service("web")
    assert int(index) > 0 and sorted(n["Service"]["ID"] for n in nodes) == ["web1", "web2"]
    _, passing = c.health.service("web", passing=True)
    assert [n["Service"]["ID"] for n in passing] == ["web2"]
    c.agent.check.ttl_pass("service:web1", notes="fine")
    _, passing = c.health.service("web", passing=True)
    assert sorted(n["Service"]["ID"] for n in passing) == ["web1", "web2"]
    _, tagged = c.catalog.service("web", tag="v1")
    assert [s["ServiceAddress"] for s in tagged] == ["10.1.1.1"]
    _, services = c.catalog.services()
    assert services["web"] == ["v1", "v2"]
    _, nodes = c.catalog.nodes()
    assert nodes[0]["Node"] == "test-agent"
    c.agent.service.deregister("web2")
    _, nodes = c.health.service("web")
    assert [n["Service"]["ID"] for n in nodes] == ["web1"]


def test_kv_and_cas(c: consul.Consul) -> None:
    assert c.kv.put("cfg/a", "1") is True
    index, data = c.kv.get("cfg/a")
    assert data["Value"] == b"1"
    assert c.kv.put("cfg/a", "2", cas=data["ModifyIndex"]) is True
    assert c.kv.put("cfg/a", "3", cas=data["ModifyIndex"]) is False
    c.kv.put("cfg/b", "x", flags=5)
    _, keys = c.kv.get("cfg/", keys=True)
    assert keys == ["cfg/a", "cfg/b"]
    _, entries = c.kv.get("cfg/", recurse=True)
    assert [(e["Key"], e["Value"], e["Flags"]) for e in entries] == [("cfg/a", b"2", 0), ("cfg/b", b"x", 5)]
    assert c.kv.delete("cfg/", recurse=True) is True
    _, gone = c.kv.get("cfg/a")
    assert gone is None


def test_blocking_kv_watch(c: consul.Consul) -> None:
    c.kv.put("watched", "v1")
    index, _ = c.kv.get("watched")
    result: dict = {}

    def watcher() -> None:
        result["value"] = c.kv.get("watched", index=index, wait="10s")

    t = threading.Thread(target=watcher)
    started = time.monotonic()
    t.start()
    time.sleep(0.2)
    c.kv.put("watched", "v2")
    t.join(5)
    new_index, data = result["value"]
    assert data["Value"] == b"v2" and int(new_index) > int(index)
    assert time.monotonic() - started < 5


def test_http_check_via_pyconsul(c: consul.Consul, proconsul_agent: RunningAgent) -> None:
    # The agent's own HTTP API is a handy real target: /v1/status/leader answers 200.
    url = f"{proconsul_agent.url}/v1/status/leader"
    c.agent.service.register("api", check=consul.Check.http(url, interval="1s", timeout="1s"))
    wait_for(lambda: c.health.service("api", passing=True)[1] != [])
    checks = c.agent.checks()
    assert checks["service:api"]["Status"] == "passing"


def test_status_and_self(c: consul.Consul) -> None:
    assert c.status.leader() == "127.0.0.1:8300"
    assert c.status.peers() == ["127.0.0.1:8300"]
    me = c.agent.self()
    assert me["Config"]["Datacenter"] == "dc1"
    assert c.agent.members()[0]["Name"] == "test-agent"


def test_fixture_starts_fast_and_cleans_up() -> None:
    import socket

    timings = []
    for _ in range(5):
        started = time.perf_counter()
        with dev_agent() as running:
            timings.append(time.perf_counter() - started)
            port = running.http_port
            assert consul.Consul(port=port).status.leader()
        with socket.socket() as s:
            # SO_REUSEADDR tolerates TIME_WAIT connections but not a live listener on the port.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen()  # the port is free again: teardown closed the listener
    assert min(timings) < 0.1, f"dev_agent() startup took {timings}"


def test_sessions_and_locks(c: consul.Consul) -> None:
    """py-consul's session API and kv.put(acquire=/release=), unchanged."""
    a = c.session.create(name="leader-election", lock_delay=0, ttl=30)
    b = c.session.create(behavior="delete")
    _, info = c.session.info(a)
    assert info is not None and info["Name"] == "leader-election" and info["TTL"] == "30s"
    assert info["LockDelay"] == 0
    assert c.session.renew(a)["ID"] == a
    assert {s["ID"] for s in c.session.list()[1]} == {a, b}
    assert {s["ID"] for s in c.session.node(info["Node"])[1]} == {a, b}
    assert c.kv.put("service/leader", "node-a", acquire=a) is True
    assert c.kv.put("service/leader", "node-b", acquire=b) is False
    _, entry = c.kv.get("service/leader")
    assert entry["Session"] == a and entry["LockIndex"] == 1 and entry["Value"] == b"node-a"
    assert c.kv.put("service/leader", "node-a", release=b) is False
    assert c.kv.put("service/leader", "bye", release=a) is True
    assert c.kv.put("service/leader", "node-b", acquire=b) is True
    assert c.session.destroy(b) is True
    _, entry = c.kv.get("service/leader")
    assert entry is None  # Behavior delete
    assert c.session.info(b)[1] is None
    with pytest.raises(consul.NotFound):
        c.session.renew(b)


def test_txn_put(c: consul.Consul) -> None:
    """py-consul's txn.put: a committed transaction returns Results, a refused one raises with the 409 body."""
    import base64

    def b64(v: str) -> str:
        return base64.b64encode(v.encode()).decode()

    out = c.txn.put([{"KV": {"Verb": "set", "Key": "txn/a", "Value": b64("1")}},
                     {"KV": {"Verb": "set", "Key": "txn/b", "Value": b64("2")}},
                     {"KV": {"Verb": "get", "Key": "txn/a"}}])  # fmt: skip
    assert out["Errors"] is None and [r["KV"]["Key"] for r in out["Results"]] == ["txn/a", "txn/b", "txn/a"]
    assert out["Results"][2]["KV"]["Value"] == b64("1")
    with pytest.raises(consul.ConsulException) as exc:
        c.txn.put([{"KV": {"Verb": "delete", "Key": "txn/a"}}, {"KV": {"Verb": "get", "Key": "txn/missing"}}])
    assert "409" in str(exc.value) and "txn/missing" in str(exc.value)
    _, entry = c.kv.get("txn/a")
    assert entry["Value"] == b"1"
