"""Times as the API writes them (Go's RFC 3339, "Z", up to nanoseconds) and spans of time as a person reads
them ("9 years 364 days", "5 hours"). Pure: ``now`` is an argument, so the CA page's countdown is tested
without a clock."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)")


def parse_time(text: object) -> datetime | None:
    """An API time (``2036-12-04T04:20:47.5Z``) in UTC, to the microsecond; None for anything else."""
    if not isinstance(text, str):
        return None
    m = _RFC3339.fullmatch(text)
    if m is None:
        return None
    base, frac, zone = m.groups()
    try:
        t = datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone))
    except ValueError:
        return None
    micros = int((frac or "0")[:6].ljust(6, "0"))
    return t.astimezone(UTC) + timedelta(microseconds=micros)


def _unit(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def span(delta: timedelta) -> str:
    """A positive span in its two largest units: "9 years 364 days", "3 days 4 hours", "12 minutes"
    (a year is 365 days here: this is a countdown, not a calendar)."""
    seconds = max(int(delta.total_seconds()), 0)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    years, days = divmod(days, 365)
    if years:
        return _unit(years, "year") + (f" {_unit(days, 'day')}" if days else "")
    if days:
        return _unit(days, "day") + (f" {_unit(hours, 'hour')}" if hours else "")
    if hours:
        return _unit(hours, "hour") + (f" {_unit(minutes, 'minute')}" if minutes else "")
    if minutes:
        return _unit(minutes, "minute")
    return "less than a minute"


def until(when: datetime | None, now: datetime) -> str:
    """"in 9 years 364 days" or "3 days ago" ("" when ``when`` is unknown)."""
    if when is None:
        return ""
    if when >= now:
        return "in " + span(when - now)
    return span(now - when) + " ago"
