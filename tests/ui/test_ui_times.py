"""The CA page's times: the API's RFC 3339 (Go's, up to nanoseconds) read back, and the countdown's words."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from registry.ui.times import parse_time, span, until

NOW = datetime(2026, 12, 7, 4, 20, 47, tzinfo=UTC)


def test_parse_time_reads_the_apis_times_and_nothing_else() -> None:
    assert parse_time("2036-12-04T04:20:47Z") == datetime(2036, 12, 4, 4, 20, 47, tzinfo=UTC)
    assert parse_time("2026-12-07T04:20:47.123456789Z") == NOW + timedelta(microseconds=123456)
    assert parse_time("2026-12-07T06:20:47+02:00") == NOW
    for bad in ("", "0001-01-01", "2026-13-01T00:00:00Z", "yesterday", None, 5):
        assert parse_time(bad) is None


def test_span_and_until_in_two_units() -> None:
    assert span(timedelta(hours=87600) - timedelta(minutes=1)) == "9 years 364 days"
    assert span(timedelta(days=3, hours=4, minutes=5)) == "3 days 4 hours"
    assert span(timedelta(days=1)) == "1 day"
    assert span(timedelta(hours=2, minutes=1)) == "2 hours 1 minute"
    assert span(timedelta(seconds=59)) == "less than a minute"
    assert span(timedelta(days=800)) == "2 years 70 days"
    assert until(NOW + timedelta(days=30), NOW) == "in 30 days"
    assert until(NOW - timedelta(minutes=5), NOW) == "5 minutes ago"
    assert until(None, NOW) == ""
