"""The Raft driver in-process: three servers on loopback with real WALs, elections, forwarding, read
barriers, restarts, membership changes and snapshot catch-up."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from registry.consensus import CommandResults
from registry.fsm import FSM
from registry.raft.driver import RaftOptions, RaftServer
from registry.raft.listener import server_transport
from registry.raft.rpc import RPCRouter
from registry.testing import free_port


class Cluster:
    def __init__(self, tmp: Path, n: int = 3, snapshot_threshold: int = 8192, snapshot_interval: float = 0.0) -> None:
        self.tmp = tmp
        self.ports = [free_port() for _ in range(n)]
        self.snapshot_threshold = snapshot_threshold
        self.snapshot_interval = snapshot_interval  # 0: look at the threshold after every batch
        self.servers: dict[int, RaftServer] = {}

    def options(self, i: int, expect: int = 3, join: list[int] | None = None) -> RaftOptions:
        peers = join if join is not None else [j for j in range(len(self.ports)) if j != i]
        return RaftOptions(
            data_dir=self.tmp / f"s{i}", node_id=f"node-{i}", address=f"127.0.0.1:{self.ports[i]}",
            bind=("127.0.0.1", self.ports[i]), name=f"s{i}", http="", bootstrap_expect=expect,
            join=[f"127.0.0.1:{self.ports[j]}" for j in peers], snapshot_threshold=self.snapshot_threshold,
            snapshot_interval=self.snapshot_interval, trailing_logs=10, leader_wait=1.0,
        )  # fmt: skip

    async def start(self, i: int, **kw) -> RaftServer:  # noqa: ANN003
        server = RaftServer(self.options(i, **kw), FSM(), server_transport(RPCRouter()), CommandResults())
        await server.start()
        self.servers[i] = server
        return server

    async def stop(self, i: int) -> None:
        await self.servers.pop(i).stop()

    async def leader(self, timeout: float = 10.0) -> RaftServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leaders = [s for s in self.servers.values() if s.is_leader()]
            if len(leaders) == 1 and all(s.leader_address() == leaders[0].opts.address for s in self.servers.values()):
                return leaders[0]
            await asyncio.sleep(0.02)
        raise AssertionError("no stable leader")

    async def close(self) -> None:
        for i in list(self.servers):
            await self.stop(i)

    async def write(self, cmd: dict, timeout: float = 15.0) -> object:
        """Propose through whoever leads; a NotLeaderError (leadership moved under load) is retried, which is
        safe for the idempotent sets these tests write."""
        from registry.consensus import NotLeaderError

        deadline = time.monotonic() + timeout
        while True:
            leader = await self.leader()
            try:
                return await leader.propose(cmd)
            except NotLeaderError:
                if time.monotonic() > deadline:
                    raise


async def until(pred, timeout: float = 10.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def kv(key: str, value: bytes) -> dict:
    return {"Type": "kv", "Verb": "set", "Key": key, "Value": value}


@pytest.fixture
async def cluster(tmp_path: Path):  # noqa: ANN201
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        await c.close()


async def test_bootstrap_replicate_forward_and_read(cluster: Cluster) -> None:
    for i in range(3):
        await cluster.start(i)
    leader = await cluster.leader()
    followers = [s for s in cluster.servers.values() if s is not leader]
    assert sorted(leader.peers()) == sorted(f"127.0.0.1:{p}" for p in cluster.ports)
    assert await followers[0].propose(kv("a", b"1")) is True  # forwarded to the leader
    assert await leader.propose({"Type": "kv", "Verb": "cas", "Key": "a", "Value": b"2", "Index": 0}) is False
    await until(lambda: all("a" in s.fsm.store.kv for s in cluster.servers.values()))
    await followers[1].barrier_read("consistent")
    assert followers[1].fsm.store.kv["a"].value == b"1"
    await followers[1].barrier_read("leader")
    await leader.barrier_read("leader")
    assert followers[0].known_leader() and followers[0].last_contact_ms() < 1000


async def test_a_write_forwarded_by_a_follower_is_applied_there_before_it_answers(cluster: Cluster) -> None:
    """Read-your-writes on the server a client talks to: the follower that forwarded a write answers only
    once its own state machine holds it (a token created through a follower was not found by it for a
    heartbeat, seen as a 403 "ACL not found" right after ``acl bootstrap`` in a cluster test)."""
    for i in range(3):
        await cluster.start(i)
    leader = await cluster.leader()
    follower = next(s for s in cluster.servers.values() if s is not leader)
    for n in range(20):
        assert await follower.propose(kv(f"ryw/{n}", str(n).encode())) is True
        assert follower.fsm.store.kv[f"ryw/{n}"].value == str(n).encode()  # no wait, no barrier


async def test_leader_failover_and_restart_keeps_writes(cluster: Cluster) -> None:
    for i in range(3):
        await cluster.start(i)
    leader = await cluster.leader()
    acked = []
    for n in range(50):
        assert await cluster.write(kv(f"k{n}", b"v")) is True
        acked.append(f"k{n}")
    leader = await cluster.leader()
    old = next(i for i, s in cluster.servers.items() if s is leader)
    await cluster.stop(old)
    started = time.monotonic()
    new_leader = await cluster.leader()
    assert await new_leader.propose(kv("after", b"1")) is True
    assert time.monotonic() - started < 5
    await cluster.start(old)
    await cluster.leader()
    await until(lambda: all("after" in s.fsm.store.kv for s in cluster.servers.values()))
    for s in cluster.servers.values():
        assert set(acked) <= set(s.fsm.store.kv)
    # Stop everyone and start again from disk.
    for i in range(3):
        await cluster.stop(i)
    for i in range(3):
        await cluster.start(i)
    leader = await cluster.leader()
    await leader.barrier_read("consistent")
    assert set(acked) | {"after"} <= set(leader.fsm.store.kv)


async def test_join_snapshot_and_remove(tmp_path: Path) -> None:
    c = Cluster(tmp_path, n=4, snapshot_threshold=40)
    try:
        for i in range(3):
            await c.start(i)
        leader = await c.leader()
        for n in range(120):
            assert await c.write(kv(f"k{n:03d}", b"x" * 10)) is True
        leader = await c.leader()
        # Snapshots are written by a forked child; wait for one to land on every server.
        for i in range(3):
            await until(lambda i=i: any(p.suffix == ".snap" for p in (tmp_path / f"s{i}" / "raft" / "snapshots").iterdir()))
        # A fourth server joins the running cluster: it gets a snapshot (the log behind it is compacted),
        # catches up as a learner, and becomes a voter.
        await c.start(3, expect=0, join=[0, 1, 2])
        await until(lambda: len(leader.node.configuration.voters) == 4, timeout=15)  # type: ignore[union-attr]
        newcomer = c.servers[3]
        await until(lambda: len(newcomer.fsm.store.kv) == 120, timeout=15)
        assert newcomer.fsm.store.kv["k000"].value == b"x" * 10
        # Remove it again: three voters remain and writes work.
        await leader.remove_server("node-3")
        await until(lambda: len(leader.node.configuration.voters) == 3)  # type: ignore[union-attr]
        await c.stop(3)
        assert await leader.propose(kv("still", b"ok")) is True
    finally:
        await c.close()


async def test_transfer_leadership(cluster: Cluster) -> None:
    for i in range(3):
        await cluster.start(i)
    leader = await cluster.leader()
    target = next(s for s in cluster.servers.values() if s is not leader)
    assert await leader.transfer_leadership(target.id) == target.id
    new = await cluster.leader()
    assert new is target
    assert await new.propose(kv("x", b"1")) is True


async def test_writes_during_a_leadership_transfer_go_through(cluster: Cluster) -> None:
    """A transfer makes the core refuse proposals until it ends; the driver holds them (nothing was
    appended) and places them once the transfer is over, on whichever server leads then, so writes made
    through the old leader and through a follower right as leadership moves all succeed."""
    for i in range(3):
        await cluster.start(i)
    leader = await cluster.leader()
    target, other = [s for s in cluster.servers.values() if s is not leader]
    assert leader.node is not None
    leader.node.transfer_leadership(target.id)  # what transfer_leadership() starts, without waiting on it
    writes = [leader.propose(kv(f"old-leader/{n}", b"1")) for n in range(20)]
    writes += [other.propose(kv(f"follower/{n}", b"1")) for n in range(20)]
    assert await asyncio.gather(*writes) == [True] * 40
    assert await cluster.leader() is target
    await until(lambda: all(len(s.fsm.store.kv) == 40 for s in cluster.servers.values()))


async def test_minority_cannot_write_or_read_consistently(cluster: Cluster) -> None:
    for i in range(3):
        await cluster.start(i)
    leader = await cluster.leader()
    assert await leader.propose(kv("a", b"1")) is True
    for i in [i for i, s in cluster.servers.items() if s is not leader]:
        await cluster.stop(i)
    # The old leader steps down (CheckQuorum) and can neither write nor serve a linearizable read.
    await until(lambda: not leader.is_leader(), timeout=5)
    from registry.consensus import NotLeaderError

    with pytest.raises(NotLeaderError):
        await leader.propose(kv("lost", b"1"))
    with pytest.raises(NotLeaderError):
        await leader.barrier_read("consistent")
    await leader.barrier_read("stale")  # stale reads still work
    assert leader.fsm.store.kv["a"].value == b"1"


async def test_restart_after_an_install_interrupted_before_the_log_was_discarded(tmp_path: Path) -> None:
    """A snapshot is written, then the old log is discarded; a crash between the two leaves a WAL whose
    entries all lie below the snapshot. The server must start from the snapshot and append after it
    (found by the Raft simulator's soak: seed 1001331, 5 nodes), not fail on the gap."""
    from registry.raft.snapshots import SnapshotStore
    from registry.raft.stable import StableStore
    from registry.raft.wal import WAL

    c = Cluster(tmp_path, n=1)
    try:
        await c.start(0, expect=1)
        for n in range(3):
            assert await c.write(kv(f"old{n}", b"x")) is True
        await c.stop(0)
        base = tmp_path / "s0" / "raft"
        term = StableStore.open(base).term
        with WAL.open(base / "wal") as wal:
            stale_last = wal.last_index
        # What the interrupted install left: a snapshot far past the log, taken from a leader's FSM.
        fsm = FSM()
        fsm.apply_command(stale_last + 40, kv("from-snapshot", b"yes"))
        SnapshotStore.open(base / "snapshots").create(stale_last + 40, term, {"voters": ["node-0"], "learners": []},
                                                      fsm.snapshot())  # fmt: skip

        server = await c.start(0, expect=1)
        await c.leader()
        assert server.node is not None and server.node.log.last_index >= stale_last + 40
        assert server.fsm.store.kv["from-snapshot"].value == b"yes"
        assert await c.write(kv("after", b"ok")) is True  # appended right after the snapshot
        await c.stop(0)
        with WAL.open(base / "wal") as wal:
            assert wal.first_index > stale_last  # the stale entries below the snapshot are gone
        server = await c.start(0, expect=1)  # and it starts again from what is on disk
        await c.leader()
        assert await c.write(kv("again", b"ok")) is True
        assert server.fsm.store.kv["after"].value == b"ok"
    finally:
        await c.close()


async def test_a_proposal_nobody_answers_fails_at_its_deadline(tmp_path: Path) -> None:
    """The proposal timeout is one sweep a tick over the deadlines in order, not a timer per proposal: an
    expired proposal fails with NotLeaderError, answered ones leave the queue, and a proposal stuck at the
    head does not keep thousands of answered ones behind it."""
    from registry.consensus import NotLeaderError
    from registry.raft.base import EXPIRY_COMPACT, PROPOSAL_TIMEOUT

    server = RaftServer(Cluster(tmp_path, 1).options(0, expect=1), FSM(), server_transport(RPCRouter()),
                        CommandResults())  # fmt: skip
    loop = asyncio.get_running_loop()
    stuck = loop.create_task(server._propose_bytes(b"never answered"))
    await asyncio.sleep(0)
    answered = [loop.create_task(server._propose_bytes(b"x")) for _ in range(EXPIRY_COMPACT + 10)]
    await asyncio.sleep(0)
    for _, fut in server._pending[1:]:
        fut.set_result(True)
    assert all(await asyncio.gather(*answered))
    server._expire_proposals(loop.time())
    assert not stuck.done() and len(server._expiry) == 1  # compacted down to the one still waiting
    server._expire_proposals(loop.time() + PROPOSAL_TIMEOUT + 0.1)
    with pytest.raises(NotLeaderError):
        await stuck
    assert not server._expiry


async def test_servers_look_at_the_snapshot_threshold_at_staggered_times(tmp_path: Path) -> None:
    """With raft_snapshot_interval set, a server snapshots only when its randomized look comes (one to two
    intervals apart), not the moment the threshold is crossed: the servers of a cluster, which cross it
    together, snapshot at different times (hashicorp/raft's SnapshotInterval). A log that grows past three to
    five thresholds is snapshotted without waiting (it is held in memory)."""
    c = Cluster(tmp_path, n=3, snapshot_threshold=20, snapshot_interval=0.6)
    snaps = lambda i: [p for p in (tmp_path / f"s{i}" / "raft" / "snapshots").iterdir() if p.suffix == ".snap"]  # noqa: E731
    try:
        for i in range(3):
            await c.start(i)
        leader = await c.leader()
        waits = [leader._snapshot_wait() for _ in range(200)]
        assert 0.6 <= min(waits) and max(waits) <= 1.2 and max(waits) - min(waits) > 0.3
        assert all(60 <= s._snapshot_cap < 100 for s in c.servers.values())
        for s in c.servers.values():
            s._next_snapshot_check = float("inf")  # the next look is far away
        for n in range(50):
            assert await c.write(kv(f"k{n:03d}", b"x")) is True
        await asyncio.sleep(0.3)
        assert not any(snaps(i) for i in range(3))  # the threshold is crossed, but nobody looked
        c.servers[0]._next_snapshot_check = 0.0  # server 0's look is due: taken at its next batch
        assert await c.write(kv("now", b"x")) is True
        await until(lambda: bool(snaps(0)))
        assert c.servers[0]._next_snapshot_check > 0.0  # the next look is scheduled
        await asyncio.sleep(0.3)
        assert not snaps(1) and not snaps(2)
        for i in (1, 2):
            c.servers[i]._snapshot_cap = 70
        for n in range(25):  # 76 entries behind: past the cap, with the look still far away
            assert await c.write(kv(f"m{n:03d}", b"x")) is True
        for i in (1, 2):
            await until(lambda i=i: bool(snaps(i)))
    finally:
        await c.close()


async def test_a_slow_snapshot_child_gives_the_collector_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While a forked snapshot child lives, the parent runs no cyclic collection (shared pages stay shared); a
    child still running after SNAPSHOT_GC_HOLD_MAX_S is stuck, and the collector comes back on while it is
    waited for. The snapshot still lands when the child ends."""
    import gc

    from registry.gcpause import GCHold
    from registry.raft import storage

    monkeypatch.setattr(storage, "SNAPSHOT_GC_HOLD_MAX_S", 0.6)
    c = Cluster(tmp_path, n=3, snapshot_threshold=20)
    snaps = lambda i: [p for p in (tmp_path / f"s{i}" / "raft" / "snapshots").iterdir() if p.suffix == ".snap"]  # noqa: E731
    try:
        for i in range(3):
            server = await c.start(i)
            real = server.fsm.snapshot

            def slow(real=real):  # noqa: ANN001, ANN202 - runs in the forked child
                time.sleep(2.5)
                return real()

            server.fsm.snapshot = slow
        await c.leader()
        for n in range(25):
            assert await c.write(kv(f"k{n:03d}", b"x")) is True
        await until(lambda: any(s._snapshotting for s in c.servers.values()))
        assert GCHold.holding() > 0 and not gc.isenabled()  # a child is writing: no collections
        # Still writing (it sleeps 2.5 s), but past the 0.6 s allowed: the collector is on again.
        await until(lambda: GCHold.holding() == 0, timeout=1.5)
        assert gc.isenabled() and any(s._snapshotting for s in c.servers.values())
        for i in range(3):
            await until(lambda i=i: bool(snaps(i)))
        assert GCHold.holding() == 0 and gc.isenabled()
    finally:
        await c.close()
