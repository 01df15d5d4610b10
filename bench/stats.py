"""Statistics and the result records of a benchmark: percentiles, medians, :class:`Metric`."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Metric", "Metrics", "Target", "median", "percentile", "percentiles"]

Comparison = Literal["<", "<=", ">", ">="]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, linearly interpolated (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def percentiles(values: Sequence[float], qs: Iterable[float] = (50, 95, 99)) -> dict[str, float]:
    """``{"p50": ..., "p95": ..., "p99": ...}`` of ``values``."""
    return {f"p{q:g}": percentile(values, q) for q in qs}


def median(values: Sequence[float]) -> float:
    """The median of ``values`` (NaN when there are none)."""
    return float(statistics.median(values)) if values else math.nan


@dataclass(frozen=True)
class Target:
    """A goal a figure is compared with, e.g. ``Target("<", 5.0)`` for "p99 under 5 ms"."""

    op: Comparison
    bound: float

    def met_by(self, value: float) -> bool:
        """True when ``value`` meets the target."""
        return {
            "<": value < self.bound,
            "<=": value <= self.bound,
            ">": value > self.bound,
            ">=": value >= self.bound,
        }[self.op]

    def __str__(self) -> str:
        return f"{self.op} {self.bound:g}"


@dataclass(frozen=True)
class Metric:
    """One reported figure: its value is the median of the per-run values in ``runs``."""

    name: str
    unit: str
    runs: tuple[float, ...]
    notes: str = ""
    target: Target | None = None

    @property
    def value(self) -> float:
        """The median over the runs."""
        return median(self.runs)

    @property
    def met(self) -> bool | None:
        """Whether the median meets the target (None without a target)."""
        return None if self.target is None else self.target.met_by(self.value)

    def as_json(self) -> dict[str, Any]:
        """The record as it goes into the JSON report."""
        return {
            "name": self.name,
            "unit": self.unit,
            "value": _finite(self.value),
            "runs": [_finite(v) for v in self.runs],
            "notes": self.notes,
            "target": None if self.target is None else str(self.target),
            "met": self.met,
        }


def _finite(value: float) -> float | None:
    """JSON has no NaN: a missing figure is null."""
    return None if math.isnan(value) else value


@dataclass
class _Series:
    unit: str
    notes: str
    target: Target | None
    values: list[float] = field(default_factory=list)


class Metrics:
    """Collects per-run values by metric name, in the order metrics were first declared."""

    def __init__(self) -> None:
        self._series: dict[str, _Series] = {}

    def declare(self, name: str, unit: str, notes: str = "", target: Target | None = None) -> None:
        """Declare a metric (its unit, notes and target) before adding values to it."""
        self._series[name] = _Series(unit, notes, target)

    def add(self, name: str, value: float) -> None:
        """Add one run's value to the declared metric ``name``."""
        self._series[name].values.append(float(value))

    def values(self, name: str) -> list[float]:
        """The per-run values added to ``name`` so far."""
        return list(self._series[name].values)

    def metrics(self) -> list[Metric]:
        """Every declared metric that received at least one value."""
        return [
            Metric(name, s.unit, tuple(s.values), s.notes, s.target) for name, s in self._series.items() if s.values
        ]
