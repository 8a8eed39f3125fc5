"""Reading a policy's Rules text, HCL or JSON, into a neutral list of items.

Consul decodes Rules with ``hcl.Decode``, which takes HCL or, when the text starts with ``{``, JSON
(acl/policy_ce.go ``decodeRules``).  We do the same: HCL through python-hcl2's typed rule tree, JSON
through the standard library.  Both produce the same shape, so validation (``registry.acl.rules``) is
written once:

* ``Attr(name, value, pos)`` for a top-level ``operator = "read"``;
* ``Block(kind, label, fields, pos)`` for ``service "web" { policy = "read" }``.

Only string values are accepted.  HCL2 expressions that Consul's HCL1 decoder never evaluated
(interpolation ``${...}``, references, numbers, nested blocks) are refused rather than guessed at.
Duplicate arguments are refused the way Consul's ``DecodeErrorOnDuplicates`` refuses them, so that
``policy = "deny"`` followed by ``policy = "write"`` never silently means write.

Every failure is a ``SyntaxProblem`` carrying the position when one is known; nothing else escapes,
whatever the input (the parser's own exceptions, deep nesting, NUL bytes).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import hcl2
from hcl2.rules.abstract import LarkRule
from hcl2.rules.base import AttributeRule, BlockRule
from hcl2.rules.expressions import ExprTermRule
from hcl2.rules.literal_rules import IdentifierRule
from hcl2.rules.strings import StringRule
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

__all__ = ["Attr", "Block", "Pos", "SyntaxProblem", "Value", "decode"]


@dataclass(frozen=True, slots=True)
class Pos:
    """A 1-based line and column, printed as Consul's HCL errors print them (``At 3:7``)."""

    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.line}:{self.column}"


@dataclass(frozen=True, slots=True)
class Value:
    """An argument's value: ``text`` when it was a string literal, else ``None`` and what it was."""

    text: str | None
    what: str = "string"
    pos: Pos | None = None


@dataclass(frozen=True, slots=True)
class Attr:
    name: str
    value: Value
    pos: Pos | None


@dataclass(frozen=True, slots=True)
class Block:
    kind: str
    label: str
    fields: tuple[tuple[str, Value], ...]
    pos: Pos | None


class SyntaxProblem(Exception):
    """The text is not HCL/JSON of the shape ACL rules have."""

    def __init__(self, message: str, pos: Pos | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.pos = pos

    def __str__(self) -> str:
        return f"At {self.pos}: {self.message}" if self.pos else self.message


def decode(text: str) -> list[Attr | Block]:
    """Decode Rules text; JSON when its first non-blank character is ``{`` (as HCL1 decides)."""
    if text.lstrip().startswith("{"):
        return _decode_json(text)
    return _decode_hcl(text)


# ---------------------------------------------------------------------------------------------- HCL


# Names python-hcl2's grammar gives its terminals, said the way a person writing rules would.
_TOKEN_WORDS = {
    "RBRACE": "'}'",
    "LBRACE": "'{'",
    "EQ": "'='",
    "NAME": "a name",
    "DBLQUOTE": "'\"'",
    "STRING_CHARS": "a string",
    "NL_OR_COMMENT": "a new line",
    "$END": "end of input",
    "RSQB": "']'",
    "RPAR": "')'",
    "COMMA": "','",
    "COLON": "':'",
}


def _lark_message(exc: UnexpectedInput) -> str:
    if isinstance(exc, UnexpectedCharacters):
        return f"illegal character {exc.char!r}"
    if isinstance(exc, UnexpectedToken):
        token = exc.token
        found = "end of input" if token.type == "$END" else repr(str(token).strip() or str(token))
        expected = sorted({_TOKEN_WORDS[t] for t in exc.expected if t in _TOKEN_WORDS})
        if expected and len(expected) <= 4:
            return f"unexpected {found}, expected {' or '.join(expected)}"
        return f"unexpected {found}"
    if isinstance(exc, UnexpectedEOF):
        return "unexpected end of input"
    return "invalid syntax"


def _pos(node: object) -> Pos | None:
    # python-hcl2 keeps Lark's position metadata on each rule; absent metadata just means no position.
    meta = getattr(node, "_meta", None)
    if meta is None or getattr(meta, "empty", True):
        return None
    return Pos(meta.line, meta.column)


def _decode_hcl(text: str) -> list[Attr | Block]:
    try:
        tree = hcl2.parses(text, discard_comments=True)
    except UnexpectedInput as exc:
        line, column = getattr(exc, "line", -1), getattr(exc, "column", -1)
        pos = Pos(line, column) if line > 0 and column > 0 else None
        raise SyntaxProblem(_lark_message(exc), pos) from None
    except (Exception, RecursionError) as exc:  # the parser's other failures are still bad input
        raise SyntaxProblem(f"invalid syntax ({type(exc).__name__})") from None
    items: list[Attr | Block] = []
    seen: dict[str, Pos | None] = {}
    for child in tree.body.children:
        if isinstance(child, AttributeRule):
            name = _identifier(child.identifier)
            pos = _pos(child)
            _refuse_duplicate(name, pos, seen)
            items.append(Attr(name, _hcl_value(child.expression, pos), pos))
        elif isinstance(child, BlockRule):
            items.append(_hcl_block(child))
    return items


def _refuse_duplicate(name: str, pos: Pos | None, seen: dict[str, Pos | None]) -> None:
    if name in seen:
        # Consul's words (hashicorp/hcl DecodeErrorOnDuplicates, surfaced by acl/policy_ce.go).
        raise SyntaxProblem(
            f'The argument "{name}"{f" at {pos}" if pos else ""} was already set. '
            "Each argument can only be defined once",
        )
    seen[name] = pos


def _identifier(node: Any) -> str:
    return str(node.serialize())


def _hcl_block(block: BlockRule) -> Block:
    pos = _pos(block)
    kind, *labels = block.labels
    kind_name = _identifier(kind)
    if len(labels) != 1:
        raise SyntaxProblem(f"{kind_name} needs exactly one label (a name or prefix in quotes)", pos)
    label_node = labels[0]
    if isinstance(label_node, StringRule):
        label = _string_text(label_node, pos)
    elif isinstance(label_node, IdentifierRule):
        label = _identifier(label_node)
    else:  # pragma: no cover - the grammar allows only these two
        raise SyntaxProblem(f"{kind_name} has a label that is not a string", pos)
    fields: list[tuple[str, Value]] = []
    seen: dict[str, Pos | None] = {}
    for child in block.body.children:
        if isinstance(child, AttributeRule):
            name = _identifier(child.identifier)
            apos = _pos(child)
            _refuse_duplicate(name, apos, seen)
            fields.append((name, _hcl_value(child.expression, apos)))
        elif isinstance(child, BlockRule):
            inner = _identifier(child.labels[0])
            raise SyntaxProblem(
                f'unexpected block "{inner}" inside {kind_name} "{label}"', _pos(child) or pos
            )
    return Block(kind_name, label, tuple(fields), pos)


def _hcl_value(expr: Any, pos: Pos | None) -> Value:
    inner = expr.expression if isinstance(expr, ExprTermRule) and not expr.parentheses else None
    if isinstance(inner, StringRule):
        return Value(_string_text(inner, pos), pos=pos)
    return Value(None, "an expression", pos)


_ESCAPE = re.compile(r'\\(["\\nrt]|u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8})|\$\$\{|%%\{|\\|\$\{|%\{')
_SIMPLE = {'"': '"', "\\": "\\", "n": "\n", "r": "\r", "t": "\t"}


def _string_text(node: StringRule, pos: Pos | None) -> str:
    """The value of an HCL string literal, with HCL2's escapes decoded and templates refused."""
    raw: list[str] = []
    for part in node.string_parts:
        content = part.content
        if isinstance(content, LarkRule):  # ${...} or %{...}: a template, not a literal
            raise SyntaxProblem("interpolation (${...}) is not allowed in ACL rules", pos)
        raw.append(str(content.value))
    return _unescape("".join(raw), pos)


def _unescape(raw: str, pos: Pos | None) -> str:
    def one(m: re.Match[str]) -> str:
        whole, esc = m.group(0), m.group(1)
        if whole == "$${":
            return "${"
        if whole == "%%{":
            return "%{"
        if whole in ("${", "%{"):
            raise SyntaxProblem("interpolation (${...}) is not allowed in ACL rules", pos)
        if esc is None:
            raise SyntaxProblem("invalid escape sequence in a string", pos)
        if esc in _SIMPLE:
            return _SIMPLE[esc]
        code = int(esc[1:], 16)
        if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
            raise SyntaxProblem(f"invalid escape \\{esc}: not a Unicode scalar value", pos)
        return chr(code)

    return _ESCAPE.sub(one, raw)


# --------------------------------------------------------------------------------------------- JSON


class _Obj(list[tuple[str, Any]]):
    """A JSON object kept as its list of pairs: a label may repeat (two rules), an argument may not."""


def _decode_json(text: str) -> list[Attr | Block]:
    try:
        doc = json.loads(text, object_pairs_hook=_Obj)
    except json.JSONDecodeError as exc:
        raise SyntaxProblem(exc.msg, Pos(exc.lineno, exc.colno)) from None
    except (ValueError, RecursionError) as exc:
        raise SyntaxProblem(f"invalid JSON ({type(exc).__name__})") from None
    if not isinstance(doc, _Obj):
        raise SyntaxProblem("the rules must be a JSON object")
    items: list[Attr | Block] = []
    seen: dict[str, Pos | None] = {}
    for key, value in doc:
        if isinstance(value, str):
            _refuse_duplicate(key, None, seen)
            items.append(Attr(key, Value(value), None))
        elif isinstance(value, _Obj) or (
            isinstance(value, list) and value and all(isinstance(v, _Obj) for v in value)
        ):
            items.extend(_json_blocks(key, value))
        else:
            items.append(Attr(key, Value(None, _json_kind(value)), None))
    return items


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, _Obj):
        return "an object"
    return "a list"


def _json_blocks(kind: str, value: list[Any]) -> list[Block]:
    """``{"service": {"web": {...}}}`` or HCL1's list forms ``[{"web": {...}}]`` / ``{"web": [{...}]}``."""
    objects = [value] if isinstance(value, _Obj) else value
    blocks: list[Block] = []
    for obj in objects:
        for label, body in obj:
            bodies = body if isinstance(body, list) and not isinstance(body, _Obj) else [body]
            if not bodies:
                raise SyntaxProblem(f"{kind} {label!r} must be an object")
            for one in bodies:
                if not isinstance(one, _Obj):
                    raise SyntaxProblem(f"{kind} {label!r} must be an object, not {_json_kind(one)}")
                fields: list[tuple[str, Value]] = []
                seen: dict[str, Pos | None] = {}
                for name, v in one:
                    _refuse_duplicate(name, None, seen)
                    fields.append((name, Value(v) if isinstance(v, str) else Value(None, _json_kind(v))))
                blocks.append(Block(kind, label, tuple(fields), None))
    return blocks
