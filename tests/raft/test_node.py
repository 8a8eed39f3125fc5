"""RaftNode API behaviour: replication flow control, the Ready contract, restarts, status, errors."""

from __future__ import annotations

import random

import pytest

from registry.raft.messages import (
    AppendEntries,
    ConfChange,
    ConfChangeKind,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    InstallSnapshot,
    Snapshot,
    decode_config_entry,
)
from registry.raft.node import (
    ConfigChangeError,
    NotLeaderError,
    PersistentState,
    ProgressState,
    ProposalDroppedError,
    RaftConfig,
    RaftError,
    RaftNode,
    ReadyError,
    Role,
    TransferError,
)
from tests.raft.cluster import Cluster

E = 10


def cfg(**kw: object) -> RaftConfig:
    return RaftConfig(**{"election_tick": E, "heartbeat_tick": 1, **kw})  # type: ignore[arg-type]


def test_replication_pipelines_batches_under_the_limits() -> None:
    c = Cluster(config=cfg(max_entries_per_msg=8, max_bytes_per_msg=1 << 20, max_inflight_msgs=4))
    lead = c.elect_any()
    leader = c.node(lead)
    c.tick(1)
    follower = next(i for i in c.ids if i != lead)
    assert leader.status().peers[follower].state is ProgressState.REPLICATE
    c.sent.clear()
    first = leader.propose_batch([b"p%d" % i for i in range(100)]).start
    c.process()  # one Ready: the leader's flush, nothing delivered yet
    batch = c.sent_of(AppendEntries, lead, follower)
    # Pipelining: several messages in flight at once, stopped by the inflight limit...
    assert len(batch) == 4
    # ...each carrying a batch of at most max_entries_per_msg, contiguous with the previous one.
    assert [len(m.entries) for m in batch] == [8, 8, 8, 8]
    assert [m.prev_index for m in batch] == [first - 1 + 8 * k for k in range(4)]
    peer = leader.status().peers[follower]
    assert peer.inflight == 4 and peer.next_index == first + 32  # optimistic next index
    c.stabilize()
    assert c.node(follower).last_index == leader.last_index
    assert leader.status().peers[follower].inflight == 0


def test_byte_limit_splits_batches() -> None:
    c = Cluster(config=cfg(max_entries_per_msg=1000, max_bytes_per_msg=1000, max_inflight_msgs=100))
    lead = c.elect_any()
    leader = c.node(lead)
    c.tick(1)
    c.sent.clear()
    leader.propose_batch([b"x" * 400] * 10)
    c.process()
    follower = next(i for i in c.ids if i != lead)
    sizes = [len(m.entries) for m in c.sent_of(AppendEntries, lead, follower)]
    assert sizes == [2, 2, 2, 2, 2]  # 2 x (400 + framing) fits in 1000 bytes, 3 do not


def test_probe_state_sends_one_message_until_it_hears_back() -> None:
    c = Cluster(config=cfg(max_entries_per_msg=4))
    lead = c.elect_any()
    leader = c.node(lead)
    lagger = next(i for i in c.ids if i != lead)
    c.isolate(lagger)
    leader.propose_batch([b"q%d" % i for i in range(40)])
    c.tick(2)
    # Lost messages in REPLICATE made it fall back to PROBE: one message per heartbeat answer.
    c.sent.clear()
    c.tick(1)
    sent = c.sent_of(AppendEntries, lead, lagger)
    assert len(sent) <= 2
    c.heal()
    c.tick(3)
    assert c.node(lagger).last_index == leader.last_index
    assert leader.status().peers[lagger].state is ProgressState.REPLICATE


def test_ready_must_be_advanced_in_order() -> None:
    c = Cluster()
    lead = c.elect_any()
    node = c.node(lead)
    node.propose(b"x")
    rd = node.ready()
    assert not node.has_ready()
    with pytest.raises(ReadyError):
        node.ready()
    with pytest.raises(ReadyError):
        node.advance(type(rd)(None, None, (), (), (), (), (), False))
    node.advance(rd)
    with pytest.raises(ReadyError):
        node.advance(rd)


def test_restart_from_persisted_state_keeps_term_vote_and_log() -> None:
    c = Cluster()
    lead = c.elect_any()
    c.node(lead).propose_batch([b"a", b"b"])
    c.tick(2)
    follower = next(i for i in c.ids if i != lead)
    before = c.node(follower).status()
    c.crash(follower)
    node = c.start(follower)
    after = node.status()
    assert (after.term, after.vote, after.last_index) == (before.term, before.vote, before.last_index)
    assert after.role is Role.FOLLOWER and after.leader_id is None
    assert after.commit_index == before.commit_index and after.applied_index == 0
    rd = node.ready()  # committed entries are re-applied from the log (the FSM is rebuilt)
    assert [e.index for e in rd.committed_entries] == list(range(1, before.commit_index + 1))


def test_restart_after_a_torn_write_adopts_the_logs_newer_term() -> None:
    """Entries of term 5 reached the disk, the HardState of term 5 written after them did not."""
    boot = PersistentState.bootstrap(["n1", "n2", "n3"])
    entries = boot.entries + (Entry(5, 2, EntryKind.NOOP),)
    node = RaftNode("n2", cfg(), random.Random(0), PersistentState(HardState(3, "n1", 1), None, entries))
    assert node.term == 5 and node.status().vote is None


def test_restart_rejects_an_applied_index_outside_the_log() -> None:
    with pytest.raises(RaftError):
        RaftNode("n1", cfg(), random.Random(0), PersistentState.bootstrap(["n1"]), applied=5)


def test_status_reports_what_operators_need() -> None:
    c = Cluster()
    lead = c.elect_any()
    c.node(lead).propose(b"s")
    c.tick(2)
    st = c.node(lead).status()
    assert st.role is Role.LEADER and st.leader_id == lead and st.id == lead
    assert st.commit_index == st.applied_index == st.last_index
    assert set(st.peers) == set(c.ids) - {lead}
    assert all(p.match_index == st.last_index for p in st.peers.values())
    assert st.ticks_since_leader_contact == 0 and st.configuration.voters == set(c.ids)
    follower = c.node(next(i for i in c.ids if i != lead))
    c.isolate(follower.id)
    c.tick(3)
    fs = follower.status()
    assert fs.peers == {} and fs.leader_id == lead and fs.ticks_since_leader_contact == 3


def test_snapshot_source_unavailable_is_retried_later() -> None:
    c = Cluster()
    lead = c.elect_any()
    leader = c.node(lead)
    lagger = next(i for i in c.ids if i != lead)
    c.isolate(lagger)
    leader.propose_batch([b"z%d" % i for i in range(10)])
    c.tick(2)
    applied = leader.applied_index
    meta = leader.snapshot_meta(applied)
    store = c.storage[lead]
    stored = Snapshot(meta, b"fsm")
    # The driver has compacted but its snapshot file is momentarily unavailable (being written).
    store.compact(stored)
    store.snapshot = None
    leader.compact(applied)
    c.heal()
    c.tick(3)
    assert not c.sent_of(InstallSnapshot)
    store.snapshot = stored
    c.tick(3)
    assert c.sent_of(InstallSnapshot, lead, lagger)
    assert c.node(lagger).commit_index == leader.commit_index


def test_compaction_needs_a_snapshot_source_and_applied_entries() -> None:
    node = RaftNode("n1", cfg(), random.Random(0), PersistentState.bootstrap(["n1"]))
    with pytest.raises(RaftError):
        node.compact(1)
    c = Cluster()
    lead = c.elect_any()
    leader = c.node(lead)
    with pytest.raises(RaftError):
        leader.compact(leader.applied_index + 1)
    with pytest.raises(RaftError):
        leader.snapshot_meta(leader.applied_index + 1)


def test_backpressure_refuses_proposals_beyond_the_uncommitted_limit() -> None:
    c = Cluster(config=cfg(max_uncommitted_entries=10))
    lead = c.elect_any()
    leader = c.node(lead)
    c.isolate(lead)
    leader.propose_batch([b"u"] * 10)
    with pytest.raises(ProposalDroppedError, match="uncommitted"):
        leader.propose(b"one too many")
    c.heal()
    c.tick(2)
    leader.propose(b"fits again")


def test_config_entries_reach_the_driver_with_their_context() -> None:
    c = Cluster()
    lead = c.elect_any()
    index = c.node(lead).propose_config_change(ConfChange(ConfChangeKind.ADD_LEARNER, "n4", b"10.0.0.4:8300"))
    c.tick(2)
    (entry,) = [e for e in c.applied[lead] if e.index == index]
    config, change = decode_config_entry(entry.data)
    assert change == ConfChange(ConfChangeKind.ADD_LEARNER, "n4", b"10.0.0.4:8300")
    assert config.learners == {"n4"} and config.voters == set(c.ids)
    # The bootstrap configuration is entry 1 on every founder.
    first = c.applied[lead][0]
    assert first.index == 1 and decode_config_entry(first.data)[1].kind is ConfChangeKind.BOOTSTRAP


def test_invalid_requests_raise_typed_errors() -> None:
    c = Cluster()
    lead = c.elect_any()
    leader = c.node(lead)
    follower = c.node(next(i for i in c.ids if i != lead))
    with pytest.raises(NotLeaderError) as info:
        follower.propose(b"x")
    assert info.value.leader_id == lead
    with pytest.raises(ValueError):
        leader.propose("text")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        leader.read_index(b"c" * 1000)
    with pytest.raises(TransferError):
        leader.transfer_leadership("n9")
    with pytest.raises(NotLeaderError):
        follower.transfer_leadership(lead)
    for bad in (
        ConfChange(ConfChangeKind.ADD_LEARNER, lead),
        ConfChange(ConfChangeKind.PROMOTE_LEARNER, "n9"),
        ConfChange(ConfChangeKind.REMOVE_NODE, "n9"),
    ):
        with pytest.raises(ConfigChangeError) as refused:
            leader.propose_config_change(bad)
        assert not refused.value.retryable
    solo = Cluster(["s1"])
    solo.tick(2 * E)
    with pytest.raises(ConfigChangeError, match="last voter"):
        solo.node("s1").propose_config_change(ConfChange(ConfChangeKind.REMOVE_NODE, "s1"))
    for kw in ({"heartbeat_tick": 10}, {"lease_margin_ticks": 10}, {"max_inflight_msgs": 0}):
        with pytest.raises(ValueError):
            cfg(**kw)
    pre = c.node(next(i for i in c.ids if i != lead))
    with pytest.raises(RaftError):
        pre.step(Heartbeat(1, "n1", "elsewhere", 0, 0))


def test_a_joining_server_waits_without_campaigning() -> None:
    node = RaftNode("n9", cfg(), random.Random(0), PersistentState.empty())
    for _ in range(10 * E):
        node.tick()
    assert node.role is Role.FOLLOWER and node.term == 0 and not node.has_ready()
