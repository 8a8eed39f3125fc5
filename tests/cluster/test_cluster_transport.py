"""Regression: a peer connection reset while the sender is idle must not silence that peer for good.

Under uvloop (which ``proconsul agent`` runs on), ``StreamWriter.write`` on a transport that a reset has
already closed raises RuntimeError, where plain asyncio fails later, in ``drain``. The Raft sender caught
only OSError, so its task died: after a relay healed a partition (or a peer restarted) the leader never sent
to that peer again, and the rejoining server never learned of a leader. Found by the partition tests here.
"""

from __future__ import annotations

import asyncio
import time

import uvloop

from registry.raft.listener import ServerListener
from registry.raft.messages import Heartbeat
from registry.raft.transport import PeerSender, RPCClient
from tests.cluster.harness import free_port
from tests.cluster.relay import FaultRelay, advertise_ip, bind_ip


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
