"""L7 intentions per request (connect_proxy.http.rbac), with Consul's documented semantics
(website/content/docs/connect/config-entries/service-intentions.mdx): precedence picks the intention,
the first matching permission is terminal, no matching permission falls to the default, and what cannot
be evaluated fails closed."""

from __future__ import annotations

from typing import Any

import pytest

from ca.spiffe import ServiceIdentity
from connect_proxy.authz import Authorizer
from connect_proxy.http.rbac import DENIED_BODY, L7Policy, Permission, RequestView
from registry.intentions import Intention, IntentionIndex

TD = "11111111-2222-4333-8444-555555555555.consul"


def ident(service: str) -> ServiceIdentity:
    return ServiceIdentity(TD, "default", "dc1", service)


def policy(*intentions: Intention, default_allow: bool = False, intention_policy: str = "") -> L7Policy:
    return L7Policy(Authorizer("api", IntentionIndex(intentions), default_allow, intention_policy))


def l7(source: str, *perms: dict[str, Any]) -> Intention:
    return Intention(source_name=source, destination_name="api", action="", permissions=perms)


def view(method: str = "GET", path: str = "/", **headers: str) -> RequestView:
    return RequestView(method, path, {k.replace("_", "-"): v for k, v in headers.items()})


DENY_DELETE_ELSE_ALLOW = l7("web",
                            {"Action": "deny", "HTTP": {"Methods": ["DELETE"]}},
                            {"Action": "allow", "HTTP": {"PathPrefix": "/"}})  # fmt: skip


def test_denied_delete_and_allowed_get() -> None:
    p = policy(DENY_DELETE_ELSE_ALLOW)
    assert not p.decide(ident("web"), view("DELETE", "/items/1")).allowed
    assert p.decide(ident("web"), view("GET", "/items/1")).allowed
    assert p.decide(ident("web"), view("POST", "/items")).allowed
    assert DENIED_BODY == b"RBAC: access denied"


def test_first_matching_permission_is_terminal() -> None:
    p = policy(l7("web", {"Action": "allow", "HTTP": {"PathPrefix": "/api"}},
                  {"Action": "deny", "HTTP": {"PathPrefix": "/api/admin"}}))  # fmt: skip
    assert p.decide(ident("web"), view(path="/api/admin/x")).allowed  # the allow came first


def test_no_matching_permission_falls_to_the_default() -> None:
    ixn = l7("web", {"Action": "allow", "HTTP": {"PathExact": "/ok"}})
    assert not policy(ixn, default_allow=False).decide(ident("web"), view(path="/other")).allowed
    assert policy(ixn, default_allow=True).decide(ident("web"), view(path="/other")).allowed
    assert not policy(ixn, default_allow=True, intention_policy="deny").decide(ident("web"), view(path="/x")).allowed


def test_precedence_picks_the_intention_before_permissions_are_read() -> None:
    wildcard_deny = Intention(source_name="*", destination_name="api", action="deny")
    p = policy(wildcard_deny, DENY_DELETE_ELSE_ALLOW)
    assert p.decide(ident("web"), view()).allowed  # web's exact intention outranks * => api
    assert not p.decide(ident("other"), view()).allowed
    l4_allow = Intention(source_name="web", destination_name="api", action="allow")
    assert policy(l4_allow).decide(ident("web"), view("DELETE")).allowed


@pytest.mark.parametrize(("perm", "request_", "matches"), [
    ({"PathExact": "/a"}, view(path="/a?q=1"), True),  # url_path: the query string is not part of it
    ({"PathExact": "/a"}, view(path="/a/b"), False),
    ({"PathPrefix": "/a"}, view(path="/ab"), True),
    ({"PathRegex": "/v[0-9]+/.*"}, view(path="/v2/x"), True),
    ({"PathRegex": "/v[0-9]+"}, view(path="/v2/x"), False),
    ({"Methods": ["GET", "HEAD"]}, view("HEAD"), True),
    ({"Methods": ["GET"]}, view("PUT"), False),
    ({"Header": [{"Name": "X-Env", "Exact": "prod"}]}, view(x_env="prod"), True),
    ({"Header": [{"Name": "x-env", "Prefix": "pr"}]}, view(x_env="prod"), True),
    ({"Header": [{"Name": "x-env", "Suffix": "od"}]}, view(x_env="prod"), True),
    ({"Header": [{"Name": "x-env", "Regex": "p.*d"}]}, view(x_env="prod"), True),
    ({"Header": [{"Name": "x-env", "Present": True}]}, view(), False),
    ({"Header": [{"Name": "x-env", "Present": True, "Invert": True}]}, view(), True),
    ({"Header": [{"Name": "x-env", "Exact": "prod", "Invert": True}]}, view(x_env="dev"), True),
    ({"Header": [{"Name": "x-env", "Exact": "prod", "Invert": True}]}, view(), False),
    ({"PathPrefix": "/a", "Methods": ["POST"]}, view("GET", "/a"), False),  # the parts are ANDed
])  # fmt: skip
def test_permission_matchers(perm: dict[str, Any], request_: RequestView, matches: bool) -> None:
    assert Permission.parse({"Action": "allow", "HTTP": perm}).matches(request_) is matches


def test_what_cannot_be_evaluated_fails_closed() -> None:
    for perm in ({"Action": "allow", "HTTP": {"PathRegex": "("}},
                 {"Action": "allow", "JWT": {"Providers": [{"Name": "okta"}]}},
                 {"Action": "allow", "HTTP": {"PathPrefix": "/", "Frobnicate": 1}}):  # fmt: skip
        p = policy(l7("web", perm), default_allow=True)
        assert not p.decide(ident("web"), view()).allowed, perm


def test_permission_keys_decode_case_insensitively() -> None:
    perm = Permission.parse({"action": "deny", "http": {"path_prefix": "/x", "methods": ["delete"]}})
    assert not perm.allow and perm.matches(view("DELETE", "/x/1")) and not perm.matches(view("GET", "/x/1"))
