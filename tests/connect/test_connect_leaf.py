"""The agent's leaf cache with a fake clock: renewal between 60% and 90% of the lifetime, blocking
fetches, revalidation, jittered and rate-limited renewal after a root rotation, eviction."""

from __future__ import annotations

import asyncio
import os
import random
from datetime import timedelta

import pytest
from connect_helpers import FakeClock, Log, init_ca

from ca import certs, provider
from ca.provider import CAConfig
from registry.connect.leaf import LeafCache, TrustInfo
from registry.connect.signer import CAServer
from registry.connect.state import CMD_CA_SET, StateViews


class Mono:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Setup:
    def __init__(self, log: Log, clock: FakeClock, config: CAConfig | None = None, **cache_kw: object) -> None:
        self.log = log
        self.clock = clock
        self.views = StateViews()
        self.mono = Mono()
        init_ca(log, clock.now, config)
        self.server = CAServer(lambda: log.store, self.views, "dc1", clock=clock, monotonic=self.mono)
        self.cache = LeafCache(sign=self.server.sign, trust=lambda: TrustInfo.of(self.views.ca(log.store)),
                               datacenter="dc1", clock=clock, rng=random.Random(7), **cache_kw)  # type: ignore[arg-type]
        self.cache.note_active_key()

    def state(self) -> provider.CAState:
        state = self.views.ca(self.log.store)
        assert state is not None
        return state

    def rotate(self) -> provider.CAState:
        old = self.state()
        new = provider.rotate(old, CAConfig(private_key_type="ec", private_key_bits=384,
                                            csr_max_per_second=old.config.csr_max_per_second), self.clock(),
                              os.urandom)  # fmt: skip
        prev = self.log.store.table_index["connect-ca"]
        assert self.log.apply({"Type": CMD_CA_SET, "State": provider.to_msgpack_dict(new), "Prev": prev}) is True
        return self.state()


@pytest.fixture
def setup(log: Log, clock: FakeClock) -> Setup:
    return Setup(log, clock, CAConfig(csr_max_per_second=0))


async def test_fetch_issues_once_then_hits(setup: Setup) -> None:
    first, hit = await setup.cache.get("web")
    assert not hit and setup.cache.issued == 1
    again, hit = await setup.cache.get("web")
    assert hit and again is first
    key = certs.private_key_from_pem(first.key_pem)
    assert certs.key_info(key) == ("ec", 256)
    cert = certs.cert_from_pem(first.result.cert_pem)
    assert certs.key_id(cert.public_key()) == certs.key_id(key)
    assert first.index > 0


async def test_concurrent_first_fetches_share_one_issuance(setup: Setup) -> None:
    results = await asyncio.gather(*(setup.cache.get("api") for _ in range(10)))
    assert setup.cache.issued == 1 and len({id(e) for e, _ in results}) == 1


async def test_renewal_is_spread_between_60_and_90_percent(setup: Setup) -> None:
    lifetime = timedelta(hours=72, minutes=1)  # NotBefore is backdated a minute
    fractions = []
    for i in range(120):
        entry, _ = await setup.cache.get(f"svc-{i}")
        assert entry.result.valid_before - entry.result.valid_after == lifetime
        fractions.append((entry.renew_at - entry.result.valid_after) / lifetime)
    assert min(fractions) >= 0.6 and max(fractions) < 0.9
    # Spread, not clumped: both ends of the window are used.
    assert min(fractions) < 0.65 and max(fractions) > 0.85


async def test_renew_due_renews_exactly_when_due(setup: Setup, clock: FakeClock) -> None:
    entry, _ = await setup.cache.get("web")
    clock.now = entry.renew_at - timedelta(seconds=1)
    assert await setup.cache.renew_due() == 0
    clock.now = entry.renew_at
    assert await setup.cache.renew_due() == 1
    fresh = setup.cache.peek("web")
    assert fresh is not None and fresh.index > entry.index and fresh.result.serial != entry.result.serial
    # X.509 times have whole seconds.
    assert fresh.result.valid_after == clock.now.replace(microsecond=0) - timedelta(minutes=1)
    assert fresh.renew_at > clock.now


async def test_blocking_fetch_returns_when_a_new_certificate_is_issued(setup: Setup, clock: FakeClock) -> None:
    entry, _ = await setup.cache.get("web")
    waiter = asyncio.create_task(setup.cache.get("web", min_index=entry.index, wait=30))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    clock.now = entry.renew_at
    await setup.cache.renew_due()
    new, hit = await asyncio.wait_for(waiter, 2)
    assert new.index > entry.index and new.result.serial != entry.result.serial
    # With nothing new, a blocking fetch times out and returns the current certificate.
    same, _ = await setup.cache.get("web", min_index=new.index, wait=0.05)
    assert same is new


async def test_expired_certificate_is_replaced_on_a_plain_fetch(setup: Setup, clock: FakeClock) -> None:
    entry, _ = await setup.cache.get("web")
    clock.now = entry.result.valid_before
    fresh, hit = await setup.cache.get("web")
    assert not hit and fresh.result.valid_before > clock.now


async def test_rotation_renews_within_the_jitter_window(log: Log, clock: FakeClock, openssl_verify) -> None:  # noqa: ANN001
    s = Setup(log, clock, CAConfig(csr_max_per_second=0))
    entries = [(await s.cache.get(f"svc-{i}"))[0] for i in range(40)]
    old_key = s.state().active_root.signing_key_id
    new_state = s.rotate()
    rotated_at = clock.now
    assert s.cache.roots_changed() == 40
    assert s.cache.roots_changed() == 0  # same root: nothing more to do
    due = sorted(e.renew_at for e in entries)
    assert rotated_at <= due[0] and due[-1] < rotated_at + timedelta(seconds=30)
    assert due[-1] - due[0] > timedelta(seconds=15)  # spread over the window, not all at once
    clock.now = rotated_at + timedelta(seconds=10)
    early = await s.cache.renew_due()
    assert 0 < early < 40
    clock.now = rotated_at + timedelta(seconds=30)
    assert early + await s.cache.renew_due() == 40
    roots = [r.root_cert_pem for r in new_state.roots]
    for i in range(40):
        e = s.cache.peek(f"svc-{i}")
        assert e is not None and e.signing_key_id == new_state.active_root.signing_key_id != old_key
        assert openssl_verify(e.result.cert_pem, roots, at=clock.now).returncode == 0
        # Peers that still trust only the old root accept the new leaf through the cross-signed root.
        old_root = next(r.root_cert_pem for r in new_state.roots if not r.active)
        out = openssl_verify(e.result.cert_pem, [old_root], new_state.active_root.intermediate_certs, at=clock.now)
        assert out.returncode == 0, out.stderr


async def test_plain_fetch_after_rotation_revalidates_immediately(setup: Setup) -> None:
    entry, _ = await setup.cache.get("web")
    new_state = setup.rotate()
    fresh, hit = await setup.cache.get("web")
    assert not hit and fresh.signing_key_id == new_state.active_root.signing_key_id != entry.signing_key_id


async def test_rate_limited_rotation_retries_in_successive_windows(log: Log, clock: FakeClock) -> None:
    s = Setup(log, clock, CAConfig(csr_max_per_second=1))
    for i in range(10):
        await s.cache.get(f"svc-{i}")
        s.mono.t += 1.0  # one token per second: issuing them one by one is never limited
    s.rotate()
    start = clock.now
    s.cache.roots_changed()
    clock.now = start + timedelta(seconds=30)
    s.mono.t += 10.0
    renewed = await s.cache.renew_due()
    assert renewed == 1  # one token; everybody else was told to come back later
    window = timedelta(seconds=30)
    pending = [s.cache.peek(f"svc-{i}") for i in range(10)]
    retry = [e for e in pending if e is not None and e.rotation_start is not None]
    assert len(retry) == 9
    for e in retry:
        assert start + window <= e.renew_at < start + 2 * window  # a random point of the next window
    assert len({e.renew_at for e in retry}) == 9
    # The second window: the bucket has refilled by one again; the rest move to the third window.
    clock.now = start + 2 * window
    s.mono.t += 1.0
    assert await s.cache.renew_due() == 1
    for e in (s.cache.peek(f"svc-{i}") for i in range(10)):
        assert e is not None
        if e.rotation_start is not None:
            assert start + 2 * window <= e.renew_at < start + 3 * window


async def test_unfetched_entries_expire_and_size_is_capped(log: Log, clock: FakeClock) -> None:
    s = Setup(log, clock, CAConfig(csr_max_per_second=0), last_get_ttl=timedelta(hours=10), max_entries=3)
    for name in ("a", "b", "c"):
        await s.cache.get(name)
    await s.cache.get("a")  # a is now the most recently fetched
    await s.cache.get("d")
    assert s.cache.peek("b") is None and len(s.cache) == 3  # b was the least recently fetched
    clock.advance(hours=66)  # past every renewal time, and long past the 10 h LastGetTTL
    assert await s.cache.renew_due() == 0
    assert len(s.cache) == 0


async def test_invalid_service_name_is_a_400(setup: Setup) -> None:
    from registry.connect.signer import SignError

    with pytest.raises(SignError) as err:
        await setup.cache.get("no spaces allowed")
    assert err.value.status == 400 and len(setup.cache) == 0
