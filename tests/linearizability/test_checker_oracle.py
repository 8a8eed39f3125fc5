"""The search against brute force: on tiny random histories, try every order and compare verdicts."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

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

VALUES = st.sampled_from(["a", "b"])
INDEXES = st.sampled_from([None, 1, 2, 3])


@st.composite
def kv_operation(draw: st.DrawFn, client: int) -> Operation[Any, Any]:
    call = draw(st.integers(0, 10))
    unknown = draw(st.integers(0, 5)) == 0
    ret = math.inf if unknown else call + draw(st.integers(0, 5))
    kind = draw(st.sampled_from(["read", "put", "cas", "delete"]))
    op_input: Any
    if kind == "read":
        op_input = KvRead("k")
        value = draw(st.one_of(st.none(), VALUES))
        output: Any = KvValue(value, None if value is None else draw(INDEXES))
    elif kind == "put":
        op_input = KvPut("k", draw(VALUES))
        output = KvWritten(draw(INDEXES))
    elif kind == "cas":
        op_input = KvCas("k", draw(VALUES), draw(st.integers(0, 3)))
        output = draw(st.booleans())
    else:
        op_input = KvDelete("k")
        output = True
    return Operation(client, op_input, float(call), None if unknown else output, float(ret))


@st.composite
def tiny_history(draw: st.DrawFn) -> list[Operation[Any, Any]]:
    size = draw(st.integers(1, 6))
    return [draw(kv_operation(client)) for client in range(size)]


def brute_force(model: Model[Any, Any, Any], history: list[Operation[Any, Any]]) -> bool:
    """Is there an order respecting real time in which every step is legal?"""
    for order in itertools.permutations(history):
        if any(
            later.return_time < earlier.call for n, earlier in enumerate(order) for later in order[n + 1 :]
        ):
            continue
        state = model.init()
        for op in order:
            legal, state = model.step(state, op.input, UNKNOWN if op.outcome_unknown else op.output)
            if not legal:
                break
        else:
            return True
    return False


@settings(max_examples=400, deadline=None)
@given(tiny_history())
def test_search_agrees_with_brute_force(history: list[Operation[Any, Any]]) -> None:
    expected = Outcome.OK if brute_force(kv_model(), history) else Outcome.ILLEGAL
    assert check(kv_model(), history).outcome is expected
    # Without the purity hint (no reduction, no dropping) the verdict is the same.
    assert check(replace(kv_model(), is_pure=None), history).outcome is expected
