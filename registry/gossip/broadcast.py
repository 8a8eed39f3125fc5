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
    """Broadcasts bucketed by how often each was sent; ``take`` fills a packet's spare room.

    Each bucket is a dict kept in ascending ``serial`` order (a new broadcast has the highest serial, so it
    is appended), read newest first by iterating it backwards, and ``take`` stops as soon as the packet is
    full: a packet costs the few broadcasts it carries, not a sort of every one queued (a pool of 10,000
    that has just joined queues 10,000 alive messages, and every ping and ack takes from them). Broadcasts
    moved up a bucket out of order mark it, and it is sorted once, when next read."""

    def __init__(self) -> None:
        self._by_node: dict[str | tuple[str, int], QueuedBroadcast] = {}
        # transmits -> {node: broadcast}, in ascending serial unless the bucket is in _unordered
        self._buckets: dict[int, dict[str | tuple[str, int], QueuedBroadcast]] = {}
        self._unordered: set[int] = set()
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
            self._remove(old)
            if old.on_done is not None:
                old.on_done()
        self._serial += 1
        item = QueuedBroadcast(node, message, size, 0, self._serial, on_done)
        self._by_node[node] = item
        self._put(item)

    def _put(self, item: QueuedBroadcast) -> None:
        bucket = self._buckets.get(item.transmits)
        if bucket is None:
            self._buckets[item.transmits] = {item.node: item}
            return
        if bucket and item.serial < next(reversed(bucket.values())).serial:
            self._unordered.add(item.transmits)
        bucket[item.node] = item

    def _remove(self, item: QueuedBroadcast) -> None:
        bucket = self._buckets[item.transmits]
        del bucket[item.node]
        if not bucket:
            del self._buckets[item.transmits]
            self._unordered.discard(item.transmits)

    def _ordered(self, transmits: int) -> dict[str | tuple[str, int], QueuedBroadcast]:
        bucket = self._buckets[transmits]
        if transmits in self._unordered:
            self._unordered.discard(transmits)
            items = sorted(bucket.values(), key=_serial)
            bucket = self._buckets[transmits] = {item.node: item for item in items}
        return bucket

    def take(self, budget: int, overhead: int, limit: int) -> list[Broadcast]:
        """Up to ``budget`` bytes of broadcasts (each costing ``overhead`` more), fewest transmits first and
        newest first among equals; each taken one counts a transmit and is dropped at ``limit``. A broadcast
        too big for the room left is passed over for smaller ones behind it, up to ``MAX_PASSED`` in a row."""
        if not self._by_node or budget <= overhead:
            return []
        out: list[Broadcast] = []
        taken: list[QueuedBroadcast] = []
        used = 0
        full = False
        for transmits in sorted(self._buckets):
            passed = 0
            for item in reversed(self._ordered(transmits).values()):
                cost = item.size + overhead
                if used + cost > budget:
                    passed += 1
                    if passed >= MAX_PASSED:
                        full = True
                        break
                    continue
                passed = 0
                used += cost
                out.append(item.message)
                taken.append(item)
                if budget - used <= overhead + 8:
                    full = True
                    break
            if full:
                break
        # Oldest first, so that each moves to the end of its next bucket in ascending serial order.
        for item in reversed(taken):
            self._remove(item)
            item.transmits += 1
            if item.transmits >= limit:
                del self._by_node[item.node]
                if item.on_done is not None:
                    item.on_done()
            else:
                self._put(item)
        return out

    def clear(self) -> None:
        self._by_node.clear()
        self._buckets.clear()
        self._unordered.clear()


# How many broadcasts in a row ``take`` passes over because they do not fit before it calls the packet full.
MAX_PASSED = 16


def _serial(item: QueuedBroadcast) -> int:
    return item.serial
