"""Per-request routing (connect_proxy.http.routing) over chains compiled from Consul's documented
examples (website/content/docs/connect/config-entries/service-router.mdx, service-splitter.mdx,
service-resolver.mdx): a 90/10 canary, ``/admin`` to a subset, header/query/method matches, prefix
rewrites, retries, timeouts and header edits. Pure: entries in, decisions out."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from connect_proxy.http.routing import (
    DEFAULT_ROUTE_TIMEOUT,
    HeaderEdits,
    Request,
    RetryPolicy,
    Router,
    apply_edits,
)
from registry.configentry import parse_entry
from registry.discoverychain import compile_chain, read_entries

TD = "47e25151-6212-ba25-8b7e-81adbbbab461.consul"
DEFAULTS_HTTP = {"Kind": "service-defaults", "Name": "api", "Protocol": "http"}
RESOLVER = {"Kind": "service-resolver", "Name": "api", "DefaultSubset": "v1",
            "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"}, "v2": {"Filter": "Service.Meta.version == v2"}}}  # fmt: skip
CANARY = {"Kind": "service-splitter", "Name": "api", "Splits": [
    {"Weight": 90, "ServiceSubset": "v1"},
    {"Weight": 10, "ServiceSubset": "v2", "RequestHeaders": {"Set": {"x-canary": "yes"}},
     "ResponseHeaders": {"Add": {"x-served-by": "v2"}}}]}  # fmt: skip
V1, V2 = "v1.api.default.default.dc1", "v2.api.default.default.dc1"


def router(*raw: dict[str, Any]) -> Router:
    entries = {(e["Kind"], e["Name"]): e for e in (parse_entry(r) for r in raw)}
    found = read_entries(lambda kind, name: entries.get((kind, name)), "api")
    return Router(compile_chain("api", found, datacenter="dc1", trust_domain=TD))


def req(path: str = "/", method: str = "GET", **headers: str) -> Request:
    return Request(method, path, {k.replace("_", "-").lower(): v for k, v in headers.items()})


def test_canary_90_10_over_10000_draws_lands_within_one_point() -> None:
    r = router(DEFAULTS_HTTP, RESOLVER, CANARY)
    rng = random.Random(7)
    hits = Counter(r.route(req(), rng.random() * 100).targets[0] for _ in range(10_000))  # type: ignore[union-attr]
    assert abs(hits[V1] / 100 - 90) <= 1 and abs(hits[V2] / 100 - 10) <= 1, hits


def test_split_draw_is_read_at_the_weights_hundredth_precision() -> None:
    r = router(DEFAULTS_HTTP, RESOLVER, {**CANARY, "Splits": [{"Weight": 33.33, "ServiceSubset": "v1"},
                                                               {"Weight": 66.67, "ServiceSubset": "v2"}]})  # fmt: skip
    assert r.route(req(), 33.329).targets[0] == V1  # type: ignore[union-attr]
    assert r.route(req(), 33.33).targets[0] == V2  # type: ignore[union-attr]
    assert r.route(req(), 99.999).targets[0] == V2  # type: ignore[union-attr]


def test_split_header_edits_travel_with_the_chosen_leg() -> None:
    r = router(DEFAULTS_HTTP, RESOLVER, CANARY)
    to_v2 = r.route(req(), 95.0)
    assert to_v2 is not None and to_v2.targets == (V2,)
    assert apply_edits([("X-Canary", "no"), ("a", "1")], to_v2.request_edits) == [("a", "1"), ("x-canary", "yes")]
    assert apply_edits([], to_v2.response_edits) == [("x-served-by", "v2")]
    to_v1 = r.route(req(), 5.0)
    assert to_v1 is not None and to_v1.request_edits == () and to_v1.response_edits == ()


ADMIN_ROUTER = {"Kind": "service-router", "Name": "api", "Routes": [
    {"Match": {"HTTP": {"PathPrefix": "/admin"}},
     "Destination": {"ServiceSubset": "v2", "PrefixRewrite": "/", "RequestTimeout": "2s", "NumRetries": 3,
                     "RetryOnConnectFailure": True, "RetryOnStatusCodes": [503], "RetryOn": ["reset"],
                     "RequestHeaders": {"Set": {"x-route": "admin"}, "Remove": ["x-debug"]}}},
    {"Match": {"HTTP": {"PathExact": "/healthz", "Methods": ["GET", "HEAD"]}},
     "Destination": {"ServiceSubset": "v1", "PrefixRewrite": "/status"}},
    {"Match": {"HTTP": {"Header": [{"Name": "x-debug", "Exact": "1"}, {"Name": "x-internal", "Present": True,
                                                                       "Invert": True}]}},
     "Destination": {"ServiceSubset": "v2"}},
    {"Match": {"HTTP": {"QueryParam": [{"Name": "canary", "Exact": "true"}]}},
     "Destination": {"ServiceSubset": "v2"}},
    {"Match": {"HTTP": {"PathRegex": "/users/[0-9]+", "Header": [{"Name": "user-agent", "Regex": ".*curl.*"}]}},
     "Destination": {"ServiceSubset": "v2"}},
]}  # fmt: skip


def test_admin_goes_to_v2_with_its_prefix_rewritten_and_its_retry_policy() -> None:
    r = router(DEFAULTS_HTTP, RESOLVER, CANARY, ADMIN_ROUTER)
    got = r.route(req("/admin/users?x=1"), 1.0)
    assert got is not None and got.targets == (V2,) and got.route_index == 0
    assert got.path == "//users?x=1"  # Envoy swaps exactly the matched prefix
    assert got.timeout == 2.0
    assert got.retry == RetryPolicy(3, frozenset({"reset", "connect-failure", "retriable-status-codes"}),
                                    frozenset({503}))  # fmt: skip
    assert apply_edits([("X-Debug", "1")], got.request_edits) == [("x-route", "admin")]


def test_everything_else_takes_the_implicit_catch_all_through_the_splitter() -> None:
    r = router(DEFAULTS_HTTP, RESOLVER, CANARY, ADMIN_ROUTER)
    got = r.route(req("/other"), 50.0)
    assert got is not None and got.targets == (V1,) and got.route_index == 5 and got.retry is None
    assert got.timeout == DEFAULT_ROUTE_TIMEOUT and got.path == "/other"


@pytest.mark.parametrize(("request_", "index"), [
    (req("/healthz"), 1),
    (req("/healthz", "HEAD"), 1),
    (req("/healthz", "POST"), 5),  # method not listed
    (req("/healthz?verbose=1"), 1),  # PathExact ignores the query string
    (req("/healthz/x"), 5),
    (req("/", x_debug="1"), 2),
    (req("/", x_debug="1", x_internal="yes"), 5),  # inverted Present: the header must be absent
    (req("/", x_debug="2"), 5),
    (req("/?canary=true"), 3),
    (req("/?canary=true&canary=false"), 3),  # the first value counts
    (req("/?canary=false"), 5),
    (req("/users/42", user_agent="curl/8.0"), 4),
    (req("/users/42x", user_agent="curl/8.0"), 5),  # PathRegex is a full match
    (req("/users/42", user_agent="Mozilla"), 5),
])  # fmt: skip
def test_first_matching_route_wins_with_envoys_matchers(request_: Request, index: int) -> None:
    got = router(DEFAULTS_HTTP, RESOLVER, CANARY, ADMIN_ROUTER).route(request_, 1.0)
    assert got is not None and got.route_index == index


def test_path_exact_rewrite_replaces_the_path_and_keeps_the_query() -> None:
    got = router(DEFAULTS_HTTP, RESOLVER, ADMIN_ROUTER).route(req("/healthz?deep=1"), 0.0)
    assert got is not None and got.path == "/status?deep=1"


def test_resolver_request_timeout_applies_without_a_route_timeout() -> None:
    got = router(DEFAULTS_HTTP, {**RESOLVER, "RequestTimeout": "750ms"}).route(req(), 0.0)
    assert got is not None and got.timeout == 0.75 and got.targets == (V1,)


def test_failover_targets_follow_the_chosen_target() -> None:
    res = {**RESOLVER, "Failover": {"v2": {"ServiceSubset": "v1"}}}
    got = router(DEFAULTS_HTTP, res, CANARY).route(req(), 99.0)
    assert got is not None and got.targets == (V2, V1)


def test_retry_policy_words_as_envoy_reads_them() -> None:
    p = RetryPolicy(2, frozenset({"5xx"}))
    assert p.on_response(500, {}) and p.on_response(503, {}) and not p.on_response(404, {})
    assert p.on_failure(connect=True) and p.on_failure(connect=False)
    gw = RetryPolicy(1, frozenset({"gateway-error"}))
    assert gw.on_response(502, {}) and not gw.on_response(500, {})
    cf = RetryPolicy(1, frozenset({"connect-failure"}))
    assert cf.on_failure(connect=True) and not cf.on_failure(connect=False) and not cf.on_response(503, {})
    assert RetryPolicy(1, frozenset({"retriable-4xx"})).on_response(409, {})
    codes = RetryPolicy(1, frozenset({"retriable-status-codes"}), frozenset({418}))
    assert codes.on_response(418, {}) and not codes.on_response(503, {})
    grpc = RetryPolicy(1, frozenset({"unavailable", "resource-exhausted"}))
    assert grpc.on_response(200, {"grpc-status": "14"}) and grpc.on_response(200, {"grpc-status": "8"})
    assert not grpc.on_response(200, {"grpc-status": "13"})


def test_num_retries_defaults_to_one_when_only_retry_words_are_set() -> None:
    r = router(DEFAULTS_HTTP, RESOLVER, {"Kind": "service-router", "Name": "api", "Routes": [
        {"Match": {"HTTP": {"PathPrefix": "/"}}, "Destination": {"RetryOn": ["gateway-error"]}}]})  # fmt: skip
    got = r.route(req(), 0.0)
    assert got is not None and got.retry == RetryPolicy(1, frozenset({"gateway-error"}))


PATH_ROUTER = {"Kind": "service-router", "Name": "api", "Routes": [
    {"Match": {"HTTP": {"PathPrefix": "/admin"}}, "Destination": {"ServiceSubset": "v2", "PrefixRewrite": "/"}},
    {"Match": {"HTTP": {"PathExact": "/healthz", "Methods": ["GET"]}}, "Destination": {"ServiceSubset": "v2"}},
]}  # fmt: skip


def test_route_target_remembers_what_depends_on_method_and_target_alone() -> None:
    def no_headers() -> dict[str, str]:
        raise AssertionError("no matcher reads headers")

    r = router(DEFAULTS_HTTP, RESOLVER, PATH_ROUTER)
    assert r.memoized
    cases = [("GET", "/admin/x?q=1"), ("GET", "/healthz"), ("POST", "/healthz"), ("GET", "/other")]
    for _ in range(2):  # the second round comes from the memo: the same answers
        for method, target in cases:
            assert r.route_target(method, target, no_headers, 50.0) == r.route(req(target, method), 50.0)
    got = r.route_target("GET", "/admin/x?q=1", no_headers, 0.0)
    assert got is not None and got.targets == (V2,) and got.path == "//x?q=1"
    plain = router(DEFAULTS_HTTP, RESOLVER)
    assert plain.memoized and plain.route_target("GET", "/a", no_headers, 0.0).targets == (V1,)  # type: ignore[union-attr]


def test_route_target_draws_and_reads_headers_when_the_chain_needs_them() -> None:
    split = router(DEFAULTS_HTTP, RESOLVER, CANARY)
    assert not split.memoized  # a splitter draws per request
    assert split.route_target("GET", "/", dict, 95.0).targets == (V2,)  # type: ignore[union-attr]
    assert split.route_target("GET", "/", dict, 5.0).targets == (V1,)  # type: ignore[union-attr]
    by_header = router(DEFAULTS_HTTP, RESOLVER, ADMIN_ROUTER)
    assert not by_header.memoized
    got = by_header.route_target("GET", "/", lambda: {"x-debug": "1"}, 1.0)
    assert got is not None and got.route_index == 2


def test_header_edits_remove_then_set_then_add() -> None:
    edits = HeaderEdits.parse({"Add": {"x-a": "2"}, "Set": {"x-b": "new"}, "Remove": ["x-c"]})
    assert edits is not None
    out = apply_edits([("x-a", "1"), ("X-B", "old"), ("x-c", "gone"), ("x-d", "kept")], [edits])
    assert out == [("x-a", "1"), ("x-d", "kept"), ("x-b", "new"), ("x-a", "2")]
    assert HeaderEdits.parse({}) is None and HeaderEdits.parse({"Add": {}}) is None


def test_the_routing_core_is_pure() -> None:
    import ast
    from pathlib import Path

    import connect_proxy.http.rbac as rbac_mod
    import connect_proxy.http.routing as routing_mod

    for mod in (routing_mod, rbac_mod):
        tree = ast.parse(Path(mod.__file__).read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not names & {"asyncio", "socket", "time", "random", "ssl"}, (mod.__name__, names)
