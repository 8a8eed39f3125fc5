"""Vivaldi network coordinates (Serf's coordinate package): they learn a network's round-trip times."""

from __future__ import annotations

import math
import random

import pytest

from registry.coordinate import Client, Coordinate, CoordinateConfig, decode_coordinate, encode_coordinate


def _simulate(positions: list[tuple[float, float]], rounds: int, seed: int) -> list[Client]:
    """Every node probes a random other each round; the RTT is the true distance plus 5% noise."""
    rng = random.Random(seed)
    clients = [Client(rng=random.Random(seed + i)) for i in range(len(positions))]
    for _ in range(rounds):
        for i, c in enumerate(clients):
            j = rng.randrange(len(clients) - 1)
            j += j >= i
            rtt = math.dist(positions[i], positions[j]) * (1 + 0.05 * rng.random())
            c.update(f"n{j}", clients[j].coordinate, rtt)
    return clients


def test_coordinates_learn_a_grid_of_round_trip_times() -> None:
    # A 5x5 grid with 10 ms between neighbours (Serf's GenerateGrid scenario).
    positions = [(0.010 * x, 0.010 * y) for x in range(5) for y in range(5)]
    clients = _simulate(positions, 600, seed=1)
    errors = []
    for i in range(len(clients)):
        for j in range(i + 1, len(clients)):
            truth = math.dist(positions[i], positions[j])
            estimate = clients[i].coordinate.distance(clients[j].coordinate)
            errors.append(abs(estimate - truth) / truth)
    errors.sort()
    assert errors[len(errors) // 2] < 0.08, errors[len(errors) // 2]  # median relative error (~2.5%)
    assert all(c.coordinate.error < 0.1 for c in clients)  # each node's own confidence improved from 1.5


def test_the_defaults_are_serfs() -> None:
    c = Coordinate.origin()
    assert c.vec == (0.0,) * 8 and c.error == 1.5 and c.height == 10.0e-6 and c.adjustment == 0.0
    cfg = CoordinateConfig()
    assert (cfg.vivaldi_ce, cfg.vivaldi_cc, cfg.adjustment_window_size, cfg.latency_filter_size, cfg.gravity_rho) == (
        0.25, 0.25, 20, 3, 150.0)  # fmt: skip


def test_bad_inputs_are_refused_and_coincident_points_separate() -> None:
    c = Client(rng=random.Random(3))
    assert c.update("x", Coordinate.origin(), 11.0) is None  # Serf refuses RTTs beyond 10 s
    assert c.update("x", Coordinate.origin(), -1.0) is None
    assert c.update("x", Coordinate((0.0,) * 4, 1.5, 0.0, 1e-5), 0.01) is None  # other dimensionality
    assert c.update("x", Coordinate((math.nan,) * 8, 1.5, 0.0, 1e-5), 0.01) is None
    moved = c.update("x", Coordinate.origin(), 0.01)
    assert moved is not None and any(v != 0.0 for v in moved.vec)


def test_the_ack_payload_and_json_forms_round_trip() -> None:
    c = Coordinate(tuple(float(i) / 1000 for i in range(8)), 0.3, -0.0001, 0.00002)
    assert decode_coordinate(encode_coordinate(c)) == c
    for junk in (b"", b"\x01", b"\x02\x08" + b"\x00" * 88, encode_coordinate(c)[:-1]):
        assert decode_coordinate(junk) is None
    assert Coordinate.from_json(c.to_json()) == c
    with pytest.raises(ValueError):
        Coordinate.from_json({"Vec": ["a"], "Error": 1})
