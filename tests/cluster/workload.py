"""Concurrent KV clients against a running cluster, recording a history for the linearizability checker.

Each client task loops over a few registers (``PUT``, ``PUT ?cas=<index>``, ``DELETE``, ``GET ?consistent``)
through one server's HTTP port, moving to the next server when it cannot connect, and now and then writes
a key of its own under ``u/`` whose acknowledgement the end-of-test durability check relies on.

Outcomes, as Jepsen classifies them:

- a reply is a completed operation with its output;
- a write whose request never left the client (connection refused) certainly had no effect: dropped;
- a write that timed out, lost its connection or got an HTTP 5xx may or may not have taken effect: it goes
  into the history with an unknown outcome. Proconsul's 5xx texts ("No cluster leader", "rpc error: ...")
  cannot prove a write was not applied (a proposal may still commit after its waiter gave up), so none
  is trusted to;
- a read that failed had no effect and is dropped.

The load runs on its own event loop in a thread, so the test can kill, pause and partition servers (and
the relay forwards bytes) while requests are in flight.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from registry.testing.linearizability import (
    HistoryRecorder,
    KvCas,
    KvDelete,
    KvPut,
    KvRead,
    KvValue,
    KvWritten,
    Operation,
    check,
    kv_model,
)
from tests.cluster.harness import ClusterError, Server, kv_value, wait_for

REGISTER_PREFIX = "reg/"
UNIQUE_PREFIX = "u/"


class NotSent(Exception):
    """The request never left this process (the connection could not be opened)."""


class InDoubt(Exception):
    """The request may have reached the server, but no complete answer came back."""


@dataclass
class Mix:
    """Relative weights of the operations each client picks from."""

    read: int = 35
    put: int = 22
    cas: int = 22
    delete: int = 3
    unique: int = 18
    default_read: int = 0  # lease-based default-mode reads (linearizable only under clock assumptions)


@dataclass
class Tally:
    ok: int = 0
    unknown: int = 0
    failed: int = 0
    unexpected: list[str] = field(default_factory=list)
    write_ok_times: list[float] = field(default_factory=list, repr=False)


class Workload:
    def __init__(self, servers: Sequence[Server], *, clients: int = 6, keys: int = 4, seed: int = 0,
                 request_timeout: float = 5.0, think: float = 0.01, mix: Mix | None = None) -> None:  # fmt: skip
        self.urls = [s.url for s in servers]
        self.clients = clients
        self.keys = [f"{REGISTER_PREFIX}{i}" for i in range(keys)]
        self.rng = random.Random(seed)
        self.request_timeout = request_timeout
        self.think = think
        self.mix = mix or Mix()
        self.recorder = HistoryRecorder()
        self.tally = Tally()
        self.acked_unique: set[str] = set()
        self.attempted_unique: set[str] = set()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kv-workload", daemon=True)
        self._stopping: asyncio.Event | None = None
        self._main: asyncio.Future[Any] | None = None
        self._next_client = 0

    # ------------------------------------------------------------------ control (test thread)

    def start(self) -> Workload:
        self._thread.start()
        self._main = asyncio.run_coroutine_threadsafe(self._run(), self._loop)  # type: ignore[assignment]
        return self

    def stop(self) -> None:
        """Stop issuing operations, let those in flight finish (or time out), stop the loop."""
        if self._main is None:
            return
        self._loop.call_soon_threadsafe(lambda: self._stopping.set() if self._stopping else None)
        try:
            self._main.result(timeout=self.request_timeout + 15)  # type: ignore[union-attr]
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._main = None

    def __enter__(self) -> Workload:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def write_successes_since(self, t: float) -> int:
        with self._lock:
            return sum(1 for x in self.tally.write_ok_times if x >= t)

    def wait_write_successes(self, after: float, count: int, timeout: float) -> float:
        """Wait until ``count`` writes completed successfully after ``after``; returns the time of the
        first of them (so a test can measure unavailability)."""

        def enough() -> float | None:
            with self._lock:
                times = sorted(x for x in self.tally.write_ok_times if x >= after)
            return times[0] if len(times) >= count else None

        return wait_for(f"{count} acknowledged writes", enough, timeout, interval=0.05)

    def run_for(self, seconds: float) -> None:
        """Let the load run: pacing between phases of a scenario, never a wait for a condition."""
        time.sleep(seconds)

    def history(self) -> list[Operation[Any, Any]]:
        with self._lock:
            return self.recorder.history()

    # ------------------------------------------------------------------ the clients (workload thread)

    async def _run(self) -> None:
        self._stopping = asyncio.Event()
        tasks = [asyncio.create_task(self._client(i, random.Random(self.rng.random()))) for i in range(self.clients)]
        await self._stopping.wait()
        await asyncio.gather(*tasks)

    async def _client(self, index: int, rng: random.Random) -> None:
        assert self._stopping is not None
        target = index % len(self.urls)
        indexes: dict[str, int] = {}  # key -> ModifyIndex from this client's last read (0: absent)
        seq = 0
        client_id = self._new_client_id()
        weights = [self.mix.read, self.mix.put, self.mix.cas, self.mix.delete, self.mix.unique, self.mix.default_read]
        kinds = ["read", "put", "cas", "delete", "unique", "default_read"]
        while not self._stopping.is_set():
            seq += 1
            kind = rng.choices(kinds, weights)[0]
            key = rng.choice(self.keys)
            if kind == "cas" and key not in indexes:
                kind = "read"
            url = self.urls[target]
            value = f"c{client_id}-{seq}"
            if kind in ("read", "default_read"):
                outcome = await self._read(client_id, url, key, kind == "read")
                if isinstance(outcome, KvValue):
                    indexes[key] = outcome.modify_index or 0
            elif kind == "put":
                outcome = await self._write(client_id, "PUT", url, key, KvPut(key, value), value)
            elif kind == "cas":
                expected = indexes.pop(key)
                outcome = await self._write(client_id, "PUT", url, key, KvCas(key, value, expected), value,
                                            f"?cas={expected}")  # fmt: skip
            elif kind == "delete":
                outcome = await self._write(client_id, "DELETE", url, key, KvDelete(key), None)
            else:
                outcome = await self._unique(url, f"{UNIQUE_PREFIX}{value}")
            if outcome == "unreachable":
                target = (target + 1) % len(self.urls)
                await asyncio.sleep(0.05)
            elif outcome == "unknown":
                # Knossos' rule: a process whose operation is in doubt never issues another one.
                client_id = self._new_client_id()
                target = (target + 1) % len(self.urls)
            elif rng.random() < 0.05:
                target = (target + 1) % len(self.urls)
            if self.think:
                await asyncio.sleep(rng.uniform(0, self.think))

    def _new_client_id(self) -> int:
        with self._lock:
            self._next_client += 1
            return self._next_client

    def _invoke(self, client_id: int, op: Any) -> int:
        with self._lock:
            return self.recorder.invoke(client_id, op, time.monotonic())

    def _ok(self, op_id: int, output: Any, write: bool) -> None:
        now = time.monotonic()
        with self._lock:
            self.recorder.ok(op_id, output, now)
            self.tally.ok += 1
            if write:
                self.tally.write_ok_times.append(now)

    def _fail(self, op_id: int) -> None:
        with self._lock:
            self.recorder.fail(op_id)
            self.tally.failed += 1

    def _unknown(self, op_id: int) -> None:
        with self._lock:
            self.recorder.info(op_id)
            self.tally.unknown += 1

    def _unexpected(self, text: str) -> None:
        with self._lock:
            self.tally.unexpected.append(text)

    async def _request(self, method: str, url: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """One HTTP/1.1 request on a fresh connection, nothing hidden: no pooling and no retries (aiohttp's
        client silently resends a PUT whose connection broke, which made an applied write look as if it
        had never been sent). Raises ``NotSent`` when the connection could not even be opened, and
        ``InDoubt`` for anything that failed after the request may have left."""
        host, _, port = url.removeprefix("http://").partition(":")
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), self.request_timeout)
        except (OSError, TimeoutError) as exc:
            raise NotSent(str(exc)) from exc
        try:
            payload = body or b""
            head = (f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
                    f"Content-Length: {len(payload)}\r\n\r\n")  # fmt: skip
            writer.write(head.encode() + payload)
            raw = await asyncio.wait_for(reader.read(-1), self.request_timeout)
        except (OSError, TimeoutError, RuntimeError) as exc:
            raise InDoubt(repr(exc)) from exc
        finally:
            writer.close()
        header, sep, content = raw.partition(b"\r\n\r\n")
        try:
            status = int(header.split(b" ", 2)[1])
        except (IndexError, ValueError):
            raise InDoubt(f"malformed or truncated response: {raw[:80]!r}") from None
        if not sep:
            raise InDoubt(f"truncated response: {raw[:80]!r}")
        for line in header.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length" and int(value) != len(content):
                raise InDoubt(f"truncated body: {len(content)} of {int(value)} bytes")
        return status, content

    async def _read(self, client_id: int, url: str, key: str, consistent: bool) -> KvValue | str:
        op_id = self._invoke(client_id, KvRead(key))
        try:
            status, body = await self._request("GET", url, f"/v1/kv/{key}" + ("?consistent" if consistent else ""))
        except NotSent:
            self._fail(op_id)
            return "unreachable"
        except InDoubt:
            self._fail(op_id)  # a read that got no answer had no effect
            return "failed"
        if status == 404:
            out = KvValue(None)
        elif status == 200:
            entry = _json(body)[0]
            out = KvValue(kv_value(entry), int(entry["ModifyIndex"]))
        else:
            self._fail(op_id)
            if status < 500:
                self._unexpected(f"GET {key}: {status} {body[:200]!r}")
            return "failed"
        self._ok(op_id, out, write=False)
        return out

    async def _write(self, client_id: int, method: str, url: str, key: str, op: Any, value: str | None,
                     query: str = "") -> str:  # fmt: skip
        op_id = self._invoke(client_id, op)
        try:
            status, body = await self._request(method, url, f"/v1/kv/{key}{query}",
                                               value.encode() if value is not None else None)  # fmt: skip
        except NotSent:
            self._fail(op_id)  # the connection was refused: the request never left
            return "unreachable"
        except InDoubt:
            self._unknown(op_id)
            return "unknown"
        if status >= 500:
            self._unknown(op_id)
            return "unknown"
        text = body.strip()
        if status != 200 or text not in (b"true", b"false"):
            self._fail(op_id)
            self._unexpected(f"{method} {key}{query}: {status} {body[:200]!r}")
            return "failed"
        if isinstance(op, KvCas):
            self._ok(op_id, text == b"true", write=text == b"true")
        elif text != b"true":
            self._fail(op_id)
            self._unexpected(f"{method} {key}: answered {text!r}")
            return "failed"
        else:
            self._ok(op_id, KvWritten() if isinstance(op, KvPut) else True, write=True)
        return "ok"

    async def _unique(self, url: str, key: str) -> str:
        with self._lock:
            self.attempted_unique.add(key)
        try:
            status, body = await self._request("PUT", url, f"/v1/kv/{key}", b"1")
        except NotSent:
            return "unreachable"
        except InDoubt:
            return "unknown"
        if status == 200 and body.strip() == b"true":
            with self._lock:
                self.acked_unique.add(key)
                self.tally.write_ok_times.append(time.monotonic())
            return "ok"
        if status < 500:
            self._unexpected(f"PUT {key}: {status} {body[:200]!r}")
        return "unknown"

    # ------------------------------------------------------------------ end-of-test checks (test thread)

    def final_reads(self, leader: Server) -> None:
        """One linearizable read of every register through the leader, appended to the history: the final
        state must be explained by the operations too."""
        for key in self.keys:
            op_id = self._invoke(-1, KvRead(key))
            reply = leader.get(f"/v1/kv/{key}?consistent")
            if reply.status == 404:
                out = KvValue(None)
            elif reply.status == 200:
                entry = reply.json()[0]
                out = KvValue(kv_value(entry), int(entry["ModifyIndex"]))
            else:
                raise ClusterError(f"final read of {key} through {leader.name}: {reply.status} {reply.text}")
            self._ok(op_id, out, write=False)


def _json(body: bytes) -> Any:
    import json

    return json.loads(body)


def assert_linearizable(workload: Workload, timeout: float = 90.0) -> str:
    """Fails the test unless the recorded history is linearizable (an inconclusive check fails too)."""
    history = workload.history()
    started = time.monotonic()
    result = check(kv_model(), history, timeout=timeout)
    elapsed = time.monotonic() - started
    assert result.ok, f"history of {len(history)} operations is not linearizable:\n{result.explain()}"
    unknown = sum(1 for op in history if op.outcome_unknown)
    return f"{len(history)} operations ({unknown} unknown) linearizable, checked in {elapsed:.2f}s"


def assert_checker_rejects_stale_read(workload: Workload) -> None:
    """Control: the same history plus one read that returns an older acknowledged value after the final
    read must be rejected, or the check above proves nothing about this history."""
    history = workload.history()
    end = max(op.return_time for op in history if not op.outcome_unknown)
    for key in workload.keys:
        final = [op for op in history if op.client_id == -1 and op.input == KvRead(key)]
        if not final:
            continue
        older = [op.output for op in history
                 if isinstance(op.input, KvRead) and op.input.key == key and not op.outcome_unknown
                 and op.output.value is not None and op.output != final[-1].output]  # fmt: skip
        if older:
            stale = Operation(-2, KvRead(key), end + 1, older[0], end + 2)
            result = check(kv_model(), [*history, stale], timeout=60)
            assert not result.ok, f"the checker accepted a stale read of {key}: {stale}"
            return
    raise AssertionError("no register had two different values read: the load did not exercise the keys")


def assert_no_surprises(workload: Workload) -> None:
    assert not workload.tally.unexpected, f"unexpected replies: {workload.tally.unexpected[:10]}"


def assert_durable_everywhere(workload: Workload, servers: Sequence[Server], timeout: float = 30.0) -> None:
    """Every acknowledged unique write is on every server (``?stale``: each server's own state), every
    server converges to the same set of unique keys and the same registers (value and ModifyIndex)."""

    def unique_keys(s: Server) -> set[str]:
        reply = s.get(f"/v1/kv/{UNIQUE_PREFIX}?keys&stale", timeout=5)
        if reply.status == 404:
            return set()
        if reply.status != 200:
            raise ClusterError(f"{s.name}: {reply.status} {reply.text}")
        return set(reply.json())

    def registers(s: Server) -> dict[str, tuple[str, int] | None]:
        out: dict[str, tuple[str, int] | None] = {}
        for key in workload.keys:
            reply = s.get(f"/v1/kv/{key}?stale", timeout=5)
            if reply.status == 404:
                out[key] = None
            elif reply.status == 200:
                e = reply.json()[0]
                out[key] = (kv_value(e), int(e["ModifyIndex"]))
            else:
                raise ClusterError(f"{s.name}: {reply.status} {reply.text}")
        return out

    acked = set(workload.acked_unique)
    state: dict[str, Any] = {}

    def converged() -> bool:
        sets = {s.name: unique_keys(s) for s in servers}
        regs = {s.name: registers(s) for s in servers}
        state.update(sets=sets, regs=regs)
        return all(acked <= keys for keys in sets.values()) and len({frozenset(k) for k in sets.values()}) == 1 \
            and len({tuple(sorted(r.items(), key=repr)) for r in regs.values()}) == 1  # fmt: skip

    try:
        wait_for("every server to hold every acknowledged write and agree", converged, timeout, interval=0.25)
    except ClusterError as exc:
        missing = {name: sorted(acked - keys)[:10] for name, keys in state.get("sets", {}).items()}
        raise AssertionError(f"{exc}\nacknowledged writes missing per server: {missing}\n"
                             f"registers per server: {state.get('regs')}") from None  # fmt: skip
    extra = next(iter(state["sets"].values())) - workload.attempted_unique
    assert not extra, f"keys nobody wrote appeared: {sorted(extra)[:10]}"
