"""The asyncio driver on real sockets: drivers on 127.0.0.1 form a pool, see a stopped member fail and a
leaving one leave, and shrug off garbage on both their UDP and TCP sides."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Callable

import pytest

from registry.gossip import Address, EventKind, GossipConfig, MemberState
from registry.gossip.codec import PacketRejected
from registry.gossip.driver import GossipDriver, parse_address

# Protocol timings scaled down 5x so a failure is declared in about 2 s on loopback.
FAST = GossipConfig(probe_interval=0.2, probe_timeout=0.1, gossip_interval=0.05, suspicion_timeout_cap=1.0,
                    push_pull_interval=2.0, stall_tolerance=0.5)  # fmt: skip
LOCAL = Address("127.0.0.1", 0)


async def _until(check: Callable[[], bool], timeout: float, what: str) -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not check():
        if loop.time() - start > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
    return loop.time() - start


def _sees(d: GossipDriver, name: str, state: MemberState) -> bool:
    m = d.core.member(name)
    return m is not None and m.state is state


@pytest.fixture
async def pool() -> AsyncIterator[list[GossipDriver]]:
    drivers = [GossipDriver(f"node-{i}", bind=LOCAL, config=FAST, tags={"role": "node", "dc": "dc1"})
               for i in range(7)]  # fmt: skip
    addrs = [await d.start() for d in drivers]
    for d in drivers[1:]:
        assert await d.join([addrs[0]]) == 1
    await _until(lambda: all(d.core.num_live == len(drivers) for d in drivers), 10, "the pool to converge")
    yield drivers
    for d in drivers:
        await d.stop()


async def test_a_stopped_member_fails_and_a_leaving_member_leaves(pool: list[GossipDriver]) -> None:
    watcher = pool[0].events()
    await pool[6].stop()  # its sockets closed: a crash, as the others see it
    took = await _until(lambda: all(_sees(d, "node-6", MemberState.DEAD) for d in pool[:6]), 10, "node-6 failed")
    assert took < 5.0
    assert await pool[5].leave(timeout=5.0)
    await _until(lambda: all(_sees(d, "node-5", MemberState.LEFT) for d in pool[:5]), 5, "node-5 left")
    assert all(d.core.member("node-6").status == "failed" for d in pool[:5])
    assert all(d.core.member("node-5").status == "left" for d in pool[:5])
    seen = []
    while (e := await watcher.get(0.01)) is not None:
        seen.append((e.kind, e.member.name))
    assert (EventKind.FAILED, "node-6") in seen and (EventKind.LEFT, "node-5") in seen
    assert not [e for e in seen if e[0] is EventKind.FAILED and e[1] != "node-6"]
    # Tags travel with membership; acks carried coordinates, and round trips moved them.
    assert pool[1].core.member("node-0").tags == {"role": "node", "dc": "dc1"}
    assert any(v != 0.0 for v in pool[0].coordinate.coordinate.vec)


async def test_garbage_is_dropped_and_counted_never_raised(pool: list[GossipDriver]) -> None:
    target = pool[0]
    addr = target.local_member.addr
    before = target.stats["packets_dropped"]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    junk = [b"", b"\x01", b"\x00garbage", b"\x01\x91\x92\x00", b"\x01" + b"\x91" * 3000, b"\xff" * 1500]
    for blob in junk:
        udp.sendto(blob, (addr.host, addr.port))
    udp.close()
    await _until(lambda: target.stats["packets_dropped"] - before >= len(junk) - 1, 5, "the junk to be counted")
    # TCP: a frame that lies about its length, a truncated one, and plain garbage.
    for blob in (struct.pack(">I", 1 << 31), struct.pack(">I", 100) + b"\x01\x02", b"GET / HTTP/1.0\r\n\r\n"):
        reader, writer = await asyncio.open_connection(addr.host, addr.port)
        writer.write(blob)
        await writer.drain()
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed without an answer
        writer.close()
    await asyncio.sleep(2 * FAST.probe_interval)
    assert all(d.core.num_live == 7 for d in pool)  # nothing changed membership


async def test_a_large_push_pull_is_decoded_and_encoded_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Push-pulls of a large pool's member list are built in a worker thread, with the big-work hold taken
    (no cyclic collection meanwhile); a join and the periodic exchanges work the same through that path
    (forced here for every frame), and once they are done, and garbage frames were refused, no hold is left."""
    import gc
    import threading

    import registry.gossip.driver as driver_module
    from registry.gossip.driver import BigWork

    monkeypatch.setattr(driver_module, "BIG_STREAM_BYTES", 0)
    monkeypatch.setattr(driver_module, "BIG_STREAM_STATES", 0)
    seen: list[tuple[str, int]] = []  # (thread, holds) of each decode
    decode = driver_module.decode_stream

    def recording_decode(data: bytes):  # noqa: ANN202
        seen.append((threading.current_thread().name, BigWork.holding()))
        return decode(data)

    monkeypatch.setattr(driver_module, "decode_stream", recording_decode)
    drivers = [GossipDriver(f"big-{i}", bind=LOCAL, config=FAST, tags={"role": "node"}) for i in range(3)]
    try:
        addrs = [await d.start() for d in drivers]
        for d in drivers[1:]:
            assert await d.join([addrs[0]]) == 1
        await _until(lambda: all(d.core.num_live == 3 for d in drivers), 10, "the pool to converge")
        target = drivers[0].local_member.addr
        for blob in (struct.pack(">I", 40) + b"\x01" * 40, struct.pack(">I", 100) + b"\x01\x02"):
            reader, writer = await asyncio.open_connection(target.host, target.port)
            writer.write(blob)
            await writer.drain()
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
        await _until(lambda: BigWork.holding() == 0, 5, "the holds to be released")
    finally:
        for d in drivers:
            await d.stop()
    assert seen and threading.main_thread().name not in {thread for thread, _ in seen}
    assert all(holds >= 1 for _, holds in seen)  # each decode ran with the hold taken
    assert BigWork.holding() == 0 and gc.isenabled()


def test_big_work_holds_the_collector_and_the_switch_interval_until_the_last_release() -> None:
    import gc
    import sys

    from registry.gossip.driver import BIG_WORK_SWITCH_INTERVAL, BigWork

    interval = sys.getswitchinterval()
    assert gc.isenabled() and BigWork.holding() == 0
    a, b = BigWork(), BigWork()
    a.acquire()
    a.acquire()  # one hold per BigWork, however often acquired
    b.acquire()
    assert BigWork.holding() == 2 and not gc.isenabled()
    assert sys.getswitchinterval() == pytest.approx(BIG_WORK_SWITCH_INTERVAL)
    a.release()
    assert not gc.isenabled() and sys.getswitchinterval() == pytest.approx(BIG_WORK_SWITCH_INTERVAL)
    b.release()
    b.release()  # a second release gives back nothing it does not hold
    assert BigWork.holding() == 0 and gc.isenabled() and sys.getswitchinterval() == interval
    # A collector switched off by someone else stays off.
    gc.disable()
    try:
        a.acquire()
        a.release()
        assert not gc.isenabled()
    finally:
        gc.enable()


class _RejectAll:
    """A codec that authenticates nothing (as a wrong key would): every packet is refused."""

    overhead = 16

    def seal(self, data: bytes) -> bytes:
        return b"\x00" * 16 + data

    def open(self, data: bytes) -> bytes:
        raise PacketRejected("wrong key")


async def test_a_member_with_a_codec_the_others_do_not_share_cannot_join() -> None:
    a = GossipDriver("a", bind=LOCAL, config=FAST)
    b = GossipDriver("b", bind=LOCAL, config=FAST, codec=_RejectAll())
    try:
        addr = await a.start()
        await b.start()
        assert await b.join([addr]) == 0
        assert a.core.num_live == 1 and a.stats["streams_dropped"] >= 1
    finally:
        await a.stop()
        await b.stop()


def test_join_addresses_take_consuls_forms() -> None:
    assert parse_address("10.0.0.1") == Address("10.0.0.1", 8301)
    assert parse_address("10.0.0.1:8400") == Address("10.0.0.1", 8400)
    assert parse_address("[::1]") == Address("::1", 8301)
    assert parse_address("[::1]:7000") == Address("::1", 7000)
    assert parse_address("consul.example.com") == Address("consul.example.com", 8301)
    for bad in ("", ":8301", "host:0", "host:99999"):
        with pytest.raises(ValueError):
            parse_address(bad)


async def test_a_query_is_answered_by_every_member_over_real_sockets(pool: list[GossipDriver]) -> None:
    """Serf's query on loopback: every member's handler answers (small answers by UDP, a large one over
    TCP), acks come back, and with ``until_all`` the origin stops as soon as the last expected answer is in
    instead of waiting out the timeout."""
    for d in pool:
        d.handle_query("whoami", lambda q, name=d.name: name.encode() * (3000 if name == "node-4" else 1))
    loop = asyncio.get_running_loop()
    start = loop.time()
    result = await pool[2].query("whoami", b"", timeout=5.0, ack=True, until_all=True)
    assert loop.time() - start < 4.0  # by the resend at half the timeout at the latest, not at 5 s
    assert result.expected == {d.name for d in pool}
    assert {k: len(v) for k, v in result.responses.items()} == {
        d.name: len(d.name) * (3000 if d.name == "node-4" else 1) for d in pool}
    # A query nobody handles is acknowledged (ack asked) and answered by no one; it ends at its deadline.
    quiet = await pool[0].query("nobody", b"", timeout=0.5, ack=True)
    assert quiet.responses == {} and quiet.acks <= {d.name for d in pool}
