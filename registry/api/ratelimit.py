"""Consul's global request rate limits (``limits.request_limits { mode, read_rate, write_rate }``), as the
HTTP API applies them: one token bucket for reads and one for writes per agent, the way Consul limits the
RPCs each server handles (agent/consul/rate/handler.go).

A request is a write when its method changes state (anything but GET, HEAD and OPTIONS). In ``enforcing``
mode a request over its budget is refused with 429, Consul's words and a ``Retry-After`` of the whole
seconds until the bucket has a token again; in ``permissive`` mode it is logged and served; ``disabled``
(the default) builds no limiter at all. Consul answers an exhausted write budget with 503, as its writes
can only go to the leader; Proconsul answers 429 for both, the status every HTTP client reads as "slow
down, then retry".

Pure: the caller passes the monotonic time in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from registry.config import Limits

# Consul's texts (agent/consul/rate: ErrRetryElsewhere for reads, ErrRetryLater for writes).
READ_REFUSED = "rate limit exceeded, try again later or against a different server"
WRITE_REFUSED = "rate limit exceeded for operation that can only be performed by the leader, try again later"
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up (golang.org/x/time/rate's Limiter, as Consul
    builds it: burst equal to the rate, at least 1)."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else rate)
        self.tokens = self.burst
        self.stamp: float | None = None

    def take(self, now: float) -> float:
        """Take one token: 0.0 if there was one, else the seconds until there will be."""
        if self.stamp is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


@dataclass(frozen=True, slots=True)
class Refusal:
    write: bool
    retry_after: float  # seconds

    @property
    def message(self) -> str:
        return WRITE_REFUSED if self.write else READ_REFUSED

    @property
    def retry_after_header(self) -> str:
        return str(max(1, math.ceil(self.retry_after)))


class RequestLimiter:
    """The read and write buckets of one agent; ``check`` says whether a request may run."""

    def __init__(self, mode: str, read_rate: float, write_rate: float) -> None:
        self.enforcing = mode == "enforcing"
        self.read = TokenBucket(read_rate) if read_rate > 0 else None
        self.write = TokenBucket(write_rate) if write_rate > 0 else None
        self.exceeded = {"read": 0, "write": 0}  # Consul's rpc.rate_limit.exceeded, by operation type

    @classmethod
    def from_limits(cls, limits: Limits) -> RequestLimiter | None:
        """None when nothing is limited (mode disabled, or no finite rate)."""
        if limits.request_mode == "disabled" or (limits.read_rate <= 0 and limits.write_rate <= 0):
            return None
        return cls(limits.request_mode, limits.read_rate, limits.write_rate)

    def check(self, method: str, now: float) -> Refusal | None:
        """None if the request may run now (always, in permissive mode); else why not and for how long.
        An over-budget request in permissive mode is counted in ``exceeded`` but let through."""
        write = method not in READ_METHODS
        bucket = self.write if write else self.read
        if bucket is None:
            return None
        wait = bucket.take(now)
        if wait == 0.0:
            return None
        self.exceeded["write" if write else "read"] += 1
        return Refusal(write, wait) if self.enforcing else None
