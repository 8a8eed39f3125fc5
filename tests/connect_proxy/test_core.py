"""The pure core: configuration from registrations and flags, identity checks, instance choice, backoff."""

from __future__ import annotations

import random

import pytest

from connect_proxy import identity
from connect_proxy.config import (
    ConfigError,
    Upstream,
    config_from_flags,
    config_from_registration,
    find_sidecar,
)

TD = "11111111-2222-4333-8444-555555555555.consul"


def test_config_from_a_sidecar_registration_uses_consuls_keys_and_defaults() -> None:
    reg = {"ID": "web1-sidecar-proxy", "Kind": "connect-proxy", "Port": 21000, "Address": "",
           "Proxy": {"DestinationServiceName": "web", "DestinationServiceID": "web1", "LocalServiceAddress": "127.0.0.1",
                     "LocalServicePort": 8080, "Upstreams": [{"DestinationName": "db", "LocalBindPort": 9191},
                                                              {"DestinationName": "cache", "LocalBindPort": 9292,
                                                               "LocalBindAddress": "127.0.0.2", "Datacenter": "dc2"}]}}  # fmt: skip
    cfg = config_from_registration(reg)
    assert (cfg.service, cfg.proxy_id, cfg.public, cfg.local_service) == (
        "web", "web1-sidecar-proxy", ("0.0.0.0", 21000), ("127.0.0.1", 8080))  # fmt: skip
    assert cfg.upstreams == (Upstream("db", "127.0.0.1", 9191), Upstream("cache", "127.0.0.2", 9292, "dc2"))
    reg["Proxy"]["Config"] = {"bind_address": "127.0.0.1", "bind_port": 21001, "local_service_address": "10.0.0.1:81",
                              "handshake_timeout_ms": 2500, "local_connect_timeout_ms": 300}  # fmt: skip
    cfg = config_from_registration(reg)
    assert (cfg.public, cfg.local_service, cfg.handshake_timeout, cfg.local_connect_timeout) == (
        ("127.0.0.1", 21001), ("10.0.0.1", 81), 2.5, 0.3)  # fmt: skip


@pytest.mark.parametrize(("change", "message"), [
    ({"Kind": ""}, "is not a connect-proxy"),
    ({"Proxy": None}, "has no Proxy block"),
    ({"Proxy": {"DestinationServiceName": "web"}}, "LocalServicePort must be set"),
    ({"Proxy": {"DestinationServiceName": "../x", "LocalServicePort": 1}}, "not a valid service name"),
    ({"Proxy": {"DestinationServiceName": "web", "LocalServicePort": 1,
                "Upstreams": [{"DestinationName": "q", "DestinationType": "prepared_query", "LocalBindPort": 1}]}},
     "not supported"),
    ({"Proxy": {"DestinationServiceName": "web", "LocalServicePort": 1, "Upstreams": [{"DestinationName": "db"}]}},
     "LocalBindPort must be set"),
    ({"Proxy": {"DestinationServiceName": "web", "LocalServicePort": 1,
                "Upstreams": [{"DestinationName": "db", "LocalBindPort": 21000}]}}, "both want port 21000"),
])  # fmt: skip
def test_bad_registrations_are_refused_with_the_reason(change: dict, message: str) -> None:
    reg = {"ID": "p", "Kind": "connect-proxy", "Port": 21000, "Proxy": {"DestinationServiceName": "web",
                                                                          "LocalServicePort": 80}}  # fmt: skip
    reg.update(change)
    with pytest.raises(ConfigError, match=message):
        config_from_registration(reg)


def test_manual_flags() -> None:
    cfg = config_from_flags("web", "127.0.0.1:8080", ":21000", ["db:9191", "cache:127.0.0.3:9292"])
    assert cfg.public == ("0.0.0.0", 21000) and cfg.local_service == ("127.0.0.1", 8080)
    assert cfg.upstreams == (Upstream("db", "127.0.0.1", 9191), Upstream("cache", "127.0.0.3", 9292))
    assert config_from_flags("web", None, None, ["db:9191"]).public is None


def test_find_sidecar_wants_exactly_one() -> None:
    def proxy(dest_id: str) -> dict:
        return {"Kind": "connect-proxy", "Proxy": {"DestinationServiceID": dest_id}}

    services = {"web1": {"Kind": ""}, "web1-sidecar-proxy": proxy("web1"), "db1-sidecar-proxy": proxy("db1")}
    assert find_sidecar(services, "web1") == "web1-sidecar-proxy"
    with pytest.raises(ConfigError, match="No sidecar proxy registered for api1"):
        find_sidecar(services, "api1")
    services["other"] = proxy("web1")
    with pytest.raises(ConfigError, match="IDs: other, web1-sidecar-proxy"):
        find_sidecar(services, "web1")


def test_client_identity_is_one_strict_service_uri_in_our_trust_domain() -> None:
    good = f"spiffe://{TD}/ns/default/dc/dc1/svc/web"
    assert identity.client_identity([good], TD).service == "web"
    bad = [
        [],
        [good, good],
        [f"spiffe://{TD}/agent/client/dc/dc1/id/node1"],
        [f"spiffe://{TD}/agent/server/dc/dc1"],
        [f"spiffe://{TD}"],
        [f"spiffe://{TD}/ns/default/dc/dc1/svc/w%65b"],
        [f"SPIFFE://{TD}/ns/default/dc/dc1/svc/web"],
        [f"spiffe://{TD}/ns/default/dc/dc1/svc/web/"],
        ["spiffe://99999999-2222-4333-8444-555555555555.consul/ns/default/dc/dc1/svc/web"],
    ]
    for uris in bad:
        with pytest.raises(identity.IdentityError):
            identity.client_identity(uris, TD)


def test_server_identity_must_be_exactly_the_destination() -> None:
    want = identity.service_uri(TD, "dc1", "db")
    assert want == f"spiffe://{TD}/ns/default/dc/dc1/svc/db"
    identity.check_server([want], want)
    for uris in ([], [want, want], [want.replace("/db", "/web")], [want.upper()], [want + "x"]):
        with pytest.raises(identity.IdentityError):
            identity.check_server(uris, want)
    assert identity.uri_sans({"subjectAltName": (("DNS", "x"), ("URI", want))}) == [want]
    assert identity.serial_colon("A0B1C") == "0a:0b:1c"


def test_instances_prefer_the_service_address_and_choice_never_repeats() -> None:
    health = [
        {"Node": {"Address": "10.0.0.1"}, "Service": {"Address": "", "Port": 21000}},
        {"Node": {"Address": "10.0.0.2"}, "Service": {"Address": "192.168.0.2", "Port": 21001}},
        {"Node": {"Address": "10.0.0.3"}, "Service": {"Port": "bad"}},
        {"Node": {"Address": "10.0.0.1"}, "Service": {"Address": "", "Port": 21000}},
        "junk",
    ]
    found = identity.instances(health)
    assert found == [("10.0.0.1", 21000), ("192.168.0.2", 21001)]
    assert identity.instances({"not": "a list"}) == []
    rng = random.Random(1)
    tried: set = set()
    for _ in range(len(found)):
        pick = identity.choose(found, tried, rng)
        assert pick is not None and pick not in tried
        tried.add(pick)
    assert identity.choose(found, tried, rng) is None
    assert {identity.choose(found, set(), rng) for _ in range(200)} == set(found)

def test_backoff_doubles_to_a_cap() -> None:
    assert [identity.backoff(i, 0.25, 10) for i in range(8)] == [0.25, 0.5, 1, 2, 4, 8, 10, 10]
    assert identity.backoff(10_000, 0.25, 10) == 10


def test_the_core_does_no_io() -> None:
    import connect_proxy.config as c
    import connect_proxy.identity as i

    for mod in (c, i):
        names = set(vars(mod))
        assert not names & {"asyncio", "socket", "ssl", "time", "aiohttp"}, mod.__name__
