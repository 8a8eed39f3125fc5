"""Sorting answers by estimated round-trip time (``?near``), as Consul's servers do.

Pure: the coordinates come in as arguments. Consul's ``sortNodesByDistanceFrom`` (agent/consul/rtt.go)
sorts catalog and health answers, and prepared-query results, by the distance between the ``near`` node's
coordinate and each result node's, with lib/rtt.go's rules:

- a node's coordinates are a set keyed by network segment; two sets are compared in one segment
  (``intersect``): the default segment "", unless one side has exactly one segment (a client agent lives
  in one segment; a server is in all of them), whose name wins;
- a node without a coordinate in that segment is infinitely far (``compute_distance``), so it sorts last;
- the sort is stable: ties and the unmeasured keep the order the answer had before;
- with no coordinate for the ``near`` node there is nothing to measure from, and the answer is left as it
  was (no sort at all).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from registry.coordinate import Coordinate

__all__ = ["CoordinateSet", "intersect", "compute_distance", "sort_by_distance", "distance_between"]

T = TypeVar("T")

# segment -> coordinate (Consul's lib.CoordinateSet)
CoordinateSet = Mapping[str, Coordinate]


def intersect(a: CoordinateSet, b: CoordinateSet) -> tuple[Coordinate | None, Coordinate | None]:
    """The pair of coordinates to compare two nodes by (lib.CoordinateSet.Intersect)."""
    segment = ""
    if len(a) == 1:
        segment = next(iter(a))
    if len(b) == 1:
        segment = next(iter(b))
    return a.get(segment), b.get(segment)


def compute_distance(a: Coordinate | None, b: Coordinate | None) -> float:
    """Seconds between two coordinates; +inf when either is missing or they are not comparable."""
    if a is None or b is None or not a.compatible(b):
        return math.inf
    return a.distance(b)


def distance_between(a: CoordinateSet, b: CoordinateSet) -> float:
    return compute_distance(*intersect(a, b))


def sort_by_distance(items: Sequence[T], node_of: Callable[[T], str], source: CoordinateSet,
                     coordinates: Callable[[str], CoordinateSet]) -> list[T]:  # fmt: skip
    """``items`` ordered by distance from ``source`` (stable; the unmeasured last). ``coordinates`` gives a
    node's coordinate set ({} when it has none). With an empty ``source`` the order is unchanged."""
    if not source or len(items) < 2:
        return list(items)
    memo: dict[str, float] = {}

    def key(item: T) -> float:
        node = node_of(item)
        d = memo.get(node)
        if d is None:
            d = memo[node] = distance_between(source, coordinates(node))
        return d

    return sorted(items, key=key)
