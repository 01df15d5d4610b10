"""``compare`` (the default entry): actionq beside its peers on jobs that do real work (DESIGN.md §8).

Every contender (:mod:`bench.peers`) in one run, on one private redis-server, one worker process
each with concurrency 100 (Dramatiq 8 threads, RQ one job at a time: their own models), the order
reversed every other repetition. Per contender and repetition, with a fresh worker:

1. **drain** (:mod:`bench.drain`): a producer process enqueues N ``incr`` jobs (one ``INCR`` each,
   awaited on the worker's own client) as fast as the library allows, while the worker drains;
   jobs/s from the first enqueue to the last increment, Redis commands per job, worker CPU per job;
2. the same with no-op jobs: the second, labelled figure;
3. **latency** (:mod:`bench.phases`): ``stamp`` jobs at 50/s for 10 s: enqueue -> start and
   enqueue -> result, p50 and p99;
4. **cancel**: cancels of running jobs, where the library has them;
5. **idle**: the worker's Redis commands per second and RSS with nothing to do.

Figures are medians over repetitions; drain rates are also given as ratios to the fastest peer of
the same repetition.
"""

from __future__ import annotations

import math
import os
import sys
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from bench.drain import DrainSample, drain
from bench.harness import BenchEnv
from bench.options import RunOptions
from bench.peers import contender_factories, missing_peers
from bench.peers.base import CONCURRENCY, Contender
from bench.phases import cancel_samples, idle, latency_samples
from bench.report import EntryResult
from bench.stats import Metrics, Target, percentile
from bench.table import ACTIONQ, main_table, noop_table, ratios_to_fastest_peer

__all__ = ["Sizes", "run"]

RATE = 50.0


@dataclass(frozen=True)
class Sizes:
    """How much each phase does, from the command line."""

    jobs: int
    reps: int
    latency_s: float
    cancels: int
    idle_s: float

    @classmethod
    def of(cls, options: RunOptions) -> Sizes:
        """Full: 10,000 jobs, 3 repetitions, 10 s of latency, 20 cancels; ``--quick``: far less."""
        return cls(
            jobs=options.jobs or options.pick(full=10_000, quick=1_000),
            reps=options.run_count(full=3, quick=1),
            latency_s=float(options.pick(full=10, quick=3)),
            cancels=options.pick(full=20, quick=8),
            idle_s=float(options.pick(full=3, quick=1)),
        )


Figures = dict[str, float]


async def _phases(contender: Contender, sizes: Sizes) -> tuple[Figures, dict[str, Any]]:
    """One contender, one repetition: its figures, and its Redis commands by name (for the JSON)."""
    jobs = min(sizes.jobs, contender.max_drain_jobs or sizes.jobs)
    figures: Figures = {}
    async with contender:
        busy = await drain(contender, jobs, "incr")
        quiet = await drain(contender, jobs, "noop")
        starts, results = await latency_samples(contender, RATE, sizes.latency_s)
        cancels = await cancel_samples(contender, sizes.cancels) if contender.supports_cancel else []
        still = await idle(contender, sizes.idle_s)
    figures |= _drain_figures("drain", busy) | _drain_figures("noop", quiet)
    figures["enqueue"] = busy.enqueue_rate
    for name, values in (("start", starts), ("result", results), ("cancel", cancels)):
        figures[f"{name} p50"] = percentile(values, 50)
        figures[f"{name} p99"] = percentile(values, 99)
    figures["idle cmds"] = still.commands_per_s
    figures["idle rss"] = still.rss_mib
    commands = {"drain": _per(busy.commands, jobs), "noop": _per(quiet.commands, jobs), "idle": dict(still.commands)}
    return figures, commands


def _headline(contender: Contender, sizes: Sizes) -> str:
    """The table's row name; a contender that drains fewer jobs says how many."""
    cap = contender.max_drain_jobs
    name = contender.headline or contender.label
    return f"{name}; {cap:,} jobs" if cap is not None and cap < sizes.jobs else name


def _drain_figures(name: str, sample: DrainSample) -> Figures:
    return {name: sample.rate, f"{name} cmds": sample.commands_per_job, f"{name} cpu": sample.cpu_ms_per_job}


def _per(calls: dict[str, int], jobs: int) -> dict[str, float]:
    return {name: round(n / jobs, 3) for name, n in sorted(calls.items(), key=lambda kv: -kv[1])}


async def run(options: RunOptions) -> EntryResult:
    """Every installed contender, ``reps`` times, alternating the order; then the tables."""
    sizes = Sizes.of(options)
    runs: dict[str, dict[str, dict[int, float]]] = {}
    headlines: dict[str, str] = {}
    settings: dict[str, Any] = {"sizes": sizes.__dict__, "rate_jobs_per_s": RATE, "contenders": {}}
    details: dict[str, Any] = {"commands_per_job": defaultdict(dict)}
    failures: list[str] = []
    async with BenchEnv() as env:
        factories = contender_factories(env, options.only)
        for rep in range(sizes.reps):
            for make in factories if rep % 2 == 0 else factories[::-1]:
                contender = make()
                headlines[contender.label] = _headline(contender, sizes)
                settings["contenders"][contender.label] = contender.settings()
                runs.setdefault(contender.label, defaultdict(dict))
                _say(f"repetition {rep + 1}/{sizes.reps}: {contender.label}")
                try:
                    figures, commands = await _phases(contender, sizes)
                except Exception as exc:
                    if contender.label == ACTIONQ:
                        raise
                    failures.append(f"{contender.label}, repetition {rep + 1}: FAILED: {type(exc).__name__}: {exc}")
                    _say(f"  {failures[-1]}")
                    continue
                _say(f"  drain {figures['drain']:,.0f} jobs/s, {figures['drain cmds']:.1f} cmds/job")
                for name, value in figures.items():
                    runs[contender.label][name][rep] = value
                details["commands_per_job"][contender.label][rep + 1] = commands
    tables = _tables(runs, headlines, sizes)
    notes = failures + missing_peers() + _notes(sizes)
    return EntryResult("compare", settings, _metrics(runs), notes, details, tables=tables)


def _say(line: str) -> None:
    """Progress on stderr: a full run takes a while."""
    print(line, file=sys.stderr, flush=True)


def _tables(runs: dict[str, dict[str, dict[int, float]]], headlines: dict[str, str], sizes: Sizes) -> list[str]:
    reps = f"medians of {sizes.reps} repetition{'s' if sizes.reps > 1 else ''}"
    one = f"one worker process, {os.cpu_count()} cores, {sizes.jobs:,} jobs, {reps}"
    return [
        main_table(runs, headlines, f"{one}; each job awaits one INCR"),
        noop_table(runs, headlines, f"second figure: no-op jobs; {reps}"),
    ]


_UNITS = {
    "drain": "jobs/s",
    "noop": "jobs/s",
    "enqueue": "jobs/s",
    "cmds": "cmds/job",
    "cpu": "ms/job",
    "idle cmds": "cmds/s",
    "idle rss": "MiB",
}


def _unit(figure: str) -> str:
    if figure in _UNITS:
        return _UNITS[figure]
    if figure.endswith((" p50", " p99")):
        return "ms"
    return _UNITS.get(figure.split()[-1], "")


def _metrics(runs: dict[str, dict[str, dict[int, float]]]) -> list[Any]:
    """Every figure of every contender as a metric (values per repetition), plus the drain ratios."""
    metrics = Metrics()
    runs = {label: dict(figures) for label, figures in runs.items()}
    for figure in ("drain", "noop"):
        for label, by_rep in ratios_to_fastest_peer(runs, figure).items():
            runs[label][f"{figure} vs fastest peer"] = by_rep
    targets = {"drain vs fastest peer": Target(">=", 1.25), "drain cpu": Target("<=", 0.30)}
    targets |= {"drain cmds": Target("<=", 10), "start p50": Target("<=", 1.0), "cancel p99": Target("<", 5.0)}
    targets |= {"idle cmds": Target("<", 20), "idle rss": Target("<=", 40)}
    for label, figures in runs.items():
        for figure, by_rep in figures.items():
            name = f"{figure} [{label}]"
            target = targets.get(figure) if label == ACTIONQ else None
            unit = "ratio" if figure.endswith("fastest peer") else _unit(figure)
            metrics.declare(name, unit, "median over repetitions", target)
            for rep in sorted(by_rep):
                if not math.isnan(by_rep[rep]):
                    metrics.add(name, by_rep[rep])
    return metrics.metrics()


def _notes(sizes: Sizes) -> list[str]:
    return [
        f"each contender: one worker process, concurrency {CONCURRENCY} unless its row says otherwise; "
        "all in one run on one private redis-server; order reversed every other repetition",
        "drain: a separate producer process enqueues as fast as the library allows (its batch API where it "
        "has one); timed from its first enqueue to the counter's final value (the INCR counter is the "
        "completion check); Redis commands include the job's own INCR",
        f"latency: {RATE:g} stamp jobs/s for {sizes.latency_s:g} s; results awaited as each library's docs say",
        "worker CPU: user + system time of the worker's process tree over the drain window (/proc)",
        "the machine's CPUs are shared by the bench, the producer, the worker and redis-server; "
        "load average at the end: " + ", ".join(f"{x:.2f}" for x in os.getloadavg()),
    ]
