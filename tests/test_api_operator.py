"""/v1/operator/autopilot/* and /v1/operator/usage over HTTP on a dev agent, and through py-consul."""

from __future__ import annotations

import consul
import pytest

from registry.testing import RunningAgent
from tests.conftest import Http


async def test_autopilot_configuration_get_put_cas(http: Http) -> None:
    status, conf, _ = await http.get("/v1/operator/autopilot/configuration")
    assert status == 200
    assert {k: v for k, v in conf.items() if not k.endswith("Index")} == {
        "CleanupDeadServers": True, "LastContactThreshold": "200ms", "MaxTrailingLogs": 250, "MinQuorum": 0,
        "ServerStabilizationTime": "10s", "RedundancyZoneTag": "", "DisableUpgradeMigration": False,
        "UpgradeVersionTag": ""}  # fmt: skip
    assert conf["CreateIndex"] == conf["ModifyIndex"] > 0
    # A plain PUT answers true; fields left out take Consul's defaults, not the stored values.
    status, ok, _ = await http.put("/v1/operator/autopilot/configuration",
                                   {"CleanupDeadServers": False, "LastContactThreshold": "1s", "MinQuorum": 3})
    assert status == 200 and ok is True
    _, after, _ = await http.get("/v1/operator/autopilot/configuration")
    assert (after["CleanupDeadServers"], after["LastContactThreshold"], after["MinQuorum"]) == (False, "1s", 3)
    assert after["ServerStabilizationTime"] == "10s" and after["CreateIndex"] == conf["CreateIndex"]
    assert after["ModifyIndex"] > conf["ModifyIndex"]
    # CAS: a stale index answers false and changes nothing; the current one applies.
    status, ok, _ = await http.put(f"/v1/operator/autopilot/configuration?cas={conf['ModifyIndex']}",
                                   {"MaxTrailingLogs": 10})  # fmt: skip
    assert status == 200 and ok is False
    status, ok, _ = await http.put(f"/v1/operator/autopilot/configuration?cas={after['ModifyIndex']}",
                                   {"MaxTrailingLogs": 10, "ServerStabilizationTime": 2_000_000_000})
    assert status == 200 and ok is True
    _, last, _ = await http.get("/v1/operator/autopilot/configuration?stale")
    assert (last["MaxTrailingLogs"], last["ServerStabilizationTime"], last["MinQuorum"]) == (10, "2s", 0)


@pytest.mark.parametrize(("url", "body", "message"), [
    ("", {"LastContactThreshold": "soon"}, 'Error parsing autopilot config: time: invalid duration "soon"'),
    ("", {"MinQuorum": "three"}, "Error parsing autopilot config: json: cannot unmarshal string into Go struct "
                                 "field AutopilotConfiguration.MinQuorum of type uint64"),
    ("", [1], "Error parsing autopilot config: json: cannot unmarshal list"),
    ("?cas=x", {}, 'Error parsing cas value: strconv.ParseUint: parsing "x": invalid syntax'),
])  # fmt: skip
async def test_autopilot_configuration_bad_input(http: Http, url: str, body: object, message: str) -> None:
    _, before, _ = await http.get("/v1/operator/autopilot/configuration")
    status, text, _ = await http.put("/v1/operator/autopilot/configuration" + url, body)
    assert status == 400 and text.startswith(message), text
    _, after, _ = await http.get("/v1/operator/autopilot/configuration")
    assert after == before


async def test_autopilot_health_and_state_of_a_dev_agent(http: Http, agent: RunningAgent) -> None:
    status, health, _ = await http.get("/v1/operator/autopilot/health")
    assert status == 200 and health["Healthy"] is True and health["FailureTolerance"] == 0
    [me] = health["Servers"]
    node_id = agent.agent.config.node_id
    assert me["ID"] == node_id and me["Name"] == "test-agent" and me["Leader"] and me["Voter"]
    assert me["SerfStatus"] == "alive" and me["LastContact"] == "0s" and me["Healthy"]
    assert me["LastIndex"] > 0 and me["StableSince"].endswith("Z")
    status, state, _ = await http.get("/v1/operator/autopilot/state")
    assert status == 200 and state["Leader"] == node_id and state["Voters"] == [node_id]
    assert state["Servers"][node_id]["Status"] == "leader" and state["Servers"][node_id]["NodeStatus"] == "alive"


async def test_operator_usage_counts(http: Http) -> None:
    for body in ({"Name": "web", "ID": "web1", "Port": 80}, {"Name": "web", "ID": "web2", "Port": 81},
                 {"Name": "web-sidecar-proxy", "Kind": "connect-proxy", "Port": 21000,
                  "Proxy": {"DestinationServiceName": "web"}},
                 {"Name": "native", "Port": 90, "Connect": {"Native": True}}):  # fmt: skip
        status, _, _ = await http.put("/v1/agent/service/register", body)
        assert status == 200
    status, usage, headers = await http.get("/v1/operator/usage")
    assert status == 200 and int(headers["X-Consul-Index"]) == usage["Index"] > 0
    assert usage["Usage"]["dc1"] == {
        "Services": 4, "ServiceInstances": 5,  # the dev server's own "consul" service counts
        "ConnectServiceInstances": {"connect-native": 1, "connect-proxy": 1, "ingress-gateway": 0,
                                    "mesh-gateway": 0, "terminating-gateway": 0},
        "BillableServiceInstances": 3,
    }  # fmt: skip
    assert usage["KnownLeader"] is True and usage["ConsistencyLevel"] == "leader"


def test_py_consul_operator_calls(proconsul_agent: RunningAgent) -> None:
    c = consul.Consul(port=proconsul_agent.http_port)
    conf = c.operator.autopilot_configuration()
    assert conf["CleanupDeadServers"] is True and conf["MaxTrailingLogs"] == 250
    assert c.operator.update_autopilot_configuration(cas=conf["ModifyIndex"] + 1000, min_quorum=3) is False
    assert c.operator.update_autopilot_configuration(cas=conf["ModifyIndex"], min_quorum=3) is True
    assert c.operator.autopilot_configuration()["MinQuorum"] == 3
    health = c.operator.autopilot_health()
    assert health["Healthy"] is True and len(health["Servers"]) == 1
    usage = c.operator.usage()
    assert usage["Usage"]["dc1"]["Services"] >= 1
