"""The autopilot core's decisions (health, failure tolerance, dead-server removal) against
hashicorp/raft-autopilot's rules, and its configuration's API form."""

from __future__ import annotations

import pytest

from registry.autopilot import (
    AutopilotConfig,
    AutopilotConfigError,
    ClusterFacts,
    ServerFacts,
    from_agent_config,
    from_api,
    health_reply,
    next_state,
    removals,
    state_reply,
)

CFG = AutopilotConfig(last_contact_threshold_ns=200_000_000, server_stabilization_time_ns=1_000_000_000)


def server(sid: str, contact: float = 0.01, index: int = 100, term: int = 3, voter: bool = True,
           leader: bool = False) -> ServerFacts:  # fmt: skip
    return ServerFacts(sid, f"node-{sid}", f"10.0.0.{len(sid)}:8300", voter, leader, contact, index, term)


def cluster(*followers: ServerFacts, index: int = 100, term: int = 3) -> ClusterFacts:
    leader = server("a", contact=0.0, index=index, term=term, leader=True)
    return ClusterFacts("a", index, term, [leader, *followers])


def test_three_healthy_servers_tolerate_one_failure() -> None:
    state = next_state(CFG, cluster(server("b"), server("c")), None, now=10.0)
    assert state.healthy and state.failure_tolerance == 1
    assert state.voters[0] == "a" and set(state.voters) == {"a", "b", "c"}
    assert removals(CFG, state) == []


@pytest.mark.parametrize(("facts", "why"), [
    (server("b", contact=0.3), "last contact past the threshold"),
    (server("b", term=2), "a term other than the leader's"),
    (server("b", index=100 - 251), "more than MaxTrailingLogs behind"),
    (server("b", contact=-1.0), "contact unknown"),
])  # fmt: skip
def test_unhealthy_server(facts: ServerFacts, why: str) -> None:
    state = next_state(CFG, cluster(facts, server("c")), None, now=10.0)
    assert not state.servers["b"].healthy, why
    assert not state.healthy and state.failure_tolerance == 0
    assert state.voters[-1] == "b"  # unhealthy voters sort last
    assert state.servers["b"].node_status == "alive"  # not failed yet: within the stabilization time


def test_stable_since_moves_only_when_health_changes() -> None:
    first = next_state(CFG, cluster(server("b"), server("c")), None, now=10.0)
    same = next_state(CFG, cluster(server("b"), server("c")), first, now=12.0)
    assert same.servers["b"].stable_since == 10.0
    sick = next_state(CFG, cluster(server("b", contact=0.5), server("c")), same, now=13.0)
    assert sick.servers["b"].stable_since == 13.0 and sick.servers["c"].stable_since == 10.0


def test_failed_voter_is_removed_but_never_below_quorum_or_min_quorum() -> None:
    dead = server("c", contact=1.3)  # silent past threshold + stabilization: failed
    state = next_state(CFG, cluster(server("b"), dead), None, now=10.0)
    assert state.servers["c"].node_status == "failed"
    assert removals(CFG, state) == ["c"]
    assert removals(AutopilotConfig(cleanup_dead_servers=False), state) == []
    min3 = AutopilotConfig(min_quorum=3, last_contact_threshold_ns=CFG.last_contact_threshold_ns,
                           server_stabilization_time_ns=CFG.server_stabilization_time_ns)  # fmt: skip
    assert removals(min3, next_state(min3, cluster(server("b"), dead), None, now=10.0)) == []
    # Two of three dead: one per round at most ((3 - 1) // 2 = 1), as raft-autopilot decides (the change
    # cannot commit without a quorum anyway).
    two = next_state(CFG, cluster(server("b", contact=2.0), dead), None, now=10.0)
    assert removals(CFG, two) == ["b"]
    # Five servers, two dead: both go ((5 - 1) // 2 = 2).
    five = next_state(CFG, cluster(server("b"), server("c"), server("dd", contact=5), server("ee", contact=5)),
                      None, now=10.0)  # fmt: skip
    assert removals(CFG, five) == ["dd", "ee"]


def test_failed_non_voter_goes_first_and_counts_against_the_round() -> None:
    state = next_state(CFG, cluster(server("b"), server("c", contact=9), server("l", contact=9, voter=False)),
                       None, now=10.0)  # fmt: skip
    # 4 potential voters: (4 - 1) // 2 = 1 for the learner round; then 3 remain and one voter may go.
    assert removals(CFG, state) == ["l", "c"]


def test_config_api_round_trip_and_errors() -> None:
    body = AutopilotConfig().to_api()
    assert body == {"CleanupDeadServers": True, "LastContactThreshold": "200ms", "MaxTrailingLogs": 250,
                    "MinQuorum": 0, "ServerStabilizationTime": "10s", "RedundancyZoneTag": "",
                    "DisableUpgradeMigration": False, "UpgradeVersionTag": "", "CreateIndex": 0,
                    "ModifyIndex": 0}  # fmt: skip
    assert from_api(body) == AutopilotConfig()
    cfg = from_api({"lastcontactthreshold": "1s", "MinQuorum": 3, "ServerStabilizationTime": 5_000_000_000})
    assert (cfg.last_contact_threshold, cfg.min_quorum, cfg.server_stabilization_time) == (1.0, 3, 5.0)
    with pytest.raises(AutopilotConfigError, match='time: invalid duration "soon"'):
        from_api({"LastContactThreshold": "soon"})
    with pytest.raises(AutopilotConfigError, match="of type uint64"):
        from_api({"MinQuorum": -1})
    # Past uint64 (found by the API fuzzer: it reached the Raft encoder and answered 500).
    with pytest.raises(AutopilotConfigError, match=r"^json: cannot unmarshal number 18446744073709551616 into Go "
                                                   r"struct field AutopilotConfiguration.ModifyIndex of type uint64$"):
        from_api({"ModifyIndex": 2**64})
    assert from_api({"ModifyIndex": 2**64 - 1}).modify_index == 2**64 - 1
    assert from_agent_config({"cleanup_dead_servers": False, "min_quorum": 3}).min_quorum == 3
    with pytest.raises(AutopilotConfigError, match="unknown key"):
        from_agent_config({"cleanup": True})


def test_reply_shapes() -> None:
    state = next_state(CFG, cluster(server("b"), server("c", contact=0.5)), None, now=10.0)
    health = health_reply(state, wall_offset=1_700_000_000.0)
    assert health["Healthy"] is False and health["FailureTolerance"] == 0
    assert [s["ID"] for s in health["Servers"]] == ["a", "b", "c"]
    c = health["Servers"][2]
    assert c["LastContact"] == "500ms" and c["SerfStatus"] == "alive" and c["Voter"] and not c["Healthy"]
    assert c["StableSince"] == "2023-11-14T22:13:30Z"
    full = state_reply(state, 0.0)
    assert full["Leader"] == "a" and full["Servers"]["a"]["Status"] == "leader"
    assert full["Servers"]["b"]["NodeType"] == "voter" and full["OptimisticFailureTolerance"] == 0


def test_the_core_is_pure() -> None:
    """No IO, no clock, no asyncio: ``now`` comes in as an argument (the checks of the other pure cores)."""
    from tests.ca import test_ca_purity as purity

    purity.test_pure_module_imports("registry/autopilot.py")
    purity.test_pure_module_reads_no_clock("registry/autopilot.py")


def test_the_stored_configuration_cas_init_and_snapshot() -> None:
    """Through the FSM: Consul's CAS rules (a row must exist with that ModifyIndex), the leader's seed
    applied only when nothing is stored, the indexes, and the row in a snapshot."""
    from registry.commands import AutopilotSetConfig
    from registry.fsm import FSM
    from registry.state.autopilot_table import autopilot_config
    from registry.state.store import StateStore

    fsm = FSM()
    assert fsm.apply_command(1, AutopilotSetConfig(AutopilotConfig(), cas=True, index=0).to_wire()) is False
    assert fsm.apply_command(2, AutopilotSetConfig(AutopilotConfig(min_quorum=3), init=True).to_wire()) is True
    assert fsm.apply_command(3, AutopilotSetConfig(AutopilotConfig(), init=True).to_wire()) is False
    stored = autopilot_config(fsm.store)
    assert stored is not None and (stored.min_quorum, stored.create_index, stored.modify_index) == (3, 2, 2)
    assert fsm.apply_command(4, AutopilotSetConfig(AutopilotConfig(min_quorum=5), cas=True, index=1).to_wire()) is False
    assert fsm.apply_command(5, AutopilotSetConfig(AutopilotConfig(min_quorum=5), cas=True, index=2).to_wire()) is True
    restored = autopilot_config(StateStore.from_snapshot(fsm.store.to_snapshot()))
    assert restored is not None and (restored.min_quorum, restored.create_index, restored.modify_index) == (5, 2, 5)
    bad = AutopilotSetConfig(AutopilotConfig()).to_wire() | {"Config": {"MinQuorum": "x"}}
    assert "Error parsing autopilot config" in fsm.apply_command(6, bad).message
