"""Value literals: how the raw text of a value becomes the Go type of the field it is compared with.

go-bexpr converts the value once, at validation, with Go's strconv rules (``CoerceInt`` is
``strconv.ParseInt(s, 0, 64)``, ``CoerceBool`` is ``strconv.ParseBool``); strings are taken as written.
A value that does not convert is a compile error carrying strconv's own message.
"""

from __future__ import annotations

from typing import Any

from registry.filtering.schema import Node, Prim, Slice
from registry.gocompat import go_parse_bool, go_parse_int

__all__ = ["coerce"]


def coerce(node: Node, raw: str) -> Any:
    """``raw`` as the field's type (for a list of primitives, its element type); raises ValueError with
    strconv's message."""
    kind = node.elem.kind if isinstance(node, Slice) and isinstance(node.elem, Prim) else None
    if isinstance(node, Prim):
        kind = node.kind
    if kind == "int":
        return go_parse_int(raw)
    if kind == "bool":
        return go_parse_bool(raw)
    return raw
