"""Real TLS: Python ssl handshakes between leaves issued by the provider, over a socketpair.

These use the real clock (OpenSSL checks validity against it), unlike the fake-clock tests.
"""

from __future__ import annotations

import random
import socket
import ssl
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ca import certs
from ca import provider as p
from ca.csr import make_csr
from ca.spiffe import ServiceIdentity

CLUSTER = "7f42f496-fbc7-8692-05ed-334aa5340c1e"
FOREIGN_CLUSTER = "0badc0de-0000-4000-8000-000000000001"


@dataclass
class Party:
    chain_pem: str
    key_pem: str
    trust_pem: str


@dataclass
class Outcome:
    server_peer: dict = field(default_factory=dict)  # type: ignore[type-arg]
    client_peer: dict = field(default_factory=dict)  # type: ignore[type-arg]
    server_error: BaseException | None = None
    client_error: BaseException | None = None
    payload: bytes = b""

    @property
    def ok(self) -> bool:
        return self.server_error is None and self.client_error is None and self.payload == b"hello"


def _context(side: int, party: Party, tmp: Path, name: str) -> ssl.SSLContext:
    chain, key, trust = tmp / f"{name}-chain.pem", tmp / f"{name}-key.pem", tmp / f"{name}-trust.pem"
    chain.write_text(party.chain_pem)
    key.write_text(party.key_pem)
    trust.write_text(party.trust_pem)
    ctx = ssl.SSLContext(side)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    # SPIFFE identities are URIs, not host names: the URI SAN is checked by the caller (here, the test).
    ctx.check_hostname = False
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.load_verify_locations(cafile=str(trust))
    ctx.load_cert_chain(str(chain), str(key))
    return ctx


def handshake(tmp: Path, server: Party, client: Party) -> Outcome:
    sctx = _context(ssl.PROTOCOL_TLS_SERVER, server, tmp, "server")
    cctx = _context(ssl.PROTOCOL_TLS_CLIENT, client, tmp, "client")
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    out = Outcome()

    def serve() -> None:
        try:
            with sctx.wrap_socket(a, server_side=True) as s:
                out.server_peer = s.getpeercert() or {}
                s.sendall(b"hello")
        except (ssl.SSLError, OSError) as err:
            out.server_error = err
        finally:
            a.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with cctx.wrap_socket(b) as c:
            out.client_peer = c.getpeercert() or {}
            # Under TLS 1.3 the server judges the client certificate after the client's handshake
            # returns, so a refusal shows up here, on the first read.
            out.payload = c.recv(5)
    except (ssl.SSLError, OSError) as err:
        out.client_error = err
    finally:
        b.close()
    t.join(10)
    assert not t.is_alive()
    return out


def uri_sans(peer: dict) -> list[str]:  # type: ignore[type-arg]
    return [v for k, v in peer.get("subjectAltName", ()) if k == "URI"]


def issue(state: p.CAState, service: str, now: datetime, rng: random.Random) -> tuple[p.LeafResult, str]:
    ident = ServiceIdentity(state.trust_domain, "default", "dc1", service)
    key = certs.generate_key()
    result = p.sign_leaf(state, make_csr(key, ident), ident, now, None, rng.randbytes)
    return result, certs.private_key_to_pem(key)


@pytest.fixture
def real_now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def ca(real_now: datetime) -> p.CAState:
    return p.initialize(CLUSTER, p.CAConfig(), real_now, random.Random(1).randbytes)


def party(state: p.CAState, leaf: tuple[p.LeafResult, str], trust: str | None = None) -> Party:
    return Party(leaf[0].chain_pem, leaf[1], trust if trust is not None else p.roots_pem(state))


def test_mtls_between_leaves_of_one_trust_domain(tmp_path: Path, ca: p.CAState, real_now: datetime) -> None:
    r = random.Random(2)
    web, db = issue(ca, "web", real_now, r), issue(ca, "db", real_now, r)
    out = handshake(tmp_path, server=party(ca, db), client=party(ca, web))
    assert out.ok, out
    assert uri_sans(out.server_peer) == [web[0].uri]
    assert uri_sans(out.client_peer) == [db[0].uri]


def test_mtls_refuses_client_from_foreign_ca(tmp_path: Path, ca: p.CAState, real_now: datetime) -> None:
    r = random.Random(3)
    foreign = p.initialize(FOREIGN_CLUSTER, p.CAConfig(), real_now, r.randbytes)
    db = issue(ca, "db", real_now, r)
    intruder = issue(foreign, "web", real_now, r)
    out = handshake(tmp_path, server=party(ca, db), client=party(foreign, intruder, p.roots_pem(ca)))
    assert not out.ok
    assert isinstance(out.server_error, ssl.SSLError)
    assert "certificate verify failed" in str(out.server_error)


def test_mtls_refuses_server_from_foreign_ca(tmp_path: Path, ca: p.CAState, real_now: datetime) -> None:
    r = random.Random(4)
    foreign = p.initialize(FOREIGN_CLUSTER, p.CAConfig(), real_now, r.randbytes)
    web = issue(ca, "web", real_now, r)
    impostor = issue(foreign, "db", real_now, r)
    out = handshake(tmp_path, server=party(foreign, impostor, p.roots_pem(ca)), client=party(ca, web))
    assert not out.ok
    assert isinstance(out.client_error, ssl.SSLError)
    assert "certificate verify failed" in str(out.client_error)


def test_mtls_across_a_rotation(tmp_path: Path, ca: p.CAState, real_now: datetime) -> None:
    r = random.Random(5)
    old_web = issue(ca, "web", real_now, r)
    rotated = p.rotate(ca, p.CAConfig(), real_now, r.randbytes)
    new_db = issue(rotated, "db", real_now, r)
    old_root_only = ca.active_root.root_cert_pem

    # A peer that has not heard of the rotation yet (trusts only the OLD root) accepts a new leaf,
    # because the new leaf's chain carries the cross-signed intermediate.
    out = handshake(tmp_path, server=party(rotated, new_db), client=party(ca, old_web, old_root_only))
    assert out.ok, out
    assert uri_sans(out.client_peer) == [new_db[0].uri]
    # Control: the same leaf without the cross-signed intermediate is refused by that peer.
    bare = Party(new_db[0].cert_pem, new_db[1], p.roots_pem(rotated))
    out = handshake(tmp_path, server=bare, client=party(ca, old_web, old_root_only))
    assert isinstance(out.client_error, ssl.SSLError)
    assert "certificate verify failed" in str(out.client_error)

    # A peer that already trusts the new roots list accepts the old leaf while the old root is in it.
    out = handshake(tmp_path, server=party(ca, old_web, p.roots_pem(rotated)), client=party(rotated, new_db))
    assert out.ok, out

    # Once the old root is pruned from the trust set, an old leaf is refused.
    only_new = rotated.active_root.root_cert_pem
    out = handshake(tmp_path, server=party(rotated, new_db, only_new), client=party(ca, old_web, only_new))
    assert not out.ok
    assert isinstance(out.server_error, ssl.SSLError)
    assert "certificate verify failed" in str(out.server_error)
