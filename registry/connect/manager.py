"""Leader duties for the Connect CA, and the CA expiry health check every server runs.

The leader polls ``is_leader()``; while it leads it keeps the CA alive:

- no CA state yet: generate the cluster ID, trust domain and root and propose them (the command carries
  the whole generated state, so every replica applies the very same bytes);
- the active root is within its auto-rotation window (``ca.provider.needs_auto_rotation``: the last 20%
  of its life, at least 3 x LeafCertTTL): rotate to a new root cross-signed by the old one;
- retired roots whose leaves have all expired, and expired intermediates: prune them.

Every change is a ``CASet`` command guarded by the CA table's index (``Prev``), so a change
computed from a stale state is refused by the FSM and recomputed, never applied over a newer one.

``CAExpiryCheck`` turns a node-level check on each server to warning 30 days before the active root or
an intermediate it depends on expires (critical once one has expired), through the agent's own local
check machinery, so it shows in /v1/health/node/<node> and /v1/agent/checks like any other check.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import structlog

from ca import certs, provider
from ca.provider import CAConfig, CAState
from registry.commands import CASet, Command, CommandError

log = structlog.get_logger("proconsul.connect.manager")

POLL_INTERVAL = 1.0
CAS_RETRIES = 5


class CAManager:
    def __init__(
        self,
        *,
        propose: Callable[[Command], Awaitable[Any]],
        is_leader: Callable[[], bool],
        ca_state: Callable[[], tuple[CAState | None, int]],
        initial_config: CAConfig,
        clock: Callable[[], datetime],
        rand_bytes: Callable[[int], bytes] = os.urandom,
        new_cluster_id: Callable[[], str] = lambda: str(uuid.uuid4()),
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self._propose = propose
        self._is_leader = is_leader
        self._ca_state = ca_state
        self.initial_config = initial_config
        self.clock = clock
        self.rand_bytes = rand_bytes
        self.new_cluster_id = new_cluster_id
        self.poll_interval = poll_interval
        self._lock = asyncio.Lock()

    async def _commit(self, state: CAState, prev: int) -> bool:
        """Propose ``state`` guarded by ``prev``: False when another change landed first. A refusal raises
        the proposer's CommandError."""
        return bool(await self._propose(CASet(provider.to_msgpack_dict(state), prev)))

    async def step(self) -> str | None:
        """One pass of the leader duties. Returns what was done ("initialized", "rotated", "pruned")
        or None; does nothing on a follower."""
        if not self._is_leader():
            return None
        async with self._lock:
            state, prev = self._ca_state()
            now = self.clock()
            if state is None:
                new = provider.initialize(self.new_cluster_id(), self.initial_config, now, self.rand_bytes)
                if await self._commit(new, prev):
                    log.info("connect CA initialized", trust_domain=new.trust_domain,
                             root=new.active_root.id)  # fmt: skip
                    return "initialized"
                return None
            if provider.needs_auto_rotation(state, now):
                new = provider.rotate(state, state.config, now, self.rand_bytes)
                if await self._commit(new, prev):
                    log.info("connect CA root rotated before expiry", old=state.active_root.id,
                             new=new.active_root.id)  # fmt: skip
                    return "rotated"
                return None
            pruned = provider.prune(state, now)
            if pruned is not state and await self._commit(pruned, prev):
                log.info("pruned retired connect CA roots", roots=len(state.roots) - len(pruned.roots))
                return "pruned"
        return None

    async def set_config(self, config: CAConfig) -> CAState:
        """PUT /v1/connect/ca/configuration: apply ``config`` (rotating the root if the key material
        changed), retrying if another change lands first."""
        for _ in range(CAS_RETRIES):
            async with self._lock:
                state, prev = self._ca_state()
                if state is None:
                    raise CommandError("CA has not finished initializing", 500)
                try:
                    new = provider.update_config(state, config, self.clock(), self.rand_bytes)
                except provider.CAConfigError as exc:
                    raise CommandError(str(exc), 400) from None
                if await self._commit(new, prev):
                    if new.active_root.id != state.active_root.id:
                        log.info("connect CA root rotated by configuration change",
                                 old=state.active_root.id, new=new.active_root.id)  # fmt: skip
                    return new
        raise CommandError("CA configuration kept changing underneath the update; try again", 500)

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - no leader for a moment, a lost race: try again
                log.warning("connect CA leader duties failed", error=str(exc))
            await asyncio.sleep(self.poll_interval)


# ---------------------------------------------------------------------- CA expiry health check

CHECK_ID = "connect-ca-expiry"
CHECK_NAME = "Connect CA certificate expiry"
WARN_BEFORE = timedelta(days=30)
WARN_LOG_EVERY = timedelta(hours=1)  # while in the warning window, the log warning is repeated this often


def ca_expiry_status(state: CAState | None, now: datetime, warn_before: timedelta = WARN_BEFORE) -> tuple[str, str]:
    """(status, output) for the CA expiry check.

    Warning when the active root expires within ``warn_before``, or when an intermediate in the active
    root's chain (a cross-signed certificate) does and it is still needed: while peers may still trust
    only the root that signed it, i.e. before that retired root is pruned. A cross-signed certificate
    that ends with its retired root is working as designed and is not reported. Critical once the
    active root, or a still-needed intermediate, has expired."""
    if state is None:
        return "warning", "Connect CA has not finished initializing: no leaf certificates can be signed yet"
    problems: list[str] = []
    expired = False
    for w in provider.expiry_warnings(state, now, warn_before):
        problems.append(w.message)
        expired = expired or w.expired
    active = state.active_root
    retired = {certs.cert_from_pem(r.root_cert_pem).subject: r for r in state.roots if not r.active}
    for pem in active.intermediate_certs:
        cert = certs.cert_from_pem(pem)
        end = cert.not_valid_after_utc
        issuer_root = retired.get(cert.issuer)
        needed_until = issuer_root.prune_after if issuer_root is not None else None
        if needed_until is None or end >= needed_until:
            continue
        remaining = end - now
        if remaining > warn_before:
            continue
        when = provider.format_go_time(end)
        if remaining <= timedelta(0):
            expired = True
            problems.append(f"CA intermediate certificate {certs.fingerprint_sha1_colon(cert)} expired at {when}, "
                            "before the root it chains to was retired")  # fmt: skip
        else:
            problems.append(
                f"CA intermediate certificate {certs.fingerprint_sha1_colon(cert)} expires in "
                f"{provider.format_go_duration(remaining)} (at {when}), before the root it chains to is retired"
            )
    if problems:
        return ("critical" if expired else "warning"), "\n".join(problems)
    return "passing", (
        f"Connect CA root {active.id} is valid until {provider.format_go_time(active.not_after)}"
    )


class CAExpiryCheck:
    """Warns of the Connect CA root (or a needed intermediate) nearing its end, on a server agent: a log
    warning, and the node-level check ``connect-ca-expiry`` -- registered only while there is something to
    warn about, and deregistered once there is not. Consul itself reports the root's remaining life as the
    ``consul.mesh.active-root-ca.expiry`` metric and a log warning, and an agent with no checks of its own
    lists none (clients and libraries count on it), so a healthy CA adds nothing to /v1/agent/checks or the
    catalog. The metric is the agent's (``registry.agent.telemetry``)."""

    def __init__(self, agent: Any, ca_state: Callable[[], CAState | None], clock: Callable[[], datetime],
                 interval: float = 60.0) -> None:  # fmt: skip
        self.agent = agent
        self._ca_state = ca_state
        self.clock = clock
        self.interval = interval
        self._warned: tuple[str, str, datetime] | None = None  # what was last logged, and when

    async def register(self) -> None:
        await self.refresh()

    async def refresh(self) -> tuple[str, str]:
        state = self._ca_state()
        now = self.clock()
        status, output = ca_expiry_status(state, now)
        present = CHECK_ID in self.agent.checks
        if state is None or status == "passing":
            # Nothing to warn about (or no CA yet: its leader duties bootstrap it): no check.
            if present:
                await self.agent.remove_check(CHECK_ID)
            self._warned = None
            return status, output
        warned = self._warned
        if warned is None or warned[:2] != (status, output) or now - warned[2] >= WARN_LOG_EVERY:
            log.warning("Connect CA certificate expires soon", status=status, detail=output)
            self._warned = (status, output, now)
        if not present:
            from registry.registration import CheckSpec

            # A passive check (no monitor): this object reports its status, anti-entropy syncs it.
            spec = CheckSpec(check_id=CHECK_ID, name=CHECK_NAME, type="", status=status,
                             notes="Warns 30 days before the Connect CA root or an intermediate expires")  # fmt: skip
            await self.agent.add_check(spec)
        self.agent.set_check_status(CHECK_ID, status, output)
        if not present:
            # The first output must reach the catalog now: later output-only changes are batched by the
            # agent (CHECK_UPDATE_INTERVAL), status changes go at once.
            await self.agent.sync_check(CHECK_ID)
        return status, output

    async def run(self, changed: Callable[[], Awaitable[None]] | None = None) -> None:
        """Refresh every ``interval`` and whenever ``changed()`` (a CA state change) fires."""
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                log.warning("CA expiry check failed", error=str(exc))
            if changed is None:
                await asyncio.sleep(self.interval)
            else:
                # asyncio.timeout, not wait_for: before Python 3.12 wait_for can swallow a cancellation
                # that arrives as the inner wait completes, and the agent's stop would hang on us.
                try:
                    async with asyncio.timeout(self.interval):
                        await changed()
                except TimeoutError:
                    pass
