"""Lifeguard's dogpile suspicion timer (memberlist suspicion.go), as a value with no clock of its own.

A suspicion starts long (``max``) and shrinks toward ``min`` as independent members confirm it: with n of
the k expected confirmations in, the timeout is ``max - log(n + 1) / log(k + 1) * (max - min)``.  One
member's mistaken accusation therefore waits the long timeout (time for the suspect to hear of it and
refute), while a real failure, which every prober sees, is declared after the short one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["Suspicion", "remaining_suspicion_time"]


def remaining_suspicion_time(n: int, k: int, elapsed: float, lo: float, hi: float) -> float:
    """memberlist ``remainingSuspicionTime``: the time left after ``elapsed``, never below ``lo`` in total.

    The total is rounded down to the millisecond, as memberlist does."""
    frac = math.log(n + 1.0) / math.log(k + 1.0)
    raw = hi - frac * (hi - lo)
    timeout = max(lo, math.floor(1000.0 * raw) / 1000.0)
    return timeout - elapsed


@dataclass(slots=True)
class Suspicion:
    """One suspected member's timer: ``deadline`` moves earlier with each new confirmation."""

    start: float
    k: int
    lo: float
    hi: float
    confirmations: set[str] = field(default_factory=set)
    n: int = 0
    deadline: float = 0.0

    @classmethod
    def begin(cls, source: str, start: float, k: int, lo: float, hi: float) -> Suspicion:
        s = cls(start, k, lo, hi, {source})
        s.deadline = start + (hi if k >= 1 else lo)
        return s

    def confirm(self, source: str, now: float) -> bool:
        """Count ``source``'s confirmation; True if it was new (and worth re-broadcasting)."""
        if self.n >= self.k or source in self.confirmations:
            return False
        self.confirmations.add(source)
        self.n += 1
        remaining = remaining_suspicion_time(self.n, self.k, now - self.start, self.lo, self.hi)
        self.deadline = now + max(0.0, remaining)
        return True

    def postpone(self, delay: float) -> None:
        """Push the deadline back by a stall of the local process (time it could not hear a refutation)."""
        self.start += delay
        self.deadline += delay
