"""dns_config parsing and validation, TTL rules, and a configured domain and alt_domain on a real server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dnslib import QTYPE
from dnstest import addresses, ask, rcode, register

from dns.config import DNSConfig, from_agent_config, parse_dns_config, parse_recursor
from registry.config import ConfigError
from registry.testing.agent import dev_agent, make_config

# ---------------------------------------------------------------------- parsing


def test_defaults_are_consuls() -> None:
    cfg = from_agent_config(make_config())
    assert cfg.domain == "consul." and cfg.alt_domain == ""
    assert (cfg.udp_answer_limit, cfg.a_record_limit, cfg.node_ttl) == (3, 0, 0)
    assert (cfg.only_passing, cfg.enable_truncate, cfg.allow_stale, cfg.node_meta_txt) == (False, False, True, True)
    assert cfg.recursor_timeout == 2.0 and cfg.recursors == ()
    assert (cfg.soa_refresh, cfg.soa_retry, cfg.soa_expire, cfg.soa_min_ttl) == (3600, 600, 86400, 0)


def test_values_are_parsed() -> None:
    kw = parse_dns_config({
        "node_ttl": "30s", "service_ttl": {"web": "5s", "*": "1m"}, "udp_answer_limit": 5, "a_record_limit": 2,
        "only_passing": True, "enable_truncate": True, "recursor_timeout": "500ms", "recursor_strategy": "random",
        "soa": {"min_ttl": 10, "refresh": 1}, "use_cache": True, "max_stale": "10s",
        "enable_additional_node_meta_txt": False,
    })  # fmt: skip
    cfg = DNSConfig(**kw)
    assert cfg.node_ttl == 30 and cfg.service_ttl("web") == 5 and cfg.service_ttl("other") == 60
    assert cfg.recursor_timeout == 0.5 and cfg.recursor_strategy == "random"
    assert cfg.soa_min_ttl == 10 and cfg.soa_refresh == 1 and cfg.soa_retry == 600
    assert cfg.node_meta_txt is False


@pytest.mark.parametrize(
    "raw,fragment",
    [
        ({"node_ttl": "ten seconds"}, "node_ttl"),
        ({"node_ttl": "-5s"}, "negative"),
        ({"service_ttl": {"web": "5"}}, "missing unit"),
        ({"service_ttl": ["web"]}, "service_ttl must be a map"),
        ({"udp_answer_limit": 0}, "udp_answer_limit must be an integer from 1"),
        ({"udp_answer_limit": "3"}, "udp_answer_limit"),
        ({"a_record_limit": -1}, "a_record_limit"),
        ({"only_passing": "yes"}, "only_passing must be true or false"),
        ({"recursor_timeout": "0s"}, "recursor_timeout must be positive"),
        ({"recursor_strategy": "fastest"}, "recursor_strategy"),
        ({"soa": {"minttl": 1}}, "unknown key 'minttl'"),
        ({"soa": {"expire": 2**33}}, "soa.expire"),
        ({"no_such_knob": 1}, "unknown key 'no_such_knob'"),
    ],
)
def test_bad_values_are_refused_with_the_key_named(raw: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_dns_config(raw)
    assert fragment in str(exc.value)


@pytest.mark.parametrize(
    "text,host,port",
    [("8.8.8.8", "8.8.8.8", 53), ("8.8.8.8:5353", "8.8.8.8", 5353), ("::1", "::1", 53), ("[::1]:54", "::1", 54)],
)
def test_recursor_addresses(text: str, host: str, port: int) -> None:
    r = parse_recursor(text)
    assert (r.host, r.port) == (host, port)


@pytest.mark.parametrize("text", ["dns.google", "1.2.3.4:x", "[::1", "1.2.3.4:70000", "[::1]x"])
def test_bad_recursor_addresses(text: str) -> None:
    with pytest.raises(ConfigError, match="Invalid recursor address"):
        parse_recursor(text)


def test_bad_domain_is_refused() -> None:
    with pytest.raises(ConfigError, match="not a valid DNS domain"):
        from_agent_config(make_config(domain="a..b"))


def test_service_ttl_rule_exact_then_longest_prefix() -> None:
    cfg = DNSConfig(**parse_dns_config({"service_ttl": {"db": "1s", "d*": "2s", "db-*": "3s", "*": "4s"}}))
    assert cfg.service_ttl("db") == 1  # exact beats every prefix
    assert cfg.service_ttl("db-main") == 3  # the longest prefix wins
    assert cfg.service_ttl("dx") == 2
    assert cfg.service_ttl("web") == 4
    assert DNSConfig().service_ttl("web") == 0  # nothing configured: 0


# ---------------------------------------------------------------------- on a real server

TUNED = {
    "domain": "cluster.local",
    "alt_domain": "example.test",
    "dns_config": {
        "node_ttl": "10s",
        "service_ttl": {"web": "5s", "w*": "7s", "*": "1s"},
        "soa": {"min_ttl": 3},
    },
}


@pytest.fixture(scope="module")
def tuned() -> Iterator[int]:
    with dev_agent(**TUNED) as a:
        register(a, "n1", "10.0.0.1", {"ID": "web", "Service": "web", "Port": 80})
        register(a, "n1", "10.0.0.1", {"ID": "wiki", "Service": "wiki", "Port": 81}, skip_node=True)
        register(a, "n1", "10.0.0.1", {"ID": "db", "Service": "db", "Port": 82}, skip_node=True)
        assert a.dns_port is not None
        yield a.dns_port


def test_ttls_follow_the_rules(tuned: int) -> None:
    assert {rr.ttl for rr in ask(tuned, "web.service.cluster.local").rr} == {5}
    assert {rr.ttl for rr in ask(tuned, "wiki.service.cluster.local").rr} == {7}
    assert {rr.ttl for rr in ask(tuned, "db.service.cluster.local").rr} == {1}
    resp = ask(tuned, "web.service.cluster.local", "SRV")
    assert {rr.ttl for rr in resp.rr} == {5} and {rr.ttl for rr in resp.ar} == {5}
    assert {rr.ttl for rr in ask(tuned, "n1.node.cluster.local").rr} == {10}
    (soa,) = ask(tuned, "nosuch.service.cluster.local").auth
    assert soa.ttl == 3 and soa.rdata.times[4] == 3


def test_configured_domain_and_alt_domain(tuned: int) -> None:
    assert addresses(ask(tuned, "web.service.cluster.local")) == ["10.0.0.1"]
    assert addresses(ask(tuned, "web.service.example.test")) == ["10.0.0.1"]
    assert addresses(ask(tuned, "WEB.service.dc1.EXAMPLE.test")) == ["10.0.0.1"]
    # Targets and the SOA use the domain the question used.
    resp = ask(tuned, "web.service.example.test", "SRV")
    assert [str(rr.rdata.target) for rr in resp.rr] == ["n1.node.dc1.example.test."]
    (soa,) = ask(tuned, "nosuch.service.example.test").auth
    assert str(soa.rname) == "example.test." and str(soa.rdata.mname) == "ns.example.test."
    (soa,) = ask(tuned, "nosuch.service.cluster.local").auth
    assert str(soa.rname) == "cluster.local."
    assert ask(tuned, "cluster.local", "SOA").rr[0].rtype == QTYPE.SOA
    # "consul." is not ours any more
    assert rcode(ask(tuned, "web.service.consul")) == "REFUSED"
