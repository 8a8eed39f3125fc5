"""The ACL tables: tokens, policies, roles, auth methods, binding rules and the bootstrap state.

Consul keeps these in memdb tables with their own indexes (agent/consul/state/acl.go): tokens by accessor
and by secret, policies and roles by ID and by name, auth methods by name, binding rules by ID. So do we,
as dicts journaled through the one ``Transaction``, so that a refused command leaves every table as it was.

* A secret is looked up only by an exact dict probe (``acl_token_by_secret``); nothing lists or scans
  secrets by prefix, and lists never render them (the API decides what a caller may see).
* Every write touches ``TOPIC_ACL`` and moves the written table's index and the ``acl`` index (the
  largest of them): blocking reads of ACL objects and every cache of decisions (the resolvers, the
  client agents following the servers) wake on that one topic.
* What depends on other rows is checked here, with Consul's texts (tokenSetInternal, PolicySet, RoleSet,
  AuthMethodSet, BindingRuleSet in agent/consul/acl_endpoint.go and the state store's own checks): a name
  already taken, links to policies or roles that do not exist (resolved from names to IDs; only IDs are
  stored), updates of a token that cannot change its secret, locality, auth method or expiry, an auth
  method's Type and a binding rule's AuthMethod that never change. What a request builds is checked where
  it is built (``registry.acl.objects``, ``registry.acl.binding``); an auth method's and a binding rule's
  checks need rows first (the stored Type, the rule's method), which ``acl_auth_method_type`` and
  ``acl_binding_rule_method`` answer for the API before it builds them, and again when the write applies.
* Times come from the command (the proposer's clock), never from a local one.

Consul answers these refusals with 500 (they are RPC errors there); we answer 400, with Consul's text:
they are the caller's mistakes, and a 500 would say the server failed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from registry import commands as c
from registry.acl.binding import BindingRule
from registry.acl.errors import ANONYMOUS_TOKEN_ID
from registry.acl.identities import BUILTIN_POLICIES, GLOBAL_MANAGEMENT_ID
from registry.acl.objects import (
    ANONYMOUS_SECRET,
    MAX_TOKEN_TTL_NS,
    MIN_TOKEN_TTL_NS,
    AuthMethod,
    Link,
    PolicyRow,
    RoleRow,
    TokenRow,
)
from registry.acl.resolver import TOPIC_ACL
from registry.acl.rules import go_quote
from registry.gocompat import format_duration_ns
from registry.state.base import StoreBase, StoreError
from registry.state.topics import WatchSet

ACL_TABLES = ("acl-tokens", "acl-policies", "acl-roles", "acl-auth-methods", "acl-binding-rules", "acl-bootstrap")
ACL_INDEX = "acl"  # the largest index of the ACL tables: what a client agent follows
BOOTSTRAP_DESCRIPTION = "Bootstrap Token (Global Management)"
ANONYMOUS_DESCRIPTION = "Anonymous Token"
INITIAL_MANAGEMENT_DESCRIPTION = "Initial Management Token"


class ACLTable(StoreBase):
    def __init__(self) -> None:
        super().__init__()
        self.acl_tokens: dict[str, TokenRow] = {}  # accessor ID -> token
        self.acl_secrets: dict[str, str] = {}  # secret ID -> accessor ID (exact lookups only)
        self.acl_policies: dict[str, PolicyRow] = {}
        self.acl_policy_names: dict[str, str] = {}
        self.acl_roles: dict[str, RoleRow] = {}
        self.acl_role_names: dict[str, str] = {}
        self.acl_auth_methods: dict[str, AuthMethod] = {}
        self.acl_binding_rules: dict[str, BindingRule] = {}
        self.acl_bootstrap: dict[str, int] = {}  # "index": log index of the bootstrap (0: not bootstrapped)
        for t in (*ACL_TABLES, ACL_INDEX):
            self.table_index[t] = 0

    def _acl_bump(self, table: str) -> None:
        tx = self._write()
        tx.put(self.table_index, table, tx.index)
        tx.put(self.table_index, ACL_INDEX, tx.index)
        tx.topics.add(TOPIC_ACL)

    # ------------------------------------------------------------------ reads

    def acl_index(self, table: str = ACL_INDEX, ws: WatchSet | None = None) -> int:
        idx = self.table_index.get(table, 0)
        if ws is not None:
            ws.saw(TOPIC_ACL, idx)
        return idx

    def acl_token_get(self, accessor_id: str, ws: WatchSet | None = None) -> TokenRow | None:
        self.acl_index("acl-tokens", ws)
        return self.acl_tokens.get(accessor_id)

    def acl_token_by_secret(self, secret: str, ws: WatchSet | None = None) -> TokenRow | None:
        """The token with exactly this secret (a dict probe: never a prefix, never a scan)."""
        self.acl_index("acl-tokens", ws)
        accessor = self.acl_secrets.get(secret)
        return None if accessor is None else self.acl_tokens.get(accessor)

    def acl_token_list(self, ws: WatchSet | None = None, *, policy: str = "", role: str = "", auth_method: str = "",
                       service_name: str = "") -> list[TokenRow]:  # fmt: skip
        """Tokens sorted by AccessorID (Consul's id index order), filtered as ``/v1/acl/tokens`` filters."""
        self.acl_index("acl-tokens", ws)
        out = []
        for accessor in sorted(self.acl_tokens):
            t = self.acl_tokens[accessor]
            if policy and policy not in t.policy_ids():
                continue
            if role and role not in t.role_ids():
                continue
            if auth_method and t.auth_method != auth_method:
                continue
            if service_name and all(s.service_name != service_name for s in t.service_identities):
                continue
            out.append(t)
        return out

    def acl_policy_get(self, pid: str, ws: WatchSet | None = None) -> PolicyRow | None:
        self.acl_index("acl-policies", ws)
        return self.acl_policies.get(pid)

    def acl_policy_by_name(self, name: str, ws: WatchSet | None = None) -> PolicyRow | None:
        self.acl_index("acl-policies", ws)
        pid = self.acl_policy_names.get(name)
        return None if pid is None else self.acl_policies.get(pid)

    def acl_policy_list(self, ws: WatchSet | None = None) -> list[PolicyRow]:
        self.acl_index("acl-policies", ws)
        return [self.acl_policies[k] for k in sorted(self.acl_policies)]

    def acl_role_get(self, rid: str, ws: WatchSet | None = None) -> RoleRow | None:
        self.acl_index("acl-roles", ws)
        return self.acl_roles.get(rid)

    def acl_role_by_name(self, name: str, ws: WatchSet | None = None) -> RoleRow | None:
        self.acl_index("acl-roles", ws)
        rid = self.acl_role_names.get(name)
        return None if rid is None else self.acl_roles.get(rid)

    def acl_role_list(self, ws: WatchSet | None = None, policy: str = "") -> list[RoleRow]:
        self.acl_index("acl-roles", ws)
        rows = (self.acl_roles[k] for k in sorted(self.acl_roles))
        return [r for r in rows if not policy or policy in r.policy_ids()]

    def acl_auth_method_get(self, name: str, ws: WatchSet | None = None) -> AuthMethod | None:
        self.acl_index("acl-auth-methods", ws)
        return self.acl_auth_methods.get(name)

    def acl_auth_method_list(self, ws: WatchSet | None = None) -> list[AuthMethod]:
        self.acl_index("acl-auth-methods", ws)
        return [self.acl_auth_methods[k] for k in sorted(self.acl_auth_methods)]

    def acl_binding_rule_get(self, rid: str, ws: WatchSet | None = None) -> BindingRule | None:
        self.acl_index("acl-binding-rules", ws)
        return self.acl_binding_rules.get(rid)

    def acl_binding_rule_list(self, ws: WatchSet | None = None, auth_method: str = "") -> list[BindingRule]:
        self.acl_index("acl-binding-rules", ws)
        rows = (self.acl_binding_rules[k] for k in sorted(self.acl_binding_rules))
        return [r for r in rows if not auth_method or r.auth_method == auth_method]

    def acl_can_bootstrap(self) -> tuple[bool, int]:
        """Consul's ``CanBootstrapACLToken``: (allowed, the reset index an operator writes to reset it)."""
        idx = self.acl_bootstrap.get("index", 0)
        return idx == 0, idx

    # ------------------------------------------------------------------ link resolution

    def _resolve_policy_links(self, links: Iterable[Link]) -> tuple[Link, ...]:
        out: dict[str, Link] = {}
        for pid, name in links:
            if not pid:
                found = self.acl_policy_names.get(name)
                if found is None:
                    raise StoreError(f"No such ACL policy with name {go_quote(name)}")
                pid = found
            elif pid not in self.acl_policies:
                raise StoreError(f"No such ACL policy with ID {go_quote(pid)}")
            out.setdefault(pid, (pid, ""))
        return tuple(out.values())

    def _resolve_role_links(self, links: Iterable[Link]) -> tuple[Link, ...]:
        out: dict[str, Link] = {}
        for rid, name in links:
            if not rid:
                found = self.acl_role_names.get(name)
                if found is None:
                    raise StoreError(f"No such ACL role with name {go_quote(name)}")
                rid = found
            elif rid not in self.acl_roles:
                raise StoreError(f"No such ACL role with ID {go_quote(rid)}")
            out.setdefault(rid, (rid, ""))
        return tuple(out.values())

    # ------------------------------------------------------------------ tokens

    def _put_token(self, row: TokenRow) -> None:
        tx = self._write()
        old = self.acl_tokens.get(row.accessor_id)
        if old is not None and old.secret_id != row.secret_id:
            tx.pop(self.acl_secrets, old.secret_id)
        tx.put(self.acl_tokens, row.accessor_id, row)
        tx.put(self.acl_secrets, row.secret_id, row.accessor_id)
        self._acl_bump("acl-tokens")

    def acl_token_set(self, token: TokenRow, *, create: bool, now_ns: int, from_login: bool = False) -> TokenRow:
        """Create or update a token (Consul's tokenSetInternal, after the RPC layer's generated IDs)."""
        tx = self._write()
        existing = self.acl_tokens.get(token.accessor_id)
        if create:
            if existing is not None or token.accessor_id in self.acl_secrets:
                raise StoreError("Invalid Token: AccessorID is already in use")
            if token.secret_id in self.acl_secrets or token.secret_id in self.acl_tokens:
                raise StoreError("Invalid Token: SecretID is already in use")
            exp = token.expiration_time_ns
            if token.expiration_ttl_ns:
                exp = token.create_time_ns + token.expiration_ttl_ns
            if exp is not None:
                if exp < token.create_time_ns:
                    raise StoreError("ExpirationTime cannot be before CreateTime")
                expires_in = exp - token.create_time_ns
                if expires_in > MAX_TOKEN_TTL_NS:
                    raise StoreError(f"ExpirationTime cannot be more than {format_duration_ns(MAX_TOKEN_TTL_NS)} "
                                     f"in the future (was {format_duration_ns(expires_in)})")  # fmt: skip
                if expires_in < MIN_TOKEN_TTL_NS:
                    raise StoreError(f"ExpirationTime cannot be less than {format_duration_ns(MIN_TOKEN_TTL_NS)} "
                                     f"in the future (was {format_duration_ns(expires_in)})")  # fmt: skip
            row = replace(token, expiration_time_ns=exp, expiration_ttl_ns=0, create_index=tx.index)
        else:
            aid = token.accessor_id
            if existing is None or existing.expired(now_ns):
                raise StoreError(f"Cannot find token {go_quote(aid)}")
            if aid == ANONYMOUS_TOKEN_ID and token.secret_id not in ("", ANONYMOUS_SECRET):
                raise StoreError("Changing a tokens SecretID is not permitted")
            if token.secret_id and token.secret_id != existing.secret_id:
                raise StoreError("Changing a tokens SecretID is not permitted")
            if token.local != existing.local:
                raise StoreError(f"cannot toggle local mode of {aid}")
            if token.auth_method and token.auth_method != existing.auth_method:
                raise StoreError(f"Cannot change AuthMethod of {aid}")
            if token.expiration_ttl_ns:
                raise StoreError(f"Cannot change expiration time of {aid}")
            if token.expiration_time_ns is not None and token.expiration_time_ns != existing.expiration_time_ns:
                raise StoreError(f"Cannot change expiration time of {aid}")
            row = replace(token, secret_id=existing.secret_id, auth_method=existing.auth_method,
                          expiration_time_ns=existing.expiration_time_ns, create_time_ns=existing.create_time_ns,
                          create_index=existing.create_index)  # fmt: skip
        policies = self._resolve_policy_links(row.policies)
        if from_login:
            # A login may bind roles that do not exist yet; links that point nowhere are dropped, and a
            # token left with nothing is refused (Consul's AllowMissingLinks + ProhibitUnprivileged).
            roles = tuple((rid, "") for rid, _ in row.roles if rid in self.acl_roles)
            if not (policies or roles or row.service_identities or row.node_identities or row.templated_policies):
                raise StoreError("token has no privileges", 403)
        else:
            roles = self._resolve_role_links(row.roles)
        row = replace(row, policies=policies, roles=roles, modify_index=tx.index).with_hash()
        self._put_token(row)
        return row

    def acl_token_delete(self, accessor_id: str) -> bool:
        tx = self._write()
        row = tx.pop(self.acl_tokens, accessor_id)
        if row is None:
            return False
        if self.acl_secrets.get(row.secret_id) == accessor_id:
            tx.pop(self.acl_secrets, row.secret_id)
        self._acl_bump("acl-tokens")
        return True

    def acl_tokens_reap(self, now_ns: int) -> int:
        doomed = [a for a, t in self.acl_tokens.items() if t.expired(now_ns)]
        for accessor in sorted(doomed):
            self.acl_token_delete(accessor)
        return len(doomed)

    def acl_bootstrap_token(self, token: TokenRow, reset_index: int) -> TokenRow:
        """Consul's ACLBootstrap: once, unless ``reset_index`` names the index of the last bootstrap."""
        allowed, idx = self.acl_can_bootstrap()
        if not allowed and reset_index != idx:
            if reset_index == 0:
                raise StoreError(f"ACL bootstrap no longer allowed (reset index: {idx})", 403)
            raise StoreError(f"Invalid bootstrap reset index (specified {reset_index}, reset index: {idx})", 403)
        tx = self._write()
        row = replace(token, policies=((GLOBAL_MANAGEMENT_ID, ""),), create_index=tx.index,
                      modify_index=tx.index).with_hash()  # fmt: skip
        if row.accessor_id in self.acl_tokens or row.secret_id in self.acl_secrets:
            raise StoreError("Invalid Token: AccessorID is already in use")
        self._ensure_builtin_policies()  # the token links global-management: it exists from now on
        self._put_token(row)
        tx.put(self.acl_bootstrap, "index", tx.index)
        self._acl_bump("acl-bootstrap")
        return row

    def _ensure_builtin_policies(self) -> None:
        tx = self._write()
        for builtin in BUILTIN_POLICIES.values():
            if builtin.id not in self.acl_policies and builtin.name not in self.acl_policy_names:
                row = PolicyRow(builtin.id, builtin.name, builtin.description, builtin.rules_text, (),
                                builtin.rules, create_index=tx.index, modify_index=tx.index).with_hash()  # fmt: skip
                self._put_policy(row)

    def acl_initialize(self, now_ns: int, initial_management: TokenRow | None) -> None:
        """Consul's initializeACLs on a new leader: built-in policies and the anonymous token, created if
        missing (never overwritten), and the configured initial management token."""
        tx = self._write()
        self._ensure_builtin_policies()
        if ANONYMOUS_TOKEN_ID not in self.acl_tokens:
            anon = TokenRow(ANONYMOUS_TOKEN_ID, ANONYMOUS_SECRET, ANONYMOUS_DESCRIPTION, create_time_ns=now_ns,
                            create_index=tx.index, modify_index=tx.index).with_hash()  # fmt: skip
            self._put_token(anon)
        im = initial_management
        if im is not None and im.secret_id not in self.acl_secrets:
            token = replace(im, description=INITIAL_MANAGEMENT_DESCRIPTION, create_time_ns=now_ns)
            if self.acl_can_bootstrap()[0]:
                self.acl_bootstrap_token(token, 0)
            elif token.accessor_id not in self.acl_tokens:
                row = replace(token, policies=((GLOBAL_MANAGEMENT_ID, ""),), create_index=tx.index,
                              modify_index=tx.index).with_hash()  # fmt: skip
                self._put_token(row)

    # ------------------------------------------------------------------ policies

    def _put_policy(self, row: PolicyRow) -> None:
        tx = self._write()
        old = self.acl_policies.get(row.id)
        if old is not None and old.name != row.name:
            tx.pop(self.acl_policy_names, old.name)
        tx.put(self.acl_policies, row.id, row)
        tx.put(self.acl_policy_names, row.name, row.id)
        self._acl_bump("acl-policies")

    def acl_policy_set(self, policy: PolicyRow, *, create: bool) -> PolicyRow:
        tx = self._write()
        existing = self.acl_policies.get(policy.id)
        by_name = self.acl_policy_names.get(policy.name)
        if create:
            if existing is not None:
                raise StoreError(f"Invalid Policy: A Policy with ID {go_quote(policy.id)} already exists")
            if by_name is not None:
                raise StoreError(f"Invalid Policy: A Policy with Name {go_quote(policy.name)} already exists")
            created = tx.index
        else:
            if existing is None:
                raise StoreError(f"cannot find policy {policy.id}")
            if by_name is not None and by_name != policy.id:
                raise StoreError(f"Invalid Policy: A policy with name {go_quote(policy.name)} already exists")
            builtin = BUILTIN_POLICIES.get(policy.id)
            if builtin is not None:
                if policy.datacenters:
                    raise StoreError(f"Changing the Datacenters of the builtin {builtin.name} policy is not permitted")
                if policy.rules != existing.rules:
                    raise StoreError(f"Changing the Rules for the builtin {builtin.name} policy is not permitted")
            created = existing.create_index
        row = replace(policy, create_index=created, modify_index=tx.index).with_hash()
        self._put_policy(row)
        return row

    def acl_policy_delete(self, pid: str) -> bool:
        builtin = BUILTIN_POLICIES.get(pid)
        if builtin is not None:
            raise StoreError(f"Delete operation not permitted on the builtin {builtin.name} policy")
        tx = self._write()
        row = tx.pop(self.acl_policies, pid)
        if row is None:
            return False
        if self.acl_policy_names.get(row.name) == pid:
            tx.pop(self.acl_policy_names, row.name)
        self._acl_bump("acl-policies")
        return True

    # ------------------------------------------------------------------ roles

    def acl_role_set(self, role: RoleRow, *, create: bool) -> RoleRow:
        tx = self._write()
        existing = self.acl_roles.get(role.id)
        by_name = self.acl_role_names.get(role.name)
        if create:
            if existing is not None:
                raise StoreError(f"Invalid Role: A Role with ID {go_quote(role.id)} already exists")
            if by_name is not None:
                raise StoreError(f"Invalid Role: A Role with Name {go_quote(role.name)} already exists")
            created = tx.index
        else:
            if existing is None:
                raise StoreError(f"cannot find role {role.id}")
            if by_name is not None and by_name != role.id:
                raise StoreError(f"Invalid Role: A role with name {go_quote(role.name)} already exists")
            created = existing.create_index
        row = replace(role, policies=self._resolve_policy_links(role.policies), create_index=created,
                      modify_index=tx.index).with_hash()  # fmt: skip
        if existing is not None and existing.name != row.name:
            tx.pop(self.acl_role_names, existing.name)
        tx.put(self.acl_roles, row.id, row)
        tx.put(self.acl_role_names, row.name, row.id)
        self._acl_bump("acl-roles")
        return row

    def acl_role_delete(self, rid: str) -> bool:
        tx = self._write()
        row = tx.pop(self.acl_roles, rid)
        if row is None:
            return False
        if self.acl_role_names.get(row.name) == rid:
            tx.pop(self.acl_role_names, row.name)
        self._acl_bump("acl-roles")
        return True

    # ------------------------------------------------------------------ auth methods and binding rules

    def acl_auth_method_type(self, name: str, mtype: str) -> str:
        """The Type a write of auth method ``name`` ends up with (Consul's AuthMethodSet): an update may
        leave it out and keeps the stored one; it may never change it."""
        existing = self.acl_auth_methods.get(name)
        if existing is None:
            return mtype
        if not mtype:
            return existing.type
        if mtype != existing.type:
            raise StoreError("the Type field of an Auth Method is immutable")
        return mtype

    def acl_auth_method_set(self, method: AuthMethod) -> AuthMethod:
        """Store a method checked where it was built (its Type is set and registered, its Config parsed)."""
        tx = self._write()
        self.acl_auth_method_type(method.name, method.type)
        existing = self.acl_auth_methods.get(method.name)
        created = existing.create_index if existing is not None else tx.index
        row = replace(method, create_index=created, modify_index=tx.index)
        tx.put(self.acl_auth_methods, row.name, row)
        self._acl_bump("acl-auth-methods")
        return row

    def acl_auth_method_delete(self, name: str) -> bool:
        """Consul deletes the method's binding rules and the tokens it issued with it."""
        tx = self._write()
        if tx.pop(self.acl_auth_methods, name) is None:
            return False
        for rid in [r for r, b in self.acl_binding_rules.items() if b.auth_method == name]:
            tx.pop(self.acl_binding_rules, rid)
            self._acl_bump("acl-binding-rules")
        for accessor in sorted(a for a, t in self.acl_tokens.items() if t.auth_method == name):
            self.acl_token_delete(accessor)
        self._acl_bump("acl-auth-methods")
        return True

    def acl_binding_rule_method(self, rule_id: str, auth_method: str, *, create: bool) -> AuthMethod:
        """The auth method a binding rule write is checked against, in Consul's BindingRuleSet order: an
        update names a rule that exists and keeps its AuthMethod (which it may leave out, never change);
        the method must exist."""
        if not create:
            existing = self.acl_binding_rules.get(rule_id)
            if existing is None:
                raise StoreError(f"cannot find binding rule {rule_id}")
            if not auth_method:
                auth_method = existing.auth_method
            elif auth_method != existing.auth_method:
                raise StoreError("the AuthMethod field of an Binding Rule is immutable")
        if not auth_method:
            raise StoreError("Invalid Binding Rule: no AuthMethod is set")
        method = self.acl_auth_methods.get(auth_method)
        if method is None:
            raise StoreError(f"cannot find auth method with name {go_quote(auth_method)}")
        return method

    def acl_binding_rule_set(self, rule: BindingRule, *, create: bool) -> BindingRule:
        """Store a rule checked where it was built against its method's blank identity."""
        tx = self._write()
        existing = self.acl_binding_rules.get(rule.id)
        if create and existing is not None:
            raise StoreError(f"Invalid Binding Rule: a binding rule with ID {go_quote(rule.id)} already exists")
        method = self.acl_binding_rule_method(rule.id, rule.auth_method, create=create)
        created = existing.create_index if existing is not None else tx.index
        row = replace(rule, auth_method=method.name, create_index=created, modify_index=tx.index)
        tx.put(self.acl_binding_rules, row.id, row)
        self._acl_bump("acl-binding-rules")
        return row

    def acl_binding_rule_delete(self, rid: str) -> bool:
        tx = self._write()
        if tx.pop(self.acl_binding_rules, rid) is None:
            return False
        self._acl_bump("acl-binding-rules")
        return True

    # ------------------------------------------------------------------ snapshots

    def acl_dump(self) -> dict[str, Any]:
        return {
            "tokens": [t.to_wire() for t in self.acl_tokens.values()],
            "policies": [p.to_wire() for p in self.acl_policies.values()],
            "roles": [r.to_wire() for r in self.acl_roles.values()],
            "auth_methods": [m.to_wire() for m in self.acl_auth_methods.values()],
            "binding_rules": [b.to_wire() for b in self.acl_binding_rules.values()],
            "bootstrap": self.acl_bootstrap.get("index", 0),
        }

    def acl_load(self, data: dict[str, Any]) -> None:
        """Rows from a snapshot, validated as any command's (policies' rules are parsed here, once)."""
        for raw in data.get("tokens") or []:
            t = TokenRow.from_wire(raw)
            self.acl_tokens[t.accessor_id] = t
            self.acl_secrets[t.secret_id] = t.accessor_id
        for raw in data.get("policies") or []:
            p = PolicyRow.from_wire(raw)
            self.acl_policies[p.id] = p
            self.acl_policy_names[p.name] = p.id
        for raw in data.get("roles") or []:
            r = RoleRow.from_wire(raw)
            self.acl_roles[r.id] = r
            self.acl_role_names[r.name] = r.id
        for raw in data.get("auth_methods") or []:
            m = AuthMethod.from_wire(raw)
            self.acl_auth_methods[m.name] = m
        for raw in data.get("binding_rules") or []:
            b = BindingRule.from_wire(raw, None)  # checked against its method when it was written
            self.acl_binding_rules[b.id] = b
        bootstrap = int(data.get("bootstrap") or 0)
        if bootstrap:
            self.acl_bootstrap["index"] = bootstrap


# ---------------------------------------------------------------------- apply functions (the FSM's)


def _now(store: Any, fallback: int) -> int:
    return max(int(store.clock_ns), fallback)


def _bootstrap(store: Any, cmd: c.ACLBootstrap) -> dict[str, Any]:
    return store.acl_bootstrap_token(cmd.token, cmd.reset_index).to_wire()


def _initialize(store: Any, cmd: c.ACLInitialize) -> bool:
    store.acl_initialize(cmd.now_ns, cmd.initial_management)
    return True


def _token_set(store: Any, cmd: c.ACLTokenSet) -> dict[str, Any]:
    now = _now(store, cmd.token.create_time_ns)
    return store.acl_token_set(cmd.token, create=cmd.create, now_ns=now, from_login=cmd.from_login).to_wire()


def _token_delete(store: Any, cmd: c.ACLTokenDelete) -> bool:
    for accessor in cmd.accessor_ids:
        if accessor == ANONYMOUS_TOKEN_ID:
            raise StoreError("Delete operation not permitted on the anonymous token")
    for accessor in cmd.accessor_ids:
        store.acl_token_delete(accessor)
    return True


def _token_reap(store: Any, cmd: c.ACLTokenReap) -> int:
    return int(store.acl_tokens_reap(cmd.now_ns))


def _policy_set(store: Any, cmd: c.ACLPolicySet) -> dict[str, Any]:
    return store.acl_policy_set(cmd.policy, create=cmd.create).to_wire()


def _policy_delete(store: Any, cmd: c.ACLPolicyDelete) -> bool:
    store.acl_policy_delete(cmd.id)
    return True


def _role_set(store: Any, cmd: c.ACLRoleSet) -> dict[str, Any]:
    return store.acl_role_set(cmd.role, create=cmd.create).to_wire()


def _role_delete(store: Any, cmd: c.ACLRoleDelete) -> bool:
    store.acl_role_delete(cmd.id)
    return True


def _auth_method_set(store: Any, cmd: c.ACLAuthMethodSet) -> dict[str, Any]:
    return store.acl_auth_method_set(cmd.method).to_wire()


def _auth_method_delete(store: Any, cmd: c.ACLAuthMethodDelete) -> bool:
    store.acl_auth_method_delete(cmd.name)
    return True


def _binding_rule_set(store: Any, cmd: c.ACLBindingRuleSet) -> dict[str, Any]:
    return store.acl_binding_rule_set(cmd.rule, create=cmd.create).to_wire()


def _binding_rule_delete(store: Any, cmd: c.ACLBindingRuleDelete) -> bool:
    store.acl_binding_rule_delete(cmd.id)
    return True


ACL_DISPATCH: dict[type, Callable[[Any, Any], Any]] = {
    c.ACLBootstrap: _bootstrap,
    c.ACLInitialize: _initialize,
    c.ACLTokenSet: _token_set,
    c.ACLTokenDelete: _token_delete,
    c.ACLTokenReap: _token_reap,
    c.ACLPolicySet: _policy_set,
    c.ACLPolicyDelete: _policy_delete,
    c.ACLRoleSet: _role_set,
    c.ACLRoleDelete: _role_delete,
    c.ACLAuthMethodSet: _auth_method_set,
    c.ACLAuthMethodDelete: _auth_method_delete,
    c.ACLBindingRuleSet: _binding_rule_set,
    c.ACLBindingRuleDelete: _binding_rule_delete,
}
