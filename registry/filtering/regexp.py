"""``matches`` patterns: Go's RE2 syntax run by Python's ``re``.

Consul compiles ``matches`` values with Go's regexp package (RE2). Python's ``re`` accepts a superset, so
the Perl features RE2 lacks (lookaround, backreferences, atomic groups, possessive quantifiers) are
refused with Go's messages, ``\\z`` (Go's end of text) is translated, and ``re``'s errors are reworded as
Go's ``error parsing regexp: ...``.
"""

from __future__ import annotations

import re

__all__ = ["go_regexp"]


_RE2_UNSUPPORTED = re.compile(r"\(\?(?:=|!|<=|<!|P=|>|#)|\\[1-9]")


def go_regexp(pattern: str) -> re.Pattern[str]:
    """Compile with Python's re, refusing the Perl features Go's RE2 lacks (lookaround, backreferences,
    atomic groups), with Go-like messages; ``\\z`` is Go's end of text."""
    bad = _find_unsupported(pattern)
    if bad is not None:
        raise ValueError(bad)
    try:
        return re.compile(_translate_go_regexp(pattern))
    except (re.error, OverflowError, RecursionError, ValueError) as exc:
        msg = exc.msg if isinstance(exc, re.error) else str(exc)
        raise ValueError(f"error parsing regexp: {_go_regexp_reason(msg, pattern)}") from None


def _find_unsupported(pattern: str) -> str | None:
    in_class = False
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            if (
                not in_class
                and i + 1 < len(pattern)
                and ("1" <= pattern[i + 1] <= "9" or pattern[i + 1] == "Z")
            ):
                return f"error parsing regexp: invalid escape sequence: `{pattern[i : i + 2]}`"
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
        elif c == "[":
            in_class = True
            if pattern[i + 1 : i + 2] == "^":
                i += 1
            if pattern[i + 1 : i + 2] == "]":
                i += 1
        elif c == "(" and pattern[i + 1 : i + 2] == "?":
            m = _RE2_UNSUPPORTED.match(pattern, i)
            if m is not None:
                return f"error parsing regexp: invalid or unsupported Perl syntax: `{m.group(0)}`"
        elif c in "*+?" and pattern[i + 1 : i + 2] == "+" and i > 0 and pattern[i - 1] != "(":
            # Python reads these as possessive quantifiers; RE2 has none
            return f"error parsing regexp: invalid nested repetition operator: `{pattern[i : i + 2]}`"
        i += 1
    return None


def _translate_go_regexp(pattern: str) -> str:
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("\\z", i):
            out.append("\\Z")
            i += 2
        elif pattern[i] == "\\":
            out.append(pattern[i : i + 2])
            i += 2
        else:
            out.append(pattern[i])
            i += 1
    return "".join(out)


_RE_REASONS = (
    ("missing ), unterminated subpattern", "missing closing ): `{p}`"),
    ("unbalanced parenthesis", "unexpected ): `{p}`"),
    ("unterminated character set", "missing closing ]: `{p}`"),
    ("nothing to repeat", "missing argument to repetition operator: `{p}`"),
    ("multiple repeat", "invalid nested repetition operator: `{p}`"),
    ("bad escape", "invalid escape sequence: `{p}`"),
    ("bad character range", "invalid character class range: `{p}`"),
)


def _go_regexp_reason(msg: str, pattern: str) -> str:
    for prefix, go in _RE_REASONS:
        if msg.startswith(prefix):
            return go.format(p=pattern)
    return f"{msg}: `{pattern}`"
