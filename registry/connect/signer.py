"""The server side of leaf signing: ``CAServer.sign(csr_pem, service) -> LeafResult``.

Signing needs no log entry (serials are random, not a counter), so it is a read of the replicated CA
state plus CPU work. In ``-dev`` the local agent is the server and calls ``sign`` directly; client
agents reach the same function over the server RPC port (``handle_rpc``, method ``ConnectCA.Sign``).

Consul's CSR rate limits guard the servers from a renewal storm: ``CSRMaxPerSecond`` (a token bucket;
0 disables it) or, only when that is 0, ``CSRMaxConcurrent`` (a cap on signatures in progress). A
request that would wait more than 500 ms for its turn is refused with Consul's "Rate limit reached,
try again later" and a retry hint; callers answer 429 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from ca import certs, provider
from ca.csr import CSRError
from ca.provider import CAState, LeafResult
from ca.spiffe import InvalidSpiffeURI, ServiceIdentity
from registry.connect.state import StateViews, StoreGetter

RATE_LIMITED_MESSAGE = "Rate limit reached, try again later"
CA_NOT_READY_MESSAGE = "CA has not finished initializing"
# Consul's csrLimitWait: how long a CSR may queue for a slot before it is refused.
CSR_LIMIT_WAIT = 0.5
RPC_SIGN = "ConnectCA.Sign"


class SignError(Exception):
    """A signing request that failed; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RateLimited(SignError):
    def __init__(self, retry_after: float) -> None:
        super().__init__(429, RATE_LIMITED_MESSAGE)
        self.retry_after = retry_after

    @property
    def retry_after_header(self) -> str:
        # Retry-After is whole seconds; never 0, which would invite an immediate retry.
        return str(max(1, math.ceil(self.retry_after)))


class CSRLimiter:
    """Consul's two CSR limits. ``clock`` is monotonic seconds (injectable for tests)."""

    def __init__(
        self,
        per_second: float,
        max_concurrent: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        wait_limit: float = CSR_LIMIT_WAIT,
    ) -> None:
        self.per_second = per_second
        self.max_concurrent = max_concurrent if per_second == 0 else 0
        self.clock = clock
        self.wait_limit = wait_limit
        # One second's worth of burst: a steady rate of N/s is never refused, a spike of more is.
        self.burst = max(1.0, per_second)
        self._tokens = self.burst
        self._stamp = clock()
        self._semaphore = asyncio.Semaphore(max_concurrent) if self.max_concurrent > 0 else None

    @property
    def unlimited(self) -> bool:
        return self.per_second == 0 and self._semaphore is None

    def _refill(self) -> None:
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.per_second)
        self._stamp = now

    async def acquire(self) -> None:
        if self.per_second > 0:
            self._refill()
            if self._tokens >= 1:
                self._tokens -= 1
                return
            delay = (1 - self._tokens) / self.per_second
            if delay > self.wait_limit:
                raise RateLimited(delay)
            # Reserve the token now (the bucket goes negative) so concurrent waiters queue behind us.
            self._tokens -= 1
            await asyncio.sleep(delay)
            return
        if self._semaphore is not None:
            try:
                await asyncio.wait_for(self._semaphore.acquire(), self.wait_limit)
            except TimeoutError:
                raise RateLimited(self.wait_limit) from None

    def release(self) -> None:
        if self._semaphore is not None:
            self._semaphore.release()


def utcnow() -> datetime:
    return datetime.now(UTC)


class CAServer:
    """Signs leaf certificates from the replicated CA state.

    ``sign`` validates everything in ``ca.provider.sign_leaf`` (CSR signature, exactly one URI SAN
    naming exactly the requested service in this trust domain and datacenter, key type) and never
    writes to the store.
    """

    def __init__(
        self,
        store: StoreGetter,
        views: StateViews,
        datacenter: str,
        *,
        clock: Callable[[], datetime] = utcnow,
        rand_bytes: Callable[[int], bytes] = os.urandom,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._views = views
        self.datacenter = datacenter
        self.clock = clock
        self.rand_bytes = rand_bytes
        self.monotonic = monotonic
        self._limiter: CSRLimiter | None = None
        self._limits: tuple[float, int] | None = None
        # The active root's parsed key and certificate and the leaf TTL, for the state they came from:
        # parsing a PEM key on every signature was a tenth of the cost of a leaf.
        self._prepared: tuple[CAState, certs.LeafTemplate, timedelta] | None = None
        self.signed = 0  # certificates issued, for metrics and tests

    def ca_state(self) -> CAState | None:
        return self._views.ca(self._store())

    def limiter(self, state: CAState) -> CSRLimiter:
        limits = (state.config.csr_max_per_second, state.config.csr_max_concurrent)
        if self._limiter is None or limits != self._limits:
            # A config change replaces the limiter; in-flight holders of the old one finish normally.
            self._limiter = CSRLimiter(*limits, clock=self.monotonic)
            self._limits = limits
        return self._limiter

    def identity(self, state: CAState, service: str) -> ServiceIdentity:
        try:
            return ServiceIdentity(state.trust_domain, "default", self.datacenter, service)
        except InvalidSpiffeURI:
            raise SignError(
                400,
                f"Invalid service name {service!r}: use letters, digits, '.', '_' and '-' "
                "(at most 256 characters), starting with a letter, digit or '_'",
            ) from None

    async def sign(self, csr_pem: str, service: str) -> LeafResult:
        """Sign ``csr_pem`` for ``service`` (the caller has authorised the service). Raises SignError:
        400 for a bad CSR or name, 429 (RateLimited) when over the CSR limits, 500 if the CA cannot
        sign (not initialised, root expired)."""
        state = self.ca_state()
        if state is None:
            raise SignError(500, CA_NOT_READY_MESSAGE)
        if not isinstance(csr_pem, str | bytes):
            raise SignError(400, "CSR must be PEM text")
        identity = self.identity(state, service)
        limiter = self.limiter(state)
        if limiter.unlimited:
            return self._sign_now(state, csr_pem, identity)
        await limiter.acquire()
        try:
            # The state may have changed while we queued (a rotation): sign with the newest.
            return self._sign_now(self.ca_state() or state, csr_pem, identity)
        finally:
            limiter.release()

    def _prepare(self, state: CAState) -> tuple[certs.LeafTemplate, timedelta]:
        prepared = self._prepared
        if prepared is None or prepared[0] is not state:
            root = state.active_root
            signer = certs.LeafTemplate(certs.private_key_from_pem(root.private_key_pem), root.certificate())
            provider.check_signer(state, signer)
            prepared = self._prepared = (state, signer, state.config.leaf_ttl)
        return prepared[1], prepared[2]

    def _sign_now(self, state: CAState, csr_pem: str | bytes, identity: ServiceIdentity) -> LeafResult:
        signer, ttl = self._prepare(state)
        try:
            result = provider.sign_leaf(state, csr_pem, identity, self.clock(), ttl, self.rand_bytes, signer=signer)
        except CSRError as exc:
            raise SignError(400, str(exc)) from None
        except provider.CAError as exc:
            raise SignError(500, str(exc)) from None
        self.signed += 1
        return result

    async def handle_rpc(self, method: str, args: Any) -> Any:
        """``ConnectCA.Sign`` over the server RPC port: args ``{"CSR": pem, "Service": name}``, reply
        ``{"CertPEM", "SerialNumber", "ValidAfter", "ValidBefore", "ServiceURI"}`` (Go time strings)."""
        if method != RPC_SIGN:
            raise KeyError(method)
        if not isinstance(args, dict) or not isinstance(args.get("CSR"), str) or not isinstance(
            args.get("Service"), str
        ):
            raise SignError(400, "ConnectCA.Sign needs {\"CSR\": <PEM>, \"Service\": <name>}")
        result = await self.sign(args["CSR"], args["Service"])
        return leaf_to_wire(result)


def leaf_to_wire(result: LeafResult) -> dict[str, Any]:
    """A LeafResult as msgpack-ready values (for the sign RPC)."""
    return {
        "CertPEM": result.cert_pem,
        "ChainPEM": result.chain_pem,
        "Serial": result.serial.to_bytes((result.serial.bit_length() + 7) // 8, "big"),
        "SerialNumber": result.serial_colon,
        "ValidAfter": provider.format_go_time(result.valid_after),
        "ValidBefore": provider.format_go_time(result.valid_before),
        "ServiceURI": result.uri,
        "RootID": result.root_id,
        "SigningKeyID": result.signing_key_id,
    }


def leaf_from_wire(data: dict[str, Any]) -> LeafResult:
    """Inverse of ``leaf_to_wire``; the identity is re-parsed strictly from the URI."""
    from ca.certs import cert_from_pem

    cert = cert_from_pem(data["CertPEM"])
    identity = provider.identity_from_uri(data["ServiceURI"])
    return LeafResult(
        cert_pem=data["CertPEM"],
        chain_pem=data["ChainPEM"],
        serial=int.from_bytes(data["Serial"], "big"),
        serial_colon=data["SerialNumber"],
        valid_after=cert.not_valid_before_utc,
        valid_before=cert.not_valid_after_utc,
        identity=identity,
        uri=data["ServiceURI"],
        root_id=data["RootID"],
        signing_key_id=data["SigningKeyID"],
    )
