"""go-bexpr's grammar, parsed as its pigeon-generated PEG parser parses it, with the same error texts.

Grammar: ``or`` < ``and`` < ``not`` < parentheses; matches ``S == V``, ``S != V``, ``S is empty``,
``S is not empty``, ``V in S``, ``V not in S``, ``S contains V``, ``S not contains V``, ``S matches V``,
``S not matches V``. Selectors are dotted identifiers (``Service.Meta.env``) with ``["any key"]`` for map
keys that are not identifiers. Values are bare selectors (taken as their dotted text), decimal numbers,
``"double-quoted"`` strings (Go escapes, read with strconv.Unquote) or ```raw``` strings. Keywords are
matched case-sensitively and are not reserved. Syntax errors carry the parser's position and wording
(``1:4 (3): no match found, expected: ...``, ``rule "number": Invalid number literal``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from registry.filtering.errors import FilterError
from registry.gocompat import UnquoteError, go_unquote

__all__ = ["MAX_NESTING", "OP_NAMES", "parse"]

MAX_NESTING = 32  # parentheses; go-bexpr has no limit, but its unmemoized parser is exponential in depth


# AST: ("or", [terms]) | ("and", [terms]) | ("not", expr) | ("match", selector, op, raw value or None)
OP_NAMES = {
    "==": "Equal", "!=": "Not Equal", "in": "In", "not in": "Not In", "is empty": "Is Empty",
    "is not empty": "Is Not Empty", "matches": "Matches", "not matches": "Not Matches",
}  # fmt: skip

_WS = frozenset(" \t\r\n")
_WS_CLASS = "[ \\t\\r\\n]"


def _is_alpha(c: str) -> bool:
    return "a" <= c <= "z" or "A" <= c <= "Z"


def _is_ident(c: str) -> bool:
    return "a" <= c <= "z" or "A" <= c <= "Z" or "0" <= c <= "9" or c == "_"


class _TooDeep(Exception):
    def __init__(self, at: int) -> None:
        self.at = at


class _Parser:
    """A packrat rendition of the pigeon parser generated from go-bexpr's grammar.

    Failure bookkeeping follows pigeon exactly (the farthest failing position and every literal or
    character class expected there, inverted inside ``!`` lookaheads; errors raised by predicates and
    actions, tagged with the innermost rule's display name), so messages match go-bexpr's. Memoising
    rule results changes no outcome: a memo entry replays the failure summary and errors its first
    run produced. Right-recursive ``or``/``and``/``not`` chains are parsed with loops (the same
    attempts in the same order), so long expressions do not exhaust Python's stack.
    """

    def __init__(self, text: str) -> None:
        self.t = text
        self.n = len(text)
        self.inv = False
        self.fails: list[list[Any]] = [[-1, set()]]  # per active rule: [farthest index, expected there]
        self.errors: list[str] = []
        self._error_set: set[str] = set()
        self.rstack: list[str] = []
        self.memo: dict[tuple[str, int, bool], tuple[Any, int, set[str], tuple[str, ...]]] = {}
        self.depth = 0
        self._pos: list[tuple[int, int, int]] | None = None

    # -------------------------------------------------------------- bookkeeping

    def pos(self, i: int) -> tuple[int, int, int]:
        if self._pos is None:
            table = []
            line, col, off = 1, 0, 0
            for ch in self.t:
                col += 1
                if ch == "\n":
                    line += 1
                    col = 0
                table.append((line, col, off))
                off += len(ch.encode("utf-8", "surrogatepass"))
            table.append((line, col + 1, off))
            self._pos = table
        return self._pos[i]

    def where(self, i: int) -> str:
        line, col, off = self.pos(i)
        return f"{line}:{col} ({off})"

    def fail_at(self, fail: bool, i: int, want: str) -> None:
        if fail != self.inv:
            return
        top = self.fails[-1]
        if i < top[0]:
            return
        if i > top[0]:
            top[0] = i
            top[1] = set()
        top[1].add("!" + want if self.inv else want)

    def _merge(self, i: int, wants: Iterable[str]) -> None:
        top = self.fails[-1]
        if i < top[0] or i < 0:
            return
        if i > top[0]:
            top[0] = i
            top[1] = set(wants)
        else:
            top[1].update(wants)

    def add_err(self, i: int, msg: str) -> None:
        text = f"{self.where(i)}: rule {self.rstack[-1]}: {msg}"
        if text not in self._error_set:
            self._error_set.add(text)
            self.errors.append(text)

    def rule(self, name: str, display: str, fn: Callable[[int], Any], i: int) -> Any:
        key = (name, i, self.inv)
        hit = self.memo.get(key)
        if hit is not None:
            result, far, wants, errs = hit
            self._merge(far, wants)
            for e in errs:
                if e not in self._error_set:
                    self._error_set.add(e)
                    self.errors.append(e)
            return result
        self.fails.append([-1, set()])
        self.rstack.append(display or name)
        n_errs = len(self.errors)
        try:
            result = fn(i)
        finally:
            self.rstack.pop()
            far, wants = self.fails.pop()
        self.memo[key] = (result, far, wants, tuple(self.errors[n_errs:]))
        self._merge(far, wants)
        return result

    # -------------------------------------------------------------- terminals

    def lit(self, i: int, s: str, want: str) -> int:
        if i >= 0 and self.t.startswith(s, i):
            self.fail_at(True, i, want)
            return i + len(s)
        self.fail_at(False, i, want)
        return -1

    def cls(self, i: int, pred: Callable[[str], bool], want: str) -> int:
        if i < self.n and pred(self.t[i]):
            self.fail_at(True, i, want)
            return i + 1
        self.fail_at(False, i, want)
        return -1

    def any(self, i: int) -> int:
        if i >= self.n:
            self.fail_at(False, i, ".")
            return -1
        self.fail_at(True, i, ".")
        return i + 1

    def not_lit(self, i: int, s: str, want: str) -> bool:
        self.inv = not self.inv
        ok = self.lit(i, s, want) >= 0
        self.inv = not self.inv
        return not ok

    def not_rule(self, fn: Callable[[int], Any], i: int) -> bool:
        self.inv = not self.inv
        ok = fn(i) is not None
        self.inv = not self.inv
        return not ok

    # -------------------------------------------------------------- rules

    def ws(self, i: int) -> Any:
        return self.rule("_", '"whitespace"', self._ws, i)

    def _ws(self, i: int) -> Any:
        j = self.cls(i, _WS.__contains__, _WS_CLASS)
        if j < 0:
            return None
        while True:
            k = self.cls(j, _WS.__contains__, _WS_CLASS)
            if k < 0:
                return (None, j)
            j = k

    def ws_opt(self, i: int) -> int:
        r = self.ws(i)
        return r[1] if r is not None else i

    def eof(self, i: int) -> Any:
        return self.rule("EOF", "", self._eof, i)

    def _eof(self, i: int) -> Any:
        self.inv = not self.inv
        ok = self.any(i) >= 0
        self.inv = not self.inv
        return None if ok else (None, i)

    def input(self, i: int) -> Any:
        return self.rule("Input", "", self._input, i)

    def _input(self, i: int) -> Any:
        j = self.lit(self.ws_opt(i), "(", '"("')
        if j >= 0:
            r = self._nested_or(self.ws_opt(j))
            if r is not None:
                k = self.lit(self.ws_opt(r[1]), ")", '")"')
                if k >= 0:
                    e = self.eof(self.ws_opt(k))
                    if e is not None:
                        return (r[0], e[1])
        r = self.or_expr(self.ws_opt(i))
        if r is not None:
            e = self.eof(self.ws_opt(r[1]))
            if e is not None:
                return (r[0], e[1])
        return None

    def _nested_or(self, i: int) -> Any:
        self.depth += 1
        try:
            if self.depth > MAX_NESTING:
                raise _TooDeep(i)
            return self.or_expr(i)
        finally:
            self.depth -= 1

    def or_expr(self, i: int) -> Any:
        return self.rule("OrExpression", "", self._chain_or, i)

    def _chain_or(self, i: int) -> Any:
        return self._chain(i, self.and_expr, "or", '"or"')

    def and_expr(self, i: int) -> Any:
        return self.rule("AndExpression", "", self._chain_and, i)

    def _chain_and(self, i: int) -> Any:
        return self._chain(i, self.not_expr, "and", '"and"')

    def _chain(self, i: int, term: Callable[[int], Any], word: str, want: str) -> Any:
        # X <- T _ word _ X / T, as a loop over the same attempts
        first = term(i)
        if first is None:
            return None
        terms, end = [first[0]], first[1]
        while True:
            w = self.ws(end)
            if w is None:
                break
            j = self.lit(w[1], word, want)
            if j < 0:
                break
            w2 = self.ws(j)
            if w2 is None:
                break
            nxt = term(w2[1])
            if nxt is None:
                break
            terms.append(nxt[0])
            end = nxt[1]
        if len(terms) == 1:
            return (terms[0], end)
        flat: list[Any] = []
        for t in terms:
            flat.extend(t[1] if t[0] == word else [t])
        return ((word, flat), end)

    def not_expr(self, i: int) -> Any:
        return self.rule("NotExpression", "", self._not_chain, i)

    def _not_chain(self, i: int) -> Any:
        # NotExpression <- "not" _ NotExpression / ParenthesizedExpression
        chain = [i]
        j = i
        while True:
            k = self.lit(j, "not", '"not"')
            if k < 0:
                break
            w = self.ws(k)
            if w is None:
                break
            j = w[1]
            chain.append(j)
        result = self.paren(chain[-1])
        for p in reversed(chain[:-1]):
            if result is not None:
                inner = result[0]
                result = (inner[1] if inner[0] == "not" else ("not", inner), result[1])
            else:
                result = self.paren(p)
        return result

    def paren(self, i: int) -> Any:
        return self.rule("ParenthesizedExpression", '"grouping"', self._paren, i)

    def _paren(self, i: int) -> Any:
        j = self.lit(i, "(", '"("')
        if j >= 0:
            r = self._nested_or(self.ws_opt(j))
            if r is not None:
                k = self.lit(self.ws_opt(r[1]), ")", '")"')
                if k >= 0:
                    return (r[0], k)
        m = self.match(i)
        if m is not None:
            return m
        j = self.lit(i, "(", '"("')
        if j >= 0:
            r = self._nested_or(self.ws_opt(j))
            if r is not None:
                k = self.ws_opt(r[1])
                if self.not_lit(k, ")", '")"'):
                    self.add_err(k, "Unmatched parentheses")
        return None

    def match(self, i: int) -> Any:
        return self.rule("MatchExpression", '"match"', self._match, i)

    def _match(self, i: int) -> Any:
        for fn in (self._sel_op_val, self._sel_op, self._val_op_sel):
            r = fn(i)
            if r is not None:
                return r
        return None

    def _sel_op_val(self, i: int) -> Any:
        return self.rule("MatchSelectorOpValue", '"match"', self.__sel_op_val, i)

    def __sel_op_val(self, i: int) -> Any:
        s = self.selector(i)
        if s is None:
            return None
        op = self._operator(s[1], ("==", "!=", "contains", "not contains", "matches", "not matches"))
        if op is None:
            return None
        v = self.value(op[1])
        if v is None:
            return None
        return (("match", s[0], op[0], v[0]), v[1])

    def _sel_op(self, i: int) -> Any:
        return self.rule("MatchSelectorOp", '"match"', self.__sel_op, i)

    def __sel_op(self, i: int) -> Any:
        s = self.selector(i)
        if s is None:
            return None
        op = self._operator(s[1], ("is empty", "is not empty"))
        if op is None:
            return None
        return (("match", s[0], op[0], None), op[1])

    def _val_op_sel(self, i: int) -> Any:
        return self.rule("MatchValueOpSelector", '"match"', self.__val_op_sel, i)

    def __val_op_sel(self, i: int) -> Any:
        v = self.value(i)
        if v is not None:
            op = self._operator(v[1], ("in", "not in"))
            if op is not None:
                s = self.selector(op[1])
                if s is not None:
                    return (("match", s[0], op[0], v[0]), s[1])
        v = self.value(i)
        if v is not None:
            op = self._operator(v[1], ("in", "not in"))
            if op is not None and self.not_rule(self.selector, op[1]):
                self.add_err(op[1], "Invalid selector")
        return None

    # operator rules: (rule name, canonical op, sequence of ("ws"|"ws?"|literal))
    _OPS = {
        "==": ("MatchEqual", "==", ("ws?", "==", "ws?")),
        "!=": ("MatchNotEqual", "!=", ("ws?", "!=", "ws?")),
        "is empty": ("MatchIsEmpty", "is empty", ("ws", "is", "ws", "empty")),
        "is not empty": ("MatchIsNotEmpty", "is not empty", ("ws", "is", "ws", "not", "ws", "empty")),
        "in": ("MatchIn", "in", ("ws", "in", "ws")),
        "not in": ("MatchNotIn", "not in", ("ws", "not", "ws", "in", "ws")),
        "contains": ("MatchContains", "in", ("ws", "contains", "ws")),
        "not contains": ("MatchNotContains", "not in", ("ws", "not", "ws", "contains", "ws")),
        "matches": ("MatchMatches", "matches", ("ws", "matches", "ws")),
        "not matches": ("MatchNotMatches", "not matches", ("ws", "not", "ws", "matches", "ws")),
    }

    def _operator(self, i: int, choices: tuple[str, ...]) -> Any:
        for choice in choices:
            name, op, seq = self._OPS[choice]
            r = self.rule(name, "", lambda j, seq=seq, op=op: self._op_seq(j, seq, op), i)
            if r is not None:
                return r
        return None

    def _op_seq(self, i: int, seq: tuple[str, ...], op: str) -> Any:
        j = i
        for part in seq:
            if part == "ws?":
                j = self.ws_opt(j)
            elif part == "ws":
                r = self.ws(j)
                if r is None:
                    return None
                j = r[1]
            else:
                j = self.lit(j, part, f'"{part}"')
                if j < 0:
                    return None
        return (op, j)

    def selector(self, i: int) -> Any:
        return self.rule("Selector", '"selector"', self._selector, i)

    def _selector(self, i: int) -> Any:
        first = self.identifier(i)
        if first is None:
            return None
        parts, j = [first[0]], first[1]
        while True:
            r = self.rule("SelectorOrIndex", "", self._selector_or_index, j)
            if r is None:
                return (parts, j)
            parts.append(r[0])
            j = r[1]

    def identifier(self, i: int) -> Any:
        return self.rule("Identifier", "", self._identifier, i)

    def _identifier(self, i: int) -> Any:
        j = self.cls(i, _is_alpha, "[a-zA-Z]")
        if j < 0:
            return None
        while True:
            k = self.cls(j, _is_ident, "[a-zA-Z0-9_]")
            if k < 0:
                return (self.t[i:j], j)
            j = k

    def _selector_or_index(self, i: int) -> Any:
        j = self.lit(i, ".", '"."')
        if j >= 0:
            r = self.identifier(j)
            if r is not None:
                return r
        return self.rule("IndexExpression", '"index"', self._index, i)

    def _index(self, i: int) -> Any:
        j = self.lit(i, "[", '"["')
        if j >= 0:
            s = self.string(self.ws_opt(j))
            if s is not None:
                k = self.lit(self.ws_opt(s[1]), "]", '"]"')
                if k >= 0:
                    return (s[0], k)
        j = self.lit(i, "[", '"["')
        if j >= 0:
            k = self.ws_opt(j)
            if self.not_rule(self.string, k):
                self.add_err(k, "Invalid index")
        j = self.lit(i, "[", '"["')
        if j >= 0:
            s = self.string(self.ws_opt(j))
            if s is not None:
                k = self.ws_opt(s[1])
                if self.not_lit(k, "]", '"]"'):
                    self.add_err(k, "Unclosed index expression")
        return None

    def value(self, i: int) -> Any:
        return self.rule("Value", '"value"', self._value, i)

    def _value(self, i: int) -> Any:
        s = self.selector(i)
        if s is not None:
            return (".".join(s[0]), s[1])
        r = self.rule("NumberLiteral", '"number"', self._number, i)
        if r is not None:
            return r
        return self.string(i)

    def _number(self, i: int) -> Any:
        # "-"? IntegerOrFloat &AfterNumbers / "-"? IntegerOrFloat !AfterNumbers &{Invalid number literal}
        for alt in (1, 2):
            j = self.lit(i, "-", '"-"')
            j = i if j < 0 else j
            r = self.rule("IntegerOrFloat", "", self._int_or_float, j)
            if r is None:
                continue
            if alt == 1:
                if self._after_numbers_rule(r[1]) is not None:
                    return (self.t[i : r[1]], r[1])
            elif self.not_rule(self._after_numbers_rule, r[1]):
                self.add_err(r[1], "Invalid number literal")
        return None

    def _after_numbers_rule(self, i: int) -> Any:
        return self.rule("AfterNumbers", "", self._after_numbers, i)

    def _after_numbers(self, i: int) -> Any:
        # &(_ / EOF / ")") -- a lookahead, so it consumes nothing
        if self.ws(i) is not None or self.eof(i) is not None or self.lit(i, ")", '")"') >= 0:
            return (None, i)
        return None

    def _int_or_float(self, i: int) -> Any:
        j = self.lit(i, "0", '"0"')
        if j < 0:
            j = self.cls(i, lambda c: "1" <= c <= "9", "[1-9]")
            if j < 0:
                return None
            while True:
                k = self.cls(j, lambda c: "0" <= c <= "9", "[0-9]")
                if k < 0:
                    break
                j = k
        k = self.lit(j, ".", '"."')
        if k >= 0:
            m = self.cls(k, lambda c: "0" <= c <= "9", "[0-9]")
            if m >= 0:
                while True:
                    nxt = self.cls(m, lambda c: "0" <= c <= "9", "[0-9]")
                    if nxt < 0:
                        break
                    m = nxt
                j = m
        return (None, j)

    def string(self, i: int) -> Any:
        return self.rule("StringLiteral", '"string"', self._string, i)

    def _chars_until(self, i: int, quote: str, want: str) -> int:
        # (!quote .)* -- RawStringChar* / DoubleStringChar*
        j = i
        while True:
            if not self.not_lit(j, quote, want):
                return j
            k = self.any(j)
            if k < 0:
                return j
            j = k

    def _string(self, i: int) -> Any:
        end = -1
        for quote, want in (("`", '"`"'), ('"', '"\\""')):
            j = self.lit(i, quote, want)
            if j < 0:
                continue
            k = self.lit(self._chars_until(j, quote, want), quote, want)
            if k >= 0:
                end = k
                break
        if end >= 0:
            try:
                return (go_unquote(self.t[i:end]), end)
            except UnquoteError:
                self.add_err(i, "invalid syntax")
                return ("", end)
        for quote, want in (("`", '"`"'), ('"', '"\\""')):
            j = self.lit(i, quote, want)
            if j < 0:
                continue
            k = self._chars_until(j, quote, want)  # the choice is committed to this quote
            if self.eof(k) is not None:
                self.add_err(k, "Unterminated string literal")
            return None
        return None


def parse(text: str) -> Any:
    """The expression's syntax tree (see ``OP_NAMES`` and the AST note above); raises FilterError."""
    p = _Parser(text)
    try:
        result = p.input(0)
    except _TooDeep as exc:
        raise FilterError(
            f"{p.where(exc.at)}: expression nests deeper than {MAX_NESTING} parentheses"
        ) from None
    if p.errors:
        raise FilterError("\n".join(p.errors))
    if result is None:
        far, wants = p.fails[0]
        eof = "!." in wants
        expected = sorted(w for w in wants if w != "!.")
        if eof:
            expected.append("EOF")
        listed = expected[0] if len(expected) == 1 else ", ".join(expected[:-1]) + " or " + expected[-1]
        raise FilterError(f"{p.where(max(far, 0))}: no match found, expected: {listed if expected else ''}")
    return result[0]
