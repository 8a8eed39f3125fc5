"""CPU per KV write through the API's own code, in-process: ``Api.dispatch`` of ``PUT /v1/kv/<key>`` with a
16-byte body on a dev agent (routing, body read, typed command, proposal, FSM apply, JSON answer).

On a shared 2-core machine a cluster's CPU per write moves with the load (batching, wake-ups), so a
change to the leader's per-write Python cost of a few microseconds is lost in it; this measures that
cost alone: no sockets, no aiohttp parsing or writing, no Raft network, the minimum over rounds of the
process CPU time per write. Compare two trees by running it in each, back to back.

    python -m bench.write_path [--writes 2000] [--rounds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from aiohttp import streams, web
from aiohttp.test_utils import make_mocked_request

from registry.testing.agent import async_dev_agent

VALUE = b"0123456789abcdef"


class _Protocol:
    """What aiohttp's StreamReader asks of the connection that feeds it."""

    _reading_paused = False

    def pause_reading(self, **_: object) -> None:
        return None

    def resume_reading(self, **_: object) -> None:
        return None


def _request(loop: asyncio.AbstractEventLoop, key: str) -> web.Request:
    payload = streams.StreamReader(_Protocol(), 2**16, loop=loop)  # type: ignore[arg-type]
    payload.feed_data(VALUE)
    payload.feed_eof()
    return make_mocked_request("PUT", f"/v1/kv/{key}", headers={"Content-Length": str(len(VALUE)), "Host": "x"},
                               payload=payload)  # fmt: skip


async def measure(writes: int, rounds: int) -> float:
    """Microseconds of CPU per write, the best of ``rounds`` rounds of ``writes`` writes."""
    async with async_dev_agent() as running:
        api = running.agent.api
        assert api is not None
        api.pretty_default = False  # answer as a server does, not as -dev
        loop = asyncio.get_running_loop()
        best = float("inf")
        for r in range(rounds):
            requests = [_request(loop, f"bench/{r}-{i}") for i in range(writes)]  # built outside the timing
            start = time.process_time()
            for request in requests:
                resp = await api.dispatch(request)
            best = min(best, (time.process_time() - start) / writes)
            assert resp.status == 200, resp.status
        return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    print(f"Api.dispatch, PUT /v1/kv: {asyncio.run(measure(args.writes, args.rounds)):.1f} us CPU per write "
          f"(best of {args.rounds} rounds of {args.writes})")  # fmt: skip


if __name__ == "__main__":
    main()
