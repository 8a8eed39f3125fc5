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

The package follows those seams: ``schema`` (the typed selectors per endpoint), ``parser`` (the grammar and
its error texts), ``literals`` (value conversion with Go's strconv rules), ``regexp`` (RE2 patterns on
Python's ``re``), ``compiler`` (validation and the closures that evaluate), ``errors`` (``FilterError``).
Callers use the names below: ``filtering.compile_filter(text, filtering.CHECK_SERVICE_NODE)``.
"""

from __future__ import annotations

from registry.filtering.compiler import Filter, compile_filter
from registry.filtering.errors import ERROR_PREFIX, FilterError
from registry.filtering.parser import parse
from registry.filtering.schema import (
    AGENT_SERVICE,
    CHECK_SERVICE_NODE,
    HEALTH_CHECK,
    INTENTION,
    NODE,
    NODE_SERVICE,
    SERVICE_DEFAULTS,
    SERVICE_INTENTIONS,
    SERVICE_NODE,
    Map,
    Prim,
    Slice,
    Struct,
)

__all__ = [
    "AGENT_SERVICE",
    "CHECK_SERVICE_NODE",
    "ERROR_PREFIX",
    "HEALTH_CHECK",
    "INTENTION",
    "NODE",
    "NODE_SERVICE",
    "SERVICE_DEFAULTS",
    "SERVICE_INTENTIONS",
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
