"""The agent's leaf-certificate cache (Consul's agent/leafcert): one certificate per service.

The agent, never the caller, makes the key (EC P-256) and the CSR; the server only ever sees the CSR.
What the cache promises, following Consul:

- a fetch with no ``index`` revalidates: a certificate that expired, or that was signed by a key other
  than the active root's, is replaced before it is returned;
- every certificate is renewed in the background at a uniformly random moment between 60% and 90% of
  its lifetime (so a fleet issued together does not renew together);
- after a root change, certificates of the old key are renewed at a random moment within
  ``root_change_jitter`` (Consul: 30 s); if the server rate-limits a renewal, it is retried at a random
  point in the next window, and so on, so a rotation is spread out instead of a thundering herd;
- a blocking fetch (``index`` = the certificate's ModifyIndex) returns as soon as a new certificate is
  issued, or on timeout with the current one;
- an entry nobody fetched for ``last_get_ttl`` (Consul: 72 h) is dropped instead of renewed, and the
  cache never holds more than ``max_entries`` (least recently fetched go first).

Time comes from an injected ``clock`` (timezone-aware UTC datetimes) so renewal and rotation can be
tested with a fake clock: ``renew_due()`` does everything due "now" and returns.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from cryptography.hazmat.primitives.asymmetric import ec

from ca import certs
from ca.csr import make_csr
from ca.provider import CAState, LeafResult
from ca.spiffe import InvalidSpiffeURI, ServiceIdentity
from registry.connect.signer import CA_NOT_READY_MESSAGE, RateLimited, SignError

log = structlog.get_logger("proconsul.connect.leaf")

SignFn = Callable[[str, str], Awaitable[LeafResult]]


@dataclass(frozen=True)
class TrustInfo:
    """What the cache needs to know about the CA: the trust domain (to name services in CSRs) and
    the active root's signing key (to tell current certificates from those of a retired root)."""

    trust_domain: str
    signing_key_id: str

    @classmethod
    def of(cls, state: CAState | None) -> TrustInfo | None:
        if state is None:
            return None
        return cls(state.trust_domain, state.active_root.signing_key_id)

SOFT_EXPIRY = 0.6
HARD_EXPIRY = 0.9
ROOT_CHANGE_JITTER = 30.0  # Consul's caChangeJitterWindow
LAST_GET_TTL = timedelta(hours=72)
# A certificate, its key and their bookkeeping take a few KiB; 16,384 services is far more than an
# agent hosts, and an evicted entry only costs a new certificate on its next fetch.
MAX_ENTRIES = 16384
# Longest the background loop sleeps without re-reading the clock (a wall-clock jump, a suspended VM).
MAX_IDLE = 60.0
RETRY_MIN, RETRY_MAX = 1.0, 60.0
ISSUE_BATCH = 32  # issuances done back to back before the event loop gets a turn


@dataclass(slots=True)
class CachedLeaf:
    service: str
    key_pem: str
    result: LeafResult
    index: int
    renew_at: datetime
    last_get: datetime
    # Set while this certificate is being replaced because of a root change: the start of the
    # rotation windows that rate-limited retries are spread over.
    rotation_start: datetime | None = None
    attempts: int = 0

    @property
    def signing_key_id(self) -> str:
        return self.result.signing_key_id


class LeafCache:
    def __init__(
        self,
        *,
        sign: SignFn,
        trust: Callable[[], TrustInfo | None],
        datacenter: str,
        clock: Callable[[], datetime],
        rng: random.Random | None = None,
        index_floor: Callable[[], int] = lambda: 0,
        root_change_jitter: float = ROOT_CHANGE_JITTER,
        last_get_ttl: timedelta = LAST_GET_TTL,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self._sign = sign
        self._trust = trust
        self.datacenter = datacenter
        self.clock = clock
        self.rng = rng or random.Random()
        self._index_floor = index_floor
        self.root_change_jitter = root_change_jitter
        self.last_get_ttl = last_get_ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[str, CachedLeaf] = OrderedDict()
        self._heap: list[tuple[datetime, int, str]] = []
        self._seq = itertools.count()
        self._inflight: dict[str, asyncio.Future[CachedLeaf]] = {}
        self._queue: list[str] = []
        self._flusher: asyncio.Task[None] | None = None
        self._changed: dict[str, asyncio.Future[None]] = {}
        self._last_index = 0
        self._active_key: str | None = None
        self._wake: asyncio.Event | None = None
        self._wake_at: datetime | None = None
        self.issued = 0  # certificates obtained, for tests and metrics

    # ------------------------------------------------------------------ reads

    def __len__(self) -> int:
        return len(self._entries)

    def peek(self, service: str) -> CachedLeaf | None:
        return self._entries.get(service)

    async def get(self, service: str, *, min_index: int = 0, wait: float = 0.0) -> tuple[CachedLeaf, bool]:
        """The certificate for ``service`` and whether it came from the cache (X-Cache: HIT).

        ``min_index`` > 0 makes this a blocking query: wait up to ``wait`` seconds for a certificate
        with a higher index. Raises SignError (incl. RateLimited) when a certificate must be issued
        and cannot be."""
        entry = self._entries.get(service)
        now = self.clock()
        if entry is None:
            entry = await self._issue(service)
            hit = False
        elif min_index and entry.index <= min_index:
            entry = await self._wait_for_new(service, entry, wait)
            hit = True
        elif not min_index and self._must_revalidate(entry, now):
            entry = await self._issue(service)
            hit = False
        else:
            hit = True
        entry.last_get = self.clock()
        if service in self._entries:
            self._entries.move_to_end(service)
        return entry, hit

    def _must_revalidate(self, entry: CachedLeaf, now: datetime) -> bool:
        if now >= entry.result.valid_before:
            return True
        trust = self._trust()
        return trust is not None and trust.signing_key_id != entry.signing_key_id

    async def _wait_for_new(self, service: str, entry: CachedLeaf, wait: float) -> CachedLeaf:
        fut = self._changed.get(service)
        if fut is None or fut.done():
            fut = self._changed[service] = asyncio.get_running_loop().create_future()
        if wait > 0:
            # Consul adds up to wait/16 of jitter so synchronised watchers drift apart.
            timeout = wait + self.rng.uniform(0, wait / 16)
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(fut)
            except TimeoutError:
                pass
        return self._entries.get(service, entry)

    # ------------------------------------------------------------------ issuing

    async def _issue(self, service: str) -> CachedLeaf:
        """Make a key and CSR and have them signed.

        Concurrent callers for one service share one issuance (a burst of fetches for a new service is
        one signature, not many). Issuances are queued and done by one flusher task, back to back:
        with many requests in flight this keeps the cryptography hot in the CPU caches instead of
        interleaving it with HTTP parsing, which measured 1.4x the certificates per CPU-second. The
        flusher also outlives any one caller, so a caller that goes away cannot cancel an issuance
        other callers wait for."""
        pending = self._inflight.get(service)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._inflight[service] = pending
            self._queue.append(service)
            if self._flusher is None:
                self._flusher = asyncio.get_running_loop().create_task(self._flush(), name="connect-leaf-issue")
        return await asyncio.shield(pending)

    async def _flush(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[:ISSUE_BATCH], self._queue[ISSUE_BATCH:]
                for service in batch:
                    fut = self._inflight.get(service)
                    try:
                        entry = await self._issue_now(service)
                    except Exception as exc:  # noqa: BLE001 - handed to whoever waits for this service
                        self._inflight.pop(service, None)
                        if fut is not None and not fut.done():
                            fut.set_exception(exc)
                            fut.exception()  # retrieved: a failure nobody waits for is not an error
                        continue
                    self._inflight.pop(service, None)
                    if fut is not None and not fut.done():
                        fut.set_result(entry)
                if self._queue:
                    await asyncio.sleep(0)  # let responses go out between batches
        except asyncio.CancelledError:
            # Shutting down: nobody will issue these any more.
            for service in list(self._inflight):
                fut = self._inflight.pop(service)
                if not fut.done():
                    fut.cancel()
            self._queue.clear()
            raise
        finally:
            self._flusher = None

    async def _issue_now(self, service: str) -> CachedLeaf:
        trust = self._trust()
        if trust is None:
            raise SignError(500, CA_NOT_READY_MESSAGE)
        try:
            identity = ServiceIdentity(trust.trust_domain, "default", self.datacenter, service)
        except InvalidSpiffeURI:
            raise SignError(400, f"Invalid service name {service!r}") from None
        key = ec.generate_private_key(ec.SECP256R1())
        csr = make_csr(key, identity)
        result = await self._sign(csr, service)
        now = self.clock()
        self._last_index = max(self._last_index + 1, self._index_floor())
        entry = CachedLeaf(
            service=service,
            key_pem=certs.private_key_to_pem(key),
            result=result,
            index=self._last_index,
            renew_at=self._renewal_time(result, now),
            last_get=now,
        )
        self._entries[service] = entry
        self._entries.move_to_end(service)
        while len(self._entries) > self.max_entries:
            self._forget(next(iter(self._entries)))
        self._schedule(entry)
        self.issued += 1
        waiters = self._changed.pop(service, None)
        if waiters is not None and not waiters.done():
            waiters.set_result(None)
        return entry

    def _forget(self, service: str) -> None:
        """Drop a cached certificate; blocking fetches waiting on it return now (with what they had)."""
        self._entries.pop(service, None)
        waiters = self._changed.pop(service, None)
        if waiters is not None and not waiters.done():
            waiters.set_result(None)

    def _renewal_time(self, result: LeafResult, now: datetime) -> datetime:
        """Consul's calculateSoftExpiry: uniformly in [60%, 90%) of the lifetime; from now if already
        past 60%; now if past 90%."""
        lifetime = result.valid_before - result.valid_after
        soft = result.valid_after + lifetime * SOFT_EXPIRY
        hard = result.valid_after + lifetime * HARD_EXPIRY
        if now >= hard:
            return now
        start = max(now, soft)
        return start + (hard - start) * self.rng.random()

    def _schedule(self, entry: CachedLeaf) -> None:
        heapq.heappush(self._heap, (entry.renew_at, next(self._seq), entry.service))
        # Wake the renewer only if this renewal comes before the moment it already plans to look;
        # waking it for every new certificate would cost a task switch per issuance.
        if self._wake is not None and (self._wake_at is None or entry.renew_at < self._wake_at):
            self._wake.set()

    # ------------------------------------------------------------------ renewal

    def next_due(self) -> datetime | None:
        while self._heap:
            at, _, service = self._heap[0]
            entry = self._entries.get(service)
            if entry is None or entry.renew_at != at:
                heapq.heappop(self._heap)  # stale: replaced, rescheduled or evicted
                continue
            return at
        return None

    async def renew_due(self) -> int:
        """Renew every certificate due at ``clock()``; returns how many were replaced."""
        renewed = 0
        now = self.clock()
        while True:
            at = self.next_due()
            if at is None or at > now:
                return renewed
            _, _, service = heapq.heappop(self._heap)
            entry = self._entries[service]
            if now - entry.last_get > self.last_get_ttl:
                # Nobody has asked for it in days: stop paying for it (Consul's LastGetTTL).
                self._forget(service)
                continue
            if await self._renew(entry, now):
                renewed += 1

    async def _renew(self, entry: CachedLeaf, now: datetime) -> bool:
        try:
            await self._issue(entry.service)
            return True
        except RateLimited:
            entry.attempts += 1
            if entry.rotation_start is not None:
                # Retry at a random point of the next window after the rotation began (Consul).
                window = timedelta(seconds=self.root_change_jitter)
                start = entry.rotation_start + window * entry.attempts
                entry.renew_at = max(now, start) + window * self.rng.random()
            else:
                entry.renew_at = now + timedelta(seconds=self.root_change_jitter * self.rng.random())
            log.debug("leaf renewal rate limited", service=entry.service, retry_at=str(entry.renew_at))
        except SignError as exc:
            entry.attempts += 1
            if exc.status == 400:
                # The request itself is wrong (e.g. the service name): retrying cannot help.
                log.warning("leaf renewal refused; dropping cached certificate", service=entry.service,
                            error=exc.message)  # fmt: skip
                self._forget(entry.service)
                return False
            entry.renew_at = now + self._backoff(entry.attempts)
            log.warning("leaf renewal failed", service=entry.service, error=exc.message)
        except Exception as exc:  # noqa: BLE001 - a server hiccup must not stop the renewer
            entry.attempts += 1
            entry.renew_at = now + self._backoff(entry.attempts)
            log.warning("leaf renewal failed", service=entry.service, error=str(exc))
        self._schedule(entry)
        return False

    def _backoff(self, attempts: int) -> timedelta:
        seconds = min(RETRY_MAX, RETRY_MIN * 2 ** min(attempts, 10))
        return timedelta(seconds=seconds * (0.5 + self.rng.random() / 2))

    def roots_changed(self) -> int:
        """The CA state changed: if the active signing key is new, schedule every certificate from
        another key for renewal at a random point of the jitter window. Returns how many."""
        trust = self._trust()
        if trust is None:
            return 0
        key = trust.signing_key_id
        if key == self._active_key:
            return 0
        self._active_key = key
        now = self.clock()
        window = timedelta(seconds=self.root_change_jitter)
        moved = 0
        for entry in self._entries.values():
            if entry.signing_key_id == key:
                continue
            at = now + window * self.rng.random()
            if at < entry.renew_at:
                entry.renew_at = at
                entry.rotation_start = now
                entry.attempts = 0
                self._schedule(entry)
                moved += 1
        return moved

    def note_active_key(self) -> None:
        """Remember the current active key without rescheduling (at startup)."""
        trust = self._trust()
        self._active_key = trust.signing_key_id if trust is not None else None

    async def run(self) -> None:
        """The background renewer: sleep until the next renewal is due (or something changes)."""
        self._wake = asyncio.Event()
        while True:
            try:
                await self.renew_due()
            except Exception:  # noqa: BLE001 - keep renewing whatever happens to one pass
                log.exception("leaf renewal pass failed")
            nxt = self.next_due()
            now = self.clock()
            timeout = MAX_IDLE
            if nxt is not None:
                timeout = min(MAX_IDLE, max(0.0, (nxt - now).total_seconds()))
            self._wake_at = now + timedelta(seconds=timeout)
            self._wake.clear()
            if timeout > 0:
                # asyncio.timeout rather than wait_for, which can swallow a cancellation (Python < 3.12).
                try:
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
                except TimeoutError:
                    pass
