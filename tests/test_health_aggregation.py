"""registry.structs.aggregate_status: the one check-status aggregation the agent API and DNS share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry.structs import CHECK_STATUSES, HEALTH_CRITICAL, HEALTH_PASSING, HEALTH_WARNING, aggregate_status


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [([], HEALTH_PASSING), ([HEALTH_PASSING], HEALTH_PASSING), ([HEALTH_PASSING, HEALTH_WARNING], HEALTH_WARNING),
     ([HEALTH_WARNING, HEALTH_CRITICAL, HEALTH_PASSING], HEALTH_CRITICAL), ([HEALTH_CRITICAL], HEALTH_CRITICAL)],
)
def test_worst_status_wins(statuses: list[str], expected: str) -> None:
    assert aggregate_status(statuses) == expected


@given(st.lists(st.sampled_from(CHECK_STATUSES)))
def test_order_does_not_matter(statuses: list[str]) -> None:
    worst = max(statuses, key=CHECK_STATUSES.index, default=HEALTH_PASSING)
    assert aggregate_status(statuses) == worst == aggregate_status(reversed(statuses))


def test_stops_at_the_first_critical() -> None:
    def statuses() -> Iterator[str]:  # a DNS answer for a large instance set must not walk every check
        yield HEALTH_CRITICAL
        raise AssertionError("read past the first critical")

    assert aggregate_status(statuses()) == HEALTH_CRITICAL
