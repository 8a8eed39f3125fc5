"""The link policy (registry/raft/links.py) over the statuses a real core reports: who counts as silent,
and when a silent peer's link is reset."""

from __future__ import annotations

import pytest

from registry.raft.links import LinkPolicy
from registry.raft.node import RaftConfig, Role
from tests.raft.cluster import Cluster

E = 10
POLICY = LinkPolicy.for_election(E)


def cluster() -> tuple[Cluster, str, list[str]]:
    c = Cluster(config=RaftConfig(election_tick=E, heartbeat_tick=1))
    leader = c.elect_any()
    c.tick(3)
    return c, leader, [i for i in c.ids if i != leader]


def test_a_healthy_cluster_has_no_silent_peer() -> None:
    c, leader, followers = cluster()
    for _ in range(3 * E):
        c.tick()
        for i in c.ids:
            status = c.node(i).status()
            assert POLICY.silent_peers(status, POLICY.followed(status.leader_id, i, None)) == (), i


def test_the_leader_finds_a_cut_off_follower_silent_after_stall_ticks() -> None:
    c, leader, (cut, other) = cluster()
    c.isolate(cut)
    silent_at = None
    for t in range(1, 3 * E):
        c.tick(ids=[leader, other])
        if cut in POLICY.silent_peers(c.node(leader).status(), None):
            silent_at = t
            break
    assert silent_at == POLICY.stall_ticks
    assert POLICY.silent_peers(c.node(leader).status(), None) == (cut,)  # the other follower still answers


def test_a_follower_keeps_its_silent_leader_while_it_campaigns() -> None:
    """The core forgets the leader when it starts to campaign; the policy still names it, so the stream
    to it (holding the campaign's requests) can be reset."""
    c, leader, (cut, _) = cluster()
    node = c.node(cut)
    last = POLICY.followed(node.leader_id, cut, None)
    assert last == leader
    c.isolate(cut)
    for _ in range(3 * E):
        c.tick(ids=[cut])
        last = POLICY.followed(node.leader_id, cut, last)
    status = node.status()
    assert status.role is Role.PRE_CANDIDATE and status.leader_id is None
    assert last == leader
    assert POLICY.silent_peers(status, last) == (leader,)


def test_a_follower_is_silent_towards_its_leader_only_after_stall_ticks() -> None:
    c, leader, (cut, _) = cluster()
    node = c.node(cut)
    c.isolate(cut)
    c.tick(POLICY.stall_ticks - 1, ids=[cut])
    assert POLICY.silent_peers(node.status(), leader) == ()
    c.tick(1, ids=[cut])
    assert POLICY.silent_peers(node.status(), leader) == (leader,)


def test_a_leader_follows_nobody() -> None:
    assert LinkPolicy.followed("n1", "n1", "n2") == "n2"  # our own leadership is not a link to watch
    assert LinkPolicy.followed(None, "n1", "n2") == "n2"
    assert LinkPolicy.followed("n3", "n1", "n2") == "n3"


def test_a_new_leader_gives_every_follower_a_window() -> None:
    c, leader, (a, b) = cluster()
    c.force_campaign(a)
    assert c.leader() == a
    assert POLICY.silent_peers(c.node(a).status(), None) == ()


def test_reset_needs_outstanding_bytes_and_a_connection_old_enough() -> None:
    assert POLICY.should_reset(True, POLICY.stall_ticks)
    assert not POLICY.should_reset(False, 100 * POLICY.stall_ticks)  # the peer acknowledged everything
    assert not POLICY.should_reset(True, POLICY.stall_ticks - 0.5)  # a new connection gets its window


def test_the_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        LinkPolicy(stall_ticks=0)
    with pytest.raises(ValueError):
        LinkPolicy(stall_ticks=10, user_timeout_ticks=5)
    assert LinkPolicy.for_election(10) == LinkPolicy(stall_ticks=10, user_timeout_ticks=20)
