"""Agent endpoints through real HTTP: registration shapes, generated check IDs, maintenance, errors."""

from __future__ import annotations

import pytest

from tests.conftest import Http


async def test_register_defaults_and_shapes(http: Http) -> None:
    status, body, _ = await http.put("/v1/agent/service/register", {
        "Name": "redis", "ID": "redis1", "Tags": ["primary", "v1"], "Address": "127.0.0.1", "Port": 8000,
        "Meta": {"redis_version": "4.0"}, "EnableTagOverride": False,
        "TaggedAddresses": {"lan": {"address": "127.0.0.1", "port": 8000}},
        "Weights": {"Passing": 10, "Warning": 1},
    })  # fmt: skip
    assert status == 200 and body == b""
    status, services, _ = await http.get("/v1/agent/services")
    assert status == 200
    svc = services["redis1"]
    assert svc["Service"] == "redis" and svc["Tags"] == ["primary", "v1"] and svc["Port"] == 8000
    assert svc["Meta"] == {"redis_version": "4.0"}
    assert svc["Weights"] == {"Passing": 10, "Warning": 1}
    assert svc["TaggedAddresses"] == {"lan": {"Address": "127.0.0.1", "Port": 8000}}
    assert svc["Datacenter"] == "dc1"
    status, one, headers = await http.get("/v1/agent/service/redis1")
    assert status == 200 and one["ContentHash"] == headers["X-Consul-ContentHash"]
    status, text, _ = await http.get("/v1/agent/service/nope")
    assert status == 404 and text == "unknown service ID: nope"


async def test_snake_case_and_case_insensitive_keys(http: Http) -> None:
    status, _, _ = await http.put("/v1/agent/service/register", {
        "name": "api", "id": "api-1", "port": 9, "enable_tag_override": True,
        "tagged_addresses": {"wan": {"address": "1.2.3.4", "port": 9}},
        "check": {"ttl": "30s", "deregister_critical_service_after": "90m", "check_id": "api-ttl"},
    })  # fmt: skip
    assert status == 200
    _, services, _ = await http.get("/v1/agent/services")
    assert services["api-1"]["EnableTagOverride"] is True
    assert services["api-1"]["TaggedAddresses"]["wan"]["Address"] == "1.2.3.4"
    _, checks, _ = await http.get("/v1/agent/checks")
    assert checks["api-ttl"]["Type"] == "ttl" and checks["api-ttl"]["ServiceID"] == "api-1"


async def test_generated_check_ids_and_names(http: Http) -> None:
    await http.put("/v1/agent/service/register", {"Name": "one", "Check": {"TTL": "10s"}})
    await http.put("/v1/agent/service/register", {"Name": "two", "ID": "two-a",
                                                   "Checks": [{"TTL": "10s"}, {"TTL": "20s", "Name": "named"}]})  # fmt: skip
    _, checks, _ = await http.get("/v1/agent/checks")
    assert checks["service:one"]["Name"] == "Service 'one' check"
    assert checks["service:one"]["Status"] == "critical"
    assert checks["service:two-a:1"]["Name"] == "Service 'two' check"
    assert checks["service:two-a:2"]["Name"] == "named"


async def test_replace_existing_checks(http: Http) -> None:
    await http.put("/v1/agent/service/register", {"Name": "s", "Checks": [{"TTL": "10s", "CheckID": "a"},
                                                                        {"TTL": "10s", "CheckID": "b"}]})  # fmt: skip
    await http.put("/v1/agent/service/register?replace-existing-checks", {"Name": "s", "Checks": [
        {"TTL": "10s", "CheckID": "a"}]})  # fmt: skip
    _, checks, _ = await http.get("/v1/agent/checks")
    assert "a" in checks and "b" not in checks
    await http.put("/v1/agent/service/register", {"Name": "s", "Checks": [{"TTL": "10s", "CheckID": "c"}]})
    _, checks, _ = await http.get("/v1/agent/checks")
    assert {"a", "c"} <= set(checks), "without the flag, existing checks stay"


async def test_deregister(http: Http) -> None:
    await http.put("/v1/agent/service/register", {"Name": "gone", "Check": {"TTL": "10s"}})
    status, _, _ = await http.put("/v1/agent/service/deregister/gone")
    assert status == 200
    _, services, _ = await http.get("/v1/agent/services")
    _, checks, _ = await http.get("/v1/agent/checks")
    assert "gone" not in services and "service:gone" not in checks
    _, catalog, _ = await http.get("/v1/catalog/service/gone")
    assert catalog == []
    status, text, _ = await http.put("/v1/agent/service/deregister/gone")
    assert status == 404
    assert text == 'Unknown service ID "gone". Ensure that the service ID is passed, not the service name.'


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"Port": 80}, "Missing service name"),
        ({"Name": "x", "Port": "eighty"}, "Request decode failed: Port: expected an integer, got string"),
        ({"Name": "x", "Tags": "a,b"}, "Request decode failed: Tags: expected an array of strings"),
        ({"Name": "x", "Address": "0.0.0.0"}, "Invalid service address"),
        ({"Name": "x", "Weights": {"Passing": 0, "Warning": 1}}, "Invalid Weights: Passing must be greater than 0"),
        ({"Name": "x", "Meta": {"consul-x": "1"}}, "Invalid Service Meta: Key prefix 'consul-' is reserved for internal use"),
        ({"Name": "x", "Check": {"TTL": "-5s"}}, "duration must not be negative"),
        ({"Name": "x", "Check": {"HTTP": "http://x"}}, "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks"),
        ({"Name": "x", "Check": {"TTL": "10s", "Interval": "10s"}}, "Invalid check: Interval and TTL cannot both be specified"),
        ({"Name": "x", "Check": {"TTL": "10s", "Status": "bogus"}}, "Status for checks must 'passing', 'warning', 'critical'"),
        ({"Name": "x", "Check": {"Args": ["/bin/true"], "Interval": "10s"}}, "Scripts are disabled on this agent"),
        ({"Name": "x", "Check": {"TTL": "9999999h"}}, "too large"),
        ({"Name": "x", "Check": {"TCP": "nohostport", "Interval": "1s"}}, "Invalid check: TCP must be host:port"),
        ({"Name": "x", "Kind": "connect-proxy", "Port": 1}, "Proxy.DestinationServiceName must be set"),
        ([1, 2], "Request decode failed: body: expected a JSON object, got array"),
    ],
)
async def test_register_errors_apply_nothing(http: Http, body: object, message: str) -> None:
    status, text, headers = await http.put("/v1/agent/service/register", body)
    assert status == 400, text
    assert message in text
    assert headers["Content-Type"].startswith("text/plain")
    _, services, _ = await http.get("/v1/agent/services")
    _, catalog, _ = await http.get("/v1/catalog/services")
    assert services == {} and set(catalog) == {"consul"}


async def test_malformed_json_and_oversized_bodies(http: Http) -> None:
    status, text, _ = await http.call("PUT", "/v1/agent/service/register", raw=b'{"Name": "x",')
    assert status == 400 and text.startswith("Request decode failed:")
    huge = b'{"Name": "x", "Meta": {"a": "' + b"x" * (9 * 1024 * 1024) + b'"}}'
    status, text, _ = await http.call("PUT", "/v1/agent/service/register", raw=huge)
    assert status == 413
    _, services, _ = await http.get("/v1/agent/services")
    assert services == {}


async def test_check_register_and_ttl_updates(http: Http) -> None:
    await http.put("/v1/agent/service/register", {"Name": "web"})
    status, _, _ = await http.put("/v1/agent/check/register", {"Name": "mem", "TTL": "30s", "ServiceID": "web"})
    assert status == 200
    status, _, _ = await http.put("/v1/agent/check/pass/mem?note=all%20good")
    assert status == 200
    _, checks, _ = await http.get("/v1/agent/checks")
    assert checks["mem"]["Status"] == "passing" and checks["mem"]["Output"] == "all good"
    await http.put("/v1/agent/check/warn/mem")
    _, health, _ = await http.get("/v1/health/checks/web")
    assert [c["Status"] for c in health] == ["warning"]
    status, _, _ = await http.put("/v1/agent/check/update/mem", {"Status": "critical", "Output": "oom"})
    assert status == 200
    _, health, _ = await http.get("/v1/health/checks/web")
    assert health[0]["Status"] == "critical" and health[0]["Output"] == "oom"
    status, text, _ = await http.put("/v1/agent/check/update/mem", {"Status": "purple"})
    assert status == 400 and text == "Invalid check status: 'purple'"
    status, text, _ = await http.put("/v1/agent/check/pass/nope")
    assert status == 404 and text.startswith('Unknown check ID "nope"')
    status, _, headers = await http.get("/v1/agent/check/warn/mem")
    assert status == 405 and headers["Allow"] == "OPTIONS,PUT"
    status, text, _ = await http.put("/v1/agent/check/register", {"TTL": "10s"})
    assert status == 400 and text == "Missing check name"
    status, text, _ = await http.put("/v1/agent/check/register", {"Name": "x", "TTL": "1s", "ServiceID": "ghost"})
    assert status == 404 and text == 'ServiceID "ghost" does not exist'
    status, text, _ = await http.put("/v1/agent/check/register", {"Name": "x", "TTL": "1s", "Status": "meh"})
    assert status == 400 and text == "Bad check status"
    status, _, _ = await http.put("/v1/agent/check/deregister/mem")
    assert status == 200
    _, health, _ = await http.get("/v1/health/checks/web")
    assert health == []


async def test_non_ttl_check_cannot_be_updated(http: Http) -> None:
    await http.put("/v1/agent/check/register", {"Name": "port", "TCP": "127.0.0.1:1", "Interval": "10s"})
    status, text, _ = await http.put("/v1/agent/check/pass/port")
    assert status == 500 and text == 'CheckID "port" does not have associated TTL'


async def test_maintenance_modes(http: Http) -> None:
    await http.put("/v1/agent/service/register", {"Name": "web", "Check": {"TTL": "30s", "Status": "passing"}})
    status, _, _ = await http.put("/v1/agent/service/maintenance/web?enable=true&reason=deploy")
    assert status == 200
    _, checks, _ = await http.get("/v1/agent/checks")
    maint = checks["_service_maintenance:web"]
    assert maint["Status"] == "critical" and maint["Notes"] == "deploy"
    _, entries, _ = await http.get("/v1/health/service/web?passing")
    assert entries == []
    await http.put("/v1/agent/service/maintenance/web?enable=false")
    _, entries, _ = await http.get("/v1/health/service/web?passing")
    assert len(entries) == 1
    await http.put("/v1/agent/maintenance?enable=true")
    _, node_checks, _ = await http.get("/v1/health/state/critical")
    assert [c["CheckID"] for c in node_checks] == ["_node_maintenance"]
    _, entries, _ = await http.get("/v1/health/service/web?passing")
    assert entries == []
    status, text, _ = await http.put("/v1/agent/maintenance")
    assert status == 400 and text == "Missing value for enable"
    await http.put("/v1/agent/maintenance?enable=false")
    _, entries, _ = await http.get("/v1/health/service/web?passing")
    assert len(entries) == 1


async def test_agent_local_health(http: Http) -> None:
    await http.put("/v1/agent/service/register", {"Name": "web", "ID": "w1", "Check": {"TTL": "30s", "Status": "passing"}})
    await http.put("/v1/agent/service/register", {"Name": "web", "ID": "w2", "Check": {"TTL": "30s", "Status": "warning"}})
    status, body, _ = await http.get("/v1/agent/health/service/id/w1")
    assert status == 200 and body["AggregatedStatus"] == "passing"
    status, body, _ = await http.get("/v1/agent/health/service/name/web")
    assert status == 429 and {e["AggregatedStatus"] for e in body} == {"passing", "warning"}
    status, text, _ = await http.get("/v1/agent/health/service/id/w2?format=text")
    assert status == 429 and text == "warning"
    status, _, _ = await http.get("/v1/agent/health/service/name/nope")
    assert status == 404


async def test_self_members_and_status(http: Http, agent) -> None:
    _, me, _ = await http.get("/v1/agent/self")
    assert me["Config"]["NodeName"] == "test-agent" and me["Config"]["Server"] is True
    _, members, _ = await http.get("/v1/agent/members")
    assert members[0]["Name"] == "test-agent" and members[0]["Status"] == 1 and members[0]["Tags"]["role"] == "consul"
    _, leader, _ = await http.get("/v1/status/leader")
    _, peers, _ = await http.get("/v1/status/peers")
    assert leader == "127.0.0.1:8300" and peers == [leader]


async def test_unknown_paths_and_methods(http: Http) -> None:
    status, text, _ = await http.get("/v1/nope")
    assert status == 404 and text == "Invalid URL path: not a recognized HTTP API endpoint\n"
    status, text, headers = await http.call("POST", "/v1/kv/x")
    assert status == 405 and text == "method POST not allowed"
    assert headers["Allow"] == "OPTIONS,GET,PUT,DELETE"
    status, _, headers = await http.call("OPTIONS", "/v1/catalog/services")
    assert status == 200 and headers["Allow"] == "OPTIONS,GET"
