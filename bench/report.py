"""What an entry produces (:class:`EntryResult`) and how it is shown: a rich table and a JSON file."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench.stats import Metric

__all__ = ["RESULTS_DIR", "EntryResult", "default_json_path", "print_table", "write_json"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class EntryResult:
    """The figures of one entry: its settings, its metrics (medians over runs) and free-form notes."""

    entry: str
    settings: dict[str, Any]
    metrics: list[Metric]
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # JSON only: e.g. per-command breakdowns
    tables: list[str] = field(default_factory=list)
    """Markdown tables, printed as they are (the form docs/benchmarks.md quotes) and kept in the JSON."""


def default_json_path(entry: str, started: datetime) -> Path:
    """``bench/results/<entry>-<timestamp>.json``."""
    return RESULTS_DIR / f"{entry}-{started.strftime('%Y%m%dT%H%M%S')}.json"


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "-"
    if value == 0 or abs(value) >= 100 or value.is_integer():
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def print_table(result: EntryResult, machine: dict[str, Any], console: Console | None = None) -> None:
    """Print the entry's metrics as a table, with the machine and the notes under it."""
    # Piped output gets a wide table rather than rich's 80 columns.
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    table = Table(title=f"bench {result.entry}", title_justify="left")
    for column, justify in (("metric", "left"), ("median", "right"), ("unit", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    table.add_column("runs (min..max)", justify="right")
    table.add_column("n", justify="right")
    table.add_column("target", justify="left")
    table.add_column("notes", justify="left", overflow="fold")
    for metric in result.metrics:
        mark = {None: "", True: " [green]ok[/]", False: " [red]missed[/]"}[metric.met]
        table.add_row(
            escape(metric.name),
            _fmt(metric.value),
            metric.unit,
            f"{_fmt(min(metric.runs))}..{_fmt(max(metric.runs))}",
            str(len(metric.runs)),
            ("" if metric.target is None else str(metric.target)) + mark,
            escape(metric.notes),
        )
    console.print(table)
    versions = machine["packages"] | machine.get("peer_packages", {})
    packages = ", ".join(f"{k} {v}" for k, v in versions.items() if v)
    console.print(
        f"[dim]{machine['cpu_count']} CPU x {machine['cpu_model']}; {machine['python']}; "
        f"{machine['redis_server'].split(' sha=')[0]}; {packages}[/]"
    )
    for note in result.notes:
        console.print(f"[dim]note: {escape(note)}[/]")
    for text in result.tables:
        console.print()
        console.print(text, markup=False, highlight=False, soft_wrap=True)


def write_json(
    path: Path, result: EntryResult, machine: dict[str, Any], *, started: datetime, duration_s: float, quick: bool
) -> None:
    """Write the report: machine, settings, every metric (median and per-run values), notes."""
    document = {
        "entry": result.entry,
        "started_at": started.isoformat(timespec="seconds"),
        "duration_s": round(duration_s, 2),
        "quick": quick,
        "machine": machine,
        "settings": result.settings,
        "metrics": [metric.as_json() for metric in result.metrics],
        "notes": result.notes,
        "details": result.details,
        "tables": result.tables,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
