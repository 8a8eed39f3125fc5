"""Run inside a network namespace made by ``tests.cluster.netns`` (as root): a Raft stream (``PeerSender``)
and an RPC connection (``RPCClient``) over loopback, from 127.0.0.2 to a listener on 127.0.0.1, whose path
is cut silently (the namespace's nftables set drops 127.0.0.2's packets on input: the sender's bytes vanish
and nothing errors) and healed. Prints one JSON object with what it saw; the test asserts on it.

    ip netns exec <ns> python -m tests.cluster.stall_probe {reset|user-timeout}

``reset``: the stream is reset half a second into the cut, as the Raft server does to a silent peer;
``user-timeout``: nothing resets it, so the kernel's ``TCP_USER_TIMEOUT`` must abort it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import uvloop

from registry.raft.errors import RPCError
from registry.raft.listener import ServerListener
from registry.raft.messages import Heartbeat
from registry.raft.transport import PeerSender, RPCClient
from tests.cluster.netns import NFT_TABLE, _bin

SOURCE, TARGET = "127.0.0.2", "127.0.0.1"
CUT = 2.0  # seconds the path drops packets
PACE = 0.05  # one heartbeat per tick


def _nft(verb: str) -> None:
    subprocess.run([_bin("nft") or "nft", verb, "element", "inet", NFT_TABLE, "blocked", f"{{ {SOURCE} }}"],
                   check=True, capture_output=True, timeout=20)  # fmt: skip


async def _until(fn: Any, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not fn():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


async def probe(mode: str) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    arrivals: list[tuple[float, int]] = []

    async def on_rpc(method: str, args: object, caller: object = None) -> object:
        return args

    listener = ServerListener(lambda m: arrivals.append((loop.time(), m.round)), on_rpc, None)  # type: ignore[attr-defined]
    _, port = await listener.start(TARGET, 0)
    address = f"{TARGET}:{port}"
    sender = PeerSender("b", lambda: address, None, None, source_ip=SOURCE)
    rpc = RPCClient(address, source_ip=SOURCE)
    out: dict[str, Any] = {"mode": mode}
    rounds = iter(range(1, 1 << 30))
    try:
        sender.send(Heartbeat(1, "a", "b", 0, next(rounds)))
        out["connected"] = await _until(lambda: arrivals, 5)
        out["rpc_before"] = await rpc.call("echo", "before", timeout=5)

        _nft("add")
        cut_at = loop.time()
        call = loop.create_task(rpc.call("echo", "during", timeout=30))
        ended: list[float] = []
        call.add_done_callback(lambda _: ended.append(loop.time()))
        last_stale = 0
        reset_at = aborted_at = None
        while loop.time() - cut_at < CUT:
            last_stale = next(rounds)
            sender.send(Heartbeat(1, "a", "b", 0, last_stale))
            elapsed = loop.time() - cut_at
            if 0.4 < elapsed < 0.5 and "outstanding" not in out:
                out["outstanding"] = sender.outstanding()
            if mode == "reset" and reset_at is None and elapsed >= 0.5:
                sender.reset("probe")
                reset_at, out["stale_through"] = elapsed, last_stale
            if mode == "user-timeout" and aborted_at is None and sender.connected_for() is None:
                aborted_at, out["stale_through"] = elapsed, last_stale
            await asyncio.sleep(PACE)
        out["reset_at"], out["aborted_at"], out["resets"] = reset_at, aborted_at, sender.resets
        try:
            await call
            out["rpc_during"] = "answered"
        except RPCError as exc:
            out["rpc_during"] = exc.message
        out["rpc_failed_after"] = ended[0] - cut_at

        _nft("delete")
        healed_at = loop.time()
        seen = len(arrivals)
        fresh_from = next(rounds)
        sender.send(Heartbeat(1, "a", "b", 0, fresh_from))
        while loop.time() - healed_at < 3.0 and not any(r >= fresh_from for _, r in arrivals[seen:]):
            sender.send(Heartbeat(1, "a", "b", 0, next(rounds)))
            await asyncio.sleep(0.01)
        first = next((t for t, r in arrivals[seen:] if r >= fresh_from), None)
        out["fresh_after_heal"] = None if first is None else first - healed_at
        out["rpc_after"] = await rpc.call("echo", "after", timeout=5)
        await asyncio.sleep(1.5)  # anything stale still in flight would land by now
        out["stale_arrived"] = sorted({r for _, r in arrivals if 2 <= r <= out.get("stale_through", 0)})
    finally:
        await sender.close()
        await rpc.close()
        await listener.close()
    return out


def main() -> int:
    print(json.dumps(uvloop.run(probe(sys.argv[1]))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
