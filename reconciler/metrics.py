"""Prometheus text exposition (format 0.0.4) for the daemon's ``/metrics``.

Why this exists: operators scrape the daemon like any other exporter.  We need
only counters, gauges and one histogram, so a few dozen lines of stdlib beat a
client library dependency that bookworm would have to carry.  This module owns
the metric types and the text format; the daemon owns which metrics exist.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

Labels = tuple[tuple[str, str], ...]

# Reconcile durations in seconds: from a one-key incremental change (~ms) to a
# cold 10k-service apply (seconds).
DEFAULT_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                                      2.5, 5.0, 10.0, 30.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels, extra: Labels = ()) -> str:
    items = labels + extra
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in items) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _key(labels: dict[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str) -> None:
        self.name = name
        self.help = help_text
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def lines(self) -> list[str]:
        raise NotImplementedError


class _Labelled(_Metric):
    """One value per label set: what counters and gauges have in common."""

    def __init__(self, name: str, help_text: str) -> None:
        super().__init__(name, help_text)
        self._values: dict[Labels, float] = {}

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(_key(labels), 0.0)

    def lines(self) -> list[str]:
        with self._lock:
            return [f"{self.name}{_labels(k)} {_number(v)}" for k, v in sorted(self._values.items())]


class Counter(_Labelled):
    kind = "counter"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = _key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount


class Gauge(_Labelled):
    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        with self._lock:
            self._values[_key(labels)] = float(value)

    def replace(self, values: dict[Labels, float]) -> None:
        """Swap the whole labelled set (series that vanished disappear)."""
        with self._lock:
            self._values = dict(values)


class SampledCounter(Gauge):
    """A counter whose values are sampled from elsewhere (the datapath's counters)."""

    kind = "counter"


@dataclass
class _Series:
    buckets: list[int]
    count: int = 0
    total: float = 0.0


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...] = DEFAULT_BUCKETS) -> None:
        super().__init__(name, help_text)
        self.bounds = tuple(sorted(buckets))
        self._series: dict[Labels, _Series] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = _key(labels)
        with self._lock:
            series = self._series.setdefault(key, _Series([0] * len(self.bounds)))
            for i, bound in enumerate(self.bounds):
                if value <= bound:
                    series.buckets[i] += 1
            series.count += 1
            series.total += value

    def count(self, **labels: str) -> int:
        with self._lock:
            series = self._series.get(_key(labels))
            return series.count if series else 0

    def lines(self) -> list[str]:
        out: list[str] = []
        with self._lock:
            for key, series in sorted(self._series.items()):
                for bound, n in zip(self.bounds, series.buckets, strict=True):
                    out.append(f"{self.name}_bucket{_labels(key, (('le', _number(bound)),))} {n}")
                out.append(f"{self.name}_bucket{_labels(key, (('le', '+Inf'),))} {series.count}")
                out.append(f"{self.name}_sum{_labels(key)} {_number(series.total)}")
                out.append(f"{self.name}_count{_labels(key)} {series.count}")
        return out


class Registry:
    """The metrics of one process, rendered in registration order."""

    def __init__(self) -> None:
        self._metrics: list[_Metric] = []

    def _add(self, metric: _Metric) -> None:
        if any(m.name == metric.name for m in self._metrics):
            raise ValueError(f"metric {metric.name} registered twice")
        self._metrics.append(metric)

    def counter(self, name: str, help_text: str) -> Counter:
        metric = Counter(name, help_text)
        self._add(metric)
        return metric

    def gauge(self, name: str, help_text: str) -> Gauge:
        metric = Gauge(name, help_text)
        self._add(metric)
        return metric

    def sampled_counter(self, name: str, help_text: str) -> SampledCounter:
        metric = SampledCounter(name, help_text)
        self._add(metric)
        return metric

    def histogram(self, name: str, help_text: str, buckets: tuple[float, ...] = DEFAULT_BUCKETS) -> Histogram:
        metric = Histogram(name, help_text, buckets)
        self._add(metric)
        return metric

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._metrics:
            lines.extend(metric.header())
            lines.extend(metric.lines())
        return "\n".join(lines) + "\n"


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
