"""Validation and compilation: a parsed expression checked against a schema and turned into a predicate.

Everything is resolved at compile time: evaluation is a tree of closures with no per-item dispatch on
selector text. Per type: strings support ``==``/``!=``/``in`` (substring)/``matches``; ints and bools only
``==``/``!=``; string lists ``in`` (membership)/``is empty``; maps ``in`` (key present)/``is empty`` and
select values by key; lists of objects ``is empty`` and select *through* the list (any element matching
wins). Compiled filters are cached by (text, schema), so a repeated ``?filter=`` costs one dict lookup.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from registry.filtering.errors import FilterError
from registry.filtering.literals import coerce
from registry.filtering.parser import OP_NAMES, parse
from registry.filtering.regexp import go_regexp
from registry.filtering.schema import Map, Node, Prim, Slice, Struct, subfield
from registry.gocompat import go_quote

__all__ = ["Filter", "compile_filter"]

Pred = Callable[[Any], bool]
_MISSING = object()


def _ops_of(node: Node) -> tuple[str, ...]:
    if isinstance(node, Prim):
        if node.kind == "string":
            return ("==", "!=", "in", "not in", "matches", "not matches")
        return ("==", "!=")
    if isinstance(node, Slice):
        if isinstance(node.elem, Prim):
            return ("in", "not in", "is empty", "is not empty")
        return ("is empty", "is not empty")
    if isinstance(node, Map):
        return ("is empty", "is not empty", "in", "not in")
    return ()


def _s(v: Any) -> str:
    if type(v) is str:
        return v
    return "" if v is None else str(v)


def _terminal(node: Node, op: str, value: Any) -> Pred:
    """The match at the end of a selector, on the value found there (None: the Go zero value)."""
    if isinstance(node, Prim):
        if node.kind == "string":
            if op == "==":
                return lambda v: _s(v) == value
            if op == "!=":
                return lambda v: _s(v) != value
            if op == "in":
                return lambda v: value in _s(v)
            if op == "not in":
                return lambda v: value not in _s(v)
            search = value.search
            if op == "matches":
                return lambda v: search(_s(v)) is not None
            return lambda v: search(_s(v)) is None
        zero = 0 if node.kind == "int" else False
        if op == "==":
            return lambda v: (zero if v is None else v) == value
        return lambda v: (zero if v is None else v) != value
    if op == "is empty":
        return lambda v: not v
    if op == "is not empty":
        return lambda v: bool(v)
    if isinstance(node, Slice):
        if op == "in":
            return lambda v: bool(v) and value in v
        return lambda v: not v or value not in v
    # Map: key membership
    if op == "in":
        return lambda v: isinstance(v, dict) and value in v
    return lambda v: not isinstance(v, dict) or value not in v


def _field_getter(key: str, loose: bool) -> Callable[[Any], Any]:
    if not loose:
        return lambda v: v.get(key) if isinstance(v, dict) else None
    norm = key.lower()

    def get(v: Any) -> Any:
        if not isinstance(v, dict):
            return None
        found = v.get(key, _MISSING)
        if found is not _MISSING:
            return found
        for k, val in v.items():
            if isinstance(k, str) and k.replace("_", "").lower() == norm:
                return val
        return None

    return get


def _walk(node: Node, parts: list[str], i: int, terminal: Pred, op: str) -> Pred:
    """go-bexpr's evaluateMatchExpressionRecurse, unrolled into closures at compile time."""
    if i == len(parts):
        return terminal
    if isinstance(node, Slice):  # select through every element; any match wins
        inner = _walk(node.elem, parts, i, terminal, op)

        def through(v: Any) -> bool:
            if not isinstance(v, (list, tuple)):
                return False
            for item in v:
                if inner(item):
                    return True
            return False

        return through
    if isinstance(node, Map):
        assert node.value is not None
        key = parts[i]
        inner = _walk(node.value, parts, i + 1, terminal, op)
        missing = op not in ("==", "is not empty", "in")

        def by_key(v: Any) -> bool:
            if isinstance(v, dict) and key in v:
                return inner(v[key])
            return missing

        return by_key
    assert isinstance(node, Struct)
    child = node.fields[parts[i]]
    inner = _walk(child, parts, i + 1, terminal, op)
    get = _field_getter(parts[i], node.loose)
    return lambda v: inner(get(v))


def _compile_match(schema: Struct, selector: list[str], op: str, raw: str | None) -> Pred:
    sel_text = ".".join(selector)
    node: Node = schema
    for idx, part in enumerate(selector):
        found = subfield(node, part)
        if found is None:
            raise FilterError(f"Selector {go_quote('.'.join(selector[: idx + 1]))} is not valid")
        node = found
    if op not in _ops_of(node):
        raise FilterError(
            f"Invalid match operator {go_quote(OP_NAMES[op])} for selector {go_quote(sel_text)}"
        )
    value: Any = None
    if raw is not None:
        try:
            value = coerce(node, raw)
        except ValueError as exc:
            raise FilterError(
                f"Failed to coerce value {go_quote(raw)} for selector {go_quote(sel_text)}: {exc}"
            ) from None
        if op in ("matches", "not matches"):
            try:
                value = go_regexp(value)
            except ValueError as exc:
                raise FilterError(f"Failed to compile regular expression {go_quote(raw)}: {exc}") from None
    return _walk(schema, selector, 0, _terminal(node, op, value), op)


def _compile(ast: Any, schema: Struct) -> Pred:
    kind = ast[0]
    if kind == "match":
        return _compile_match(schema, ast[1], ast[2], ast[3])
    if kind == "not":
        inner = _compile(ast[1], schema)
        return lambda o: not inner(o)
    preds = [_compile(t, schema) for t in ast[1]]
    if len(preds) == 2:
        a, b = preds
        return (lambda o: a(o) or b(o)) if kind == "or" else (lambda o: a(o) and b(o))
    if kind == "or":

        def any_of(o: Any) -> bool:
            for p in preds:
                if p(o):
                    return True
            return False

        return any_of

    def all_of(o: Any) -> bool:
        for p in preds:
            if not p(o):
                return False
        return True

    return all_of


@dataclass(frozen=True)
class Filter:
    """A compiled expression. ``matches`` takes one item as the endpoint renders it."""

    text: str
    schema: Struct
    matches: Pred = field(repr=False, compare=False)

    def select(self, items: Iterable[Any]) -> list[Any]:
        m = self.matches
        return [item for item in items if m(item)]

    def select_values(self, mapping: Mapping[str, Any]) -> dict[str, Any]:
        m = self.matches
        return {k: v for k, v in mapping.items() if m(v)}


def compile_filter(text: str, schema: Struct) -> Filter:
    """Parse and check ``text`` against ``schema`` (raises FilterError with Consul's message)."""
    return _compile_cached(text, schema)


@lru_cache(maxsize=512)
def _compile_cached(text: str, schema: Struct) -> Filter:
    ast = parse(text)
    return Filter(text, schema, _compile(ast, schema))
