"""Coordinates from real gossip: three ``GossipDriver``s on 127.0.0.1 whose packets to each other are held
back by known delays learn those round trips through their probes, and an agent fed their coordinates sorts
``?near=_agent`` answers nearest first and ``proconsul rtt`` reports the delay within a stated tolerance."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from registry.agent.agent import Agent
from registry.gossip import Address, GossipConfig
from registry.gossip.core import Packet
from registry.gossip.driver import GossipDriver
from registry.testing.agent import make_config

# Probes ten times a second, so a few seconds give each pair dozens of round trips; the probe timeout stays
# well above the largest injected round trip.
FAST = GossipConfig(probe_interval=0.1, probe_timeout=0.08, gossip_interval=0.05, suspicion_timeout_cap=1.0,
                    push_pull_interval=2.0, stall_tolerance=0.5)  # fmt: skip
LOCAL = Address("127.0.0.1", 0)
# Nodes on a line, in milliseconds: a at 0, b at 10, c at 30; the round trip between two is their distance.
POSITION = {"node-a": 0.0, "node-b": 10.0, "node-c": 30.0}
TOLERANCE = 0.35  # of the true round trip, once converged (loopback and the event loop add their jitter)


class DelayedDriver(GossipDriver):
    """A driver whose outgoing packets to a peer wait half the pair's round trip first (the test's link)."""

    def __init__(self, name: str, one_way: Callable[[str, int], float], **kw: Any) -> None:
        super().__init__(name, **kw)
        self._one_way = one_way

    def _send_packet(self, packet: Packet) -> None:
        delay = self._one_way(self.name, packet.to.port)
        send = super()._send_packet
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, send, packet)
        else:
            send(packet)


@pytest.fixture
async def line() -> AsyncIterator[dict[str, GossipDriver]]:
    ports: dict[int, str] = {}

    def one_way(src: str, port: int) -> float:
        dst = ports.get(port)
        return abs(POSITION[src] - POSITION[dst]) / 2000.0 if dst is not None else 0.0

    drivers = {name: DelayedDriver(name, one_way, bind=LOCAL, config=FAST) for name in POSITION}
    for name, d in drivers.items():
        ports[(await d.start()).port] = name
    first = drivers["node-a"].local_member.addr
    for d in list(drivers.values())[1:]:
        assert await d.join([first]) == 1
    yield drivers
    for d in drivers.values():
        await d.stop()


def _estimate(drivers: dict[str, GossipDriver], x: str, y: str) -> float:
    return drivers[x].coordinate.coordinate.distance(drivers[y].coordinate.coordinate) * 1000.0


def _converged(drivers: dict[str, GossipDriver]) -> bool:
    pairs = (("node-a", "node-b"), ("node-a", "node-c"), ("node-b", "node-c"))
    # Learnt: every estimate within the tolerance, and the estimates ordered as the true round trips are
    # (the tolerance alone would let b-c (20 ms) and a-c (30 ms) cross).
    estimates = [_estimate(drivers, x, y) for x, y in sorted(pairs, key=lambda p: abs(POSITION[p[0]] - POSITION[p[1]]))]
    if estimates != sorted(estimates):
        return False
    return all(abs(_estimate(drivers, x, y) - abs(POSITION[x] - POSITION[y])) <= TOLERANCE * abs(POSITION[x] - POSITION[y])
               for x, y in pairs)  # fmt: skip


async def _until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        found = check() if not asyncio.iscoroutinefunction(check) else await check()
        if found:
            return found
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_probe_round_trips_place_the_nearer_node_first(line: dict[str, GossipDriver]) -> None:
    await _until(lambda: _converged(line), 15, "the coordinates to learn the injected round trips "
                 f"(a-b {_estimate(line, 'node-a', 'node-b'):.1f}, a-c {_estimate(line, 'node-a', 'node-c'):.1f} ms)")
    # An agent named node-a whose coordinate is driver a's (the composition root's source), sending it on a
    # fast schedule; b and c are catalog nodes whose agents' updates are PUT as their agents would send them.
    cfg = make_config(node_name="node-a", sync_coordinate_interval_min="50ms",
                      consul={"coordinate": {"update_period": "20ms"}})  # fmt: skip
    # The three coordinates are taken at one moment: the drivers keep adjusting theirs, and a source that moved
    # on while b's and c's stayed as PUT could order a pair within the estimate's tolerance either way.
    learnt = {name: d.coordinate.coordinate for name, d in line.items()}
    agent = Agent(cfg, coordinate_source=lambda: learnt["node-a"])
    await agent.start()
    try:
        assert agent.http_addr is not None
        base = f"http://127.0.0.1:{agent.http_addr[1]}"
        async with aiohttp.ClientSession() as session:
            for name in ("node-c", "node-b"):
                async with session.put(base + "/v1/catalog/register", json={"Node": name, "Address": "127.0.0.1"}) as r:
                    assert r.status == 200
                coord = learnt[name].to_json()
                async with session.put(base + "/v1/coordinate/update", json={"Node": name, "Coord": coord}) as r:
                    assert r.status == 200

            async def sorted_nodes() -> list[str] | None:
                async with session.get(base + "/v1/coordinate/nodes") as r:
                    if len(json.loads(await r.read())) < 3:
                        return None  # node-a's own update not applied yet
                async with session.get(base + "/v1/catalog/nodes?near=_agent") as r:
                    return [n["Node"] for n in json.loads(await r.read())]

            # Nearest first by the learnt coordinates. A node's distance to itself is not 0 in Vivaldi (twice
            # its height, plus its adjustment: the latency of its own access link, which a loaded machine's
            # event loop inflates), so the agent itself is not always first; the API must order exactly as the
            # coordinates do, and the coordinates must put b (10 ms away) before c (30 ms).
            def by_distance(origin: str) -> list[str]:
                return sorted(learnt, key=lambda name: learnt[origin].distance(learnt[name]))

            order = await _until(sorted_nodes, 10, "the three coordinates in the catalog")
            assert order == by_distance("node-a") and order.index("node-b") < order.index("node-c")
            async with session.get(base + "/v1/catalog/nodes?near=node-c") as r:
                near_c = [n["Node"] for n in json.loads(await r.read())]
            assert near_c == by_distance("node-c") and near_c.index("node-b") < near_c.index("node-a")
        out = await asyncio.get_running_loop().run_in_executor(None, lambda: subprocess.run(
            [sys.executable, "-m", "registry.cli", "rtt", "-http-addr", base.removeprefix("http://"), "node-c"],
            capture_output=True, text=True, timeout=30))  # fmt: skip
        assert out.returncode == 0, out.stderr
        prefix = "Estimated node-c <-> node-a rtt: "
        assert out.stdout.startswith(prefix) and out.stdout.endswith(" ms (using LAN coordinates)\n"), out.stdout
        ms = float(out.stdout[len(prefix):].split()[0])
        assert abs(ms - 30.0) <= TOLERANCE * 30.0, ms
    finally:
        with contextlib.suppress(Exception):
            await agent.stop()
