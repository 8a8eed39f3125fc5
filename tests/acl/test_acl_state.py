"""The ACL tables through the FSM: typed commands, refusals that leave every table as it was, snapshots that
carry the tables, and the server resolver's cache dropping exactly when the ACL tables change."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import msgpack
import pytest

from registry import commands as c
from registry.acl.binding import BindingRule
from registry.acl.errors import ANONYMOUS_TOKEN_ID, ACLNotFound
from registry.acl.objects import AuthMethod, PolicyRow, RoleRow, TokenRow
from registry.acl.resolver import TOPIC_ACL
from registry.acl.wire import rules_from_wire, rules_to_wire
from registry.agent.acl import AgentTokens, ServerResolver
from registry.commands import CommandError
from registry.config import Config
from registry.fsm import FSM
from registry.state.store import StateStore
from registry.watch import WatchHub
from tests.acl.jwtkit import new_key, public_pem, sign

NOW = 1_800_000_000 * 10**9
P1 = "11111111-0000-4000-8000-000000000001"
R1 = "22222222-0000-4000-8000-000000000001"
A1, S1 = "33333333-0000-4000-8000-000000000001", "44444444-0000-4000-8000-000000000001"


def apply(fsm: FSM, index: int, cmd: Any) -> Any:
    wire = cmd.to_wire()
    wire["Time"] = NOW
    return fsm.apply(index, msgpack.packb(wire, use_bin_type=True))


def policy(pid: str, name: str, rules: str) -> PolicyRow:
    return PolicyRow.from_wire({"ID": pid, "Name": name, "Rules": rules})


def token(accessor: str, secret: str, **links: Any) -> TokenRow:
    return TokenRow.from_wire({"AccessorID": accessor, "SecretID": secret, "CreateTime": NOW, **links})


@pytest.fixture
def fsm() -> FSM:
    f = FSM()
    assert apply(f, 1, c.ACLInitialize(NOW)) is True
    return f


def test_commands_round_trip_through_the_wire() -> None:
    for cmd in (
        c.ACLPolicySet(policy(P1, "p", 'key_prefix "" { policy = "read" }'), create=True),
        c.ACLRoleSet(RoleRow.from_wire({"ID": R1, "Name": "r", "Policies": [{"Name": "p"}]}), create=False),
        c.ACLTokenSet(token(A1, S1, Policies=[{"ID": P1}], ExpirationTTL=120 * 10**9), create=True),
        c.ACLTokenDelete((A1,)), c.ACLTokenReap(NOW), c.ACLPolicyDelete(P1), c.ACLBootstrap(token(A1, S1), 7),
    ):
        assert c.from_wire(msgpack.unpackb(msgpack.packb(cmd.to_wire()), raw=False)) == cmd


def test_commands_are_validated_where_built() -> None:
    with pytest.raises(CommandError, match="Invalid Token: AccessorID is not a valid UUID"):
        c.ACLTokenSet(token("nope", S1), create=True)
    with pytest.raises(CommandError, match="are reserved"):
        c.ACLTokenSet(token(ANONYMOUS_TOKEN_ID, S1), create=True)
    with pytest.raises(CommandError, match="Failed to parse ACL rules"):
        c.from_wire({"Type": "acl.policy", "Op": "set", "Policy": {"ID": P1, "Name": "p", "Rules": "service {"}})
    with pytest.raises(CommandError, match="Token Expiration TTL and Expiration Time cannot both be set"):
        c.from_wire({"Type": "acl.token", "Op": "set", "Create": True, "Token": {
            "AccessorID": A1, "SecretID": S1, "CreateTime": NOW, "ExpirationTTL": 1, "ExpirationTime": NOW}})


def test_a_refused_command_leaves_every_table_as_it_was(fsm: FSM) -> None:
    assert isinstance(apply(fsm, 2, c.ACLPolicySet(policy(P1, "p", ""), create=True)), dict)
    before = fsm.store.to_snapshot()
    # The first link resolves, the second does not: nothing of the token may remain.
    refused = apply(fsm, 3, c.ACLTokenSet(token(A1, S1, Policies=[{"ID": P1}], Roles=[{"Name": "nope"}]), create=True))
    assert refused == CommandError('No such ACL role with name "nope"', 400)
    after = fsm.store.to_snapshot()
    assert after.pop("index") == 3 and before.pop("index") == 2
    assert after == before and S1 not in fsm.store.acl_secrets


def test_policy_name_taken_and_builtins_protected(fsm: FSM) -> None:
    apply(fsm, 2, c.ACLPolicySet(policy(P1, "p", ""), create=True))
    other = "11111111-0000-4000-8000-000000000002"
    assert apply(fsm, 3, c.ACLPolicySet(policy(other, "p", ""), create=True)) == CommandError(
        'Invalid Policy: A Policy with Name "p" already exists', 400)
    gm = "00000000-0000-0000-0000-000000000001"
    assert apply(fsm, 4, c.ACLPolicySet(policy(gm, "global-management", 'acl = "read"'), create=False)) == CommandError(
        "Changing the Rules for the builtin global-management policy is not permitted", 400)
    assert apply(fsm, 5, c.ACLPolicyDelete(gm)) == CommandError(
        "Delete operation not permitted on the builtin global-management policy", 400)


def test_every_acl_write_touches_the_acl_topic(fsm: FSM) -> None:
    seen: list[set[Any]] = []
    fsm._on_change = lambda topics, keys: seen.append(set(topics))
    apply(fsm, 2, c.ACLPolicySet(policy(P1, "p", ""), create=True))
    apply(fsm, 3, c.ACLTokenSet(token(A1, S1), create=True))
    apply(fsm, 4, c.ACLTokenDelete((A1,)))
    assert len(seen) == 3 and all(TOPIC_ACL in s for s in seen)
    assert fsm.store.acl_index() == 4


def test_snapshots_carry_the_acl_tables(fsm: FSM) -> None:
    apply(fsm, 2, c.ACLPolicySet(policy(P1, "p", 'service "web" { policy = "write" }'), create=True))
    apply(fsm, 3, c.ACLRoleSet(RoleRow.from_wire({"ID": R1, "Name": "r", "Policies": [{"ID": P1}]}), create=True))
    apply(fsm, 4, c.ACLTokenSet(token(A1, S1, Roles=[{"ID": R1}], ExpirationTTL=600 * 10**9), create=True))
    apply(fsm, 5, c.ACLBootstrap(token("55555555-0000-4000-8000-000000000001", "66666666-0000-4000-8000-000000000001")))
    restored = FSM()
    restored.restore(fsm.snapshot())
    s = restored.store
    assert s.acl_token_by_secret(S1) == fsm.store.acl_token_by_secret(S1)
    assert s.acl_policy_by_name("p").parsed.service[0].name == "web"  # rules parsed again, once, on load
    assert s.acl_role_by_name("r") == fsm.store.acl_role_by_name("r")
    assert s.acl_can_bootstrap() == (False, 5) and s.acl_index() == 5
    assert s.acl_token_by_secret("anonymous").accessor_id == ANONYMOUS_TOKEN_ID


def test_auth_methods_and_binding_rules_through_the_log_and_snapshots(fsm: FSM) -> None:
    """One model: the rows the commands carry are the checked auth method (its jwt Config parsed) and the
    binding rule (its selector compiled); the log and a snapshot bring them back usable for a login, and
    the tables refuse at apply what changed since the rows were checked."""
    key = new_key("ES256")
    method = AuthMethod.from_wire({"Name": "ci", "Type": "jwt", "MaxTokenTTL": "5m", "Config": {
        "JWTValidationPubKeys": [public_pem(key)], "ClaimMappings": {"team": "team"}}})  # fmt: skip
    rule = BindingRule.from_wire({"ID": R1, "AuthMethod": "ci", "BindType": "service", "BindName": "${value.team}-api",
                                  "Selector": 'value.team == "shop"'}, method.blank_identity())  # fmt: skip
    for cmd in (c.ACLAuthMethodSet(method), c.ACLBindingRuleSet(rule, create=True)):
        assert c.from_wire(msgpack.unpackb(msgpack.packb(cmd.to_wire()), raw=False)) == cmd
    assert apply(fsm, 2, c.ACLAuthMethodSet(method))["MaxTokenTTL"] == 300 * 10**9
    assert apply(fsm, 3, c.ACLBindingRuleSet(rule, create=True))["AuthMethod"] == "ci"
    restored = FSM()
    restored.restore(fsm.snapshot())
    m, (r,) = restored.store.acl_auth_methods["ci"], restored.store.acl_binding_rule_list(None, "ci")
    now = NOW / 1e9
    identity = m.validator().validate_login(sign(key, "ES256", {"iat": now, "exp": now + 60, "team": "shop"}), now=now)
    assert r.matches(identity) and not r.matches(m.blank_identity())
    assert (r.create_index, r.modify_index) == (3, 3)
    # A method is checked wherever it is decoded: a type with no validator never reaches the tables.
    other = replace(method, type="kubernetes")
    assert apply(fsm, 4, c.ACLAuthMethodSet(other)) == CommandError("Invalid Auth Method: Type should be one of: [jwt]")
    assert apply(fsm, 5, c.ACLAuthMethodDelete("ci")) is True
    assert apply(fsm, 6, c.ACLBindingRuleSet(replace(rule, id=A1), create=True)) == CommandError(
        'cannot find auth method with name "ci"', 400)
    assert apply(fsm, 7, c.ACLBindingRuleSet(rule, create=False)) == CommandError(f"cannot find binding rule {R1}", 400)


def test_expired_tokens_are_reaped_through_the_log(fsm: FSM) -> None:
    apply(fsm, 2, c.ACLTokenSet(token(A1, S1, ExpirationTTL=60 * 10**9), create=True))
    assert apply(fsm, 3, c.ACLTokenReap(NOW + 59 * 10**9)) == 0
    assert apply(fsm, 4, c.ACLTokenReap(NOW + 60 * 10**9)) == 1 and A1 not in fsm.store.acl_tokens


def test_rules_wire_round_trip() -> None:
    rules = policy(P1, "p", 'service "a" { policy = "write" intentions = "read" }\nkey_prefix "" { policy = "list" }\n'
                            'operator = "read"').parsed  # fmt: skip
    assert rules_from_wire(msgpack.unpackb(msgpack.packb(rules_to_wire(rules)), raw=False)) == rules


async def test_server_resolver_cache_drops_exactly_on_acl_changes(fsm: FSM) -> None:
    hub = WatchHub()
    fsm._on_change = hub.notify
    cfg = Config(acl={"enabled": True, "default_policy": "deny"})
    resolver = ServerResolver(config=cfg, tokens=AgentTokens(cfg), store=lambda: fsm.store, hub=hub,
                              clock_ns=lambda: NOW)  # fmt: skip
    apply(fsm, 2, c.ACLPolicySet(policy(P1, "p", 'service "web" { policy = "write" }'), create=True))
    apply(fsm, 3, c.ACLTokenSet(token(A1, S1, Policies=[{"ID": P1}]), create=True))
    authz = await resolver.resolve(S1)
    assert authz.service_write("web") and not authz.service_write("db")
    assert await resolver.resolve(S1) is authz and resolver.hits == 1
    hub.notify({("svc", "web")})  # not an ACL change: the cache stays
    assert await resolver.resolve(S1) is authz
    # Narrowing the policy takes effect with the write that narrows it.
    apply(fsm, 4, c.ACLPolicySet(policy(P1, "p", 'service "web" { policy = "read" }'), create=False))
    assert not (await resolver.resolve(S1)).service_write("web")
    apply(fsm, 5, c.ACLTokenDelete((A1,)))
    with pytest.raises(ACLNotFound):
        await resolver.resolve(S1)
    anon = await resolver.resolve("")
    assert anon.accessor_id == ANONYMOUS_TOKEN_ID and not anon.service_read("web")
    assert isinstance(StateStore(), StateStore)


def test_agent_tokens_persist_and_win_over_config_at_the_next_start(tmp_path: Any) -> None:
    cfg = Config(data_dir=str(tmp_path), acl={"enabled": True, "enable_token_persistence": True,
                                              "tokens": {"default": "from-config", "agent_master": "legacy"}})  # fmt: skip
    tokens = AgentTokens(cfg)
    assert (tokens.get("default"), tokens.get("agent_recovery")) == ("from-config", "legacy")
    assert tokens.set("acl_token", "from-api") and not tokens.set("bogus", "x")
    again = AgentTokens(cfg)
    assert again.get("default") == "from-api" and again.get("agent_recovery") == "legacy"
    assert tokens.set("default", "") and AgentTokens(cfg).get("default") == "from-config"
