"""Request bodies -> JSON values, with Consul's "Request decode failed" errors.

The schemas and checks of service and check definitions live in ``registry.registration`` (the HTTP API and
config files share them); this module only parses a body, and refuses one nested deeper than
``MAX_JSON_DEPTH`` before parsing it: Python's decoder recurses once per level and a 100,000-deep array
would exhaust the interpreter's stack (a 500 "maximum recursion depth exceeded"), where Go's decoder, and
so Consul, stops at its own limit with "invalid character '[' exceeded max depth" (a 400). Proconsul's
limit is far lower than Go's 10,000 (no Consul request body comes near it) so that every later recursive
step over the decoded value (validation, rendering, the log's encoding) stays well inside the stack.
"""

from __future__ import annotations

import json
import re
from typing import Any

from registry.registration import DecodeError

__all__ = ["MAX_JSON_DEPTH", "DecodeError", "depth_error", "parse_json"]

MAX_JSON_DEPTH = 100
# A JSON string (skipped whole, brackets inside it do not count) or one bracket.
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


def depth_error(body: bytes) -> str | None:
    """Go's error text if ``body`` nests arrays and objects deeper than ``MAX_JSON_DEPTH``, else None.
    Linear, and nearly free for the usual body (fewer brackets than the limit: nothing to scan)."""
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return None
    depth = 0
    for m in _TOKENS.finditer(body):
        c = m.group()[0]
        if c == 0x5B or c == 0x7B:  # [ {
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return f"invalid character '{chr(c)}' exceeded max depth"
        elif c == 0x5D or c == 0x7D:  # ] }
            depth -= 1
    return None


def parse_json(body: bytes) -> Any:
    if not body.strip():
        return None
    too_deep = depth_error(body)
    if too_deep is not None:
        raise DecodeError(too_deep)
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DecodeError(str(exc)) from exc
