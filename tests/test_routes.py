"""The one route table: every route declared completely, the router built from it, the docs rendered from it."""

from __future__ import annotations

import inspect

import pytest

from registry.api import routes
from registry.api.routes import ROUTES, render_markdown
from registry.api.routing import RESOURCES, Route, RouteError, Router, route


async def _handler(api, request, suffix):  # type: ignore[no-untyped-def]
    raise AssertionError("not called")


def test_every_route_is_declared_completely() -> None:
    problems = [p for r in ROUTES for p in r.problems()]
    assert not problems
    for r in ROUTES:
        assert inspect.iscoroutinefunction(r.handler), f"{r.path}: the handler must be a coroutine function"
        assert r.resource in RESOURCES and r.access in ("read", "write") and r.name


def test_each_method_and_path_is_declared_once() -> None:
    seen = [(m, r.path) for r in ROUTES for m in r.methods]
    assert len(seen) == len(set(seen))


def test_the_router_serves_exactly_the_table() -> None:
    router = Router(ROUTES)
    served = {(m, p) for table in (router.exact, router.prefix) for p, handlers in table.items() for m in handlers}
    assert served == {(m, r.path) for r in ROUTES for m in r.methods}
    for r in ROUTES:
        handlers, suffix = router.resolve(r.path + ("some/name" if r.is_prefix else ""))
        assert handlers is not None and all(handlers[m] is r for m in r.methods)
        assert suffix == ("some/name" if r.is_prefix else "")


def test_the_longest_prefix_wins_and_exact_paths_come_first() -> None:
    router = Router(ROUTES)
    handlers, suffix = router.resolve("/v1/agent/service/deregister/web")
    assert handlers is not None and suffix == "web" and set(handlers) == {"PUT"}
    handlers, suffix = router.resolve("/v1/agent/service/register")
    assert handlers is not None and suffix == "" and set(handlers) == {"PUT"}
    handlers, suffix = router.resolve("/v1/agent/service/web")
    assert handlers is not None and suffix == "web" and set(handlers) == {"GET"}
    assert router.resolve("/v1/nothing/here") == (None, "")


def test_resolve_is_the_longest_matching_prefix_for_any_path() -> None:
    """The router looks up the prefixes ending at the path's own slashes; that must choose exactly what
    trying every prefix of the table, longest first, chooses."""
    router = Router(ROUTES)
    prefixes = sorted(router.prefix, key=len, reverse=True)

    def naive(path: str) -> tuple[dict[str, Route] | None, str]:
        if path in router.exact:
            return router.exact[path], ""
        for p in prefixes:
            if path.startswith(p):
                return router.prefix[p], path[len(p) :]
        return None, ""

    tails = ["", "x", "a/b", "a/b/", "/", "//", "web/", "a" * 50 + "/b", "/".join("k" * 2000)]
    paths = [p + t for p in [*prefixes, *router.exact, "/v1/", "/v1", "/", "", "/v2/kv/", "/v1/kvx/"] for t in tails]
    for path in paths:
        assert router.resolve(path) == naive(path), path


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (route("GET", "/v1/x", _handler, "read", "bucket", "each", "s"), "unknown ACL resource"),  # type: ignore[arg-type]
        (route("GET", "/v1/x", _handler, "look", "node", "each", "s"), "access must be"),  # type: ignore[arg-type]
        (route("GET", "/v1/x", _handler, "read", "node", "somewhere", "s"), "name source"),
        (route("GET", "/v1/x", _handler, "read", "node", "path", "s"), "needs a prefix route"),
        (route("GET", "/v1/x", _handler, "read", "none", "each", "s"), "resource none"),
        (route("GET", "/v1/x", _handler, "read", "operator", "each", "s"), "take name unnamed"),
        (route("GET", "/v1/x", _handler, "read", "node", "each", " "), "summary is empty"),
        (route("FETCH", "/v1/x", _handler, "read", "node", "each", "s"), "methods must be"),
        (route("GET", "/x", _handler, "read", "node", "each", "s"), "must start with /v1/"),
    ],
)
def test_an_incomplete_declaration_is_refused(bad: Route, words: str) -> None:
    assert any(words in p for p in bad.problems())
    with pytest.raises(RouteError, match=words):
        Router([bad])


def test_a_route_declared_twice_is_refused() -> None:
    r = route("GET,PUT", "/v1/x", _handler, "read", "node", "each", "s")
    with pytest.raises(RouteError, match="GET /v1/x is declared twice"):
        Router([r, route("GET", "/v1/x", _handler, "read", "node", "each", "s")])


def test_the_docs_list_every_route() -> None:
    text = render_markdown()
    for r in ROUTES:
        for m in r.methods:
            assert f"| {m} | `{r.path}" in text


def test_docs_http_api_md_is_up_to_date() -> None:
    """docs/http-api.md is rendered from the table: regenerate it with ``python -m registry.api.routes``."""
    assert routes.DOC_PATH.read_text() == render_markdown()
    assert routes.main(["--check"]) == 0


def test_a_client_agent_fills_the_session_node_before_forwarding() -> None:
    """The route table says how a client agent rewrites a body before forwarding it to a server: a session
    created through a client agent belongs to that agent's node unless the body names one (Consul's agent
    fills the node before its RPC)."""
    import json

    rewrite = Router(ROUTES).forward_body[("PUT", "/v1/session/create")]
    assert json.loads(rewrite(b'{"TTL": "10s"}', "client-1")) == {"TTL": "10s", "Node": "client-1"}
    assert json.loads(rewrite(b"", "client-1")) == {"Node": "client-1"}
    assert json.loads(rewrite(b'{"node": "other"}', "client-1")) == {"node": "other"}
    assert rewrite(b"{not json", "client-1") == b"{not json"  # the server answers the decode error
    assert [k for k in Router(ROUTES).forward_body] == [("PUT", "/v1/session/create")]
