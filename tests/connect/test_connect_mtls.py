"""Real TLS with certificates from a real agent: mutual TLS between two services' leaves, refusal of a
foreign CA, and a handshake loop that keeps succeeding across a live CA rotation while each side
refreshes its leaf and trust bundle through the agent's HTTP endpoints, as a proxy does."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import ssl
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from connect_helpers import Log, init_ca

from ca import certs, provider
from ca.csr import make_csr
from ca.spiffe import ServiceIdentity
from registry.testing import RunningAgent


@dataclass(frozen=True)
class Identity:
    chain_pem: str  # leaf first, then any intermediates
    key_pem: str
    roots_pem: str  # the trust bundle this side believes in


_files = itertools.count()


def _context(side: ssl._SSLMethod, me: Identity, tmp: Path) -> ssl.SSLContext:
    n = next(_files)
    chain, key = tmp / f"chain{n}.pem", tmp / f"key{n}.pem"
    chain.write_text(me.chain_pem)
    key.write_text(me.key_pem)
    ctx = ssl.SSLContext(side)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = False  # identities are SPIFFE URIs, checked below, not host names
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.load_verify_locations(cadata=me.roots_pem)
    ctx.load_cert_chain(str(chain), str(key))
    return ctx


def _uri(peer: dict) -> str:
    return next(v for k, v in peer.get("subjectAltName", ()) if k == "URI")


def handshake(server: Identity, client: Identity, tmp: Path) -> tuple[str, str]:
    """Mutual TLS over a socketpair; returns (URI the server saw, URI the client saw) or raises."""
    sctx = _context(ssl.PROTOCOL_TLS_SERVER, server, tmp)
    cctx = _context(ssl.PROTOCOL_TLS_CLIENT, client, tmp)
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    seen: dict[str, object] = {}

    def serve() -> None:
        try:
            with sctx.wrap_socket(a, server_side=True) as s:
                seen["server"] = _uri(s.getpeercert())
                s.sendall(b"ok")
        except (ssl.SSLError, OSError, StopIteration) as exc:
            seen["server_error"] = exc

    t = threading.Thread(target=serve)
    t.start()
    try:
        with cctx.wrap_socket(b, server_side=False) as c:
            client_saw = _uri(c.getpeercert())
            assert c.recv(2) == b"ok"
    finally:
        t.join(10)
        a.close()
        b.close()
    if "server_error" in seen:
        raise seen["server_error"]  # type: ignore[misc]
    return str(seen["server"]), client_saw


def identity_from_leaf(leaf: dict, roots: dict) -> Identity:
    bundle = "".join(r["RootCert"] for r in roots["Roots"])
    return Identity(leaf["CertPEM"], leaf["PrivateKeyPEM"], bundle)


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[dict, int]:
    async with session.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json(), int(resp.headers["X-Consul-Index"])


async def test_mtls_between_two_services_and_not_with_a_foreign_ca(agent: RunningAgent, tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as s:
        roots, _ = await _get(s, agent.url + "/v1/agent/connect/ca/roots")
        web_leaf, _ = await _get(s, agent.url + "/v1/agent/connect/ca/leaf/web")
        db_leaf, _ = await _get(s, agent.url + "/v1/agent/connect/ca/leaf/db")
    web, db = identity_from_leaf(web_leaf, roots), identity_from_leaf(db_leaf, roots)
    server_saw, client_saw = await asyncio.to_thread(handshake, db, web, tmp_path)
    assert (server_saw, client_saw) == (web_leaf["ServiceURI"], db_leaf["ServiceURI"])

    # Another cluster's CA: a leaf it signs for "web" is refused, both as client and as server.
    other = Log()
    foreign_state = init_ca(other, datetime.now(UTC))
    key = certs.generate_key()
    foreign_id = ServiceIdentity(foreign_state.trust_domain, "default", "dc1", "web")
    leaf = provider.sign_leaf(foreign_state, make_csr(key, foreign_id), foreign_id, datetime.now(UTC), None,
                              os.urandom)  # fmt: skip
    foreign = Identity(leaf.chain_pem, certs.private_key_to_pem(key), foreign_state.active_root.root_cert_pem)
    for server, client in ((db, foreign), (foreign, web)):
        try:
            await asyncio.to_thread(handshake, server, client, tmp_path)
        except (ssl.SSLError, OSError):
            continue
        raise AssertionError("a certificate from a foreign CA was accepted")


class Proxy:
    """Keeps a service's leaf and trust bundle fresh with blocking queries, as a sidecar does."""

    def __init__(self, session: aiohttp.ClientSession, base: str, service: str) -> None:
        self.session = session
        self.base = base
        self.service = service
        self.leaf: dict = {}
        self.roots: dict = {}
        self.leaf_changes = 0

    async def start(self) -> list[asyncio.Task[None]]:
        self.roots, ri = await _get(self.session, self.base + "/v1/agent/connect/ca/roots")
        self.leaf, li = await _get(self.session, f"{self.base}/v1/agent/connect/ca/leaf/{self.service}")
        return [asyncio.create_task(self._watch_roots(ri)), asyncio.create_task(self._watch_leaf(li))]

    async def _watch_roots(self, index: int) -> None:
        while True:
            self.roots, index = await _get(self.session, f"{self.base}/v1/agent/connect/ca/roots?index={index}&wait=10s")

    async def _watch_leaf(self, index: int) -> None:
        while True:
            leaf, new_index = await _get(
                self.session, f"{self.base}/v1/agent/connect/ca/leaf/{self.service}?index={index}&wait=10s")  # fmt: skip
            if new_index != index:
                self.leaf, index = leaf, new_index
                self.leaf_changes += 1

    def identity(self) -> Identity:
        return identity_from_leaf(self.leaf, self.roots)


async def test_handshakes_keep_working_across_a_live_rotation(agent: RunningAgent, tmp_path: Path) -> None:
    agent.agent.connect.leaf.root_change_jitter = 0.5  # Consul's 30 s window, shortened for the test
    async with aiohttp.ClientSession() as session:
        web, db = Proxy(session, agent.url, "web"), Proxy(session, agent.url, "db")
        tasks = await web.start() + await db.start()
        old_root = web.roots["ActiveRootID"]
        results: list[tuple[str, str, str]] = []

        async def loop_handshakes(stop: asyncio.Event) -> None:
            while not stop.is_set():
                # Snapshot what each side has right now: any mix of old and new leaf and bundle.
                w, d = web.identity(), db.identity()
                saw = await asyncio.to_thread(handshake, d, w, tmp_path)
                results.append((*saw, web.leaf["SerialNumber"] + "|" + db.leaf["SerialNumber"]))
                saw = await asyncio.to_thread(handshake, w, d, tmp_path)
                results.append((*saw, ""))

        stop = asyncio.Event()
        runner = asyncio.create_task(loop_handshakes(stop))
        try:
            await asyncio.sleep(0.3)
            before = len(results)
            async with session.put(agent.url + "/v1/connect/ca/configuration", json={
                    "Provider": "consul", "Config": {"PrivateKeyType": "ec", "PrivateKeyBits": 384}}) as resp:  # fmt: skip
                assert resp.status == 200, await resp.text()
            deadline = asyncio.get_running_loop().time() + 10
            while not (web.leaf_changes and db.leaf_changes and len(web.roots["Roots"]) == 2):
                assert asyncio.get_running_loop().time() < deadline, "leaves were not renewed after the rotation"
                assert not runner.done()
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # keep shaking hands on the new leaves for a while
        finally:
            stop.set()
            await asyncio.wait_for(runner, 20)  # re-raises any failed handshake
            for t in tasks:
                t.cancel()
    assert before > 0 and len(results) > before + 4
    assert all(r[:2] == (web.leaf["ServiceURI"], db.leaf["ServiceURI"]) or r[:2] == (db.leaf["ServiceURI"],
               web.leaf["ServiceURI"]) for r in results)  # fmt: skip
    new_root = web.roots["ActiveRootID"]
    assert new_root != old_root
    assert certs.certs_from_pem(web.leaf["CertPEM"])[0].issuer == certs.cert_from_pem(
        next(r["RootCert"] for r in web.roots["Roots"] if r["ID"] == new_root)).subject
    assert len({r[2] for r in results if r[2]}) >= 2  # handshakes ran with both generations of leaves
