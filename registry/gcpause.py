"""Counted holds on CPython's cyclic garbage collector, for work that must not set off a collection.

Two things in a server do: a push-pull of a large pool's whole member list (registry/gossip/driver.py), whose
tens of thousands of short-lived containers would otherwise be promoted and set off a full collection of the
heap, and the lifetime of a forked snapshot child (registry/raft/storage.py), during which a full collection in
the parent would write to every object's header and so copy every page the child still shares. Reference
counting frees what such work leaves; the collector resumes when the last hold is given back.

The collector is the process's, so holds are counted: the first takes it, the last gives it back (and only
if it was on when the first was taken). Hold and release on the event loop's thread.
"""

from __future__ import annotations

import gc

__all__ = ["GCHold"]


class GCHold:
    """One hold; ``acquire`` and ``release`` are idempotent, so a ``finally`` can always release."""

    _holds = 0
    _was_enabled = True

    def __init__(self) -> None:
        self.held = False

    def acquire(self) -> None:
        if self.held:
            return
        self.held = True
        if GCHold._holds == 0:
            GCHold._was_enabled = gc.isenabled()
            gc.disable()
        GCHold._holds += 1

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        GCHold._holds -= 1
        if GCHold._holds == 0 and GCHold._was_enabled:
            gc.enable()

    @staticmethod
    def holding() -> int:
        """How many holds are taken (0: the collector is as it was)."""
        return GCHold._holds
