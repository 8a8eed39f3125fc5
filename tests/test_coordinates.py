"""Network coordinates end to end: the table and its command through the FSM, the servers' batching, the
agent's send schedule, /v1/coordinate/* over HTTP, the ``?near`` sort of catalog, health and prepared-query
answers, and ``proconsul rtt`` as a subprocess."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgpack
import pytest

from registry import commands as c
from registry.agent.coordinates import (
    CoordinateSender,
    CoordinateSettings,
    CoordinateUpdates,
    rate_scaled_interval,
)
from registry.cli.app import main
from registry.commands import CommandError
from registry.config import ConfigError
from registry.coordinate import Coordinate
from registry.fsm import FSM, encode_command
from registry.rtt import intersect, sort_by_distance
from registry.state.topics import WatchSet
from registry.structs import Node
from registry.testing import RunningAgent, async_dev_agent
from registry.testing.agent import make_config

H = 1.0e-5  # Serf's minimum height: small against the distances below


def coord(x_ms: float, dims: int = 8) -> Coordinate:
    """A coordinate on the first axis, ``x_ms`` milliseconds from the origin."""
    return Coordinate((x_ms / 1000.0,) + (0.0,) * (dims - 1), 0.1, 0.0, H)


def _register(f: FSM, index: int, node: str) -> None:
    assert f.apply(index, encode_command(c.Register(Node(id="", node=node, address="10.0.0.1", datacenter="dc1")).to_wire())) is True


def _batch(*updates: tuple[str, str, Coordinate]) -> bytes:
    return encode_command(c.CoordinateBatchUpdate(tuple(c.CoordinateUpdate(n, s, x) for n, s, x in updates)).to_wire())


# ---------------------------------------------------------------------- the table and the command


def test_a_batch_upserts_known_nodes_drops_unknown_ones_and_moves_the_index() -> None:
    f = FSM()
    _register(f, 1, "n1")
    _register(f, 2, "n2")
    assert f.apply(3, _batch(("n1", "", coord(1)), ("ghost", "", coord(2)), ("n2", "alpha", coord(3)))) is True
    ws = WatchSet()
    rows = list(f.store.coordinate_rows(ws))
    assert [(n, s) for n, s, _ in rows] == [("n1", ""), ("n2", "alpha")]
    assert ws.index == 3 and ("coordinates",) in ws
    assert f.store.coordinate_set("n1") == {"": coord(1)}
    # A later batch replaces one segment's coordinate and keeps the node's others.
    assert f.apply(4, _batch(("n2", "", coord(5)), ("n2", "alpha", coord(6)))) is True
    assert f.store.coordinate_set("n2") == {"": coord(5), "alpha": coord(6)}
    # A batch of nodes nobody knows still moves the table's index (Consul writes its index row).
    assert f.apply(5, _batch(("ghost", "", coord(1)))) is True
    ws = WatchSet()
    list(f.store.coordinate_rows(ws))
    assert ws.index == 5


def test_coordinates_are_in_snapshots_and_go_with_their_node() -> None:
    f = FSM()
    _register(f, 1, "n1")
    _register(f, 2, "n2")
    f.apply(3, _batch(("n1", "", coord(1)), ("n2", "", coord(2))))
    restored = FSM()
    restored.restore(f.snapshot())
    assert restored.store.coordinate_set("n1") == {"": coord(1)}
    # Deregistering a node (and a transaction's node delete) deletes its coordinates.
    assert f.apply(4, encode_command(c.Deregister("n1").to_wire())) is True
    assert f.store.coordinate_set("n1") == {} and f.store.coordinate_set("n2") == {"": coord(2)}
    txn = c.Txn((c.NodeOp("delete", Node(id="", node="n2", address="", datacenter="dc1")),))
    assert not isinstance(f.apply(5, encode_command(txn.to_wire())), CommandError)
    assert list(f.store.coordinate_rows(WatchSet())) == []


@pytest.mark.parametrize("updates, words", [
    ("nope", "Updates must be a list"),
    ([{"Node": "n1", "Coord": {"Vec": [float("nan")], "Error": 1, "Adjustment": 0, "Height": 0}}],
     "invalid coordinate"),
    ([{"Node": "n1", "Coord": "x"}], "invalid coordinate"),
    ([{"Coord": {"Vec": [0.0], "Error": 1, "Adjustment": 0, "Height": 0}}], "Must provide node"),
])  # fmt: skip
def test_a_malformed_batch_is_refused_and_nothing_changes(updates: Any, words: str) -> None:
    f = FSM()
    _register(f, 1, "n1")
    result = f.apply(2, msgpack.packb({"Type": c.CoordinateBatchUpdate.TYPE, "Updates": updates}))
    assert isinstance(result, CommandError) and words in result.message
    assert f.store.coordinate_set("n1") == {} and f.store.index == 2


def test_the_command_round_trips_through_its_wire_form() -> None:
    cmd = c.CoordinateBatchUpdate((c.CoordinateUpdate("n1", "", coord(1.5)), c.CoordinateUpdate("n2", "s", coord(2))))
    wire = msgpack.unpackb(encode_command(cmd.to_wire()), raw=False)
    assert c.from_wire(wire) == cmd


# ---------------------------------------------------------------------- servers' batches, agents' schedule


class _Leader:
    def __init__(self) -> None:
        self.leading = True

    def is_leader(self) -> bool:
        return self.leading

    async def call_leader(self, method: str, args: Any, timeout: float) -> Any:
        raise AssertionError("the leader handles its own updates")


class _OpenACL:
    enabled = False

    async def resolve(self, secret: str) -> Any:
        from registry.acl.resolver import StaticResolver

        return await StaticResolver({}, enabled=False).resolve(secret)


async def test_the_leader_batches_the_latest_update_per_node_and_drops_over_the_limit() -> None:
    proposed: list[c.CoordinateBatchUpdate] = []

    async def propose(cmd: c.CoordinateBatchUpdate) -> Any:
        proposed.append(cmd)
        return True

    settings = CoordinateSettings(update_batch_size=3, update_max_batches=2)
    updates = CoordinateUpdates(settings=settings, consensus=_Leader(), acl=_OpenACL(), propose=propose,  # type: ignore[arg-type]
                                local=lambda: None)  # fmt: skip
    for i in range(10):
        await updates.submit(f"n{i}", "", coord(1).to_json(), "")
    await updates.submit("n0", "", coord(7).to_json(), "")  # the latest per node wins
    assert await updates.flush() == 2
    assert [len(b.updates) for b in proposed] == [3, 3] and updates.discarded == 4
    assert proposed[0].updates[0] == c.CoordinateUpdate("n0", "", coord(7))
    assert await updates.flush() == 0  # nothing pending: no entry at all
    with pytest.raises(CommandError, match="^invalid coordinate$"):
        await updates.submit("n1", "", {"Vec": [math.inf] * 8, "Error": 1, "Adjustment": 0, "Height": 0}, "")
    with pytest.raises(CommandError, match="^incompatible coordinate$"):
        await updates.submit("n1", "", coord(1, dims=3).to_json(), "")


def test_the_send_interval_scales_with_the_cluster_as_consuls() -> None:
    assert rate_scaled_interval(64.0, 15.0, 10) == 15.0
    assert rate_scaled_interval(64.0, 15.0, 10_000) == pytest.approx(156.25)
    sender = CoordinateSender(settings=CoordinateSettings(), node_name=lambda: "a", source=lambda: None,
                              cluster_size=lambda: 6400, send=_never, token=lambda: "")  # fmt: skip
    assert all(100.0 <= sender.next_interval() <= 200.0 for _ in range(50))  # 100 s plus up to 100 s stagger


async def _never(args: dict[str, Any]) -> None:
    raise AssertionError("nothing to send")


async def test_an_agent_without_a_coordinate_sends_nothing() -> None:
    sender = CoordinateSender(settings=CoordinateSettings(), node_name=lambda: "a", source=lambda: None,
                              cluster_size=lambda: 1, send=_never, token=lambda: "")  # fmt: skip
    assert await sender.send_once() is False and sender.sent == 0


def test_the_settings_are_read_and_checked_from_the_config() -> None:
    cfg = make_config(sync_coordinate_interval_min="2s", sync_coordinate_rate_target=8,
                      consul={"coordinate": {"update_period": "250ms", "update_batch_size": 4}})  # fmt: skip
    s = CoordinateSettings.from_config(cfg)
    assert (s.sync_interval_min, s.sync_rate_target, s.update_period, s.update_batch_size, s.update_max_batches) == (
        2.0, 8, 0.25, 4, 5)  # fmt: skip
    with pytest.raises(ConfigError, match="update_batch_size"):
        CoordinateSettings.from_config(make_config(consul={"coordinate": {"update_batch_size": 0}}))
    with pytest.raises(ConfigError, match="sync_coordinate_interval_min"):
        CoordinateSettings.from_config(make_config(sync_coordinate_interval_min="soon"))


def test_the_sort_is_stable_and_puts_the_unmeasured_last() -> None:
    coords = {"near": {"": coord(1)}, "far": {"": coord(30)}, "client": {"seg": coord(2)}}
    items = ["none-1", "far", "near", "none-2", "client"]
    assert sort_by_distance(items, str, {"": coord(0)}, lambda n: coords.get(n, {})) == [
        "near", "far", "none-1", "none-2", "client"]  # fmt: skip
    # A client in one segment is compared in its own segment (Consul's CoordinateSet.Intersect).
    assert intersect({"": coord(0), "seg": coord(5)}, {"seg": coord(2)}) == (coord(5), coord(2))
    assert sort_by_distance(items, str, {}, lambda n: coords.get(n, {})) == items  # no source: no sort


# ---------------------------------------------------------------------- HTTP, ?near and rtt on a dev agent

FAST = {"consul": {"coordinate": {"update_period": "20ms"}}}


@pytest.fixture
async def agent() -> AsyncIterator[tuple[RunningAgent, aiohttp.ClientSession]]:
    async with async_dev_agent(**FAST) as running, aiohttp.ClientSession() as session:
        yield running, session


async def _call(running: RunningAgent, session: aiohttp.ClientSession, method: str, path: str,
                body: Any = None) -> tuple[int, Any, Any]:  # fmt: skip
    data = None if body is None else json.dumps(body).encode()
    async with session.request(method, running.url + path, data=data) as resp:
        raw = await resp.read()
        parsed: Any = raw.decode()
        if resp.headers.get("Content-Type", "").startswith("application/json"):
            parsed = json.loads(raw)
        return resp.status, parsed, resp.headers


async def _put_coordinates(running: RunningAgent, session: aiohttp.ClientSession,
                           coords: dict[str, Coordinate]) -> None:  # fmt: skip
    for node, x in coords.items():
        status, body, _ = await _call(running, session, "PUT", "/v1/coordinate/update", {"Node": node, "Coord": x.to_json()})
        assert status == 200 and body == "", (status, body)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while True:
        _, found, _ = await _call(running, session, "GET", "/v1/coordinate/nodes")
        if {e["Node"] for e in found} >= set(coords):
            return
        assert loop.time() < deadline, found
        await asyncio.sleep(0.02)


async def test_coordinate_endpoints_over_http(agent: tuple[RunningAgent, aiohttp.ClientSession]) -> None:
    running, session = agent
    me = running.agent.node_name
    # Consul's texts for bad input; nothing is queued.
    bad = {"Vec": [0.0] * 8, "Error": "x", "Adjustment": 0, "Height": 0}
    for body, text in (({"Node": me, "Coord": bad}, "invalid coordinate"), ({"Node": me}, "invalid coordinate"),
                       ({"Node": me, "Coord": coord(1, dims=2).to_json()}, "incompatible coordinate"),
                       ([1], "Request decode failed: json: cannot unmarshal array")):  # fmt: skip
        status, answer, _ = await _call(running, session, "PUT", "/v1/coordinate/update", body)
        assert status == 400 and answer.startswith(text), (body, status, answer)
    status, answer, _ = await _call(running, session, "GET", "/v1/coordinate/nodes")
    assert (status, answer) == (200, [])
    status, _, headers = await _call(running, session, "GET", f"/v1/coordinate/node/{me}")
    assert status == 404 and "Content-Type" not in headers
    # A blocking read of the table wakes when the batch is applied.
    _, _, headers = await _call(running, session, "GET", "/v1/coordinate/nodes")
    index = int(headers["X-Consul-Index"])
    waiter = asyncio.ensure_future(_call(running, session, "GET", f"/v1/coordinate/nodes?index={index}&wait=5s"))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    # Field names are matched without regard to case, as Go's decoder does.
    status, _, _ = await _call(running, session, "PUT", "/v1/coordinate/update",
                               {"node": me, "segment": "", "coord": coord(1).to_json()})  # fmt: skip
    assert status == 200
    status, found, headers = await asyncio.wait_for(waiter, 5)
    assert int(headers["X-Consul-Index"]) > index
    assert found == [{"Node": me, "Segment": "", "Coord": coord(1).to_json()}]
    status, found, _ = await _call(running, session, "GET", f"/v1/coordinate/node/{me}")
    assert (status, found) == (200, [{"Node": me, "Segment": "", "Coord": coord(1).to_json()}])
    status, found, _ = await _call(running, session, "GET", "/v1/coordinate/nodes?segment=alpha")
    assert (status, found) == (200, [])
    status, _, _ = await _call(running, session, "GET", f"/v1/coordinate/node/{me}?segment=alpha")
    assert status == 404
    # The servers' coordinates per datacenter, in the WAN area.
    status, found, _ = await _call(running, session, "GET", "/v1/coordinate/datacenters")
    assert (status, found) == (200, [{"Datacenter": "dc1", "AreaID": "wan", "Coordinates": [
        {"Node": me, "Segment": "", "Coord": coord(1).to_json()}]}])  # fmt: skip


async def test_coordinate_endpoints_answer_401_when_disabled() -> None:
    async with async_dev_agent(disable_coordinates=True) as running, aiohttp.ClientSession() as session:
        for method, path in (("GET", "/v1/coordinate/datacenters"), ("GET", "/v1/coordinate/nodes"),
                             ("GET", "/v1/coordinate/node/x"), ("PUT", "/v1/coordinate/update")):  # fmt: skip
            status, body, _ = await _call(running, session, method, path, {} if method == "PUT" else None)
            assert (status, body) == (401, "Coordinate support disabled")


async def _seed_near(running: RunningAgent, session: aiohttp.ClientSession) -> None:
    """Nodes on a line: the agent at 0 ms, n-near at 2 ms, n-mid at 10 ms, n-far at 40 ms, and n-none with no
    coordinate; each runs "web" with a passing check."""
    for name in ("n-far", "n-mid", "n-near", "n-none"):
        status, _, _ = await _call(running, session, "PUT", "/v1/catalog/register", {
            "Node": name, "Address": "10.0.0.9", "Service": {"Service": "web", "Port": 80},
            "Check": {"CheckID": "web-ok", "Name": "ok", "Status": "passing", "ServiceID": "web"}})  # fmt: skip
        assert status == 200
    await _call(running, session, "PUT", "/v1/agent/service/register", {"Name": "web", "Port": 80})
    await _put_coordinates(running, session, {running.agent.node_name: coord(0), "n-near": coord(2),
                                              "n-mid": coord(10), "n-far": coord(40)})  # fmt: skip


async def test_near_sorts_catalog_health_and_prepared_query_answers(
    agent: tuple[RunningAgent, aiohttp.ClientSession],
) -> None:
    running, session = agent
    me = running.agent.node_name
    await _seed_near(running, session)

    async def nodes_of(path: str, key: Any) -> list[str]:
        status, found, _ = await _call(running, session, "GET", path)
        assert status == 200, (path, found)
        return [key(e) for e in (found["Nodes"] if isinstance(found, dict) else found)]

    by_agent = [me, "n-near", "n-mid", "n-far", "n-none"]
    assert await nodes_of("/v1/catalog/nodes", lambda e: e["Node"]) == sorted(by_agent)  # no ?near: by name
    assert await nodes_of("/v1/catalog/nodes?near=_agent", lambda e: e["Node"]) == by_agent
    assert await nodes_of("/v1/catalog/nodes?near=n-far", lambda e: e["Node"]) == [
        "n-far", "n-mid", "n-near", me, "n-none"]  # fmt: skip
    assert await nodes_of("/v1/catalog/service/web?near=_agent", lambda e: e["Node"]) == by_agent
    assert await nodes_of("/v1/health/service/web?near=n-mid", lambda e: e["Node"]["Node"]) == [
        "n-mid", "n-near", me, "n-far", "n-none"]  # fmt: skip
    checks = await nodes_of("/v1/health/checks/web?near=_agent", lambda e: e["Node"])
    assert checks == ["n-near", "n-mid", "n-far", "n-none"]  # the agent's web has no check
    assert await nodes_of("/v1/health/state/passing?near=n-far", lambda e: e["Node"]) == [
        "n-far", "n-mid", "n-near", me, "n-none"]  # the agent's serfHealth among them  # fmt: skip
    # A node with no coordinate to measure from leaves the answer as it was.
    assert await nodes_of("/v1/catalog/nodes?near=n-none", lambda e: e["Node"]) == sorted(by_agent)
    # Prepared queries: ?near, then the query's own Near (_agent), sort the shuffled instances.
    status, created, _ = await _call(running, session, "POST", "/v1/query",
                                     {"Name": "web-near", "Service": {"Service": "web", "Near": "_agent"}})  # fmt: skip
    assert status == 200
    for _ in range(5):  # shuffled first: the sort decides every time
        assert await nodes_of(f"/v1/query/{created['ID']}/execute", lambda e: e["Node"]["Node"]) == by_agent
        got = await nodes_of(f"/v1/query/{created['ID']}/execute?near=n-far", lambda e: e["Node"]["Node"])
        assert got == ["n-far", "n-mid", "n-near", me, "n-none"]
    # A coordinate update re-sorts answers at once (a ?near answer is never served from a cache).
    await _put_coordinates(running, session, {"n-none": coord(-1)})
    assert await nodes_of("/v1/catalog/nodes?near=_agent", lambda e: e["Node"]) == [
        me, "n-none", "n-near", "n-mid", "n-far"]  # fmt: skip


def _cli(running: RunningAgent, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "registry.cli", "rtt", "-http-addr", running.http_addr, *args],
                          capture_output=True, text=True, timeout=30)  # fmt: skip


async def test_proconsul_rtt(agent: tuple[RunningAgent, aiohttp.ClientSession],
                             capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    running, session = agent
    me = running.agent.node_name
    await _seed_near(running, session)
    loop = asyncio.get_running_loop()

    async def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return await loop.run_in_executor(None, lambda: _cli(running, *args))

    expected = coord(2).distance(coord(40)) * 1000.0
    out = await cli("n-near", "n-far")
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"Estimated n-near <-> n-far rtt: {expected:.3f} ms (using LAN coordinates)\n"
    assert out.stdout.startswith("Estimated n-near <-> n-far rtt: 38.0")
    out = await cli("n-mid")  # the second node is the agent's
    assert out.stdout == f"Estimated n-mid <-> {me} rtt: {coord(10).distance(coord(0)) * 1000:.3f} ms (using LAN coordinates)\n"
    out = await cli("-wan", f"{me}.dc1")
    assert out.returncode == 0 and out.stdout.startswith(f"Estimated {me}.dc1 <-> {me}.dc1 rtt: 0.0"), out
    errors = ((("n-none",), 'Could not find a coordinate for node "n-none"'),
              (("n-near", "ghost"), 'Could not find a coordinate for node "ghost"'),
              ((), "One or two node names must be specified"),
              (("a", "b", "c"), "One or two node names must be specified"),
              (("-wan", "n-near", "n-far"), "Node names must be specified as <node name>.<datacenter> with -wan"),
              (("-wan", "n-near.dc1", f"{me}.dc1"), 'Could not find a coordinate for node "n-near.dc1"'))  # fmt: skip
    # The errors in-process (the same ``main`` the command runs; a process start each would cost a second).
    for args, err in errors:
        capsys.readouterr()
        code = await loop.run_in_executor(None, lambda a=args: main(["rtt", "-http-addr", running.http_addr, *a]))
        printed = capsys.readouterr()
        assert code == 1 and printed.err.startswith(err) and printed.out == "", (args, printed)
