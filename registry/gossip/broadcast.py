"""The transmit-limited broadcast queue (memberlist queue.go ``TransmitLimitedQueue``, broadcast.go).

Membership news (alive, suspect, dead) rides on packets a member sends anyway (pings, acks, gossip).  Each
piece of news is sent a limited number of times, ``retransmit_mult * ceil(log10(n + 1))``, enough for an
epidemic to reach every member with high probability; the news sent least often goes first and, among
equals, the newest.  A newer message about a node replaces an older one (memberlist's named broadcasts:
a refutation invalidates the suspicion it answers).  Serf's queries ride in the same queue under their
own key (origin and query id), so one query never replaces another, nor news about a member.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from registry.gossip.messages import Broadcast

__all__ = ["BroadcastQueue", "QueuedBroadcast"]


@dataclass(slots=True)
class QueuedBroadcast:
    node: str | tuple[str, int]
    message: Broadcast
    size: int
    transmits: int
    serial: int
    on_done: Callable[[], None] | None = None


class BroadcastQueue:
    """Broadcasts bucketed by how often each was sent; ``take`` fills a packet's spare room."""

    def __init__(self) -> None:
        self._by_node: dict[str | tuple[str, int], QueuedBroadcast] = {}
        # transmits -> {node: broadcast}
        self._buckets: dict[int, dict[str | tuple[str, int], QueuedBroadcast]] = {}
        self._serial = 0

    def __len__(self) -> int:
        return len(self._by_node)

    def __contains__(self, node: str | tuple[str, int]) -> bool:
        return node in self._by_node

    def queue(self, node: str | tuple[str, int], message: Broadcast, size: int, on_done: Callable[[], None] | None = None) -> None:
        """Queue news about ``node`` (a member's name, or a query's (origin, id)), replacing what was queued
        about it (invalidation)."""
        old = self._by_node.pop(node, None)
        if old is not None:
            bucket = self._buckets[old.transmits]
            del bucket[node]
            if not bucket:
                del self._buckets[old.transmits]
            if old.on_done is not None:
                old.on_done()
        self._serial += 1
        item = QueuedBroadcast(node, message, size, 0, self._serial, on_done)
        self._by_node[node] = item
        self._buckets.setdefault(0, {})[node] = item

    def take(self, budget: int, overhead: int, limit: int) -> list[Broadcast]:
        """Up to ``budget`` bytes of broadcasts (each costing ``overhead`` more), fewest transmits first and
        newest first among equals; each taken one counts a transmit and is dropped at ``limit``."""
        if not self._by_node or budget <= overhead:
            return []
        out: list[Broadcast] = []
        taken: list[QueuedBroadcast] = []
        used = 0
        for transmits in sorted(self._buckets):
            bucket = self._buckets[transmits]
            for item in sorted(bucket.values(), key=_newest_first):
                cost = item.size + overhead
                if used + cost > budget:
                    continue
                used += cost
                out.append(item.message)
                taken.append(item)
            if budget - used <= overhead + 8:
                break
        for item in taken:
            bucket = self._buckets[item.transmits]
            del bucket[item.node]
            if not bucket:
                del self._buckets[item.transmits]
            item.transmits += 1
            if item.transmits >= limit:
                del self._by_node[item.node]
                if item.on_done is not None:
                    item.on_done()
            else:
                self._buckets.setdefault(item.transmits, {})[item.node] = item
        return out

    def clear(self) -> None:
        self._by_node.clear()
        self._buckets.clear()


def _newest_first(item: QueuedBroadcast) -> int:
    return -item.serial
