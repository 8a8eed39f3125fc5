"""Telemetry: counters, gauges and timers kept as hashicorp/go-metrics keeps them, shown as Consul shows them.

Consul records every metric through go-metrics into two sinks, and this registry plays both:

- the in-memory sink (``InmemSink``: 10 s intervals aligned to the wall clock, one minute kept) behind
  ``GET /v1/agent/metrics`` and ``/v1/agent/metrics/stream``. An interval shows only what was recorded in
  it: a gauge's last value, and for counters and samples (timers) the count, sum, min, max, mean, standard
  deviation and rate (sum per second of the interval) of what was recorded.
- the Prometheus sink, served when ``telemetry.prometheus_retention_time`` is positive: counters and gauges
  as they stand, and for every sample a summary with the 0.5, 0.9 and 0.99 quantiles over the last 10 s
  (client_golang's ``MaxAge`` of go-metrics' summaries, 5 age buckets) and ``_sum`` / ``_count`` since the
  series appeared. A series not updated within the retention time is left out, except those declared up
  front (``declare``), which show from the start, as go-metrics' definitions do.

Names as go-metrics builds them: the prefix (``telemetry.metrics_prefix``, "consul"), then the key; a gauge
also carries the host name after the prefix unless ``telemetry.disable_hostname``. Prometheus names join the
parts with "_" and replace " ", ".", "=", "-" and "/" with "_". ``telemetry.prefix_filter`` and
``filter_default`` decide, per name and once, whether a series records anything (go-metrics' longest-prefix
rule); a blocked series is a shared no-op.

A sample's quantiles come from the values kept in its window: every value while a 2 s age bucket holds
fewer than ``WINDOW_CAP`` of them, then the latest ``WINDOW_CAP``, so a busy series keeps a bounded subset
of its last 10 s (client_golang keeps a bounded stream estimate instead).

``Sample.observe`` is on the request path of every HTTP call, so it only appends the value to the series'
pending list; the arithmetic (count, sum, sum of squares, min, max, the window) is done in bulk when the
series is read or aged (``fold``), which the shell's clock does at least every 2 s. Appending stores the
float the caller already made; updating five aggregates per call allocated five more objects, and that
cost 5-8% of the agent's discovery throughput.

The module is pure: no clock, no IO, no asyncio. Time comes in as an argument (``now``, wall-clock seconds)
to the calls that need it (``rotate``, ``tick_window``, the renderers); the hot-path calls (``Counter.inc``,
``Sample.observe``, ``Gauge.set``) touch only the series object the caller holds. The agent's shell
(``registry.agent.telemetry``) calls ``tick_window`` every 2 s and ``rotate`` at each 10 s boundary.
"""

from __future__ import annotations

import math
import operator
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "INTERVAL",
    "QUANTILES",
    "WINDOW_BUCKETS",
    "Counter",
    "Gauge",
    "Metrics",
    "PrefixFilter",
    "Sample",
    "go_float",
    "prometheus_name",
]

Labels = tuple[tuple[str, str], ...]

INTERVAL = 10.0  # seconds per in-memory interval (Consul's lib/telemetry.go: NewInmemSink(10s, 1m))
RETAIN = 6  # intervals kept: one minute
WINDOW_BUCKETS = 5  # client_golang's default AgeBuckets for a summary's MaxAge of 10 s
WINDOW_TICK = INTERVAL / WINDOW_BUCKETS
WINDOW_CAP = 512  # values kept per age bucket (a power of two: slots are overwritten with n & (cap - 1))
QUANTILES = (0.5, 0.9, 0.99)  # go-metrics' summary objectives
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_QUANTILE_TEXT = ("0.5", "0.9", "0.99")

_FORBIDDEN = str.maketrans({" ": "_", ".": "_", "=": "_", "-": "_", "/": "_"})


def prometheus_name(name: str) -> str:
    """go-metrics' Prometheus name: the parts joined with "_", and " ", ".", "=", "-", "/" made "_"."""
    return name.translate(_FORBIDDEN)


def _escape_label(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(labels: Labels) -> str:
    pairs: Sequence[tuple[str, str]] = sorted(labels)
    if not pairs:
        return ""
    return "{" + ",".join(f'{prometheus_name(k)}="{_escape_label(v)}"' for k, v in pairs) + "}"


def go_float(v: float) -> str:
    """A float as Go's ``strconv.FormatFloat(v, 'g', -1, 64)`` writes it, which is how client_golang's text
    format writes values: the shortest digits that read back exactly, in %e form when the decimal exponent
    is below -4 or at least 6 (``1e+06``, ``1.5e-05``), plus "NaN", "+Inf" and "-Inf"."""
    a = abs(v)
    if 1e-4 <= a < 1e6:  # the common case: Python's repr is Go's shortest form in this range
        r = repr(v)
        return r[:-2] if r.endswith(".0") else r
    if v != v:
        return "NaN"
    if v in (math.inf, -math.inf):
        return "+Inf" if v > 0 else "-Inf"
    if v == 0:
        return "-0" if math.copysign(1.0, v) < 0 else "0"
    sign = "-" if v < 0 else ""
    mant, _, exp_s = repr(abs(v)).partition("e")
    whole, _, frac = mant.partition(".")
    digits = (whole + frac).lstrip("0")
    # The decimal exponent of the first significant digit.
    if whole != "0":
        exp = len(whole) - 1
    else:
        exp = -(len(frac) - len(frac.lstrip("0"))) - 1
    exp += int(exp_s) if exp_s else 0
    digits = digits.rstrip("0") or "0"
    if exp < -4 or exp >= 6:
        rest = digits[1:]
        return f"{sign}{digits[0]}{'.' + rest if rest else ''}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if exp < 0:
        return f"{sign}0.{'0' * (-exp - 1)}{digits}"
    if len(digits) <= exp + 1:
        return f"{sign}{digits}{'0' * (exp + 1 - len(digits))}"
    return f"{sign}{digits[: exp + 1]}.{digits[exp + 1 :]}"


def _json_number(v: float) -> float | int:
    """Go's encoding/json writes an integral float64 without a fraction (``12``, not ``12.0``)."""
    v = float(v)
    return int(v) if v.is_integer() and abs(v) < 1e21 else v


def go_time(ts: float) -> str:
    """The interval's start as go-metrics' summary writes it: ``Round(time.Second).UTC().String()``."""
    return datetime.fromtimestamp(round(ts), UTC).strftime("%Y-%m-%d %H:%M:%S +0000 UTC")


# ---------------------------------------------------------------------- series


class _Series:
    __slots__ = ("name", "labels", "hash", "help", "declared", "last", "pname", "plabels")

    def __init__(self, name: str, labels: Labels, help_text: str, now: float) -> None:
        self.name = name
        self.labels = labels
        # The Prometheus name and label set, rendered once.
        self.pname = prometheus_name(name)
        self.plabels = _labels(labels)
        # go-metrics' key for the series: the name, then ";name=value" per label (spaces made "_").
        self.hash = (name + "".join(f";{k}={v}" for k, v in labels)).replace(" ", "_")
        self.help = help_text
        self.declared = False  # declared up front: shown at zero from the start and never left out
        self.last = now  # the wall-clock time it was last seen updated (at interval granularity)

    def json_labels(self) -> dict[str, str]:
        return dict(self.labels)


class Counter(_Series):
    """A go-metrics counter: ``inc`` adds to the interval's aggregate; the Prometheus counter is the total."""

    __slots__ = ("n", "s", "sq", "lo", "hi", "total")

    def __init__(self, name: str, labels: Labels, help_text: str, now: float) -> None:
        super().__init__(name, labels, help_text, now)
        self.n = 0
        self.s = self.sq = self.total = 0.0
        self.lo, self.hi = math.inf, -math.inf

    def inc(self, v: float = 1.0) -> None:
        self.n += 1
        self.s += v
        self.sq += v * v
        if v < self.lo:
            self.lo = v
        if v > self.hi:
            self.hi = v

    def value(self) -> float:
        return self.total + self.s

    def _close(self) -> None:
        self.total += self.s
        self.n = 0
        self.s = self.sq = 0.0
        self.lo, self.hi = math.inf, -math.inf


class Sample(_Series):
    """A go-metrics sample (what ``MeasureSince`` records, in milliseconds): the interval's aggregate for the
    JSON, and for Prometheus a count and sum since it appeared plus the values of the last 10 s."""

    __slots__ = ("n", "s", "sq", "lo", "hi", "count", "sum", "window", "cur", "slot", "pending",
                 "mirrors")

    def __init__(self, name: str, labels: Labels, help_text: str, now: float) -> None:
        super().__init__(name, labels, help_text, now)
        self.n = 0
        self.s = self.sq = 0.0
        self.lo, self.hi = math.inf, -math.inf
        self.count = 0
        self.sum = 0.0
        self.window: list[list[float]] = [[] for _ in range(WINDOW_BUCKETS)]
        self.slot = 0
        self.cur = self.window[0]
        self.pending: list[float] = []  # observed, not yet folded into the aggregates and the window
        self.mirrors: tuple[Sample, ...] = ()  # series that record every value this one does

    def observe(self, v: float) -> None:
        self.pending.append(v)

    def fold(self) -> None:
        """Fold the pending observations into the interval's aggregates and the current window bucket (and
        into the mirrors')."""
        pending = self.pending
        if not pending:
            return
        values = pending.copy()
        pending.clear()
        self._absorb(values)
        for m in self.mirrors:
            m._absorb(values)

    def _absorb(self, values: list[float]) -> None:
        self.n += len(values)
        self.s += sum(values)
        self.sq += sum(map(operator.mul, values, values))
        lo, hi = min(values), max(values)
        if lo < self.lo:
            self.lo = lo
        if hi > self.hi:
            self.hi = hi
        cur = self.cur
        if len(cur) + len(values) <= WINDOW_CAP:
            cur.extend(values)
        else:
            cur[:] = (cur + values)[-WINDOW_CAP:]

    def observe_many(self, v: float, times: int) -> None:
        """``times`` observations of the same value ``v`` (a batch timed as a whole and credited its mean):
        counted and summed as that many, kept once in the quantile window."""
        if times <= 0:
            return
        self.fold()
        self.n += times
        self.s += v * times
        self.sq += v * v * times
        if v < self.lo:
            self.lo = v
        if v > self.hi:
            self.hi = v
        cur = self.cur
        if len(cur) < WINDOW_CAP:
            cur.append(v)
        else:
            cur[self.n & (WINDOW_CAP - 1)] = v

    def quantiles(self) -> list[float]:
        self.fold()
        values = sorted(v for bucket in self.window for v in bucket)
        if not values:
            return [math.nan] * len(QUANTILES)
        top = len(values) - 1
        return [values[min(top, max(0, math.ceil(q * len(values)) - 1))] for q in QUANTILES]

    def prometheus_count(self) -> int:
        self.fold()
        return self.count + self.n

    def prometheus_sum(self) -> float:
        self.fold()
        return self.sum + self.s

    def _tick(self) -> None:
        self.fold()  # what was observed before the tick belongs to the bucket that is ageing
        self.slot = (self.slot + 1) % WINDOW_BUCKETS
        fresh: list[float] = []
        self.window[self.slot] = fresh
        self.cur = fresh

    def _close(self) -> None:
        self.fold()
        self.count += self.n
        self.sum += self.s
        self.n = 0
        self.s = self.sq = 0.0
        self.lo, self.hi = math.inf, -math.inf


class Gauge(_Series):
    """A go-metrics gauge: the last value set. It shows in an interval's JSON only if set during it."""

    __slots__ = ("value", "fresh")

    def __init__(self, name: str, labels: Labels, help_text: str, now: float) -> None:
        super().__init__(name, labels, help_text, now)
        self.value = 0.0
        self.fresh = False

    def set(self, v: float) -> None:
        self.value = v
        self.fresh = True


class _NoCounter(Counter):
    __slots__ = ()

    def inc(self, v: float = 1.0) -> None:
        return None


class _NoSample(Sample):
    __slots__ = ()

    def observe(self, v: float) -> None:
        return None

    def observe_many(self, v: float, times: int) -> None:
        return None


class _NoGauge(Gauge):
    __slots__ = ()

    def set(self, v: float) -> None:
        return None


NO_COUNTER: Counter = _NoCounter("", (), "", 0.0)
NO_SAMPLE: Sample = _NoSample("", (), "", 0.0)
NO_GAUGE: Gauge = _NoGauge("", (), "", 0.0)


# ---------------------------------------------------------------------- filter


@dataclass(frozen=True)
class PrefixFilter:
    """Consul's ``telemetry.prefix_filter`` ("+consul.raft" allows, "-consul.http" blocks) and
    ``filter_default``: the longest rule that is a prefix of the metric's name decides; no rule, the
    default (go-metrics' radix-tree LongestPrefix over the joined name)."""

    allowed: tuple[str, ...] = ()
    blocked: tuple[str, ...] = ()
    default: bool = True

    @classmethod
    def parse(cls, rules: Iterable[str], default: bool = True) -> tuple[PrefixFilter, list[str]]:
        """The filter, and the rules left out (Consul warns about them and carries on): an empty rule, or
        one that begins with neither "+" nor "-"."""
        allowed, blocked, bad = [], [], []
        for rule in rules:
            if not rule or rule[0] not in "+-":
                bad.append(rule)
                continue
            (allowed if rule[0] == "+" else blocked).append(rule[1:])
        return cls(tuple(allowed), tuple(blocked), default), bad

    def allows(self, name: str) -> bool:
        best, verdict = -1, self.default
        for prefix in self.allowed:
            if len(prefix) > best and name.startswith(prefix):
                best, verdict = len(prefix), True
        for prefix in self.blocked:
            # A prefix both allowed and blocked: go-metrics inserts blocks after allows, so the block wins.
            if len(prefix) >= best and name.startswith(prefix):
                best, verdict = len(prefix), False
        return verdict

    def blocks_everything(self, prefix: str) -> bool:
        """True when nothing under ``prefix`` can be recorded (``-consul``, or ``filter_default = false``
        with no rule allowing anything under it): the registry may as well be off."""
        if any(a.startswith(prefix) for a in self.allowed):
            return False
        return not self.allows(prefix)


# ---------------------------------------------------------------------- the registry


class Metrics:
    """One agent's metrics: made once by the composition root and handed to every part that records.

    ``enabled=False`` gives a registry whose every series is a shared no-op and that shows nothing; the
    HTTP layer also skips timing requests altogether then. ``retention`` is
    ``prometheus_retention_time`` in seconds (0: no Prometheus output, as in Consul)."""

    def __init__(
        self,
        *,
        prefix: str = "consul",
        hostname: str = "",
        retention: float = 0.0,
        prefix_filter: PrefixFilter | None = None,
        enabled: bool = True,
        now: float = 0.0,
    ) -> None:
        self.prefix = prefix
        self.hostname = hostname
        self.retention = retention
        self.enabled = enabled
        self._filter = prefix_filter or PrefixFilter()
        self._counters: dict[tuple[str, Labels], Counter] = {}
        self._samples: dict[tuple[str, Labels], Sample] = {}
        self._gauges: dict[tuple[str, Labels], Gauge] = {}
        self.interval_start = _interval_start(now)
        self.finished: deque[dict[str, Any]] = deque(maxlen=RETAIN - 1)

    @property
    def prometheus_enabled(self) -> bool:
        """Consul serves the Prometheus format whenever the retention time is positive (empty when
        nothing is recorded)."""
        return self.retention > 0

    # ------------------------------------------------------------------ series

    def _full(self, key: str, gauge: bool) -> str:
        parts = [self.prefix] if self.prefix else []
        if gauge and self.hostname:
            parts.append(self.hostname)
        parts.append(key)
        return ".".join(parts)

    def counter(self, key: str, labels: Labels = (), help_text: str = "") -> Counter:
        """The counter ``<prefix>.<key>`` with these labels (made on first use)."""
        if not self.enabled:
            return NO_COUNTER
        found = self._counters.get((key, labels))
        if found is None:
            name = self._full(key, False)
            found = Counter(name, labels, help_text, self.interval_start) if self._filter.allows(name) \
                else NO_COUNTER  # fmt: skip
            self._counters[(key, labels)] = found
        return found

    def sample(self, key: str, labels: Labels = (), help_text: str = "") -> Sample:
        """The sample (timer, in ms) ``<prefix>.<key>`` with these labels (made on first use)."""
        if not self.enabled:
            return NO_SAMPLE
        found = self._samples.get((key, labels))
        if found is None:
            name = self._full(key, False)
            found = Sample(name, labels, help_text, self.interval_start) if self._filter.allows(name) \
                else NO_SAMPLE  # fmt: skip
            self._samples[(key, labels)] = found
        return found

    def gauge(self, key: str, labels: Labels = (), help_text: str = "") -> Gauge:
        """The gauge ``<prefix>[.<host>].<key>`` with these labels (made on first use)."""
        if not self.enabled:
            return NO_GAUGE
        found = self._gauges.get((key, labels))
        if found is None:
            name = self._full(key, True)
            found = Gauge(name, labels, help_text, self.interval_start) if self._filter.allows(name) \
                else NO_GAUGE  # fmt: skip
            self._gauges[(key, labels)] = found
        return found

    def declare(self, kind: str, key: str, help_text: str) -> None:
        """Declare a series up front (go-metrics' Counter/Summary/GaugeDefinitions): it shows in the
        Prometheus output from the start, at zero, and is never left out for being idle."""
        series: _Series
        if kind == "counter":
            series = self.counter(key, (), help_text)
        elif kind == "sample":
            series = self.sample(key, (), help_text)
        elif kind == "gauge":
            series = self.gauge(key, (), help_text)
        else:
            raise ValueError(f"unknown metric kind {kind!r}")
        if series.name:  # not a blocked series' shared no-op
            series.declared = True
            if help_text:
                series.help = help_text

    def all_series(self) -> Iterable[_Series]:
        seen: set[int] = set()
        for table in (self._counters, self._samples, self._gauges):
            for s in table.values():
                if s.name and id(s) not in seen:
                    seen.add(id(s))
                    yield s

    # ------------------------------------------------------------------ time

    def tick_window(self) -> None:
        """Age the samples' quantile windows by one bucket (every ``WINDOW_TICK`` seconds)."""
        self.fold()  # first, so a mirror gets its share before its own bucket ages
        for s in self._samples.values():
            if s.name:
                s._tick()

    def rotate(self, now: float) -> dict[str, Any] | None:
        """Close the current interval when ``now`` is past it: its summary (Consul's JSON shape) is kept
        (one minute's worth) and returned, and a new interval starts. None when the interval still runs."""
        start = _interval_start(now)
        if start <= self.interval_start:
            return None
        summary = self._summary(self.interval_start)  # folds every sample's pending observations
        for table in (self._counters, self._samples):
            for s in table.values():
                if s.name and s.n:
                    s.last = now
                    s._close()
        for g in self._gauges.values():
            if g.name and g.fresh:
                g.last = now
                g.fresh = False
        self.interval_start = start
        self.finished.append(summary)
        return summary

    # ------------------------------------------------------------------ the JSON of /v1/agent/metrics

    def summary(self) -> dict[str, Any]:
        """What ``GET /v1/agent/metrics`` answers: the most recent finished interval, or the current one
        when none has finished yet (go-metrics' ``DisplayMetrics``)."""
        if self.finished:
            return self.finished[-1]
        return self._summary(self.interval_start)

    def fold(self) -> None:
        """Fold every sample's pending observations (``Sample.observe`` only queues them)."""
        for s in self._samples.values():
            s.fold()

    def _summary(self, start: float) -> dict[str, Any]:
        self.fold()
        gauges = sorted((g for g in self._gauges.values() if g.name and g.fresh and g.value == g.value),
                        key=lambda g: g.hash)  # fmt: skip
        return {
            "Timestamp": go_time(start),
            "Gauges": [{"Name": g.name, "Value": _json_number(g.value), "Labels": g.json_labels()} for g in gauges],
            "PrecisionGauges": [],
            "Points": [],
            "Counters": _sampled(self._counters.values()),
            "Samples": _sampled(self._samples.values()),
        }

    # ------------------------------------------------------------------ Prometheus

    def prometheus(self, now: float) -> str:
        """The Prometheus text exposition (format 0.0.4) of every series updated within the retention time
        (and every declared one), grouped into families sorted by name as client_golang writes them."""
        self.fold()
        families: dict[str, tuple[str, str, list[str]]] = {}
        horizon = now - self.retention

        def live(s: _Series, touched: bool) -> bool:
            return s.declared or touched or s.last >= horizon

        def family(name: str, kind: str, help_text: str) -> list[str]:
            fam = families.get(name)
            if fam is None:
                fam = families[name] = (kind, help_text or name, [])
            return fam[2]

        for c in sorted(self._counters.values(), key=_by_labels):
            if c.name and live(c, c.n > 0):
                family(c.pname, "counter", c.help).append(f"{c.pname}{c.plabels} {go_float(c.value())}")
        for g in sorted(self._gauges.values(), key=_by_labels):
            if g.name and live(g, g.fresh):
                family(g.pname, "gauge", g.help).append(f"{g.pname}{g.plabels} {go_float(g.value)}")
        for s in sorted(self._samples.values(), key=_by_labels):
            if s.name and live(s, s.n > 0):
                pname, plabels = s.pname, s.plabels
                lines = family(pname, "summary", s.help)
                inner = plabels[1:-1] + "," if plabels else ""
                for q, v in zip(_QUANTILE_TEXT, s.quantiles(), strict=True):
                    lines.append(f'{pname}{{{inner}quantile="{q}"}} {go_float(v)}')
                lines.append(f"{pname}_sum{plabels} {go_float(s.prometheus_sum())}")
                lines.append(f"{pname}_count{plabels} {s.prometheus_count()}")
        out: list[str] = []
        for pname in sorted(families):
            kind, help_text, lines = families[pname]
            out.append(f"# HELP {pname} {_escape_help(help_text)}")
            out.append(f"# TYPE {pname} {kind}")
            out.extend(lines)
        return "\n".join(out) + "\n" if out else ""


def _by_labels(s: _Series) -> tuple[str, Labels]:
    return s.name, tuple(sorted(s.labels))


def _interval_start(now: float) -> float:
    return math.floor(now / INTERVAL) * INTERVAL


def _sampled(series: Iterable[Counter | Sample]) -> list[dict[str, Any]]:
    """Counters and samples of one interval as go-metrics' ``SampledValue`` JSON, sorted by key."""
    out = []
    for s in sorted((s for s in series if s.name and s.n), key=lambda s: s.hash):
        n, total = s.n, s.s
        num = n * s.sq - total * total
        div = n * (n - 1)
        stddev = math.sqrt(max(0.0, num) / div) if div else 0.0
        out.append({
            "Name": s.name, "Count": n, "Rate": _json_number(total / INTERVAL), "Sum": _json_number(total),
            "Min": _json_number(s.lo), "Max": _json_number(s.hi), "Mean": _json_number(total / n),
            "Stddev": _json_number(stddev), "Labels": s.json_labels(),
        })  # fmt: skip
    return out
