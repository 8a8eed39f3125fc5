"""Go-style duration strings ("10s", "1m30s", "1.5h", "300ms"), as Consul's JSON and config use them.

Parsing is strict: a negative, malformed or absurd value raises ``DurationError`` so that the HTTP layer can
answer 400 instead of scheduling a check every -5 seconds or once in 300 years.
"""

from __future__ import annotations

import re

__all__ = ["DurationError", "parse_duration", "format_duration", "MAX_DURATION_S"]

_UNITS: dict[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,  # micro sign
    "\u03bcs": 1e-6,  # greek mu
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")

# Go's time.Duration is an int64 of nanoseconds: about 292 years. Nothing in a registry needs more than a
# few years; anything beyond ten is a typo, so it is refused rather than silently accepted.
MAX_DURATION_S = 10 * 365 * 24 * 3600.0


class DurationError(ValueError):
    """A duration that is not a valid, non-negative, sane Go duration."""


def parse_duration(value: object, *, allow_negative: bool = False, field: str = "duration") -> float:
    """Parse a Go duration (or a number of nanoseconds, as Go's JSON decoding of time.Duration allows)
    and return seconds as a float."""
    if isinstance(value, bool):
        raise DurationError(f"{field}: expected a duration string like \"10s\", got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value) / 1e9
    elif isinstance(value, str):
        seconds = _parse_string(value, field)
    else:
        raise DurationError(f"{field}: expected a duration string like \"10s\", got {type(value).__name__}")
    if seconds != seconds:  # NaN
        raise DurationError(f"{field}: invalid duration {value!r}")
    if seconds < 0 and not allow_negative:
        raise DurationError(f"{field}: duration must not be negative, got {value!r}")
    if abs(seconds) > MAX_DURATION_S:
        raise DurationError(f"{field}: duration {value!r} is too large (at most 10 years)")
    return seconds


def _parse_string(text: str, field: str) -> float:
    s = text.strip()
    if s in ("0", "+0", "-0"):
        return 0.0
    if not s:
        raise DurationError(f"{field}: empty duration")
    sign = 1.0
    if s[0] in "+-":
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    pos = 0
    total = 0.0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None:
            if s[pos:].replace(".", "").isdigit():
                raise DurationError(f"{field}: missing unit in duration {text!r}")
            raise DurationError(f"{field}: invalid duration {text!r}")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos == 0:
        raise DurationError(f"{field}: invalid duration {text!r}")
    return sign * total


def format_duration(seconds: float) -> str:
    """Format seconds the way Go's Duration.String() does ("1m30s", "72h0m0s", "500ms", "0s")."""
    if seconds == 0:
        return "0s"
    ns = round(seconds * 1e9)
    neg = ns < 0
    ns = abs(ns)
    if ns < 1_000_000_000:
        if ns < 1_000:
            out = f"{ns}ns"
        elif ns < 1_000_000:
            out = _trim(ns / 1e3) + "\u00b5s"
        else:
            out = _trim(ns / 1e6) + "ms"
    else:
        h, rem = divmod(ns, 3600 * 10**9)
        m, rem = divmod(rem, 60 * 10**9)
        s = _trim(rem / 1e9)
        if h:
            out = f"{h}h{m}m{s}s"
        elif m:
            out = f"{m}m{s}s"
        else:
            out = f"{s}s"
    return "-" + out if neg else out


def _trim(x: float) -> str:
    text = f"{x:.9f}".rstrip("0").rstrip(".")
    return text or "0"
