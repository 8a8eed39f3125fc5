"""Watch topics and the watch set a read fills.

A topic names something a read can depend on; the store's writes record the topics they touch and its
reads add the topics they look at to a ``WatchSet``, as Consul's state store functions add the watch
channels of exactly what they read to a ``memdb.WatchSet`` (agent/consul/state/catalog.go). Topics are
small tuples:

  ("nodes",)            the node list           ("node", name)      one node, its services and checks
  ("services",)         the service-name list   ("svc", name)       instances of one service and their health
  ("checks",)           any check               ("kv", key)         one key
  ("kvp", prefix)       any key under a prefix  (table,)            one generic table (CA, config entries)
  ("sessions",)         any session
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

Topic = tuple[Any, ...]
T_NODES: Topic = ("nodes",)
T_SERVICES: Topic = ("services",)
T_CHECKS: Topic = ("checks",)
T_SESSIONS: Topic = ("sessions",)
KV_PREFIX = "kvp"


class WatchSet(set[Topic]):
    """The topics one read looked at, and the index of what it read.

    The index is Consul's blocking-query index: the largest index over what the read looked at (a
    table's index, a service's or a node's, a key's ModifyIndex or tombstone). Recording both in one
    call (``saw``) means a read cannot report an index for something it does not also watch. It is a
    set itself, so a read allocates one object for both, and the watch hub and the HTTP hot cache
    iterate it directly.
    """

    __slots__ = ("index",)

    def __init__(self) -> None:
        super().__init__()
        self.index = 0

    def saw(self, topic: Topic, index: int) -> None:
        self.add(topic)
        if index > self.index:
            self.index = index


def changed_topics(topics: Iterable[Topic], kv_keys: Iterable[str], prefixes: bool) -> Iterator[Topic]:
    """Every topic a change wakes: the topics written, and for each KV key written the key's own topic
    and, when ``prefixes`` (someone watches a prefix), the topic of every prefix of it. Walking the key's
    prefixes, not the watchers, keeps a write O(len(key)) however many prefix watchers there are."""
    yield from topics
    for key in kv_keys:
        yield ("kv", key)
        if prefixes:
            for i in range(len(key) + 1):
                yield (KV_PREFIX, key[:i])
