"""The authorizer: a token's policies merged and compiled into tables that answer questions fast.

Semantics are Consul's, operation by operation (acl/policy_authorizer.go, policy_merger.go,
static_authorizer.go, chained_authorizer.go):

* **Merging** (``MergePolicies``): every policy of the token (direct, its roles', and the synthetic ones
  of identities and templates) is merged first.  When two rules name the same exact name, or the same
  prefix, the stronger wins in the order deny > write > list > read; for ``service`` rules the
  ``intentions`` value is merged the same way, separately, and an unset value never wins.
* **Matching** (``getPolicy``): an exact rule for the name wins over every prefix rule; otherwise the
  longest prefix rule that the name starts with; otherwise no rule matches.
* **Granting** (``enforce``): write grants write, list and read; list grants list and read; read grants
  read; deny grants nothing.
* **Intentions**: a service rule without ``intentions`` gives ``read`` on intentions when its policy is
  read or write, else ``deny`` (``loadRules``).  ``intention_read("*")`` asks whether any rule allows
  reading; ``intention_write("*")`` whether every rule allows writing.
* **Falling through** (the chained authorizer): when no rule matches, the agent's ``default_policy``
  decides, except for ``acl:read``, ``acl:write`` and snapshots, which a default policy never grants
  (Consul's static authorizer grants them only to management).  ``mesh`` and ``peering`` fall back to
  the token's ``operator`` rule before the default.
* **Aggregates** for listings: ``node_read_all``/``service_read_all`` allow only when a ``""`` prefix
  rule grants read and no rule anywhere takes it away (``allAllowed``); ``service_write_any`` allows
  when any rule grants write (``anyAllowed``).
* **Delete-tree**: ``key_write_prefix(p)`` needs the longest prefix rule above ``p`` to be write (or
  none, then the default decides) and no rule of any kind at or under ``p`` that is not write; a single
  ``deny`` (or ``read``) under the prefix refuses the whole recursive delete (CVE-2019-12291).

Cost: each labeled resource is an exact ``dict`` plus a prefix ``dict`` and the distinct prefix
lengths, longest first.  A lookup is one exact probe and then one probe per distinct prefix length not
longer than the name: bounded by ``len(name) + 1`` probes, and in practice a handful, never a scan over
the rules.  The aggregates depend only on the rules and are computed once, at compile time.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from itertools import chain

from registry.acl.errors import PermissionDenied
from registry.acl.rules import LABELED, PRECEDENCE, SINGLETONS, Access, PolicyRules

__all__ = ["OPERATIONS", "Authorizer", "compile_rules", "merge_rules"]

_DENY, _READ, _LIST, _WRITE = int(Access.DENY), int(Access.READ), int(Access.LIST), int(Access.WRITE)

# operation -> (Consul's resource word, access word, whether it takes a name); used for errors and for
# asking by name (``Authorizer.allowed``).
OPERATIONS: dict[str, tuple[str, str, bool]] = {
    "acl_read": ("acl", "read", False),
    "acl_write": ("acl", "write", False),
    "snapshot": ("acl", "write", False),
    "agent_read": ("agent", "read", True),
    "agent_write": ("agent", "write", True),
    "event_read": ("event", "read", True),
    "event_write": ("event", "write", True),
    "intention_read": ("intention", "read", True),
    "intention_write": ("intention", "write", True),
    "intention_default_allow": ("intention", "read", False),
    "key_read": ("key", "read", True),
    "key_list": ("key", "list", True),
    "key_write": ("key", "write", True),
    "key_write_prefix": ("key", "write", True),
    "keyring_read": ("keyring", "read", False),
    "keyring_write": ("keyring", "write", False),
    "mesh_read": ("mesh", "read", False),
    "mesh_write": ("mesh", "write", False),
    "node_read": ("node", "read", True),
    "node_read_all": ("node", "read", False),
    "node_write": ("node", "write", True),
    "operator_read": ("operator", "read", False),
    "operator_write": ("operator", "write", False),
    "peering_read": ("peering", "read", False),
    "peering_write": ("peering", "write", False),
    "query_read": ("query", "read", True),
    "query_write": ("query", "write", True),
    "service_read": ("service", "read", True),
    "service_read_all": ("service", "read", False),
    "service_write": ("service", "write", True),
    "service_write_any": ("service", "write", False),
    "session_read": ("session", "read", True),
    "session_write": ("session", "write", True),
}


class _Table:
    """Exact and prefix rules of one resource, as access levels (plain ints, for speed)."""

    __slots__ = ("exact", "prefix", "lengths", "below")

    def __init__(self, exact: dict[str, int], prefix: dict[str, int]) -> None:
        self.exact = exact
        self.prefix = prefix
        self.lengths = tuple(sorted({len(p) for p in prefix}, reverse=True))
        # Names of rules (exact or prefix) that do not grant write, sorted: the ones under a prefix are
        # contiguous, found with one bisection (key_write_prefix).
        self.below = sorted({n for n, level in chain(exact.items(), prefix.items()) if level != _WRITE})

    def lookup(self, name: str) -> int | None:
        level = self.exact.get(name)
        if level is not None:
            return level
        return self.longest_prefix(name)

    def longest_prefix(self, name: str) -> int | None:
        prefix = self.prefix
        if prefix:
            size = len(name)
            for length in self.lengths:
                if length <= size:
                    level = prefix.get(name[:length])
                    if level is not None:
                        return level
        return None

    def levels(self) -> Iterable[int]:
        return chain(self.exact.values(), self.prefix.values())

    def all_allowed(self, required: int) -> bool | None:
        """Consul's ``allAllowed``: None means no decision (the default policy decides)."""
        decision: bool | None = None
        catch_all = self.prefix.get("")
        if catch_all is not None:
            if catch_all < required:
                return False
            decision = True
        if any(level < required for level in self.levels()):
            return False
        return decision

    def any_allowed(self, required: int) -> bool | None:
        """Consul's ``anyAllowed``: None means no decision (the default policy decides)."""
        catch_all = self.prefix.get("")
        decision: bool | None = None
        if catch_all is not None:
            if catch_all >= required:
                return True
            decision = False
        if any(level >= required for level in self.levels()):
            return True
        return decision


_EMPTY = _Table({}, {})


def _stronger(new: Access | None, old: Access | None) -> bool:
    """acl/policy.go ``takesPrecedenceOver``: deny > write > list > read > unset."""
    if new is None:
        return False
    if old is None:
        return True
    return PRECEDENCE[new] >= PRECEDENCE[old]


class _Merged:
    """The merge of several policies' rules (Consul's ``policyRulesMergeContext``)."""

    def __init__(self) -> None:
        # block ("service", "service_prefix", ...) -> name -> [policy, intentions]
        self.blocks: dict[str, dict[str, list[Access | None]]] = {
            f"{k}{s}": {} for k in LABELED for s in ("", "_prefix")
        }
        self.singles: dict[str, Access | None] = dict.fromkeys(SINGLETONS)

    def add(self, rules: PolicyRules) -> None:
        for block, merged in self.blocks.items():
            for rule in getattr(rules, block):
                have = merged.get(rule.name)
                if have is None:
                    merged[rule.name] = [rule.policy, rule.intentions]
                    continue
                if _stronger(rule.policy, have[0]):
                    have[0] = rule.policy
                if _stronger(rule.intentions, have[1]):
                    have[1] = rule.intentions
        for name in SINGLETONS:
            level = getattr(rules, name)
            if _stronger(level, self.singles[name]):
                self.singles[name] = level


def merge_rules(rule_sets: Iterable[PolicyRules]) -> _Merged:
    merged = _Merged()
    for rules in rule_sets:
        merged.add(rules)
    return merged


def _intention_level(policy: Access | None, intentions: Access | None) -> int:
    if intentions is not None:
        return int(intentions)
    return _READ if policy in (Access.READ, Access.WRITE) else _DENY


def compile_rules(
    rule_sets: Iterable[PolicyRules],
    *,
    default_allow: bool,
    accessor_id: str = "",
) -> Authorizer:
    """Merge the policies' rules and compile them (Consul's ``NewPolicyAuthorizer`` + chain to default)."""
    merged = merge_rules(rule_sets)
    tables: dict[str, _Table] = {}
    for kind in LABELED:
        exact = {n: int(v[0]) for n, v in merged.blocks[kind].items()}  # type: ignore[arg-type]
        prefix = {n: int(v[0]) for n, v in merged.blocks[f"{kind}_prefix"].items()}  # type: ignore[arg-type]
        tables[kind] = _Table(exact, prefix)
    tables["intention"] = _Table(
        {n: _intention_level(v[0], v[1]) for n, v in merged.blocks["service"].items()},
        {n: _intention_level(v[0], v[1]) for n, v in merged.blocks["service_prefix"].items()},
    )
    singles = {k: (None if v is None else int(v)) for k, v in merged.singles.items()}
    return Authorizer(accessor_id, tables, singles, default_allow=default_allow, manage=False)


class Authorizer:
    """Answers "may this token do X to Y?" as Consul's chained authorizer would.

    Each operation is a method returning ``True`` (allow) or ``False`` (deny); ``check`` raises
    Consul's ``PermissionDenied`` instead.  Build one with ``compile_rules`` (or
    ``registry.acl.resolve.compile_token`` from a token and its policies), or ``management`` for the
    agent recovery token.  Instances are immutable after construction and safe to share.
    """

    __slots__ = (
        "accessor_id",
        "_agent",
        "_event",
        "_intention",
        "_key",
        "_node",
        "_query",
        "_service",
        "_session",
        "_acl",
        "_keyring",
        "_mesh",
        "_operator",
        "_peering",
        "_default",
        "_manage",
        "_node_read_all",
        "_service_read_all",
        "_service_write_any",
        "_intention_read_any",
        "_intention_write_all",
    )

    def __init__(
        self,
        accessor_id: str,
        tables: dict[str, _Table],
        singles: dict[str, int | None],
        *,
        default_allow: bool,
        manage: bool,
    ) -> None:
        self.accessor_id = accessor_id
        self._agent = tables.get("agent", _EMPTY)
        self._event = tables.get("event", _EMPTY)
        self._intention = tables.get("intention", _EMPTY)
        self._key = tables.get("key", _EMPTY)
        self._node = tables.get("node", _EMPTY)
        self._query = tables.get("query", _EMPTY)
        self._service = tables.get("service", _EMPTY)
        self._session = tables.get("session", _EMPTY)
        self._acl = singles.get("acl")
        self._keyring = singles.get("keyring")
        self._mesh = singles.get("mesh")
        self._operator = singles.get("operator")
        self._peering = singles.get("peering")
        self._default = default_allow
        self._manage = manage
        self._node_read_all = self._or_default(self._node.all_allowed(_READ))
        self._service_read_all = self._or_default(self._service.all_allowed(_READ))
        self._service_write_any = self._or_default(self._service.any_allowed(_WRITE))
        self._intention_read_any = self._or_default(self._intention.any_allowed(_READ))
        self._intention_write_all = self._or_default(self._intention.all_allowed(_WRITE))

    @classmethod
    def management(cls, accessor_id: str = "") -> Authorizer:
        """Everything allowed, ACL management included (Consul's ``ManageAll``, the recovery token)."""
        return cls(accessor_id, {}, {}, default_allow=True, manage=True)

    def _or_default(self, decision: bool | None) -> bool:
        return self._default if decision is None else decision

    # ----------------------------------------------------------------------------- unnamed resources

    def acl_read(self) -> bool:
        level = self._acl
        return self._manage if level is None else level >= _READ

    def acl_write(self) -> bool:
        level = self._acl
        return self._manage if level is None else level >= _WRITE

    def snapshot(self) -> bool:
        """Snapshots save and restore everything, tokens included: ``acl = "write"`` or management."""
        return self.acl_write()

    def keyring_read(self) -> bool:
        level = self._keyring
        return self._default if level is None else level >= _READ

    def keyring_write(self) -> bool:
        level = self._keyring
        return self._default if level is None else level >= _WRITE

    def operator_read(self) -> bool:
        level = self._operator
        return self._default if level is None else level >= _READ

    def operator_write(self) -> bool:
        level = self._operator
        return self._default if level is None else level >= _WRITE

    def mesh_read(self) -> bool:
        level = self._mesh
        return self.operator_read() if level is None else level >= _READ

    def mesh_write(self) -> bool:
        level = self._mesh
        return self.operator_write() if level is None else level >= _WRITE

    def peering_read(self) -> bool:
        level = self._peering
        return self.operator_read() if level is None else level >= _READ

    def peering_write(self) -> bool:
        level = self._peering
        return self.operator_write() if level is None else level >= _WRITE

    def intention_default_allow(self) -> bool:
        """What happens to a connection no intention matches: the default policy (never a rule)."""
        return self._default

    # ------------------------------------------------------------------------------- named resources

    def agent_read(self, node: str) -> bool:
        level = self._agent.lookup(node)
        return self._default if level is None else level >= _READ

    def agent_write(self, node: str) -> bool:
        level = self._agent.lookup(node)
        return self._default if level is None else level >= _WRITE

    def event_read(self, name: str) -> bool:
        level = self._event.lookup(name)
        return self._default if level is None else level >= _READ

    def event_write(self, name: str) -> bool:
        level = self._event.lookup(name)
        return self._default if level is None else level >= _WRITE

    def intention_read(self, destination: str) -> bool:
        if destination == "*":
            return self._intention_read_any
        level = self._intention.lookup(destination)
        return self._default if level is None else level >= _READ

    def intention_write(self, destination: str) -> bool:
        if destination == "*":
            return self._intention_write_all
        level = self._intention.lookup(destination)
        return self._default if level is None else level >= _WRITE

    def key_read(self, key: str) -> bool:
        level = self._key.lookup(key)
        return self._default if level is None else level >= _READ

    def key_list(self, prefix: str) -> bool:
        level = self._key.lookup(prefix)
        return self._default if level is None else level >= _LIST

    def key_write(self, key: str) -> bool:
        level = self._key.lookup(key)
        return self._default if level is None else level >= _WRITE

    def key_write_prefix(self, prefix: str) -> bool:
        """May every key under ``prefix`` be deleted (a recursive delete, a tree write)?"""
        table = self._key
        base = table.longest_prefix(prefix)
        if base is not None and base != _WRITE:
            return False
        below = table.below
        i = bisect_left(below, prefix)
        if i < len(below) and below[i].startswith(prefix):
            return False
        return self._default if base is None else True

    def node_read(self, name: str) -> bool:
        level = self._node.lookup(name)
        return self._default if level is None else level >= _READ

    def node_write(self, name: str) -> bool:
        level = self._node.lookup(name)
        return self._default if level is None else level >= _WRITE

    def node_read_all(self) -> bool:
        return self._node_read_all

    def query_read(self, name: str) -> bool:
        level = self._query.lookup(name)
        return self._default if level is None else level >= _READ

    def query_write(self, name: str) -> bool:
        level = self._query.lookup(name)
        return self._default if level is None else level >= _WRITE

    def service_read(self, name: str) -> bool:
        level = self._service.lookup(name)
        return self._default if level is None else level >= _READ

    def service_write(self, name: str) -> bool:
        level = self._service.lookup(name)
        return self._default if level is None else level >= _WRITE

    def service_read_all(self) -> bool:
        return self._service_read_all

    def service_write_any(self) -> bool:
        return self._service_write_any

    def session_read(self, node: str) -> bool:
        level = self._session.lookup(node)
        return self._default if level is None else level >= _READ

    def session_write(self, node: str) -> bool:
        level = self._session.lookup(node)
        return self._default if level is None else level >= _WRITE

    # ------------------------------------------------------------------------------ by operation name

    def allowed(self, operation: str, name: str | None = None) -> bool:
        """Ask by operation name (``"service_write"``, ``"operator_read"``); for tables and transcripts."""
        if operation not in OPERATIONS:
            raise KeyError(f"unknown ACL operation {operation!r}")
        method = getattr(self, operation)
        if OPERATIONS[operation][2]:
            if name is None:
                raise TypeError(f"{operation} needs a name")
            return bool(method(name))
        return bool(method())

    def check(self, operation: str, name: str | None = None) -> None:
        """Raise Consul's ``PermissionDenied`` unless ``operation`` (on ``name``) is allowed."""
        if not self.allowed(operation, name):
            resource, level, named = OPERATIONS[operation]
            raise PermissionDenied(self.accessor_id, resource, level, name if named else None)
