"""Consul's ``?filter=`` boolean expressions, parsed and checked once, then run against each result item.

Consul builds these with go-bexpr 0.1.2 (the version its go.mod pins), which is *typed*: an expression is
validated against the Go struct an endpoint returns before anything runs. This module reproduces that
behaviour over the JSON-shaped dicts Proconsul renders:

* Grammar (go-bexpr's PEG): ``or`` < ``and`` < ``not`` < parentheses; matches ``S == V``, ``S != V``,
  ``S is empty``, ``S is not empty``, ``V in S``, ``V not in S``, ``S contains V``, ``S not contains V``,
  ``S matches V``, ``S not matches V``. Selectors are dotted identifiers (``Service.Meta.env``) with
  ``["any key"]`` for map keys that are not identifiers. Values are bare selectors (taken as their
  dotted text), decimal numbers, ``"double-quoted"`` strings (Go escapes; ``\\"`` is *not* accepted, as
  in go-bexpr) or ```raw``` strings. Keywords are matched case-sensitively and are not reserved.
* Syntax errors carry the parser's position and wording (``1:4 (3): no match found, expected: ...``,
  ``rule "number": Invalid number literal``), as go-bexpr's generated parser reports them.
* Each endpoint passes a ``Struct`` schema mirroring the Go type Consul filters (``structs.Node``,
  ``structs.ServiceNode``, ``structs.CheckServiceNode``, ``structs.HealthCheck``, ``api.AgentService``,
  ``structs.Intention``). Unknown selectors, operators a field type does not support and values that do
  not convert to the field's type are compile errors with go-bexpr's texts.
* Per type: strings support ``==``/``!=``/``in`` (substring)/``matches``; ints and bools only ``==``/``!=``
  (the value is converted with Go's ``strconv`` rules); string lists ``in`` (membership)/``is empty``;
  maps ``in`` (key present)/``is empty`` and select values by key; lists of objects ``is empty`` and
  select *through* the list: ``Checks.Status == critical`` holds when any check is critical, and so does
  ``Checks.Status != passing`` when any check is not passing (every operator is "any element matches").
* A map key that is absent makes ``==``, ``in`` and ``is not empty`` false and ``!=``, ``not in``,
  ``is empty``, ``matches`` and ``not matches`` true -- go-bexpr's rule, including its quirk for
  ``matches``.

Everything is resolved at compile time: evaluation is a tree of closures with no per-item dispatch on
selector text. ``FilterError`` is the only exception compiling raises; ``Filter.matches`` raises none.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from registry.gocompat import UnquoteError, go_parse_bool, go_parse_int, go_quote, go_unquote

__all__ = [
    "AGENT_SERVICE",
    "CHECK_SERVICE_NODE",
    "ERROR_PREFIX",
    "HEALTH_CHECK",
    "INTENTION",
    "NODE",
    "NODE_SERVICE",
    "SERVICE_NODE",
    "Filter",
    "FilterError",
    "Map",
    "Prim",
    "Slice",
    "Struct",
    "compile_filter",
    "parse",
]

ERROR_PREFIX = "Failed to create boolean expression evaluator: "
MAX_NESTING = 32  # parentheses; go-bexpr has no limit, but its unmemoized parser is exponential in depth


class FilterError(ValueError):
    """A filter that cannot be compiled; ``str()`` is the whole message Consul answers with."""

    def __init__(self, detail: str) -> None:
        super().__init__(ERROR_PREFIX + detail)
        self.detail = detail


# ====================================================================== schemas


@dataclass(frozen=True, eq=False)
class Prim:
    """A Go primitive: ``kind`` is "string", "int" or "bool"."""

    kind: str


@dataclass(frozen=True, eq=False)
class Slice:
    elem: Prim | Struct


@dataclass(frozen=True, eq=False)
class Map:
    """``map[string]value``; ``value`` None stands for ``map[string]interface{}`` (no selection inside)."""

    value: Prim | Struct | Slice | None


@dataclass(frozen=True, eq=False)
class Struct:
    """A Go struct: the fields go-bexpr may select (those without ``bexpr:"-"``). ``loose`` lookups
    also accept case-insensitive and snake_case keys, for objects Proconsul stores as the client sent
    them (Proxy, Connect) where Consul's decoder would have normalised the names."""

    fields: dict[str, Prim | Slice | Map | Struct]
    loose: bool = False
    name: str = ""


Node = Prim | Slice | Map | Struct

STRING = Prim("string")
INT = Prim("int")
BOOL = Prim("bool")


def _struct(name: str, loose: bool = False, **fields: Node) -> Struct:
    return Struct(dict(fields), loose, name)


_MESH_GATEWAY = _struct("MeshGatewayConfig", True, Mode=STRING)
_UPSTREAM = _struct(
    "Upstream", True,
    DestinationType=STRING, DestinationNamespace=STRING, DestinationPartition=STRING, DestinationPeer=STRING,
    DestinationName=STRING, Datacenter=STRING, LocalBindAddress=STRING, LocalBindPort=INT,
    LocalBindSocketPath=STRING, LocalBindSocketMode=STRING, MeshGateway=_MESH_GATEWAY,
)  # fmt: skip
_PROXY = _struct(
    "ConnectProxyConfig", True,
    EnvoyExtensions=Slice(_struct("EnvoyExtension", True, Name=STRING, Required=BOOL, ConsulVersion=STRING,
                                  EnvoyVersion=STRING)),
    DestinationServiceName=STRING, DestinationServiceID=STRING, LocalServiceAddress=STRING,
    LocalServicePort=INT, LocalServiceSocketPath=STRING, Mode=STRING, Upstreams=Slice(_UPSTREAM),
    MeshGateway=_MESH_GATEWAY,
    Expose=_struct("ExposeConfig", True, Checks=BOOL,
                   Paths=Slice(_struct("ExposePath", True, ListenerPort=INT, Path=STRING, LocalPathPort=INT,
                                       Protocol=STRING, ParsedFromCheck=BOOL))),
    TransparentProxy=_struct("TransparentProxyConfig", True, OutboundListenerPort=INT, DialedDirectly=BOOL),
    AccessLogs=_struct("AccessLogsConfig", True, Enabled=BOOL, DisableListenerLogs=BOOL, Type=STRING,
                       Path=STRING, JSONFormat=STRING, TextFormat=STRING),
)  # fmt: skip
_CONNECT = _struct("ServiceConnect", True, Native=BOOL)
_WEIGHTS = _struct("Weights", Passing=INT, Warning=INT)
_SERVICE_ADDRESSES = Map(_struct("ServiceAddress", Address=STRING, Port=INT))
_STRING_MAP = Map(STRING)
_TAGS = Slice(STRING)

#: structs.Node -- /v1/catalog/nodes items, and "Node" in /v1/health/service entries.
NODE = _struct(
    "Node", ID=STRING, Node=STRING, Partition=STRING, PeerName=STRING, Address=STRING, Datacenter=STRING,
    TaggedAddresses=_STRING_MAP, Meta=_STRING_MAP,
)  # fmt: skip

#: structs.NodeService -- /v1/catalog/node(-services) services, "Service" in health entries.
NODE_SERVICE = _struct(
    "NodeService", Kind=STRING, ID=STRING, Service=STRING, Tags=_TAGS, Address=STRING,
    TaggedAddresses=_SERVICE_ADDRESSES, Meta=_STRING_MAP, Port=INT, SocketPath=STRING, Weights=_WEIGHTS,
    EnableTagOverride=BOOL, Proxy=_PROXY, Connect=_CONNECT, PeerName=STRING,
)  # fmt: skip

#: api.AgentService -- /v1/agent/services values (the same selectors as NodeService).
AGENT_SERVICE = Struct(NODE_SERVICE.fields, False, "AgentService")

#: structs.ServiceNode -- /v1/catalog/service/:s, /v1/catalog/connect/:s, /v1/catalog/services instances.
SERVICE_NODE = _struct(
    "ServiceNode", ID=STRING, Node=STRING, Address=STRING, Datacenter=STRING, TaggedAddresses=_STRING_MAP,
    NodeMeta=_STRING_MAP, ServiceKind=STRING, ServiceID=STRING, ServiceName=STRING, ServiceTags=_TAGS,
    ServiceAddress=STRING, ServiceTaggedAddresses=_SERVICE_ADDRESSES, ServiceMeta=_STRING_MAP,
    ServicePort=INT, ServiceSocketPath=STRING, ServiceWeights=_WEIGHTS, ServiceEnableTagOverride=BOOL,
    ServiceProxy=_PROXY, ServiceConnect=_CONNECT, PeerName=STRING,
)  # fmt: skip

#: structs.HealthCheck -- /v1/health/{node,checks,state}, /v1/agent/checks (Definition is bexpr:"-").
HEALTH_CHECK = _struct(
    "HealthCheck", Node=STRING, CheckID=STRING, Name=STRING, Status=STRING, Notes=STRING, Output=STRING,
    ServiceID=STRING, ServiceName=STRING, ServiceTags=_TAGS, Type=STRING, Interval=STRING, Timeout=STRING,
    ExposedPort=INT, PeerName=STRING,
)  # fmt: skip

#: structs.CheckServiceNode -- /v1/health/service/:s and /v1/health/connect/:s entries.
CHECK_SERVICE_NODE = _struct("CheckServiceNode", Node=NODE, Service=NODE_SERVICE, Checks=Slice(HEALTH_CHECK))

#: structs.Intention -- /v1/connect/intentions items.
INTENTION = _struct(
    "Intention", ID=STRING, Description=STRING, SourcePeer=STRING, SourceSamenessGroup=STRING,
    SourcePartition=STRING, SourceNS=STRING, SourceName=STRING, DestinationPartition=STRING,
    DestinationNS=STRING, DestinationName=STRING, SourceType=STRING, Action=STRING, Precedence=INT,
    Meta=_STRING_MAP,
)  # fmt: skip

#: structs.ServiceIntentionsConfigEntry -- /v1/config/service-intentions items (Permissions, an L7 list of
#: structs, and the legacy timestamps are not selectable here).
_SOURCE_INTENTION = _struct(
    "SourceIntention", True, Name=STRING, Peer=STRING, Partition=STRING, Namespace=STRING,
    SamenessGroup=STRING, Action=STRING, Precedence=INT, Type=STRING, Description=STRING, LegacyID=STRING,
    LegacyMeta=_STRING_MAP,
)  # fmt: skip
SERVICE_INTENTIONS = _struct(
    "ServiceIntentionsConfigEntry", True, Kind=STRING, Name=STRING, Partition=STRING, Namespace=STRING,
    Sources=Slice(_SOURCE_INTENTION), Meta=_STRING_MAP,
)  # fmt: skip

# ====================================================================== parser (go-bexpr's PEG, as pigeon runs it)

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


# ====================================================================== validation and compilation

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


def _child(node: Node, part: str) -> Node | None:
    """The field configuration one selector part reaches (go-bexpr's SubFields lookup)."""
    if isinstance(node, Struct):
        return node.fields.get(part)
    if isinstance(node, Map):
        return node.value  # any key
    if isinstance(node, Slice) and isinstance(node.elem, Struct):
        return node.elem.fields.get(part)
    return None


def _coerce(node: Node, raw: str) -> Any:
    kind = node.elem.kind if isinstance(node, Slice) and isinstance(node.elem, Prim) else None
    if isinstance(node, Prim):
        kind = node.kind
    if kind == "int":
        return go_parse_int(raw)
    if kind == "bool":
        return go_parse_bool(raw)
    return raw


def _s(v: Any) -> str:
    if type(v) is str:
        return v
    return "" if v is None else str(v)


_RE2_UNSUPPORTED = re.compile(r"\(\?(?:=|!|<=|<!|P=|>|#)|\\[1-9]")


def _go_regexp(pattern: str) -> re.Pattern[str]:
    """Compile with Python's re, refusing the Perl features Go's RE2 lacks (lookaround, backreferences,
    atomic groups), with Go-like messages; ``\\z`` is Go's end of text."""
    bad = _find_unsupported(pattern)
    if bad is not None:
        raise ValueError(bad)
    try:
        return re.compile(_translate_go_regexp(pattern))
    except (re.error, OverflowError, RecursionError, ValueError) as exc:
        msg = getattr(exc, "msg", None) or str(exc)
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
        child = _child(node, part)
        if child is None:
            raise FilterError(f"Selector {go_quote('.'.join(selector[: idx + 1]))} is not valid")
        node = child
    if op not in _ops_of(node):
        raise FilterError(
            f"Invalid match operator {go_quote(OP_NAMES[op])} for selector {go_quote(sel_text)}"
        )
    value: Any = None
    if raw is not None:
        try:
            value = _coerce(node, raw)
        except ValueError as exc:
            raise FilterError(
                f"Failed to coerce value {go_quote(raw)} for selector {go_quote(sel_text)}: {exc}"
            ) from None
        if op in ("matches", "not matches"):
            try:
                value = _go_regexp(value)
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
