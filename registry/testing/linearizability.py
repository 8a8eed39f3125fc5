"""Linearizability checker: Wing & Gong search with Lowe's memoization and P-compositionality.

This is the algorithm porcupine (anishathalye/porcupine) implements, written for Python:

- A history is a list of operations, each with a call time, a return time and an output. An operation
  whose outcome is unknown (client timeout, connection reset after the request was sent) has return
  time ``math.inf``: it may take effect at any point after its call, or never, which is the same as
  taking effect after everything else, where nothing can observe it. The model's ``step`` receives
  ``UNKNOWN`` as its output and must accept it. Operations known to have failed are left out of the
  history (``HistoryRecorder.fail`` does that).
- Linearizability is local (Herlihy & Wing), so the history is split by ``partition_key`` (the KV key)
  and each part is checked alone, which keeps the exponential search small.
- Per part: calls and returns in time order (calls first on equal times) in a doubly linked list. The
  search repeatedly takes a call whose operation the model accepts in the current state, lifts the call
  and its return out of the list and continues from the head; reaching a return means the operation
  that returns there was never placed, so it backtracks. A cache of (set of linearized operations as an
  int bitset, model state) avoids exploring the same situation twice (Lowe); it is what makes the search
  practical, and it is why model states must be hashable values.
- One addition to porcupine: an operation the model declares pure (it only accepts or rejects, like a
  read that reports no ModifyIndex) is placed as soon as it is legal, without trying alternatives
  first; the proof is at the spot in ``_check_partition``. It cuts the search on read-heavy histories,
  and a brute-force test checks the verdicts against trying every order.

Result: ``Outcome.OK`` with a witness order, ``Outcome.ILLEGAL`` with the longest linearizable prefix
found and the operations that could not follow it, or ``Outcome.UNKNOWN`` when the time budget ran out.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = [
    "UNKNOWN",
    "CheckResult",
    "HistoryRecorder",
    "KvCas",
    "KvDelete",
    "KvPut",
    "KvRead",
    "KvState",
    "KvValue",
    "KvWritten",
    "Model",
    "Operation",
    "Outcome",
    "PartitionResult",
    "check",
    "kv_model",
    "nondeterministic_model",
]

StateT = TypeVar("StateT", bound=Hashable)
InputT = TypeVar("InputT")
OutputT = TypeVar("OutputT")


class _Unknown:
    """The output passed to ``step`` for an operation whose outcome is unknown."""

    _instance: _Unknown | None = None

    def __new__(cls) -> _Unknown:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Any = _Unknown()


@dataclass(frozen=True)
class Operation(Generic[InputT, OutputT]):
    """One client operation. ``return_time == math.inf`` means the outcome is unknown."""

    client_id: Hashable
    input: InputT
    call: float
    output: OutputT | None = None
    return_time: float = math.inf

    @property
    def outcome_unknown(self) -> bool:
        return math.isinf(self.return_time)


def _default_describe(input: Any, output: Any) -> str:
    return f"{input!r} -> {output!r}"


@dataclass(frozen=True)
class Model(Generic[StateT, InputT, OutputT]):
    """A sequential specification.

    ``step(state, input, output)`` returns (whether the operation with this output is legal in
    ``state``, the next state); ``output`` is ``UNKNOWN`` for operations with unknown outcome, and the
    step must then return True with the state the operation leaves if it takes effect at that point
    (not taking effect at all is covered by linearizing it last). States must be hashable and never
    mutated.
    """

    init: Callable[[], StateT]
    step: Callable[[StateT, InputT, Any], tuple[bool, StateT]]
    # Operations with equal keys are checked together; None checks the history as one object.
    partition_key: Callable[[InputT], Hashable] | None = None
    # is_pure(input, output) (output may be UNKNOWN) may return True only if ``step`` with this input
    # and output never changes any state: it only accepts or rejects. The checker uses it to drop pure
    # operations with unknown outcome (they cannot matter) and to place a legal pure operation as soon
    # as it can be placed without trying alternatives (see _check_partition). Returning False is always
    # safe; a wrong True makes verdicts wrong.
    is_pure: Callable[[InputT, Any], bool] | None = None
    describe_operation: Callable[[InputT, Any], str] = _default_describe
    describe_state: Callable[[StateT], str] = repr


class Outcome(enum.Enum):
    OK = "ok"
    ILLEGAL = "illegal"
    UNKNOWN = "unknown"  # ran out of time


@dataclass(frozen=True)
class PartitionResult:
    """The verdict for one partition (one key)."""

    key: Hashable
    outcome: Outcome
    operations: tuple[Operation[Any, Any], ...]
    # OK: a complete witness order. Otherwise: the longest linearizable prefix the search found.
    # Both as positions in ``operations``.
    linearization: tuple[int, ...]
    # Model state after ``linearization``.
    state: Any
    # ILLEGAL only: operations that could come next after the longest prefix (called before any other
    # remaining operation returned); the model rejects each there, or nothing can follow it.
    blocked: tuple[int, ...] = ()


@dataclass(frozen=True)
class CheckResult:
    outcome: Outcome
    # Partitions checked, in order; checking stops at the first illegal one or when time runs out.
    partitions: tuple[PartitionResult, ...]
    unchecked_partitions: int = 0
    model: Model[Any, Any, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK

    @property
    def failure(self) -> PartitionResult | None:
        """The first partition that is not OK (illegal, or the one that ran out of time)."""
        return next((p for p in self.partitions if p.outcome is not Outcome.OK), None)

    def witness(self) -> dict[Hashable, list[Operation[Any, Any]]]:
        """For an OK result: per partition, the operations in a legal sequential order."""
        if not self.ok:
            raise ValueError(f"no witness: the result is {self.outcome.value}")
        return {p.key: [p.operations[i] for i in p.linearization] for p in self.partitions}

    def explain(self) -> str:
        """Human-readable account of the verdict, for a failing test's message."""
        model = self.model
        describe_op = model.describe_operation if model else _default_describe
        describe_state = model.describe_state if model else repr
        total = sum(len(p.operations) for p in self.partitions)
        if self.ok:
            return f"linearizable: {total} operations in {len(self.partitions)} partitions"
        failure = self.failure
        assert failure is not None
        lines = [
            f"{self.outcome.value}: partition {failure.key!r} ({len(failure.operations)} operations)"
            + (" - the time budget ran out" if self.outcome is Outcome.UNKNOWN else ""),
            f"longest linearizable prefix found ({len(failure.linearization)} operations):",
        ]

        def show(position: int) -> str:
            op = failure.operations[position]
            output = UNKNOWN if op.outcome_unknown else op.output
            ends = "?" if op.outcome_unknown else f"{op.return_time:.6g}"
            return f"client {op.client_id!r}: {describe_op(op.input, output)}  [{op.call:.6g}, {ends}]"

        lines += [f"  {n + 1}. {show(i)}" for n, i in enumerate(failure.linearization)]
        lines.append(f"state after it: {describe_state(failure.state)}")
        if failure.blocked:
            lines.append("operations that could come next, none of which leads to a full linearization:")
            for i in failure.blocked:
                op = failure.operations[i]
                if model is not None:
                    legal, _ = model.step(
                        failure.state, op.input, UNKNOWN if op.outcome_unknown else op.output
                    )
                    why = "legal here, but nothing can follow it" if legal else "the model rejects it here"
                else:
                    why = ""
                lines.append(f"  - {show(i)}  ({why})" if why else f"  - {show(i)}")
        return "\n".join(lines)


def check(
    model: Model[Any, Any, Any], history: Iterable[Operation[Any, Any]], *, timeout: float | None = None
) -> CheckResult:
    """Decide whether ``history`` is linearizable with respect to ``model``.

    ``timeout`` (seconds, wall clock) bounds the whole check; when it runs out the result is UNKNOWN.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    parts: dict[Hashable, list[Operation[Any, Any]]] = {}
    for op in history:
        if op.return_time < op.call:
            raise ValueError(f"operation returns before it is called: {op!r}")
        if op.outcome_unknown and model.is_pure is not None and model.is_pure(op.input, UNKNOWN):
            continue
        key = model.partition_key(op.input) if model.partition_key is not None else None
        parts.setdefault(key, []).append(op)

    results: list[PartitionResult] = []
    outcome = Outcome.OK
    keys = sorted(parts, key=repr)  # a stable order, so a failing check reports the same key each run
    for position, key in enumerate(keys):
        result = _check_partition(model, key, parts[key], deadline)
        results.append(result)
        if result.outcome is not Outcome.OK:
            outcome = result.outcome
            return CheckResult(outcome, tuple(results), len(keys) - position - 1, model)
    return CheckResult(outcome, tuple(results), 0, model)


def _check_partition(
    model: Model[Any, Any, Any], key: Hashable, ops: Sequence[Operation[Any, Any]], deadline: float | None
) -> PartitionResult:
    operations = tuple(ops)
    count = len(operations)
    inputs = [op.input for op in operations]
    outputs = [UNKNOWN if op.outcome_unknown else op.output for op in operations]

    # Node 0 is the list head; nodes 1..2n are calls and returns in time order, calls first on ties.
    events = sorted(
        [(op.call, 0, i) for i, op in enumerate(operations)]
        + [(op.return_time, 1, i) for i, op in enumerate(operations)]
    )
    size = 2 * count + 1
    nxt = list(range(1, size)) + [-1]
    prv = [-1, *range(0, size - 1)]
    is_call = [False] * size
    op_of = [-1] * size
    partner = [0] * size  # call node -> its return node
    call_node = [0] * count
    for node, (_time, kind, i) in enumerate(events, start=1):
        op_of[node] = i
        if kind == 0:
            is_call[node] = True
            call_node[i] = node
        else:
            partner[call_node[i]] = node

    is_pure = model.is_pure
    pure = [is_pure is not None and is_pure(inputs[i], outputs[i]) for i in range(count)]
    step = model.step
    state = model.init()
    linearized = 0
    # (call node, state before it, whether it was a forced move): see the reduction below.
    stack: list[tuple[int, Any, bool]] = []
    cache: set[tuple[int, Any]] = set()
    # The current prefix as a persistent linked chain (op, rest): remembering the longest one is O(1).
    chain: tuple[int, Any] | None = None
    depth = 0
    best_chain: tuple[int, Any] | None = None
    best_depth = 0
    best_state = state
    iterations = 0
    entry = nxt[0]
    fresh = True  # arrived at a search node not seen before
    timed_out = deadline is not None and time.monotonic() > deadline

    while not timed_out and nxt[0] != -1:
        iterations += 1
        if deadline is not None and iterations & 0x3FF == 0 and time.monotonic() > deadline:
            timed_out = True
            break
        backtrack = False
        chosen = -1
        chosen_state: Any = None
        forced = False
        if fresh:
            fresh = False
            # Partial-order reduction: a pure operation (see Model.is_pure) that is a candidate here and
            # legal in this state can be linearized first without losing anything. Take any
            # linearization of what remains: removing the pure operation from its place keeps it legal
            # (it changed nothing there), putting it first is legal (it is legal here and changes
            # nothing), and real-time order holds because no unplaced operation returned before it was
            # called (that is what being a candidate means). So it is the only move worth trying at
            # this node: if it fails, the node fails.
            node = nxt[0]
            while is_call[node]:
                i = op_of[node]
                if pure[i] and step(state, inputs[i], outputs[i])[0]:
                    if (linearized | (1 << i), state) in cache:
                        backtrack = True  # already explored from there, without success
                    else:
                        chosen, chosen_state, forced = node, state, True
                    break
                node = nxt[node]
            entry = nxt[0]
        if not backtrack and chosen == -1:
            if is_call[entry]:
                i = op_of[entry]
                legal, next_state = step(state, inputs[i], outputs[i])
                if legal and (linearized | (1 << i), next_state) not in cache:
                    chosen, chosen_state = entry, next_state
                else:
                    entry = nxt[entry]
                    continue
            else:
                backtrack = True  # an operation returns here that could not be placed
        if backtrack:
            while True:
                if not stack:
                    prefix = _unwind(best_chain)
                    return PartitionResult(
                        key,
                        Outcome.ILLEGAL,
                        operations,
                        prefix,
                        best_state,
                        _next_candidates(operations, prefix),
                    )
                entry, state, was_forced = stack.pop()
                linearized &= ~(1 << op_of[entry])
                assert chain is not None
                chain = chain[1]
                depth -= 1
                # Put the return back, then the call (the reverse of lifting).
                ret = partner[entry]
                nxt[prv[ret]] = ret
                if nxt[ret] != -1:
                    prv[nxt[ret]] = ret
                nxt[prv[entry]] = entry
                prv[nxt[entry]] = entry
                if not was_forced:
                    break  # try the next candidate at that node
            entry = nxt[entry]
            continue

        # Descend: linearize `chosen` next.
        i = op_of[chosen]
        linearized |= 1 << i
        cache.add((linearized, chosen_state))
        stack.append((chosen, state, forced))
        state = chosen_state
        chain = (i, chain)
        depth += 1
        if depth > best_depth:
            best_chain, best_depth, best_state = chain, depth, state
        # Lift the call and its return out of the list.
        ret = partner[chosen]
        nxt[prv[chosen]] = nxt[chosen]
        prv[nxt[chosen]] = prv[chosen]
        nxt[prv[ret]] = nxt[ret]
        if nxt[ret] != -1:
            prv[nxt[ret]] = prv[ret]
        entry = nxt[0]
        fresh = True

    if timed_out:
        return PartitionResult(key, Outcome.UNKNOWN, operations, _unwind(best_chain), best_state)
    return PartitionResult(key, Outcome.OK, operations, _unwind(chain), state)


def _unwind(chain: tuple[int, Any] | None) -> tuple[int, ...]:
    out = []
    while chain is not None:
        out.append(chain[0])
        chain = chain[1]
    return tuple(reversed(out))


def _next_candidates(operations: Sequence[Operation[Any, Any]], prefix: tuple[int, ...]) -> tuple[int, ...]:
    """Operations that could be linearized right after ``prefix``: called before any other returns."""
    placed = set(prefix)
    remaining = [i for i in range(len(operations)) if i not in placed]
    if not remaining:
        return ()
    first_return = min(operations[i].return_time for i in remaining)
    return tuple(i for i in remaining if operations[i].call <= first_return)


# ---------------------------------------------------------------------------------- history recording


class HistoryRecorder:
    """Collects a history as a test's clients run: ``invoke`` before sending, then one of
    ``ok`` (with the output), ``fail`` (definitely had no effect: dropped) or ``info`` (unknown).

    Times are passed in (use ``time.monotonic()`` or a simulated clock); only their order matters.
    Operations still pending when ``history()`` is called count as unknown.
    """

    def __init__(self) -> None:
        self._calls: dict[int, tuple[Hashable, Any, float]] = {}
        self._done: dict[int, Operation[Any, Any]] = {}
        self._failed: set[int] = set()
        self._next = 0

    def invoke(self, client_id: Hashable, input: Any, now: float) -> int:
        op_id = self._next
        self._next += 1
        self._calls[op_id] = (client_id, input, now)
        return op_id

    def ok(self, op_id: int, output: Any, now: float) -> None:
        client_id, input, call = self._pending(op_id)
        if now < call:
            raise ValueError("an operation cannot return before it was called")
        self._done[op_id] = Operation(client_id, input, call, output, now)

    def fail(self, op_id: int) -> None:
        """The operation certainly did not take effect (e.g. rejected before it reached Raft)."""
        self._pending(op_id)
        self._failed.add(op_id)

    def info(self, op_id: int) -> None:
        """The outcome is unknown (timeout, connection reset): it may or may not take effect."""
        client_id, input, call = self._pending(op_id)
        self._done[op_id] = Operation(client_id, input, call, None, math.inf)

    def history(self) -> list[Operation[Any, Any]]:
        out = []
        for op_id, (client_id, input, call) in self._calls.items():
            if op_id in self._failed:
                continue
            out.append(self._done.get(op_id) or Operation(client_id, input, call, None, math.inf))
        return out

    def _pending(self, op_id: int) -> tuple[Hashable, Any, float]:
        if op_id not in self._calls:
            raise KeyError(f"unknown operation id {op_id}")
        if op_id in self._done or op_id in self._failed:
            raise ValueError(f"operation {op_id} already completed")
        return self._calls[op_id]


# ---------------------------------------------------------------------------------- nondeterminism


def nondeterministic_model(
    init: Callable[[], Iterable[Hashable]],
    step: Callable[[Any, Any, Any], Iterable[Hashable]],
    **options: Any,
) -> Model[frozenset[Any], Any, Any]:
    """Turn a nondeterministic specification into a Model over sets of states.

    ``step(state, input, output)`` returns every state the operation may lead to with that output
    (none: illegal). The derived state is the set of states the object may be in; an operation is
    illegal when that set becomes empty. This is how etcd's robustness tests model requests whose
    result is unknown.
    """

    def set_init() -> frozenset[Any]:
        return frozenset(init())

    def set_step(states: frozenset[Any], input: Any, output: Any) -> tuple[bool, frozenset[Any]]:
        following = frozenset(s2 for s in states for s2 in step(s, input, output))
        return bool(following), following

    return Model(init=set_init, step=set_step, **options)


# ---------------------------------------------------------------------------------- Consul KV register


@dataclass(frozen=True)
class KvRead:
    key: str


@dataclass(frozen=True)
class KvPut:
    key: str
    value: Hashable


@dataclass(frozen=True)
class KvCas:
    """PUT ?cas=<expected_index>: 0 creates only if absent, N replaces only if ModifyIndex == N."""

    key: str
    value: Hashable
    expected_index: int


@dataclass(frozen=True)
class KvDelete:
    key: str


@dataclass(frozen=True)
class KvValue:
    """Output of a read: the value (None for 404) and, if the client recorded it, its ModifyIndex."""

    value: Hashable | None
    modify_index: int | None = None


@dataclass(frozen=True)
class KvWritten:
    """Output of a put: its ModifyIndex if the client learned it (Consul's PUT returns only true)."""

    modify_index: int | None = None


# (value or None if absent, ModifyIndex of the current version if known, a lower bound: the current
# version's index is greater than this). ModifyIndex is the Raft index of the write, so successive
# versions of a key have increasing indexes; a client that never sees an index (puts return only
# `true`) leaves it unknown until a read or a successful CAS pins it.
KvState = tuple[Hashable | None, int | None, int]


def _kv_step(state: KvState, op: Any, output: Any) -> tuple[bool, KvState]:
    value, index, floor = state
    unknown = output is UNKNOWN
    # The index the next version must exceed: this version's, or the best lower bound we have.
    base = index if index is not None else floor

    if isinstance(op, KvRead):
        if unknown:
            return True, state
        if output.value != value:
            return False, state
        if value is None or output.modify_index is None:
            return True, state
        if index is None:
            if output.modify_index > floor:
                return True, (value, output.modify_index, floor)  # the read pins the index
            return False, state
        return output.modify_index == index, state

    if isinstance(op, KvPut):
        new_index = None if unknown else getattr(output, "modify_index", None)
        if new_index is not None and new_index <= base:
            return False, state
        return True, (op.value, new_index, base)

    if isinstance(op, KvCas):
        expected = op.expected_index
        # Can the current version match `expected`? True/False when decidable; None when the current
        # index is unknown, in which case a match is possible iff expected exceeds the lower bound.
        matches: bool | None
        if value is None:
            matches = expected == 0
        elif expected == 0:
            matches = False
        elif index is not None:
            matches = index == expected
        else:
            matches = None
        can_match = matches is True or (matches is None and expected > floor)
        if unknown:
            if not can_match:
                return True, state
            succeeded = True  # take effect; not taking effect is covered by linearizing it last
        else:
            succeeded = bool(output)
        if succeeded:
            if not can_match:
                return False, state
            replaced = expected if value is not None else base
            return True, (op.value, None, replaced)
        # Reported failure: illegal only if the versions are known to match. (When the index is
        # unknown we do not remember "not expected"; the check is weaker there, never wrong.)
        return matches is not True, state

    if isinstance(op, KvDelete):
        return True, (None, None, base)

    raise TypeError(f"not a KV operation: {op!r}")


def _kv_describe(op: Any, output: Any) -> str:
    def out(text: str) -> str:
        return "?" if output is UNKNOWN else text

    if isinstance(op, KvRead):
        if output is UNKNOWN:
            return f"read({op.key!r}) -> ?"
        at = f"@{output.modify_index}" if output.modify_index is not None else ""
        return f"read({op.key!r}) -> {output.value!r}{at}"
    if isinstance(op, KvPut):
        at = f"@{output.modify_index}" if output not in (None, UNKNOWN) and output.modify_index else ""
        return f"put({op.key!r}, {op.value!r}) -> {out('ok' + at)}"
    if isinstance(op, KvCas):
        return (
            f"cas({op.key!r}, if index=={op.expected_index} then {op.value!r}) -> {out(str(output).lower())}"
        )
    if isinstance(op, KvDelete):
        return f"delete({op.key!r}) -> {out('ok')}"
    return _default_describe(op, output)


def _kv_describe_state(state: KvState) -> str:
    value, index, floor = state
    if value is None:
        return f"absent (last index seen > {floor})" if floor else "absent"
    return (
        f"{value!r} at ModifyIndex {index}"
        if index is not None
        else f"{value!r} at some ModifyIndex > {floor}"
    )


def _kv_is_pure(op: Any, output: Any) -> bool:
    # A read that reports a ModifyIndex may pin an unknown index, which is a change of state.
    return isinstance(op, KvRead) and (
        output is UNKNOWN or output.value is None or output.modify_index is None
    )


def kv_model() -> Model[KvState, Any, Any]:
    """A Consul KV register per key: KvRead/KvPut/KvCas/KvDelete with Consul's CAS semantics.

    Outputs: read -> KvValue; put -> KvWritten; cas -> bool; delete -> anything (ignored). Keys start
    absent. Reads that carry ModifyIndex are checked against it (two reads of one version must agree,
    a CAS must name the index of the version it replaced), which catches more than values alone.
    """
    return Model(
        init=lambda: (None, None, 0),
        step=_kv_step,
        partition_key=lambda op: op.key,
        is_pure=_kv_is_pure,
        describe_operation=_kv_describe,
        describe_state=_kv_describe_state,
    )
