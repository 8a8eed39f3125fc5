"""The server port's connections: they survive resets, and a silently stalled one is replaced.

Regression: a peer connection reset while the sender is idle must not silence that peer for good.

Under uvloop (which ``proconsul agent`` runs on), ``StreamWriter.write`` on a transport that a reset has
already closed raises RuntimeError, where plain asyncio fails later, in ``drain``. The Raft sender caught
only OSError, so its task died: after a relay healed a partition (or a peer restarted) the leader never sent
to that peer again, and the rejoining server never learned of a leader. Found by the partition tests here.

A path that drops packets silently (``tests.cluster.stall_probe``, run in a network namespace): the
stream's backlog is dropped, by ``PeerSender.reset`` or by the kernel's user timeout, and never delivered
late; fresh messages get through within a second of the heal.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvloop

from registry.raft.listener import ServerListener
from registry.raft.messages import AppendEntries, Entry, EntryKind, Heartbeat
from registry.raft.transport import PEER_QUEUE_BYTES, PeerSender, RPCClient
from tests.cluster.harness import free_port
from tests.cluster.netns import Netns
from tests.cluster.relay import FaultRelay, advertise_ip, bind_ip

ROOT = Path(__file__).resolve().parents[2]


async def _until(what: str, fn: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not fn():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def _scenario(relay: FaultRelay) -> None:
    """Server 1 sends to server 2 through the relay, which resets the link while both sides are idle."""
    received: list[Heartbeat] = []

    async def on_rpc(method: str, args: object, caller: object = None) -> object:
        return args

    listener = ServerListener(lambda m: received.append(m), on_rpc, None)  # type: ignore[arg-type,misc]
    port = free_port(advertise_ip(2), bind_ip(2))
    await listener.start(bind_ip(2), port)
    relay.add_server(2, port)
    address = f"{advertise_ip(2)}:{port}"
    sender = PeerSender("b", lambda: address, None, None, source_ip=advertise_ip(1))
    rpc = RPCClient(address, source_ip=advertise_ip(1))
    try:
        sender.send(Heartbeat(1, "a", "b", 0, 1))
        await _until("the first heartbeat", lambda: len(received) == 1)
        assert await rpc.call("echo", "one", timeout=5) == "one"
        for round_ in range(2, 5):
            relay.block(1, 2, "drop")  # resets the link's connections at once
            await asyncio.sleep(0.2)  # both sides idle while the reset lands
            relay.heal()
            sender.send(Heartbeat(1, "a", "b", 0, round_))
            await _until(f"heartbeat {round_} over a new connection", lambda r=round_: received[-1].round == r)
            assert await rpc.call("echo", round_, timeout=5) == round_
    finally:
        await sender.close()
        await rpc.close()
        await listener.close()


def test_peer_sender_and_rpc_client_survive_resets_on_uvloop() -> None:
    relay = FaultRelay()
    try:
        uvloop.run(_scenario(relay))
    finally:
        relay.close()


# ---------------------------------------------------------------------- a silently stalled path


def _probe(make_netns: Callable[..., Netns], mode: str) -> dict[str, Any]:
    net = make_netns(1)
    proc = subprocess.run(net.argv_in(1, [sys.executable, "-m", "tests.cluster.stall_probe", mode]),
                          cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["connected"] and result["rpc_before"] == "before", result
    return result


def _assert_recovered(result: dict[str, Any]) -> None:
    # Nothing queued behind the stall reaches the peer late, and fresh messages get through at once.
    assert result["stale_arrived"] == [], result
    assert result["fresh_after_heal"] is not None and result["fresh_after_heal"] < 1.0, result
    # An RPC on the stalled connection fails as a lost connection within about the user timeout, not
    # after its own 30 s timeout; the next call dials anew.
    assert "lost" in result["rpc_during"] and result["rpc_failed_after"] < 2.5, result
    assert result["rpc_after"] == "after", result


def test_a_reset_drops_the_stalled_backlog(make_netns: Callable[..., Netns]) -> None:
    """A stream whose packets vanish holds its bytes as unacknowledged (``outstanding``); ``reset`` drops
    the connection with them, so after the heal the peer gets fresh messages and never the stale ones."""
    result = _probe(make_netns, "reset")
    assert result["outstanding"] is True, result
    assert result["resets"] == 1 and result["reset_at"] is not None, result
    _assert_recovered(result)


def test_the_kernel_user_timeout_aborts_a_stalled_stream(make_netns: Callable[..., Netns]) -> None:
    """Nothing resets the stream: TCP_USER_TIMEOUT aborts it about a second after its bytes stopped being
    acknowledged, with the same outcome."""
    result = _probe(make_netns, "user-timeout")
    assert result["resets"] == 0, result
    assert result["aborted_at"] is not None and result["aborted_at"] < 2.0, result
    _assert_recovered(result)


def test_the_send_queue_is_bounded_in_bytes() -> None:
    """While a peer cannot be reached, what waits for it is capped in bytes as well as in messages (the
    oldest go first: Raft resends), so a long outage costs bounded memory even with large appends."""

    async def scenario() -> None:
        sender = PeerSender("b", lambda: None, None, None)  # no address yet: nothing is sent, all queues
        try:
            big = Entry(1, 1, EntryKind.NORMAL, b"x" * (512 * 1024))
            for n in range(100):
                sender.send(AppendEntries(1, "a", "b", n, 1, (big,), 0))
            assert sender._queued_bytes <= PEER_QUEUE_BYTES
            assert sender.dropped >= 100 - PEER_QUEUE_BYTES // (512 * 1024)
            assert sender.outstanding()
        finally:
            await sender.close()

    uvloop.run(scenario())
