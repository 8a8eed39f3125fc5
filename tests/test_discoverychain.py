"""The discovery chain compiler against Consul's documented chains (website/content/api-docs/discovery-chain.mdx,
in today's ID format with the partition) and the behaviours compile.go implements: implicit catch-all routes,
default subsets, redirects (and their loops), failover by datacenters and by targets, splitters flattened
across services, protocol overrides. Pure: entries in, chain out; no agent."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from registry.configentry import parse_entry
from registry.discoverychain import (
    ChainError,
    CompiledChain,
    Overrides,
    chain_from_api,
    compile_chain,
    read_entries,
)

TD = "47e25151-6212-ba25-8b7e-81adbbbab461.consul"


def chain(service: str, *raw: dict[str, Any], dc: str = "dc1", overrides: Overrides | None = None) -> dict[str, Any]:
    return compiled(service, *raw, dc=dc, overrides=overrides).to_api()


def compiled(service: str, *raw: dict[str, Any], dc: str = "dc1", overrides: Overrides | None = None) -> CompiledChain:
    entries = {(e["Kind"], e["Name"]): e for e in (parse_entry(r) for r in raw)}
    found = read_entries(lambda kind, name: entries.get((kind, name)), service)
    return compile_chain(service, found, datacenter=dc, trust_domain=TD, overrides=overrides)


def target(tid: str, service: str, dc: str, subset: str = "", timeout: str = "5s", **extra: Any) -> dict[str, Any]:
    sni = ".".join(([subset] if subset else []) + [service, "default", dc, "internal", TD])
    out = {"ConnectTimeout": timeout, "ID": tid, "Service": service} | ({"ServiceSubset": subset} if subset else {})
    return out | {"Namespace": "default", "Partition": "default", "Datacenter": dc, "MeshGateway": {}, "Subset": {},
                  "TransparentProxy": {}, "SNI": sni, "Name": sni} | extra


def test_multi_datacenter_failover() -> None:
    got = chain("web", {"kind": "service-resolver", "name": "web", "connect_timeout": "15s",
                        "failover": {"*": {"datacenters": ["dc3", "dc4"]}}})  # fmt: skip
    assert got["StartNode"] == "resolver:web.default.default.dc1" and got["Protocol"] == "tcp" and "Default" not in got
    assert got["Nodes"] == {"resolver:web.default.default.dc1": {
        "Type": "resolver", "Name": "web.default.default.dc1",
        "Resolver": {"ConnectTimeout": "15s", "Target": "web.default.default.dc1",
                     "Failover": {"Targets": ["web.default.default.dc3", "web.default.default.dc4"]}}}}
    assert got["Targets"] == {f"web.default.default.{dc}": target(f"web.default.default.{dc}", "web", dc, timeout="15s")
                              for dc in ("dc1", "dc3", "dc4")}  # fmt: skip


def test_datacenter_redirect_with_overrides() -> None:
    got = chain("web", {"kind": "service-resolver", "name": "web", "redirect": {"datacenter": "dc2"}},
                overrides=Overrides(protocol="grpc", connect_timeout_ns=7_000_000_000, mesh_gateway_mode="remote"))
    assert got["Protocol"] == "grpc" and len(got["CustomizationHash"]) == 8
    assert got["StartNode"] == "resolver:web.default.default.dc2"
    assert got["Nodes"]["resolver:web.default.default.dc2"]["Resolver"] == {
        "ConnectTimeout": "7s", "Target": "web.default.default.dc2"}
    assert got["Targets"] == {"web.default.default.dc2": target("web.default.default.dc2", "web", "dc2", timeout="7s",
                                                                MeshGateway={"Mode": "remote"})}  # fmt: skip


def test_version_split_for_alternate_datacenter() -> None:
    got = chain("web",
                {"kind": "service-resolver", "name": "web", "default_subset": "v1",
                 "subsets": {"v1": {"filter": "Service.Meta.version == v1"}, "v2": {"filter": "Service.Meta.version == v2"}}},
                {"kind": "service-defaults", "name": "web", "protocol": "http"},
                {"kind": "service-splitter", "name": "web",
                 "splits": [{"weight": 90, "service_subset": "v1"}, {"weight": 10, "service_subset": "v2"}]},
                dc="dc2")  # fmt: skip
    assert got["StartNode"] == "splitter:web.default.default" and got["Datacenter"] == "dc2"
    assert got["Nodes"]["splitter:web.default.default"]["Splits"] == [
        {"Definition": {"Weight": 90, "ServiceSubset": "v1"}, "Weight": 90, "NextNode": "resolver:v1.web.default.default.dc2"},
        {"Definition": {"Weight": 10, "ServiceSubset": "v2"}, "Weight": 10, "NextNode": "resolver:v2.web.default.default.dc2"},
    ]  # fmt: skip
    assert got["Targets"]["v1.web.default.default.dc2"] == target(
        "v1.web.default.default.dc2", "web", "dc2", "v1", Subset={"Filter": "Service.Meta.version == v1"})


def test_http_path_routing() -> None:
    got = chain("web",
                {"kind": "service-resolver", "name": "web", "subsets": {"canary": {"filter": "Service.Meta.flavor == canary"}}},
                {"kind": "proxy-defaults", "name": "global", "config": {"protocol": "http"}},
                {"kind": "service-router", "name": "web", "routes": [
                    {"match": {"http": {"path_prefix": "/admin"}},
                     "destination": {"service": "admin", "prefix_rewrite": "/", "request_timeout": "15s"}},
                    {"match": {"http": {"header": [{"name": "x-debug", "exact": "1"}]}},
                     "destination": {"service": "web", "service_subset": "canary", "num_retries": 5,
                                     "retry_on_connect_failure": True, "retry_on_status_codes": [401, 409]}}]})  # fmt: skip
    assert got["StartNode"] == "router:web.default.default" and got["Protocol"] == "http"
    routes = got["Nodes"]["router:web.default.default"]["Routes"]
    assert [r["NextNode"] for r in routes] == ["resolver:admin.default.default.dc1",
                                               "resolver:canary.web.default.default.dc1",
                                               "resolver:web.default.default.dc1"]
    assert routes[0]["Definition"]["Destination"] == {"Service": "admin", "PrefixRewrite": "/", "RequestTimeout": "15s"}
    assert routes[2]["Definition"] == {"Match": {"HTTP": {"PathPrefix": "/"}},
                                       "Destination": {"Service": "web", "Namespace": "default", "Partition": "default"}}
    # admin has no resolver: a default one; web has one (with a subset): not default.
    assert got["Nodes"]["resolver:admin.default.default.dc1"]["Resolver"]["Default"] is True
    assert "Default" not in got["Nodes"]["resolver:web.default.default.dc1"]["Resolver"]
    assert sorted(got["Targets"]) == ["admin.default.default.dc1", "canary.web.default.default.dc1",
                                      "web.default.default.dc1"]


def test_default_chain_and_redirect_to_a_default_resolver_is_not_default() -> None:
    plain = compiled("db")
    assert plain.default and plain.start_node == "resolver:db.default.default.dc1"
    redirected = compiled("db", {"Kind": "service-resolver", "Name": "db", "Redirect": {"Service": "pg"}})
    assert not redirected.default and redirected.start_node == "resolver:pg.default.default.dc1"
    assert list(redirected.targets) == ["pg.default.default.dc1"]


def test_redirect_lands_on_the_other_service_default_subset() -> None:
    got = compiled("db", {"Kind": "service-resolver", "Name": "db", "Redirect": {"Service": "pg"}},
                   {"Kind": "service-resolver", "Name": "pg", "DefaultSubset": "primary",
                    "Subsets": {"primary": {"Filter": "Service.Meta.role == primary", "OnlyPassing": True}}})  # fmt: skip
    assert got.start_node == "resolver:primary.pg.default.default.dc1"
    t = got.targets["primary.pg.default.default.dc1"]
    assert (t.service, t.service_subset, t.subset.filter, t.subset.only_passing) == (
        "pg", "primary", "Service.Meta.role == primary", True)


def test_failover_targets_follow_their_resolvers() -> None:
    got = compiled("api",
                   {"Kind": "service-resolver", "Name": "api", "Failover": {"*": {"Targets": [
                       {"Service": "api-backup"}, {"Datacenter": "dc2"}, {"Service": "api"}]}}},
                   {"Kind": "service-resolver", "Name": "api-backup", "Redirect": {"Service": "api-dr"}})  # fmt: skip
    resolver = got.nodes[got.start_node].resolver
    assert resolver is not None and resolver.failover is not None
    # A failover to itself is dropped; one to a redirected service lands on the redirect.
    assert resolver.failover.targets == ("api-dr.default.default.dc1", "api.default.default.dc2")
    assert set(got.targets) == {"api.default.default.dc1", "api-dr.default.default.dc1", "api.default.default.dc2"}


def test_splitters_flatten_across_services_with_weights_in_hundredths() -> None:
    got = compiled("a",
                   {"Kind": "service-defaults", "Name": "a", "Protocol": "http"},
                   {"Kind": "service-defaults", "Name": "b", "Protocol": "http"},
                   {"Kind": "service-defaults", "Name": "c", "Protocol": "http"},
                   {"Kind": "service-splitter", "Name": "a", "Splits": [{"Weight": 50}, {"Weight": 50, "Service": "b",
                    "RequestHeaders": {"Set": {"x-from": "a"}}}]},
                   {"Kind": "service-splitter", "Name": "b", "Splits": [{"Weight": 33.33},
                    {"Weight": 66.67, "Service": "c", "RequestHeaders": {"Set": {"x-to": "c"}}}]})  # fmt: skip
    splits = got.nodes["splitter:a.default.default"].splits
    assert [(s.weight, s.next_node) for s in splits] == [
        (50, "resolver:a.default.default.dc1"), (16.67, "resolver:b.default.default.dc1"),
        (33.34, "resolver:c.default.default.dc1")]
    # The parent's request header edits travel into the flattened legs (the child's win on a clash).
    assert splits[1].definition["RequestHeaders"] == {"Set": {"x-from": "a"}}
    assert splits[2].definition["RequestHeaders"] == {"Set": {"x-from": "a", "x-to": "c"}}
    assert "splitter:b.default.default" not in got.nodes


@pytest.mark.parametrize(("entries", "message"), [
    ([{"Kind": "service-splitter", "Name": "s", "Splits": [{"Weight": 100}]}],
     'discovery chain "s" uses a protocol "tcp" that does not permit advanced routing or splitting behavior'),
    ([{"Kind": "service-defaults", "Name": "s", "Protocol": "http"},
      {"Kind": "service-splitter", "Name": "s", "Splits": [{"Weight": 100, "ServiceSubset": "v9"}]}],
     'service "s" does not have a subset named "v9"'),
    ([{"Kind": "service-defaults", "Name": "s", "Protocol": "http"},
      {"Kind": "service-router", "Name": "s", "Routes": [{"Destination": {"Service": "t"}}]}],
     'discovery chain "s" uses inconsistent protocols; service "t" has "tcp" which is not "http"'),
    ([{"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "http"}},
      {"Kind": "service-splitter", "Name": "s", "Splits": [{"Weight": 100, "Service": "t"}]},
      {"Kind": "service-splitter", "Name": "t", "Splits": [{"Weight": 100, "Service": "s"}]}],
     "detected circular reference: [splitter:s.default.default -> splitter:t.default.default -> "
     "splitter:s.default.default]"),
    ([{"Kind": "service-resolver", "Name": "s", "Redirect": {"Service": "t"}},
      {"Kind": "service-resolver", "Name": "t", "Redirect": {"Service": "s"}}],
     "detected circular resolver redirect: [s.default.default.dc1 -> t.default.default.dc1 -> s.default.default.dc1]"),
])  # fmt: skip
def test_graphs_that_do_not_compile(entries: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ChainError) as exc:
        compiled("s", *entries)
    assert str(exc.value) == message


def test_tcp_override_drops_router_and_splitter() -> None:
    entries = ({"Kind": "service-defaults", "Name": "s", "Protocol": "http"},
               {"Kind": "service-splitter", "Name": "s", "Splits": [{"Weight": 100}]})  # fmt: skip
    got = compiled("s", *entries, overrides=Overrides(protocol="tcp"))
    assert got.protocol == "tcp" and got.start_node == "resolver:s.default.default.dc1" and got.customization_hash
    assert compiled("s", *entries).customization_hash == ""


def test_the_compiler_is_pure() -> None:
    """No IO, no clock: the compiler and the entries module import nothing that could do either."""
    for module in ("discoverychain", "configentry"):
        tree = ast.parse((Path(__file__).resolve().parents[1] / "registry" / f"{module}.py").read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not imported & {"asyncio", "socket", "time", "os", "aiohttp", "random"}, module


def test_the_api_form_reads_back_into_the_same_chain() -> None:
    """A sidecar that gets the chain over HTTP holds exactly the values the compiler made."""
    built = compiled("web",
                     {"Kind": "service-defaults", "Name": "web", "Protocol": "http", "Meta": {"team": "a"}},
                     {"Kind": "service-resolver", "Name": "web", "ConnectTimeout": "3s", "RequestTimeout": "9s",
                      "Subsets": {"v1": {"Filter": "Service.Meta.version == v1", "OnlyPassing": True}, "v2": {}},
                      "Failover": {"v1": {"Datacenters": ["dc2"], "Policy": {"Mode": "default"}}},
                      "LoadBalancer": {"Policy": "maglev", "HashPolicies": [{"SourceIP": True}]}},
                     {"Kind": "service-splitter", "Name": "web", "Splits": [{"Weight": 90, "ServiceSubset": "v1"},
                                                                            {"Weight": 10, "ServiceSubset": "v2"}]},
                     {"Kind": "service-router", "Name": "web", "Routes": [
                         {"Match": {"HTTP": {"PathExact": "/x"}}, "Destination": {"ServiceSubset": "v2"}}]},
                     overrides=Overrides(mesh_gateway_mode="local"))  # fmt: skip
    assert chain_from_api(built.to_api()) == built
    with pytest.raises(ChainError, match="StartNode"):
        chain_from_api(built.to_api() | {"StartNode": "router:nope"})
    with pytest.raises(ChainError, match="not a compiled discovery chain"):
        chain_from_api({"Nodes": {}})
