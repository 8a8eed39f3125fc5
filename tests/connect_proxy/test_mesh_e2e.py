"""Issue 10's end-to-end proof of the mesh, with real processes: ``proconsul connect proxy`` sidecars
against a dev agent, ``web`` -> web's sidecar -> an ``api`` sidecar -> ``api`` (v1 x2, v2 x1).

HTTP mode (``test_the_mesh_end_to_end_over_http``), one run of GETs kept going by a load generator
while the mesh is changed under it:

- a splitter 90/10 between subsets v1/v2: 10,000 requests land within 1 point of 90/10;
- a router sends ``/admin`` to v2; an L7 intention denies ``DELETE``: 403 ``RBAC: access denied``
  and the app never sees it;
- an intention flipped live (deny, then the L7 permissions again): every request started 1 s after
  each write is refused, then allowed;
- the CA root rotated live (``PUT /v1/connect/ca/configuration``, a new key and root): no request
  fails, every sidecar loads a leaf of the new root and the api sidecars serve it;
- an instance answering 503 is ejected within 1 s (passive health, consecutive 5xx) and gets no
  request until its ejection ends, then gets traffic again;
- an instance killed mid-run (its sidecar, SIGKILL): GETs see no failure (the route retries on reset
  and connect failure, the dead instance is ejected).
Outside the deny window, not one GET of the run fails.

L4 (``test_tcp_connections_split_90_10_by_instance_weights``): 2,000 TCP connections split within 2
points of 90/10. Consul refuses a ``service-splitter`` on a tcp service ("does not permit advanced
routing or splitting behavior"; the test checks ours does too), so the Consul way to weigh TCP
connections between versions is the catalog's ``Service.Weights``, which Consul gives Envoy as each
endpoint's load-balancing weight and our sidecar applies per connection.

Each test prints what it measured (run with ``-s`` to see it).
"""

from __future__ import annotations

import asyncio
import signal
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import TRAILER, EchoApp, roundtrip, wait_for
from cryptography import x509
from test_sidecar_http import VersionApp
from test_sidecar_l4 import Sidecar, sidecars  # noqa: F401 - the fixture

from connect_proxy import tls
from registry.testing.agent import free_port

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("agent")]

Http = Callable[..., Awaitable[tuple[int, Any]]]

EJECTION_S = 2.0
PASSIVE = {"MaxFailures": 3, "Interval": "10s", "BaseEjectionTime": "2s", "MaxEjectionPercent": 50}
L7_INTENTIONS = {"Kind": "service-intentions", "Name": "api", "Sources": [{"Name": "web", "Permissions": [
    {"Action": "deny", "HTTP": {"Methods": ["DELETE"]}},
    {"Action": "allow", "HTTP": {"PathPrefix": "/"}}]}]}  # fmt: skip
DENY_ALL = {"Kind": "service-intentions", "Name": "api", "Sources": [{"Name": "web", "Action": "deny"}]}
DENIED = "RBAC: access denied"


async def _put(http: Http, body: dict[str, Any], path: str = "/v1/config") -> None:
    status, text = await http("PUT", path, body)
    assert status == 200, text


async def _register(http: Http, sid: str, service: str, port: int, meta: dict[str, str],
                    weights: dict[str, int] | None = None) -> None:  # fmt: skip
    body: dict[str, Any] = {
        "Kind": "connect-proxy", "ID": sid, "Name": f"{service}-sidecar-proxy", "Address": "127.0.0.1",
        "Port": port, "Meta": meta, "Proxy": {"DestinationServiceName": service, "LocalServicePort": 1},
        "Check": {"TTL": "60s", "Status": "passing"}}  # fmt: skip
    if weights is not None:
        body["Weights"] = weights
    await _put(http, body, "/v1/agent/service/register")


class MeshApp(VersionApp):
    """One ``api`` instance: answers ``status`` (200, or 503 when told), names itself and its version,
    and keeps the time of every request it receives (started and stopped as ``VersionApp``)."""

    def __init__(self, name: str, version: str) -> None:
        super().__init__(version)
        self.name = name
        self.status = 200
        self.arrivals: list[float] = []
        self.answered_503 = 0

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.arrivals.append(time.monotonic())
        self.seen[(request.method, request.path)] += 1
        await request.read()
        self.answered_503 += self.status == 503
        return web.Response(status=self.status, text=f"{self.name} {request.method} {request.path}",
                            headers={"x-version": self.version, "x-instance": self.name})  # fmt: skip


@dataclass(frozen=True, slots=True)
class Rec:
    start: float
    end: float
    status: int  # 0: the client saw no response (reset, timeout)
    version: str
    instance: str
    body: str


class Load:
    """GETs kept going by ``workers`` keep-alive clients until stopped; every outcome is recorded."""

    def __init__(self, base: str, workers: int) -> None:
        self.base, self.workers = base, workers
        self.records: list[Rec] = []
        self._n = 0
        self._stop = False
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    async def _worker(self, session: aiohttp.ClientSession) -> None:
        while not self._stop:
            self._n += 1
            t0 = time.monotonic()
            try:
                async with session.get(f"{self.base}/items/{self._n}") as resp:
                    body = await resp.text()
                    rec = Rec(t0, time.monotonic(), resp.status, resp.headers.get("x-version", ""),
                              resp.headers.get("x-instance", ""), body[:200])  # fmt: skip
            except (aiohttp.ClientError, TimeoutError) as exc:
                rec = Rec(t0, time.monotonic(), 0, "", "", repr(exc))
            self.records.append(rec)

    def start(self) -> None:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.workers),
                                              timeout=aiohttp.ClientTimeout(total=10))  # fmt: skip
        self._tasks = [asyncio.create_task(self._worker(self._session)) for _ in range(self.workers)]

    async def stop(self) -> None:
        self._stop = True
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def wait_count(self, n: int, timeout: float) -> None:
        await wait_for(lambda: len(self.records) >= n, timeout, f"{n} requests")

    def started(self, t0: float, t1: float = float("inf")) -> list[Rec]:
        return [r for r in self.records if t0 <= r.start < t1]


def _failures(records: list[Rec]) -> list[Rec]:
    return [r for r in records if r.status != 200]


async def _served_leaf(port: int, http: Http) -> x509.Certificate:
    """The leaf an api sidecar's public listener presents, fetched with web's own leaf and the roots
    (a full mutual TLS handshake, so the sidecar also accepted a leaf of the new root)."""
    status, leaf = await http("GET", "/v1/agent/connect/ca/leaf/web")
    assert status == 200, leaf
    status, roots = await http("GET", "/v1/agent/connect/ca/roots")
    assert status == 200, roots
    ctx = tls.client_context(leaf["CertPEM"], leaf["PrivateKeyPEM"], [r["RootCert"] for r in roots["Roots"]])
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="api")
    try:
        sslobj = writer.get_extra_info("ssl_object")
        assert isinstance(sslobj, ssl.SSLObject)
        der = sslobj.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der)
    finally:
        writer.close()


def _gap_after(arrivals: list[float], since: float, min_gap: float) -> tuple[float, float]:
    """(last arrival before the first silence of at least ``min_gap`` s after ``since``, first after it)."""
    times = [t for t in arrivals if t >= since]
    for a, b in zip(times, times[1:], strict=False):
        if b - a >= min_gap:
            return a, b
    raise AssertionError(f"no silence of {min_gap} s in {len(times)} arrivals after the 503s began")


async def test_the_mesh_end_to_end_over_http(agent, http, sidecars) -> None:  # noqa: ANN001, F811
    await _put(http, {"Kind": "service-defaults", "Name": "api", "Protocol": "http"})
    await _put(http, {"Kind": "service-defaults", "Name": "web",
                      "UpstreamConfig": {"Defaults": {"PassiveHealthCheck": PASSIVE}}})  # fmt: skip
    await _put(http, {"Kind": "service-resolver", "Name": "api", "DefaultSubset": "v1", "Subsets": {
        "v1": {"Filter": "Service.Meta.version == v1"}, "v2": {"Filter": "Service.Meta.version == v2"}}})  # fmt: skip
    await _put(http, {"Kind": "service-splitter", "Name": "api", "Splits": [
        {"Weight": 90, "ServiceSubset": "v1"}, {"Weight": 10, "ServiceSubset": "v2"}]})  # fmt: skip
    await _put(http, {"Kind": "service-router", "Name": "api", "Routes": [
        {"Match": {"HTTP": {"PathPrefix": "/admin"}}, "Destination": {"ServiceSubset": "v2"}},
        # Idempotent reads are retried on another instance when one resets, refuses or answers 5xx.
        {"Match": {"HTTP": {"PathPrefix": "/", "Methods": ["GET"]}},
         "Destination": {"NumRetries": 3, "RetryOnConnectFailure": True, "RetryOn": ["reset", "5xx"]}}]})  # fmt: skip
    await _put(http, L7_INTENTIONS)

    apps = {name: await MeshApp(name, name[:2]).start() for name in ("v1a", "v1b", "v2")}
    load: Load | None = None
    try:
        api_sc: dict[str, Sidecar] = {}
        api_ports: dict[str, int] = {}
        for name, app in apps.items():
            port = api_ports[name] = free_port()
            api_sc[name] = await sidecars("-service", "api", "-service-addr", f"127.0.0.1:{app.port}",
                                          "-listen", f"127.0.0.1:{port}", "-http-addr", agent.url)  # fmt: skip
            await _register(http, f"api-{name}", "api", port, {"version": app.version})
        for sc in api_sc.values():
            await wait_for(lambda sc=sc: any("public listener protocol" in ln and "http" in ln for ln in sc.lines),
                           15, "the api sidecar in HTTP mode")  # fmt: skip
        up = free_port()
        web_sc = await sidecars("-service", "web", "-upstream", f"api:{up}", "-http-addr", agent.url)
        base = f"http://127.0.0.1:{up}"

        async def every_instance_answers() -> bool:
            try:
                async with aiohttp.ClientSession() as s:
                    for _ in range(10):
                        async with s.get(base + "/warm") as resp:
                            await resp.read()
            except aiohttp.ClientError:
                return False
            return all(app.arrivals for app in apps.values())

        await wait_for(every_instance_answers, 20, "every api instance reached through the mesh")
        sidecar_procs = [web_sc, *api_sc.values()]

        load = Load(base, workers=8)
        load.start()
        t_run = time.monotonic()

        # 1. The split: 10,000 requests. The router draws a uniform number per request (as Envoy's
        # weighted clusters do), so the v2 share is binomial: sd 0.3 points over 10,000; 1 point is
        # 3.3 sd, a false failure about once in 1,100 runs.
        await load.wait_count(10_000, 60)
        split = load.records[:10_000]
        t_split = time.monotonic() - t_run
        assert _failures(split) == []
        versions = Counter(r.version for r in split)
        v2_pct = versions["v2"] / 100
        assert abs(v2_pct - 10.0) <= 1.0 and versions["v1"] + versions["v2"] == 10_000, versions

        # 2. The router sends /admin to v2; DELETE is denied before the app.
        async with aiohttp.ClientSession() as s:
            for _ in range(20):
                async with s.get(base + "/admin/panel") as resp:
                    assert resp.status == 200 and resp.headers["x-version"] == "v2"
            async with s.delete(base + "/items/1") as resp:
                assert resp.status == 403 and await resp.text() == DENIED
        assert not any(m == "DELETE" for app in apps.values() for m, _ in app.seen)
        assert sum([await sc.metric("proconsul_proxy_authz_total", result="deny") for sc in api_sc.values()]) == 1

        # 3. An intention flipped live: deny, then the L7 permissions again.
        t_deny = time.monotonic()
        await _put(http, DENY_ALL)
        await asyncio.sleep(1.6)
        t_allow = time.monotonic()
        await _put(http, L7_INTENTIONS)
        await asyncio.sleep(1.6)
        t_flip_end = time.monotonic()
        flip = load.started(t_deny, t_flip_end)
        assert {r.status for r in flip} <= {200, 403}, Counter(r.status for r in flip)
        # Refused: every request made 1 s after the deny write and answered before the allow write began
        # (one made just before that write may reach the api sidecar after the allow has).
        refused = [r for r in load.started(t_deny + 1.0, t_allow) if r.end < t_allow]
        assert refused and all(r.status == 403 and r.body == DENIED for r in refused), [
            (round(r.start - t_allow, 4), round(r.end - t_allow, 4), r.status, r.instance) for r in refused
            if r.status != 403]  # fmt: skip
        allowed_again = load.started(t_allow + 1.0, t_flip_end)
        assert allowed_again and _failures(allowed_again) == []
        last_allowed = max((r.start for r in load.started(t_deny, t_allow) if r.status == 200 and r.end < t_allow),
                           default=t_deny)  # fmt: skip
        last_refused = max((r.start for r in load.started(t_allow, t_flip_end) if r.status == 403), default=t_allow)
        first_refused = min(r.end for r in flip if r.status == 403)
        first_allowed = min(r.end for r in load.started(t_allow, t_flip_end) if r.status == 200)

        # 4. The CA root rotated live: a new key and root.
        status, roots = await http("GET", "/v1/agent/connect/ca/roots")
        assert status == 200, roots
        old_root = roots["ActiveRootID"]
        marks = [len(sc.lines) for sc in sidecar_procs]
        t_rotate = time.monotonic()
        await _put(http, {"Provider": "consul", "Config": {"PrivateKeyType": "ec", "PrivateKeyBits": 384}},
                   "/v1/connect/ca/configuration")  # fmt: skip
        await wait_for(lambda: all(any("certificates updated (leaf)" in ln for ln in sc.lines[m:])
                                   for sc, m in zip(sidecar_procs, marks, strict=True)),
                       10, "every sidecar to load a leaf of the new root")  # fmt: skip
        t_rotated = time.monotonic()
        status, roots = await http("GET", "/v1/agent/connect/ca/roots")
        assert status == 200 and roots["ActiveRootID"] != old_root, roots
        new_root = x509.load_pem_x509_certificate(
            next(r["RootCert"] for r in roots["Roots"] if r["ID"] == roots["ActiveRootID"]).encode())
        for name, port in api_ports.items():
            served = await _served_leaf(port, http)
            served.verify_directly_issued_by(new_root)  # raises unless the new root signed it
            assert served.subject != new_root.subject, name
        # Beyond the idle connections the web sidecar holds: 64 at once make it dial new ones, with its
        # new leaf, to sidecars serving theirs.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as s:

            async def burst(i: int) -> int:
                async with s.get(f"{base}/burst/{i}") as resp:
                    await resp.read()
                    return resp.status

            assert Counter(await asyncio.gather(*(burst(i) for i in range(256)))) == {200: 256}
        await asyncio.sleep(0.3)
        assert _failures(load.started(t_rotate, time.monotonic())) == []

        # 5. An instance answering 503: ejected within 1 s, no request until the ejection ends.
        v1b = apps["v1b"]
        ejections = await web_sc.metric("proconsul_proxy_upstream_ejections_total")
        t_503 = time.monotonic()
        v1b.status = 503

        async def ejected() -> bool:
            return await web_sc.metric("proconsul_proxy_upstream_ejections_total") > ejections

        await wait_for(ejected, 1.5, "the instance answering 503 to be ejected")
        v1b.status = 200  # healthy again while ejected: the traffic it gets back must stay with it
        await wait_for(lambda: v1b.arrivals[-1] > t_503 + EJECTION_S, EJECTION_S + 3, "traffic back to the instance")
        await asyncio.sleep(0.3)
        last_before, first_after = _gap_after(v1b.arrivals, t_503, 1.0)
        ejected_after = last_before - t_503
        silence = first_after - last_before
        assert v1b.answered_503 >= PASSIVE["MaxFailures"], v1b.answered_503
        assert ejected_after < 1.0, f"the instance still got requests {ejected_after:.3f} s after its first 503"
        assert silence >= EJECTION_S - 0.25, f"traffic came back {silence:.3f} s into a {EJECTION_S} s ejection"
        assert silence < EJECTION_S + 1.0, f"no traffic for {silence:.3f} s after a {EJECTION_S} s ejection"
        assert len([t for t in v1b.arrivals if t > first_after]) >= 5  # it takes its share again
        assert _failures(load.started(t_503, time.monotonic())) == []  # each 503 was retried on v1a

        # 6. An instance killed mid-run: v1a's sidecar, SIGKILL, under load.
        retries = await web_sc.metric("proconsul_proxy_http_retries_total")
        ejections = await web_sc.metric("proconsul_proxy_upstream_ejections_total")
        t_kill = time.monotonic()
        api_sc["v1a"].proc.send_signal(signal.SIGKILL)
        await api_sc["v1a"].proc.wait()
        await asyncio.sleep(EJECTION_S + 1.0)  # the dead instance is ejected, comes back for a try, again
        after_kill = load.started(t_kill - 0.5, time.monotonic())
        assert after_kill and _failures(after_kill) == [], Counter((r.status, r.body[:80]) for r in _failures(after_kill))
        assert await web_sc.metric("proconsul_proxy_upstream_ejections_total") > ejections
        kill_retries = await web_sc.metric("proconsul_proxy_http_retries_total") - retries
        assert kill_retries >= 1
        await load.stop()

        # Outside the deny window (answered before the deny write began, or made 1 s after the allow
        # write), not one GET of the whole run failed. A request in flight when the deny write began may
        # be refused: the api sidecar decides when it arrives.
        outside = [r for r in load.records if r.end < t_deny or r.start >= t_allow + 1.0]
        assert _failures(outside) == [], [(round(r.start - t_deny, 4), round(r.end - t_deny, 4), r.status, r.body[:80])
                                          for r in _failures(outside)]  # fmt: skip
        elapsed = time.monotonic() - t_run
        print(f"\nmesh e2e: {len(load.records)} GETs in {elapsed:.1f} s ({len(load.records) / elapsed:.0f}/s); "
              f"split v1/v2 {100 - v2_pct:.2f}/{v2_pct:.2f} over 10,000 in {t_split:.1f} s; "
              f"flip: first 403 answered {first_refused - t_deny:.3f} s after the deny write began, last request "
              f"let through started {last_allowed - t_deny:.3f} s after it; first 200 again {first_allowed - t_allow:.3f} s "
              f"after the allow write began, last 403 started {last_refused - t_allow:.3f} s after it; "
              f"{len(refused)} refused; CA rotation: every sidecar on the new leaf {t_rotated - t_rotate:.3f} s "
              f"after the write, 0 failures; 503 instance: last request {ejected_after:.3f} s after the first 503, "
              f"then none for {silence:.3f} s (ejection {EJECTION_S} s), {v1b.answered_503} 503s answered; kill: {len(after_kill)} GETs, 0 failures, "
              f"{kill_retries:.0f} retries; {len(outside)} GETs outside the deny window, 0 failures")  # fmt: skip
    finally:
        if load is not None:
            await load.stop()
        for app in apps.values():
            await app.stop()


async def test_tcp_connections_split_90_10_by_instance_weights(agent, http, sidecars) -> None:  # noqa: ANN001, F811
    await _put(http, {"Kind": "service-resolver", "Name": "db", "DefaultSubset": "v1", "Subsets": {
        "v1": {"Filter": "Service.Meta.version == v1"}, "v2": {"Filter": "Service.Meta.version == v2"}}})  # fmt: skip
    status, text = await http("PUT", "/v1/config", {"Kind": "service-splitter", "Name": "db", "Splits": [
        {"Weight": 90, "ServiceSubset": "v1"}, {"Weight": 10, "ServiceSubset": "v2"}]})  # fmt: skip
    assert status == 400 and "does not permit advanced routing or splitting behavior" in str(text), (status, text)
    status, text = await http("DELETE", "/v1/config/service-resolver/db")
    assert status == 200, text

    apps = {name: await EchoApp().start() for name in ("v1a", "v1b", "v2")}
    weights = {"v1a": 45, "v1b": 45, "v2": 10}
    try:
        for name, app in apps.items():
            port = free_port()
            await sidecars("-service", "db", "-service-addr", f"127.0.0.1:{app.port}", "-listen", f"127.0.0.1:{port}",
                           "-http-addr", agent.url)  # fmt: skip
            await _register(http, f"db-{name}", "db", port, {"version": name[:2]},
                            {"Passing": weights[name], "Warning": 1})  # fmt: skip
        up = free_port()
        await sidecars("-service", "web", "-upstream", f"db:{up}", "-http-addr", agent.url)

        async def all_reached() -> bool:
            if await roundtrip(up, b"warm", timeout=5) != b"warm" + TRAILER:
                return False
            return all(a.connections for a in apps.values())

        await wait_for(all_reached, 20, "every db instance reached")
        before = {name: a.connections for name, a in apps.items()}
        sem = asyncio.Semaphore(32)
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        async def one(i: int) -> bool:
            async with sem:
                payload = b"conn-%d" % i
                return await roundtrip(up, payload) == payload + TRAILER

        results = await asyncio.gather(*(one(i) for i in range(2000)))
        elapsed = loop.time() - t0
        assert all(results), f"{results.count(False)} of 2000 connections failed"
        got = {name: a.connections - before[name] for name, a in apps.items()}
        assert sum(got.values()) == 2000, got
        v2_pct = got["v2"] / 20
        assert abs(v2_pct - 10.0) <= 2.0, got
        print(f"\nL4 split by weights: {got} -> v1/v2 {100 - v2_pct:.2f}/{v2_pct:.2f} over 2,000 connections "
              f"in {elapsed:.1f} s ({2000 / elapsed:.0f}/s)")  # fmt: skip
    finally:
        for app in apps.values():
            await app.stop()
