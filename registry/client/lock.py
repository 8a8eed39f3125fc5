"""Consul's lock and semaphore recipes (``api/lock.go``, ``api/semaphore.go``) over the agent's HTTP API.

The lock is Consul's leader-election recipe on ``<prefix>/.lock``: a session (TTL 15s, renewed every TTL/2,
with the agent node's ``serfHealth`` check by default), ``?acquire=<session>`` with blocking queries on the key
until it is free, then a consistent blocking query that watches the key for as long as it is held. If the key's
session changes or disappears, or the session cannot be renewed, the lock is lost (``Mutex.wait_lost``). On
release the key is released, the session destroyed and the key deleted if nobody else holds it.

The semaphore (``Semaphore``) allows ``limit`` holders: each has a contender key ``<prefix>/<session>`` held by
its session, and ``<prefix>/.lock`` lists the holders, ``{"Limit": n, "Holders": {session: true}}``, updated
by check-and-set; holders whose session died are pruned, so their slot frees itself.

The decisions (which step to take on what was read, the semaphore's next CAS write) are pure functions, tested
without an agent; ``Mutex`` and ``Semaphore`` perform them with ``AgentHTTP``.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import json
import time
from dataclasses import dataclass, field
from typing import Any

from registry.client.http import AgentHTTP, APIError, kv_path
from registry.gocompat import DurationError, parse_duration

__all__ = [
    "LOCK_FLAG_VALUE", "LOCK_KEY_SUFFIX", "LOCK_RETRY_S", "LOCK_WAIT_S", "MONITOR_RETRY", "MONITOR_RETRY_S",
    "RENEW_RETRY_S", "SEMAPHORE_FLAG_VALUE", "SESSION_TTL", "LockAPI", "LockFailed", "LockOptions", "Mutex",
    "Semaphore", "SemaphoreConflict", "Step", "acquire_step", "contender_key", "free_to_delete", "lock_key",
    "semaphore_held", "semaphore_holders", "semaphore_key", "semaphore_take", "still_held", "wait_budget",
]  # fmt: skip

# ---------------------------------------------------------------------- constants (Consul's values)

LOCK_FLAG_VALUE = 0x2DDCCBC058A50C18  # api.LockFlagValue: marks a KV entry as a lock (not a semaphore)
SEMAPHORE_FLAG_VALUE = 0xE0F69A2BAA414DE0  # api.SemaphoreFlagValue
LOCK_KEY_SUFFIX = ".lock"  # api.DefaultSemaphoreKey: a lock and a semaphore on one prefix then conflict
SESSION_TTL = "15s"  # api.DefaultLockSessionTTL
LOCK_WAIT_S = 15.0  # api.DefaultLockWaitTime: one blocking query while waiting for the key
LOCK_RETRY_S = 5.0  # api.DefaultLockRetryTime: pause after a refused acquire on a free key (lock-delay)
MONITOR_RETRY = 3  # defaultMonitorRetry
MONITOR_RETRY_S = 1.0  # defaultMonitorRetryTime
RENEW_RETRY_S = 1.0  # pause between renewals that failed with a transient error


@dataclass(frozen=True)
class LockOptions:
    """What a holder asks for (Consul's ``api.LockOptions`` / ``api.SemaphoreOptions``): the KV prefix, the
    session's name, how many may hold it at once (1: a lock), how long to try (0: forever) and how many
    retryable errors the monitor rides out."""

    prefix: str
    session_name: str
    limit: int = 1
    timeout: float = 0.0
    monitor_retry: int = MONITOR_RETRY

    @property
    def key(self) -> str:
        return lock_key(self.prefix)


def lock_key(prefix: str) -> str:
    """``path.Join(prefix, ".lock")``: no leading, doubled or trailing slashes."""
    parts = [p for p in prefix.split("/") if p and p != "."]
    return "/".join([*parts, LOCK_KEY_SUFFIX])


# ---------------------------------------------------------------------- lock decisions


class Step(enum.Enum):
    ACQUIRE = "acquire"  # the key is free (or absent): try ?acquire
    WAIT = "wait"  # another session holds it: block on the key's index
    HELD = "held"  # our session already holds it
    CONFLICT = "conflict"  # the key exists with other flags (a semaphore, or unrelated data)


def acquire_step(pair: dict[str, Any] | None, session: str) -> Step:
    if pair is None:
        return Step.ACQUIRE
    if int(pair.get("Flags") or 0) != LOCK_FLAG_VALUE:
        return Step.CONFLICT
    holder = pair.get("Session") or ""
    if holder == session:
        return Step.HELD
    return Step.WAIT if holder else Step.ACQUIRE


def still_held(pair: dict[str, Any] | None, session: str) -> bool:
    """The monitor's test: the key exists and our session holds it."""
    return pair is not None and (pair.get("Session") or "") == session


def free_to_delete(pair: dict[str, Any] | None) -> bool:
    """Cleanup after release: delete the key only when it is ours in kind (lock flags) and nobody holds it."""
    return pair is not None and int(pair.get("Flags") or 0) == LOCK_FLAG_VALUE and not pair.get("Session")


def wait_budget(timeout: float, elapsed: float, attempts: int) -> float | None:
    """How long the next blocking read of the key may wait; None when a ``-timeout`` has run out.

    Without a timeout every read waits up to 15 s (and the loop never ends by itself). With one, the first read
    is unbounded by it (it returns at once, having no index yet), later ones wait for what is left."""
    if timeout <= 0:
        return LOCK_WAIT_S
    if attempts == 0:
        return timeout
    if elapsed > timeout:
        return None
    return timeout - elapsed


# ---------------------------------------------------------------------- pure core: semaphore decisions (-n > 1)


class SemaphoreConflict(Exception):
    pass


def semaphore_key(prefix: str) -> str:
    return lock_key(prefix)


def contender_key(prefix: str, session: str) -> str:
    return "/".join([*[p for p in prefix.split("/") if p and p != "."], session])


def semaphore_holders(
    pairs: list[dict[str, Any]], prefix: str, limit: int
) -> tuple[dict[str, Any] | None, dict[str, bool]]:
    """The ``.lock`` entry of a semaphore prefix (None when there is none yet) and its live holders.

    A holder is live while some key under the prefix is held by its session (its contender entry): a holder
    whose session died is pruned, as Consul does, so its slot frees itself. Raises SemaphoreConflict when the
    ``.lock`` key is not a semaphore's or when its limit differs from ours (Consul's messages)."""
    key = semaphore_key(prefix)
    lock_pair = next((p for p in pairs if p.get("Key") == key), None)
    if lock_pair is None:
        return None, {}
    if int(lock_pair.get("Flags") or 0) != SEMAPHORE_FLAG_VALUE:
        raise SemaphoreConflict("Existing key does not match semaphore use")
    try:
        raw = lock_pair.get("Value")
        doc = json.loads(base64.b64decode(raw)) if raw else {"Limit": limit, "Holders": {}}
        lock_limit, holders = int(doc.get("Limit", 0)), dict(doc.get("Holders") or {})
    except (ValueError, TypeError, AttributeError) as exc:
        raise SemaphoreConflict(f"lock decoding failed: {exc}") from None
    if lock_limit != limit:
        raise SemaphoreConflict(f"semaphore limit conflict (lock: {lock_limit}, local: {limit})")
    alive = {p.get("Session") for p in pairs if p.get("Session")}
    return lock_pair, {sid: True for sid in holders if sid in alive}


def semaphore_take(pairs: list[dict[str, Any]], prefix: str, limit: int,
                   session: str) -> tuple[bytes, int] | None:  # fmt: skip
    """The CAS write that adds ``session`` to the holders: (new ``.lock`` value, ModifyIndex to CAS against; 0
    creates the key), or None when all ``limit`` slots are taken by live holders."""
    lock_pair, holders = semaphore_holders(pairs, prefix, limit)
    if session not in holders and len(holders) >= limit:
        return None
    holders[session] = True
    value = json.dumps({"Limit": limit, "Holders": holders}, separators=(",", ":")).encode()
    return value, int(lock_pair["ModifyIndex"]) if lock_pair else 0


def semaphore_held(pairs: list[dict[str, Any]], prefix: str, limit: int, session: str) -> bool:
    try:
        return session in semaphore_holders(pairs, prefix, limit)[1]
    except SemaphoreConflict:
        return False

# ---------------------------------------------------------------------- the calls the recipes make


class LockAPI:
    """The handful of KV and session calls the recipes make, on the shared client. Errors are APIError with
    Consul's client texts (``Unexpected response code: ...``)."""

    def __init__(self, http: AgentHTTP) -> None:
        self.http = http

    async def close(self) -> None:
        await self.http.close()

    async def node_name(self) -> str:
        resp = await self.http.checked("GET", "/v1/agent/self")
        return str(json.loads(resp.body).get("Config", {}).get("NodeName", ""))

    async def session_create(self, name: str, ttl: str, behavior: str = "release") -> str:
        body = json.dumps({"Name": name, "TTL": ttl, "Behavior": behavior}).encode()
        resp = await self.http.checked("PUT", "/v1/session/create", body=body)
        return str(json.loads(resp.body)["ID"])

    async def session_renew(self, sid: str) -> dict[str, Any] | None:
        """The renewed session, or None when the agent no longer knows it (404)."""
        resp = await self.http.request("PUT", f"/v1/session/renew/{sid}")
        if resp.status == 404:
            return None
        entries = json.loads(resp.raise_for_status().body)
        return entries[0] if entries else None

    async def session_destroy(self, sid: str) -> None:
        await self.http.checked("PUT", f"/v1/session/destroy/{sid}")

    async def kv_get(self, key: str, index: int = 0, wait: float | None = None,
                     consistent: bool = False) -> tuple[dict[str, Any] | None, int]:  # fmt: skip
        entries, new_index = await self.kv_read(key, index, wait, consistent, recurse=False)
        return (entries[0] if entries else None), new_index

    async def kv_list(self, prefix: str, index: int = 0, wait: float | None = None,
                      consistent: bool = False) -> tuple[list[dict[str, Any]], int]:  # fmt: skip
        return await self.kv_read(prefix, index, wait, consistent, recurse=True)

    async def kv_read(self, key: str, index: int, wait: float | None, consistent: bool,
                      recurse: bool) -> tuple[list[dict[str, Any]], int]:  # fmt: skip
        """A read of a key (or of a prefix), blocking past ``index`` when one is given."""
        timeout: float | None = None
        wait_text: str | None = None
        if index:
            wait_text = f"{int(wait * 1000)}ms" if wait else None
            # the agent waits up to ``wait`` (default 5m, at most 10m) plus up to wait/16 of jitter
            timeout = (wait or 600.0) * 1.1 + 15.0
        resp = await self.http.request("GET", kv_path(key), {"recurse": "" if recurse else None}, index=index,
                                       wait=wait_text, consistent=consistent, timeout=timeout)  # fmt: skip
        if resp.status == 404:
            return [], resp.index
        return list(resp.raise_for_status().json() or []), resp.index

    async def kv_acquire(self, key: str, sid: str, value: bytes = b"", flags: int = LOCK_FLAG_VALUE) -> bool:
        resp = await self.http.checked("PUT", kv_path(key), {"acquire": sid, "flags": flags}, value)
        return resp.body.strip() == b"true"

    async def kv_cas(self, key: str, value: bytes, flags: int, modify_index: int) -> bool:
        resp = await self.http.checked("PUT", kv_path(key), {"cas": modify_index, "flags": flags}, value)
        return resp.body.strip() == b"true"

    async def kv_delete(self, key: str) -> None:
        await self.http.checked("DELETE", kv_path(key))

    async def kv_release(self, key: str, sid: str) -> bool:
        resp = await self.http.checked("PUT", kv_path(key), {"release": sid, "flags": LOCK_FLAG_VALUE}, b"")
        return resp.body.strip() == b"true"

    async def kv_delete_cas(self, key: str, modify_index: int) -> bool:
        resp = await self.http.checked("DELETE", kv_path(key), {"cas": modify_index})
        return resp.body.strip() == b"true"


# ---------------------------------------------------------------------- the recipes

class LockFailed(Exception):
    """Acquisition failed for a reason other than the timeout (printed as ``Lock acquisition failed: ...``)."""


@dataclass
class Mutex:
    """Consul's lock recipe (api/lock.go) on ``<prefix>/.lock``: ``create_session``, then ``acquire``; while
    held, a monitor watches the key and a renewer keeps the session alive, and ``wait_lost`` returns when either
    fails. ``release_and_cleanup`` undoes it all."""

    api: LockAPI
    opts: LockOptions
    log: Any
    session: str = ""
    held: bool = False
    lost_reason: str = ""
    _lost: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    behavior = "release"

    async def create_session(self) -> None:
        try:
            self.session = await self.api.session_create(self.opts.session_name, SESSION_TTL, self.behavior)
        except APIError as exc:
            raise LockFailed(f"failed to create session: {exc}") from exc
        self.log.debug("session created", session=self.session, name=self.opts.session_name, ttl=SESSION_TTL)
        self._tasks.append(asyncio.create_task(self._renew(), name="lock-renew"))

    async def acquire(self) -> bool:
        """Block until the key is ours (True) or ``-timeout`` runs out (False); LockFailed on errors."""
        key, sid = self.opts.key, self.session
        start, attempts, index = time.monotonic(), 0, 0
        while True:
            if self._lost.is_set():
                raise LockFailed(f"session lost while waiting: {self.lost_reason}")
            wait = wait_budget(self.opts.timeout, time.monotonic() - start, attempts)
            if wait is None:
                return False
            attempts += 1
            try:
                pair, last = await self.api.kv_get(key, index=index, wait=wait)
            except APIError as exc:
                raise LockFailed(f"failed to read lock: {exc}") from exc
            step = acquire_step(pair, sid)
            self.log.debug("lock key read", key=key, step=step.value, index=last,
                           holder=(pair or {}).get("Session"))  # fmt: skip
            if step is Step.CONFLICT:
                raise LockFailed("Existing key does not match lock use")
            if step is Step.WAIT:
                index = last
                continue
            if step is Step.ACQUIRE:
                try:
                    won = await self.api.kv_acquire(key, sid)
                except APIError as exc:
                    raise LockFailed(f"failed to acquire lock: {exc}") from exc
                if not won:
                    try:
                        pair, last = await self.api.kv_get(key)
                    except APIError as exc:
                        raise LockFailed(f"failed to read lock: {exc}") from exc
                    if pair is not None and pair.get("Session"):
                        index = last  # someone else won the race: wait for them
                    else:  # free but refused: a lock-delay is running; retry later
                        index = 0
                        pause = LOCK_RETRY_S
                        if self.opts.timeout > 0:
                            pause = min(pause, max(0.0, self.opts.timeout - (time.monotonic() - start)) + 0.001)
                        self.log.debug("acquire refused on a free key (lock-delay), retrying", pause=pause)
                        await asyncio.sleep(pause)
                    continue
            self.held = True
            self.log.debug("lock acquired", key=key, session=sid)
            self._tasks.append(asyncio.create_task(self._monitor(), name="lock-monitor"))
            return True

    async def wait_lost(self) -> str:
        await self._lost.wait()
        return self.lost_reason

    def _set_lost(self, reason: str) -> None:
        if not self._lost.is_set():
            self.lost_reason = reason
            self._lost.set()

    async def _monitor(self) -> None:
        key, sid, index = self.opts.key, self.session, 0
        while True:
            retries = self.opts.monitor_retry
            while True:
                try:
                    pair, last = await self.api.kv_get(key, index=index, consistent=True)
                    break
                except APIError as exc:
                    if retries > 0 and exc.retryable:
                        retries -= 1
                        self.log.warning("lock monitor read failed, retrying", error=str(exc), retries_left=retries)
                        await asyncio.sleep(MONITOR_RETRY_S)
                        index = 0
                        continue
                    self._set_lost(f"failed to watch the lock: {exc}")
                    return
            if not still_held(pair, sid):
                holder = (pair or {}).get("Session") or ""
                self._set_lost(f"lock key {key} is now held by session {holder}" if holder
                               else f"lock key {key} is no longer held by session {sid}")  # fmt: skip
                return
            index = last

    async def _renew(self) -> None:
        ttl = parse_duration(SESSION_TTL)
        last_ok = time.monotonic()
        wait = ttl / 2
        while True:
            await asyncio.sleep(wait)
            try:
                entry = await self.api.session_renew(self.session)
            except APIError as exc:
                if exc.retryable and time.monotonic() - last_ok <= ttl:
                    self.log.warning("session renewal failed, retrying", error=str(exc))
                    wait = RENEW_RETRY_S
                    continue
                self._set_lost(f"session renewal failed: {exc}")
                return
            if entry is None:
                self._set_lost(f"session {self.session} expired or was destroyed")
                return
            self.log.debug("session renewed", session=self.session)
            last_ok = time.monotonic()
            try:
                ttl = parse_duration(entry.get("TTL") or SESSION_TTL)
            except DurationError:
                pass
            wait = ttl / 2

    async def release_and_cleanup(self) -> list[str]:
        """Release the key (if held), destroy the session, delete the key if it is free: Consul's Unlock then
        Destroy. Returns the errors met (printed by the caller); a key in use by another holder is not one."""
        errors: list[str] = []
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        key = self.opts.key
        if self.held and self.session:
            self.held = False
            try:
                await self.api.kv_release(key, self.session)
                self.log.debug("lock released", key=key)
            except APIError as exc:
                errors.append(f"Lock release failed: failed to release lock: {exc}")
        if self.session:
            try:
                await self.api.session_destroy(self.session)
                self.log.debug("session destroyed", session=self.session)
            except APIError as exc:
                errors.append(f"Lock release failed: failed to destroy session: {exc}")
        if errors:
            return errors
        try:
            pair, _ = await self.api.kv_get(key)
            if not free_to_delete(pair):
                self.log.debug("cleanup skipped, lock in use" if pair else "cleanup: nothing to delete")
                return errors
            if await self.api.kv_delete_cas(key, int(pair["ModifyIndex"])):
                self.log.debug("cleanup succeeded", key=key)
            else:
                self.log.debug("cleanup aborted, lock in use")
        except APIError as exc:
            errors.append(f"Lock cleanup failed: failed to remove lock: {exc}")
        return errors


@dataclass
class Semaphore(Mutex):
    """Consul's semaphore recipe (api/semaphore.go): a contender key ``<prefix>/<session>`` held by our session
    (Behavior ``delete``, so it vanishes with the session), and ``<prefix>/.lock`` holding
    ``{"Limit": n, "Holders": {session: true}}``, updated with check-and-set. A slot is ours while our session
    is in Holders and still holds a key under the prefix."""

    behavior = "delete"

    async def acquire(self) -> bool:
        opts, sid = self.opts, self.session
        try:
            made = await self.api.kv_acquire(contender_key(opts.prefix, sid), sid, flags=SEMAPHORE_FLAG_VALUE)
        except APIError as exc:
            raise LockFailed(f"failed to make contender entry: {exc}") from exc
        if not made:
            raise LockFailed("failed to make contender entry")
        self.held = True  # from here on, release_and_cleanup removes the contender entry
        start, attempts, index = time.monotonic(), 0, 0
        while True:
            if self._lost.is_set():
                raise LockFailed(f"session lost while waiting: {self.lost_reason}")
            wait = wait_budget(opts.timeout, time.monotonic() - start, attempts)
            if wait is None:
                return False
            attempts += 1
            try:
                pairs, last = await self.api.kv_list(opts.prefix, index=index, wait=wait)
            except APIError as exc:
                raise LockFailed(f"failed to read prefix: {exc}") from exc
            try:
                write = semaphore_take(pairs, opts.prefix, opts.limit, sid)
            except SemaphoreConflict as exc:
                raise LockFailed(str(exc)) from None
            if write is None:
                self.log.debug("all semaphore slots taken, waiting", limit=opts.limit, index=last)
                index = last
                continue
            value, cas = write
            try:
                won = await self.api.kv_cas(opts.key, value, SEMAPHORE_FLAG_VALUE, cas)
            except APIError as exc:
                raise LockFailed(f"failed to update lock: {exc}") from exc
            if not won:  # another contender changed .lock first: read again
                index = 0
                continue
            self.log.debug("semaphore slot acquired", key=opts.key, session=sid, limit=opts.limit)
            self._tasks.append(asyncio.create_task(self._monitor(), name="semaphore-monitor"))
            return True

    async def _monitor(self) -> None:
        opts, sid, index = self.opts, self.session, 0
        while True:
            retries = opts.monitor_retry
            while True:
                try:
                    pairs, last = await self.api.kv_list(opts.prefix, index=index, consistent=True)
                    break
                except APIError as exc:
                    if retries > 0 and exc.retryable:
                        retries -= 1
                        self.log.warning("semaphore monitor read failed, retrying", error=str(exc))
                        await asyncio.sleep(MONITOR_RETRY_S)
                        index = 0
                        continue
                    self._set_lost(f"failed to watch the semaphore: {exc}")
                    return
            if not semaphore_held(pairs, opts.prefix, opts.limit, sid):
                self._set_lost(f"session {sid} is no longer a holder of the semaphore at {opts.prefix}")
                return
            index = last

    async def release_and_cleanup(self) -> list[str]:
        """Consul's Release (drop us from Holders with CAS, delete our contender key) then Destroy (delete
        ``.lock`` when no live holder is left)."""
        errors: list[str] = []
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        opts, sid = self.opts, self.session
        try:
            if self.held and sid:
                self.held = False
                while True:
                    pair, _ = await self.api.kv_get(opts.key)
                    if pair is None or int(pair.get("Flags") or 0) != SEMAPHORE_FLAG_VALUE:
                        break
                    doc = json.loads(base64.b64decode(pair["Value"])) if pair.get("Value") else {}
                    holders = dict(doc.get("Holders") or {})
                    if sid not in holders:
                        break
                    del holders[sid]
                    doc = {"Limit": doc.get("Limit", opts.limit), "Holders": holders}
                    value = json.dumps(doc, separators=(",", ":")).encode()
                    if await self.api.kv_cas(opts.key, value, SEMAPHORE_FLAG_VALUE, int(pair["ModifyIndex"])):
                        break
                await self.api.kv_delete(contender_key(opts.prefix, sid))
                self.log.debug("semaphore slot released", session=sid)
        except (APIError, ValueError) as exc:
            errors.append(f"Lock release failed: {exc}")
        if sid:
            try:
                await self.api.session_destroy(sid)
            except APIError as exc:
                errors.append(f"Lock release failed: failed to destroy session: {exc}")
        if errors:
            return errors
        try:
            pairs, _ = await self.api.kv_list(opts.prefix)
            lock_pair, holders = semaphore_holders(pairs, opts.prefix, opts.limit)
            if lock_pair is not None and not holders:
                if await self.api.kv_delete_cas(opts.key, int(lock_pair["ModifyIndex"])):
                    self.log.debug("cleanup succeeded", key=opts.key)
            else:
                self.log.debug("cleanup aborted, semaphore in use" if lock_pair else "cleanup: nothing to delete")
        except SemaphoreConflict:
            pass
        except APIError as exc:
            errors.append(f"Lock cleanup failed: failed to remove semaphore: {exc}")
        return errors


