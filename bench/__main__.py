"""``python -m bench ENTRY [--quick] [--runs N] [--json PATH]`` (ENTRY ``all`` runs every entry)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.entries import ENTRIES
from bench.options import RunOptions
from bench.runner import run_entries

parser = argparse.ArgumentParser(prog="python -m bench", description="actionq benchmarks (DESIGN.md §8)")
parser.add_argument("entry", choices=[*ENTRIES, "all"], help="what to measure")
parser.add_argument("--quick", action="store_true", help="fewer samples and runs (all entries: well under 3 min)")
parser.add_argument("--runs", type=int, default=None, help="repeated runs per figure (default: per entry)")
parser.add_argument(
    "--json", type=Path, default=None, help="report path, for a single entry (default bench/results/ENTRY-TIME.json)"
)
args = parser.parse_args()
if args.runs is not None and args.runs < 1:
    parser.error("--runs must be at least 1")
names = list(ENTRIES) if args.entry == "all" else [args.entry]
sys.exit(run_entries(names, RunOptions(quick=args.quick, runs=args.runs), args.json))
