"""Network coordinates: Vivaldi with height, adjustment and gravity, as hashicorp/serf's coordinate package
computes them for Consul (``/v1/coordinate/*``, ``?near``).  Pure: round-trip times come in as
arguments, randomness from the ``random.Random`` given.

Each gossip probe's round trip updates the local coordinate against the peer's (carried in the ack), so
after a few minutes ``distance(a, b)`` estimates the RTT between any two members without measuring it.
The defaults are Serf's ``DefaultConfig`` (8 dimensions, error 1.5, ce = cc = 0.25, a 20-sample adjustment
window, a minimum height of 10 us, a 3-sample median latency filter, gravity rho 150).
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

__all__ = ["Coordinate", "CoordinateConfig", "Client", "encode_coordinate", "decode_coordinate", "distance"]

_ZERO: Final = 1.0e-6
MAX_RTT: Final = 10.0  # Serf refuses round trips outside [0, 10 s]


@dataclass(frozen=True, slots=True)
class CoordinateConfig:
    dimensionality: int = 8
    vivaldi_error_max: float = 1.5
    vivaldi_ce: float = 0.25
    vivaldi_cc: float = 0.25
    adjustment_window_size: int = 20
    height_min: float = 10.0e-6
    latency_filter_size: int = 3
    gravity_rho: float = 150.0


@dataclass(frozen=True, slots=True)
class Coordinate:
    """A point in the Vivaldi space plus Serf's height and adjustment; distances are in seconds."""

    vec: tuple[float, ...]
    error: float
    adjustment: float
    height: float

    @classmethod
    def origin(cls, config: CoordinateConfig | None = None) -> Coordinate:
        c = config or CoordinateConfig()
        return cls((0.0,) * c.dimensionality, c.vivaldi_error_max, 0.0, c.height_min)

    def is_valid(self) -> bool:
        return all(math.isfinite(x) for x in (*self.vec, self.error, self.adjustment, self.height))

    def compatible(self, other: Coordinate) -> bool:
        return len(self.vec) == len(other.vec)

    def raw_distance(self, other: Coordinate) -> float:
        return math.dist(self.vec, other.vec) + self.height + other.height

    def distance(self, other: Coordinate) -> float:
        """Estimated RTT in seconds (Serf DistanceTo: the adjustments count unless they make it negative)."""
        if not self.compatible(other):
            raise ValueError("coordinate dimensionality does not match")
        dist = self.raw_distance(other)
        adjusted = dist + self.adjustment + other.adjustment
        return adjusted if adjusted > 0.0 else dist

    def to_json(self) -> dict[str, Any]:
        """Consul's JSON form (``Coord`` of /v1/coordinate/nodes)."""
        return {"Vec": list(self.vec), "Error": self.error, "Adjustment": self.adjustment, "Height": self.height}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Coordinate:
        vec = data.get("Vec")
        if not isinstance(vec, list) or not vec or len(vec) > 64:
            raise ValueError("Vec must be a non-empty list of numbers")
        nums = [data.get("Error", 0.0), data.get("Adjustment", 0.0), data.get("Height", 0.0), *vec]
        if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in nums):
            raise ValueError("coordinate fields must be numbers")
        c = cls(tuple(float(x) for x in vec), float(nums[0]), float(nums[1]), float(nums[2]))
        if not c.is_valid():
            raise ValueError("coordinate is invalid")
        return c

    def _apply_force(self, config: CoordinateConfig, rng: random.Random, force: float, other: Coordinate) -> Coordinate:
        unit, mag = _unit_vector_at(rng, self.vec, other.vec)
        vec = tuple(a + u * force for a, u in zip(self.vec, unit, strict=True))
        height = self.height
        if mag > _ZERO:
            height = max((self.height + other.height) * force / mag + self.height, config.height_min)
        return replace(self, vec=vec, height=height)


def distance(a: Coordinate, b: Coordinate) -> float:
    return a.distance(b)


def _unit_vector_at(rng: random.Random, v1: Sequence[float], v2: Sequence[float]) -> tuple[tuple[float, ...], float]:
    d = [a - b for a, b in zip(v1, v2, strict=True)]
    mag = math.hypot(*d)
    if mag > _ZERO:
        return tuple(x / mag for x in d), mag
    # Coincident points: push apart in a random direction.
    d = [rng.random() - 0.5 for _ in d]
    mag = math.hypot(*d)
    if mag > _ZERO:
        return tuple(x / mag for x in d), 0.0
    return (1.0,) + (0.0,) * (len(d) - 1), 0.0


@dataclass(slots=True)
class Client:
    """The local member's coordinate, updated from observed round trips (Serf coordinate.Client)."""

    config: CoordinateConfig = field(default_factory=CoordinateConfig)
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    coordinate: Coordinate = field(init=False)
    resets: int = 0
    _origin: Coordinate = field(init=False)
    _adjustment: list[float] = field(init=False)
    _adjustment_index: int = 0
    _latency: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.coordinate = Coordinate.origin(self.config)
        self._origin = Coordinate.origin(self.config)
        self._adjustment = [0.0] * self.config.adjustment_window_size

    def forget(self, node: str) -> None:
        self._latency.pop(node, None)

    def update(self, node: str, other: Coordinate, rtt: float) -> Coordinate | None:
        """Fold one observed RTT (seconds) to ``node`` at ``other`` in; None if refused (Serf's checks)."""
        if not other.compatible(self.coordinate) or not other.is_valid() or not 0.0 <= rtt <= MAX_RTT:
            return None
        rtt = self._filter(node, rtt)
        self._vivaldi(other, rtt)
        self._adjust(other, rtt)
        self._gravity()
        if not self.coordinate.is_valid():
            self.resets += 1
            self.coordinate = Coordinate.origin(self.config)
        return self.coordinate

    def distance_to(self, other: Coordinate) -> float:
        return self.coordinate.distance(other)

    def _filter(self, node: str, rtt: float) -> float:
        samples = self._latency.setdefault(node, [])
        samples.append(rtt)
        if len(samples) > self.config.latency_filter_size:
            del samples[0]
        return sorted(samples)[len(samples) // 2]

    def _vivaldi(self, other: Coordinate, rtt: float) -> None:
        c = self.coordinate
        dist = c.distance(other)
        rtt = max(rtt, _ZERO)
        wrongness = abs(dist - rtt) / rtt
        total = max(c.error + other.error, _ZERO)
        weight = c.error / total
        error = min(self.config.vivaldi_ce * weight * wrongness + c.error * (1.0 - self.config.vivaldi_ce * weight),
                    self.config.vivaldi_error_max)  # fmt: skip
        force = self.config.vivaldi_cc * weight * (rtt - dist)
        self.coordinate = replace(c, error=error)._apply_force(self.config, self.rng, force, other)

    def _adjust(self, other: Coordinate, rtt: float) -> None:
        size = self.config.adjustment_window_size
        if size == 0:
            return
        self._adjustment[self._adjustment_index] = rtt - self.coordinate.raw_distance(other)
        self._adjustment_index = (self._adjustment_index + 1) % size
        self.coordinate = replace(self.coordinate, adjustment=sum(self._adjustment) / (2.0 * size))

    def _gravity(self) -> None:
        dist = self._origin.distance(self.coordinate)
        force = -1.0 * (dist / self.config.gravity_rho) ** 2
        self.coordinate = self.coordinate._apply_force(self.config, self.rng, force, self._origin)


_HEADER: Final = struct.Struct(">BB")


def encode_coordinate(c: Coordinate) -> bytes:
    """The ack payload: version 1, dimensionality, then the floats (big-endian doubles)."""
    return _HEADER.pack(1, len(c.vec)) + struct.pack(f">{len(c.vec) + 3}d", *c.vec, c.error, c.adjustment, c.height)


def decode_coordinate(data: bytes) -> Coordinate | None:
    """The coordinate in an ack payload, or None for anything else (an empty or foreign payload)."""
    if len(data) < 2:
        return None
    version, dims = _HEADER.unpack_from(data)
    if version != 1 or not 0 < dims <= 64 or len(data) != 2 + 8 * (dims + 3):
        return None
    values = struct.unpack_from(f">{dims + 3}d", data, 2)
    c = Coordinate(tuple(values[:dims]), values[dims], values[dims + 1], values[dims + 2])
    return c if c.is_valid() else None
