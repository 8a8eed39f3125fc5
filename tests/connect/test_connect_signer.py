"""The server-side signer: certificates that verify, every bad CSR refused with a 400 and nothing
stored, Consul's CSR rate limits, and the ConnectCA.Sign RPC over the real server-port transport."""

from __future__ import annotations

import copy
import os
from datetime import timedelta

import pytest
from connect_helpers import TRUST_DOMAIN, FakeClock, Log, init_ca
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID

from ca import certs, provider
from ca.csr import make_csr
from ca.spiffe import ServiceIdentity
from registry.connect.signer import RPC_SIGN, CAServer, CSRLimiter, RateLimited, SignError, leaf_from_wire
from registry.connect.state import StateViews


def web_uri(service: str = "web", dc: str = "dc1") -> str:
    return ServiceIdentity(TRUST_DOMAIN, "default", dc, service).uri()


def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def csr_with(key, uris: list[str], dns: list[str] = ()) -> str:  # noqa: ANN001
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns]
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=True)
    algo = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algo).public_bytes(serialization.Encoding.PEM).decode()


def bad_signature_csr() -> str:
    der = bytearray(x509.load_pem_x509_csr(make_csr(p256(), web_uri()).encode()).public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x55  # inside the signature's s integer: still DER, no longer a valid signature
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture
def server(log: Log, clock: FakeClock) -> CAServer:
    init_ca(log)
    return CAServer(lambda: log.store, StateViews(), "dc1", clock=clock)


async def test_signed_leaf_verifies_and_has_the_right_shape(server: CAServer, clock: FakeClock, openssl_verify) -> None:  # noqa: ANN001
    key = p256()
    result = await server.sign(make_csr(key, web_uri()), "web")
    state = server.ca_state()
    assert state is not None
    leaf = certs.cert_from_pem(result.cert_pem)
    roots = [r.root_cert_pem for r in state.roots]
    out = openssl_verify(result.cert_pem, roots, at=clock.now + timedelta(hours=1), purpose="sslclient")
    assert out.returncode == 0, out.stderr
    assert openssl_verify(result.cert_pem, roots, at=clock.now, purpose="sslserver").returncode == 0
    assert certs.spiffe_uris(leaf) == [web_uri()]
    assert leaf.not_valid_before_utc == clock.now - timedelta(minutes=1)
    assert leaf.not_valid_after_utc == clock.now + timedelta(hours=72)
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ski = leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    assert ski == certs.key_id(key) and certs.colon_hex(aki) == state.active_root.signing_key_id
    # The certificate is for the agent's key: only the CSR crossed the wire, never a private key.
    assert certs.key_id(leaf.public_key()) == certs.key_id(key)
    assert result.serial_colon == certs.serial_colon(leaf.serial_number) and leaf.serial_number.bit_length() >= 120
    # Random serials: two certificates never share one.
    again = await server.sign(make_csr(p256(), web_uri()), "web")
    assert again.serial != result.serial
    # After the leaf's lifetime openssl refuses it.
    assert openssl_verify(result.cert_pem, roots, at=clock.now + timedelta(hours=73)).returncode != 0


BAD_CSRS = {
    "wrong signature": (bad_signature_csr, "web", "CSR signature is invalid"),
    "no URI": (lambda: csr_with(p256(), [], ["web.service.consul"]), "web", "invalid number of URIs: 0"),
    "no SAN at all": (lambda: csr_with(p256(), []), "web", "invalid number of URIs: 0"),
    "two URIs": (lambda: csr_with(p256(), [web_uri(), web_uri("db")]), "web", "invalid number of URIs: 2"),
    "wrong service": (lambda: make_csr(p256(), web_uri("db")), "web", "does not match the requested identity"),
    "wrong datacenter": (lambda: make_csr(p256(), web_uri(dc="dc9")), "web", "different datacenter"),
    "foreign trust domain": (
        lambda: csr_with(p256(), ["spiffe://99999999-2222-4333-8444-555555555555.consul/ns/default/dc/dc1/svc/web"]),
        "web", "different trust domain"),
    "non-canonical URI": (lambda: csr_with(p256(), [web_uri() + "/"]), "web", "not a valid SPIFFE ID"),
    "wrong key type": (lambda: csr_with(ed25519.Ed25519PrivateKey.generate(), [web_uri()]), "web", "key type"),
    "DNS name smuggled in": (lambda: csr_with(p256(), [web_uri()], ["server.dc1.consul"]), "web", "DNS name"),
    "garbage PEM": (lambda: "-----BEGIN CERTIFICATE REQUEST-----\nnot base64 at all\n-----END CERTIFICATE REQUEST-----\n",
                    "web", "Failed to parse CSR"),
    "not PEM": (lambda: "hello", "web", "Failed to parse CSR"),
    "a certificate, not a CSR": (None, "web", "Failed to parse CSR"),
    "bad service name": (lambda: make_csr(p256(), web_uri()), "we b", "Invalid service name"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_CSRS))
async def test_bad_csr_is_a_400_and_nothing_is_stored(server: CAServer, log: Log, case: str) -> None:
    make, service, words = BAD_CSRS[case]
    if make is None:
        state = server.ca_state()
        assert state is not None
        pem = state.active_root.root_cert_pem
    else:
        pem = make()
    index, tables = log.store.index, copy.deepcopy(log.store.tables)
    with pytest.raises(SignError) as err:
        await server.sign(pem, service)
    assert err.value.status == 400 and words in err.value.message, err.value.message
    assert server.signed == 0
    assert (log.store.index, log.store.tables) == (index, tables)


async def test_uninitialized_and_expired_ca_are_500s(log: Log, clock: FakeClock) -> None:
    server = CAServer(lambda: log.store, StateViews(), "dc1", clock=clock)
    with pytest.raises(SignError) as err:
        await server.sign(make_csr(p256(), web_uri()), "web")
    assert (err.value.status, err.value.message) == (500, "CA has not finished initializing")
    init_ca(log, config=provider.CAConfig(leaf_cert_ttl="1h", root_cert_ttl="8h", intermediate_cert_ttl="3h"))
    clock.advance(hours=9)
    with pytest.raises(SignError) as err:
        await server.sign(make_csr(p256(), web_uri()), "web")
    assert err.value.status == 500 and "root expired" in err.value.message


class Mono:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def test_csr_rate_limit_refuses_with_retry_hint() -> None:
    mono = Mono()
    limiter = CSRLimiter(2.0, 0, clock=mono, wait_limit=0.1)
    await limiter.acquire()
    await limiter.acquire()  # one second's worth of burst
    with pytest.raises(RateLimited) as err:
        await limiter.acquire()  # the next token is 0.5 s away: more than the wait limit
    assert err.value.status == 429 and err.value.message == "Rate limit reached, try again later"
    assert err.value.retry_after == pytest.approx(0.5) and err.value.retry_after_header == "1"
    mono.t += 0.45  # 0.9 of a token: the caller queues for the rest (50 ms) and takes it
    await limiter.acquire()
    with pytest.raises(RateLimited) as err:
        await limiter.acquire()  # behind the queued one: 1.1 tokens short
    assert err.value.retry_after == pytest.approx(0.55)
    mono.t += 2.0  # a quiet spell refills the bucket
    await limiter.acquire()


async def test_rate_limited_signer_answers_429_and_recovers(log: Log, clock: FakeClock) -> None:
    init_ca(log, config=provider.CAConfig(csr_max_per_second=1.0))
    mono = Mono()
    server = CAServer(lambda: log.store, StateViews(), "dc1", clock=clock, monotonic=mono)
    await server.sign(make_csr(p256(), web_uri()), "web")
    with pytest.raises(RateLimited) as err:
        await server.sign(make_csr(p256(), web_uri()), "web")
    assert err.value.retry_after_header == "1"
    mono.t += 1.0
    await server.sign(make_csr(p256(), web_uri()), "web")
    assert server.signed == 2


async def test_csr_max_concurrent_applies_only_without_a_rate() -> None:
    limiter = CSRLimiter(0.0, 1, wait_limit=0.05)
    await limiter.acquire()
    with pytest.raises(RateLimited):
        await limiter.acquire()
    limiter.release()
    await limiter.acquire()
    assert CSRLimiter(5.0, 1).max_concurrent == 0  # Consul ignores CSRMaxConcurrent when a rate is set
    assert CSRLimiter(0.0, 0).unlimited


async def test_sign_rpc_over_the_server_port(server: CAServer, log: Log) -> None:
    """ConnectCA.Sign through the real RPC transport: a good CSR comes back as a certificate, a bad one
    as a 400 error to the caller, and the store is untouched either way."""
    from registry.consensus import RPCError
    from registry.raft.listener import ServerListener
    from registry.raft.transport import RPCClient

    async def on_rpc(method: str, args: object, caller: object = None) -> object:
        try:
            return await server.handle_rpc(method, args)
        except SignError as exc:
            raise RPCError(exc.message, exc.status) from None

    listener = ServerListener(lambda msg: None, on_rpc, None)
    host, port = await listener.start("127.0.0.1", 0)
    client = RPCClient(f"{host}:{port}")
    index = log.store.index
    try:
        reply = await client.call(RPC_SIGN, {"CSR": make_csr(p256(), web_uri()), "Service": "web"}, timeout=10)
        leaf = leaf_from_wire(reply)
        assert leaf.uri == web_uri() and certs.spiffe_uris(certs.cert_from_pem(leaf.cert_pem)) == [web_uri()]
        with pytest.raises(RPCError) as err:
            await client.call(RPC_SIGN, {"CSR": make_csr(p256(), web_uri("db")), "Service": "web"}, timeout=10)
        assert err.value.status == 400 and "does not match" in err.value.message
        with pytest.raises(RPCError) as err:
            await client.call(RPC_SIGN, {"CSR": 42}, timeout=10)
        assert err.value.status == 400
    finally:
        await client.close()
        await listener.close()
    assert log.store.index == index


async def test_prepared_signer_must_be_the_active_root(server: CAServer, log: Log) -> None:
    """The signer caches the parsed root key; handing sign_leaf another root's material is refused."""
    from datetime import UTC, datetime

    state = server.ca_state()
    assert state is not None
    other = provider.initialize("99999999-2222-4333-8444-555555555555", provider.CAConfig(), datetime.now(UTC),
                                os.urandom).active_root  # fmt: skip
    wrong = certs.LeafTemplate(certs.private_key_from_pem(other.private_key_pem), other.certificate())
    with pytest.raises(ValueError, match="not the active root"):
        provider.check_signer(state, wrong)
    identity = ServiceIdentity(TRUST_DOMAIN, "default", "dc1", "web")
    with pytest.raises(ValueError, match="not the active root"):
        provider.sign_leaf(state, make_csr(p256(), identity), identity, datetime.now(UTC), None, os.urandom,
                           signer=wrong)  # fmt: skip
    # The real cache is checked in full and gives certificates that chain to the root.
    result = await server.sign(make_csr(p256(), identity), "web")
    aki = certs.cert_from_pem(result.cert_pem).extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert certs.colon_hex(aki.value.key_identifier) == state.active_root.signing_key_id
