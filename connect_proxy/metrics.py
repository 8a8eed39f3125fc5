"""The sidecar's own metrics in Prometheus text format (version 0.0.4). Pure: no IO, no clock.

Counters and histograms are kept in plain dictionaries keyed by label values, so counting on the
connection path is one dictionary update; rendering walks them only when scraped. Names are
``proconsul_proxy_*`` with Prometheus' conventions (``_total`` counters, ``_seconds`` histograms).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["CONTENT_TYPE", "LATENCY_BUCKETS", "Registry"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

Labels = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Labels, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(v: float) -> str:
    if v == float("inf"):
        return "+Inf"
    return str(int(v)) if float(v).is_integer() else repr(float(v))


@dataclass(slots=True)
class _Family:
    name: str
    kind: str  # counter | gauge | histogram
    help: str
    label_names: tuple[str, ...]
    values: dict[Labels, float] = field(default_factory=dict)
    buckets: tuple[float, ...] = ()
    hist: dict[Labels, list[float]] = field(default_factory=dict)  # per-bucket counts, then sum, count
    collect: Callable[[], Iterable[tuple[Labels, float]]] | None = None


class Registry:
    """Metric families by name. ``inc``/``observe`` on an undeclared family raise KeyError: a typo is a
    bug, not a new metric."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}
        self._folds: list[Callable[[], None]] = []

    def add_fold(self, fold: Callable[[], None]) -> None:
        """``fold`` brings counts kept elsewhere (per request, in a hot path) into the families; it is
        called before every read (``value``, ``render``), so what is read is never behind."""
        self._folds.append(fold)

    def _fold(self) -> None:
        for fold in self._folds:
            fold()

    def counter(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self._families[name] = _Family(name, "counter", help_text, tuple(labels))

    def gauge(self, name: str, help_text: str, labels: Sequence[str] = (),
              collect: Callable[[], Iterable[tuple[Labels, float]]] | None = None) -> None:  # fmt: skip
        """A gauge set with ``set``, or read at scrape time from ``collect``."""
        self._families[name] = _Family(name, "gauge", help_text, tuple(labels), collect=collect)

    def histogram(self, name: str, help_text: str, labels: Sequence[str] = (),
                  buckets: Sequence[float] = LATENCY_BUCKETS) -> None:  # fmt: skip
        self._families[name] = _Family(name, "histogram", help_text, tuple(labels), buckets=tuple(sorted(buckets)))

    def inc(self, name: str, labels: Labels = (), value: float = 1.0) -> None:
        values = self._families[name].values
        values[labels] = values.get(labels, 0.0) + value

    def set(self, name: str, labels: Labels, value: float) -> None:
        self._families[name].values[labels] = value

    def value(self, name: str, labels: Labels = ()) -> float:
        self._fold()
        return self._families[name].values.get(labels, 0.0)

    def observe(self, name: str, value: float, labels: Labels = ()) -> None:
        fam = self._families[name]
        row = fam.hist.get(labels)
        if row is None:
            row = fam.hist[labels] = [0.0] * (len(fam.buckets) + 2)
        i = bisect.bisect_left(fam.buckets, value)
        if i < len(fam.buckets):
            row[i] += 1
        row[-2] += value
        row[-1] += 1

    def observe_many(self, name: str, values: Sequence[float], labels: Labels = ()) -> None:
        """``observe`` for each of ``values``."""
        if not values:
            return
        fam = self._families[name]
        row = fam.hist.get(labels)
        if row is None:
            row = fam.hist[labels] = [0.0] * (len(fam.buckets) + 2)
        buckets, n = fam.buckets, len(fam.buckets)
        for value in values:
            i = bisect.bisect_left(buckets, value)
            if i < n:
                row[i] += 1
        row[-2] += sum(values)
        row[-1] += len(values)

    def render(self) -> str:
        self._fold()
        out: list[str] = []
        for fam in self._families.values():
            out.append(f"# HELP {fam.name} {fam.help}")
            out.append(f"# TYPE {fam.name} {fam.kind}")
            if fam.kind == "histogram":
                for labels, row in sorted(fam.hist.items()):
                    acc = 0.0
                    for bound, n in zip(fam.buckets, row, strict=False):
                        acc += n
                        le = 'le="' + _num(bound) + '"'
                        out.append(f"{fam.name}_bucket{_labels(fam.label_names, labels, le)} {_num(acc)}")
                    le_inf = 'le="+Inf"'
                    out.append(f"{fam.name}_bucket{_labels(fam.label_names, labels, le_inf)} {_num(row[-1])}")
                    out.append(f"{fam.name}_sum{_labels(fam.label_names, labels)} {_num(row[-2])}")
                    out.append(f"{fam.name}_count{_labels(fam.label_names, labels)} {_num(row[-1])}")
                continue
            rows = list(fam.collect()) if fam.collect is not None else sorted(fam.values.items())
            for labels, v in rows:
                out.append(f"{fam.name}{_labels(fam.label_names, labels)} {_num(v)}")
        return "\n".join(out) + "\n"
