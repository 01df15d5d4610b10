"""The report tables of ``bench compare``: medians over repetitions, ratios to the fastest peer.

Input: per contender label, per figure, the value of each repetition that ran (``{rep: value}``).
Pure functions, so the arithmetic and the formatting are unit-tested without any peer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from bench.stats import median

__all__ = [
    "ACTIONQ",
    "Runs",
    "fmt_ms",
    "fmt_rate",
    "fmt_ratio",
    "main_table",
    "markdown_table",
    "noop_table",
    "ratios_to_fastest_peer",
]

ACTIONQ = "actionq"
Runs = Mapping[str, Mapping[str, Mapping[int, float]]]
"""label -> figure -> repetition -> value."""
MISSING = "\u2013"  # an en dash
_TIMES = "\u00d7"
_TO = "\u2013"


def ratios_to_fastest_peer(runs: Runs, figure: str) -> dict[str, dict[int, float]]:
    """Per label and repetition: its ``figure`` over the fastest peer's (actionq is no peer) in that repetition."""
    reps = {rep for figures in runs.values() for rep in figures.get(figure, {})}
    out: dict[str, dict[int, float]] = {label: {} for label in runs}
    for rep in sorted(reps):
        peers = [f[figure][rep] for label, f in runs.items() if label != ACTIONQ and rep in f.get(figure, {})]
        if not peers or max(peers) <= 0:
            continue
        fastest = max(peers)
        for label, figures in runs.items():
            if rep in figures.get(figure, {}):
                out[label][rep] = figures[figure][rep] / fastest
    return out


def _values(runs: Runs, label: str, figure: str) -> list[float]:
    by_rep = runs.get(label, {}).get(figure, {})
    return [by_rep[rep] for rep in sorted(by_rep) if not math.isnan(by_rep[rep])]


def _median(runs: Runs, label: str, figure: str) -> float:
    return median(_values(runs, label, figure))


def fmt_rate(value: float) -> str:
    """Jobs/s: a whole number with thousands separators."""
    return MISSING if math.isnan(value) else f"{value:,.0f}"


def fmt_ms(value: float) -> str:
    """Milliseconds: one decimal below 10, whole above."""
    if math.isnan(value):
        return MISSING
    return f"{value:.1f}" if value < 10 else f"{value:,.0f}"


def fmt_ratio(value: float) -> str:
    """A ratio, e.g. ``0.58x`` (with a multiplication sign)."""
    return MISSING if math.isnan(value) else f"{value:.2f}{_TIMES}"


def _fmt_with_range(values: Sequence[float], digits: int) -> str:
    """The median, and the range over repetitions when they differ: ``13.4 (11.4-15.4)`` (an en dash)."""
    if not values:
        return MISSING
    middle = f"{median(values):.{digits}f}"
    low, high = f"{min(values):.{digits}f}", f"{max(values):.{digits}f}"
    return middle if low == high else f"{middle} ({low}{_TO}{high})"


def _pair(runs: Runs, label: str, figure: str) -> str:
    p50, p99 = _median(runs, label, f"{figure} p50"), _median(runs, label, f"{figure} p99")
    return MISSING if math.isnan(p50) else f"{fmt_ms(p50)} / {fmt_ms(p99)}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table; columns after the first are right-aligned."""
    lines = ["| " + " | ".join(headers) + " |", "| --- |" + " ---: |" * (len(headers) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main_table(runs: Runs, headlines: Mapping[str, str], title: str) -> str:
    """The default workload's table (the ``incr`` job), one row per contender that ran."""
    ratio = ratios_to_fastest_peer(runs, "drain")
    headers = [
        title,
        "drain jobs/s",
        "vs fastest peer",
        "start p50 / p99 ms",
        "result p50 / p99 ms",
        "cancel p50 / p99 ms",
        "Redis cmds/job",
        "worker CPU ms/job",
    ]
    rows = [
        [
            headlines.get(label, label),
            fmt_rate(_median(runs, label, "drain")),
            fmt_ratio(median([ratio[label][rep] for rep in sorted(ratio[label])])),
            _pair(runs, label, "start"),
            _pair(runs, label, "result"),
            _pair(runs, label, "cancel"),
            _fmt_with_range(_values(runs, label, "drain cmds"), 1),
            _fmt_with_range(_values(runs, label, "drain cpu"), 2),
        ]
        for label in runs
        if runs[label].get("drain")
    ]
    return markdown_table(headers, rows)


def noop_table(runs: Runs, headlines: Mapping[str, str], title: str) -> str:
    """The second figure (the no-op job), with the producer's rate and the idle worker."""
    ratio = ratios_to_fastest_peer(runs, "noop")
    headers = [
        title,
        "no-op drain jobs/s",
        "vs fastest peer",
        "no-op Redis cmds/job",
        "no-op worker CPU ms/job",
        "producer enqueue jobs/s",
        "idle Redis cmds/s",
        "idle worker RSS MiB",
    ]
    rows = [
        [
            headlines.get(label, label),
            fmt_rate(_median(runs, label, "noop")),
            fmt_ratio(median([ratio[label][rep] for rep in sorted(ratio[label])])),
            _fmt_with_range(_values(runs, label, "noop cmds"), 1),
            _fmt_with_range(_values(runs, label, "noop cpu"), 2),
            fmt_rate(_median(runs, label, "enqueue")),
            _fmt_with_range(_values(runs, label, "idle cmds"), 1),
            _fmt_with_range(_values(runs, label, "idle rss"), 0),
        ]
        for label in runs
        if runs[label].get("noop")
    ]
    return markdown_table(headers, rows)
