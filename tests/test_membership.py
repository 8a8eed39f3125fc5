"""The gossip pool wired into the agent: a dev agent (its own leader) and gossip members beside it that speak
the real protocol on 127.0.0.1 (each one a ``GossipDriver`` with a client agent's tags).

What is checked: /v1/agent/members from the pool (Consul's fields, statuses and tags), PUT /v1/agent/join
and force-leave with Consul's texts, and the leader's catalog: a member alive is registered with serfHealth
passing, a failed one critical with Consul's output, a left one deregistered, many changes in few entries.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from registry.agent.membership import read_snapshot
from registry.gossip import Address
from registry.gossip.driver import GossipDriver
from registry.testing import RunningAgent
from tests.conftest import Http, eventually

pytestmark = pytest.mark.timeout(120)


def client_tags(name: str) -> dict[str, str]:
    return {"role": "node", "dc": "dc1", "id": str(uuid.uuid5(uuid.NAMESPACE_DNS, name)), "segment": "",
            "vsn": "2", "vsn_min": "2", "vsn_max": "3", "build": "1.22.0:proconsul", "acls": "0"}  # fmt: skip


@pytest.fixture
async def peers() -> AsyncIterator[list[GossipDriver]]:
    started: list[GossipDriver] = []
    yield started
    for d in started:
        await d.stop()


async def peer(peers: list[GossipDriver], name: str) -> GossipDriver:
    d = GossipDriver(name, bind=Address("127.0.0.1", 0), tags=client_tags(name))
    await d.start()
    peers.append(d)
    return d


async def serf(http: Http, node: str) -> dict[str, str] | None:
    status, checks, _ = await http.get(f"/v1/health/node/{node}")
    assert status == 200
    return next(({"Status": c["Status"], "Output": c["Output"], "Name": c["Name"]} for c in checks
                 if c["CheckID"] == "serfHealth"), None)  # fmt: skip


async def members(http: Http) -> dict[str, dict]:
    status, found, _ = await http.get("/v1/agent/members")
    assert status == 200
    return {m["Name"]: m for m in found}


async def test_members_join_fail_force_leave(agent: RunningAgent, http: Http, peers: list[GossipDriver]) -> None:
    lan = agent.agent.lan
    assert lan is not None and lan.address is not None
    # Alone, the agent lists itself: a server, with Consul's tags and fields, on its serf_lan port.
    me = (await members(http))["test-agent"]
    assert (me["Addr"], me["Port"], me["Status"]) == ("127.0.0.1", lan.address.port, 1)
    assert {k: me["Tags"][k] for k in ("role", "dc", "port", "vsn", "segment")} == {
        "role": "consul", "dc": "dc1", "port": "8300", "vsn": "2", "segment": ""}
    assert me["Tags"]["id"] == agent.agent.config.node_id
    assert set(me) == {"Name", "Addr", "Port", "Tags", "Status", "ProtocolMin", "ProtocolMax", "ProtocolCur",
                       "DelegateMin", "DelegateMax", "DelegateCur"}  # fmt: skip

    # A member joins through PUT /v1/agent/join: the leader registers it, serfHealth passing at once.
    p1 = await peer(peers, "peer-1")
    status, body, _ = await http.put(f"/v1/agent/join/127.0.0.1:{p1.local_member.addr.port}")
    assert status == 200, body

    async def registered() -> bool:
        return await serf(http, "peer-1") == {"Status": "passing", "Output": "Agent alive and reachable",
                                               "Name": "Serf Health Status"}  # fmt: skip

    await eventually(registered, 10)
    _, node, _ = await http.get("/v1/catalog/node/peer-1")
    assert node["Node"]["Address"] == "127.0.0.1" and node["Node"]["ID"] == client_tags("peer-1")["id"]
    assert (await members(http))["peer-1"]["Status"] == 1

    # It dies without a word: failed in the pool, serfHealth critical with Consul's output, still listed.
    await p1.stop()
    died = time.monotonic()

    async def critical() -> bool:
        return (await serf(http, "peer-1") or {}).get("Output") == "Agent not live or unreachable"

    await eventually(critical, 15, interval=0.1)
    assert time.monotonic() - died < 10
    assert (await serf(http, "peer-1") or {})["Status"] == "critical"
    assert (await members(http))["peer-1"]["Status"] == 4

    # force-leave: an unknown name gets Consul's error; the failed member becomes left and is deregistered.
    status, text, _ = await http.put("/v1/agent/force-leave/nobody")
    assert (status, text) == (500, "agent: No node found with name 'nobody'")
    status, _, _ = await http.put("/v1/agent/force-leave/peer-1")
    assert status == 200
    assert (await members(http))["peer-1"]["Status"] == 3

    async def deregistered() -> bool:
        return (await http.get("/v1/catalog/node/peer-1"))[1] is None

    await eventually(deregistered, 10)
    # ?prune forgets it at once.
    assert (await http.put("/v1/agent/force-leave/peer-1?prune"))[0] == 200
    assert "peer-1" not in await members(http)

    # A join that reaches no one is Consul's 500 with the gossip layer's error list.
    status, text, _ = await http.put("/v1/agent/join/127.0.0.1:1")
    assert status == 500 and text.startswith("1 error occurred:\n\t* Failed to join 127.0.0.1:1"), text
    # A WAN join needs a WAN pool.
    status, text, _ = await http.put(f"/v1/agent/join/127.0.0.1:{lan.address.port}?wan=1")
    assert status == 500


async def test_graceful_leave_deregisters(agent: RunningAgent, http: Http, peers: list[GossipDriver]) -> None:
    lan = agent.agent.lan
    assert lan is not None and lan.address is not None
    p2 = await peer(peers, "peer-2")
    assert await p2.join([lan.address]) == 1

    async def present() -> bool:
        return (await serf(http, "peer-2") or {}).get("Status") == "passing"

    await eventually(present, 10)
    assert await p2.leave()

    async def gone() -> bool:
        return (await http.get("/v1/catalog/node/peer-2"))[1] is None

    await eventually(gone, 10)
    assert (await members(http))["peer-2"]["Status"] == 3


async def test_many_changes_are_few_entries(agent: RunningAgent, http: Http, peers: list[GossipDriver]) -> None:
    """Twenty members joining, then half of them dying at once: each wave reaches the catalog in a few
    entries (one MemberBatch per second of changes), and no joiner is ever shown critical."""
    lan = agent.agent.lan
    reconciler = agent.agent.reconciler
    assert lan is not None and lan.address is not None and reconciler is not None
    n = 20
    group = [await peer(peers, f"fleet-{i:02d}") for i in range(n)]
    before = reconciler.entries
    assert sum(await asyncio.gather(*(d.join([lan.address]) for d in group))) == n

    async def statuses() -> dict[str, str]:
        _, checks, _ = await http.get("/v1/health/state/any")
        return {c["Node"]: c["Status"] for c in checks if c["CheckID"] == "serfHealth" and c["Node"].startswith("fleet")}

    seen_critical: set[str] = set()

    async def all_passing() -> bool:
        now = await statuses()
        seen_critical.update(k for k, v in now.items() if v == "critical")
        return len(now) == n and set(now.values()) == {"passing"}

    await eventually(all_passing, 15, interval=0.1)
    assert not seen_critical, f"joiners shown critical: {sorted(seen_critical)}"
    joined_entries = reconciler.entries - before
    assert 1 <= joined_entries <= 4, joined_entries

    # Half of them die together; the others (and the agent) notice, and confirm each other's suspicions.
    doomed, survivors = group[: n // 2], group[n // 2:]
    before = reconciler.entries
    died = time.monotonic()
    for d in doomed:
        await d.stop()
    dead_names = {d.name for d in doomed}

    async def half_critical() -> bool:
        now = await statuses()
        return {k for k, v in now.items() if v == "critical"} == dead_names

    await eventually(half_critical, 25, interval=0.1)
    took = time.monotonic() - died
    failed_entries = reconciler.entries - before
    assert took < 20, took
    assert failed_entries <= 10, failed_entries  # one entry per second of detections, at most
    assert {k for k, v in (await statuses()).items() if v == "passing"} == {d.name for d in survivors}


async def test_snapshot_records_members_and_leave(tmp_path: Path, peers: list[GossipDriver]) -> None:
    """Serf's local.snapshot: the members known alive are written, and a leave is recorded so a restart
    does not rejoin (unless rejoin_after_leave)."""
    from registry.agent.membership import SnapshotLog

    a = await peer(peers, "snap-a")
    b = await peer(peers, "snap-b")
    assert await a.join([b.local_member.addr]) == 1
    path = tmp_path / "serf" / "local.snapshot"
    log = SnapshotLog(path)
    for m in a.members():
        log.member(m)
    log.flush()
    addrs, left = read_snapshot(path)
    assert sorted(addrs) == sorted(f"127.0.0.1:{d.local_member.addr.port}" for d in (a, b)) and not left
    log.flush(leave=True)
    log.flush(leave=True)  # a leave, then the stop after it: one leave line
    assert read_snapshot(path)[1] is True
    assert path.read_text().count("leave") == 1


def test_snapshot_is_a_log_of_changes_compacted_when_it_outgrows_the_members(tmp_path: Path) -> None:
    """Serf's snapshotter: each change appends one line (a member's join or new address ``alive:``, its
    failure or leave ``not-alive:``); replaying the file gives the members last alive, and the file is
    rewritten whole only once it holds more than twice what it describes."""
    import random

    from registry.agent.membership import SNAPSHOT_COMPACT_SLACK, SnapshotLog
    from registry.gossip import Member, MemberState

    path = tmp_path / "serf" / "local.snapshot"
    log = SnapshotLog(path)
    assert log.load() == ([], False)
    rng = random.Random(5)
    expected: dict[str, str] = {}
    sizes = []
    for step in range(20_000):
        name = f"m{rng.randrange(500)}"
        if rng.random() < 0.6:
            port = 8301 + rng.randrange(2)
            state = rng.choice((MemberState.ALIVE, MemberState.SUSPECT))
            expected[name] = f"10.0.0.1:{port}"
        else:
            port, state = 8301, rng.choice((MemberState.DEAD, MemberState.LEFT))
            expected.pop(name, None)
        log.member(Member(name, Address("10.0.0.1", port), {}, state, 1, 0.0))
        if step % 50 == 0:
            log.flush()
            sizes.append(path.read_text().count("\n"))
    log.flush()
    replayed, left = read_snapshot(path)
    assert sorted(replayed) == sorted(expected.values()) and not left
    assert max(sizes) <= 2 * 500 + SNAPSHOT_COMPACT_SLACK + 50  # compacted, never grown without bound
    log.flush(leave=True)
    assert read_snapshot(path) == (list(SnapshotLog(path).load()[0]), True)
    assert path.read_text().endswith("leave\n")


GOSSIP_LAN_HCL = """
gossip_lan {
  probe_interval  = "2s"
  probe_timeout   = "800ms"
  gossip_nodes    = 5
  gossip_interval = "300ms"
  retransmit_mult = 3
  suspicion_mult  = 6
}
gossip_wan {
  probe_interval = "5s"
  probe_timeout  = "3s"
}
"""


async def test_gossip_lan_config_sets_the_pool_timings(tmp_path: Path, peers: list[GossipDriver]) -> None:
    """Consul's ``gossip_lan`` keys in a config file reach the pool: its config object, and the probes it
    really sends (one every 2 s instead of the default 500 ms); ``gossip_wan`` is accepted."""
    from registry.agent.agent import Agent
    from registry.cli.agent import build_config

    conf = tmp_path / "gossip.hcl"
    conf.write_text(GOSSIP_LAN_HCL)
    cfg = build_config(["-dev", "-config-file", str(conf), "-node", "gossip-tuned", "-http-port", "0",
                        "-dns-port", "0", "-serf-lan-port", "0"])  # fmt: skip
    cfg.log_level = "warn"
    agent = Agent(cfg)
    await agent.start()
    try:
        assert agent.lan is not None
        pool = agent.lan.driver
        c = pool.config
        assert (c.probe_interval, c.probe_timeout, c.gossip_nodes, c.gossip_interval, c.retransmit_mult,
                c.suspicion_mult) == (2.0, 0.8, 5, 0.3, 3, 6)  # fmt: skip
        assert c.suspicion_min(3) == 6.0  # suspicion_mult scales the fixed minimum (4 s at the default 4)
        # Traffic: beside a member with the defaults, over the same few seconds, the tuned agent probes a
        # quarter as often.
        p = await peer(peers, "plain")
        assert await p.join([agent.lan.address]) == 1
        await eventually(lambda: _async(len(pool.members()) == 2), 5)
        before = (pool.core.stats["probes"], p.core.stats["probes"])
        await asyncio.sleep(4.2)
        tuned, plain = pool.core.stats["probes"] - before[0], p.core.stats["probes"] - before[1]
        assert 1 <= tuned <= 3, (tuned, plain)
        assert plain >= 6, (tuned, plain)
    finally:
        await agent.stop()


async def _async(value: bool) -> bool:
    return value


@pytest.mark.parametrize(("hcl", "error"), [
    ('gossip_lan { probe_interval = "fast" }', 'gossip_lan.probe_interval'),
    ('gossip_lan { probe_interval = 5 }',
     'gossip_lan.probe_interval: invalid duration: "5": time: missing unit in duration "5"'),
    ('gossip_lan { probe_timeout = "0s" }', 'gossip_lan.probe_timeout must be a positive duration'),
    ('gossip_lan { gossip_nodes = 0 }', 'gossip_lan.gossip_nodes must be a whole number of at least 1, got 0'),
    ('gossip_lan { retransmit_mult = "4" }', "gossip_lan.retransmit_mult must be a whole number"),
    ('gossip_lan { probe_timeout = "1s" }',
     "gossip_lan.probe_timeout (1s) must be shorter than gossip_lan.probe_interval (0.5s)"),
    ('gossip_wan { probe_timeout = "6s" }',
     "gossip_wan.probe_timeout (6s) must be shorter than gossip_wan.probe_interval (5s)"),
])  # fmt: skip
def test_gossip_lan_config_refused(tmp_path: Path, hcl: str, error: str) -> None:
    from registry.cli.agent import build_config
    from registry.config import ConfigError

    conf = tmp_path / "gossip.hcl"
    conf.write_text(hcl.replace("{ ", "{\n  ").replace(" }", "\n}") + "\n")  # one attribute a line
    with pytest.raises(ConfigError) as info:
        build_config(["-dev", "-config-file", str(conf)])
    assert error in str(info.value)


def test_gossip_lan_defaults_and_merge(tmp_path: Path) -> None:
    """Without the block, the pool keeps Proconsul's defaults; two files merge key by key, as Consul's
    blocks do; gossip_wan's own defaults (Consul's WAN ones) let it set a 3 s probe timeout."""
    from registry.agent.membership import gossip_config
    from registry.cli.agent import build_config
    from registry.gossip.config import GossipConfig

    assert gossip_config(build_config(["-dev"])) == GossipConfig()
    (tmp_path / "a.hcl").write_text('gossip_lan { probe_interval = "1s" }\n')
    (tmp_path / "b.json").write_text('{"gossip_lan": {"probe_timeout": "400ms"}, "gossip_wan": {"probe_timeout": "3s"}}')
    cfg = build_config(["-dev", "-config-dir", str(tmp_path)])
    got = gossip_config(cfg)
    assert (got.probe_interval, got.probe_timeout, got.gossip_nodes) == (1.0, 0.4, 3)


async def test_a_restart_rejoins_one_member_of_its_snapshot(tmp_path: Path, peers: list[GossipDriver]) -> None:
    """Serf's rejoin: the snapshot's members in random order, stopping at the first that answers (each
    join is a push-pull of the whole member list: one per member of a large pool would cost it dearly)."""
    from registry.agent.membership import LanPool

    live = [await peer(peers, f"snap-{i}") for i in range(4)]
    for d in live[1:]:
        assert await d.join([live[0].local_member.addr]) == 1
    dead = ["127.0.0.1:1", "127.0.0.1:2"]
    lines = [f"alive: snap-{i} 127.0.0.1:{d.local_member.addr.port}" for i, d in enumerate(live)]
    lines += [f"alive: gone-{i} {a}" for i, a in enumerate(dead)]
    snapshot = tmp_path / "serf" / "local.snapshot"
    snapshot.parent.mkdir(parents=True)
    snapshot.write_text("".join(line + "\n" for line in lines))

    async def no_lookup(address: str) -> Address | None:
        return None

    driver = GossipDriver("restarted", bind=Address("127.0.0.1", 0), tags=client_tags("restarted"))
    pool = LanPool(driver, retry_join=[], retry_interval=1.0, retry_max=0, rejoin_after_leave=False,
                   data_dir=str(tmp_path), lookup=no_lookup, on_server=lambda address: None)  # fmt: skip
    tried: list[Address] = []
    push_pull = pool._push_pull

    async def recording(addr: Address) -> bool:
        tried.append(addr)
        return await push_pull(addr)

    pool._push_pull = recording  # type: ignore[method-assign]
    await pool.start()
    try:
        await eventually(lambda: _async(len(driver.members()) == 5), 10)
        answered = [a for a in tried if a.port not in (1, 2)]
        assert len(answered) == 1 and tried[-1] == answered[0], tried  # stopped at the first that answered
    finally:
        await pool.stop()


async def _silent_port() -> tuple[asyncio.base_events.Server, int, list[asyncio.StreamWriter]]:
    """A TCP port that accepts and never answers nor closes: a server RPC port as a gossip push-pull sees it
    behind anything that holds the connection (a proxy, a TLS terminator), until the stream times out."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], held


async def test_a_join_through_a_server_rpc_port_does_not_wait_out_the_push_pull(
        tmp_path: Path, peers: list[GossipDriver]) -> None:  # fmt: skip
    """retry_join naming a server's RPC port: the push-pull to it as a gossip address may take the stream
    timeout (10 s) to fail, so the agent asks it as an RPC port for its gossip address after a short wait
    instead of after that failure, and joins within a couple of seconds. A gossip address still joins
    directly, without the question."""
    from registry.agent.membership import JOIN_HEDGE, LanPool

    server = await peer(peers, "server-1")
    silent, port, held = await _silent_port()
    rpc = f"127.0.0.1:{port}"
    asked: list[str] = []

    async def lookup(address: str) -> Address | None:
        asked.append(address)
        return server.local_member.addr if address == rpc else None

    learned: list[str] = []
    driver = GossipDriver("client-1", bind=Address("127.0.0.1", 0), tags=client_tags("client-1"))
    pool = LanPool(driver, retry_join=[], retry_interval=1.0, retry_max=0, rejoin_after_leave=False,
                   data_dir=None, lookup=lookup, on_server=learned.append)  # fmt: skip
    await pool.start()
    try:
        started = time.monotonic()
        joined, errors = await pool.join([rpc])
        took = time.monotonic() - started
        assert (joined, errors) == (1, []) and asked == [rpc] and learned == [rpc]
        assert took < JOIN_HEDGE + 1.5, f"the join through the RPC port took {took:.1f}s"
        assert {m.name for m in driver.members()} == {"client-1", "server-1"}
        # Asked once: the next join through that address goes to the gossip address at once.
        started = time.monotonic()
        assert await pool.join([rpc]) == (1, []) and asked == [rpc]
        assert time.monotonic() - started < 1.0
        # A gossip address still joins by its push-pull (asked as an RPC port only if that is slow: no answer).
        other = await peer(peers, "client-2")
        assert await pool.join([f"127.0.0.1:{other.local_member.addr.port}"]) == (1, [])
        assert "client-2" in {m.name for m in driver.members()}
    finally:
        await pool.stop()
        for w in held:
            w.close()
        silent.close()
        await silent.wait_closed()
