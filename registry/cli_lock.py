"""``proconsul lock [options] prefix child...``: run a child process while holding a KV lock (Consul's ``consul lock``).

The lock is Consul's leader-election recipe on ``<prefix>/.lock``: a session (TTL 15s, renewed every TTL/2,
with the agent node's ``serfHealth`` check by default), ``?acquire=<session>`` with blocking queries on the key
until it is free, then a consistent blocking query that watches the key for as long as the child runs. If the
key's session changes or disappears, or the session cannot be renewed, the lock is lost: the child gets SIGTERM,
then SIGKILL after a grace period. When the child exits the key is released, the session destroyed and the key
deleted if nobody else holds it. With ``-n`` above 1 it is Consul's semaphore recipe instead (see Semaphore).

The module is split in two: a pure core (argument parsing, lock-state decisions, exit codes) that is tested
without an agent, and a thin asyncio shell (aiohttp for HTTP, ``asyncio`` subprocesses) that performs them.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import json
import os
import signal
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from registry.gocompat import DurationError, parse_duration

# ---------------------------------------------------------------------- constants (Consul's values)

LOCK_FLAG_VALUE = 0x2DDCCBC058A50C18  # api.LockFlagValue: marks a KV entry as a lock (not a semaphore)
SEMAPHORE_FLAG_VALUE = 0xE0F69A2BAA414DE0  # api.SemaphoreFlagValue
LOCK_KEY_SUFFIX = ".lock"  # api.DefaultSemaphoreKey: a lock and a semaphore on one prefix then conflict
SESSION_TTL = "15s"  # api.DefaultLockSessionTTL
LOCK_WAIT_S = 15.0  # api.DefaultLockWaitTime: one blocking query while waiting for the key
LOCK_RETRY_S = 5.0  # api.DefaultLockRetryTime: pause after a refused acquire on a free key (lock-delay)
KILL_GRACE_S = 5.0  # lockKillGracePeriod: SIGTERM, then SIGKILL after this long
MONITOR_RETRY = 3  # defaultMonitorRetry
MONITOR_RETRY_S = 1.0  # defaultMonitorRetryTime
RENEW_RETRY_S = 1.0  # pause between renewals that failed with a transient error
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
SHUTDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM)

USAGE = """\
Usage: proconsul lock [options] prefix child...

  Acquire a lock on a KV prefix and run the child command while it is held.
  The child sees CONSUL_LOCK_HELD=true in its environment. If the lock is lost
  or the agent cannot be reached, the child gets SIGTERM and, 5 seconds later,
  SIGKILL. When the child exits the lock is released.

  The lock lives at <prefix>/.lock; every holder of a prefix must use the same -n.

Command Options:

  -child-exit-code       Exit 2 when the child fails (otherwise the child's
                         failure is not propagated). Default false.
  -monitor-retry=<int>   How many 500 errors (with 1s between tries) to ride out
                         while watching the lock. Default 3; 0 disables.
  -n=<int>               Number of concurrent holders. Default 1 (a mutex);
                         more than 1 is a semaphore.
  -name=<string>         Name of the lock session. Default: derived from the
                         child command and the prefix.
  -pass-stdin            Give the child this process's stdin.
  -shell                 Run the child through $SHELL -c (or /bin/sh -c).
                         Default true; -shell=false runs it directly.
  -timeout=<duration>    Give up acquiring after this long, e.g. "500ms", "3h".
                         Default 0: wait forever. -try is a deprecated alias.
  -verbose               Log what the command does (on stderr).

HTTP API Options:

  -http-addr=<address>   Agent address (env CONSUL_HTTP_ADDR / PROCONSUL_HTTP_ADDR).
                         Default http://127.0.0.1:8500.
  -token=<value>         ACL token (env CONSUL_HTTP_TOKEN).
  -datacenter=<name>     Datacenter to use. Default: the agent's.
  -stale                 Accepted for compatibility; the lock always reads consistently.
"""


# ---------------------------------------------------------------------- pure core: arguments


class UsageError(Exception):
    """Bad command line: the message, then (when ``show_usage``) the usage text; exit 1."""

    def __init__(self, message: str, show_usage: bool = True) -> None:
        super().__init__(message)
        self.show_usage = show_usage


class HelpRequested(Exception):
    pass


@dataclass(frozen=True)
class Options:
    prefix: str
    child: tuple[str, ...]
    limit: int = 1
    name: str = ""
    pass_stdin: bool = False
    shell: bool = True
    timeout: float = 0.0
    monitor_retry: int = MONITOR_RETRY
    child_exit_code: bool = False
    verbose: bool = False
    http_addr: str | None = None
    token: str | None = None
    datacenter: str | None = None
    stale: bool = False

    @property
    def key(self) -> str:
        return lock_key(self.prefix)

    @property
    def session_name(self) -> str:
        return self.name or default_session_name(self.child, self.prefix)


_BOOL_FLAGS = {"pass-stdin": "pass_stdin", "shell": "shell", "child-exit-code": "child_exit_code",
               "verbose": "verbose", "stale": "stale"}  # fmt: skip
_VALUE_FLAGS = {"n": "limit", "name": "name", "timeout": "timeout", "try": "timeout",
                "monitor-retry": "monitor_retry", "http-addr": "http_addr", "token": "token",
                "datacenter": "datacenter"}  # fmt: skip
_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def _convert(flag: str, attr: str, raw: str) -> Any:
    if attr in ("limit", "monitor_retry"):
        try:
            return int(raw, 0)
        except ValueError:
            raise UsageError(f'invalid value "{raw}" for flag -{flag}: parse error') from None
    if attr == "timeout":
        try:
            return parse_duration(raw, allow_negative=True, field=flag)
        except DurationError:
            raise UsageError(f'invalid value "{raw}" for flag -{flag}: parse error') from None
    return raw


def parse_args(argv: list[str]) -> Options:
    """Go ``flag`` semantics: flags (``-f``, ``--f``, ``-f=v``, ``-f v``) up to the first non-flag argument or
    ``--``; everything after is the prefix and the child command, untouched (so the child's own flags stay its
    own). Then Consul's checks, in Consul's order and with its messages."""
    values: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if len(arg) < 2 or not arg.startswith("-"):
            break
        name = arg[2:] if arg.startswith("--") else arg[1:]
        if not name or name.startswith("-") or name.startswith("="):
            raise UsageError(f"bad flag syntax: {arg}")
        name, eq, raw = name.partition("=")
        i += 1
        if name in ("h", "help"):
            raise HelpRequested
        if name in _BOOL_FLAGS:
            if not eq:
                values[_BOOL_FLAGS[name]] = True
            elif raw in _TRUE or raw in _FALSE:
                values[_BOOL_FLAGS[name]] = raw in _TRUE
            else:
                raise UsageError(f'invalid boolean value "{raw}" for -{name}: parse error')
        elif name in _VALUE_FLAGS:
            if not eq:
                if i >= len(argv):
                    raise UsageError(f"flag needs an argument: -{name}")
                raw = argv[i]
                i += 1
            values[_VALUE_FLAGS[name]] = _convert(name, _VALUE_FLAGS[name], raw)
        else:
            raise UsageError(f"flag provided but not defined: -{name}")
    extra = argv[i:]
    if values.get("limit", 1) <= 0:
        raise UsageError("Lock holder limit must be positive", show_usage=False)
    if len(extra) < 2:
        raise UsageError("Key prefix and child command must be specified", show_usage=False)
    if values.get("timeout", 0.0) < 0:
        raise UsageError("Timeout must be positive", show_usage=False)
    if values.get("monitor_retry", MONITOR_RETRY) < 0:
        raise UsageError("Number for 'monitor-retry' must be >= 0", show_usage=False)
    return Options(prefix=extra[0].lstrip("/"), child=tuple(extra[1:]), **values)


def lock_key(prefix: str) -> str:
    """``path.Join(prefix, ".lock")``: no leading, doubled or trailing slashes."""
    parts = [p for p in prefix.split("/") if p and p != "."]
    return "/".join([*parts, LOCK_KEY_SUFFIX])


def default_session_name(child: tuple[str, ...] | list[str], prefix: str) -> str:
    return f"Consul lock for '{' '.join(child)}' at '{prefix}'"


def child_argv(child: tuple[str, ...], use_shell: bool, env: dict[str, str]) -> list[str]:
    """Consul's exec.Script (``$SHELL -c "<args joined by spaces>"``, /bin/sh by default) or exec.Subprocess."""
    if use_shell:
        return [env.get("SHELL") or "/bin/sh", "-c", " ".join(child)]
    return list(child)


# ---------------------------------------------------------------------- pure core: lock decisions


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


class Outcome(enum.Enum):
    CHILD_EXITED = "child exited"
    LOCK_LOST = "lock lost"
    SHUTDOWN = "shutdown"


def exit_code(outcome: Outcome, child_failed: bool, propagate: bool) -> int:
    """Consul's rules: 0 after the child ran, whatever it returned, unless ``-child-exit-code``, then 2 when the
    child failed (non-zero exit, killed, or could not start). Losing the lock exits 1, as Consul's does (there
    through the release of a lock no longer held failing): the caller can tell the child's work was cut short."""
    if outcome is Outcome.LOCK_LOST:
        return 1
    if outcome is Outcome.CHILD_EXITED and propagate and child_failed:
        return 2
    return 0


def describe_exit(returncode: int) -> str:
    """Go's ExitError text, which Consul prints as ``Error running handler: <this>``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"signal: {_SIGNAL_WORDS.get(name, name)}"
    return f"exit status {returncode}"


_SIGNAL_WORDS = {"SIGTERM": "terminated", "SIGKILL": "killed", "SIGINT": "interrupt", "SIGHUP": "hangup",
                 "SIGQUIT": "quit", "SIGABRT": "aborted", "SIGSEGV": "segmentation fault",
                 "SIGUSR1": "user defined signal 1", "SIGUSR2": "user defined signal 2"}  # fmt: skip


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


# ---------------------------------------------------------------------- shell: HTTP


class ApiError(Exception):
    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status

    @property
    def retryable(self) -> bool:
        """Consul's IsRetryableError: a 500, or no answer at all."""
        return self.status == 0 or self.status >= 500


class LockApi:
    """The handful of HTTP calls the lock makes, on one aiohttp session."""

    def __init__(self, base: str, token: str, datacenter: str | None) -> None:
        import aiohttp

        self.base = base
        self.dc = datacenter
        headers = {"X-Consul-Token": token} if token else {}
        self._session = aiohttp.ClientSession(headers=headers)

    async def close(self) -> None:
        await self._session.close()

    async def call(
        self, method: str, path: str, params: dict[str, Any] | None = None, body: bytes | None = None,
        timeout: float | None = 30.0,
    ) -> tuple[int, bytes, Any]:  # fmt: skip
        import aiohttp
        import yarl

        params = {k: v for k, v in (params or {}).items() if v is not None}
        if self.dc:
            params.setdefault("dc", self.dc)
        qs = urllib.parse.urlencode(params)
        url = yarl.URL(f"{self.base}{path}" + (f"?{qs}" if qs else ""), encoded=True)
        try:
            async with self._session.request(method, url, data=body,
                                             timeout=aiohttp.ClientTimeout(total=timeout)) as resp:  # fmt: skip
                return resp.status, await resp.read(), resp.headers
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise ApiError(f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)) from exc

    async def checked(self, method: str, path: str, params: dict[str, Any] | None = None,
                      body: bytes | None = None, timeout: float | None = 30.0) -> tuple[bytes, Any]:  # fmt: skip
        status, raw, headers = await self.call(method, path, params, body, timeout)
        if status >= 400:
            text = raw.decode(errors="replace").strip()
            raise ApiError(f"Unexpected response code: {status} ({text})", status)
        return raw, headers

    async def node_name(self) -> str:
        raw, _ = await self.checked("GET", "/v1/agent/self")
        return str(json.loads(raw).get("Config", {}).get("NodeName", ""))

    async def session_create(self, name: str, ttl: str, behavior: str = "release") -> str:
        body = json.dumps({"Name": name, "TTL": ttl, "Behavior": behavior}).encode()
        raw, _ = await self.checked("PUT", "/v1/session/create", body=body)
        return str(json.loads(raw)["ID"])

    async def session_renew(self, sid: str) -> dict[str, Any] | None:
        """The renewed session, or None when the agent no longer knows it (404)."""
        status, raw, _ = await self.call("PUT", f"/v1/session/renew/{sid}")
        if status == 404:
            return None
        if status >= 400:
            raise ApiError(f"Unexpected response code: {status} ({raw.decode(errors='replace').strip()})", status)
        entries = json.loads(raw)
        return entries[0] if entries else None

    async def session_destroy(self, sid: str) -> None:
        await self.checked("PUT", f"/v1/session/destroy/{sid}")

    def _kv(self, key: str) -> str:
        return "/v1/kv/" + urllib.parse.quote(key)

    async def kv_get(self, key: str, index: int = 0, wait: float | None = None,
                     consistent: bool = False) -> tuple[dict[str, Any] | None, int]:  # fmt: skip
        entries, new_index = await self.kv_read(key, index, wait, consistent, recurse=False)
        return (entries[0] if entries else None), new_index

    async def kv_list(self, prefix: str, index: int = 0, wait: float | None = None,
                      consistent: bool = False) -> tuple[list[dict[str, Any]], int]:  # fmt: skip
        return await self.kv_read(prefix, index, wait, consistent, recurse=True)

    async def kv_read(self, key: str, index: int, wait: float | None, consistent: bool,
                      recurse: bool) -> tuple[list[dict[str, Any]], int]:  # fmt: skip
        params: dict[str, Any] = {"recurse": "" if recurse else None}
        timeout: float | None = 30.0
        if index:
            params["index"] = index
            params["wait"] = f"{int(wait * 1000)}ms" if wait else None
            # the agent waits up to ``wait`` (default 5m, at most 10m) plus up to wait/16 of jitter
            timeout = (wait or 600.0) * 1.1 + 15.0
        if consistent:
            params["consistent"] = ""
        status, raw, headers = await self.call("GET", self._kv(key), params, timeout=timeout)
        new_index = int(headers.get("X-Consul-Index", "0") or 0)
        if status == 404:
            return [], new_index
        if status >= 400:
            raise ApiError(f"Unexpected response code: {status} ({raw.decode(errors='replace').strip()})", status)
        return list(json.loads(raw) or []), new_index

    async def kv_acquire(self, key: str, sid: str, value: bytes = b"", flags: int = LOCK_FLAG_VALUE) -> bool:
        raw, _ = await self.checked("PUT", self._kv(key), {"acquire": sid, "flags": flags}, value)
        return raw.strip() == b"true"

    async def kv_cas(self, key: str, value: bytes, flags: int, modify_index: int) -> bool:
        raw, _ = await self.checked("PUT", self._kv(key), {"cas": modify_index, "flags": flags}, value)
        return raw.strip() == b"true"

    async def kv_delete(self, key: str) -> None:
        await self.checked("DELETE", self._kv(key))

    async def kv_release(self, key: str, sid: str) -> bool:
        raw, _ = await self.checked("PUT", self._kv(key), {"release": sid, "flags": LOCK_FLAG_VALUE}, b"")
        return raw.strip() == b"true"

    async def kv_delete_cas(self, key: str, modify_index: int) -> bool:
        raw, _ = await self.checked("DELETE", self._kv(key), {"cas": modify_index})
        return raw.strip() == b"true"


# ---------------------------------------------------------------------- shell: the lock


class LockFailed(Exception):
    """Acquisition failed for a reason other than the timeout (printed as ``Lock acquisition failed: ...``)."""


@dataclass
class Mutex:
    api: LockApi
    opts: Options
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
        except ApiError as exc:
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
            except ApiError as exc:
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
                except ApiError as exc:
                    raise LockFailed(f"failed to acquire lock: {exc}") from exc
                if not won:
                    try:
                        pair, last = await self.api.kv_get(key)
                    except ApiError as exc:
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
                except ApiError as exc:
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
            except ApiError as exc:
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
            except ApiError as exc:
                errors.append(f"Lock release failed: failed to release lock: {exc}")
        if self.session:
            try:
                await self.api.session_destroy(self.session)
                self.log.debug("session destroyed", session=self.session)
            except ApiError as exc:
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
        except ApiError as exc:
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
        except ApiError as exc:
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
            except ApiError as exc:
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
            except ApiError as exc:
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
                except ApiError as exc:
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
        except (ApiError, ValueError) as exc:
            errors.append(f"Lock release failed: {exc}")
        if sid:
            try:
                await self.api.session_destroy(sid)
            except ApiError as exc:
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
        except ApiError as exc:
            errors.append(f"Lock cleanup failed: failed to remove semaphore: {exc}")
        return errors


# ---------------------------------------------------------------------- shell: the child


class Runner:
    def __init__(self, opts: Options, log: Any) -> None:
        self.opts = opts
        self.log = log
        self.child: asyncio.subprocess.Process | None = None
        self.shutdown = asyncio.Event()
        self.forwarded: set[int] = set()

    def on_signal(self, sig: int) -> None:
        child = self.child
        if child is not None and child.returncode is None:
            try:
                child.send_signal(sig)
                self.forwarded.add(sig)
            except ProcessLookupError:
                pass
            except OSError as exc:
                print(f"Warning, could not forward signal: {exc}", file=sys.stderr)
        if sig in SHUTDOWN_SIGNALS:
            self.log.debug("shutdown triggered", signal=signal.Signals(sig).name)
            self.shutdown.set()

    async def start_child(self) -> asyncio.subprocess.Process | None:
        env = {**os.environ, "CONSUL_LOCK_HELD": "true"}
        argv = child_argv(self.opts.child, self.opts.shell, env)
        self.log.debug("starting handler", argv=argv, pass_stdin=self.opts.pass_stdin)
        try:
            self.child = await asyncio.create_subprocess_exec(
                *argv, env=env, stdin=None if self.opts.pass_stdin else asyncio.subprocess.DEVNULL
            )
        except OSError as exc:
            print(f"Error starting handler: {exc}", file=sys.stderr)
            return None
        return self.child

    async def kill_child(self) -> None:
        child = self.child
        if child is None or child.returncode is not None:
            self.log.debug("no child process to kill")
            return
        if signal.SIGTERM not in self.forwarded:
            self.log.debug("terminating child", pid=child.pid)
            try:
                child.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            await asyncio.wait_for(child.wait(), KILL_GRACE_S)
            self.log.debug("child terminated", pid=child.pid)
            return
        except TimeoutError:
            self.log.debug("child did not exit after grace period, killing", pid=child.pid, grace_s=KILL_GRACE_S)
        try:
            child.kill()
        except ProcessLookupError:
            pass
        await child.wait()


async def _first(*aws: Any) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def run_lock(opts: Options, base: str, token: str, log: Any) -> int:
    loop = asyncio.get_running_loop()
    runner = Runner(opts, log)
    for sig in FORWARDED_SIGNALS:
        loop.add_signal_handler(sig, runner.on_signal, sig)
    api = LockApi(base, token, opts.datacenter)
    try:
        try:
            await api.node_name()
        except ApiError as exc:
            print(f"Error querying Consul agent: {exc}", file=sys.stderr)
            return 1
        if opts.limit > 1:
            mutex: Mutex = Semaphore(api, opts, log)
            log.debug("setting up semaphore", limit=opts.limit, prefix=opts.prefix)
        else:
            mutex = Mutex(api, opts, log)
            log.debug("setting up lock", key=opts.key)
        try:
            rc = await _hold_and_run(opts, runner, mutex, log)
        except BaseException:
            await mutex.release_and_cleanup()
            raise
        errors = await mutex.release_and_cleanup()
        for err in errors:
            print(err, file=sys.stderr)
        return 1 if errors else rc  # Consul: a failed release or cleanup is exit 1, whatever the child did
    finally:
        await api.close()
        for sig in FORWARDED_SIGNALS:
            loop.remove_signal_handler(sig)


async def _hold_and_run(opts: Options, runner: Runner, mutex: Mutex, log: Any) -> int:
    log.debug("attempting lock acquisition", key=opts.key)
    acquired: list[bool] = []
    failure: list[str] = []

    async def acquire() -> None:
        try:
            await mutex.create_session()
            acquired.append(await mutex.acquire())
        except LockFailed as exc:
            failure.append(str(exc))

    await _first(acquire(), runner.shutdown.wait())
    if failure:
        print(f"Lock acquisition failed: {failure[0]}", file=sys.stderr)
        return 1
    if not acquired or not acquired[0]:
        print("Shutdown triggered or timeout during lock acquisition", file=sys.stderr)
        return 1
    if runner.shutdown.is_set():
        print("Shutdown triggered during lock acquisition", file=sys.stderr)
        return 1

    child = await runner.start_child()
    if child is None:
        return exit_code(Outcome.CHILD_EXITED, True, opts.child_exit_code)
    child_wait = asyncio.ensure_future(child.wait())
    await _first(asyncio.shield(child_wait), mutex.wait_lost(), runner.shutdown.wait())
    if child_wait.done():
        rc = child_wait.result()
        if rc != 0:
            print(f"Error running handler: {describe_exit(rc)}", file=sys.stderr)
        log.debug("child terminated, releasing lock", returncode=rc)
        return exit_code(Outcome.CHILD_EXITED, rc != 0, opts.child_exit_code)
    if runner.shutdown.is_set():
        log.debug("shutdown triggered, killing child")
        outcome = Outcome.SHUTDOWN
    else:
        print(f"Lock lost, killing child: {mutex.lost_reason}", file=sys.stderr)
        outcome = Outcome.LOCK_LOST
    await runner.kill_child()
    await child_wait
    return exit_code(outcome, True, opts.child_exit_code)


# ---------------------------------------------------------------------- entry point


def cmd_lock(argv: list[str]) -> int:
    try:
        opts = parse_args(argv)
    except HelpRequested:
        print(USAGE)
        return 0
    except UsageError as exc:
        print(str(exc), file=sys.stderr)
        if exc.show_usage:
            print(f"\n{USAGE}", file=sys.stderr)
        return 1
    import argparse

    from registry import eventloop, logs
    from registry.cli import Client

    logs.configure("debug" if opts.verbose else "warn", stream=sys.stderr)
    import structlog

    log = structlog.get_logger("proconsul.lock").bind(prefix=opts.prefix)
    client = Client(argparse.Namespace(http_addr=opts.http_addr, token=opts.token, datacenter=None, stale=False))
    return eventloop.run(run_lock(opts, client.base, client.token, log))


COMMANDS = {"lock": cmd_lock}

__all__ = [
    "COMMANDS", "Options", "Outcome", "SemaphoreConflict", "Step", "acquire_step", "child_argv", "contender_key",
    "default_session_name", "describe_exit", "exit_code", "free_to_delete", "lock_key", "parse_args",
    "semaphore_held", "semaphore_holders", "semaphore_take", "still_held", "wait_budget",
]  # fmt: skip
