"""Scripted scenarios, one per Raft pitfall that a real implementation fell into (each test name says which)."""

from __future__ import annotations

import random

import pytest

from registry.raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    ConfChange,
    ConfChangeKind,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    InstallSnapshot,
    InstallSnapshotResponse,
    Message,
    PreVote,
    ReadIndexRequest,
    RequestVote,
    RequestVoteResponse,
    Snapshot,
    SnapshotMeta,
    TimeoutNow,
)
from registry.raft.node import (
    ConfigChangeError,
    PersistentState,
    ProposalDroppedError,
    RaftConfig,
    RaftNode,
    Role,
)
from tests.raft.cluster import Cluster

E = 10  # election_tick used throughout


def cfg(**kw: object) -> RaftConfig:
    return RaftConfig(**{"election_tick": E, "heartbeat_tick": 1, **kw})  # type: ignore[arg-type]


def boot_plus(ids: list[str], term: int, extra: list[tuple[int, int]]) -> PersistentState:
    """Bootstrap state followed by NORMAL entries (index, term), persisted with ``term``."""
    boot = PersistentState.bootstrap(ids)
    entries = boot.entries + tuple(Entry(t, i, EntryKind.NORMAL, b"e%d@%d" % (i, t)) for i, t in extra)
    return PersistentState(HardState(term, None, 1), None, entries)


# ---------------------------------------------------------------------------------------------------
# 1. Figure 8: never commit an entry of an earlier term by counting replicas.


def test_figure8_old_term_entry_is_not_committed_by_counting_replicas() -> None:
    ids = ["n1", "n2", "n3", "n4", "n5"]
    states = {
        "n1": boot_plus(ids, 3, [(2, 2)]),  # the term-2 leader's entry, on its own log only
        "n2": boot_plus(ids, 3, []),
        "n3": boot_plus(ids, 3, []),
        "n4": boot_plus(ids, 3, []),
        "n5": boot_plus(ids, 3, [(2, 3)]),  # a term-3 leader's entry that reached nobody else
    }
    c = Cluster(ids, cfg(max_entries_per_msg=1), states)
    # n1 wins term 4 and sends its log one entry per message.  n1 cannot reach n4 and n5, and its
    # term-4 no-op (index 3) is lost on the way to anyone who already holds index 2, so the term-2 entry
    # alone reaches a majority (n1, n2, n3), as in Figure 8 (c).
    c.blocked |= {("n1", "n4"), ("n1", "n5")}

    def lose(m: Message) -> bool:
        has_two = c.storage[m.dst].term_at(2) == 2
        return isinstance(m, AppendEntries) and any(e.index >= 3 for e in m.entries) and has_two

    c.drop = lose
    c.force_campaign("n1")
    n1 = c.node("n1")
    assert n1.role is Role.LEADER and n1.term == 4
    c.tick(3)
    assert all(c.storage[i].term_at(2) == 2 for i in ("n1", "n2", "n3"))
    assert {p: s.match_index for p, s in n1.status().peers.items()} == {"n2": 2, "n3": 2, "n4": 0, "n5": 0}
    # Figure 8: a majority holds (2, term 2), but it is not from n1's term, so it is NOT committed.
    assert n1.commit_index == 1
    # n1 crashes; n5 (last entry (2, 3)) is elected and overwrites index 2 everywhere.  Had n1 committed
    # (2, 2), this would destroy a committed entry.
    c.crash("n1")
    c.heal()
    c.force_campaign("n5")
    if c.node("n5").role is not Role.LEADER:
        c.force_campaign("n5")  # its first attempt was in term 4, where everyone had voted for n1
    assert c.node("n5").role is Role.LEADER
    c.tick(3)
    for i in ("n2", "n3", "n4", "n5"):
        node = c.node(i)
        assert node.log.term(2) == 3
        assert node.commit_index >= 3
        assert all((e.index, e.term) != (2, 2) for e in c.applied[i])


# ---------------------------------------------------------------------------------------------------
# 3. Log matching: a stale, reordered AppendEntries whose entries all match must not truncate.


def test_stale_append_entries_do_not_truncate_a_longer_log() -> None:
    c = Cluster(config=cfg(max_entries_per_msg=2))
    lead = c.elect_any()
    leader = c.node(lead)
    follower = next(i for i in c.ids if i != lead)
    leader.propose_batch([b"a", b"b", b"c", b"d", b"e", b"f"])
    c.stabilize()
    f = c.node(follower)
    last, commit = f.last_index, f.commit_index
    assert last == leader.last_index
    early = [m for m in c.sent_of(AppendEntries, lead, follower) if m.entries and m.entries[-1].index < last - 1]
    assert early, "expected pipelined messages covering a prefix"
    c.sent.clear()
    for msg in early:  # replay them, late and out of order
        f.step(msg)
    c.process()
    assert f.last_index == last and f.commit_index == commit
    replies = c.sent_of(AppendEntriesResponse, follower, lead)
    assert replies and not any(r.reject for r in replies)
    # Each reply claims a match only up to what that message covered (never the whole log).
    assert sorted(r.index for r in replies) == sorted(max(m.prev_index + len(m.entries), commit) for m in early)


# ---------------------------------------------------------------------------------------------------
# 6. PreVote, leader stickiness and CheckQuorum.


def test_prevote_keeps_a_partitioned_node_from_disrupting_the_leader_when_it_rejoins() -> None:
    c = Cluster(config=cfg(pre_vote=True))
    lead = c.elect_any()
    term = c.node(lead).term
    loner = next(i for i in c.ids if i != lead)
    c.isolate(loner)
    c.tick(10 * E)
    assert c.node(loner).term == term  # pre-votes failed, so it never bumped its term
    assert c.node(loner).role is Role.PRE_CANDIDATE
    c.heal()
    c.tick(3 * E)
    assert c.leader() == lead and c.node(lead).term == term
    assert c.node(loner).role is Role.FOLLOWER and c.node(loner).leader_id == lead


def test_without_prevote_the_rejoining_node_forces_a_new_term() -> None:
    """The contrast that motivates PreVote: the isolated node inflates its term and, on return, its
    higher term deposes the healthy leader."""
    c = Cluster(config=cfg(pre_vote=False))
    lead = c.elect_any()
    term = c.node(lead).term
    loner = next(i for i in c.ids if i != lead)
    c.isolate(loner)
    c.tick(10 * E)
    assert c.node(loner).term > term + 3
    c.heal()
    c.tick(5 * E)
    assert c.node(c.elect_any()).term > term


def test_one_vote_per_term_even_between_competing_candidates() -> None:
    c = Cluster(config=cfg(pre_vote=False))
    c.isolate("n1")  # its vote requests are lost: it stays a candidate that voted for itself
    c.force_campaign("n1")
    n1 = c.node("n1")
    assert n1.role is Role.CANDIDATE
    c.heal()
    c.sent.clear()
    # A second candidate in the same term asks n1: refused, its one vote of the term is spent.
    n1.step(RequestVote(n1.term, "n2", "n1", 10**6, n1.term - 1))
    c.process()
    (reply,) = c.sent_of(RequestVoteResponse, "n1", "n2")
    assert not reply.granted
    # The same holds for a follower that already voted.
    n3 = c.node("n3")
    n3.step(RequestVote(n1.term + 1, "n1", "n3", 10**6, n1.term, transfer=True))
    n3.step(RequestVote(n1.term + 1, "n2", "n3", 10**6, n1.term, transfer=True))
    c.process()
    assert [m.granted for m in c.sent_of(RequestVoteResponse, "n3")] == [True, False]


def test_stickiness_ignores_votes_while_a_leader_is_heard() -> None:
    c = Cluster(config=cfg())
    lead = c.elect_any()
    follower = next(i for i in c.ids if i != lead)
    f = c.node(follower)
    term = f.term
    other = next(i for i in c.ids if i not in (lead, follower))
    c.sent.clear()
    f.step(RequestVote(term + 5, other, follower, 10**6, term + 4))
    f.step(PreVote(term + 1, other, follower, 10**6, term))
    c.process()
    assert f.term == term and f.leader_id == lead
    assert not [m for m in c.sent if m.src == follower and m.dst == other]
    # A leadership transfer's campaign is not disruptive: it is honoured despite stickiness.
    f.step(RequestVote(term + 1, other, follower, 10**6, term, transfer=True))
    assert f.term == term + 1


def test_a_restarted_server_does_not_vote_for_an_election_timeout() -> None:
    """It may have acknowledged heartbeats just before crashing, and a leader's lease counts on them."""
    c = Cluster(config=cfg())
    lead = c.elect_any()
    follower = next(i for i in c.ids if i != lead)
    other = next(i for i in c.ids if i not in (lead, follower))
    c.crash(follower)
    restarted = c.start(follower)
    term = restarted.term
    for _ in range(E - 1):
        restarted.tick()
    restarted.step(RequestVote(term + 1, other, follower, 10**6, term))
    assert restarted.term == term
    restarted.tick()
    restarted.step(RequestVote(term + 1, other, follower, 10**6, term))
    assert restarted.term == term + 1


def test_check_quorum_makes_an_isolated_leader_step_down() -> None:
    c = Cluster(config=cfg(check_quorum=True))
    lead = c.elect_any()
    c.isolate(lead)
    c.tick(E - 1)
    assert c.node(lead).role is Role.LEADER
    c.tick(2)
    assert c.node(lead).role is Role.FOLLOWER


def test_without_check_quorum_an_isolated_leader_keeps_believing() -> None:
    c = Cluster(config=cfg(check_quorum=False))
    lead = c.elect_any()
    c.isolate(lead)
    c.tick(5 * E)
    assert c.node(lead).role is Role.LEADER
    assert not c.node(lead).lease_valid()  # and it never claims a lease without CheckQuorum


def test_leader_heard_by_followers_but_deaf_to_them_steps_down_and_the_cluster_recovers() -> None:
    """The asymmetric partition of the Cloudflare 2020 outage: the leader's heartbeats arrive (so
    followers stay sticky), their answers do not.  CheckQuorum makes it step aside."""
    c = Cluster(config=cfg())
    lead = c.elect_any()
    c.isolate(lead, inbound=True, outbound=False)
    c.tick(2 * E)
    assert c.node(lead).role is not Role.LEADER
    c.tick(6 * E)
    new = c.leader()
    assert new is not None and new != lead
    c.node(new).propose(b"after")
    c.tick(3)
    assert any(e.data == b"after" for e in c.applied[new])


# ---------------------------------------------------------------------------------------------------
# 5. Membership changes.


def test_membership_change_is_refused_until_the_leaders_noop_commits() -> None:
    c = Cluster(config=cfg())
    c.drop = lambda m: isinstance(m, AppendEntries)  # the new leader's no-op cannot replicate
    c.force_campaign("n1")
    n1 = c.node("n1")
    assert n1.role is Role.LEADER and n1.commit_index < n1.last_index
    with pytest.raises(ConfigChangeError, match="not committed its first entry") as refused:
        n1.propose_config_change(ConfChange(ConfChangeKind.ADD_LEARNER, "n4"))
    assert refused.value.retryable
    c.heal()
    c.tick(2)
    index = n1.propose_config_change(ConfChange(ConfChangeKind.ADD_LEARNER, "n4"))
    # Only one uncommitted change at a time.
    with pytest.raises(ConfigChangeError, match="another membership change") as refused:
        n1.propose_config_change(ConfChange(ConfChangeKind.REMOVE_NODE, "n3"))
    assert refused.value.retryable
    c.stabilize()
    assert n1.commit_index >= index
    n1.propose_config_change(ConfChange(ConfChangeKind.REMOVE_NODE, "n4"))


def test_config_takes_effect_on_append_and_reverts_on_truncation() -> None:
    c = Cluster(config=cfg())
    lead = c.elect_any()
    leader = c.node(lead)
    c.isolate(lead)
    index = leader.propose_config_change(ConfChange(ConfChangeKind.ADD_LEARNER, "n9"))
    assert "n9" in leader.configuration.learners  # in effect as soon as it is appended
    assert "n9" not in leader.committed_configuration.members()
    assert leader.status().pending_config_index == index
    # The others elect someone else and overwrite the uncommitted entry on the old leader.
    c.tick(4 * E)
    new = c.leader()
    assert new is not None and new != lead
    c.heal()
    c.tick(2 * E)
    assert "n9" not in c.node(lead).configuration.members()
    assert c.node(lead).log.term(index) != leader.term or c.node(lead).log.entry(index).kind is not EntryKind.CONFIG


def test_learner_must_catch_up_before_promotion_and_never_campaigns() -> None:
    c = Cluster(config=cfg())
    lead = c.elect_any()
    leader = c.node(lead)
    leader.propose_batch([b"x%d" % i for i in range(20)])
    c.stabilize()
    c.start("n4")  # empty joiner
    c.isolate("n4")
    leader.propose_config_change(ConfChange(ConfChangeKind.ADD_LEARNER, "n4", b"10.0.0.4:8300"))
    c.tick(2)
    with pytest.raises(ConfigChangeError, match="not caught up"):
        leader.propose_config_change(ConfChange(ConfChangeKind.PROMOTE_LEARNER, "n4"))
    c.tick(5 * E, ids=["n4"])  # a learner's timer runs out, but it is not a voter
    assert c.node("n4").role is Role.FOLLOWER and c.node("n4").term == 0
    c.heal()
    c.tick(3)
    assert c.node("n4").configuration.learners == {"n4"}
    index = leader.propose_config_change(ConfChange(ConfChangeKind.PROMOTE_LEARNER, "n4"))
    c.tick(2)
    assert c.node("n4").configuration.voters == {"n1", "n2", "n3", "n4"}
    assert leader.commit_index >= index


def test_removed_leader_keeps_leading_until_the_change_commits_then_steps_down() -> None:
    c = Cluster(config=cfg())
    lead = c.elect_any()
    leader = c.node(lead)
    c.drop = lambda m: isinstance(m, AppendEntries) and any(e.kind is EntryKind.CONFIG for e in m.entries)
    index = leader.propose_config_change(ConfChange(ConfChangeKind.REMOVE_NODE, lead))
    assert lead not in leader.configuration.voters
    c.tick(E // 2)
    assert leader.role is Role.LEADER and leader.commit_index < index
    leader.propose(b"still serving")  # it keeps managing the cluster meanwhile
    c.drop = None
    c.tick(2)
    assert leader.role is Role.FOLLOWER
    c.tick(2 * E)
    new = c.leader()
    assert new is not None and new != lead
    assert c.node(new).configuration.voters == set(c.ids) - {lead}
    assert any(e.data == b"still serving" for e in c.applied[new])


# ---------------------------------------------------------------------------------------------------
# 4. Snapshot install: the Figure-13 rule.


def _follower_with(entries: list[tuple[int, int]], term: int) -> RaftNode:
    state = boot_plus(["n1", "n2", "n3"], term, entries)
    return RaftNode("n2", cfg(), random.Random(1), state)


def test_snapshot_matching_an_entry_we_hold_keeps_the_log() -> None:
    node = _follower_with([(2, 2), (3, 2), (4, 2), (5, 3)], term=3)
    meta = SnapshotMeta(3, 2, node.configuration)
    node.step(InstallSnapshot(3, "n1", "n2", meta, b"state@3"))
    rd = node.ready()
    assert rd.snapshot is None  # nothing to restore: we already hold everything it covers
    assert node.last_index == 5 and node.commit_index == 3
    assert [e.index for e in rd.committed_entries] == [1, 2, 3]
    assert any(isinstance(m, InstallSnapshotResponse) and m.index == 3 for m in rd.messages)


def test_snapshot_conflicting_with_our_log_replaces_all_of_it() -> None:
    node = _follower_with([(2, 2), (3, 2), (4, 2), (5, 2)], term=4)
    meta = SnapshotMeta(4, 4, node.configuration)
    node.step(InstallSnapshot(4, "n1", "n2", meta, b"state@4"))
    rd = node.ready()
    assert rd.snapshot is not None and rd.snapshot.meta == meta and rd.snapshot.data == b"state@4"
    assert node.last_index == 4 and node.log.snapshot_index == 4 and len(node.log) == 0
    assert rd.committed_entries == ()
    node.advance(rd)
    assert node.applied_index == 4
    # A stale snapshot (at or below our commit) changes nothing.
    node.step(InstallSnapshot(4, "n1", "n2", SnapshotMeta(3, 2, node.configuration), b"old"))
    rd = node.ready()
    assert rd.snapshot is None and node.log.snapshot_index == 4


def test_follower_behind_the_compacted_log_gets_a_snapshot() -> None:
    c = Cluster(config=cfg())
    lead = c.elect_any()
    leader = c.node(lead)
    lagger = next(i for i in c.ids if i != lead)
    c.isolate(lagger)
    leader.propose_batch([b"v%d" % i for i in range(30)])
    c.stabilize()
    # The driver snapshots and compacts (the harness snapshot_source serves Storage.snapshot).
    applied = leader.applied_index
    meta = leader.snapshot_meta(applied)
    st = c.storage[lead]
    st.compact(Snapshot(meta, b"fsm@%d" % applied))
    leader.compact(applied)
    c.heal()
    c.tick(3)
    assert c.sent_of(InstallSnapshot, lead, lagger)
    assert c.node(lagger).log.snapshot_index == applied
    assert c.node(lagger).commit_index == leader.commit_index
    assert c.applied[lagger][0].data == b"<snapshot>"


# ---------------------------------------------------------------------------------------------------
# Leadership transfer.


def test_leadership_transfer_catches_the_target_up_then_hands_over() -> None:
    c = Cluster(config=cfg())
    lead = c.elect_any()
    leader = c.node(lead)
    target = next(i for i in c.ids if i != lead)
    c.isolate(target)
    leader.propose_batch([b"t%d" % i for i in range(5)])
    c.tick(1)
    assert leader.lease_valid() and c.node(target).last_index < leader.last_index
    c.heal()
    c.sent.clear()
    leader.transfer_leadership(target)
    with pytest.raises(ProposalDroppedError):
        leader.propose(b"refused during transfer")
    c.process()
    assert not c.sent_of(TimeoutNow)  # first the target must catch up
    c.tick(3)
    assert c.sent_of(TimeoutNow, lead, target)
    assert c.leader() == target
    assert c.node(target).log.last_index >= leader.log.last_index


def test_transfer_forfeits_the_lease_for_the_rest_of_the_term() -> None:
    c = Cluster(config=cfg())
    lead = c.elect_any()
    leader = c.node(lead)
    target = next(i for i in c.ids if i != lead)
    c.tick(1)
    assert leader.lease_valid()
    c.drop = lambda m: isinstance(m, TimeoutNow)  # the transfer fails silently
    leader.transfer_leadership(target)
    c.tick(E + 1)
    assert leader.role is Role.LEADER and leader.status().lead_transferee is None
    assert not leader.lease_valid()
    leader.propose(b"accepted again after the transfer timed out")


# ---------------------------------------------------------------------------------------------------
# 7. ReadIndex and the lease.


def test_read_index_needs_a_quorum_round() -> None:
    c = Cluster(config=cfg())
    lead = c.elect_any()
    leader = c.node(lead)
    c.isolate(lead)
    leader.read_index(b"r1")
    c.tick(E - 2)
    assert c.read_states[lead] == []  # no quorum confirmed leadership: no answer
    c.tick(3)  # CheckQuorum deposes it; the read fails fast instead of hanging
    assert leader.role is Role.FOLLOWER
    assert c.dropped_reads[lead] == [b"r1"]


def test_read_index_batches_many_reads_into_one_heartbeat_round() -> None:
    c = Cluster(config=cfg())
    lead = c.elect_any()
    leader = c.node(lead)
    c.sent.clear()
    for i in range(50):
        leader.read_index(b"r%d" % i)
    c.process()
    assert len(c.sent_of(Heartbeat, lead)) == 2  # one round: one heartbeat per follower
    c.stabilize()
    states = c.read_states[lead]
    assert [s.context for s in states] == [b"r%d" % i for i in range(50)]
    assert {s.index for s in states} == {leader.commit_index}


def test_read_index_waits_for_the_new_leaders_first_commit() -> None:
    c = Cluster(config=cfg())
    c.drop = lambda m: isinstance(m, AppendEntries)
    c.force_campaign("n1")
    n1 = c.node("n1")
    n1.read_index(b"early")
    c.tick(2)
    assert c.read_states["n1"] == []  # the commit index is not known to be current yet
    c.drop = None
    c.tick(2)
    (state,) = c.read_states["n1"]
    assert state.context == b"early" and state.index >= n1.log.last_index - 0 and n1.log.term(state.index) == n1.term


def test_follower_forwards_read_index_to_the_leader() -> None:
    c = Cluster(config=cfg())
    lead = c.elect_any()
    c.node(lead).propose(b"w")
    c.stabilize()
    follower = next(i for i in c.ids if i != lead)
    c.node(follower).read_index(b"f1")
    c.process()
    assert c.sent_of(ReadIndexRequest, follower, lead)
    c.stabilize()
    (state,) = c.read_states[follower]
    assert state.context == b"f1" and state.index == c.node(lead).commit_index


def test_lease_needs_recent_acks_from_a_quorum() -> None:
    c = Cluster(config=cfg(lease_margin_ticks=2))
    lead = c.elect_any()
    leader = c.node(lead)
    c.tick(1)
    assert leader.lease_valid() and leader.lease_read_index() == leader.commit_index
    c.isolate(lead)
    # Heartbeats sent before the partition were acknowledged; the lease runs election_tick - margin
    # ticks from the newest of them.
    c.tick(E - 2 - 2)
    assert leader.lease_valid()
    c.tick(2)
    assert not leader.lease_valid() and leader.lease_read_index() is None
    assert leader.role is Role.LEADER  # still leader for CheckQuorum's purposes, but no lease


def test_lease_is_not_valid_before_the_first_commit_of_the_term() -> None:
    c = Cluster(config=cfg())
    c.drop = lambda m: isinstance(m, AppendEntries)
    c.force_campaign("n1")
    c.tick(2)
    assert c.node("n1").role is Role.LEADER and not c.node("n1").lease_valid()


# ---------------------------------------------------------------------------------------------------
# 2. Persist before responding: what reaches the network was durable first.


def test_messages_promise_only_what_is_durable() -> None:
    """Every vote and every acknowledged entry a message claims is on the sender's disk when the
    driver sends it (the harness persists each Ready before queueing its messages)."""
    c = Cluster(config=cfg())
    lead = c.elect_any()
    c.node(lead).propose_batch([b"d%d" % i for i in range(10)])
    original_deliver = c.deliver

    def checked_deliver() -> int:
        for m in c.queue:
            check_durable(c, m)
        return original_deliver()

    c.deliver = checked_deliver  # type: ignore[method-assign]
    c.stabilize()
    c.tick(2 * E)


def check_durable(c: Cluster, m: Message) -> None:
    st = c.storage[m.src]
    if isinstance(m, AppendEntriesResponse) and not m.reject:
        assert st.last_index() >= m.index
    if isinstance(m, RequestVote):
        assert st.hard_state.term >= m.term and st.hard_state.vote == m.src


def test_single_server_commits_only_after_its_own_write_is_durable() -> None:
    node = RaftNode("solo", cfg(), random.Random(3), PersistentState.bootstrap(["solo"]))
    for _ in range(2 * E):
        node.tick()
        if node.role is Role.LEADER:
            break
    assert node.role is Role.LEADER
    while node.has_ready():
        node.advance(node.ready())
    index = node.propose(b"x")
    rd = node.ready()
    assert [e.index for e in rd.entries] == [index]
    assert index not in [e.index for e in rd.committed_entries]  # not before it is on disk
    node.advance(rd)
    rd = node.ready()
    assert [e.index for e in rd.committed_entries] == [index]
