"""Parsed rules as msgpack-ready values, for the servers' ``ACL.ResolveToken`` answer to client agents.

A client agent keeps no replica of the ACL tables; a server answers with the rule sets that apply to a
token (already validated, already expanded from roles, identities and templates) and the client compiles
them. Sending parsed rules rather than the Rules text spares the client the HCL parse (milliseconds a
rule) on every cache refill after a change.

Shape: ``{"<block>": [[name, access, intentions|None], ...], "<singleton>": access}`` with access levels as
their integers (``registry.acl.rules.Access``). Decoding validates every item; a malformed answer raises
``ValueError``.
"""

from __future__ import annotations

from typing import Any

from registry.acl.rules import LABELED, SINGLETONS, Access, PolicyRules, Rule

__all__ = ["rules_from_wire", "rules_to_wire"]

_BLOCKS = tuple(f"{k}{s}" for k in LABELED for s in ("", "_prefix"))


def rules_to_wire(rules: PolicyRules) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for block in _BLOCKS:
        items = getattr(rules, block)
        if items:
            out[block] = [[r.name, int(r.policy), None if r.intentions is None else int(r.intentions)] for r in items]
    for name in SINGLETONS:
        level = getattr(rules, name)
        if level is not None:
            out[name] = int(level)
    return out


def _access(v: Any) -> Access:
    if not isinstance(v, int) or isinstance(v, bool):
        raise ValueError(f"access level must be an integer, not {v!r}")
    return Access(v)


def rules_from_wire(data: Any) -> PolicyRules:
    if not isinstance(data, dict):
        raise ValueError("rules must be a map")
    fields: dict[str, Any] = {}
    for block in _BLOCKS:
        items = data.get(block) or []
        if not isinstance(items, list):
            raise ValueError(f"{block} must be a list")
        rules = []
        for item in items:
            if not isinstance(item, list | tuple) or len(item) != 3 or not isinstance(item[0], str):
                raise ValueError(f"malformed {block} rule")
            rules.append(Rule(item[0], _access(item[1]), None if item[2] is None else _access(item[2])))
        fields[block] = tuple(rules)
    for name in SINGLETONS:
        if data.get(name) is not None:
            fields[name] = _access(data[name])
    return PolicyRules(**fields)
