"""Watch sets for blocking queries: wake exactly the queries that read what changed.

A blocking query registers one future on each topic its read looked at (the ``WatchSet`` the store
filled). The FSM reports the topics and KV keys each command touched; a KV key wakes watchers of the key
itself (("kv", key)) and of every prefix of it (("kvp", prefix)). ``TopicMap`` holds "who depends on which
topic" for both the hub's waiters and the HTTP hot cache's rendered answers, so the walk from a change
to what it touches (``topics.changed_topics``) is written once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from registry.state.topics import KV_PREFIX, Topic, changed_topics

T = TypeVar("T")


class TopicMap(Generic[T]):
    """Topic -> the set of items (waiters, cache keys) that depend on it."""

    __slots__ = ("_by_topic", "_prefix_topics")

    def __init__(self) -> None:
        self._by_topic: dict[Topic, set[T]] = {}
        self._prefix_topics = 0  # how many ("kvp", p) topics have items; skip the prefix walk when none

    def __bool__(self) -> bool:
        return bool(self._by_topic)

    def __contains__(self, topic: Topic) -> bool:
        return topic in self._by_topic

    def add(self, topics: Iterable[Topic], item: T) -> None:
        by_topic = self._by_topic
        for t in topics:
            items = by_topic.get(t)
            if items is None:
                items = by_topic[t] = set()
                if t[0] == KV_PREFIX:
                    self._prefix_topics += 1
            items.add(item)

    def discard(self, topics: Iterable[Topic], item: T) -> None:
        by_topic = self._by_topic
        for t in topics:
            items = by_topic.get(t)
            if items is None:
                continue
            items.discard(item)
            if not items:
                del by_topic[t]
                if t[0] == KV_PREFIX:
                    self._prefix_topics -= 1

    def pop(self, topic: Topic) -> set[T] | None:
        items = self._by_topic.pop(topic, None)
        if items is not None and topic[0] == KV_PREFIX:
            self._prefix_topics -= 1
        return items

    def pop_changed(self, topics: Iterable[Topic], kv_keys: Iterable[str]) -> list[set[T]]:
        """Remove and return the items of every topic a change (these topics and KV keys) touches."""
        out = []
        for t in changed_topics(topics, kv_keys, self._prefix_topics > 0):
            items = self.pop(t)
            if items:
                out.append(items)
        return out

    def pop_all(self) -> list[set[T]]:
        out = list(self._by_topic.values())
        self._by_topic.clear()
        self._prefix_topics = 0
        return out

    def count(self) -> int:
        return sum(len(items) for items in self._by_topic.values())


class WatchHub:
    def __init__(self) -> None:
        self._waiters: TopicMap[asyncio.Future[None]] = TopicMap()
        self.wakeups = 0  # futures woken, for tests and metrics
        # Called with (topics, kv_keys) on every change, and with (None, None) when everything changed
        # (a restore): caches of rendered answers drop exactly what the change touched.
        self.listeners: list[Callable[[Iterable[Topic] | None, Iterable[str] | None], None]] = []

    def watch(self, topics: Iterable[Topic]) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(topics, fut)
        return fut

    def unwatch(self, topics: Iterable[Topic], fut: asyncio.Future[None]) -> None:
        self._waiters.discard(topics, fut)

    def _wake(self, woken: list[set[asyncio.Future[None]]]) -> None:
        for waiters in woken:
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
                    self.wakeups += 1

    def notify(self, topics: Iterable[Topic], kv_keys: Iterable[str] = ()) -> None:
        for listener in self.listeners:
            listener(topics, kv_keys)
        if self._waiters:
            self._wake(self._waiters.pop_changed(topics, kv_keys))

    def notify_all(self) -> None:
        """A snapshot restore replaced the store: every query must re-run."""
        for listener in self.listeners:
            listener(None, None)
        self._wake(self._waiters.pop_all())

    def waiting(self) -> int:
        return self._waiters.count()
