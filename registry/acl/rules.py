"""ACL rules: Consul's grammar, validated into frozen values, and rendered back to HCL or JSON.

The grammar is Consul's (acl/policy.go ``PolicyRules``; docs/security/acl/acl-rules.mdx):

* labeled resources, each with an exact form and a ``_prefix`` form: ``agent``, ``event``, ``key``,
  ``node``, ``query``, ``service``, ``session``; a rule has a ``policy`` and, on ``service`` rules only,
  ``intentions`` (the policy for intentions whose destination is that service);
* unlabeled resources ``acl``, ``keyring``, ``mesh``, ``operator``, ``peering`` = read|write|deny, where
  ``""`` means "not set", as in Consul.

Dispositions are ``read``, ``write`` and ``deny``; ``list`` is accepted on ``key`` and ``key_prefix``
rules (Consul's validator takes it on both).  Like Consul's ``AccessLevelFromString`` the words are
case-insensitive.  Invalid rules are refused with Consul's texts (``Invalid service policy: ...``,
``Failed to parse ACL rules: ...``); the rule is printed the way Go's ``%#v`` prints Consul's structs, so
a message matches what Consul says for the same input.

Two places where we are stricter than Consul, on purpose: an unknown resource or argument is refused
instead of being ignored (a misspelt ``servce`` silently granting nothing, or a misspelt
``intentons`` silently leaving the default, is a long-standing Consul complaint, hashicorp/consul#11352),
and HCL2 templates (``${...}``) are refused instead of being taken literally.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum

from registry.acl.syntax import Attr, Block, Pos, SyntaxProblem, Value, decode

__all__ = [
    "LABELED",
    "SINGLETONS",
    "Access",
    "PolicyRules",
    "Rule",
    "RulesError",
    "go_quote",
    "parse_rules",
    "render_hcl",
    "render_json",
]


class Access(IntEnum):
    """An access level.  The integer order is what a rule grants: write > list > read > deny."""

    DENY = 0
    READ = 1
    LIST = 2
    WRITE = 3

    def __str__(self) -> str:
        return self.name.lower()


_WORDS = {"deny": Access.DENY, "read": Access.READ, "list": Access.LIST, "write": Access.WRITE}

# When two policies name the same exact name or prefix: deny, then write, then list, then read
# (acl/policy.go takesPrecedenceOver).  Note this is not the grant order: deny wins here.
PRECEDENCE = {Access.DENY: 4, Access.WRITE: 3, Access.LIST: 2, Access.READ: 1}

LABELED = ("agent", "event", "key", "node", "query", "service", "session")
SINGLETONS = ("acl", "keyring", "mesh", "operator", "peering")

# The Go struct each labeled resource decodes into, its key field, and whether it embeds Consul CE's
# empty EnterpriseRule: enough to print an invalid rule as Consul's %#v does.
_GO_SHAPE = {
    "agent": ("AgentRule", "Node", False),
    "event": ("EventRule", "Event", False),
    "key": ("KeyRule", "Prefix", True),
    "node": ("NodeRule", "Name", True),
    "query": ("PreparedQueryRule", "Prefix", False),
    "service": ("ServiceRule", "Name", True),
    "session": ("SessionRule", "Node", False),
}


class RulesError(ValueError):
    """Rules text that Consul would refuse, with the message Consul gives (or ours, where it has none)."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One labeled rule: ``service "web" { policy = "write" intentions = "read" }``."""

    name: str
    policy: Access
    intentions: Access | None = None


@dataclass(frozen=True, slots=True)
class PolicyRules:
    """The rules of one policy, in the order they were written (duplicates kept; merging resolves them)."""

    agent: tuple[Rule, ...] = ()
    agent_prefix: tuple[Rule, ...] = ()
    event: tuple[Rule, ...] = ()
    event_prefix: tuple[Rule, ...] = ()
    key: tuple[Rule, ...] = ()
    key_prefix: tuple[Rule, ...] = ()
    node: tuple[Rule, ...] = ()
    node_prefix: tuple[Rule, ...] = ()
    query: tuple[Rule, ...] = ()
    query_prefix: tuple[Rule, ...] = ()
    service: tuple[Rule, ...] = ()
    service_prefix: tuple[Rule, ...] = ()
    session: tuple[Rule, ...] = ()
    session_prefix: tuple[Rule, ...] = ()
    acl: Access | None = None
    keyring: Access | None = None
    mesh: Access | None = None
    operator: Access | None = None
    peering: Access | None = None

    def rule_count(self) -> int:
        """How many rules (labeled and unlabeled) this policy holds."""
        return sum(len(getattr(self, f"{k}{s}")) for k in LABELED for s in ("", "_prefix")) + sum(
            getattr(self, k) is not None for k in SINGLETONS
        )


# ------------------------------------------------------------------------------------------ parsing


def parse_rules(text: str) -> PolicyRules:
    """Parse and validate a policy's Rules (HCL or JSON).  Raises ``RulesError`` and nothing else."""
    if not isinstance(text, str):
        raise RulesError("Failed to parse ACL rules: the rules must be text")
    if text == "":
        return PolicyRules()  # Consul's hot path for empty rules
    try:
        items = decode(text)
    except SyntaxProblem as exc:
        raise RulesError(f"Failed to parse ACL rules: {exc}") from None
    labeled: dict[str, list[Rule]] = {f"{k}{s}": [] for k in LABELED for s in ("", "_prefix")}
    singles: dict[str, Access | None] = {}
    for item in items:
        if isinstance(item, Attr):
            singles[item.name] = _singleton(item)
        else:
            labeled[_block_kind(item)].append(_labeled_rule(item))
    return PolicyRules(**{k: tuple(v) for k, v in labeled.items()}, **singles)  # type: ignore[arg-type]


def _unknown(name: str, pos: Pos | None) -> RulesError:
    known = ", ".join(sorted(SINGLETONS + LABELED + tuple(f"{k}_prefix" for k in LABELED)))
    where = f"At {pos}: " if pos else ""
    return RulesError(f"Failed to parse ACL rules: {where}unknown resource {go_quote(name)} (known: {known})")


def _not_string(name: str, value: Value) -> RulesError:
    where = f"At {value.pos}: " if value.pos else ""
    return RulesError(f"Failed to parse ACL rules: {where}{name} must be a string, not {value.what}")


def _singleton(attr: Attr) -> Access | None:
    if attr.name not in SINGLETONS:
        if attr.name in _block_names():
            where = f"At {attr.pos}: " if attr.pos else ""
            raise RulesError(
                f'Failed to parse ACL rules: {where}{attr.name} needs a name: {attr.name} "<name>" {{ policy = "read" }}'
            )
        raise _unknown(attr.name, attr.pos)
    if attr.value.text is None:
        raise _not_string(attr.name, attr.value)
    if attr.value.text == "":
        return None  # "this one is allowed to be empty" (acl/policy.go)
    level = _WORDS.get(attr.value.text.lower())
    if level is None or level is Access.LIST:
        raise RulesError(f"Invalid {attr.name} policy: {go_quote(attr.value.text)}")
    return level


def _block_names() -> set[str]:
    return {f"{k}{s}" for k in LABELED for s in ("", "_prefix")}


def _block_kind(block: Block) -> str:
    if block.kind in _block_names():
        return block.kind
    if block.kind in SINGLETONS:
        where = f"At {block.pos}: " if block.pos else ""
        raise RulesError(
            f'Failed to parse ACL rules: {where}{block.kind} takes a value: {block.kind} = "read"'
        )
    raise _unknown(block.kind, block.pos)


def _labeled_rule(block: Block) -> Rule:
    resource = block.kind.removesuffix("_prefix")
    allowed = ("policy", "intentions") if resource == "service" else ("policy",)
    raw: dict[str, str] = {}
    for name, value in block.fields:
        if name not in allowed:
            where = f"At {block.pos}: " if block.pos else ""
            raise RulesError(
                f"Failed to parse ACL rules: {where}unknown argument {go_quote(name)} in {block.kind} "
                f"{go_quote(block.label)} (expected {' or '.join(allowed)})"
            )
        if value.text is None:
            raise _not_string(name, value)
        raw[name] = value.text
    policy_word = raw.get("policy", "")
    intentions_word = raw.get("intentions", "")
    policy = _WORDS.get(policy_word.lower())
    if policy is None or (policy is Access.LIST and resource != "key"):
        raise RulesError(f"Invalid {block.kind} policy: {_go_rule(block.kind, block.label, raw)}")
    intentions: Access | None = None
    if intentions_word != "":
        intentions = _WORDS.get(intentions_word.lower())
        if intentions is None or intentions is Access.LIST:
            raise RulesError(
                f"Invalid {block.kind} intentions policy: {_go_rule(block.kind, block.label, raw)}"
            )
    return Rule(block.label, policy, intentions)


def _go_rule(kind: str, label: str, raw: dict[str, str]) -> str:
    """The rule as Go's ``%#v`` prints Consul's struct pointer, e.g. ``&acl.NodeRule{Name:"x", ...}``."""
    struct, key, enterprise = _GO_SHAPE[kind.removesuffix("_prefix")]
    parts = [f"{key}:{go_quote(label)}", f"Policy:{go_quote(raw.get('policy', ''))}"]
    if struct == "ServiceRule":
        parts.append(f"Intentions:{go_quote(raw.get('intentions', ''))}")
    if enterprise:
        parts.append("EnterpriseRule:acl.EnterpriseRule{}")
    return f"&acl.{struct}{{{', '.join(parts)}}}"


_GO_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    "\\": "\\\\",
    '"': '\\"',
}


def go_quote(s: str) -> str:
    """Quote ``s`` as Go's ``strconv.Quote`` does, so messages read exactly like Consul's."""
    out = ['"']
    for ch in s:
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch.isprintable() or ch == " ":
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


# ---------------------------------------------------------------------------------------- rendering


def _hcl_string(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif not ch.isprintable() and ch != " ":
            out.append(f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}")
        else:
            out.append(ch)
    out.append('"')
    # A literal ${ or %{ must be doubled in HCL2 or it would start a template.
    return "".join(out).replace("${", "$${").replace("%{", "%%{")


def render_hcl(rules: PolicyRules) -> str:
    """Render rules as HCL in Consul's documented layout; ``parse_rules`` reads it back unchanged."""
    lines: list[str] = []
    for name in SINGLETONS:
        level = getattr(rules, name)
        if level is not None:
            lines.append(f'{name} = "{level}"')
    for kind in LABELED:
        for suffix in ("", "_prefix"):
            block = f"{kind}{suffix}"
            for rule in getattr(rules, block):
                lines.append(f"{block} {_hcl_string(rule.name)} {{")
                lines.append(f'  policy = "{rule.policy}"')
                if rule.intentions is not None:
                    lines.append(f'  intentions = "{rule.intentions}"')
                lines.append("}")
    return "\n".join(lines) + ("\n" if lines else "")


def render_json(rules: PolicyRules) -> str:
    """Render rules as JSON (names map to objects; a name written twice uses HCL1's list form)."""
    doc: dict[str, object] = {}
    for name in SINGLETONS:
        level = getattr(rules, name)
        if level is not None:
            doc[name] = str(level)
    for kind in LABELED:
        for suffix in ("", "_prefix"):
            block = f"{kind}{suffix}"
            entries = getattr(rules, block)
            if not entries:
                continue
            bodies = []
            for rule in entries:
                body = {"policy": str(rule.policy)}
                if rule.intentions is not None:
                    body["intentions"] = str(rule.intentions)
                bodies.append((rule.name, body))
            names = [n for n, _ in bodies]
            if len(set(names)) == len(names):
                doc[block] = dict(bodies)
            else:
                doc[block] = [{n: b} for n, b in bodies]
    return json.dumps(doc, indent=2, ensure_ascii=False)
