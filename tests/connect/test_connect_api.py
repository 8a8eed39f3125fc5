"""The Connect HTTP API of a real in-process dev agent: CA roots and configuration, leaf certificates,
authorize, intentions (legacy, exact, match, check, precedence), /v1/config and the CA health check."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta

import pytest
from cryptography import x509

from ca import certs
from ca.spiffe import ServiceIdentity
from registry.gocompat import parse_go_time
from registry.testing import RunningAgent, async_dev_agent

COLON_HEX = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2})*$")


async def test_roots_shape_and_pem(http, agent: RunningAgent) -> None:  # noqa: ANN001
    status, roots, headers = await http.get("/v1/connect/ca/roots")
    assert status == 200 and int(headers["X-Consul-Index"]) >= 1
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.consul", roots["TrustDomain"])
    [root] = roots["Roots"]
    assert root["ID"] == roots["ActiveRootID"] and len(root["ID"].split(":")) == 20 and COLON_HEX.match(root["ID"])
    assert len(root["SigningKeyID"].split(":")) == 32 and isinstance(root["SerialNumber"], int)
    assert root["Active"] is True and root["IntermediateCerts"] is None
    assert (root["PrivateKeyType"], root["PrivateKeyBits"]) == ("ec", 256)
    assert root["ExternalTrustDomain"] == roots["TrustDomain"].split(".")[0]
    cert = certs.cert_from_pem(root["RootCert"])
    assert certs.fingerprint_sha1_colon(cert) == root["ID"]
    assert certs.spiffe_uris(cert) == [f"spiffe://{roots['TrustDomain']}"]
    status, agent_roots, _ = await http.get("/v1/agent/connect/ca/roots")
    assert status == 200 and agent_roots == roots
    status, pem, headers = await http.get("/v1/connect/ca/roots?pem=true")
    assert status == 200 and headers["Content-Type"] == "application/pem-certificate-chain"
    assert pem.decode() == root["RootCert"]
    status, body, _ = await http.get("/v1/connect/ca/roots?pem")  # Go's ParseBool("") is false: JSON
    assert status == 200 and body == roots
    status, text, _ = await http.get("/v1/connect/ca/roots?pem=yes")
    assert (status, text) == (400, "The 'pem' query parameter must be a boolean value")
    # The private key never shows up anywhere in the API.
    for path in ("/v1/connect/ca/roots", "/v1/connect/ca/configuration", "/v1/agent/connect/ca/roots"):
        _, body, _ = await http.get(path)
        assert "PRIVATE KEY" not in str(body) and "PrivateKey\"" not in str(body)


async def test_leaf_certificate_shape_and_caching(http) -> None:  # noqa: ANN001
    status, leaf, headers = await http.get("/v1/agent/connect/ca/leaf/web")
    assert status == 200 and headers["X-Cache"] == "MISS"
    assert headers["X-Consul-Index"] == str(leaf["ModifyIndex"]) == str(leaf["CreateIndex"])
    _, roots, _ = await http.get("/v1/connect/ca/roots")
    td = roots["TrustDomain"]
    assert leaf["Service"] == "web"
    assert leaf["ServiceURI"] == ServiceIdentity(td, "default", "dc1", "web").uri()
    assert COLON_HEX.match(leaf["SerialNumber"])
    assert leaf["PrivateKeyPEM"].startswith("-----BEGIN EC PRIVATE KEY-----")
    cert = certs.certs_from_pem(leaf["CertPEM"])[0]
    assert certs.serial_colon(cert.serial_number) == leaf["SerialNumber"]
    key = certs.private_key_from_pem(leaf["PrivateKeyPEM"])
    assert certs.key_id(key) == certs.key_id(cert.public_key())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", leaf["ValidAfter"])
    status, again, headers = await http.get("/v1/agent/connect/ca/leaf/web")
    assert headers["X-Cache"] == "HIT" and again == leaf
    status, text, _ = await http.get("/v1/agent/connect/ca/leaf/bad%20name")
    assert status == 400 and "Invalid service name" in text


async def test_configuration_get_put_rotates_and_blocking_leaf_wakes(http, agent: RunningAgent, openssl_verify) -> None:  # noqa: ANN001
    status, config, _ = await http.get("/v1/connect/ca/configuration")
    assert status == 200 and config["Provider"] == "consul"
    assert config["Config"]["LeafCertTTL"] == "72h" and "PrivateKey" not in config["Config"]
    _, leaf, headers = await http.get("/v1/agent/connect/ca/leaf/web")
    index = headers["X-Consul-Index"]
    agent.agent.connect.leaf.root_change_jitter = 0.2  # Consul's 30 s window, shortened for the test
    waiter = asyncio.create_task(http.get(f"/v1/agent/connect/ca/leaf/web?index={index}&wait=30s"))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    # A new key type means a new root, cross-signed by the old one.
    status, text, _ = await http.put("/v1/connect/ca/configuration", {
        "Provider": "consul", "Config": {"LeafCertTTL": "24h", "PrivateKeyType": "ec", "PrivateKeyBits": 384}})  # fmt: skip
    assert status == 200, text
    status, new_leaf, headers = await asyncio.wait_for(waiter, 10)
    assert status == 200 and int(headers["X-Consul-Index"]) > int(index)
    _, roots, _ = await http.get("/v1/connect/ca/roots")
    assert len(roots["Roots"]) == 2
    active = next(r for r in roots["Roots"] if r["Active"])
    old = next(r for r in roots["Roots"] if not r["Active"])
    assert (active["PrivateKeyType"], active["PrivateKeyBits"]) == ("ec", 384)
    # The old root stays listed, inactive, until it is pruned; Proconsul also says when it went out.
    went_out = parse_go_time(old["RotatedOutAt"]) - parse_go_time(active["NotBefore"])  # backdated a minute
    assert "RotatedOutAt" not in active and timedelta(0) <= went_out <= timedelta(minutes=2)
    assert len(active["IntermediateCerts"]) == 1
    chain = certs.certs_from_pem(new_leaf["CertPEM"])
    assert len(chain) == 2  # the leaf, then the cross-signed new root
    aki = chain[0].extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    assert certs.colon_hex(aki) == active["SigningKeyID"]
    assert new_leaf["ValidBefore"] != leaf["ValidBefore"]
    new_pem = new_leaf["CertPEM"].split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    # A peer that knows only the old root accepts the new leaf through the cross-signed certificate.
    assert openssl_verify(new_pem, [old["RootCert"]], active["IntermediateCerts"]).returncode == 0
    assert openssl_verify(new_pem, [active["RootCert"]]).returncode == 0
    _, config, _ = await http.get("/v1/connect/ca/configuration")
    assert config["Config"]["LeafCertTTL"] == "24h" and config["ModifyIndex"] > config["CreateIndex"]
    status, text, _ = await http.put("/v1/connect/ca/configuration", {"Config": {"LeafCertTTL": "10m"}})
    assert status == 400 and "leaf cert TTL must be greater or equal than 1h0m0s" in text
    status, text, _ = await http.put("/v1/connect/ca/configuration", {"Provider": "vault", "Config": {}})
    assert status == 400 and "not supported" in text


async def test_leaf_rate_limit_answers_429_with_retry_after() -> None:
    async with async_dev_agent(connect={"ca_config": {"csr_max_per_second": 1}}) as running:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            statuses = []
            for i in range(3):
                async with session.get(f"{running.url}/v1/agent/connect/ca/leaf/svc-{i}") as resp:
                    statuses.append((resp.status, await resp.text(), resp.headers.get("Retry-After")))
        assert statuses[0][0] == 200
        limited = [s for s in statuses if s[0] == 429]
        assert limited, statuses
        assert all(text == "Rate limit reached, try again later" and int(ra) >= 1 for _, text, ra in limited)


async def test_authorize_allow_deny_malformed_foreign(http) -> None:  # noqa: ANN001
    _, roots, _ = await http.get("/v1/connect/ca/roots")
    td = roots["TrustDomain"]
    web = ServiceIdentity(td, "default", "dc1", "web").uri()
    status, out, _ = await http.call("POST", "/v1/agent/connect/authorize", {"Target": "db", "ClientCertURI": web})
    assert status == 200 and out == {"Authorized": True, "Reason": "Default behavior configured by ACLs"}
    assert (await http.put("/v1/connect/intentions/exact?source=web&destination=db", {"Action": "deny"}))[0] == 200
    status, out, _ = await http.call("POST", "/v1/agent/connect/authorize",
                                     {"target": "db", "clientcerturi": web, "ClientCertSerial": "01:02"})  # fmt: skip
    assert status == 200 and out["Authorized"] is False
    assert out["Reason"] == "Matched L4 intention: default/web => default/db (Precedence: 9, Action: DENY)"
    for bad in ("spiffe://not a uri", "http://x.consul/ns/default/dc/dc1/svc/web", web + "/", web.upper(),
                f"spiffe://{td}/ns/default/dc/dc1/svc/web%2Fadmin", ""):
        status, text, _ = await http.call("POST", "/v1/agent/connect/authorize", {"Target": "db", "ClientCertURI": bad})
        assert status == 400 and text == "ClientCertURI not a valid Connect identifier", bad
    status, text, _ = await http.call("POST", "/v1/agent/connect/authorize",
                                      {"Target": "db", "ClientCertURI": f"spiffe://{td}/agent/server/dc/dc1"})  # fmt: skip
    assert status == 400 and text == "ClientCertURI not a valid Service identifier"
    # A well-formed URI from another trust domain is denied even where the default would allow.
    foreign = "spiffe://99999999-2222-4333-8444-555555555555.consul/ns/default/dc/dc1/svc/api"
    status, out, _ = await http.call("POST", "/v1/agent/connect/authorize", {"Target": "db", "ClientCertURI": foreign})
    assert status == 200 and out["Authorized"] is False and "trust domain" in out["Reason"]
    status, text, _ = await http.call("POST", "/v1/agent/connect/authorize", {"ClientCertURI": web})
    assert status == 400 and text == "Target service must be specified"
    status, text, _ = await http.call("POST", "/v1/agent/connect/authorize", raw=b"{nope")
    assert status == 400 and text.startswith("Request decode failed")


async def test_default_intention_policy_overrides_acl_default() -> None:
    async with async_dev_agent(default_intention_policy="deny") as running:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            async with session.get(f"{running.url}/v1/connect/ca/roots") as resp:
                td = (await resp.json())["TrustDomain"]
            uri = ServiceIdentity(td, "default", "dc1", "web").uri()
            async with session.post(f"{running.url}/v1/agent/connect/authorize",
                                    json={"Target": "db", "ClientCertURI": uri}) as resp:  # fmt: skip
                out = await resp.json()
            async with session.get(f"{running.url}/v1/connect/intentions/check?source=web&destination=db") as resp:
                check = await resp.json()
    assert out == {"Authorized": False, "Reason": "Default intention policy"}
    assert check == {"Allowed": False}


async def test_intention_endpoints_and_precedence(http) -> None:  # noqa: ANN001
    async def check(src: str, dst: str) -> bool:
        status, body, _ = await http.get(f"/v1/connect/intentions/check?source={src}&destination={dst}")
        assert status == 200
        return body["Allowed"]

    # * => * deny (5), * => db allow (8), web => db deny (9), web => * allow (6).
    status, created, _ = await http.call("POST", "/v1/connect/intentions",
                                         {"SourceName": "*", "DestinationName": "*", "Action": "deny",
                                          "Meta": {"why": "default deny"}})  # fmt: skip
    assert status == 200 and re.fullmatch(r"[0-9a-f-]{36}", created["ID"])
    wildcard_id = created["ID"]
    assert (await http.put("/v1/connect/intentions/exact?source=*&destination=db", {"Action": "allow"}))[0] == 200
    assert (await http.put("/v1/connect/intentions/exact?source=web&destination=db", {"Action": "deny"}))[0] == 200
    assert (await http.put("/v1/connect/intentions/exact?source=web&destination=*", {"Action": "allow"}))[0] == 200
    assert await check("api", "db") is True  # * => db (8) beats * => * (5)
    assert await check("web", "db") is False  # exact (9) beats everything
    assert await check("web", "cache") is True  # web => * (6) beats * => * (5)
    assert await check("api", "cache") is False  # only * => * matches
    _, listed, headers = await http.get("/v1/connect/intentions")
    assert [(i["SourceName"], i["DestinationName"], i["Precedence"]) for i in listed] == [
        ("web", "db", 9), ("*", "db", 8), ("web", "*", 6), ("*", "*", 5)]  # fmt: skip
    assert listed[3]["ID"] == wildcard_id and listed[3]["Meta"] == {"why": "default deny"}
    assert "ID" not in listed[0]  # made through /exact: no legacy ID
    _, matched, _ = await http.get("/v1/connect/intentions/match?by=destination&name=db")
    # Every intention whose destination side matches db (exact or wildcard), in evaluation order.
    assert [(i["SourceName"], i["DestinationName"]) for i in matched["db"]] == [
        ("web", "db"), ("*", "db"), ("web", "*"), ("*", "*")]  # fmt: skip
    _, matched, _ = await http.get("/v1/connect/intentions/match?by=source&name=web&name=api")
    assert [(i["SourceName"], i["DestinationName"]) for i in matched["web"]] == [
        ("web", "db"), ("*", "db"), ("web", "*"), ("*", "*")]  # fmt: skip
    assert [i["DestinationName"] for i in matched["api"]] == ["db", "*"]
    for query, words in (("", "required query parameter 'by' not set"),
                         ("?by=both&name=x", "'by' parameter must be one of 'source' or 'destination'"),
                         ("?by=source", "required query parameter 'name' not set")):  # fmt: skip
        status, text, _ = await http.get(f"/v1/connect/intentions/match{query}")
        assert status == 400 and text == words
    status, one, _ = await http.get("/v1/connect/intentions/exact?source=web&destination=db")
    assert status == 200 and one["Action"] == "deny" and one["Precedence"] == 9
    status, text, _ = await http.get("/v1/connect/intentions/exact?source=nope&destination=db")
    assert (status, text) == (404, "Intention not found")
    # The legacy ID endpoints.
    status, one, _ = await http.get(f"/v1/connect/intentions/{wildcard_id}")
    assert status == 200 and one["SourceName"] == "*"
    status, _, _ = await http.put(f"/v1/connect/intentions/{wildcard_id}",
                                  {"SourceName": "*", "DestinationName": "*", "Action": "allow"})  # fmt: skip
    assert status == 200 and await check("api", "cache") is True
    status, text, _ = await http.get("/v1/connect/intentions/00000000-0000-4000-8000-000000000000")
    assert (status, text) == (404, "Intention not found")
    status, text, _ = await http.call("POST", "/v1/connect/intentions",
                                      {"SourceName": "web", "DestinationName": "db", "Action": "allow"})  # fmt: skip
    assert status == 400 and "duplicate intention found" in text
    status, text, _ = await http.call("POST", "/v1/connect/intentions",
                                      {"SourceName": "we*b", "DestinationName": "db", "Action": "allow"})  # fmt: skip
    assert status == 400 and "wildcard" in text
    assert (await http.delete(f"/v1/connect/intentions/{wildcard_id}"))[0] == 200
    assert (await http.delete("/v1/connect/intentions/exact?source=web&destination=db"))[0] == 200
    assert await check("web", "db") is True  # now * => db allow decides
    # Everything is stored as service-intentions config entries, one per destination.
    status, entries, _ = await http.get("/v1/config/service-intentions")
    assert status == 200 and sorted(e["Name"] for e in entries) == ["*", "db"]


async def test_blocking_intention_list_wakes_on_change(http) -> None:  # noqa: ANN001
    _, _, headers = await http.get("/v1/connect/intentions")
    index = headers["X-Consul-Index"]
    waiter = asyncio.create_task(http.get(f"/v1/connect/intentions?index={index}&wait=20s"))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await http.put("/v1/connect/intentions/exact?source=a&destination=b", {"Action": "allow"})
    status, listed, headers = await asyncio.wait_for(waiter, 5)
    assert status == 200 and len(listed) == 1 and int(headers["X-Consul-Index"]) > int(index)


async def test_config_entries_endpoint(http) -> None:  # noqa: ANN001
    entry = {"kind": "service-intentions", "name": "db",
             "sources": [{"name": "web", "action": "allow"}, {"Name": "*", "Action": "deny"}]}  # fmt: skip
    status, ok, _ = await http.put("/v1/config", entry)
    assert status == 200 and ok is True
    status, got, _ = await http.get("/v1/config/service-intentions/db")
    assert status == 200 and got["Kind"] == "service-intentions" and got["Name"] == "db"
    assert [(s["Name"], s["Action"], s["Precedence"]) for s in got["Sources"]] == [("web", "allow", 9), ("*", "deny", 8)]
    index = got["ModifyIndex"]
    status, ok, _ = await http.put("/v1/config?cas=1", entry)
    assert status == 200 and ok is False
    status, ok, _ = await http.put(f"/v1/config?cas={index}", entry)
    assert ok is True
    status, text, _ = await http.get("/v1/config/service-intentions/nope")
    assert (status, text) == (404, 'Config entry not found for "service-intentions" / "nope"')
    status, text, _ = await http.get("/v1/config/")
    assert (status, text) == (404, "Must provide either a kind or both kind and name")
    status, text, _ = await http.get("/v1/config/not-a-kind")
    assert status == 400 and text == "invalid config entry kind: not-a-kind"
    # ?filter on service-intentions, typed as Consul's ServiceIntentionsConfigEntry.
    from urllib.parse import quote

    status, listed, _ = await http.get("/v1/config/service-intentions?filter=" + quote('Name == "db"'))
    assert status == 200 and [e["Name"] for e in listed] == ["db"]
    status, listed, _ = await http.get("/v1/config/service-intentions?filter=" + quote('Sources.Name == "nobody"'))
    assert status == 200 and listed == []
    status, listed, _ = await http.get("/v1/config/service-intentions?filter=" + quote('Sources.Action == deny'))
    assert status == 200 and [e["Name"] for e in listed] == ["db"]
    status, text, _ = await http.get("/v1/config/service-intentions?filter=" + quote("Bogus == 1"))
    assert status == 500 and text.startswith("Failed to create boolean expression evaluator:") and "Bogus" in text
    # service-defaults filters with Consul's selectors (tests/connect/test_config_entries.py); the other chain
    # kinds are refused, never answered with an unfiltered list.
    status, listed, _ = await http.get("/v1/config/service-defaults?filter=" + quote('Name == "db"'))
    assert (status, listed) == (200, [])
    status, text, _ = await http.get("/v1/config/service-router?filter=" + quote('Name == "db"'))
    assert (status, text) == (400, "filtering not supported for config entry kind=service-router")
    status, listed, _ = await http.get("/v1/config/service-defaults")
    assert (status, listed) == (200, [])
    status, text, _ = await http.put("/v1/config", {"Kind": "ingress-gateway", "Name": "web", "Listeners": []})
    assert status == 400 and "not supported" in text
    status, text, _ = await http.put("/v1/config", {"Kind": "service-intentions", "Name": "db", "Sources": []})
    assert status == 400 and "At least one source" in text
    status, text, _ = await http.call("POST", "/v1/config", entry)
    assert status == 405
    status, out, _ = await http.delete("/v1/config/service-intentions/db")
    assert (status, out) == (200, {})
    status, _, _ = await http.get("/v1/config/service-intentions/db")
    assert status == 404


async def test_a_healthy_ca_adds_no_check_and_reports_its_expiry_as_a_metric(http, agent: RunningAgent) -> None:  # noqa: ANN001
    """Consul reports the root's remaining life as consul.mesh.active-root-ca.expiry, not as a check: an
    agent with no checks of its own lists none, locally and in the catalog."""
    node = agent.agent.node_name
    status, checks, _ = await http.get("/v1/agent/checks")
    assert (status, checks) == (200, {})
    _, node_checks, _ = await http.get(f"/v1/health/node/{node}")
    assert [c["CheckID"] for c in node_checks] == ["serfHealth"]
    agent.agent.telemetry.advance(agent.agent.telemetry.clock() + 10)  # close the interval now
    _, summary, _ = await http.get("/v1/agent/metrics")
    expiry = [g for g in summary["Gauges"] if g["Name"].endswith(".mesh.active-root-ca.expiry")]
    assert len(expiry) == 1 and 9 * 365 * 86400 < expiry[0]["Value"] <= 10 * 365 * 86400 + 60


@pytest.mark.parametrize("path", ["/v1/connect/ca/roots", "/v1/connect/intentions"])
async def test_connect_disabled(path: str) -> None:
    async with async_dev_agent(connect={"enabled": False}) as running:
        import aiohttp

        async with aiohttp.ClientSession() as session, session.get(running.url + path) as resp:
            assert resp.status == 400
            assert await resp.text() == "Connect must be enabled in order to use this endpoint"


def test_agent_stops_promptly_under_asyncio_run() -> None:
    """Regression: the CA expiry check once waited with asyncio.wait_for, which (before Python 3.12)
    can swallow the cancellation that stops it, and the agent's stop hung for good."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import asyncio
        from registry.testing import async_dev_agent

        async def main():
            async with async_dev_agent(dns_port=-1) as running:
                for i in range(5):
                    await running.agent.connect.leaf.get(f"svc-{i}")
            print("STOPPED")

        asyncio.run(main())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "STOPPED" in out.stdout, out.stderr[-2000:]


@pytest.mark.parametrize("pretty", [True, False])
def test_render_flat_is_byte_identical_to_api_render(pretty: bool) -> None:
    from types import SimpleNamespace

    from registry.api.connect import render_flat
    from registry.api.http import Api

    body = {"SerialNumber": "0a:0b", "CertPEM": "-----BEGIN CERTIFICATE-----\nAB/+\n-----END", "Q": 'a"b\\c',
            "Unicode": "d\u00e9j\u00e0", "CreateIndex": 7, "Flag": True, "Nothing": None}  # fmt: skip
    api = SimpleNamespace(pretty_default=pretty)
    request = SimpleNamespace(query={})
    assert render_flat(api, request, body) == Api.render(api, request, body)  # type: ignore[arg-type]
    assert render_flat(api, request, {}) == Api.render(api, request, {})  # type: ignore[arg-type]
