"""Serf's queries in the gossip core: disseminated like membership news, answered straight to the origin,
collected until the deadline.  In the deterministic simulator (tests/gossip/sim.py) with fixed seeds, loss
and a partition, over the wire encoding; and the wire format's bounds.
"""

from __future__ import annotations

import random

import pytest

from registry.gossip.config import GossipConfig, query_timeout
from registry.gossip.core import (
    MAX_PENDING_QUERIES,
    MAX_SEEN_QUERIES,
    GossipNode,
    QueryDone,
    QueryError,
    QueryEvent,
)
from registry.gossip.messages import (
    MAX_QUERY_PAYLOAD_BYTES,
    Address,
    MessageDecodeError,
    Query,
    QueryResponse,
    Relay,
    decode_packet,
    decode_stream,
    encode_message,
    encode_packet,
    encode_stream,
)
from tests.gossip.sim import Simulator

LATENCY = (0.0005, 0.02)


def _echo(sim: Simulator, names: list[str], name: str = "echo") -> None:
    for n in names:
        sim.nodes[n].handlers[name] = lambda q, me=n: f"{me}:{q.payload.decode()}".encode()


def test_serf_default_query_timeout() -> None:
    """gossip_interval * QueryTimeoutMult * ceil(log10(n + 1)) (Serf's DefaultQueryTimeout)."""
    assert query_timeout(0.2, 16, 1) == pytest.approx(3.2)
    assert query_timeout(0.2, 16, 9) == pytest.approx(3.2)
    assert query_timeout(0.2, 16, 10) == pytest.approx(6.4)
    assert query_timeout(0.2, 16, 1000) == pytest.approx(12.8)


def test_every_member_answers_once_and_the_origin_collects_until_the_deadline() -> None:
    sim = Simulator(seed=17, latency=LATENCY, wire=True)
    names = sim.converged_pool(50)
    _echo(sim, names)
    sim.run_for(1.0)
    qid = sim.query("n3", "echo", b"hi", ack=True)
    assert sim.nodes["n3"].core.query_expected(qid) == frozenset(names)
    sim.run_for(4.0)  # gossip, then (at half the timeout) the query straight to whoever is silent
    answers = sim.answers[("n3", qid)]
    responses = {a.node: a.payload for a in answers if not a.ack}
    assert responses == {n: f"{n}:hi".encode() for n in names}
    assert {a.node for a in answers if a.ack} == set(names)
    assert ("n3", qid) not in sim.done  # the deadline is Serf's default, 6.4 s at 50 members
    # This seed's gossip missed one member (each copy is sent a limited number of times); the origin's
    # resend at half the timeout reached it.
    assert sim.nodes["n3"].core.stats["queries_resent"] == 1
    sim.run_for(3.0)
    done = sim.done[("n3", qid)]
    assert (done.responses, done.acks) == (50, 50)
    # Each member handled it once, however many copies the gossip brought.
    handled = [m for m, q in sim.queries_seen if q.id == qid]
    assert sorted(handled) == sorted(names)
    assert sum(sim.nodes[n].core.stats["queries_duplicate"] for n in names) > 0


def test_filters_select_the_members_that_answer() -> None:
    sim = Simulator(seed=3, latency=LATENCY, wire=True)
    names = [f"n{i}" for i in range(12)]
    for i, name in enumerate(names):
        sim.add(name, tags={"role": "consul" if i < 3 else "node", "dc": "dc1"})
    for name in names[1:]:
        sim.join(name, ["n0"])
    sim.run_for(5.0)
    _echo(sim, names)
    by_tag = sim.query("n5", "echo", b"x", filter_tags={"role": "^cons"}, timeout=2.0)
    by_name = sim.query("n5", "echo", b"x", filter_nodes=("n7", "n9"), timeout=2.0)
    unsafe = sim.query("n5", "echo", b"x", filter_tags={"role": "(c+)+$"}, timeout=2.0)
    sim.run_for(3.0)
    assert {a.node for a in sim.answers[("n5", by_tag)]} == {"n0", "n1", "n2"}
    assert {a.node for a in sim.answers[("n5", by_name)]} == {"n7", "n9"}
    assert sim.answers[("n5", unsafe)] == []  # a pattern that could backtrack without end matches nothing


def test_answers_survive_ten_percent_loss_with_relays() -> None:
    """10% of packets lost: the query still reaches everyone (it is gossiped many times), and with two
    relays per answer (Serf's relay factor) the answers reach the origin."""
    sim = Simulator(seed=21, loss=0.1, latency=LATENCY)
    names = sim.converged_pool(100)
    _echo(sim, names)
    sim.run_for(2.0)
    qid = sim.query("n0", "echo", b"", relay_factor=2)
    sim.run_for(10.0)
    assert {m for m, q in sim.queries_seen if q.id == qid} == set(names)
    assert sim.done[("n0", qid)].responses >= 99
    relayed = sum(sim.nodes[n].core.stats["query_relayed"] for n in names)
    assert relayed > 100


def test_a_partition_hides_the_other_side_until_it_heals() -> None:
    sim = Simulator(seed=8, latency=LATENCY)
    names = sim.converged_pool(30)
    _echo(sim, names)
    sim.run_for(1.0)
    left, right = names[:18], names[18:]
    sim.split(left, right)
    qid = sim.query("n1", "echo", b"", timeout=3.0)
    sim.run_for(4.0)
    assert {a.node for a in sim.answers[("n1", qid)]} == set(left)
    assert sim.done[("n1", qid)].responses == len(left)
    sim.heal()
    sim.run_for(40.0)  # members failed across the cut rejoin through Serf's reconnect
    qid = sim.query("n1", "echo", b"", timeout=5.0)
    sim.run_for(6.0)
    assert {a.node for a in sim.answers[("n1", qid)]} == set(names)


def test_a_large_answer_travels_over_tcp() -> None:
    sim = Simulator(seed=4, latency=LATENCY, wire=True)
    names = sim.converged_pool(5)
    for n in names:
        sim.nodes[n].handlers["big"] = lambda q: b"x" * 20_000
    sim.run_for(1.0)
    qid = sim.query("n0", "big", timeout=3.0)
    sim.run_for(4.0)
    assert sorted(len(a.payload) for a in sim.answers[("n0", qid)]) == [20_000] * 5
    assert all(sim.nodes[n].core.stats["query_responses_failed"] == 0 for n in names)


def _node(name: str = "a") -> GossipNode:
    return GossipNode(name, Address("10.0.0.1", 8301), now=0.0, rng=random.Random(1), config=GossipConfig())


def test_responses_are_refused_as_serf_refuses_them() -> None:
    node = _node()
    qid = node.query(0.0, "q", b"", timeout=1.0)
    (event,) = node.take_queries()
    assert isinstance(event, QueryEvent) and event.deadline == pytest.approx(1.0)
    with pytest.raises(QueryError, match="past the deadline"):
        node.respond(1.5, qid, "a", b"late")
    qid = node.query(2.0, "q", b"", timeout=1.0)
    node.take_queries()
    node.respond(2.1, qid, "a", b"once")
    with pytest.raises(QueryError, match="already sent"):
        node.respond(2.2, qid, "a", b"twice")
    with pytest.raises(QueryError, match="exceeds limit"):
        node.query(3.0, "q", b"x" * (MAX_QUERY_PAYLOAD_BYTES + 1))


def test_pending_queries_and_remembered_ids_are_bounded() -> None:
    node = _node()
    for _ in range(MAX_PENDING_QUERIES):
        node.query(0.0, "q", timeout=5.0)
    with pytest.raises(QueryError, match="too many queries"):
        node.query(0.0, "q")
    node.tick(6.0)
    assert node.pending_queries == 0
    done = node.take_query_results()
    assert len(done) == MAX_PENDING_QUERIES and all(isinstance(d, QueryDone) for d in done)
    other = Address("10.0.0.2", 8301)
    for i in range(MAX_SEEN_QUERIES + 100):
        node.receive(7.0, [Query(i, "q", b"", "b", other, 1000)])
    assert len(node._seen_queries) <= MAX_SEEN_QUERIES  # noqa: SLF001
    node.receive(7.0, [Query(MAX_SEEN_QUERIES + 99, "q", b"", "b", other, 1000)])
    assert node.stats["queries_duplicate"] == 1


def test_answers_to_unknown_queries_are_dropped() -> None:
    node = _node()
    node.receive(0.0, [QueryResponse(99, "b", False, b"x")])
    assert node.take_query_results() == []
    assert node.stats["query_responses_late"] == 1


def test_query_wire_round_trip_and_bounds() -> None:
    q = Query(7, "_serf_list-keys", b"\x01", "a", Address("10.0.0.1", 8301), 3200, True, ("b",), {"role": "x"}, 2)
    r = QueryResponse(7, "b", False, b"answer")
    relay = Relay(Address("10.0.0.1", 8301), r)
    packet = encode_packet([encode_message(m) for m in (q, r, relay)])
    assert decode_packet(packet) == [q, r, relay]
    assert decode_stream(encode_stream(QueryResponse(7, "b", False, b"y" * 50_000))).payload == b"y" * 50_000
    bad = [
        Query(7, "q", b"x" * (MAX_QUERY_PAYLOAD_BYTES + 1), "a", Address("10.0.0.1", 1), 1),
        Query(7, "q", b"", "a", Address("10.0.0.1", 1), 0),
        Query(7, "q", b"", "a", Address("10.0.0.1", 1), 10, relay_factor=9),
        QueryResponse(7, "b", False, b"y" * 2000),  # larger than a packet's payload bound: TCP only
    ]
    for msg in bad:
        with pytest.raises(MessageDecodeError):
            decode_packet(encode_packet([encode_message(msg)]))
    with pytest.raises(MessageDecodeError):
        decode_stream(encode_stream(q))  # type: ignore[arg-type]
