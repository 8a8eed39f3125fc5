"""The pure parts of the fleet benchmark's load generator (``bench.fleet_sim``): addresses, views, the news
filter and its identity, and the whole-fleet push-pull frame it answers servers with."""

from __future__ import annotations

import asyncio
import random

import pytest

from bench.fleet_sim import Fleet, in_view, member_host, news_key, pick_view
from registry.gossip.keyring import generate_key
from registry.gossip.messages import Ack, Address, Alive, Dead, Ping, PushPull, Suspect, decode_stream


def test_member_hosts_are_distinct_loopback_addresses() -> None:
    hosts = {member_host(i) for i in range(20_000)}
    assert len(hosts) == 20_000
    assert all(h.startswith("127.77.") and not h.endswith(".0") for h in hosts)
    with pytest.raises(ValueError):
        member_host(250 * 250)


def test_views_are_bounded_and_distinct() -> None:
    rng = random.Random(1)
    names = [f"n{i}" for i in range(500)]
    degree = dict.fromkeys(names, 0)
    degree["n0"] = 99  # full: never picked
    view = pick_view(names, degree.__getitem__, 16, 32, rng)
    assert len(view) == 16 == len(set(view)) and "n0" not in view
    assert pick_view(names[:5], degree.__getitem__, 16, 32, rng) == names[1:5]


def test_news_reaches_only_a_view_but_probes_always_do() -> None:
    view = {"b"}
    addr = Address("127.0.0.1", 1)
    assert in_view(view, "a", Alive(1, "b", addr, {}))
    assert in_view(view, "a", Suspect(1, "a", "z"))  # about itself: it must refute
    assert not in_view(view, "a", Dead(1, "c", "z"))
    assert in_view(view, "a", Ping(1, "a", "c", addr)) and in_view(view, "a", Ack(1))


def test_a_suspicion_from_another_accuser_is_other_news() -> None:
    assert news_key(Suspect(1, "x", "a")) != news_key(Suspect(1, "x", "b"))
    assert news_key(Alive(2, "x", Address("h", 1), {})) == news_key(Alive(2, "x", Address("h", 2), {"t": "1"}))
    assert news_key(Ack(1)) is None


def test_the_fleet_frame_decodes_as_a_push_pull_of_every_live_agent() -> None:
    async def scenario() -> None:
        fleet = Fleet([("s1", Address("127.0.0.1", 9))], generate_key(), 47999, 4, 7)
        fleet.loop = asyncio.get_running_loop()
        for _ in range(30):
            fleet.add()
        fleet.kill(3)
        msg = decode_stream(fleet._fleet_frame("sim-00001", True))
        assert isinstance(msg, PushPull) and msg.join and msg.source == "sim-00001"
        assert sorted(s.name for s in msg.states) == sorted(fleet.alive) and len(msg.states) == 27
        assert all(len(fleet.by_name[n].view) <= 8 for n in fleet.alive)

    asyncio.run(scenario())
