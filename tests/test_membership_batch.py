"""The leader's batching of membership changes (``BatchWindow``, ``CatalogReconciler``) without a network.

``BatchWindow`` is checked with a fake clock: a burst of failures detected over ten seconds (as a hundred
machines dying together are: each waits for its first probe) closes in a few batches, and a single failure
is written one second after it is declared, as before.  ``CatalogReconciler`` is driven through a real
``EventStream`` and a real FSM: few entries for a burst, and an overflowing stream (a join wave larger than
the stream) answered by a full pass that leaves the catalog exactly as the pool is.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from registry.agent.membership import BatchWindow, CatalogReconciler
from registry.commands import MemberBatch
from registry.fsm import FSM, encode_command
from registry.gossip import Address, EventKind, Member, MemberEvent, MemberState
from registry.gossip.driver import EventStream, GossipDriver

pytestmark = pytest.mark.timeout(30)


def batches(arrivals: list[float], window: BatchWindow) -> list[tuple[float, list[float]]]:
    """What the reconciler's loop does with changes arriving at these times: (written at, arrivals in it)."""
    out: list[tuple[float, list[float]]] = []
    current: list[float] = []
    for at in sorted(arrivals):
        if current and (closes := at_close(window)) <= at:
            out.append((closes, current))
            current = []
            window.close()
        current.append(at)
        window.add(at, len(current))
        if window.due(at):
            out.append((at, current))
            current = []
            window.close()
    if current:
        out.append((at_close(window), current))
        window.close()
    return out


def at_close(window: BatchWindow) -> float:
    """When the open batch closes if nothing else arrives."""
    wait = window.wait(window.last)
    assert wait is not None
    return window.last + wait


def test_a_single_change_is_written_after_the_minimum_window() -> None:
    w = BatchWindow()
    assert w.wait(5.0) is None and not w.due(5.0)
    w.add(5.0, 1)
    assert not w.due(5.99)
    assert w.due(6.0)
    assert w.wait(5.5) == pytest.approx(0.5)


def test_a_burst_keeps_the_window_open_until_it_pauses_or_at_most_max_open() -> None:
    w = BatchWindow()
    w.add(0.0, 1)
    w.add(0.9, 2)
    assert not w.due(1.0)  # a change came 100 ms ago: the burst goes on
    assert w.due(1.2)  # 300 ms of quiet after at least a second
    w.close()
    for i in range(40):  # a change every 100 ms: never quiet, closed at 3 s
        w.add(i * 0.1, i + 1)
    assert not w.due(2.99) and w.due(3.0)


def test_a_full_entry_is_written_at_once() -> None:
    w = BatchWindow(max_ops=512)
    w.add(1.0, 511)
    assert not w.due(1.0)
    w.add(1.0, 512)
    assert w.due(1.0)


def test_a_hundred_failures_detected_over_ten_seconds_are_a_few_entries() -> None:
    """Detection times as the pool produces them for 100 of 1,000 dying: each victim first probed after an
    exponential wait (about 100 probes a second aim at the victims between them), the last after ~ln(100)
    probe intervals, plus the suspicion timeout.  A fixed one-second window writes about one entry a
    second of detections; the adaptive one a few, each change written at most 3 s after it was declared
    and the last within the quiet period of its arrival."""
    for seed in range(20):
        rng = random.Random(seed)
        arrivals = [5.0 + rng.expovariate(1.0) + rng.uniform(0, 0.3) for _ in range(100)]
        adaptive = batches(arrivals, BatchWindow())
        fixed = batches(arrivals, BatchWindow(min_open=1.0, quiet=1.0, max_open=1.0))
        assert sum(len(b) for _, b in adaptive) == 100
        assert len(adaptive) <= 5, (seed, [(round(t, 2), len(b)) for t, b in adaptive])
        assert len(fixed) > len(adaptive)
        for written, members in adaptive:
            assert written - members[0] <= 3.0 + 1e-9
        last_written, last_batch = adaptive[-1]
        assert last_written - max(last_batch) <= 1.0 + 1e-9


def test_the_window_refuses_nonsense() -> None:
    for kwargs in ({"min_open": 0.0}, {"min_open": 2.0, "max_open": 1.0}, {"quiet": 0.0}, {"max_ops": 0}):
        with pytest.raises(ValueError):
            BatchWindow(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- the reconciler over a real FSM


def member(i: int, state: MemberState = MemberState.ALIVE) -> Member:
    return Member(name=f"m{i}", addr=Address(f"10.0.{i // 250}.{i % 250 + 1}", 8301),
                  tags={"role": "node", "dc": "dc1", "id": ""}, state=state, incarnation=1, state_change=0.0)  # fmt: skip


class Fleet:
    """The pool as the leader sees it (``members``), the catalog (a real FSM) and a gate on its writes."""

    def __init__(self) -> None:
        self.fsm = FSM()
        self.index = 0
        self.pool: dict[str, Member] = {}
        self.gate = asyncio.Event()
        self.gate.set()
        self.sizes: list[int] = []

    def members(self) -> list[Member]:
        return list(self.pool.values())

    async def propose(self, batch: MemberBatch) -> Any:
        await self.gate.wait()
        self.index += 1
        self.sizes.append(len(batch.ops))
        result = self.fsm.apply(self.index, encode_command(batch.to_wire()))
        assert result is True, result
        return result

    def serf(self) -> dict[str, str]:
        return {name: checks["serfHealth"].status for name, checks in self.fsm.store.checks.items()}


def emit(stream: EventStream, kind: EventKind, m: Member) -> None:
    stream._put(MemberEvent(kind, m, time.monotonic()))  # noqa: SLF001 - the driver's own way in


@asynccontextmanager
async def reconciling(fleet: Fleet, maxsize: int = 10000,
                      window: BatchWindow | None = None) -> AsyncIterator[tuple[EventStream, CatalogReconciler]]:  # fmt: skip
    driver = GossipDriver("leader", bind=Address("127.0.0.1", 0))
    stream = driver.events(maxsize)
    rec = CatalogReconciler(events=stream, members=fleet.members, store=lambda: fleet.fsm.store,
                            propose=fleet.propose, is_leader=lambda: True, datacenter="dc1", local_name="leader",
                            pool_age=lambda: 0.0, window=window)  # fmt: skip
    task = asyncio.create_task(rec.run())
    try:
        yield stream, rec
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


SCALED = BatchWindow(min_open=0.1, quiet=0.03, max_open=0.3)  # the default window at a tenth of its times


async def test_a_burst_of_failures_is_a_few_entries_and_a_single_one_is_prompt() -> None:
    fleet = Fleet()
    fleet.pool = {m.name: m for m in (member(i) for i in range(200))}
    async with reconciling(fleet, window=SCALED) as (stream, rec):
        await until(lambda: len(fleet.serf()) == 200)  # the pass of a new leader
        assert rec.full_passes == 1
        entries = rec.entries
        rng = random.Random(3)
        # Detection times as in the pure test above, at a tenth of the scale: spread over about a second.
        at = sorted(0.1 * (rng.expovariate(1.0) + rng.uniform(0, 0.3)) for _ in range(100))
        t0 = time.monotonic()
        for i, when in enumerate(at):
            await asyncio.sleep(max(0.0, t0 + when - time.monotonic()))
            m = member(2 * i, MemberState.DEAD)
            fleet.pool[m.name] = m
            emit(stream, EventKind.FAILED, m)
        await until(lambda: list(fleet.serf().values()).count("critical") == 100)
        assert rec.entries - entries <= 5, rec.entries - entries
        assert time.monotonic() - t0 - at[-1] < 0.3  # the last one promptly
        entries = rec.entries
        lone = member(1, MemberState.DEAD)
        fleet.pool[lone.name] = lone
        t0 = time.monotonic()
        emit(stream, EventKind.FAILED, lone)
        await until(lambda: fleet.serf()["m1"] == "critical")
        assert 0.09 <= time.monotonic() - t0 < 0.5
        assert rec.entries - entries == 1


async def test_an_overflowing_stream_is_answered_by_a_full_pass() -> None:
    """The stream holds 10 events; 60 changes arrive while the leader waits on a write.  The oldest 50 are
    lost (a member that failed among them included), and the catalog still ends exactly as the pool is."""
    fleet = Fleet()
    fleet.pool = {m.name: m for m in (member(i) for i in range(5))}
    async with reconciling(fleet, maxsize=10, window=SCALED) as (stream, rec):
        await until(lambda: len(fleet.serf()) == 5)
        fleet.gate.clear()  # the next write waits (a slow commit)
        first = member(100)
        fleet.pool[first.name] = first
        emit(stream, EventKind.JOIN, first)
        await asyncio.sleep(0.2)  # the batch with m100 is being written
        failed = member(2, MemberState.DEAD)
        fleet.pool[failed.name] = failed
        emit(stream, EventKind.FAILED, failed)  # among the lost
        for i in range(200, 259):
            fleet.pool[f"m{i}"] = member(i)
            emit(stream, EventKind.JOIN, member(i))
        assert stream.dropped == 50
        fleet.gate.set()
        await until(lambda: len(fleet.serf()) == len(fleet.pool))
        await until(lambda: fleet.serf() == {name: "critical" if m.state is MemberState.DEAD else "passing"
                                             for name, m in fleet.pool.items()})  # fmt: skip
        assert rec.full_passes == 2
        assert "m2" in fleet.serf() and fleet.serf()["m2"] == "critical"
