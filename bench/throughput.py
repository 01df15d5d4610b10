"""``throughput``: N no-op jobs through one worker process, actionq beside raw arq and the peers.

Each contender (:mod:`bench.contenders`) runs in its own phase on the same private Redis, with
only its own worker process alive. Per run:

* **enqueue rate** = N / (first enqueue -> last enqueue returned), sequential, one client;
* **end-to-end rate** = N / (first enqueue -> every job finished); the worker drains while the
  client is still enqueueing, so this is the figure of a producer feeding a worker;
* **backlog drain rate** = (jobs still unfinished when enqueueing ended) / (end of enqueueing ->
  every job finished): how fast the worker eats the backlog that built up;
* **Redis commands per job** = ``INFO commandstats`` delta over the run (enqueue and drain,
  client and worker) / N, less the bench's own probe calls and ``INFO``; the per-command
  breakdown goes to the JSON report (``details``);
* **peak RSS** of the worker (``VmHWM``) after the run.

"Every job finished" is seen by polling :meth:`Contender.unfinished` every ``PROBE_S`` on a
separate connection (one ZCARD for actionq, arq and SAQ), so the end is known to ``PROBE_S``.
Reported values are medians over runs; ratios are actionq's run i over the contender's run i.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from typing import Any

from bench.contenders import Contender, contenders, missing_peers
from bench.harness import BenchEnv, BenchError
from bench.options import RunOptions
from bench.redisstats import command_calls, commands_delta, top_commands
from bench.report import EntryResult
from bench.stats import Metrics, Target

__all__ = ["run"]

ACTIONQ = "actionq"
PROBE_S = 0.005
DRAIN_TIMEOUT_S = 300.0
E2E = "end-to-end rate"
DRAIN = "backlog drain rate"
CMDS = "redis commands/job"
RSS = "worker peak RSS"
ENQ = "enqueue rate"


async def run(options: RunOptions) -> EntryResult:
    """Every contender in turn, ``runs`` runs of ``jobs`` jobs each; then the ratios.

    A contender with a ``max_run_jobs`` (arq with its defaults, whose drain rate is bound by its
    0.5 s poll and the same at 1,000 jobs as at 5,000) runs that many, to keep the full run short.
    """
    jobs = options.pick(full=5_000, quick=600)
    runs = options.run_count(full=3, quick=3)
    metrics = Metrics()
    breakdown: dict[str, Counter[str]] = {}
    totals: dict[str, int] = {}  # jobs run, per contender
    settings: dict[str, Any] = {"jobs": jobs, "runs": runs, "probe_interval_s": PROBE_S, "contenders": {}}
    async with BenchEnv() as env:
        measured: list[str] = []
        failures: list[str] = []
        for contender in contenders(env):
            n = min(jobs, contender.max_run_jobs or jobs)
            totals[contender.label] = n * runs
            _declare(metrics, contender.label, n)
            settings["contenders"][contender.label] = {**contender.settings(), "jobs": n}
            breakdown[contender.label] = Counter()
            try:
                async with contender:
                    for _ in range(runs):
                        breakdown[contender.label] += await _one_run(contender, n, metrics)
            except Exception as exc:
                if contender.label == ACTIONQ:
                    raise
                failures.append(f"{contender.label}: FAILED, left out of the ratios: {type(exc).__name__}: {exc}")
                continue
            measured.append(contender.label)
    _ratios(metrics, measured)
    details = {
        "commands_per_job": {
            label: {name: round(n / totals[label], 3) for name, n in calls.most_common()}
            for label, calls in breakdown.items()
        }
    }
    notes = failures + _notes(breakdown, totals)
    return EntryResult("throughput", settings, metrics.metrics(), notes, details)


async def _one_run(contender: Contender, jobs: int, metrics: Metrics) -> Counter[str]:
    """Enqueue, wait for the drain, record the figures; the run's Redis calls by command."""
    before = await command_calls(contender.probe)
    contender.probe_calls.clear()
    t0 = time.perf_counter()
    await contender.enqueue_noops(jobs)
    enqueued = time.perf_counter()
    backlog = await contender.unfinished()
    left = backlog
    while left:
        if time.perf_counter() - enqueued > DRAIN_TIMEOUT_S:
            raise BenchError(f"{contender.label}: {left} of {jobs} jobs unfinished after {DRAIN_TIMEOUT_S:g} s")
        await asyncio.sleep(PROBE_S)
        left = await contender.unfinished()
    done = time.perf_counter()
    calls = commands_delta(before, await command_calls(contender.probe), contender.probe_calls)
    tag = f"[{contender.label}]"
    metrics.add(f"{ENQ} {tag}", jobs / (enqueued - t0))
    metrics.add(f"{E2E} {tag}", jobs / (done - t0))
    metrics.add(f"{DRAIN} {tag}", backlog / max(done - enqueued, PROBE_S))
    metrics.add(f"backlog at end of enqueue {tag}", 100 * backlog / jobs)
    metrics.add(f"{CMDS} {tag}", sum(calls.values()) / jobs)
    metrics.add(f"{RSS} {tag}", contender.peak_rss_mib())
    return calls


def _declare(metrics: Metrics, label: str, jobs: int) -> None:
    tag = f"[{label}]"
    ours = label == ACTIONQ
    metrics.declare(f"{ENQ} {tag}", "jobs/s", f"{jobs} sequential enqueues, one client")
    metrics.declare(f"{E2E} {tag}", "jobs/s", "N / (first enqueue -> all finished)")
    metrics.declare(f"{DRAIN} {tag}", "jobs/s", "backlog left at end of enqueue / (end of enqueue -> all finished)")
    metrics.declare(f"backlog at end of enqueue {tag}", "%", "of N still unfinished when enqueueing ended")
    metrics.declare(
        f"{CMDS} {tag}", "cmds", "INFO commandstats delta / N (client + worker)", Target("<=", 10) if ours else None
    )
    metrics.declare(f"{RSS} {tag}", "MiB", "VmHWM of the worker process after the run")


def _ratios(metrics: Metrics, labels: list[str]) -> None:
    """actionq / each contender, run by run; and actionq over the fastest other contender of each run."""
    others = [label for label in labels if label != ACTIONQ]
    for figure in (E2E, DRAIN, CMDS, RSS):
        ours = metrics.values(f"{figure} [{ACTIONQ}]")
        for label in others:
            name = f"{figure} ratio [{ACTIONQ} / {label}]"
            better = "higher" if figure in (E2E, DRAIN) else "lower"
            metrics.declare(name, "ratio", f"run i / run i; {better} is better for actionq")
            for a, b in zip(ours, metrics.values(f"{figure} [{label}]"), strict=True):
                metrics.add(name, a / b if b else float("nan"))
    for figure in (E2E, DRAIN):
        name = f"{figure} ratio [{ACTIONQ} / fastest other]"
        metrics.declare(name, "ratio", "per run, over the fastest other contender of that run", Target(">=", 1.25))
        ours = metrics.values(f"{figure} [{ACTIONQ}]")
        for i, value in enumerate(ours):
            metrics.add(name, value / max(metrics.values(f"{figure} [{label}]")[i] for label in others))


def _notes(breakdown: dict[str, Counter[str]], totals: dict[str, int]) -> list[str]:
    notes = [
        f"commands/job [{label}]: {top_commands(calls, totals[label], n=10)}" for label, calls in breakdown.items()
    ]
    notes += missing_peers()
    notes.append(
        "one worker process per contender, each alone on the private Redis in its own phase; the bench "
        "client, the worker and redis-server share the machine's CPUs; load average at the end: "
        + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    )
    return notes
