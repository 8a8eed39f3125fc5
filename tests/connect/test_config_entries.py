"""The service mesh config entries and the discovery chain, over HTTP on one real dev agent, through py-consul
where it has the call (``consul.config``, ``consul.discovery_chain``) and raw HTTP for status codes and texts.

Every kind is written, read, listed, CAS-written and deleted; validation answers Consul's texts (with a 400
where Consul answers 500); the store refuses writes that would break a discovery chain (a router left on a
tcp service, a redirect loop); /v1/discovery-chain answers Consul's compiled shape and blocks."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import consul
import pytest

from registry.testing import RunningAgent, dev_agent


@pytest.fixture(scope="module")
def running() -> Iterator[RunningAgent]:
    with dev_agent() as running:
        yield running


@pytest.fixture
def c(running: RunningAgent) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=running.http_port)


def call(running: RunningAgent, method: str, path: str, body: Any = None) -> tuple[int, Any, dict[str, str]]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(f"http://{running.http_addr}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw, status, headers = resp.read(), resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        raw, status, headers = exc.read(), exc.code, dict(exc.headers)
    ctype = headers.get("Content-Type", "")
    return status, json.loads(raw) if ctype.startswith("application/json") and raw else raw.decode(), headers


def put(running: RunningAgent, entry: dict[str, Any]) -> tuple[int, Any]:
    status, body, _ = call(running, "PUT", "/v1/config", entry)
    return status, body


def refused(running: RunningAgent, entry: dict[str, Any]) -> str:
    status, body = put(running, entry)
    assert status == 400, (status, body)
    return body


def strip_index(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k not in ("CreateIndex", "ModifyIndex")}


# ------------------------------------------------------------------------------------- every kind


def test_service_defaults_write_read_list_cas_delete(c: consul.Consul, running: RunningAgent) -> None:
    assert c.config.set("service-defaults", "sd-web", {
        "protocol": "HTTP", "MaxInboundConnections": "100", "local_connect_timeout_ms": 500,
        "LocalRequestTimeoutMs": 3000,
        "UpstreamConfig": {"Defaults": {"ConnectTimeoutMs": 2000, "Limits": {"MaxConnections": 10,
                                        "MaxPendingRequests": 0, "max_concurrent_requests": 5},
                                        "PassiveHealthCheck": {"Interval": "10s", "MaxFailures": 3,
                                                               "EnforcingConsecutive5xx": 100,
                                                               "MaxEjectionPercent": 50, "BaseEjectionTime": "30s"}},
                           "Overrides": [{"Name": "db", "Protocol": "TCP", "ConnectTimeoutMs": 100}]},
    }) is True  # fmt: skip
    entry = c.config.get("service-defaults", "sd-web")
    assert entry["CreateIndex"] == entry["ModifyIndex"] > 0
    assert strip_index(entry) == {
        "Kind": "service-defaults", "Name": "sd-web", "Protocol": "http", "TransparentProxy": {}, "MeshGateway": {},
        "Expose": {},
        "UpstreamConfig": {
            "Overrides": [{"Name": "db", "Protocol": "tcp", "ConnectTimeoutMs": 100, "MeshGateway": {}}],
            "Defaults": {"ConnectTimeoutMs": 2000,
                         "Limits": {"MaxConnections": 10, "MaxPendingRequests": 0, "MaxConcurrentRequests": 5},
                         "PassiveHealthCheck": {"Interval": 10_000_000_000, "MaxFailures": 3,
                                                "EnforcingConsecutive5xx": 100, "MaxEjectionPercent": 50,
                                                "BaseEjectionTime": 30_000_000_000},
                         "MeshGateway": {}}},
        "MaxInboundConnections": 100, "LocalConnectTimeoutMs": 500, "LocalRequestTimeoutMs": 3000,
    }  # fmt: skip
    assert "sd-web" in [e["Name"] for e in c.config.list("service-defaults")]
    # CAS: a stale index does not write, the current one does; 0 only creates.
    assert c.config.set("service-defaults", "sd-web", {"Protocol": "grpc"}, cas=entry["ModifyIndex"] - 1) is False
    assert c.config.set("service-defaults", "sd-web", {"Protocol": "grpc"}, cas=0) is False
    assert c.config.set("service-defaults", "sd-web", {"Protocol": "grpc"}, cas=entry["ModifyIndex"]) is True
    again = c.config.get("service-defaults", "sd-web")
    assert again["Protocol"] == "grpc" and again["CreateIndex"] == entry["CreateIndex"] < again["ModifyIndex"]
    assert c.config.delete("service-defaults", "sd-web", cas=entry["ModifyIndex"]) is False
    assert c.config.delete("service-defaults", "sd-web", cas=again["ModifyIndex"]) is True
    status, text, _ = call(running, "GET", "/v1/config/service-defaults/sd-web")
    assert (status, text) == (404, 'Config entry not found for "service-defaults" / "sd-web"')
    assert c.config.set("service-defaults", "sd-new", {}, cas=0) is True
    status, body, _ = call(running, "DELETE", "/v1/config/service-defaults/sd-new")
    assert (status, body) == (200, {})


def test_resolver_splitter_router_shapes(c: consul.Consul) -> None:
    assert c.config.set("service-defaults", "shop", {"Protocol": "http"})
    assert c.config.set("service-resolver", "shop", {
        "default_subset": "v1", "connect_timeout": "15000ms", "RequestTimeout": 2_000_000_000,
        "subsets": [{"v1": [{"filter": "Service.Meta.version == v1"}], "v2": {"Filter": "Service.Meta.version == v2",
                                                                           "only_passing": True}}],
        "LoadBalancer": {"Policy": "ring_hash", "RingHashConfig": {"minimum_ring_size": 1024},
                         "hash_policies": [{"field": "header", "field_value": "x-user"}]},
        "Meta": {"team": "a"},
    })  # fmt: skip
    assert strip_index(c.config.get("service-resolver", "shop")) == {
        "ConnectTimeout": "15s", "RequestTimeout": "2s", "Kind": "service-resolver", "Name": "shop",
        "DefaultSubset": "v1",
        "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"},
                    "v2": {"Filter": "Service.Meta.version == v2", "OnlyPassing": True}},
        "LoadBalancer": {"Policy": "ring_hash", "RingHashConfig": {"MinimumRingSize": 1024},
                         "HashPolicies": [{"Field": "header", "FieldValue": "x-user"}]},
        "Meta": {"team": "a"},
    } | {"ConnectTimeout": "15s"}  # fmt: skip
    assert c.config.set("service-splitter", "shop", {"Splits": [
        {"Weight": 33.333, "ServiceSubset": "v1", "RequestHeaders": {"Set": {"x-split": "v1"}}},
        {"Weight": "66.667", "service_subset": "v2"}]})  # fmt: skip
    splitter = c.config.get("service-splitter", "shop")
    assert [s["Weight"] for s in splitter["Splits"]] == [33.33, 66.67]
    assert splitter["Splits"][0]["RequestHeaders"] == {"Set": {"x-split": "v1"}}
    assert c.config.set("service-router", "shop", {"Routes": [
        {"Match": {"HTTP": {"PathPrefix": "/admin", "Methods": ["get", "post"],
                            "Header": [{"Name": "x-debug", "Exact": "1"}], "query_param": [{"Name": "q", "Present": True}]}},
         "Destination": {"ServiceSubset": "v2", "PrefixRewrite": "/", "RequestTimeout": "5s", "NumRetries": 3,
                         "RetryOnConnectFailure": True, "RetryOnStatusCodes": [503], "RetryOn": ["5xx"]}}]})  # fmt: skip
    route = c.config.get("service-router", "shop")["Routes"][0]
    assert route == {
        "Match": {"HTTP": {"PathPrefix": "/admin", "Header": [{"Name": "x-debug", "Exact": "1"}],
                           "QueryParam": [{"Name": "q", "Present": True}], "Methods": ["GET", "POST"]}},
        "Destination": {"ServiceSubset": "v2", "PrefixRewrite": "/", "RequestTimeout": "5s", "NumRetries": 3,
                        "RetryOnConnectFailure": True, "RetryOn": ["5xx"], "RetryOnStatusCodes": [503]},
    }  # fmt: skip
    for kind in ("service-router", "service-splitter", "service-resolver", "service-defaults"):
        assert c.config.delete(kind, "shop") is True


def test_blocking_read_wakes_on_a_write(c: consul.Consul, running: RunningAgent) -> None:
    assert c.config.set("service-defaults", "blk", {"Protocol": "tcp"})
    _, _, headers = call(running, "GET", "/v1/config/service-defaults/blk")
    index = int(headers["X-Consul-Index"])
    got: dict[str, Any] = {}

    def wait() -> None:
        got["r"] = call(running, "GET", f"/v1/config/service-defaults/blk?index={index}&wait=10s")

    t = threading.Thread(target=wait)
    start = time.monotonic()
    t.start()
    time.sleep(0.3)
    assert "r" not in got  # still blocked
    assert c.config.set("service-defaults", "blk", {"Protocol": "http"})
    t.join(10)
    status, body, headers = got["r"]
    assert status == 200 and body["Protocol"] == "http" and int(headers["X-Consul-Index"]) > index
    assert time.monotonic() - start < 5
    c.config.delete("service-defaults", "blk")


# ------------------------------------------------------------------------------------- validation texts


def test_entry_validation_texts(running: RunningAgent) -> None:
    def text(entry: dict[str, Any]) -> str:
        return refused(running, entry)

    assert text({"Kind": "service-splitter", "Name": "v", "Splits": [{"Weight": 90}, {"Weight": 5, "Service": "x"}]}) \
        == "the sum of all split weights must be 100, not 95.000000"
    assert text({"Kind": "service-splitter", "Name": "v", "Splits": []}) == "no splits configured"
    assert text({"Kind": "service-resolver", "Name": "v", "Subsets": {"V1": {}}}) == (
        'Subset "V1" is invalid: must be 63 characters or fewer, begin or end with lower case alphanumeric '
        "characters, and contain lower case alphanumeric characters or '-' in between")
    assert text({"Kind": "service-resolver", "Name": "v", "Subsets": {"v1": {"Filter": "Service.Meta.x =="}}}
                ).startswith('Filter for subset "v1" is not a valid expression: ')  # fmt: skip
    assert text({"Kind": "service-resolver", "Name": "v", "DefaultSubset": "v9"}) == 'DefaultSubset "v9" is not a valid subset'
    assert text({"Kind": "service-resolver", "Name": "v", "Redirect": {"Service": "w"},
                 "Failover": {"*": {"Datacenters": ["dc2"]}}}) == "Redirect and Failover cannot both be set"
    assert text({"Kind": "service-resolver", "Name": "v", "Redirect": {}}) == "Redirect is empty"
    assert text({"Kind": "service-resolver", "Name": "v", "Failover": {"v2": {"Service": "w"}}}) \
        == 'Bad Failover["v2"]: not a valid subset subset'
    assert text({"Kind": "service-resolver", "Name": "v", "Failover": {"*": {}}}) \
        == 'Bad Failover["*"]: one of Service, ServiceSubset, Namespace, Targets, or Datacenters is required'
    assert text({"Kind": "service-resolver", "Name": "v", "LoadBalancer": {"Policy": "fastest"}}) \
        == 'Bad LoadBalancer policy: "fastest" is not supported'
    assert text({"Kind": "service-router", "Name": "v", "Routes": [{"Match": {"HTTP": {"PathRegex": "/a(["}}}]}
                ).startswith("Route[0] PathRegex is not a valid regular expression: ")  # fmt: skip
    assert text({"Kind": "service-router", "Name": "v", "Routes": [{"Match": {"HTTP": {"PathExact": "a"}}}]}) \
        == "Route[0] PathExact doesn't start with '/': \"a\""
    assert text({"Kind": "service-router", "Name": "v", "Routes": [
        {"Match": {"HTTP": {"PathExact": "/a", "PathPrefix": "/b"}}}]}) \
        == "Route[0] should only contain at most one of PathExact, PathPrefix, or PathRegex"
    assert text({"Kind": "service-router", "Name": "v", "Routes": [{"Match": {"HTTP": {"Methods": ["FETCH"]}}}]}) \
        == 'Route[0] Methods contains an invalid method "FETCH"'
    assert text({"Kind": "service-router", "Name": "v", "Routes": [{"Destination": {"PrefixRewrite": "/"}}]}) \
        == "Route[0] cannot make use of PrefixRewrite without configuring either PathExact or PathPrefix"
    assert text({"Kind": "service-router", "Name": "v", "Routes": [{"Destination": {"RetryOn": ["sometimes"]}}]}) \
        == 'Route[0] contains an invalid retry condition: "sometimes"'
    assert text({"Kind": "proxy-defaults", "Name": "local"}) == 'invalid name ("local"), only "global" is supported'
    assert text({"Kind": "service-defaults", "Name": "v", "UpstreamConfig": {
        "Defaults": {"PassiveHealthCheck": {"MaxEjectionPercent": 101}}}}) == (
        "1 error occurred:\n\t* error in upstream defaults: passive health check max_ejection_percent must be "
        "a percentage between 0 and 100\n\n")  # fmt: skip
    # Keys that name no field are refused, all of them, with their path.
    assert text({"Kind": "service-router", "Name": "v", "Routes": [{"Destination": {"Servic": "w"}}], "Extra": 1}) \
        == '2 errors occurred:\n\t* invalid config key "Extra"\n\t* invalid config key "Routes[0].Destination.Servic"\n\n'
    assert text({"Kind": "service-defaults", "Name": "v", "ExternalSNI": "x.example"}) == (
        '1 error occurred:\n\t* invalid config key "ExternalSNI": not supported by Proconsul\n\n')
    status, body = put(running, {"Name": "v"})
    assert (status, body) == (400, "Request decoding failed: Payload does not contain a Kind key")
    status, body = put(running, {"Kind": "service-splitter", "Name": "v", "Splits": [{"Weight": "heavy"}]})
    assert status == 400 and "cannot parse 'heavy'" in body or "heavy" in body


def test_graph_validation_refuses_what_would_not_compile(c: consul.Consul, running: RunningAgent) -> None:
    # A splitter or router on a service whose protocol is tcp (no service-defaults: the default).
    assert refused(running, {"Kind": "service-splitter", "Name": "tcpsvc", "Splits": [{"Weight": 100}]}) == (
        'discovery chain "tcpsvc" uses a protocol "tcp" that does not permit advanced routing or splitting behavior')
    assert refused(running, {"Kind": "service-router", "Name": "tcpsvc", "Routes": []}) == (
        'discovery chain "tcpsvc" uses a protocol "tcp" that does not permit advanced routing or splitting behavior')
    # Once http, the router is fine; turning the service back to tcp is then refused, as is deleting its
    # service-defaults.
    assert c.config.set("service-defaults", "api", {"Protocol": "http"})
    assert c.config.set("service-resolver", "api", {"Subsets": {"v1": {"Filter": "Service.Meta.version == v1"}}})
    assert c.config.set("service-router", "api", {"Routes": [{"Match": {"HTTP": {"PathPrefix": "/admin"}},
                                                             "Destination": {"ServiceSubset": "v1"}}]})  # fmt: skip
    assert refused(running, {"Kind": "service-defaults", "Name": "api", "Protocol": "tcp"}) == (
        'discovery chain "api" uses a protocol "tcp" that does not permit advanced routing or splitting behavior')
    status, text, _ = call(running, "DELETE", "/v1/config/service-defaults/api")
    assert status == 400 and "does not permit advanced routing or splitting behavior" in text
    # The router's subset must exist: removing it from the resolver is refused.
    assert refused(running, {"Kind": "service-resolver", "Name": "api"}) == (
        'service "api" does not have a subset named "v1"')
    # A route to another service needs the same protocol on both.
    assert refused(running, {"Kind": "service-router", "Name": "api", "Routes": [
        {"Destination": {"Service": "billing"}}]}) == (
        'discovery chain "api" uses inconsistent protocols; service "billing" has "tcp" which is not "http"')
    # A redirect loop.
    assert c.config.set("service-resolver", "loop-a", {"Redirect": {"Service": "loop-b"}})
    # Every chain the write touches is checked (loop-a's first: it names loop-b).
    assert refused(running, {"Kind": "service-resolver", "Name": "loop-b", "Redirect": {"Service": "loop-a"}}) == (
        "detected circular resolver redirect: [loop-a.default.default.dc1 -> loop-b.default.default.dc1 -> "
        "loop-a.default.default.dc1]")
    for kind, name in (("service-router", "api"), ("service-resolver", "api"), ("service-defaults", "api"),
                       ("service-resolver", "loop-a")):  # fmt: skip
        assert c.config.delete(kind, name) is True


# ------------------------------------------------------------------------------------- the discovery chain


def test_default_chain(c: consul.Consul, running: RunningAgent) -> None:
    _, roots, _ = call(running, "GET", "/v1/connect/ca/roots")
    td = roots["TrustDomain"]
    chain = c.discovery_chain.get("plain")["Chain"]
    assert chain == {
        "ServiceName": "plain", "Namespace": "default", "Partition": "default", "Datacenter": "dc1", "Default": True,
        "Protocol": "tcp", "StartNode": "resolver:plain.default.default.dc1",
        "Nodes": {"resolver:plain.default.default.dc1": {
            "Type": "resolver", "Name": "plain.default.default.dc1",
            "Resolver": {"ConnectTimeout": "5s", "Default": True, "Target": "plain.default.default.dc1"}}},
        "Targets": {"plain.default.default.dc1": {
            "ConnectTimeout": "5s", "ID": "plain.default.default.dc1", "Service": "plain", "Namespace": "default",
            "Partition": "default", "Datacenter": "dc1", "MeshGateway": {}, "Subset": {}, "TransparentProxy": {},
            "SNI": f"plain.default.dc1.internal.{td}", "Name": f"plain.default.dc1.internal.{td}"}},
    }  # fmt: skip


def test_canary_chain_router_splitter_resolver(c: consul.Consul, running: RunningAgent) -> None:
    assert c.config.set("service-defaults", "web", {"Protocol": "http"})
    assert c.config.set("service-resolver", "web", {"DefaultSubset": "v1", "Subsets": {
        "v1": {"Filter": "Service.Meta.version == v1"}, "v2": {"Filter": "Service.Meta.version == v2"}}})
    assert c.config.set("service-splitter", "web", {"Splits": [{"Weight": 90, "ServiceSubset": "v1"},
                                                               {"Weight": 10, "ServiceSubset": "v2"}]})  # fmt: skip
    assert c.config.set("service-router", "web", {"Routes": [{"Match": {"HTTP": {"PathPrefix": "/admin"}},
                                                             "Destination": {"ServiceSubset": "v2"}}]})  # fmt: skip
    status, body, headers = call(running, "GET", "/v1/discovery-chain/web?compile-dc=dc2")
    assert status == 200
    chain = body["Chain"]
    assert chain["Datacenter"] == "dc2" and chain["Protocol"] == "http" and "Default" not in chain
    assert chain["StartNode"] == "router:web.default.default"
    router = chain["Nodes"]["router:web.default.default"]
    assert [r["NextNode"] for r in router["Routes"]] == ["resolver:v2.web.default.default.dc2",
                                                         "splitter:web.default.default"]
    assert router["Routes"][1]["Definition"] == {"Match": {"HTTP": {"PathPrefix": "/"}}, "Destination": {
        "Service": "web", "Namespace": "default", "Partition": "default"}}
    splitter = chain["Nodes"]["splitter:web.default.default"]
    assert [(s["Weight"], s["NextNode"]) for s in splitter["Splits"]] == [
        (90, "resolver:v1.web.default.default.dc2"), (10, "resolver:v2.web.default.default.dc2")]
    assert sorted(chain["Targets"]) == ["v1.web.default.default.dc2", "v2.web.default.default.dc2"]
    assert chain["Targets"]["v2.web.default.default.dc2"]["Subset"] == {"Filter": "Service.Meta.version == v2"}
    # Overrides: tcp drops the router and splitter; the connect timeout and gateway mode apply everywhere.
    status, body, _ = call(running, "POST", "/v1/discovery-chain/web", {
        "OverrideProtocol": "tcp", "override_connect_timeout": "7s", "OverrideMeshGateway": {"Mode": "local"}})
    chain = body["Chain"]
    assert status == 200 and chain["Protocol"] == "tcp" and len(chain["CustomizationHash"]) == 8
    assert chain["StartNode"] == "resolver:v1.web.default.default.dc1" and list(chain["Nodes"]) == [chain["StartNode"]]
    target = chain["Targets"]["v1.web.default.default.dc1"]
    assert target["ConnectTimeout"] == "7s" and target["MeshGateway"] == {"Mode": "local"}
    status, text, _ = call(running, "POST", "/v1/discovery-chain/web", {"OverrideMeshGateway": {"Mode": "far"}})
    assert (status, text) == (400, "Invalid OverrideMeshGateway.Mode parameter")
    # Blocking: a change to any entry of the chain wakes the reader.
    index = int(headers["X-Consul-Index"])
    got: dict[str, Any] = {}
    t = threading.Thread(target=lambda: got.update(r=call(running, "GET", f"/v1/discovery-chain/web?index={index}")))
    t.start()
    time.sleep(0.3)
    assert "r" not in got
    assert c.config.set("service-splitter", "web", {"Splits": [{"Weight": 50, "ServiceSubset": "v1"},
                                                               {"Weight": 50, "ServiceSubset": "v2"}]})  # fmt: skip
    t.join(10)
    assert [s["Weight"] for s in got["r"][1]["Chain"]["Nodes"]["splitter:web.default.default"]["Splits"]] == [50, 50]
    for kind in ("service-router", "service-splitter", "service-resolver", "service-defaults"):
        assert c.config.delete(kind, "web") is True


def test_nested_splitters_flatten_and_failover(c: consul.Consul, running: RunningAgent) -> None:
    assert c.config.set("proxy-defaults", "global", {"Config": {"protocol": "http"}})
    try:
        # A splitter naming subsets the resolver does not have yet is refused: the resolver comes first.
        assert c.config.set("service-resolver", "back", {
            "Subsets": {"b1": {"Filter": "Service.Meta.v == b1"}, "b2": {"Filter": "Service.Meta.v == b2",
                                                                      "OnlyPassing": True}},
            "Failover": {"b2": {"Datacenters": ["dc2", "dc3"]}}})  # fmt: skip
        assert c.config.set("service-splitter", "front", {"Splits": [{"Weight": 50},
                                                                     {"Weight": 50, "Service": "back"}]})
        assert c.config.set("service-splitter", "back", {"Splits": [
            {"Weight": 20, "ServiceSubset": "b1", "ResponseHeaders": {"Set": {"x-leg": "b1"}}},
            {"Weight": 80, "ServiceSubset": "b2"}]})  # fmt: skip
        chain = c.discovery_chain.get("front")["Chain"]
        splits = chain["Nodes"]["splitter:front.default.default"]["Splits"]
        assert [(s["Weight"], s["NextNode"]) for s in splits] == [
            (50, "resolver:front.default.default.dc1"), (10, "resolver:b1.back.default.default.dc1"),
            (40, "resolver:b2.back.default.default.dc1")]
        assert splits[1]["Definition"]["ResponseHeaders"] == {"Set": {"x-leg": "b1"}}
        assert "splitter:back.default.default" not in chain["Nodes"]  # flattened away
        b2 = chain["Nodes"]["resolver:b2.back.default.default.dc1"]["Resolver"]
        assert b2["Failover"] == {"Targets": ["b2.back.default.default.dc2", "b2.back.default.default.dc3"]}
        assert chain["Targets"]["b2.back.default.default.dc3"]["Subset"] == {"Filter": "Service.Meta.v == b2",
                                                                          "OnlyPassing": True}
        # The global protocol cannot go back to tcp while splitters rely on it.
        status, text = put(running, {"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "tcp"}})
        assert status == 400 and "does not permit advanced routing or splitting behavior" in text
        entry = c.config.get("proxy-defaults", "global")
        assert strip_index(entry) == {"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "http"},
                                      "TransparentProxy": {}, "MeshGateway": {}, "Expose": {}}
    finally:
        for kind, name in (("service-splitter", "front"), ("service-splitter", "back"), ("service-resolver", "back")):
            c.config.delete(kind, name)
        assert c.config.delete("proxy-defaults", "global") is True


def test_filter_on_config_lists_as_consul_supports_it(running: RunningAgent) -> None:
    """Consul's ConfigEntry.List filters service-defaults (bexpr over ServiceConfigEntry) and refuses a
    filter on any other kind: never an unfiltered answer that looks filtered."""
    for name, protocol in (("flt-a", "http"), ("flt-b", "tcp")):
        assert put(running, {"Kind": "service-defaults", "Name": name, "Protocol": protocol,
                             "MaxInboundConnections": 7 if name == "flt-a" else 0})[0] == 200  # fmt: skip
    status, body, _ = call(running, "GET", "/v1/config/service-defaults?filter=" +
                           urllib.request.quote('Protocol == "http" and Name matches "^flt-"'))  # fmt: skip
    assert status == 200 and [e["Name"] for e in body] == ["flt-a"], body
    status, body, _ = call(running, "GET", "/v1/config/service-defaults?filter=MaxInboundConnections%20%3D%3D%207")
    assert status == 200 and [e["Name"] for e in body] == ["flt-a"], body
    status, body, _ = call(running, "GET", "/v1/config/service-defaults?filter=Nope%20%3D%3D%201")
    assert status == 500 and 'Selector "Nope" is not valid' in body, body  # Consul's status for a bad filter
    for kind in ("service-router", "service-splitter", "service-resolver", "proxy-defaults"):
        status, body, _ = call(running, "GET", f"/v1/config/{kind}?filter=Name%20%3D%3D%20x")
        assert (status, body) == (400, f"filtering not supported for config entry kind={kind}"), (kind, body)
    for name in ("flt-a", "flt-b"):
        call(running, "DELETE", f"/v1/config/service-defaults/{name}")


def _l7(name: str, *perms: dict[str, Any]) -> dict[str, Any]:
    return {"Kind": "service-intentions", "Name": name, "Sources": [{"Name": "web", "Permissions": list(perms)}]}


@pytest.mark.parametrize(("http", "error"), [
    ({"PathExact": "admin"}, "Sources[0].Permissions[0].HTTP.PathExact doesn't start with '/': \"admin\""),
    ({"PathPrefix": "v1/"}, "Sources[0].Permissions[0].HTTP.PathPrefix doesn't start with '/': \"v1/\""),
    ({"PathExact": "/a", "PathRegex": "/b.*"},
     "Sources[0].Permissions[0].HTTP should only contain at most one of PathExact, PathPrefix, or PathRegex"),
    ({"Header": [{"Exact": "x"}]}, "Sources[0].Permissions[0].HTTP.Header[0] missing required Name field"),
    ({"Header": [{"Name": "x-a", "Exact": "1", "Prefix": "1"}]},
     "Sources[0].Permissions[0].HTTP.Header[0] should only contain one of Present, Exact, Prefix, Suffix, or Regex"),
    ({"Header": [{"Name": "x-a", "Invert": True}]},
     "Sources[0].Permissions[0].HTTP.Header[0] should only contain one of Present, Exact, Prefix, Suffix, or Regex"),
    ({"Methods": ["GET", "FETCH"]}, 'Sources[0].Permissions[0].HTTP.Methods contains an invalid method "FETCH"'),
    ({"Methods": ["get", "GET"]}, 'Sources[0].Permissions[0].HTTP.Methods contains "GET" more than once'),
    ({}, "Sources[0].Permissions[0].HTTP is required"),
    ({"Methods": []}, "Sources[0].Permissions[0].HTTP should not be empty"),
], ids=["exact-slash", "prefix-slash", "two-paths", "header-name", "header-two", "header-none", "method", "method-twice",
        "no-http", "empty-http"])  # fmt: skip
def test_l7_permissions_are_validated_with_consuls_texts(running: RunningAgent, http: dict[str, Any], error: str) -> None:
    """Consul's write-time checks of an intention's L7 Permissions (ServiceIntentionsConfigEntry.validate),
    through /v1/config and through PUT /v1/connect/intentions/exact, with its texts and a 400."""
    assert put(running, {"Kind": "service-defaults", "Name": "l7v", "Protocol": "http"})[0] == 200
    perm = {"Action": "deny", "HTTP": http} if http else {"Action": "deny"}
    assert refused(running, _l7("l7v", {"Action": "allow", "HTTP": {"PathPrefix": "/"}}, perm)) == \
        error.replace("Permissions[0]", "Permissions[1]")
    status, body, _ = call(running, "PUT", "/v1/connect/intentions/exact?source=web&destination=l7v",
                           {"Permissions": [perm]})  # fmt: skip
    assert (status, body) == (400, error)
    assert call(running, "GET", "/v1/config/service-intentions/l7v")[0] == 404  # nothing was written


def test_l7_permissions_need_an_action_and_methods_are_upper_cased(running: RunningAgent) -> None:
    assert put(running, {"Kind": "service-defaults", "Name": "l7m", "Protocol": "http"})[0] == 200
    assert refused(running, _l7("l7m", {"Action": "maybe", "HTTP": {"PathExact": "/"}})) == (
        "Sources[0].Permissions[0].Action must be set to 'allow' or 'deny'")
    assert put(running, _l7("l7m", {"Action": "deny", "HTTP": {"Methods": ["delete", "Put"],
                                                               "Header": [{"Name": "x-a", "Present": True}]}}))[0] == 200  # fmt: skip
    _, entry, _ = call(running, "GET", "/v1/config/service-intentions/l7m")
    assert entry["Sources"][0]["Permissions"][0]["HTTP"]["Methods"] == ["DELETE", "PUT"]


def test_l7_intentions_are_refused_on_a_service_that_is_not_http(running: RunningAgent) -> None:
    """Consul refuses an intention with Permissions on a destination whose protocol is not http, http2 or
    grpc, and a service-defaults or proxy-defaults change that would leave one there."""
    perm = {"Action": "deny", "HTTP": {"Methods": ["DELETE"]}}
    tcp_error = 'service "plaintcp" has protocol "tcp", which is incompatible with L7 intentions permissions'
    assert refused(running, _l7("plaintcp", perm)) == tcp_error
    status, body, _ = call(running, "PUT", "/v1/connect/intentions/exact?source=web&destination=plaintcp",
                           {"Permissions": [perm]})  # fmt: skip
    assert (status, body) == (400, tcp_error)
    assert put(running, {"Kind": "service-defaults", "Name": "plaintcp", "Protocol": "grpc"})[0] == 200
    assert put(running, _l7("plaintcp", perm))[0] == 200
    assert refused(running, {"Kind": "service-defaults", "Name": "plaintcp", "Protocol": "tcp"}) == tcp_error
    status, body, _ = call(running, "DELETE", "/v1/config/service-defaults/plaintcp")
    assert (status, body) == (400, tcp_error)
    # A plain allow or deny needs no particular protocol.
    assert put(running, {"Kind": "service-intentions", "Name": "plaintcp2", "Sources": [{"Name": "web", "Action": "deny"}]})[0] == 200
