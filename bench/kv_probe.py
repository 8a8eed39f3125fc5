"""A KV write latency probe in its own process, for benchmarks whose load generator shares its core.

``bench.fleet`` measures the servers' KV write latency while a simulated fleet keeps the other core busy.
Measured from a thread of the orchestrator, each write's time also held the wait for that core (the
simulator's turn) and for the orchestrator's interpreter lock (its other threads parse member lists and
metrics): the load generator's latency, not the servers'. This probe is a process of its own that does
nothing but the writes, over one keep-alive connection, and asks the kernel for a real-time priority
(``SCHED_FIFO``, root only; else the highest ``nice`` it may have) so it runs the moment its write's
answer arrives, whatever the simulator is doing.

    python -m bench.kv_probe URL RATE OUT

``PUT URL/v1/kv/<prefix>k<n % 1000>`` at ``RATE`` writes a second while on. Each answered write appends
``<monotonic start> <seconds> <status>`` to the file ``OUT`` (``time.monotonic`` is the system's
``CLOCK_MONOTONIC``, so the orchestrator compares it with its own). Lines on stdin: ``on``, ``off`` (pause
the writes), ``quit``. It starts off.
"""

from __future__ import annotations

import http.client
import os
import sys
import threading
import time
import urllib.parse

PREFIX = "fleet/"
BODY = b"0123456789abcdef"


def raise_priority() -> str:
    """The priority the probe got: ``fifo`` (real-time), ``nice -N`` or ``normal``."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        return "fifo"
    except (OSError, AttributeError):
        pass
    for n in (-20, -10, -5):
        try:
            os.setpriority(os.PRIO_PROCESS, 0, n)
            return f"nice {n}"
        except OSError:
            continue
    return "normal"


class Probe:
    def __init__(self, url: str, rate: float, out: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.interval = 1.0 / rate
        self.out = open(out, "a", buffering=1)  # noqa: SIM115 - one line per write, kept open for the run
        self.on = threading.Event()
        self.quit = threading.Event()
        self.conn: http.client.HTTPConnection | None = None

    def _put(self, n: int) -> int:
        for attempt in (0, 1):  # a reset keep-alive connection is reopened once
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
            try:
                self.conn.request("PUT", f"/v1/kv/{PREFIX}k{n % 1000}", BODY)
                resp = self.conn.getresponse()
                resp.read()
                return resp.status
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt:
                    return 0
        return 0

    def run(self) -> None:
        n = 0
        next_at = time.monotonic()
        while not self.quit.is_set():
            if not self.on.wait(0.2):
                next_at = time.monotonic()
                continue
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            n += 1
            t0 = time.monotonic()
            status = self._put(n)
            self.out.write(f"{t0:.6f} {time.monotonic() - t0:.6f} {status}\n")

    def control(self) -> None:
        for line in sys.stdin:
            word = line.strip()
            if word == "on":
                self.on.set()
            elif word == "off":
                self.on.clear()
            elif word == "quit":
                break
        self.quit.set()
        self.on.set()


def read_samples(path: str) -> list[tuple[float, float, int]]:
    """The probe's lines: (start, seconds, status)."""
    out = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3:
                out.append((float(parts[0]), float(parts[1]), int(parts[2])))
    return out


def main() -> int:
    url, rate, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    priority = raise_priority()
    probe = Probe(url, rate, out)
    print(f"ready {priority}", flush=True)
    threading.Thread(target=probe.control, daemon=True).start()
    probe.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
