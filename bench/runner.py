"""Runs entries and reports them: a table on the terminal and one JSON file per entry."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from datetime import datetime
from pathlib import Path

from rich.console import Console

from bench.entries import ENTRIES
from bench.machine import machine_info
from bench.options import RunOptions
from bench.report import default_json_path, print_table, write_json

__all__ = ["run_entries"]


def run_entries(names: list[str], options: RunOptions, json_path: Path | None = None) -> int:
    """Run each named entry in turn; the exit status (0, or 1 if an entry failed)."""
    console = Console(width=None if sys.stdout.isatty() else 160)
    machine = machine_info()
    status = 0
    for name in names:
        started = datetime.now().astimezone()
        t0 = time.monotonic()
        console.print(f"[bold]bench {name}[/]: {ENTRIES[name].description}" + (" (quick)" if options.quick else ""))
        try:
            result = asyncio.run(ENTRIES[name].run(options))
        except Exception as exc:  # one failing entry must not hide the others' figures
            console.print(f"[red]bench {name} failed:[/] {type(exc).__name__}: {exc}")
            if os.environ.get("BENCH_TRACEBACK"):
                console.print_exception()
            status = 1
            continue
        duration_s = time.monotonic() - t0
        path = json_path if json_path is not None and len(names) == 1 else default_json_path(name, started)
        write_json(path, result, machine, started=started, duration_s=duration_s, quick=options.quick)
        print_table(result, machine, console)
        console.print(f"[dim]{name}: {duration_s:.1f} s; JSON report: {path}[/]\n")
    return status
