"""``python -m bench [ENTRY] [--quick] [--reps N] [--jobs N] [--only LABEL,...] [--json PATH]``.

ENTRY defaults to ``compare`` (actionq beside its peers, DESIGN.md §8); ``all`` runs every entry.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.entries import DEFAULT_ENTRY, ENTRIES
from bench.options import RunOptions
from bench.runner import run_entries

parser = argparse.ArgumentParser(prog="python -m bench", description="actionq benchmarks (DESIGN.md §8)")
parser.add_argument(
    "entry", nargs="?", default=DEFAULT_ENTRY, choices=[*ENTRIES, "all"], help=f"what to measure ({DEFAULT_ENTRY})"
)
parser.add_argument("--quick", action="store_true", help="fewer samples and runs")
parser.add_argument(
    "--runs", "--reps", dest="runs", type=int, default=None, help="repetitions per figure (default: per entry)"
)
parser.add_argument("--jobs", type=int, default=None, help="compare: jobs per drain (default 10,000)")
parser.add_argument(
    "--only", default="", help="compare: comma-separated contender labels, e.g. 'saq,arq tuned' (actionq always runs)"
)
parser.add_argument(
    "--json", type=Path, default=None, help="report path, for a single entry (default bench/results/ENTRY-TIME.json)"
)
args = parser.parse_args()
if args.runs is not None and args.runs < 1:
    parser.error("--runs/--reps must be at least 1")
if args.jobs is not None and args.jobs < 1:
    parser.error("--jobs must be at least 1")
only = tuple(label.strip() for label in args.only.split(",") if label.strip())
names = list(ENTRIES) if args.entry == "all" else [args.entry]
sys.exit(run_entries(names, RunOptions(quick=args.quick, runs=args.runs, jobs=args.jobs, only=only), args.json))
