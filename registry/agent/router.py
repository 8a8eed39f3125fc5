"""Spreading a client agent's load over the servers, and anti-entropy over time, as Consul does.

Pure: time and randomness are arguments.

**The server a client agent talks to** (Consul's agent/router ``Manager``): one server at a time, picked
at random from the servers known (so a fleet's clients spread evenly over all servers instead of all
asking the leader), kept until the rebalance interval runs out (then a new random pick, so load evens out
again after servers come and go) or until a call to it fails (then the next one). The rebalance interval
is Consul's ``refreshServerRebalanceTimer``: at least ``CLIENT_RPC_MIN_REUSE`` (120 s) plus a random
stagger of up to half that, longer in a large cluster so that all clients together open no more than
``REBALANCE_CONNS_PER_SEC_PER_SERVER`` (64) new connections a second per server.

**Which servers are worth picking** (``ServerHealth``): Consul's client removes a server from its router
when Serf reports it failed or left, and adds it back when Serf sees it alive again. Here too, and a server
whose calls could not reach it is skipped for ``SKIP_UNREACHABLE`` (a dead server that gossip has not
yet declared failed, or one gossip cannot see): the picker chooses among the live ones only. When none is
known alive, one is still offered (the one that failed longest ago), so a client whose view is wrong, or
whose servers all restarted, keeps trying instead of giving up.

**Anti-entropy** (Consul's agent/ae ``StateSyncer``): a full sync every ``ae_interval`` (60 s) plus a
random stagger of up to ``scale_factor(nodes)`` intervals, where the factor is 1 up to 128 nodes and grows
by one per doubling beyond (``ae.go scaleFactor``): 10,000 agents spread their full syncs over about
8 minutes instead of all arriving every minute.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "AE_SCALE_THRESHOLD",
    "CLIENT_RPC_MIN_REUSE",
    "REBALANCE_CONNS_PER_SEC_PER_SERVER",
    "SKIP_UNREACHABLE",
    "ServerHealth",
    "ServerPicker",
    "ae_scale_factor",
    "full_sync_delay",
    "rebalance_interval",
]

AE_SCALE_THRESHOLD = 128  # ae.go scaleThreshold
CLIENT_RPC_MIN_REUSE = 120.0  # router/manager.go clientRPCMinReuseDuration
CLIENT_RPC_JITTER_FRACTION = 2  # clientRPCJitterFraction
REBALANCE_CONNS_PER_SEC_PER_SERVER = 64  # newRebalanceConnsPerSecPerServer
SKIP_UNREACHABLE = 30.0  # seconds a server that could not be reached is left out of the picks


def ae_scale_factor(nodes: int) -> int:
    """Consul's anti-entropy scale factor: 1 up to 128 nodes, then ``1 + ceil(log2(nodes) - log2(128))``."""
    if nodes <= AE_SCALE_THRESHOLD:
        return 1
    return int(math.ceil(math.log2(nodes) - math.log2(AE_SCALE_THRESHOLD))) + 1


def full_sync_delay(interval: float, nodes: int, rng: random.Random) -> float:
    """When the next full anti-entropy sync is due: the interval plus a random stagger of up to
    ``ae_scale_factor(nodes)`` intervals (ae.go: ``Interval + stagger(Interval)``)."""
    return interval + rng.random() * ae_scale_factor(nodes) * interval


def rebalance_interval(servers: int, nodes: int, rng: random.Random) -> float:
    """How long a client agent keeps its server (router/manager.go refreshServerRebalanceTimer with
    lib.RateScaledInterval): the reuse minimum plus its stagger, or, in a large cluster, the time all
    ``nodes`` take to reconnect at 64 connections a second per server."""
    low = CLIENT_RPC_MIN_REUSE + rng.random() * (CLIENT_RPC_MIN_REUSE / CLIENT_RPC_JITTER_FRACTION)
    rate = max(1, servers) * REBALANCE_CONNS_PER_SEC_PER_SERVER
    return max(low, nodes / rate)


@dataclass
class ServerPicker:
    """The server (any hashable key, e.g. a server ID) a client agent sends its calls to."""

    rng: random.Random
    current: str | None = None
    rebalance_at: float = 0.0

    def pick(self, servers: Sequence[str], now: float, nodes: int) -> str | None:
        """The server to use now: the current one while it is still known and the rebalance interval
        has not run out, else a random one (None when no server is known)."""
        known = tuple(sorted(set(servers)))
        if not known:
            self.current = None
            return None
        if self.current not in known or now >= self.rebalance_at:
            self.current = self.rng.choice(known)
            self.rebalance_at = now + rebalance_interval(len(known), nodes, self.rng)
        return self.current

    def failed(self, server: str, servers: Sequence[str], now: float, nodes: int) -> str | None:
        """A call to ``server`` failed (Consul's NotifyFailedServer): move to another server at random,
        the failed one only if it is the only one."""
        others = sorted(set(servers) - {server})
        if not others:
            return self.pick(servers, now, nodes)
        self.current = self.rng.choice(others)
        self.rebalance_at = now + rebalance_interval(len(others) + 1, nodes, self.rng)
        return self.current


@dataclass
class ServerHealth:
    """What a client agent knows of each server's liveness (keyed like the picker's servers): whether the
    gossip pool reports it failed or left, and when a call last could not reach it."""

    gone: set[str] = field(default_factory=set)  # reported failed or left by the gossip pool
    # server -> when a call last could not reach it
    unreachable: dict[str, float] = field(default_factory=dict)

    def alive(self, server: str) -> None:
        """The pool sees the server alive (joined, or back): it may be picked again."""
        self.gone.discard(server)
        self.unreachable.pop(server, None)

    def failed(self, server: str) -> None:
        """The pool reports the server failed or left (Consul's router RemoveServer)."""
        self.gone.add(server)

    def call_failed(self, server: str, now: float) -> None:
        """A call could not reach the server (refused, timed out, connection lost before an answer)."""
        self.unreachable[server] = now

    def call_ok(self, server: str) -> None:
        self.unreachable.pop(server, None)

    def live(self, servers: Sequence[str], now: float) -> list[str]:
        """The servers to pick from: those neither reported gone nor unreachable within the last
        ``SKIP_UNREACHABLE`` seconds; when that leaves none, the one most worth another try (not reported
        gone if any is not, then the one unreachable longest ago), so there is always one to try."""
        known = sorted(set(servers))
        up = [s for s in known if s not in self.gone]
        ok = [s for s in up if now - self.unreachable.get(s, -math.inf) >= SKIP_UNREACHABLE]
        if ok or not known:
            return ok
        pool = up or known
        return [min(pool, key=lambda s: (self.unreachable.get(s, -math.inf), s))]
