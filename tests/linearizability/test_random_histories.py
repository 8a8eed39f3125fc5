"""Histories generated from a real sequential execution must pass; targeted mutations must fail.

The generator runs clients against an in-memory Consul-like KV store. Each operation gets a call time,
a return time and a linearization point in between; applying the operations to the store in the order
of those points gives the outputs, so the history is linearizable by construction and the checker
must find that. Some operations time out (unknown outcome: applied or not) and some fail for sure
(not applied, left out of the history). The mutations each break the history in a way that provably
has no linearization, so the checker must say Illegal.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, replace
from typing import Any

import pytest

from registry.testing.linearizability import (
    UNKNOWN,
    KvCas,
    KvDelete,
    KvPut,
    KvRead,
    KvValue,
    KvWritten,
    Model,
    Operation,
    Outcome,
    check,
    kv_model,
)


@dataclass
class Plan:
    client: int
    kind: str
    key: str
    call: float
    ret: float
    point: float  # when it takes effect, call < point < ret
    fate: str  # "ok", "unknown-applied", "unknown-lost", "failed"


def generate_history(
    seed: int,
    *,
    ops: int,
    keys: int,
    clients: int,
    p_unknown: float = 0.02,
    p_fail: float = 0.02,
    key_per_client: bool = False,
) -> list[Operation[Any, Any]]:
    """``key_per_client``: client c only uses key c % keys (Jepsen's `independent` layout), so each
    key sees clients // keys concurrent clients; otherwise every client picks keys at random."""
    rng = random.Random(seed)
    plans: list[Plan] = []
    for client in range(clients):
        now = rng.uniform(0, 1)
        for _ in range(ops // clients):
            call = now + rng.expovariate(4.0)
            ret = call + rng.uniform(0.05, 1.5)
            roll = rng.random()
            fate = (
                "failed"
                if roll < p_fail
                else "unknown-applied"
                if roll < p_fail + p_unknown / 2
                else "unknown-lost"
                if roll < p_fail + p_unknown
                else "ok"
            )
            kind = rng.choices(["read", "put", "cas", "delete"], weights=[45, 30, 20, 5])[0]
            key = f"k{client % keys if key_per_client else rng.randrange(keys)}"
            plans.append(Plan(client, kind, key, call, ret, rng.uniform(call, ret), fate))
            now = ret

    store: dict[str, tuple[str, int]] = {}
    raft_index = 0
    seen: dict[tuple[int, str], int] = {}  # the ModifyIndex each client last read for each key
    history: list[Operation[Any, Any]] = []
    for n, plan in enumerate(sorted(plans, key=lambda p: p.point)):
        applied = plan.fate in ("ok", "unknown-applied")
        value = f"{plan.key}-v{n}"  # every write writes a value of its own
        current = store.get(plan.key)
        output: Any
        if plan.kind == "read":
            op_input: Any = KvRead(plan.key)
            with_index = rng.random() < 0.7
            if current is None:
                output = KvValue(None)
            else:
                output = KvValue(current[0], current[1] if with_index else None)
                if applied and with_index:
                    seen[(plan.client, plan.key)] = current[1]
        elif plan.kind == "put":
            op_input = KvPut(plan.key, value)
            if applied:
                raft_index += 1
                store[plan.key] = (value, raft_index)
            output = KvWritten(raft_index if rng.random() < 0.1 else None)
        elif plan.kind == "cas":
            expected = seen.get((plan.client, plan.key), 0)
            if rng.random() < 0.15:
                expected = rng.choice([0, max(0, expected - 1), raft_index])
            op_input = KvCas(plan.key, value, expected)
            matches = expected == 0 if current is None else current[1] == expected
            output = applied and matches
            if output:
                raft_index += 1
                store[plan.key] = (value, raft_index)
        else:
            op_input = KvDelete(plan.key)
            if applied:
                raft_index += 1
                store.pop(plan.key, None)
            output = True
        if plan.fate == "failed":
            continue
        if plan.fate.startswith("unknown"):
            history.append(Operation(plan.client, op_input, plan.call, None, math.inf))
        else:
            history.append(Operation(plan.client, op_input, plan.call, output, plan.ret))
    return history


def assert_witness_is_valid(model: Model[Any, Any, Any], order: list[Operation[Any, Any]]) -> None:
    state = model.init()
    latest_call = -math.inf
    for op in order:
        assert op.return_time >= latest_call, "witness violates real-time order"
        latest_call = max(latest_call, op.call)
        legal, state = model.step(state, op.input, UNKNOWN if op.outcome_unknown else op.output)
        assert legal, op


# ---------------------------------------------------------------------------------- mutations


def writes_value(op: Operation[Any, Any]) -> Any:
    """The value a known-successful write installed, or None."""
    if op.outcome_unknown:
        return None
    if isinstance(op.input, KvPut) or (isinstance(op.input, KvCas) and op.output is True):
        return op.input.value
    return None


def overwrites(op: Operation[Any, Any]) -> bool:
    return writes_value(op) is not None or (isinstance(op.input, KvDelete) and not op.outcome_unknown)


def known_reads(history: list[Operation[Any, Any]]) -> list[int]:
    return [i for i, op in enumerate(history) if isinstance(op.input, KvRead) and not op.outcome_unknown]


def mutate_stale_read(history: list[Operation[Any, Any]], rng: random.Random) -> list[Operation[Any, Any]] | None:
    """A read returns a value that a later, completed write had already replaced before the read began."""
    by_key: dict[str, list[Operation[Any, Any]]] = {}
    for op in history:
        by_key.setdefault(op.input.key, []).append(op)
    candidates = []
    for r in known_reads(history):
        read = history[r]
        same_key = by_key[read.input.key]
        # An overwrite x that finished before the read began, and a write w that finished before x
        # began: w's value was gone for good before the read (every write writes its own value).
        starts = [x.call for x in same_key if overwrites(x) and x.return_time < read.call]
        if not starts:
            continue
        latest_start = max(starts)
        for w in same_key:
            value = writes_value(w)
            if value is not None and w.return_time < latest_start:
                candidates.append((r, value))
    if not candidates:
        return None
    r, value = rng.choice(candidates)
    mutated = list(history)
    mutated[r] = replace(history[r], output=KvValue(value))
    return mutated


def mutate_lost_cas(history: list[Operation[Any, Any]], rng: random.Random) -> list[Operation[Any, Any]] | None:
    """A CAS whose value was later read is reported as failed."""
    read_values = {(history[r].input.key, history[r].output.value) for r in known_reads(history)}
    candidates = [
        i
        for i, op in enumerate(history)
        if isinstance(op.input, KvCas) and op.output is True and (op.input.key, op.input.value) in read_values
    ]
    if not candidates:
        return None
    i = rng.choice(candidates)
    mutated = list(history)
    mutated[i] = replace(history[i], output=False)
    return mutated


def mutate_index(history: list[Operation[Any, Any]], rng: random.Random) -> list[Operation[Any, Any]] | None:
    """Two reads of one version report different ModifyIndexes."""
    by_version: dict[tuple[str, Any], list[int]] = {}
    for r in known_reads(history):
        out = history[r].output
        if out.value is not None and out.modify_index is not None:
            by_version.setdefault((history[r].input.key, out.value), []).append(r)
    candidates = [rs for rs in by_version.values() if len(rs) >= 2]
    if not candidates:
        return None
    r = rng.choice(rng.choice(candidates))
    out = history[r].output
    mutated = list(history)
    mutated[r] = replace(history[r], output=KvValue(out.value, out.modify_index + 1000))
    return mutated


def mutate_phantom_value(history: list[Operation[Any, Any]], rng: random.Random) -> list[Operation[Any, Any]] | None:
    """A read returns a value nobody wrote."""
    reads = known_reads(history)
    if not reads:
        return None
    r = rng.choice(reads)
    mutated = list(history)
    mutated[r] = replace(history[r], output=KvValue("never-written"))
    return mutated


MUTATIONS = [mutate_stale_read, mutate_lost_cas, mutate_index, mutate_phantom_value]


# ---------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("seed", range(40))
def test_generated_histories_are_linearizable(seed: int) -> None:
    history = generate_history(seed, ops=200, keys=4, clients=4, p_unknown=0.05, p_fail=0.05)
    result = check(kv_model(), history, timeout=20)
    assert result.outcome is Outcome.OK, result.explain()
    witness = result.witness()
    assert sum(len(ops) for ops in witness.values()) == sum(
        1 for op in history if not (op.outcome_unknown and isinstance(op.input, KvRead))
    )
    for order in witness.values():
        assert_witness_is_valid(kv_model(), order)


def test_mutated_histories_are_illegal() -> None:
    applied = {mutation.__name__: 0 for mutation in MUTATIONS}
    for seed in range(25):
        history = generate_history(seed, ops=120, keys=3, clients=4)
        rng = random.Random(seed)
        for mutation in MUTATIONS:
            mutated = mutation(history, rng)
            if mutated is None:
                continue
            applied[mutation.__name__] += 1
            result = check(kv_model(), mutated, timeout=20)
            assert result.outcome is Outcome.ILLEGAL, f"{mutation.__name__} seed {seed}: {result.outcome}"
    # Every kind of mutation was really exercised, many times.
    assert all(count >= 10 for count in applied.values()), applied


@pytest.mark.parametrize("key_per_client", [False, True], ids=["5-clients-any-key", "5-clients-per-key"])
def test_thousand_operations_over_ten_keys_are_checked_quickly(key_per_client: bool) -> None:
    # Either 5 clients spread over all keys, or Jepsen's layout with 5 concurrent clients on every key.
    clients = 50 if key_per_client else 5
    history = generate_history(2026, ops=1000, keys=10, clients=clients, key_per_client=key_per_client)
    assert len(history) > 900
    started = time.perf_counter()
    result = check(kv_model(), history, timeout=10)
    elapsed = time.perf_counter() - started
    # The timeout is the guard: UNKNOWN would mean it took longer than 10 s.
    assert result.outcome is Outcome.OK, f"{result.outcome} after {elapsed:.2f}s"
    assert len(result.partitions) == 10

    mutated = mutate_stale_read(history, random.Random(1))
    assert mutated is not None
    result = check(kv_model(), mutated, timeout=10)
    assert result.outcome is Outcome.ILLEGAL, result.outcome
