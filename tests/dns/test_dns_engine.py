"""The engine without sockets: the answer cache (keys, dependencies, invalidation, bounds) and the
per-query ordering of SRV answers by weight."""

from __future__ import annotations

import random
from typing import Any

import pytest
from dnslib import QTYPE, DNSRecord
from dnstest import Catalog, query

from dns.config import DNSConfig
from dns.engine import Engine, Forward


def answer(engine: Engine, packet: bytes, tcp: bool = False, now: float = 1000.0) -> DNSRecord:
    out = engine.handle(packet, tcp, now)
    assert isinstance(out, bytes)
    return DNSRecord.parse(out)


@pytest.fixture
def cat() -> Catalog:
    c = Catalog()
    c.register("n1", "10.0.0.1", "web")
    c.register("n2", "10.0.0.2", "web")
    c.register("n3", "10.0.0.3", "db", status="passing")
    return c


def engine_for(cat: Catalog, **cfg: Any) -> Engine:
    return Engine(DNSConfig(**cfg), lambda: cat.store, random.Random(7))


def test_a_hot_name_is_answered_from_the_cache_with_the_right_id(cat: Catalog) -> None:
    eng = engine_for(cat)
    first = answer(eng, query("web.service.consul", qid=1))
    assert eng.stats["misses"] == 1
    for qid in (2, 65535, 0):
        resp = answer(eng, query("web.service.consul", qid=qid))
        assert resp.header.id == qid
        assert sorted(map(str, (rr.rdata for rr in resp.rr))) == sorted(map(str, (rr.rdata for rr in first.rr)))
    assert eng.stats["misses"] == 1 and eng.stats["hits"] == 3


def test_edns_and_flags_change_the_response_not_the_answer(cat: Catalog) -> None:
    eng = engine_for(cat)
    plain = answer(eng, query("db.service.consul"))
    with_edns = answer(eng, query("db.service.consul", edns=1232))
    assert not [rr for rr in plain.ar if rr.rtype == QTYPE.OPT]
    assert [rr.rclass for rr in with_edns.ar if rr.rtype == QTYPE.OPT] == [1232]
    q = DNSRecord.question("db.service.consul")
    q.header.rd = 0
    assert answer(eng, bytes(q.pack())).header.rd == 0 and plain.header.rd == 1
    assert eng.stats["misses"] == 1  # one answer built, three differently shaped responses


def test_writes_elsewhere_do_not_evict(cat: Catalog) -> None:
    eng = engine_for(cat)
    answer(eng, query("web.service.consul"))
    cat.register("n9", "10.0.0.9", "other")  # another service
    cat.set_status("n3", "db", "warning")  # health churn on another service
    cat.register("n8", "10.0.0.8")  # a new node
    answer(eng, query("web.service.consul"))
    assert eng.stats["misses"] == 1


def test_writes_to_the_name_rebuild_it(cat: Catalog) -> None:
    eng = engine_for(cat)
    assert len(answer(eng, query("db.service.consul")).rr) == 1
    cat.set_status("n3", "db", "critical")
    assert answer(eng, query("db.service.consul")).header.rcode == 3
    cat.set_status("n3", "db", "passing")
    assert len(answer(eng, query("db.service.consul")).rr) == 1
    cat.register("n3", "10.0.0.33")  # the node's address
    assert [str(rr.rdata) for rr in answer(eng, query("db.service.consul")).rr] == ["10.0.0.33"]
    assert [str(rr.rdata) for rr in answer(eng, query("n3.node.consul")).rr] == ["10.0.0.33"]


def test_negative_answers_turn_positive(cat: Catalog) -> None:
    eng = engine_for(cat)
    assert answer(eng, query("api.service.consul")).header.rcode == 3
    assert answer(eng, query("newnode.node.consul")).header.rcode == 3
    cat.register("newnode", "10.0.0.5", "API")  # a different case: DNS names are case-insensitive
    assert [str(rr.rdata) for rr in answer(eng, query("api.service.consul")).rr] == ["10.0.0.5"]
    assert [str(rr.rdata) for rr in answer(eng, query("newnode.node.consul")).rr] == ["10.0.0.5"]
    # and a case variant of a cached positive answer joins it
    cat.register("n7", "10.0.0.7", "Web")
    assert len(answer(eng, query("web.service.consul", "A")).rr) == 3


def test_a_replaced_store_drops_everything(cat: Catalog) -> None:
    holder = {"store": cat.store}
    eng = Engine(DNSConfig(), lambda: holder["store"], random.Random(1))
    assert len(answer(eng, query("web.service.consul")).rr) == 2
    restored = Catalog()
    restored.register("r1", "10.9.9.9", "web")
    restored.store.index = cat.store.index  # a restore can land on the same index: identity decides
    holder["store"] = restored.store
    assert [str(rr.rdata) for rr in answer(eng, query("web.service.consul")).rr] == ["10.9.9.9"]


def test_answers_expire_after_max_age(cat: Catalog) -> None:
    eng = engine_for(cat)
    answer(eng, query("db.service.consul"), now=1000.0)
    answer(eng, query("db.service.consul"), now=1009.0)
    assert eng.stats["misses"] == 1
    resp = answer(eng, query("nosuch.service.consul"), now=1011.0)
    assert resp.auth[0].rdata.times[0] == 1011  # SOA serial: the time the answer was built
    answer(eng, query("db.service.consul"), now=1011.0)
    assert eng.stats["misses"] == 3


def test_caches_are_bounded(cat: Catalog) -> None:
    eng = Engine(DNSConfig(), lambda: cat.store, random.Random(1), max_answers=10, max_packets=20)
    for i in range(200):
        answer(eng, query(f"name{i}.service.consul", qid=i))
    assert len(eng._answers) <= 10 and len(eng._udp) <= 20
    assert len(answer(eng, query("web.service.consul")).rr) == 2


def test_forwarding_decision(cat: Catalog) -> None:
    eng = engine_for(cat)
    assert answer(eng, query("example.com")).header.rcode == 5  # REFUSED: no recursors
    from dns.config import parse_recursor

    eng = Engine(DNSConfig(recursors=(parse_recursor("127.0.0.1:5399"),)), lambda: cat.store, random.Random(1))
    out = eng.handle(query("example.com", qid=77), False, 1000.0)
    assert isinstance(out, Forward) and out.qid == 77 and out.max_size == 512
    again = eng.handle(query("example.com", qid=78), False, 1000.0)  # same bytes but the ID: cached parse
    assert isinstance(again, Forward) and again.qid == 78
    assert DNSRecord.parse(Engine.servfail(again)).header.id == 78
    assert answer(eng, query("db.service.consul")).header.ra == 1


# ---------------------------------------------------------------------- SRV weights (RFC 2782)


def rfc2782_pick(records: list[Any], rng: random.Random) -> Any:
    """The client side of RFC 2782 for one priority: zero weights first, running sums, a uniform draw."""
    ordered = sorted(records, key=lambda r: r.rdata.weight != 0)
    total = sum(r.rdata.weight for r in ordered)
    draw = rng.randint(0, total)
    running = 0
    for r in ordered:
        running += r.rdata.weight
        if running >= draw:
            return r
    return ordered[-1]


def shares(eng: Engine, packet: bytes, tcp: bool, n: int, first_only: bool = False) -> dict[str, float]:
    rng = random.Random(99)
    counts: dict[str, int] = {}
    for _ in range(n):
        resp = answer(eng, packet, tcp=tcp)
        chosen = resp.rr[0] if first_only else rfc2782_pick(resp.rr, rng)
        target = str(chosen.rdata.target)
        counts[target] = counts.get(target, 0) + 1
    return {k: v / n for k, v in counts.items()}


@pytest.fixture
def weighted() -> Catalog:
    c = Catalog()
    c.register("heavy", "10.0.0.1", "api", weights=(100, 1))
    for i in range(9):
        c.register(f"light{i}", f"10.0.1.{i}", "api", weights=(1, 1))
    return c


def test_srv_answers_carry_the_configured_weights(weighted: Catalog) -> None:
    eng = engine_for(weighted)
    resp = answer(eng, query("api.service.consul", "SRV"), tcp=True)
    assert sorted(rr.rdata.weight for rr in resp.rr) == [1] * 9 + [100]
    weighted.register("heavy", "10.0.0.1", "api", weights=(100, 7), status="warning")
    resp = answer(eng, query("api.service.consul", "SRV"), tcp=True)
    assert sorted(rr.rdata.weight for rr in resp.rr) == [1] * 9 + [7]


@pytest.mark.parametrize("first_only", [False, True], ids=["rfc2782-client", "first-record-client"])
def test_weighted_clients_spread_load_as_the_weights_say(weighted: Catalog, first_only: bool) -> None:
    """Over TCP every record comes back; over UDP without EDNS only three do (udp_answer_limit). Either way
    the heavy instance gets 100/109 of the picks, for an RFC 2782 client and for one that takes the first
    record. (Taking the first three of a weighted order would give it ~98%; of a uniform shuffle ~30%.)"""
    eng = engine_for(weighted)
    packet = query("api.service.consul", "SRV")
    for tcp in (True, False):
        got = shares(eng, packet, tcp=tcp, n=4000, first_only=first_only)
        # 4000 picks: the standard error of the heavy share is 0.0044
        assert got["heavy.node.dc1.consul."] == pytest.approx(100 / 109, abs=0.015), (tcp, got)
        light = [v for k, v in got.items() if k.startswith("light")]
        assert sum(light) == pytest.approx(9 / 109, abs=0.015)
    for _ in range(300):  # and every capped answer names three distinct instances to fail over to
        capped = answer(eng, packet, tcp=False)
        assert len({str(rr.rdata.target) for rr in capped.rr}) == len(capped.rr) == 3


def test_a_answers_are_shuffled_uniformly(weighted: Catalog) -> None:
    eng = engine_for(weighted)
    firsts: dict[str, int] = {}
    for _ in range(3000):
        first = str(answer(eng, query("api.service.consul"), tcp=True).rr[0].rdata)
        firsts[first] = firsts.get(first, 0) + 1
    assert len(firsts) == 10
    assert all(abs(v / 3000 - 0.1) < 0.03 for v in firsts.values())


def test_small_answers_rendered_once_keep_their_distribution() -> None:
    """Up to five records, every order is rendered once and each query picks one: uniformly for A, by
    weight for SRV (a first-record client sees weight/total)."""
    c = Catalog()
    for i, w in enumerate((6, 3, 1)):
        c.register(f"n{i}", f"10.0.0.{i + 1}", "api", weights=(w, 1))
    eng = engine_for(c)
    packet = query("api.service.consul", "SRV")
    firsts: dict[str, int] = {}
    for _ in range(6000):
        first = str(answer(eng, packet).rr[0].rdata.target)
        firsts[first] = firsts.get(first, 0) + 1
    assert eng._udp[packet[2:]].tails is not None  # served from the rendered list
    for i, w in enumerate((6, 3, 1)):
        assert firsts[f"n{i}.node.dc1.consul."] / 6000 == pytest.approx(w / 10, abs=0.02)
    orders: dict[tuple[str, ...], int] = {}
    for _ in range(3000):
        order = tuple(str(rr.rdata) for rr in answer(eng, query("api.service.consul")).rr)
        orders[order] = orders.get(order, 0) + 1
    assert len(orders) == 6 and all(abs(v / 3000 - 1 / 6) < 0.03 for v in orders.values())


def test_big_answers_are_rebuilt_at_a_bounded_rate() -> None:
    """A 500-instance answer whose health keeps changing is served stale for at most 10 ms (20 us per record)
    after a rebuild; small answers never are (see test_writes_to_the_name_rebuild_it, at a constant clock)."""
    c = Catalog()
    for i in range(500):
        c.register(f"n{i}", f"10.{i // 250}.{i % 250}.1", "big", status="passing")
    eng = engine_for(c)
    packet = query("big.service.consul", "A")
    assert len(answer(eng, packet, tcp=True, now=100.0).rr) == 500
    c.set_status("n1", "big", "critical")
    assert len(answer(eng, packet, tcp=True, now=100.005).rr) == 500  # within the grace: the last build
    assert len(answer(eng, packet, tcp=True, now=100.011).rr) == 499  # past it: rebuilt
    c.set_status("n2", "big", "critical")
    assert len(answer(eng, packet, tcp=True, now=100.012).rr) == 499
    assert len(answer(eng, packet, tcp=True, now=100.030).rr) == 498
    assert eng.stats["misses"] == 3


def test_tcp_answers_are_capped_at_64k_with_tc() -> None:
    c = Catalog()
    for i in range(2000):
        c.register(f"node-with-a-longish-name-{i:04d}", f"10.{i // 250}.{i % 250}.1", "huge")
    eng = engine_for(c)
    out = eng.handle(query("huge.service.consul", "SRV"), True, 1.0)
    assert isinstance(out, bytes) and len(out) <= 65535
    resp = DNSRecord.parse(out)
    assert resp.header.tc == 1 and 0 < len(resp.rr) < 2000
