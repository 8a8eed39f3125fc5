"""Connect under ACLs: a leaf is signed only for a service the token may write, over HTTP and over the
server's ConnectCA.Sign RPC; the CSR's one SPIFFE identity must be the service the token was checked for
(CVE-2022-40716: extra URI SANs, or another service's identity, got certificates the token could not write);
no secret appears in a refusal."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from registry.acl.resolver import StaticResolver
from registry.consensus import RPCError
from registry.testing import RunningAgent, async_dev_agent
from tests.conftest import Http

TOKENS = {"web-writer": 'service "web" { policy = "write" }', "web-reader": 'service "web" { policy = "read" }'}


@pytest.fixture
async def acl_agent() -> AsyncIterator[RunningAgent]:
    resolver = StaticResolver(TOKENS, default_policy="deny", management=("root",))
    async with async_dev_agent(acl_resolver=resolver) as running:
        yield running


def csr(uris: list[str]) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    builder = builder.add_extension(
        x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]), critical=False
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


async def sign(running: RunningAgent, token: str | None, service: str, pem: str) -> object:
    args = {"CSR": pem, "Service": service}
    if token is not None:
        args["Token"] = token
    return await running.agent.rpc.dispatch("ConnectCA.Sign", args)


async def test_leaf_over_http_needs_service_write(acl_agent: RunningAgent) -> None:
    async with aiohttp.ClientSession() as session:
        h = Http(session, acl_agent.url)
        status, body, _ = await h.get("/v1/agent/connect/ca/leaf/web", headers={"X-Consul-Token": "web-reader"})
        assert status == 403 and "lacks permission 'service:write' on \"web\"" in body
        assert "web-reader" in body  # the static resolver's accessor ID is its secret; real ones are not
        status, body, _ = await h.get("/v1/agent/connect/ca/leaf/db", headers={"X-Consul-Token": "web-writer"})
        assert status == 403
        status, body, _ = await h.get("/v1/agent/connect/ca/leaf/web", headers={"X-Consul-Token": "web-writer"})
        assert status == 200 and body["Service"] == "web" and body["ServiceURI"].endswith("/svc/web")
        # The CA roots need no token at all.
        assert (await h.get("/v1/connect/ca/roots"))[0] == 200


async def test_sign_rpc_checks_the_token_and_the_csr_identity_cve_2022_40716(acl_agent: RunningAgent) -> None:
    agent = acl_agent.agent
    td = agent.connect.ca_state().trust_domain  # type: ignore[union-attr]
    uri = f"spiffe://{td}/ns/default/dc/dc1/svc/"
    for token in (None, "web-reader", "nope"):
        with pytest.raises(RPCError) as exc:
            await sign(acl_agent, token, "web", csr([uri + "web"]))
        assert exc.value.status == 403
        assert exc.value.message == "ACL not found" if token == "nope" else "lacks permission" in exc.value.message
    # A token for web cannot get db's identity, named in the CSR or in the call.
    with pytest.raises(RPCError) as exc:
        await sign(acl_agent, "web-writer", "db", csr([uri + "db"]))
    assert exc.value.status == 403
    for uris in ([uri + "db"], [uri + "web", uri + "db"]):
        with pytest.raises(RPCError) as exc:
            await sign(acl_agent, "web-writer", "web", csr(uris))
        assert exc.value.status == 400
    reply = await sign(acl_agent, "web-writer", "web", csr([uri + "web"]))
    cert = x509.load_pem_x509_certificate(reply["CertPEM"].encode())  # type: ignore[index]
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [uri + "web"]


async def test_no_sentinel_secret_opens_anything_cve_2019_8336(acl_agent: RunningAgent) -> None:
    """Consul's anonymous token once resolved by a sentinel secret; no fixed secret (the anonymous token's
    accessor ID, "anonymous", "root" spelled otherwise, the empty Bearer) grants more than anonymous."""
    async with aiohttp.ClientSession() as session:
        h = Http(session, acl_agent.url)
        for secret in ("anonymous", "00000000-0000-0000-0000-000000000002", "ROOT", "Root", "null"):
            status, body, _ = await h.put("/v1/kv/x", raw=b"1", headers={"X-Consul-Token": secret})
            assert status == 403, secret
            assert secret.strip() not in body or secret == "00000000-0000-0000-0000-000000000002"
        status, body, _ = await h.put("/v1/kv/x", raw=b"1", headers={"Authorization": "Bearer"})
        assert status == 403 and "anonymous token" in body
