"""Watch sets for blocking queries: wake exactly the queries that read what changed.

A blocking query registers one future on each topic its read looked at. The FSM reports the topics and
KV keys each command touched; a KV key wakes watchers of the key itself (("kv", key)) and of every prefix
of it (("kvp", prefix)), found by walking the key's prefixes rather than the watcher list, so the cost of a
write is O(len(key)) however many prefix watchers exist.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from registry.state.store import Topic


class WatchHub:
    def __init__(self) -> None:
        self._waiters: dict[Topic, set[asyncio.Future[None]]] = {}
        self._prefix_topics = 0  # how many ("kvp", p) topics have waiters; skip the prefix walk when none
        self.wakeups = 0  # futures woken, for tests and metrics
        # Called with (topics, kv_keys) on every change, and with (None, None) when everything changed
        # (a restore): caches of rendered answers drop exactly what the change touched.
        self.listeners: list[Callable[[Iterable[Topic] | None, Iterable[str] | None], None]] = []

    def watch(self, topics: Iterable[Topic]) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for t in topics:
            waiters = self._waiters.get(t)
            if waiters is None:
                waiters = self._waiters[t] = set()
                if t[0] == "kvp":
                    self._prefix_topics += 1
            waiters.add(fut)
        return fut

    def unwatch(self, topics: Iterable[Topic], fut: asyncio.Future[None]) -> None:
        for t in topics:
            waiters = self._waiters.get(t)
            if waiters is None:
                continue
            waiters.discard(fut)
            if not waiters:
                del self._waiters[t]
                if t[0] == "kvp":
                    self._prefix_topics -= 1

    def _wake(self, topic: Topic) -> None:
        waiters = self._waiters.pop(topic, None)
        if not waiters:
            return
        if topic[0] == "kvp":
            self._prefix_topics -= 1
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
                self.wakeups += 1

    def notify(self, topics: Iterable[Topic], kv_keys: Iterable[str] = ()) -> None:
        for listener in self.listeners:
            listener(topics, kv_keys)
        for t in topics:
            self._wake(t)
        for key in kv_keys:
            self._wake(("kv", key))
            if self._prefix_topics:
                for i in range(len(key) + 1):
                    self._wake(("kvp", key[:i]))

    def notify_all(self) -> None:
        """A snapshot restore replaced the store: every query must re-run."""
        for listener in self.listeners:
            listener(None, None)
        for t in list(self._waiters):
            self._wake(t)

    def waiting(self) -> int:
        return sum(len(w) for w in self._waiters.values())
