"""The pure gossip core: memberlist's formulas, the broadcast queue, the suspicion timer, purity, and the
protocol's rules exercised message by message."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest

from registry.gossip.broadcast import BroadcastQueue
from registry.gossip.config import GossipConfig, push_pull_interval, retransmit_limit, suspicion_timeout
from registry.gossip.core import EventKind, GossipNode, Packet, StreamRequest
from registry.gossip.messages import (
    Ack,
    Address,
    Alive,
    Dead,
    IndirectPing,
    MemberState,
    Nack,
    Ping,
    PushPull,
    PushState,
    Suspect,
)
from registry.gossip.suspicion import Suspicion, remaining_suspicion_time

ROOT = Path(__file__).resolve().parents[2]
PURE = ["registry/gossip/core.py", "registry/gossip/messages.py", "registry/gossip/broadcast.py",
        "registry/gossip/suspicion.py", "registry/gossip/config.py", "registry/gossip/codec.py",
        "registry/coordinate.py"]  # fmt: skip
FORBIDDEN = {"asyncio", "socket", "time", "threading", "os", "selectors", "subprocess", "signal", "datetime"}


@pytest.mark.parametrize("path", PURE)
def test_the_core_is_pure(path: str) -> None:
    tree = ast.parse((ROOT / path).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
            if node.module.startswith("registry."):
                assert node.module.startswith(("registry.gossip", "registry.coordinate")), node.module
    assert not imported & FORBIDDEN
    # Randomness only from the injected generator: the module-level functions of ``random`` are never used.
    uses = {n.attr for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "random"}  # fmt: skip
    assert uses <= {"Random"}, uses


# -- memberlist's formulas (its util_test.go and suspicion_test.go vectors) ---------------------------


@pytest.mark.parametrize(("n", "expected"), [(5, 1.0), (10, 1.0), (50, 1.698), (100, 2.0), (500, 2.698), (1000, 3.0)])
def test_suspicion_timeout(n: int, expected: float) -> None:
    assert suspicion_timeout(3, n, 1.0) / 3 == pytest.approx(expected, abs=1e-3)


def test_retransmit_limit() -> None:
    assert [retransmit_limit(3, n) for n in (0, 1, 99)] == [0, 3, 6]
    assert retransmit_limit(4, 1000) == 16


def test_push_pull_scale() -> None:
    assert all(push_pull_interval(1.0, n) == 1.0 for n in range(33))
    assert all(push_pull_interval(1.0, n) == 2.0 for n in range(33, 65))
    assert all(push_pull_interval(1.0, n) == 3.0 for n in range(65, 129))
    assert push_pull_interval(30.0, 10_000) == 30.0 * 10


@pytest.mark.parametrize(
    ("n", "k", "elapsed", "expected"),
    [(0, 3, 0, 30), (1, 3, 2, 14), (2, 3, 3, 4.81), (3, 3, 4, -2), (4, 3, 5, -3), (5, 3, 10, -8)],
)
def test_remaining_suspicion_time(n: int, k: int, elapsed: float, expected: float) -> None:
    assert remaining_suspicion_time(n, k, elapsed, 2.0, 30.0) == pytest.approx(expected, abs=1e-9)


def test_suspicion_timer_shrinks_with_independent_confirmations_only() -> None:
    s = Suspicion.begin("me", 0.0, 3, 0.5, 2.0)
    assert s.deadline == 2.0
    assert not s.confirm("me", 0.1)  # the accuser itself does not count again
    assert s.confirm("foo", 0.1) and s.deadline == pytest.approx(1.25)
    assert not s.confirm("foo", 0.2)
    assert s.confirm("bar", 0.2) and s.confirm("baz", 0.3)
    assert s.deadline == pytest.approx(0.5)
    assert not s.confirm("qux", 0.4)  # k reached: nothing more to learn
    assert Suspicion.begin("me", 10.0, 0, 0.5, 2.0).deadline == 10.5  # no confirmations expected: the minimum


def test_the_suspicion_cap_and_memberlist_exactly() -> None:
    ours, theirs = GossipConfig(), GossipConfig.memberlist_lan()
    assert theirs.suspicion_min(10_000) == pytest.approx(16.0)
    assert ours.suspicion_min(10_000) == ours.suspicion_timeout_cap
    assert ours.suspicion_min(3) == theirs.suspicion_min(3) == 4.0
    # The halved probe interval keeps the suspicion's 4 s in small pools (memberlist's formula would halve it).
    assert (ours.probe_interval, ours.probe_timeout) == (0.5, 0.25)
    assert (theirs.probe_interval, theirs.probe_timeout) == (1.0, 0.5)
    assert ours.suspicion_min(5) == 4.0
    with pytest.raises(ValueError, match="probe_timeout"):
        GossipConfig(probe_timeout=1.0)


# -- the broadcast queue -----------------------------------------------------------------------------


def test_queue_sends_least_transmitted_first_newest_first_and_retires_at_the_limit() -> None:
    q = BroadcastQueue()
    for i in range(3):
        q.queue(f"n{i}", Suspect(1, f"n{i}", "me"), 10)
    assert [m.node for m in q.take(25, 0, 2)] == ["n2", "n1"]  # newest first; n0 did not fit
    assert [m.node for m in q.take(25, 0, 2)] == ["n0", "n2"]  # n0 has the fewest transmits
    assert [m.node for m in q.take(100, 0, 2)] == ["n1", "n0"]  # n2 retired after 2
    assert len(q) == 0


def _reference_take(queued: dict[str, list[int]], budget: int, limit: int) -> list[str]:
    """The queue's contract, stated plainly: every queued broadcast ordered by (transmits, newest first),
    taken while it fits; a taken one counts a transmit and retires at the limit. ``queued``: node ->
    [transmits, serial, size]."""
    out, used = [], 0
    for node, (_, _, size) in sorted(queued.items(), key=lambda kv: (kv[1][0], -kv[1][1])):
        if used + size <= budget:
            used += size
            out.append(node)
        if budget - used <= 8:
            break
    for node in out:
        queued[node][0] += 1
        if queued[node][0] >= limit:
            del queued[node]
    return out


def test_queue_takes_what_the_plain_contract_says_over_random_operations() -> None:
    rng = random.Random(7)
    q = BroadcastQueue()
    model: dict[str, list[int]] = {}
    serial = 0
    for _ in range(3000):
        if rng.random() < 0.5:
            node = f"n{rng.randrange(300)}"
            serial += 1
            model[node] = [0, serial, 20]
            q.queue(node, Suspect(serial, node, "me"), 20)
        else:
            budget = rng.choice((25, 100, 400, 1400))
            assert [m.node for m in q.take(budget, 0, 6)] == _reference_take(model, budget, 6)
        assert len(q) == len(model)


def test_queue_take_costs_the_packet_not_the_queue() -> None:
    """A pool of 10,000 that has just joined queues 10,000 alive messages: each packet takes the few that fit
    without walking (or sorting) the rest."""
    q = BroadcastQueue()
    for i in range(10_000):
        q.queue(f"n{i}", Suspect(1, f"n{i}", "me"), 40)
    calls = 0
    original = sorted

    def counting_sorted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        nonlocal calls
        calls += 1
        return original(*args, **kwargs)

    import registry.gossip.broadcast as broadcast

    broadcast.sorted = counting_sorted  # type: ignore[attr-defined]
    try:
        taken = [m.node for _ in range(250) for m in q.take(1400, 0, 20)]
    finally:
        del broadcast.sorted  # type: ignore[attr-defined]
    assert len(taken) == len(set(taken)) == 250 * 35  # 35 of 40 bytes fill 1,400; newest first, none twice
    assert taken[0] == "n9999"
    assert calls == 250  # one sort of the bucket numbers per packet; no bucket was re-sorted


def test_queue_news_about_a_node_replaces_the_old() -> None:
    q = BroadcastQueue()
    done = []
    q.queue("n1", Suspect(1, "n1", "me"), 10, lambda: done.append("suspect"))
    q.queue("n1", Alive(2, "n1", Address("10.0.0.1", 1), {}), 10)
    assert done == ["suspect"]
    assert q.take(100, 0, 4) == [Alive(2, "n1", Address("10.0.0.1", 1), {})]


# -- the protocol, message by message ----------------------------------------------------------------

ADDR = {name: Address("10.0.0.%d" % (i + 1), 8301) for i, name in enumerate("abcdefgh")}  # noqa: UP031


def _node(name: str, now: float = 0.0, **config) -> GossipNode:
    return GossipNode(name, ADDR[name], now=now, rng=random.Random(name), config=GossipConfig(**config))


def _know(node: GossipNode, *names: str) -> None:
    for n in names:
        node.receive(node._now, [Alive(1, n, ADDR[n], {"role": "node"})])  # noqa: SLF001
    node.take_outbox()
    node.take_events()


def _packets(node: GossipNode) -> list[Packet]:
    return [o for o in node.take_outbox() if isinstance(o, Packet)]


def _run(node: GossipNode, until: float) -> None:
    while node.next_deadline() <= until:
        node.tick(node.next_deadline())


def _probe(node: GossipNode) -> tuple[Ping, list[Packet]]:
    """Run timers until a probe goes out; returns its ping and the packets sent meanwhile."""
    packets: list[Packet] = []
    while node._probe is None:  # noqa: SLF001
        node.tick(node.next_deadline())
        packets += _packets(node)
    pings = [m for p in packets for m in p.messages if isinstance(m, Ping)]
    return pings[-1], packets


def _probe_timeout(node: GossipNode) -> list:
    p = node._probe  # noqa: SLF001
    assert p is not None
    _run(node, p.timeout_at)
    return node.take_outbox()


def test_a_new_member_is_a_join_then_tags_change_is_an_update() -> None:
    a = _node("a")
    a.take_events()
    a.receive(0.0, [Alive(1, "b", ADDR["b"], {"role": "node"})])
    a.receive(0.0, [Alive(1, "b", ADDR["b"], {"role": "node"})])  # old news: nothing
    a.receive(0.0, [Alive(2, "b", ADDR["b"], {"role": "consul"})])
    assert [(e.kind, e.member.tags["role"]) for e in a.take_events()] == [
        (EventKind.JOIN, "node"), (EventKind.UPDATE, "consul")]  # fmt: skip


def test_ping_is_answered_with_the_ack_payload_and_only_for_our_name() -> None:
    b = _node("b")
    b.set_ack_payload(b"coord")
    b.receive(0.0, [Ping(7, "b", "a", ADDR["a"]), Ping(8, "zz", "a", ADDR["a"])])
    acks = [m for p in _packets(b) for m in p.messages if isinstance(m, Ack)]
    assert acks == [Ack(7, b"coord")]


def test_a_silent_target_gets_indirect_probes_then_tcp_then_suspicion() -> None:
    a = _node("a")
    _know(a, "b", "c", "d", "e")
    ping, _ = _probe(a)
    target = ping.target
    out = _probe_timeout(a)
    indirect = [m for o in out if isinstance(o, Packet) for m in o.messages if isinstance(m, IndirectPing)]
    assert len(indirect) == 3 and {m.target for m in indirect} == {target} and all(m.nack for m in indirect)
    tcp = [o for o in out if isinstance(o, StreamRequest)]
    assert len(tcp) == 1 and tcp[0].message == Ping(ping.seq, target, "a", ADDR["a"])
    a.receive(a._now, [Nack(ping.seq)])  # noqa: SLF001 - one helper is healthy, two are silent
    a.stream_response(a._now, tcp[0].token, None)  # noqa: SLF001
    _run(a, a._now + 0.5)  # noqa: SLF001
    assert a.member(target).state is MemberState.SUSPECT
    assert [e.kind for e in a.take_events()] == [EventKind.SUSPECT]
    assert a.health_score == 2  # Lifeguard: two nacks missed


def test_an_indirect_ack_or_a_tcp_ack_saves_the_target() -> None:
    for via in ("indirect", "tcp"):
        a = _node("a")
        _know(a, "b", "c", "d", "e")
        ping, _ = _probe(a)
        tcp = next(o for o in _probe_timeout(a) if isinstance(o, StreamRequest))
        if via == "indirect":
            a.receive(a._now, [Ack(ping.seq)])  # noqa: SLF001
        else:
            a.stream_response(a._now, tcp.token, Ack(ping.seq))  # noqa: SLF001
        _run(a, a._now + 0.6)  # noqa: SLF001
        assert a.member(ping.target).state is MemberState.ALIVE, via
        assert a.take_pings() == []  # only a direct ack measures a round trip


def test_the_helper_forwards_the_ack_or_sends_a_nack() -> None:
    c = _node("c")
    c.receive(0.0, [IndirectPing(41, "b", ADDR["b"], True, "a", ADDR["a"])])
    (probe,) = [m for p in _packets(c) for m in p.messages if isinstance(m, Ping)]
    assert probe.target == "b"
    c.receive(0.1, [Ack(probe.seq)])
    assert [(p.to, m) for p in _packets(c) for m in p.messages if isinstance(m, Ack)] == [(ADDR["a"], Ack(41))]
    c.receive(1.0, [IndirectPing(42, "b", ADDR["b"], True, "a", ADDR["a"])])
    c.take_outbox()
    _run(c, 1.6)
    assert [m for p in _packets(c) for m in p.messages if isinstance(m, Nack)] == [Nack(42)]


def test_the_prober_of_a_suspect_tells_it_so() -> None:
    a = _node("a")
    _know(a, "b")
    a.receive(0.0, [Suspect(1, "b", "c")])
    a.take_outbox()
    _, packets = _probe(a)
    (packet,) = [p for p in packets if any(isinstance(m, Ping) for m in p.messages)]
    assert packet.to == ADDR["b"] and Suspect(1, "b", "a") in packet.messages


def test_a_suspect_refutes_with_a_higher_incarnation_and_pays_in_health() -> None:
    b = _node("b")
    b.receive(0.0, [Suspect(1, "b", "a")])
    assert b.incarnation == 2 and b.health_score == 1
    b.receive(0.0, [Dead(5, "b", "a")])
    assert b.incarnation == 6 and b.local_member.state is MemberState.ALIVE
    alive = [m for p in b.take_outbox() if isinstance(p, Packet) for m in p.messages if isinstance(m, Alive)]
    assert b._queue  # noqa: SLF001 - the refutation is queued for gossip
    assert not alive or alive[-1].incarnation == 6


def test_suspicion_then_refutation_is_an_alive_event_and_an_old_suspicion_is_ignored() -> None:
    a = _node("a")
    _know(a, "b", "c", "d", "e")
    a.receive(1.0, [Suspect(1, "b", "c")])
    a.receive(1.1, [Alive(2, "b", ADDR["b"], {"role": "node"})])
    a.receive(1.2, [Suspect(1, "b", "d")])
    assert a.member("b").state is MemberState.ALIVE
    kinds = [e.kind for e in a.take_events() if e.member.name == "b"]
    assert kinds == [EventKind.SUSPECT, EventKind.ALIVE]


def test_unconfirmed_suspicion_waits_the_long_timeout_and_confirmations_shorten_it() -> None:
    for confirm in (False, True):
        a = _node("a", probe_interval=1000.0, probe_timeout=999.0)  # no probing of our own in the way
        _know(a, "b", "c", "d", "e", "f")
        a.receive(0.0, [Suspect(1, "b", "c")])
        if confirm:
            a.receive(0.5, [Suspect(1, "b", "d"), Suspect(1, "b", "e")])
        lo = a.config.suspicion_min(6)
        _run(a, lo + 0.01)
        state = a.member("b").state
        assert state is (MemberState.DEAD if confirm else MemberState.SUSPECT), confirm
        if not confirm:
            _run(a, a.config.suspicion_max_timeout_mult * lo + 0.01)
            assert a.member("b").state is MemberState.DEAD


def test_leave_is_a_dead_from_self_with_the_left_flag() -> None:
    a, b = _node("a"), _node("b")
    _know(a, "b")
    a.leave(1.0)
    dead = [m for p in _packets(a) for m in p.messages if isinstance(m, Dead)]
    assert dead == [Dead(1, "a", "a", True)]
    _know(b, "a")
    b.receive(1.1, dead)
    assert b.member("a").state is MemberState.LEFT
    assert [e.kind for e in b.take_events()] == [EventKind.LEFT]
    # A dead message about a member sent by someone else is a failure, whatever its flag says.
    c = _node("c")
    _know(c, "b")
    c.receive(0.0, [Dead(1, "b", "a", True)])
    assert c.member("b").state is MemberState.DEAD


def test_push_pull_merges_dead_only_as_suspicion() -> None:
    a, b = _node("a"), _node("b")
    _know(a, "c")
    _know(b, "c")
    b.receive(0.0, [Dead(1, "c", "b")])
    reply = a.handle_stream(0.1, PushPull(False, "b", tuple(b._local_states())))  # noqa: SLF001
    assert isinstance(reply, PushPull) and {s.name for s in reply.states} == {"a", "c"}
    assert a.member("c").state is MemberState.SUSPECT
    assert a.member("b").state is MemberState.ALIVE


def test_a_stall_abandons_the_probe_and_postpones_suspicions() -> None:
    a = _node("a", stall_tolerance=0.5)
    _know(a, "b", "c", "d")
    a.receive(0.0, [Suspect(1, "c", "b")])
    deadline = a._suspicions["c"].deadline  # noqa: SLF001
    _probe(a)  # a probe goes out...
    assert a._probe is not None  # noqa: SLF001
    a.receive(a._now + 3.0, [])  # noqa: SLF001 - ...and the process stops for 3 s
    assert a._probe is None and a.stats["stalls"] == 1  # noqa: SLF001
    assert a._suspicions["c"].deadline > deadline + 2.0  # noqa: SLF001
    assert all(e.kind is not EventKind.SUSPECT or e.member.name == "c" for e in a.take_events())


def test_an_address_conflict_is_refused_until_the_old_member_is_gone() -> None:
    a = _node("a")
    _know(a, "b")
    other = Address("10.9.9.9", 8301)
    a.receive(1.0, [Alive(5, "b", other, {})])
    assert a.member("b").addr == ADDR["b"] and a.stats["address_conflicts"] == 1
    a.receive(2.0, [Dead(1, "b", "b", True)])
    a.receive(3.0, [Alive(5, "b", other, {})])
    assert a.member("b").addr == other and a.member("b").state is MemberState.ALIVE


def test_force_leave_turns_a_failed_member_left_everywhere_and_prune_forgets_it() -> None:
    """Serf's RemoveFailedNode: a failed member becomes left, gossiped as its own leave, which a member that
    also has it failed takes; an alive member is left alone; ``prune`` forgets it; an unknown name is
    reported."""
    # Probing at memberlist's 1 s: b, never answering here, must not be suspected before 2 s.
    a, b = _node("a", probe_interval=1.0, probe_timeout=0.5), _node("b", probe_interval=1.0, probe_timeout=0.5)
    _know(a, "b", "c")
    _know(b, "a", "c")
    for n in (a, b):
        n.receive(0.0, [Dead(1, "c", "a")])
        n.take_events()
        n.take_outbox()
    assert a.force_leave(1.0, "c")
    assert a.member("c").state is MemberState.LEFT
    assert [e.kind for e in a.take_events()] == [EventKind.LEFT]
    _run(a, 1.5)
    leave = [m for p in _packets(a) for m in p.messages if isinstance(m, Dead) and m.node == "c"]
    assert leave and leave[0].left and leave[0].source == "c"
    b.receive(1.5, leave[:1])
    assert b.member("c").state is MemberState.LEFT and [e.kind for e in b.take_events()] == [EventKind.LEFT]
    # An alive member is left alone; prune forgets a left one (a reap event); no such member: False.
    assert a.force_leave(2.0, "b", prune=True) and a.member("b").state is MemberState.ALIVE
    assert a.force_leave(2.0, "c", prune=True) and a.member("c") is None
    assert [e.kind for e in a.take_events()] == [EventKind.REAP]
    assert not a.force_leave(2.0, "nobody")


def _pool_member(i: int) -> PushState:
    return PushState(f"m{i}", Address(f"10.1.{i >> 8}.{i & 255}", 8301), {"role": "node"}, 1, MemberState.ALIVE)


def test_a_large_pool_answers_a_join_with_a_sample_and_the_joiner_syncs_with_a_random_member() -> None:
    """A join into a pool of more than 2 x join_sample: the seed answers with itself and join_sample random
    live members (not its whole list: every join through a server cost the server the whole list); the
    joiner learns them, then exchanges full state once with a random member other than the seed, whose
    answer is the whole list."""
    seed = GossipNode("seed", Address("10.0.0.1", 8301), now=0.0, rng=random.Random(1), config=GossipConfig())
    everyone = tuple(_pool_member(i) for i in range(200))
    seed.handle_stream(0.0, PushPull(False, "m0", everyone))
    assert seed.num_live == 201
    joiner = GossipNode("joiner", Address("10.0.0.2", 8301), now=0.0, rng=random.Random(2), config=GossipConfig())
    (token,) = joiner.join(0.1, [seed.addr])
    (request,) = [o for o in joiner.take_outbox() if isinstance(o, StreamRequest)]
    assert isinstance(request.message, PushPull) and request.message.join
    answer = seed.handle_stream(0.1, request.message)
    assert isinstance(answer, PushPull) and len(answer.states) == 33 and answer.states[0].name == "seed"
    assert len({s.name for s in answer.states}) == 33 and seed.stats["joins_sampled"] == 1
    assert seed.member("joiner") is not None  # the seed learned the joiner all the same
    assert joiner.stream_response(0.2, token, answer) is True and joiner.num_live == 34
    (sync,) = [o for o in joiner.take_outbox() if isinstance(o, StreamRequest)]
    assert isinstance(sync.message, PushPull) and not sync.message.join and sync.to != seed.addr
    assert joiner.stats["join_syncs"] == 1
    # The member it syncs with answers with everything (not a join), and the joiner knows the whole pool.
    target = next(st for st in everyone if st.addr == sync.to)
    peer = GossipNode(target.name, sync.to, now=0.0, rng=random.Random(3), config=GossipConfig())
    peer.handle_stream(0.0, PushPull(False, "seed", (*(st for st in everyone if st is not target), answer.states[0])))
    full = peer.handle_stream(0.3, sync.message)
    assert isinstance(full, PushPull) and len(full.states) == 201  # itself, the 199 others, the seed
    assert joiner.stream_response(0.3, sync.token, full) is True
    assert joiner.num_live == 202  # the 200, the seed and itself
    # A second seed answering the same join does not start a second full exchange.
    (token2,) = joiner.join(0.4, [seed.addr])
    joiner.take_outbox()
    assert joiner.stream_response(0.5, token2, seed.handle_stream(0.5, PushPull(True, "joiner", ()))) is True
    assert not [o for o in joiner.take_outbox() if isinstance(o, StreamRequest)]


def test_a_small_pool_and_join_sample_0_answer_a_join_with_everything() -> None:
    for pool, config in ((40, GossipConfig()), (200, GossipConfig(join_sample=0))):
        seed = GossipNode("seed", Address("10.0.0.1", 8301), now=0.0, rng=random.Random(1), config=config)
        seed.handle_stream(0.0, PushPull(False, "m0", tuple(_pool_member(i) for i in range(pool))))
        answer = seed.handle_stream(0.1, PushPull(True, "joiner", ()))
        assert isinstance(answer, PushPull) and len(answer.states) == pool + 1
    with pytest.raises(ValueError, match="join_sample"):
        GossipConfig(join_sample=-1)
