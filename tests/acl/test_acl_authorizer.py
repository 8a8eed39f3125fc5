"""The compiled authorizer against a naive model of Consul's rules, its errors, and token resolution."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry.acl.authorizer import OPERATIONS, Authorizer, compile_rules
from registry.acl.errors import ANONYMOUS_TOKEN_ID, ACLNotFound, PermissionDenied
from registry.acl.identities import GLOBAL_MANAGEMENT_ID, NodeIdentity, ServiceIdentity, TemplatedPolicy
from registry.acl.resolve import Policy, Role, Token, compile_token, token_rules
from registry.acl.rules import PRECEDENCE, Access, PolicyRules, Rule

# ----------------------------------------------------------------------------- the naive model

NAMES = st.text(alphabet="ab/", max_size=4)
RULES = st.lists(st.builds(Rule, NAMES, st.sampled_from(list(Access))), max_size=6)


def merged(rule_lists: list[list[Rule]]) -> dict[str, Access]:
    out: dict[str, Access] = {}
    for rules in rule_lists:
        for rule in rules:
            if rule.name not in out or PRECEDENCE[rule.policy] >= PRECEDENCE[out[rule.name]]:
                out[rule.name] = rule.policy
    return out


def model_level(exact: dict[str, Access], prefix: dict[str, Access], name: str) -> Access | None:
    if name in exact:
        return exact[name]
    matching = [p for p in prefix if name.startswith(p)]
    return prefix[max(matching, key=len)] if matching else None


def model_write_prefix(exact: dict[str, Access], prefix: dict[str, Access], p: str, default: bool) -> bool:
    above = [q for q in prefix if p.startswith(q)]
    base = prefix[max(above, key=len)] if above else None
    if base is not None and base is not Access.WRITE:
        return False
    under = [lvl for n, lvl in [*exact.items(), *prefix.items()] if n.startswith(p)]
    if any(lvl is not Access.WRITE for lvl in under):
        return False
    return default if base is None else True


@given(st.lists(st.tuples(RULES, RULES), min_size=1, max_size=3), NAMES, st.booleans())
def test_key_decisions_match_the_model(policies: list[tuple[list[Rule], list[Rule]]], name: str, default: bool) -> None:
    sets = [PolicyRules(key=tuple(e), key_prefix=tuple(p)) for e, p in policies]
    authz = compile_rules(sets, default_allow=default)
    exact = merged([e for e, _ in policies])
    prefix = merged([p for _, p in policies])
    level = model_level(exact, prefix, name)
    for op, required in (("key_read", Access.READ), ("key_list", Access.LIST), ("key_write", Access.WRITE)):
        want = default if level is None else level >= required
        assert authz.allowed(op, name) is want, (op, name, exact, prefix)
    assert authz.key_write_prefix(name) is model_write_prefix(exact, prefix, name, default)


SERVICE_RULES = st.lists(
    st.builds(Rule, NAMES, st.sampled_from([Access.DENY, Access.READ, Access.WRITE]),
              st.none() | st.sampled_from([Access.DENY, Access.READ, Access.WRITE])),
    max_size=5,
)  # fmt: skip


@given(st.lists(st.tuples(SERVICE_RULES, SERVICE_RULES), min_size=1, max_size=3), NAMES, st.booleans())
def test_service_and_intention_decisions_match_the_model(policies, name: str, default: bool) -> None:
    sets = [PolicyRules(service=tuple(e), service_prefix=tuple(p)) for e, p in policies]
    authz = compile_rules(sets, default_allow=default)
    exact = merged([e for e, _ in policies])
    prefix = merged([p for _, p in policies])
    level = model_level(exact, prefix, name)
    assert authz.service_read(name) is (default if level is None else level >= Access.READ)
    assert authz.service_write(name) is (default if level is None else level >= Access.WRITE)

    def intentions(rule_lists: list[list[Rule]]) -> dict[str, Access]:
        policy, explicit = merged(rule_lists), {}
        for rules in rule_lists:
            for r in rules:
                if r.intentions is not None and (
                    r.name not in explicit or PRECEDENCE[r.intentions] >= PRECEDENCE[explicit[r.name]]
                ):
                    explicit[r.name] = r.intentions
        return {
            n: explicit.get(n, Access.READ if lvl in (Access.READ, Access.WRITE) else Access.DENY)
            for n, lvl in policy.items()
        }

    ilevel = model_level(intentions([e for e, _ in policies]), intentions([p for _, p in policies]), name)
    assert authz.intention_read(name) is (default if ilevel is None else ilevel >= Access.READ)
    assert authz.intention_write(name) is (default if ilevel is None else ilevel >= Access.WRITE)


def test_lookups_do_not_depend_on_how_many_rules_there_are() -> None:
    # 20,000 rules of 20 lengths: a lookup probes the exact dict and at most one dict per length.
    rules = PolicyRules(
        service=tuple(Rule(f"svc-{i}", Access.WRITE) for i in range(10_000)),
        service_prefix=tuple(Rule(f"p{i:0{1 + i % 20}d}", Access.READ) for i in range(10_000)),
    )
    authz = compile_rules([rules], default_allow=False)
    table = authz._service  # noqa: SLF001 - the structure is what this test is about
    assert len(table.lengths) <= 21
    probes = 0

    class Counting(dict):
        def get(self, key, default=None):  # type: ignore[override]
            nonlocal probes
            probes += 1
            return super().get(key, default)

    table.prefix = Counting(table.prefix)
    assert authz.service_read("zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz") is False
    assert probes <= len(table.lengths)


# ------------------------------------------------------------------------------------ errors


def test_permission_denied_texts_are_consuls() -> None:
    rules = PolicyRules(service_prefix=(Rule("", Access.READ),))
    authz = compile_rules([rules], default_allow=False, accessor_id="6a1253d2-1785-24fd-91c2-f8e78c745511")
    with pytest.raises(PermissionDenied) as info:
        authz.check("service_write", "web")
    assert str(info.value) == (
        "Permission denied: token with AccessorID '6a1253d2-1785-24fd-91c2-f8e78c745511' "
        "lacks permission 'service:write' on \"web\""
    )
    assert info.value.permission == "service:write"
    with pytest.raises(PermissionDenied) as info:
        authz.check("operator_read")
    assert str(info.value).endswith("lacks permission 'operator:read'")
    with pytest.raises(PermissionDenied, match="lacks permission 'key:write' on \"app/\"$"):
        authz.check("key_write_prefix", "app/")
    with pytest.raises(PermissionDenied, match="lacks permission 'intention:write' on \"web\"$"):
        authz.check("intention_write", "web")
    with pytest.raises(PermissionDenied, match="lacks permission 'node:read'$"):
        authz.check("node_read_all")
    authz.check("service_read", "web")  # allowed: no exception


def test_anonymous_and_causal_forms() -> None:
    anonymous = compile_rules([], default_allow=False, accessor_id=ANONYMOUS_TOKEN_ID)
    with pytest.raises(PermissionDenied) as info:
        anonymous.check("service_read", "web")
    assert str(info.value) == (
        "Permission denied: anonymous token lacks permission 'service:read' on \"web\". "
        "The anonymous token is used implicitly when a request does not specify a token."
    )
    assert str(PermissionDenied(cause="ACL bootstrap no longer allowed (reset index: 7)")) == (
        "Permission denied: ACL bootstrap no longer allowed (reset index: 7)"
    )
    assert str(PermissionDenied()) == "Permission denied"
    assert str(ACLNotFound()) == "ACL not found"
    with pytest.raises(PermissionDenied, match="lacks permission 'key:list'$"):
        compile_rules([], default_allow=False).check("key_list", "")


def test_every_operation_is_a_method_and_has_consuls_words() -> None:
    authz = Authorizer.management("root")
    for op, (resource, level, named) in OPERATIONS.items():
        assert resource in {"acl", "agent", "event", "intention", "key", "keyring", "mesh", "node", "operator",
                            "peering", "query", "service", "session"}  # fmt: skip
        assert level in {"read", "write", "list"}
        assert authz.allowed(op, "x" if named else None) is True
    with pytest.raises(KeyError):
        authz.allowed("service_delete", "x")
    with pytest.raises(TypeError):
        authz.allowed("service_read")


# ---------------------------------------------------------------------------------- resolution


def _policy(pid: str, rules: str, dcs: tuple[str, ...] = ()) -> Policy:
    return Policy.from_source(pid, f"name-{pid}", rules, dcs)


def test_token_with_roles_policies_and_identities() -> None:
    policies = {
        "p-kv": _policy("p-kv", 'key_prefix "app/" { policy = "write" }'),
        "p-dc2": _policy("p-dc2", 'operator = "write"', ("dc2",)),
        "p-deny": _policy("p-deny", 'service "web" { policy = "deny" }'),
    }
    roles = {
        "r1": Role("r1", "ops", ("p-dc2",), node_identities=(NodeIdentity("n1", "dc1"),)),
        "r2": Role("r2", "db", (), service_identities=(ServiceIdentity("db", ("dc1",)),)),
        "r3": Role("r3", "denier", ("p-deny",), templated_policies=(TemplatedPolicy("builtin/dns"),)),
    }
    token = Token("acc", ("p-kv", "gone"), ("r1", "r2", "r3", "gone-role"), (ServiceIdentity("web"),))
    dc1 = compile_token(token, policies=policies, roles=roles, datacenter="dc1", default_policy="deny")
    assert dc1.key_write("app/x") and not dc1.key_write("other")
    assert not dc1.operator_write()  # policy scoped to dc2
    assert dc1.node_write("n1") and dc1.service_write("db") and dc1.service_write("db-sidecar-proxy")
    assert not dc1.service_write("web")  # the role's deny beats the token's service identity
    assert dc1.service_write("web-sidecar-proxy") and dc1.query_read("any")
    dc2 = compile_token(token, policies=policies, roles=roles, datacenter="dc2", default_policy="deny")
    assert dc2.operator_write() and not dc2.node_write("n1") and not dc2.service_write("db")


def test_builtin_policies_resolve_without_a_table_and_deleted_links_grant_nothing() -> None:
    root = compile_token(Token("root", (GLOBAL_MANAGEMENT_ID,)), policies={}, roles={}, datacenter="dc1",
                         default_policy="deny")  # fmt: skip
    assert root.acl_write() and root.snapshot() and root.key_write_prefix("")
    nothing = Token("t", ("deleted-policy",), ("deleted-role",))
    assert list(token_rules(nothing, policies={}, roles={}, datacenter="dc1")) == []
    authz = compile_token(nothing, policies={}, roles={}, datacenter="dc1", default_policy="deny")
    assert not authz.service_read("web")


def test_a_policy_linked_twice_counts_once_and_default_policy_is_checked() -> None:
    policies = {"p": _policy("p", 'service "web" { policy = "read" }')}
    token = Token("t", ("p", "p"), ("r",))
    roles = {"r": Role("r", "r", ("p",))}
    assert len(list(token_rules(token, policies=policies, roles=roles, datacenter="dc1"))) == 1
    with pytest.raises(ValueError, match="default_policy"):
        compile_token(token, policies=policies, roles=roles, datacenter="dc1", default_policy="extend-cache")
