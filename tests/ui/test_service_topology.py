"""/v1/internal/ui/service-topology/<service> against Consul's shape (agent/ui_endpoint.go ServiceTopology,
ServiceTopologySummary; structs.IntentionDecisionSummary), on a real in-process dev agent: the sources of each
upstream and downstream, the intentions' decision fields, protocol and transparent proxy, routing config and
discovery chains, Consul's 400s, and the ACL filtering with FilteredByACLs."""

from __future__ import annotations

from typing import Any

from tests.conftest import Http
from tests.ui.test_ui_http import ROOT, acl_http  # noqa: F401 - the fixture, with its management token

TOPOLOGY = "/v1/internal/ui/service-topology/"
SUMMARY_KEYS = {"Name", "Datacenter", "Tags", "Nodes", "ExternalSources", "InstanceCount", "ChecksPassing",
                "ChecksWarning", "ChecksCritical", "GatewayConfig", "TransparentProxy", "ConnectNative", "Source",
                "Intention"}  # fmt: skip
DECISION_KEYS = {"Allowed", "HasPermissions", "ExternalSource", "HasExact", "DefaultAllow"}


async def _register(h: Http, name: str, *, node: str = "test-agent", status: str = "passing",
                    headers: dict[str, str] | None = None) -> None:  # fmt: skip
    body = {"Node": node, "Address": "127.0.0.1",
            "Service": {"ID": name, "Service": name, "Port": 8080, "Tags": ["v1"]},
            "Check": {"CheckID": f"{name}-chk", "Name": name, "Status": status, "ServiceID": name}}  # fmt: skip
    status_code, text, _ = await h.put("/v1/catalog/register", body, headers=headers)
    assert status_code == 200, text


async def _sidecar(h: Http, service: str, upstreams: list[dict[str, Any]], *, mode: str = "",
                   status: str = "passing", headers: dict[str, str] | None = None) -> None:  # fmt: skip
    proxy: dict[str, Any] = {"DestinationServiceName": service, "DestinationServiceID": service,
                             "Upstreams": upstreams}  # fmt: skip
    if mode:
        proxy["Mode"] = mode
    sid = f"{service}-sidecar-proxy"
    body = {"Node": "test-agent", "Address": "127.0.0.1",
            "Service": {"ID": sid, "Service": sid, "Kind": "connect-proxy", "Port": 21000, "Proxy": proxy},
            "Check": {"CheckID": f"{sid}-chk", "Name": "proxy alive", "Status": status, "ServiceID": sid}}  # fmt: skip
    code, text, _ = await h.put("/v1/catalog/register", body, headers=headers)
    assert code == 200, text


def _up(name: str) -> dict[str, Any]:
    return {"DestinationName": name, "LocalBindPort": 9191}


async def _intention(h: Http, source: str, destination: str, body: dict[str, Any]) -> None:
    code, text, _ = await h.put(f"/v1/connect/intentions/exact?source={source}&destination={destination}",
                                {"SourceName": source, "DestinationName": destination, **body})  # fmt: skip
    assert code == 200, text


async def _topology(h: Http, name: str, kind: str = "", **kw: Any) -> tuple[int, Any, Any]:
    return await h.get(f"{TOPOLOGY}{name}?kind={kind}", **kw)


def _by_name(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s["Name"]: s for s in items}


async def test_registered_upstreams_and_downstreams_in_consuls_shape(http: Http) -> None:
    for name in ("web", "api", "db"):
        await _register(http, name)
    await _sidecar(http, "web", [_up("db"), {"DestinationType": "prepared_query", "DestinationName": "q"}])
    await _sidecar(http, "api", [_up("web")], status="critical")
    await _intention(http, "web", "db", {"Action": "allow"})
    await _intention(http, "api", "web", {"Action": "deny"})
    status, body, headers = await _topology(http, "web")
    assert status == 200 and int(headers["X-Consul-Index"]) > 0
    assert set(body) == {"Protocol", "TransparentProxy", "Upstreams", "Downstreams", "FilteredByACLs"}
    assert (body["Protocol"], body["TransparentProxy"], body["FilteredByACLs"]) == ("tcp", False, False)
    # The prepared-query upstream is not a service; the sidecars themselves are never listed.
    [db] = body["Upstreams"]
    assert set(db) == SUMMARY_KEYS and "Kind" not in db  # a typical service: Kind omitted, as Go's omitempty
    assert (db["Name"], db["Source"], db["InstanceCount"], db["Nodes"], db["Datacenter"]) == (
        "db", "proxy-registration", 1, ["test-agent"], "dc1")
    assert db["Tags"] == ["v1"] and db["ChecksPassing"] == 2  # its own check and the node's serfHealth
    assert db["Intention"] == {"Allowed": True, "HasPermissions": False, "ExternalSource": "", "HasExact": True,
                               "DefaultAllow": True}  # fmt: skip
    [api] = body["Downstreams"]
    assert (api["Name"], api["Source"], api["InstanceCount"]) == ("api", "proxy-registration", 1)
    # The sidecar's critical check counts towards the service it fronts (Consul's summarizeServices).
    assert (api["ChecksPassing"], api["ChecksCritical"]) == (2, 1)
    assert api["Intention"]["Allowed"] is False and api["Intention"]["HasExact"] is True
    # From db's side web is the downstream; db has no upstreams.
    _, body, _ = await _topology(http, "db")
    assert [(s["Name"], s["Source"], s["Intention"]["Allowed"]) for s in body["Downstreams"]] == [
        ("web", "proxy-registration", True)]
    assert body["Upstreams"] == []


async def test_protocol_l7_and_wildcard_decisions(http: Http) -> None:
    for name in ("web", "db"):
        await _register(http, name)
    await _sidecar(http, "web", [_up("db")])
    for name in ("web", "db"):
        code, text, _ = await http.put("/v1/config", {"Kind": "service-defaults", "Name": name, "Protocol": "http"})
        assert code == 200, text
    await _intention(http, "web", "db", {"Permissions": [{"Action": "allow", "HTTP": {"PathPrefix": "/v1"}}]})
    _, body, _ = await _topology(http, "web")
    assert body["Protocol"] == "http"
    # An L7 intention decides the edge: not allowed at L4, HasPermissions says why.
    assert body["Upstreams"][0]["Intention"] == {"Allowed": False, "HasPermissions": True, "ExternalSource": "",
                                                 "HasExact": True, "DefaultAllow": True}  # fmt: skip
    code, _, _ = await http.delete("/v1/connect/intentions/exact?source=web&destination=db")
    assert code == 200
    await _intention(http, "*", "db", {"Action": "deny"})
    _, body, _ = await _topology(http, "web")
    assert body["Upstreams"][0]["Intention"] == {"Allowed": False, "HasPermissions": False, "ExternalSource": "",
                                                 "HasExact": False, "DefaultAllow": True}  # fmt: skip


async def test_transparent_proxies_add_upstreams_from_intentions(http: Http) -> None:
    for name in ("web", "api", "db", "billing"):
        await _register(http, name)
    await _sidecar(http, "web", [_up("db")], mode="transparent")
    await _intention(http, "web", "billing", {"Action": "deny"})
    await _intention(http, "web", "api", {"Action": "allow"})
    _, body, _ = await _topology(http, "web")
    assert body["TransparentProxy"] is True
    ups = _by_name(body["Upstreams"])
    # db from the registration; api by its intention; nothing to billing (denied); neither consul nor web.
    assert {n: s["Source"] for n, s in ups.items()} == {"db": "proxy-registration", "api": "specific-intention"}
    # With the default allow (ACLs off) every other service is reachable by default: they are listed too
    # once the denying intention is gone, as "default-allow".
    await http.delete("/v1/connect/intentions/exact?source=web&destination=billing")
    _, body, _ = await _topology(http, "web")
    ups = _by_name(body["Upstreams"])
    assert ups["billing"]["Source"] == "default-allow"
    assert ups["billing"]["Intention"] == {"Allowed": True, "HasPermissions": False, "ExternalSource": "",
                                           "HasExact": False, "DefaultAllow": True}  # fmt: skip
    # A downstream found through intentions is kept only when it can dial without a registered upstream
    # (a transparent proxy): api's plain sidecar does not make it one.
    _, body, _ = await _topology(http, "db")
    assert [s["Name"] for s in body["Downstreams"]] == ["web"]
    await _sidecar(http, "api", [], mode="transparent")
    _, body, _ = await _topology(http, "db")
    assert {s["Name"]: s["Source"] for s in body["Downstreams"]} == {"web": "proxy-registration",
                                                                     "api": "default-allow"}  # fmt: skip


async def test_routing_config_upstreams_and_discovery_chain_downstreams(http: Http) -> None:
    for name in ("web", "db"):
        await _register(http, name)
    await _sidecar(http, "web", [_up("virtual")])
    code, text, _ = await http.put("/v1/config", {"Kind": "service-resolver", "Name": "virtual",
                                                  "Redirect": {"Service": "db"}})  # fmt: skip
    assert code == 200, text
    _, body, _ = await _topology(http, "web")
    [virtual] = body["Upstreams"]
    # No instance, but a resolver: listed bare, as Consul's UIServiceTopology builds it.
    assert (virtual["Name"], virtual["Source"], virtual["InstanceCount"], virtual["Tags"]) == (
        "virtual", "routing-config", 0, None)
    assert virtual["Intention"]["Allowed"] is True
    # web reaches db through virtual's chain: db's downstreams include web.
    _, body, _ = await _topology(http, "db")
    assert [(s["Name"], s["Source"]) for s in body["Downstreams"]] == [("web", "proxy-registration")]


async def test_consuls_errors(http: Http) -> None:
    status, text, _ = await http.get(f"{TOPOLOGY}web")
    assert (status, text.strip()) == (400, "Missing service kind")
    status, text, _ = await http.get(f"{TOPOLOGY}web?kind=mesh-gateway")
    assert (status, text.strip()) == (400, 'Unsupported service kind "mesh-gateway"')
    status, text, _ = await http.get(TOPOLOGY)
    assert (status, text.strip()) == (400, "Missing service name")
    status, body, _ = await http.get(f"{TOPOLOGY}nothing?kind=ingress-gateway")
    assert status == 200 and (body["Protocol"], body["Upstreams"], body["Downstreams"]) == ("", [], [])


async def test_acls_filter_what_the_token_may_not_read(acl_http: Http) -> None:  # noqa: F811 - the fixture
    h, root = acl_http, {"X-Consul-Token": ROOT}
    for name in ("web", "db"):
        await _register(h, name, headers=root)
    await _sidecar(h, "web", [_up("db")], headers=root)
    code, text, _ = await h.put("/v1/acl/policy", {"Name": "web-only", "Rules": (
        'service "web" { policy = "read" } service "web-sidecar-proxy" { policy = "read" } '
        'node_prefix "" { policy = "read" }')}, headers=root)  # fmt: skip
    assert code == 200, text
    code, token, _ = await h.put("/v1/acl/token", {"Policies": [{"Name": "web-only"}]}, headers=root)
    assert code == 200, token
    mine = {"X-Consul-Token": token["SecretID"]}
    status, body, _ = await _topology(h, "web", headers=root)
    assert status == 200 and [s["Name"] for s in body["Upstreams"]] == ["db"] and body["FilteredByACLs"] is False
    # With ACLs on and the default deny, intentions default to deny.
    assert body["Upstreams"][0]["Intention"]["DefaultAllow"] is False
    status, body, headers = await _topology(h, "web", headers=mine)
    assert status == 200 and body["Upstreams"] == [] and body["FilteredByACLs"] is True
    assert headers["X-Consul-Results-Filtered-By-ACLs"] == "true"
    status, text, _ = await _topology(h, "db", headers=mine)
    assert status == 403 and "lacks permission 'service:read' on \"db\"" in text
