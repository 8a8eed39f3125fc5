"""Hand-written KV histories with known verdicts, and the checker's generic machinery."""

from __future__ import annotations

import math
from typing import Any

import pytest

from registry.testing.linearizability import (
    UNKNOWN,
    HistoryRecorder,
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
    nondeterministic_model,
)

INF = math.inf


def put(client: int, key: str, value: str, call: float, ret: float = INF, index: int | None = None) -> Operation:
    return Operation(client, KvPut(key, value), call, None if ret == INF else KvWritten(index), ret)


def read(client: int, key: str, value: str | None, call: float, ret: float, index: int | None = None) -> Operation:
    return Operation(client, KvRead(key), call, KvValue(value, index), ret)


def cas(client: int, key: str, expected: int, value: str, ok: bool | None, call: float, ret: float = INF) -> Operation:
    return Operation(client, KvCas(key, value, expected), call, ok, ret)


def delete(client: int, key: str, call: float, ret: float = INF) -> Operation:
    return Operation(client, KvDelete(key), call, None if ret == INF else True, ret)


def verdict(history: list[Operation]) -> Outcome:
    return check(kv_model(), history, timeout=10).outcome


def replay(model: Model, ops: list[Operation]) -> None:
    """A witness must be a legal sequential execution that respects real-time order."""
    state = model.init()
    latest_call = -math.inf
    for op in ops:
        # No operation may be ordered after one that was called only after it had returned.
        assert op.return_time >= latest_call, "witness violates real-time order"
        latest_call = max(latest_call, op.call)
        legal, state = model.step(state, op.input, UNKNOWN if op.outcome_unknown else op.output)
        assert legal, op


# ---------------------------------------------------------------------------------- legal histories


def test_sequential_history_is_linearizable_with_a_witness() -> None:
    history = [
        read(1, "k", None, 0, 1),
        put(1, "k", "a", 2, 3),
        read(2, "k", "a", 4, 5, index=10),
        cas(2, "k", 10, "b", True, 6, 7),
        read(1, "k", "b", 8, 9, index=12),
        cas(1, "k", 10, "c", False, 10, 11),
        delete(2, "k", 12, 13),
        read(1, "k", None, 14, 15),
        cas(1, "k", 0, "d", True, 16, 17),
        read(2, "k", "d", 18, 19, index=20),
    ]
    result = check(kv_model(), history)
    assert result.outcome is Outcome.OK, result.explain()
    (witness,) = result.witness().values()
    assert witness == history  # only one order is possible
    replay(kv_model(), witness)


def test_concurrent_read_may_see_either_value() -> None:
    base = [put(1, "k", "a", 0, 1)]
    writes_b = put(1, "k", "b", 2, 10)
    assert verdict([*base, writes_b, read(2, "k", "a", 3, 4)]) is Outcome.OK
    assert verdict([*base, writes_b, read(2, "k", "b", 3, 4)]) is Outcome.OK
    # Two overlapping reads by different clients may even disagree, if ordered old-then-new.
    assert verdict([*base, writes_b, read(2, "k", "b", 3, 5), read(3, "k", "a", 4, 6)]) is Outcome.OK


def test_keys_are_independent() -> None:
    history = [
        put(1, "x", "1", 0, 1),
        put(2, "y", "1", 0, 1),
        read(1, "x", "1", 2, 3),
        read(2, "y", "1", 2, 3),
        read(3, "z", None, 0, 3),
    ]
    result = check(kv_model(), history)
    assert result.ok
    assert sorted(result.witness()) == ["x", "y", "z"]


def test_equal_timestamps_count_as_overlapping() -> None:
    # The read is called at the instant the put returns: calls sort before returns, so they overlap.
    assert verdict([put(1, "k", "a", 0, 1), put(1, "k", "b", 1, 2), read(2, "k", "a", 1, 1.5)]) is Outcome.OK


# ---------------------------------------------------------------------------------- anomalies


def test_stale_read_is_illegal() -> None:
    history = [put(1, "k", "a", 0, 1), put(1, "k", "b", 2, 3), read(2, "k", "a", 4, 5)]
    result = check(kv_model(), history)
    assert result.outcome is Outcome.ILLEGAL
    text = result.explain()
    assert "partition 'k'" in text and "read('k') -> 'a'" in text and "the model rejects it here" in text


def test_lost_write_is_illegal() -> None:
    assert verdict([put(1, "k", "a", 0, 1), read(2, "k", None, 2, 3)]) is Outcome.ILLEGAL
    assert verdict([put(1, "k", "a", 0, 1), delete(1, "k", 2, 3), read(2, "k", "a", 4, 5)]) is Outcome.ILLEGAL


def test_read_of_a_value_never_written_is_illegal() -> None:
    assert verdict([put(1, "k", "a", 0, 1), read(2, "k", "zzz", 0.5, 3)]) is Outcome.ILLEGAL


def test_value_flapping_back_is_illegal() -> None:
    # Once a later read has seen "b", an even later read cannot see "a" again.
    history = [put(1, "k", "a", 0, 1), put(1, "k", "b", 2, 20), read(2, "k", "b", 3, 4), read(3, "k", "a", 5, 6)]
    assert verdict(history) is Outcome.ILLEGAL


def test_two_cas_on_the_same_index_cannot_both_succeed() -> None:
    base = [put(1, "k", "a", 0, 1), read(1, "k", "a", 2, 3, index=5)]
    both = [*base, cas(2, "k", 5, "b", True, 4, 6), cas(3, "k", 5, "c", True, 4, 6)]
    assert verdict(both) is Outcome.ILLEGAL
    one = [*base, cas(2, "k", 5, "b", True, 4, 6), cas(3, "k", 5, "c", False, 4, 6)]
    assert verdict(one) is Outcome.OK


def test_cas_with_a_stale_index_cannot_succeed() -> None:
    history = [
        put(1, "k", "a", 0, 1),
        read(1, "k", "a", 2, 3, index=5),
        put(2, "k", "b", 4, 5),
        cas(1, "k", 5, "c", True, 6, 7),
    ]
    assert verdict(history) is Outcome.ILLEGAL


def test_cas_that_should_have_succeeded_cannot_fail() -> None:
    history = [put(1, "k", "a", 0, 1), read(1, "k", "a", 2, 3, index=5), cas(1, "k", 5, "b", False, 4, 5)]
    assert verdict(history) is Outcome.ILLEGAL


def test_cas_zero_creates_only_if_absent() -> None:
    assert verdict([cas(1, "k", 0, "a", True, 0, 1), read(1, "k", "a", 2, 3)]) is Outcome.OK
    assert verdict([put(1, "k", "a", 0, 1), cas(1, "k", 0, "b", True, 2, 3)]) is Outcome.ILLEGAL
    assert verdict([cas(1, "k", 7, "a", True, 0, 1)]) is Outcome.ILLEGAL  # no version 7 of an absent key
    assert verdict([cas(1, "k", 0, "a", False, 0, 1)]) is Outcome.ILLEGAL  # absent key: cas=0 must work


def test_failed_cas_changes_nothing() -> None:
    history = [put(1, "k", "a", 0, 1), cas(1, "k", 99, "b", False, 2, 3), read(2, "k", "b", 4, 5)]
    assert verdict(history) is Outcome.ILLEGAL


def test_modify_index_must_be_consistent() -> None:
    same_version_two_indexes = [put(1, "k", "a", 0, 1), read(1, "k", "a", 2, 3, index=5), read(2, "k", "a", 4, 5, index=6)]
    assert verdict(same_version_two_indexes) is Outcome.ILLEGAL
    going_backwards = [
        put(1, "k", "a", 0, 1),
        read(1, "k", "a", 2, 3, index=5),
        put(1, "k", "b", 4, 5),
        read(2, "k", "b", 6, 7, index=4),
    ]
    assert verdict(going_backwards) is Outcome.ILLEGAL
    put_index_known = [put(1, "k", "a", 0, 1, index=5), read(2, "k", "a", 2, 3, index=6)]
    assert verdict(put_index_known) is Outcome.ILLEGAL
    cas_names_the_version = [put(1, "k", "a", 0, 1), cas(1, "k", 5, "b", True, 2, 3), read(1, "k", "b", 4, 5, index=5)]
    assert verdict(cas_names_the_version) is Outcome.ILLEGAL  # the new version's index exceeds 5


# ---------------------------------------------------------------------------------- unknown outcomes


def test_unknown_write_may_take_effect_or_not() -> None:
    base = [put(1, "k", "a", 0, 1), put(2, "k", "b", 2)]  # b: timed out, outcome unknown
    assert verdict([*base, read(3, "k", "a", 3, 4)]) is Outcome.OK
    assert verdict([*base, read(3, "k", "b", 3, 4)]) is Outcome.OK
    assert verdict([*base, read(3, "k", "a", 3, 4), read(3, "k", "b", 5, 6)]) is Outcome.OK  # took effect late
    # ...but it takes effect at most once, at one point in time.
    assert verdict([*base, read(3, "k", "b", 3, 4), read(3, "k", "a", 5, 6)]) is Outcome.ILLEGAL
    # ...and not before it was called.
    assert verdict([put(1, "k", "a", 0, 1), read(3, "k", "b", 1.5, 1.8), put(2, "k", "b", 2)]) is Outcome.ILLEGAL


def test_unknown_cas_may_take_effect_or_not() -> None:
    base = [put(1, "k", "a", 0, 1), read(1, "k", "a", 2, 3, index=5), cas(1, "k", 5, "b", None, 4)]
    assert verdict([*base, read(2, "k", "b", 5, 6)]) is Outcome.OK
    assert verdict([*base, read(2, "k", "a", 5, 6, index=5)]) is Outcome.OK
    # A second CAS on the same index can succeed only if the unknown one did not take effect first.
    assert verdict([*base, cas(2, "k", 5, "c", True, 5, 6), read(2, "k", "c", 7, 8)]) is Outcome.OK
    assert verdict([*base, cas(2, "k", 5, "c", True, 5, 6), read(2, "k", "b", 7, 8)]) is Outcome.ILLEGAL


def test_unknown_delete_may_take_effect_or_not() -> None:
    base = [put(1, "k", "a", 0, 1), delete(2, "k", 2)]
    assert verdict([*base, read(3, "k", "a", 3, 4)]) is Outcome.OK
    assert verdict([*base, read(3, "k", None, 3, 4)]) is Outcome.OK
    assert verdict([*base, read(3, "k", None, 3, 4), read(3, "k", "a", 5, 6)]) is Outcome.ILLEGAL


def test_history_recorder_drops_failures_and_marks_unknowns() -> None:
    recorder = HistoryRecorder()
    a = recorder.invoke(1, KvPut("k", "a"), 0.0)
    recorder.ok(a, KvWritten(), 1.0)
    failed = recorder.invoke(2, KvPut("k", "never"), 1.5)
    recorder.fail(failed)  # rejected before reaching Raft: it did not happen
    timed_out = recorder.invoke(3, KvPut("k", "maybe"), 2.0)
    recorder.info(timed_out)
    recorder.invoke(4, KvDelete("k"), 2.5)  # never completed: unknown as well
    r = recorder.invoke(1, KvRead("k"), 3.0)
    recorder.ok(r, KvValue("a"), 4.0)
    history = recorder.history()
    assert [op.input for op in history] == [KvPut("k", "a"), KvPut("k", "maybe"), KvDelete("k"), KvRead("k")]
    assert history[1].outcome_unknown and history[2].outcome_unknown and not history[3].outcome_unknown
    assert verdict(history) is Outcome.OK
    with pytest.raises(ValueError, match="already completed"):
        recorder.ok(a, None, 5.0)

    read_never_written = recorder.invoke(1, KvRead("k"), 5.0)
    recorder.ok(read_never_written, KvValue("never"), 6.0)
    assert verdict(recorder.history()) is Outcome.ILLEGAL


def test_unknown_reads_are_ignored() -> None:
    history = [put(1, "k", "a", 0, 1), Operation(2, KvRead("k"), 2, None, INF), read(3, "k", "a", 3, 4)]
    result = check(kv_model(), history)
    assert result.ok and len(result.partitions[0].operations) == 2


# ---------------------------------------------------------------------------------- generic machinery


def test_timeout_gives_unknown() -> None:
    history = [put(1, "k", "a", 0, 1), read(2, "k", "a", 2, 3)]
    result = check(kv_model(), history, timeout=0)
    assert result.outcome is Outcome.UNKNOWN
    assert "time budget ran out" in result.explain()
    with pytest.raises(ValueError, match="no witness"):
        result.witness()


def test_illegal_result_reports_the_longest_partial_linearization() -> None:
    history = [
        put(1, "k", "a", 0, 1),
        put(1, "k", "b", 2, 3),
        put(1, "k", "c", 4, 5),
        read(2, "k", "b", 6, 7),
    ]
    result = check(kv_model(), history)
    failure = result.failure
    assert failure is not None and failure.outcome is Outcome.ILLEGAL
    assert [failure.operations[i].input for i in failure.linearization] == [
        KvPut("k", "a"),
        KvPut("k", "b"),
        KvPut("k", "c"),
    ]
    assert failure.state[0] == "c"
    assert [failure.operations[i].input for i in failure.blocked] == [KvRead("k")]


def test_operations_must_return_after_they_are_called() -> None:
    with pytest.raises(ValueError, match="returns before it is called"):
        check(kv_model(), [read(1, "k", None, 5, 4)])


def counter_step(state: int, op: tuple[str, int], output: Any) -> tuple[bool, int]:
    kind, amount = op
    if kind == "add":
        return True, state + amount
    return (output is UNKNOWN or output == state), state


def test_another_model_can_be_plugged_in() -> None:
    counter: Model[int, tuple[str, int], Any] = Model(init=lambda: 0, step=counter_step)
    add = lambda c, n, t0, t1: Operation(c, ("add", n), t0, None, t1)  # noqa: E731
    get = lambda c, v, t0, t1: Operation(c, ("get", 0), t0, v, t1)  # noqa: E731
    assert check(counter, [add(1, 5, 0, 10), add(2, 3, 0, 10), get(3, 3, 1, 2), get(3, 8, 11, 12)]).ok
    assert not check(counter, [add(1, 5, 0, 1), add(2, 3, 2, 3), get(3, 5, 4, 5)]).ok


def test_nondeterministic_model() -> None:
    # A bag where `take` removes some element and returns it; with an unknown output it could have
    # removed any of them.
    def step(state: frozenset[int], op: tuple[str, int], output: Any) -> list[frozenset[int]]:
        kind, item = op
        if kind == "add":
            return [state | {item}]
        if kind == "size":
            return [state] if output is UNKNOWN or output == len(state) else []
        if output is UNKNOWN:
            return [state - {x} for x in state]
        return [state - {output}] if output in state else []

    bag = nondeterministic_model(lambda: [frozenset()], step)
    add = lambda c, x, t0, t1: Operation(c, ("add", x), t0, None, t1)  # noqa: E731
    take = lambda c, out, t0, t1=INF: Operation(c, ("take", 0), t0, out, t1)  # noqa: E731
    size = lambda c, n, t0, t1: Operation(c, ("size", 0), t0, n, t1)  # noqa: E731
    legal = [add(1, 1, 0, 1), add(1, 2, 2, 3), take(2, None, 4), take(3, 2, 5, 6), size(3, 0, 7, 8)]
    assert check(bag, legal).ok  # the unknown take removed 1
    illegal = [add(1, 1, 0, 1), add(1, 2, 2, 3), take(2, 1, 4, 5), take(3, 1, 6, 7)]
    assert check(bag, illegal).outcome is Outcome.ILLEGAL
