"""The running agent's garbage-collector settings (registry.cli.agent.tune_gc)."""

from __future__ import annotations

import gc

from registry.cli.agent import GC_THRESHOLDS, tune_gc


def test_tune_gc_freezes_startup_objects_and_sets_thresholds() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0  # what was built before the call is out of every collection's walk
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1  # objects made afterwards that form cycles are still collected
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
