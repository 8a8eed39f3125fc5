"""One upstream cluster's instances: load balancing, passive health and circuit-breaker limits.

Pure module: no IO, no clock, no global randomness. Time comes in as ``now`` (seconds, any monotonic
origin) and randomness as a ``random.Random`` given to the pool, so every decision replays in a test.

An ``UpstreamPool`` stands for what Envoy calls a cluster and Consul builds one of per discovery-chain
target: the healthy instances of one target (the catalog decides "healthy"; the pool never adds an
instance the catalog did not give it), and what the sidecar learned itself from using them.

The API the L4 and L7 data planes share (both call it per connection or per request):

- ``pick(key, now, exclude=())`` -> ``Instance | None``: the next instance by the resolver's
  ``LoadBalancer.Policy`` (``round_robin`` by default, ``least_request`` with ``ChoiceCount``,
  ``random``, ``ring_hash``/``maglev`` on ``key``: the source IP for TCP, the hash policy's value for
  HTTP). Ejected instances and those in ``exclude`` (tried already for this connection) are skipped.
  None when nothing is left.
- ``begin(instance)`` / ``end(instance)``: an active request (HTTP) or connection (TCP) on an
  instance; ``least_request`` prefers the instance with fewer.
- ``report(instance, ok, now)``: the outcome of a connect attempt or a response. ``ok=False`` is a
  connect failure, a timeout or a 5xx; ``PassiveHealthCheck.MaxFailures`` (Envoy's ``consecutive_5xx``,
  default 5) in a row eject the instance for ``BaseEjectionTime`` (default 30 s) times the number of
  times it has been ejected (Envoy's outlier detection: each ``Interval`` without an ejection takes one
  off that count), never more than ``MaxEjectionPercent`` (default 10) of the pool, but always at least
  one instance, as Envoy does.
- ``acquire(kind)`` / ``release(kind)``: the circuit breakers (``Limits.MaxConnections``,
  ``MaxPendingRequests``, ``MaxConcurrentRequests``; Envoy's default 1024 each). ``acquire`` answers at
  once: False means the limit is reached and the caller refuses (closes the TCP connection, answers 503)
  instead of queueing; a False is counted in ``overflows``.

Envoy's panic threshold (50%) applies too: when fewer than half the instances are usable (not ejected),
balancing ignores ejections rather than piling everything on the few left.

Instance weights: Consul hands Envoy each endpoint's ``Service.Weights`` (``Passing``, or ``Warning``
while a check warns; clamped to 1..128, a weight of 0 making the instance unhealthy) as its
``LoadBalancingWeight`` (agent/xds ``calculateEndpointHealthAndWeight``). When a pool's weights differ,
``round_robin`` becomes a weighted round robin (smooth weighted round robin: deterministic, every cycle
of sum(weights) picks gives each instance exactly its weight, as Envoy's EDF scheduler does in the long
run), ``random`` draws by weight and ``ring_hash`` gives each instance ring entries in proportion to
its weight. ``least_request`` and ``maglev`` ignore weights. This is also how a TCP service splits
traffic between versions: Consul refuses a ``service-splitter`` on a tcp service, and weights per
instance are what Envoy's TCP proxy honours per connection.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from registry.gocompat import parse_duration_ns

__all__ = [
    "DEFAULT_LIMIT",
    "Instance",
    "LimitKind",
    "Limits",
    "OutlierConfig",
    "PoolConfig",
    "UpstreamPool",
    "lb_config",
    "limits_config",
    "outlier_config",
]

ROUND_ROBIN = "round_robin"
LEAST_REQUEST = "least_request"
RANDOM = "random"
RING_HASH = "ring_hash"
MAGLEV = "maglev"
POLICIES = (ROUND_ROBIN, LEAST_REQUEST, RANDOM, RING_HASH, MAGLEV)

DEFAULT_LIMIT = 1024  # Envoy's default for each circuit breaker
DEFAULT_CHOICE_COUNT = 2  # Envoy's least_request choice_count
DEFAULT_RING_MIN = 1024  # Envoy's ring_hash minimum_ring_size
DEFAULT_RING_MAX = 8 * 1024 * 1024
MAGLEV_TABLE_SIZE = 65537  # Envoy's default maglev table size (a prime)
PANIC_THRESHOLD = 50.0  # Envoy's healthy_panic_threshold, percent
MAX_EJECTION_TIME = 300.0  # Envoy's max_ejection_time default

LimitKind = Literal["connections", "pending", "requests"]


class Instance(tuple[str, int]):
    """One place to dial: the address of an instance's sidecar (or the instance, without one), and its
    load-balancing weight (Envoy's LoadBalancingWeight), which is not part of its identity.

    A tuple of (host, port) rather than a frozen dataclass: it keys the pool's health and the idle
    connections, looked up several times per HTTP request, and a tuple hashes and compares in C where a
    dataclass runs its generated ``__hash__`` and ``__eq__`` in Python. The weight rides beside the tuple,
    so an instance whose weight changes is still the same instance (its ejection history and idle
    connections carry over)."""

    weight: int

    def __new__(cls, host: str, port: int, weight: int = 1) -> Instance:
        self = tuple.__new__(cls, (host, port))
        self.weight = weight
        return self

    @property
    def host(self) -> str:
        return self[0]

    @property
    def port(self) -> int:
        return self[1]

    def __repr__(self) -> str:
        return f"Instance(host={self[0]!r}, port={self[1]!r}, weight={self.weight})"

    def __str__(self) -> str:
        return f"[{self[0]}]:{self[1]}" if ":" in self[0] else f"{self[0]}:{self[1]}"

    def __getnewargs__(self) -> tuple[str, int, int]:  # type: ignore[override]
        return (self[0], self[1], self.weight)


@dataclass(frozen=True, slots=True)
class OutlierConfig:
    """Consul's ``PassiveHealthCheck`` in seconds, with Envoy's defaults for what it leaves unset."""

    interval: float = 10.0
    max_failures: int = 5
    enforcing_consecutive_5xx: int = 100  # percent of detections that actually eject
    max_ejection_percent: int = 10
    base_ejection_time: float = 30.0


@dataclass(frozen=True, slots=True)
class Limits:
    max_connections: int = DEFAULT_LIMIT
    max_pending_requests: int = DEFAULT_LIMIT
    max_concurrent_requests: int = DEFAULT_LIMIT


@dataclass(frozen=True, slots=True)
class PoolConfig:
    policy: str = ROUND_ROBIN
    choice_count: int = DEFAULT_CHOICE_COUNT
    ring_min: int = DEFAULT_RING_MIN
    ring_max: int = DEFAULT_RING_MAX
    outlier: OutlierConfig = field(default_factory=OutlierConfig)
    limits: Limits = field(default_factory=Limits)


# ------------------------------------------------------------------------------ from config entries


def _ci(data: Mapping[str, Any] | None, key: str) -> Any:
    """Case-insensitive lookup: Consul decodes both ``MaxFailures`` and ``max_failures``."""
    if not data:
        return None
    want = key.lower().replace("_", "")
    for k, v in data.items():
        if str(k).lower().replace("_", "") == want:
            return v
    return None


def _seconds(value: Any) -> float | None:
    """A Go duration as the chain and config entries carry it: ns as a number, or ``"30s"``."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) / 1e9
    return parse_duration_ns(str(value)) / 1e9


def lb_config(load_balancer: Mapping[str, Any] | None) -> dict[str, Any]:
    """PoolConfig fields from a resolver's ``LoadBalancer`` (as the compiled chain's node carries it)."""
    if not load_balancer:
        return {}
    out: dict[str, Any] = {}
    policy = _ci(load_balancer, "Policy")
    if policy in POLICIES:
        out["policy"] = policy
    lr = _ci(load_balancer, "LeastRequestConfig")
    if lr and _ci(lr, "ChoiceCount"):
        out["choice_count"] = max(1, int(_ci(lr, "ChoiceCount")))
    rh = _ci(load_balancer, "RingHashConfig")
    if rh:
        if _ci(rh, "MinimumRingSize"):
            out["ring_min"] = int(_ci(rh, "MinimumRingSize"))
        if _ci(rh, "MaximumRingSize"):
            out["ring_max"] = int(_ci(rh, "MaximumRingSize"))
    return out


def outlier_config(passive: Mapping[str, Any] | None) -> OutlierConfig:
    """``UpstreamConfig.PassiveHealthCheck`` -> OutlierConfig (Envoy's defaults where unset)."""
    d = OutlierConfig()
    if not passive:
        return d
    interval = _seconds(_ci(passive, "Interval"))
    base = _seconds(_ci(passive, "BaseEjectionTime"))
    mf, enf, mep = (_ci(passive, k) for k in ("MaxFailures", "EnforcingConsecutive5xx", "MaxEjectionPercent"))
    return OutlierConfig(
        interval=interval if interval else d.interval,
        max_failures=int(mf) if mf else d.max_failures,
        enforcing_consecutive_5xx=int(enf) if enf is not None else d.enforcing_consecutive_5xx,
        max_ejection_percent=int(mep) if mep is not None else d.max_ejection_percent,
        base_ejection_time=base if base else d.base_ejection_time,
    )


def limits_config(limits: Mapping[str, Any] | None) -> Limits:
    """``UpstreamConfig.Limits`` -> Limits (Envoy's 1024 where unset, as Consul leaves them to Envoy)."""
    if not limits:
        return Limits()
    vals = [_ci(limits, k) for k in ("MaxConnections", "MaxPendingRequests", "MaxConcurrentRequests")]
    return Limits(*(int(v) if v else DEFAULT_LIMIT for v in vals))


# ------------------------------------------------------------------------------ the pool


@dataclass(slots=True)
class _Health:
    consecutive: int = 0
    ejections: int = 0  # Envoy's ejection multiplier
    ejected_until: float | None = None
    healthy_since: float = 0.0  # when the last ejection ended (for decrementing ``ejections``)
    active: int = 0


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class UpstreamPool:
    """The instances of one chain target and what the sidecar knows of them. Not thread-safe: one
    event loop owns it."""

    def __init__(self, name: str, config: PoolConfig | None = None, *, rng: random.Random | None = None) -> None:
        self.name = name
        self.config = config or PoolConfig()
        self.rng = rng or random.Random()
        self.instances: tuple[Instance, ...] = ()
        self._weights: tuple[int, ...] = ()
        self._weighted = False  # the instances' weights differ: weighted balancing
        self._current: dict[Instance, int] = {}  # smooth weighted round robin's running weights
        self._health: dict[Instance, _Health] = {}
        self._rr = 0
        self._ring: tuple[list[int], list[Instance]] | None = None
        self._maglev: list[Instance] | None = None
        self._active = {"connections": 0, "pending": 0, "requests": 0}
        self.overflows = {"connections": 0, "pending": 0, "requests": 0}
        self.ejections_total = 0
        self._limits = self._limit_map(self.config)
        self._ejected = 0  # instances with an ejection not yet seen to expire (``_expire`` keeps it)

    # -------------------------------------------------------------- membership

    def configure(self, config: PoolConfig) -> None:
        """New balancing, outlier or limit settings; what was learned about instances stays."""
        if config != self.config:
            self.config = config
            self._limits = self._limit_map(config)
            self._ring = self._maglev = None

    def update(self, instances: Iterable[Instance]) -> None:
        """The catalog's healthy instances now. Instances that stay keep their history (an ejection
        outlives a catalog refresh); instances that left are forgotten."""
        new = tuple(dict.fromkeys(instances))
        weights = tuple(i.weight for i in new)
        if new == self.instances and weights == self._weights:
            return
        self.instances = new
        self._weights = weights
        self._weighted = len(set(weights)) > 1
        self._current = {}
        self._health = {i: self._health.get(i) or _Health() for i in new}
        self._ejected = sum(1 for h in self._health.values() if h.ejected_until is not None)
        self._ring = self._maglev = None

    def __len__(self) -> int:
        return len(self.instances)

    # -------------------------------------------------------------- health

    def _expire(self, now: float) -> None:
        if not self._ejected:
            return
        for h in self._health.values():
            if h.ejected_until is not None and now >= h.ejected_until:
                h.healthy_since = h.ejected_until  # when it ended, however late we notice
                h.ejected_until = None
                h.consecutive = 0
                self._ejected -= 1

    def ejected(self, now: float) -> list[Instance]:
        self._expire(now)
        return [i for i, h in self._health.items() if h.ejected_until is not None]

    def is_ejected(self, instance: Instance, now: float) -> bool:
        h = self._health.get(instance)
        return h is not None and h.ejected_until is not None and now < h.ejected_until

    def report(self, instance: Instance, ok: bool, now: float) -> bool:
        """Record an outcome. Returns True when this failure ejected the instance."""
        h = self._health.get(instance)
        if h is None:
            return False  # left the pool meanwhile
        if ok:
            h.consecutive = 0
            return False
        h.consecutive += 1
        oc = self.config.outlier
        if h.consecutive < oc.max_failures or h.ejected_until is not None and now < h.ejected_until:
            return False
        self._expire(now)
        ejected = sum(1 for x in self._health.values() if x.ejected_until is not None)
        allowed = max(1, len(self.instances) * oc.max_ejection_percent // 100)
        if ejected >= allowed:
            return False
        if oc.enforcing_consecutive_5xx < 100 and self.rng.random() * 100 >= oc.enforcing_consecutive_5xx:
            h.consecutive = 0
            return False
        # Envoy: each interval spent un-ejected takes one off the multiplier before it grows again.
        if h.ejections and oc.interval > 0:
            h.ejections = max(0, h.ejections - int((now - h.healthy_since) / oc.interval))
        h.ejections += 1
        h.ejected_until = now + min(oc.base_ejection_time * h.ejections, max(MAX_EJECTION_TIME, oc.base_ejection_time))
        h.consecutive = 0
        self._ejected += 1
        self.ejections_total += 1
        return True

    # -------------------------------------------------------------- active counts and limits

    def begin(self, instance: Instance) -> None:
        h = self._health.get(instance)
        if h is not None:
            h.active += 1

    def end(self, instance: Instance) -> None:
        h = self._health.get(instance)
        if h is not None and h.active > 0:
            h.active -= 1

    @staticmethod
    def _limit_map(config: PoolConfig) -> dict[str, int]:
        lim = config.limits
        return {"connections": lim.max_connections, "pending": lim.max_pending_requests,
                "requests": lim.max_concurrent_requests}  # fmt: skip

    def acquire(self, kind: LimitKind) -> bool:
        """Take one unit of a circuit breaker; False (and an overflow counted) when it is full."""
        if self._active[kind] >= self._limits[kind]:
            self.overflows[kind] += 1
            return False
        self._active[kind] += 1
        return True

    def release(self, kind: LimitKind) -> None:
        if self._active[kind] > 0:
            self._active[kind] -= 1

    def active(self, kind: LimitKind) -> int:
        return self._active[kind]

    # -------------------------------------------------------------- picking

    def _usable(self, now: float, exclude: Collection[Instance]) -> Sequence[Instance]:
        self._expire(now)
        if not self._ejected and not exclude:
            return self.instances  # the common case: nothing ejected, nothing tried yet
        healthy = [i for i in self.instances if self._health[i].ejected_until is None]
        if self.instances and 100.0 * len(healthy) / len(self.instances) < PANIC_THRESHOLD:
            healthy = list(self.instances)  # panic mode: ejections are ignored
        return [i for i in healthy if i not in exclude] if exclude else healthy

    def pick(self, key: bytes | None, now: float, exclude: Collection[Instance] = ()) -> Instance | None:
        usable = self._usable(now, exclude)
        if not usable:
            return None
        policy = self.config.policy
        if policy in (RING_HASH, MAGLEV) and key is not None:
            return self._pick_hash(key, set(usable), policy)
        if policy == RANDOM or policy in (RING_HASH, MAGLEV):  # no key to hash: Envoy picks at random
            if self._weighted:
                return self.rng.choices(usable, weights=[i.weight for i in usable])[0]
            return usable[self.rng.randrange(len(usable))]
        if policy == LEAST_REQUEST:
            n = min(self.config.choice_count, len(usable))
            choices = self.rng.sample(usable, n)
            return min(choices, key=lambda i: self._health[i].active)
        if self._weighted:
            return self._pick_weighted(usable)
        inst = usable[self._rr % len(usable)]
        self._rr += 1
        return inst

    def _pick_weighted(self, usable: list[Instance]) -> Instance:
        """Smooth weighted round robin (nginx's): each pick adds every usable instance's weight to its
        running weight, takes the largest and takes the total off it. Deterministic, interleaved, and
        exact over every sum(weights) picks."""
        current = self._current
        total = 0
        best = usable[0]
        best_value = None
        for inst in usable:
            total += inst.weight
            value = current.get(inst, 0) + inst.weight
            current[inst] = value
            if best_value is None or value > best_value:
                best, best_value = inst, value
        current[best] -= total
        return best

    def _pick_hash(self, key: bytes, usable: set[Instance], policy: str) -> Instance | None:
        h = _hash64(key)
        if policy == MAGLEV:
            table = self._maglev_table()
            n = len(table)
            for step in range(n):  # a skipped entry falls to the next, as Envoy retries the lookup
                inst = table[(h + step) % n]
                if inst in usable:
                    return inst
            return None
        points, owners = self._ring_table()
        start = bisect.bisect_left(points, h)
        for step in range(len(points)):
            inst = owners[(start + step) % len(points)]
            if inst in usable:
                return inst
        return None

    def _ring_table(self) -> tuple[list[int], list[Instance]]:
        if self._ring is None:
            n = len(self.instances)
            size = min(max(self.config.ring_min, n), self.config.ring_max)
            total = sum(i.weight for i in self.instances) or 1
            per = {inst: max(1, -(-size * inst.weight // total)) if self._weighted else max(1, -(-size // max(n, 1)))
                   for inst in self.instances}  # fmt: skip
            pairs = sorted((_hash64(f"{inst}_{i}".encode()), inst) for inst in self.instances
                           for i in range(per[inst]))  # fmt: skip
            self._ring = ([p for p, _ in pairs], [o for _, o in pairs])
        return self._ring

    def _maglev_table(self) -> list[Instance]:
        """Maglev's population (Eisenbud et al., 2016): each instance walks its own permutation of the
        table and takes turns claiming the next free slot, so shares are equal and a membership change
        moves few slots."""
        if self._maglev is None:
            m = MAGLEV_TABLE_SIZE
            insts = sorted(self.instances, key=str)
            perms = []
            for inst in insts:
                name = str(inst).encode()
                offset = _hash64(b"o" + name) % m
                skip = _hash64(b"s" + name) % (m - 1) + 1
                perms.append((offset, skip))
            table: list[Instance | None] = [None] * m
            nexts = [0] * len(insts)
            filled = 0
            while insts and filled < m:
                for i, (offset, skip) in enumerate(perms):
                    while True:
                        slot = (offset + nexts[i] * skip) % m
                        nexts[i] += 1
                        if table[slot] is None:
                            break
                    table[slot] = insts[i]
                    filled += 1
                    if filled == m:
                        break
            self._maglev = [t for t in table if t is not None]
        return self._maglev
