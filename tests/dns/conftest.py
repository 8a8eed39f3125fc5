"""Shared DNS fixtures: dev agents with a catalog that exercises every name form and health case.

The agents are module-scoped (starting one takes well under 100 ms, but seeding the catalog is a few dozen
writes) and tests that change the catalog use their own agent.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dnstest import register

from registry.testing.agent import RunningAgent, dev_agent

PASS = {"CheckID": "svc-check", "Name": "svc", "Status": "passing"}


def seed_catalog(a: RunningAgent) -> None:
    """The catalog most name-form, rcode and health tests read."""

    def svc_check(sid: str, status: str) -> dict[str, str]:
        return {"CheckID": f"check-{sid}", "Name": sid, "Status": status, "ServiceID": sid}

    # web: one passing (weights 10/1), one warning, one critical, one on a node whose serfHealth is critical
    register(a, "web-1", "10.0.1.1", {"ID": "web", "Service": "web", "Port": 8080, "Tags": ["primary", "v1"],
                                      "Weights": {"Passing": 10, "Warning": 1}},
             [svc_check("web", "passing")], meta={"rack": "r1", "rfc1035-note": "raw text"})  # fmt: skip
    register(a, "web-2", "10.0.1.2", {"ID": "web", "Service": "web", "Port": 8080, "Tags": ["v1"],
                                      "Weights": {"Passing": 10, "Warning": 3}},
             [svc_check("web", "warning")])  # fmt: skip
    register(a, "web-3", "10.0.1.3", {"ID": "web", "Service": "web", "Port": 8081},
             [svc_check("web", "critical")])  # fmt: skip
    register(a, "web-4", "10.0.1.4", {"ID": "web", "Service": "web", "Port": 8080},
             [{"CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "critical"}])  # fmt: skip
    # db: an explicit service address, so SRV targets are "<hex>.addr." names
    register(a, "db-1", "10.0.2.1", {"ID": "db", "Service": "db", "Port": 5432, "Address": "10.0.9.9"})
    # case: a mixed-case service on a mixed-case node
    register(a, "Mixed-Case", "10.0.3.1", {"ID": "Api", "Service": "Api", "Port": 9000})
    # IPv6 only
    register(a, "v6-node", "2001:db8::1", {"ID": "six", "Service": "six", "Port": 80})
    # hostnames: a node whose address is a name, and a service that points at another Consul name
    register(a, "ext", "example.org", {"ID": "external", "Service": "external", "Port": 443})
    register(a, "web-1", "10.0.1.1", {"ID": "alias", "Service": "alias", "Port": 80, "Address": "db.service.consul"},
             skip_node=True)  # fmt: skip
    # Connect: a sidecar for web
    register(a, "web-1", "10.0.1.1", {"ID": "web-sidecar-proxy", "Service": "web-sidecar-proxy",
                                      "Kind": "connect-proxy", "Port": 21000,
                                      "Proxy": {"DestinationServiceName": "web"}}, skip_node=True)  # fmt: skip
    # Connect-native: the service itself accepts mTLS
    register(a, "native-1", "10.0.4.1", {"ID": "native", "Service": "native", "Port": 8443,
                                         "Connect": {"Native": True}})  # fmt: skip
    # a dotted node name, a node with a tagged LAN address, a virtual IP
    register(a, "dotted.host", "10.0.6.1")
    register(a, "tagged", "10.0.5.1", {"ID": "tagsvc", "Service": "tagsvc", "Port": 7000},
             tagged={"lan_ipv4": "10.0.5.2"})  # fmt: skip
    register(a, "vip-node", "10.0.7.1", {"ID": "vip", "Service": "vip", "Port": 80,
                                         "TaggedAddresses": {"consul-virtual": {"Address": "240.0.0.5", "Port": 80}}})  # fmt: skip
    # only critical instances
    register(a, "lonely-1", "10.0.8.1", {"ID": "lonely", "Service": "lonely", "Port": 1},
             [svc_check("lonely", "critical")])  # fmt: skip
    # many: 40 passing instances, more than fit in 512 bytes
    for i in range(40):
        register(a, f"many-{i:02d}", f"10.1.0.{i + 1}", {"ID": "many", "Service": "many", "Port": 1000 + i})


@pytest.fixture(scope="module")
def catalog_agent() -> Iterator[RunningAgent]:
    with dev_agent() as a:
        seed_catalog(a)
        yield a


@pytest.fixture(scope="module")
def port(catalog_agent: RunningAgent) -> int:
    assert catalog_agent.dns_port is not None
    return catalog_agent.dns_port
