"""Leader duties with a fake clock: bootstrap once, only on the leader; rotate before expiry; prune
retired roots; configuration changes with lost races; the CA expiry check's status."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
from connect_helpers import CLUSTER_ID, START, FakeClock, Log

from ca import provider
from ca.provider import CAConfig
from registry.commands import CASet, Command, CommandError
from registry.connect.manager import CAManager, ca_expiry_status
from registry.connect.state import StateViews, ca_index

SHORT = CAConfig(leaf_cert_ttl="1h", intermediate_cert_ttl="3h", root_cert_ttl="100h")


def manager(log: Log, clock: FakeClock, *, leader: bool = True, config: CAConfig = SHORT) -> CAManager:
    views = StateViews()
    return CAManager(
        propose=log.propose,
        is_leader=lambda: leader,
        ca_state=lambda: (views.ca(log.store), ca_index(log.store)),
        initial_config=config,
        clock=clock,
        new_cluster_id=lambda: CLUSTER_ID,
    )


def state_of(log: Log) -> provider.CAState:
    state = StateViews().ca(log.store)
    assert state is not None
    return state


async def test_follower_does_nothing_leader_bootstraps_once(log: Log, clock: FakeClock) -> None:
    assert await manager(log, clock, leader=False).step() is None
    assert log.store.index == 0
    m = manager(log, clock)
    assert await m.step() == "initialized"
    state = state_of(log)
    assert state.trust_domain == f"{CLUSTER_ID}.consul" and state.config == SHORT
    assert await m.step() is None and log.store.index == 1


async def test_rotates_before_expiry_then_prunes(log: Log, clock: FakeClock, openssl_verify) -> None:  # noqa: ANN001
    m = manager(log, clock)
    await m.step()
    first = state_of(log).active_root
    clock.now = START + timedelta(hours=79)  # 21 h left: outside the last 20% (20 h)
    assert await m.step() is None
    clock.now = START + timedelta(hours=81)
    assert await m.step() == "rotated"
    state = state_of(log)
    assert state.active_root.id != first.id and len(state.roots) == 2
    old = next(r for r in state.roots if not r.active)
    assert old.id == first.id and old.prune_after == clock.now + timedelta(hours=2)
    # The cross-signed certificate chains the new root to the old one.
    [cross] = state.active_root.intermediate_certs
    assert openssl_verify(cross, [first.root_cert_pem], at=clock.now).returncode == 0
    clock.now += timedelta(hours=1)
    assert await m.step() is None  # retired root still trusted: leaves it signed are alive
    clock.now += timedelta(hours=1, seconds=1)
    assert await m.step() == "pruned"
    assert [r.id for r in state_of(log).roots] == [state.active_root.id]


async def test_set_config_rotates_on_new_key_type_and_survives_a_lost_race(log: Log, clock: FakeClock) -> None:
    m = manager(log, clock)
    await m.step()
    first = state_of(log)
    racing = {"done": False}
    real_propose = log.propose

    async def propose_after_a_rival(cmd: Command) -> object:
        if not racing["done"]:
            racing["done"] = True
            # Someone else changes the configuration between our read and our write.
            rival_config = CAConfig(leaf_cert_ttl="2h", intermediate_cert_ttl="6h", root_cert_ttl="100h")
            rival = provider.update_config(state_of(log), rival_config, clock(), os.urandom)
            await real_propose(CASet(provider.to_msgpack_dict(rival), ca_index(log.store)))
        return await real_propose(cmd)

    m._propose = propose_after_a_rival
    new_config = CAConfig(leaf_cert_ttl="1h", intermediate_cert_ttl="3h", root_cert_ttl="100h",
                          private_key_type="rsa", private_key_bits=2048)  # fmt: skip
    result = await m.set_config(new_config)
    state = state_of(log)
    assert result.active_root.id == state.active_root.id != first.active_root.id
    assert (state.active_root.private_key_type, state.active_root.private_key_bits) == ("rsa", 2048)
    assert state.config == new_config  # ours landed after the retry, not mixed with the rival's


async def test_set_config_needs_an_initialized_ca(log: Log, clock: FakeClock) -> None:
    with pytest.raises(CommandError) as err:
        await manager(log, clock).set_config(SHORT)
    assert (err.value.status, err.value.message) == (500, "CA has not finished initializing")


def test_expiry_status_thresholds(clock: FakeClock) -> None:
    config = CAConfig(root_cert_ttl="2400h")  # 100 days
    state = provider.initialize(CLUSTER_ID, config, START, os.urandom)
    assert ca_expiry_status(None, START)[0] == "warning"
    status, output = ca_expiry_status(state, START + timedelta(days=69))
    assert status == "passing" and state.active_root.id in output
    status, output = ca_expiry_status(state, START + timedelta(days=71))
    assert status == "warning" and "expires in" in output
    status, output = ca_expiry_status(state, START + timedelta(days=101))
    assert status == "critical" and "expired" in output


def test_intermediate_needed_past_its_expiry_warns(clock: FakeClock) -> None:
    state = provider.initialize(CLUSTER_ID, SHORT, START, os.urandom)
    # Rotated long before the old root's end: the cross-signed certificate outlives the retirement.
    five_hours = timedelta(hours=5)  # these roots live 100 h: warn 5 h ahead instead of 30 days
    early = provider.rotate(state, SHORT, START + timedelta(hours=50), os.urandom)
    assert ca_expiry_status(early, START + timedelta(hours=50), five_hours)[0] == "passing"
    # Rotated 30 minutes before the old root expires: the cross-signed certificate ends with the old
    # root, while leaves trusting only that root may live 2 h more. That is worth a warning.
    late = provider.rotate(state, SHORT, START + timedelta(hours=99, minutes=30), os.urandom)
    status, output = ca_expiry_status(late, START + timedelta(hours=99, minutes=30), five_hours)
    assert status == "warning" and "intermediate" in output and late.active_root.id not in output
    assert ca_expiry_status(late, START + timedelta(hours=100, minutes=1), five_hours)[0] == "critical"


class _Agent:
    """The agent as the expiry check sees it: its local checks, added, updated, synced and removed."""

    def __init__(self) -> None:
        self.checks: dict[str, tuple[str, str]] = {}
        self.synced: list[str] = []

    async def add_check(self, spec) -> None:  # noqa: ANN001
        self.checks[spec.check_id] = (spec.status, "")

    def set_check_status(self, cid: str, status: str, output: str) -> None:
        self.checks[cid] = (status, output)

    async def sync_check(self, cid: str) -> None:
        self.synced.append(cid)

    async def remove_check(self, cid: str) -> None:
        del self.checks[cid]


async def test_expiry_check_exists_only_inside_the_warning_window(clock: FakeClock) -> None:
    """A healthy CA adds no check (an agent with no checks of its own lists none); inside the window the
    check appears, warns and reaches the catalog at once; a rotated root takes it away again."""
    from registry.connect.manager import CHECK_ID, CAExpiryCheck

    config = CAConfig(root_cert_ttl="2400h")  # 100 days
    holder = {"state": provider.initialize(CLUSTER_ID, config, START, os.urandom)}
    agent = _Agent()
    check = CAExpiryCheck(agent, lambda: holder["state"], clock)
    await check.register()
    assert agent.checks == {} and agent.synced == []
    clock.now = START + timedelta(days=71)
    assert (await check.refresh())[0] == "warning"
    assert agent.checks[CHECK_ID][0] == "warning" and "expires in" in agent.checks[CHECK_ID][1]
    assert agent.synced == [CHECK_ID]
    holder["state"] = provider.rotate(holder["state"], config, clock.now, os.urandom)
    assert (await check.refresh())[0] == "passing"
    assert agent.checks == {}


async def test_expiry_check_adds_nothing_before_the_ca_exists(clock: FakeClock) -> None:
    from registry.connect.manager import CAExpiryCheck

    agent = _Agent()
    await CAExpiryCheck(agent, lambda: None, clock).register()
    assert agent.checks == {}
