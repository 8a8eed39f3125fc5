"""TTL timers for sessions, on the leader only (Consul's agent/consul/session_ttl.go).

While this server leads, every session with a TTL has a timer of TTL x ``ttl_multiplier`` (2, as Consul).
A renew (``reset``) starts it again. When it fires, the leader proposes a ``session`` destroy command
stamped with its time: the invalidation itself goes through the log like any write. Timers follow the
replicated sessions table: a session created through any server gets one when the leader applies it, one
destroyed loses it. On losing leadership every timer stops; a new leader starts a full timer for every TTL
session it has (so a session may live up to 2 x TTL past the last renew, plus an election, never less).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import structlog

from registry.commands import SessionDestroy
from registry.sessions import TOPIC_SESSIONS, TTL_MULTIPLIER

log = structlog.get_logger("proconsul.sessions")

INVALIDATE_ATTEMPTS = 6
INVALIDATE_RETRY_BASE = 0.5  # seconds; doubled on each failed attempt


class SessionTimers:
    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.ttl_multiplier: float = TTL_MULTIPLIER  # tests may shorten it
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._leading = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.agent.hub.listeners.append(self._on_change)
        callbacks = getattr(self.agent.consensus, "on_leader_change", None)
        if callbacks is not None:
            callbacks.append(self._on_leader_change)
        self._on_leader_change(self.agent.consensus.is_leader())

    def stop(self) -> None:
        self._leading = False
        self.clear_all()
        for task in list(self._tasks):
            task.cancel()

    def _on_leader_change(self, leading: bool) -> None:
        self._leading = leading
        if leading:
            self.reconcile()  # Consul's initializeSessionTimers
        else:
            self.clear_all()

    def _on_change(self, topics: Iterable[Any] | None, kv_keys: Iterable[str] | None) -> None:
        if topics is None or TOPIC_SESSIONS in topics:
            if self._leading:
                self.reconcile()

    # ------------------------------------------------------------------ timers

    def reconcile(self) -> None:
        """Give every TTL session in the store a timer (keeping running ones); drop timers of sessions
        that are gone."""
        sessions = self.agent.store.sessions
        for sid in [sid for sid in self._timers if sid not in sessions]:
            self._timers.pop(sid).cancel()
        for sid, s in sessions.items():
            if sid not in self._timers and s.ttl_seconds() > 0:
                self._arm(sid, s.ttl_seconds())

    def reset(self, sid: str) -> bool:
        """A renew: restart the session's timer. False when the session does not exist."""
        s = self.agent.store.sessions.get(sid)
        if s is None:
            return False
        ttl = s.ttl_seconds()
        if ttl > 0 and self._leading:
            old = self._timers.pop(sid, None)
            if old is not None:
                old.cancel()
            self._arm(sid, ttl)
        return True

    def _arm(self, sid: str, ttl: float) -> None:
        assert self._loop is not None
        self._timers[sid] = self._loop.call_later(ttl * self.ttl_multiplier, self._expired, sid)

    def clear_all(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()

    def active(self) -> int:
        return len(self._timers)

    def _expired(self, sid: str) -> None:
        self._timers.pop(sid, None)
        assert self._loop is not None
        task = self._loop.create_task(self._invalidate(sid), name=f"session-expire-{sid[:8]}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _invalidate(self, sid: str) -> None:
        delay = INVALIDATE_RETRY_BASE
        for _ in range(INVALIDATE_ATTEMPTS):
            if not self._leading or sid not in self.agent.store.sessions:
                return
            try:
                await self.agent.propose(SessionDestroy(sid))
                log.debug("session TTL expired", session=sid)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - no quorum for a moment: try again
                log.warning("session invalidation failed", session=sid, error=str(exc))
            await asyncio.sleep(delay)
            delay *= 2
        log.error("giving up invalidating an expired session", session=sid)

