"""Go's text formats, as Consul's JSON, configuration and error messages use them.

Consul is written in Go, so what a client sees is whatever Go's standard library prints or accepts:

- durations: ``time.ParseDuration`` and ``time.Duration.String()`` ("10s", "1m30s", "72h0m0s", "1.5s",
  "500ms", "0s"). One integer-nanosecond parser and one formatter; the registry's strict API
  (``parse_duration`` / ``format_duration``, seconds as floats, for checks, sessions, ``?wait`` and the
  configuration) and the CA's (``parse_go_duration`` / ``format_go_duration``, ``timedelta``) are thin
  views of them;
- times: ``time.Time``'s JSON form, RFC 3339 in UTC with trailing fractional zeros trimmed
  (``format_go_time``), and its parser (``parse_go_time``); ``GO_ZERO_TIME`` is Go's zero time;
- strings: ``strconv.Quote`` (what ``%q`` prints in Consul's error texts), ``strconv.Unquote``,
  ``strconv.ParseInt(s, 0, 64)`` and ``strconv.ParseBool`` with Go's error texts.

Placement: both the registry and the pure CA cores (``ca.provider``) need these, and ``ca`` must stay
free of IO, clocks and non-pure project modules (tests/ca/test_ca_purity.py). This module imports only the
standard library's ``re`` and ``datetime`` and reads no clock, so it is listed there as a pure module that
every pure core may import; ``registry/__init__`` imports nothing, so importing it from ``ca`` pulls in
nothing else of the registry.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

__all__ = [
    "GO_ZERO_TIME",
    "MAX_DURATION_S",
    "DurationError",
    "UnquoteError",
    "format_duration",
    "format_duration_ns",
    "format_go_duration",
    "format_go_time",
    "go_parse_bool",
    "go_parse_int",
    "go_quote",
    "go_unquote",
    "parse_duration",
    "parse_duration_ns",
    "parse_go_duration",
    "parse_go_time",
]

# ====================================================================== durations

_UNIT_NS: dict[str, int] = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # micro sign
    "\u03bcs": 1_000,  # greek mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_NS_PER_S = 1_000_000_000

# Go's time.Duration is an int64 of nanoseconds: about 292 years. Nothing in a registry needs more than a
# few years; anything beyond ten is a typo, so the registry refuses it rather than silently accepting it.
MAX_DURATION_S = 10 * 365 * 24 * 3600.0


class DurationError(ValueError):
    """A duration that is not a valid, non-negative, sane Go duration."""


class _BadDuration(Exception):
    """Raised by ``parse_duration_ns``' scanner; ``missing_unit`` tells "10" from "10x"."""

    def __init__(self, missing_unit: bool) -> None:
        super().__init__()
        self.missing_unit = missing_unit


def _scan_ns(text: str) -> int:
    """Go's time.ParseDuration on ``text``, in integer nanoseconds (a fraction of a nanosecond is
    dropped, as Go drops it). Raises _BadDuration."""
    s = text
    neg = False
    if s and s[0] in "+-":
        neg = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise _BadDuration(False)
    pos = 0
    total = 0
    n = len(s)
    match = _PART.match
    while pos < n:
        m = match(s, pos)
        if m is None:
            raise _BadDuration(s[pos:].replace(".", "").isdigit())
        whole, _, frac = m.group(1).partition(".")
        unit = _UNIT_NS[m.group(2)]
        if whole:
            total += int(whole) * unit
        if frac:
            total += int(frac) * unit // 10 ** len(frac)
        pos = m.end()
    return -total if neg else total


def parse_duration_ns(text: str) -> int:
    """Go's time.ParseDuration, in nanoseconds; raises ValueError with Go's message."""
    try:
        return _scan_ns(text)
    except _BadDuration as exc:
        what = "missing unit in duration" if exc.missing_unit else "invalid duration"
        raise ValueError(f"time: {what} {go_quote(text)}") from None


def format_duration_ns(ns: int) -> str:
    """Go's time.Duration.String() of ``ns`` nanoseconds: "1m30s", "72h0m0s", "1.5s", "500ms", "0s"."""
    if ns == 0:
        return "0s"
    u = -ns if ns < 0 else ns
    if u < 1_000:
        out = f"{u}ns"
    elif u < 1_000_000:
        out = _decimal(u, 1_000, 3) + "\u00b5s"
    elif u < _NS_PER_S:
        out = _decimal(u, 1_000_000, 6) + "ms"
    else:
        h, rem = divmod(u, 3_600_000_000_000)
        m, rem = divmod(rem, 60_000_000_000)
        s = _decimal(rem, _NS_PER_S, 9)
        if h:
            out = f"{h}h{m}m{s}s"
        elif m:
            out = f"{m}m{s}s"
        else:
            out = f"{s}s"
    return "-" + out if ns < 0 else out


def _decimal(value: int, unit: int, digits: int) -> str:
    whole, frac = divmod(value, unit)
    if not frac:
        return str(whole)
    return f"{whole}.{frac:0{digits}d}".rstrip("0")


def parse_duration(value: object, *, allow_negative: bool = False, field: str = "duration") -> float:
    """Parse a Go duration (or a number of nanoseconds, as Go's JSON decoding of time.Duration allows)
    and return seconds as a float.

    Strict, for values a client or an operator sends: a negative (unless ``allow_negative``),
    malformed or absurd value raises ``DurationError`` naming ``field``, so that the HTTP layer can
    answer 400 instead of scheduling a check every -5 seconds or once in 300 years. Surrounding blanks
    are ignored.
    """
    if isinstance(value, bool):
        raise DurationError(f"{field}: expected a duration string like \"10s\", got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value) / 1e9
    elif isinstance(value, str):
        seconds = _seconds(value, field)
    else:
        raise DurationError(f"{field}: expected a duration string like \"10s\", got {type(value).__name__}")
    if seconds != seconds:  # NaN
        raise DurationError(f"{field}: invalid duration {value!r}")
    if seconds < 0 and not allow_negative:
        raise DurationError(f"{field}: duration must not be negative, got {value!r}")
    if abs(seconds) > MAX_DURATION_S:
        raise DurationError(f"{field}: duration {value!r} is too large (at most 10 years)")
    return seconds


def _seconds(text: str, field: str) -> float:
    s = text.strip()
    if s in ("0", "+0", "-0"):
        return 0.0
    if not s:
        raise DurationError(f"{field}: empty duration")
    try:
        return _scan_ns(s) / 1e9
    except _BadDuration as exc:
        if exc.missing_unit:
            raise DurationError(f"{field}: missing unit in duration {text!r}") from None
        raise DurationError(f"{field}: invalid duration {text!r}") from None


def format_duration(seconds: float) -> str:
    """Format seconds the way Go's Duration.String() does ("1m30s", "72h0m0s", "500ms", "0s")."""
    if seconds == 0:
        return "0s"
    return format_duration_ns(round(seconds * 1e9))


def parse_go_duration(text: str) -> timedelta:
    """Parse a Go duration string ("72h", "1h30m", "1.5h", "500ms") as the CA configuration holds them;
    sub-microsecond parts round toward zero. Raises ValueError."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"invalid duration {text!r}")
    try:
        ns = _scan_ns(text)
    except _BadDuration:
        raise ValueError(f"invalid duration {text!r}") from None
    us = abs(ns) // 1000
    return timedelta(microseconds=-us if ns < 0 else us)


def format_go_duration(d: timedelta) -> str:
    """Go's time.Duration.String() of a timedelta: "1h0m0s", "216h0m0s", "1m30s", "1.5s", "500ms", "0s"."""
    return format_duration_ns((d // _MICROSECOND) * 1000)


_MICROSECOND = timedelta(microseconds=1)

# ====================================================================== times

GO_ZERO_TIME = "0001-01-01T00:00:00Z"
_TIME_RE = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})")


def format_go_time(t: datetime) -> str:
    """RFC 3339 in UTC with a "Z" and trailing fractional zeros trimmed, as Go marshals time.Time."""
    t = t.astimezone(UTC)
    # An f-string rather than strftime: a tenth of the cost on the leaf-signing path, and %Y does not
    # zero-pad years below 1000 on every platform.
    base = f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
    if t.microsecond:
        base += "." + f"{t.microsecond:06d}".rstrip("0")
    return base + "Z"


def parse_go_time(text: str) -> datetime:
    """An RFC 3339 time as Go's time.Time unmarshals it (fraction up to nanoseconds, kept to the
    microsecond; "Z" or a numeric offset), returned in UTC. Raises ValueError."""
    m = _TIME_RE.fullmatch(text)
    if m is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    base = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")
    micros = int((m.group(2) or "0")[:6].ljust(6, "0"))
    offset = timedelta(0)
    if m.group(3) != "Z":
        sign = 1 if m.group(3)[0] == "+" else -1
        offset = sign * timedelta(hours=int(m.group(3)[1:3]), minutes=int(m.group(3)[4:6]))
    return (base.replace(microsecond=micros) - offset).replace(tzinfo=UTC)


# ====================================================================== strconv


def go_quote(s: str) -> str:
    """Go's strconv.Quote (what ``%q`` prints for a string)."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch.isprintable() and not 0xD800 <= o <= 0xDFFF:
            out.append(ch)
        elif ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\x{o:02x}")
        elif 0xD800 <= o <= 0xDFFF:
            out.append("\\ufffd")
        elif o < 0x10000:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    out.append('"')
    return "".join(out)


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}
_SIMPLE_UNESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}
_HEX = frozenset("0123456789abcdefABCDEF")


class UnquoteError(ValueError):
    """Go's strconv.ErrSyntax: the literal is not a valid Go string literal."""

    def __init__(self) -> None:
        super().__init__("invalid syntax")


def go_unquote(lit: str) -> str:
    """Go's strconv.Unquote for a "..." or `...` literal; raises UnquoteError ("invalid syntax")."""
    if len(lit) < 2 or lit[0] != lit[-1] or lit[0] not in '"`':
        raise UnquoteError
    body = lit[1:-1]
    if lit[0] == "`":
        if "`" in body:
            raise UnquoteError
        return body.replace("\r", "")
    if "\n" in body:
        raise UnquoteError
    if "\\" not in body:
        if '"' in body:
            raise UnquoteError
        return body
    out = []
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c == '"':
            raise UnquoteError
        if c != "\\":
            out.append(c)
            i += 1
            continue
        if i + 1 >= n:
            raise UnquoteError
        c = body[i + 1]
        i += 2
        if c in _SIMPLE_UNESCAPES:
            out.append(_SIMPLE_UNESCAPES[c])
        elif c == '"':
            out.append('"')
        elif c in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[c]
            digits = body[i : i + width]
            if len(digits) < width or not set(digits) <= _HEX:
                raise UnquoteError
            value = int(digits, 16)
            i += width
            if c != "x" and (value > 0x10FFFF or 0xD800 <= value <= 0xDFFF):
                raise UnquoteError
            out.append(chr(value))  # Go appends \x values as raw bytes; as a code point here
        elif "0" <= c <= "7":
            digits = c + body[i : i + 2]
            if len(digits) < 3 or not all("0" <= d <= "7" for d in digits):
                raise UnquoteError
            value = int(digits, 8)
            if value > 255:
                raise UnquoteError
            i += 2
            out.append(chr(value))
        else:
            raise UnquoteError
    return "".join(out)


def _num_error(fn: str, s: str, reason: str) -> str:
    return f"strconv.{fn}: parsing {go_quote(s)}: {reason}"


def _underscore_ok(s: str) -> bool:
    saw = "^"
    i = 0
    if s[:1] in ("-", "+"):
        s = s[1:]
    hexa = False
    if len(s) >= 2 and s[0] == "0" and s[1].lower() in "box":
        i = 2
        saw = "0"
        hexa = s[1].lower() == "x"
    while i < len(s):
        c = s[i]
        if "0" <= c <= "9" or (hexa and "a" <= c.lower() <= "f"):
            saw = "0"
        elif c == "_":
            if saw != "0":
                return False
            saw = "_"
        elif saw == "_":
            return False
        else:
            saw = "!"
        i += 1
    return saw != "_"


def go_parse_int(s0: str) -> int:
    """Go's strconv.ParseInt(s, 0, 64), raising ValueError with Go's message."""
    fn = "ParseInt"
    if not s0:
        raise ValueError(_num_error(fn, s0, "invalid syntax"))
    s, neg = s0, False
    if s[0] in "+-":
        neg = s[0] == "-"
        s = s[1:]
    if not s:
        raise ValueError(_num_error(fn, s0, "invalid syntax"))
    base = 10
    if s[0] == "0":
        if len(s) >= 3 and s[1].lower() in "box":
            base = {"b": 2, "o": 8, "x": 16}[s[1].lower()]
            s = s[2:]
        else:
            base = 8
            s = s[1:]
    max_val = (1 << 64) - 1
    n = 0
    underscores = False
    for c in s:
        if c == "_":
            underscores = True
            continue
        if "0" <= c <= "9":
            d = ord(c) - 48
        elif "a" <= c.lower() <= "z":
            d = ord(c.lower()) - 87
        else:
            raise ValueError(_num_error(fn, s0, "invalid syntax"))
        if d >= base:
            raise ValueError(_num_error(fn, s0, "invalid syntax"))
        n = n * base + d
        if n > max_val:
            raise ValueError(_num_error(fn, s0, "value out of range"))
    if underscores and not _underscore_ok(s0):
        raise ValueError(_num_error(fn, s0, "invalid syntax"))
    cutoff = 1 << 63
    if (not neg and n >= cutoff) or (neg and n > cutoff):
        raise ValueError(_num_error(fn, s0, "value out of range"))
    return -n if neg else n


def go_parse_bool(s: str) -> bool:
    """Go's strconv.ParseBool, raising ValueError with Go's message."""
    if s in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if s in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise ValueError(_num_error("ParseBool", s, "invalid syntax"))
