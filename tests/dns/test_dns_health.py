"""Health filtering, and catalog changes showing up in DNS at once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dnstest import addresses, ask, deregister, eventually, rcode, register, set_check

from registry.structs import Service
from registry.testing.agent import RunningAgent, dev_agent


@pytest.fixture
def agent() -> Iterator[RunningAgent]:
    with dev_agent() as a:
        yield a


def _check(sid: str, status: str) -> dict[str, str]:
    return {"CheckID": f"chk-{sid}", "Name": sid, "Status": status, "ServiceID": sid}


def _port(a: RunningAgent) -> int:
    assert a.dns_port is not None
    return a.dns_port


def test_critical_instances_are_never_answered_and_warning_ones_are(agent: RunningAgent) -> None:
    port = _port(agent)
    register(agent, "n1", "10.0.0.1", {"ID": "api", "Service": "api", "Port": 1}, [_check("api", "passing")])
    register(agent, "n2", "10.0.0.2", {"ID": "api", "Service": "api", "Port": 1}, [_check("api", "warning")])
    register(agent, "n3", "10.0.0.3", {"ID": "api", "Service": "api", "Port": 1}, [_check("api", "critical")])
    assert set(addresses(ask(port, "api.service.consul"))) == {"10.0.0.1", "10.0.0.2"}
    assert {rr.rdata.target.label[0] for rr in ask(port, "api.service.consul", "SRV").rr} == {b"n1", b"n2"}


def test_updates_are_visible_immediately(agent: RunningAgent) -> None:
    """Every write changes the per-name index the cached answer was built from, so the very next query
    rebuilds it: no polling needed (the benchmark measures the latency end to end)."""
    port = _port(agent)
    register(agent, "n1", "10.0.0.1", {"ID": "api", "Service": "api", "Port": 1}, [_check("api", "passing")])
    assert addresses(ask(port, "api.service.consul")) == ["10.0.0.1"]  # now cached
    register(agent, "n2", "10.0.0.2", {"ID": "api", "Service": "api", "Port": 1}, [_check("api", "passing")])
    assert set(addresses(ask(port, "api.service.consul"))) == {"10.0.0.1", "10.0.0.2"}
    set_check(agent, "n1", "chk-api", "critical")
    assert addresses(ask(port, "api.service.consul")) == ["10.0.0.2"]
    set_check(agent, "n2", "chk-api", "critical")
    assert rcode(ask(port, "api.service.consul")) == "NXDOMAIN"
    set_check(agent, "n1", "chk-api", "passing")
    assert addresses(ask(port, "api.service.consul")) == ["10.0.0.1"]
    deregister(agent, "n1", "api")
    assert rcode(ask(port, "api.service.consul")) == "NXDOMAIN"
    # a node's address change shows in its node lookup and in the services on it
    register(agent, "n2", "10.0.0.22")
    set_check(agent, "n2", "chk-api", "passing")
    assert addresses(ask(port, "n2.node.consul")) == ["10.0.0.22"]
    assert addresses(ask(port, "api.service.consul")) == ["10.0.0.22"]
    deregister(agent, "n2")
    assert rcode(ask(port, "n2.node.consul")) == "NXDOMAIN"


def test_a_critical_node_check_hides_every_service_on_the_node(agent: RunningAgent) -> None:
    port = _port(agent)
    register(agent, "n1", "10.0.0.1", {"ID": "api", "Service": "api", "Port": 1},
             [{"CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing"}])  # fmt: skip
    register(agent, "n1", "10.0.0.1", {"ID": "db", "Service": "db", "Port": 2}, skip_node=True)
    assert addresses(ask(port, "api.service.consul")) == ["10.0.0.1"]
    assert addresses(ask(port, "db.service.consul")) == ["10.0.0.1"]
    set_check(agent, "n1", "serfHealth", "critical")
    assert rcode(ask(port, "api.service.consul")) == "NXDOMAIN"
    assert rcode(ask(port, "db.service.consul")) == "NXDOMAIN"
    # the node itself still answers: node lookups are not health-filtered (as in Consul)
    assert addresses(ask(port, "n1.node.consul")) == ["10.0.0.1"]


def test_maintenance_mode_hides_the_instance(agent: RunningAgent) -> None:
    port = _port(agent)
    register(agent, "n1", "10.0.0.1", {"ID": "api", "Service": "api", "Port": 1})
    register(agent, "n2", "10.0.0.2", {"ID": "api", "Service": "api", "Port": 1})
    assert set(addresses(ask(port, "api.service.consul"))) == {"10.0.0.1", "10.0.0.2"}
    register(agent, "n1", "10.0.0.1", checks=[{"CheckID": "_service_maintenance:api", "Name": "maint",
                                                "Status": "critical", "ServiceID": "api"}])  # fmt: skip
    assert addresses(ask(port, "api.service.consul")) == ["10.0.0.2"]


def test_only_passing_drops_warning_instances() -> None:
    with dev_agent(dns_config={"only_passing": True}) as agent:
        port = _port(agent)
        register(agent, "n1", "10.0.0.1", {"ID": "api", "Service": "api", "Port": 1}, [_check("api", "passing")])
        register(agent, "n2", "10.0.0.2", {"ID": "api", "Service": "api", "Port": 1}, [_check("api", "warning")])
        assert addresses(ask(port, "api.service.consul")) == ["10.0.0.1"]
        set_check(agent, "n1", "chk-api", "warning")
        assert rcode(ask(port, "api.service.consul")) == "NXDOMAIN"


def test_agent_registered_service_appears_through_the_agent_api(agent: RunningAgent) -> None:
    """The path a user takes: register with the agent (local state, then anti-entropy into the catalog)."""
    port = _port(agent)
    service = Service(node=agent.agent.node_name, id="local", service="local", port=9999)
    agent.call(agent.agent.add_service(service, [], replace_checks=False))
    eventually(lambda: addresses(ask(port, "local.service.consul")) == ["127.0.0.1"], timeout=5)
