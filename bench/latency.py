"""``latency``: enqueue -> start and enqueue -> result at a steady low rate; idle worker commands/s.

Each contender (:mod:`bench.contenders`) in its own phase on the same private Redis, one worker
process each. Per run, ``jobs`` ``stamp`` jobs are enqueued at ``RATE`` jobs/s (job i at
``t0 + i / RATE``), one awaiting task per job: ``t_enq = time.time()`` just before the enqueue
call; the job returns ``time.time()`` when it started; ``t_res = time.time()`` when the client
has the result (actionq: ``handle.result()``, pushed; arq and taskiq: the client polls every
``RESULT_POLL_S``; SAQ: ``Queue.apply``). Per run the p50/p95/p99; reported: the median over runs.

**Idle commands/s**: after the runs, the worker alone with nothing to do (the bench connections
issue nothing but ``INFO``, which is not counted): the ``INFO commandstats`` delta over
``idle_s`` seconds, after a 1 s settle.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from typing import Any

from bench.contenders import RESULT_POLL_S, Contender, contenders, missing_peers
from bench.harness import BenchEnv
from bench.options import RunOptions
from bench.redisstats import command_calls, commands_delta, top_commands
from bench.report import EntryResult
from bench.stats import Metrics, Target, percentiles

__all__ = ["run"]

ACTIONQ = "actionq"
RATE = 50.0
SETTLE_S = 1.0
START = "enqueue->start"
RESULT = "enqueue->result"
IDLE = "idle worker commands/s"


async def run(options: RunOptions) -> EntryResult:
    """Every contender in turn: ``runs`` latency runs, then one idle measurement."""
    jobs = options.pick(full=150, quick=60)
    runs = options.run_count(full=3, quick=3)
    idle_s = options.pick(full=5, quick=2)
    metrics = Metrics()
    idle: dict[str, Counter[str]] = {}
    settings: dict[str, Any] = {
        "jobs_per_run": jobs,
        "rate_jobs_per_s": RATE,
        "runs": runs,
        "idle_window_s": idle_s,
        "result_poll_s": RESULT_POLL_S,
        "contenders": {},
    }
    async with BenchEnv() as env:
        measured: list[str] = []
        failures: list[str] = []
        for contender in contenders(env):
            _declare(metrics, contender.label, jobs, idle_s)
            settings["contenders"][contender.label] = contender.settings()
            try:
                idle[contender.label] = await _phase(contender, jobs, runs, idle_s, metrics)
            except Exception as exc:
                if contender.label == ACTIONQ:
                    raise
                failures.append(f"{contender.label}: FAILED, left out of the ratios: {type(exc).__name__}: {exc}")
                continue
            measured.append(contender.label)
    _ratios(metrics, measured)
    details = {"idle_commands_per_s": {k: {n: c / idle_s for n, c in v.most_common()} for k, v in idle.items()}}
    return EntryResult("latency", settings, metrics.metrics(), failures + _notes(idle, idle_s), details)


async def _phase(contender: Contender, jobs: int, runs: int, idle_s: float, metrics: Metrics) -> Counter[str]:
    """One contender: its worker up, ``runs`` latency runs, then the idle window; the idle calls."""
    async with contender:
        for _ in range(runs):
            await _latency_run(contender, jobs, metrics)
        idle = await _idle(contender, idle_s)
    metrics.add(f"{IDLE} [{contender.label}]", sum(idle.values()) / idle_s)
    return idle


async def _one(contender: Contender, at: float) -> tuple[float, float]:
    """Wait until ``at`` (perf_counter), run one stamp job: (enqueue->start, enqueue->result) in ms."""
    await asyncio.sleep(max(0.0, at - time.perf_counter()))
    t_enq = time.time()
    started = await contender.stamp_job()
    t_res = time.time()
    return (started - t_enq) * 1000, (t_res - t_enq) * 1000


async def _latency_run(contender: Contender, jobs: int, metrics: Metrics) -> None:
    t0 = time.perf_counter() + 0.05
    samples = await asyncio.gather(*(_one(contender, t0 + i / RATE) for i in range(jobs)))
    tag = f"[{contender.label}]"
    for figure, values in ((START, [s for s, _ in samples]), (RESULT, [r for _, r in samples])):
        for q, value in percentiles(values).items():
            metrics.add(f"{figure} {q} {tag}", value)


async def _idle(contender: Contender, idle_s: float) -> Counter[str]:
    """The worker's Redis calls over ``idle_s`` seconds with nothing to do."""
    await asyncio.sleep(SETTLE_S)
    before = await command_calls(contender.probe)
    await asyncio.sleep(idle_s)
    return commands_delta(before, await command_calls(contender.probe), Counter())


def _declare(metrics: Metrics, label: str, jobs: int, idle_s: float) -> None:
    tag = f"[{label}]"
    per_run = f"median over runs of the per-run percentile of {jobs} jobs at {RATE:g}/s"
    for figure in (START, RESULT):
        for q in ("p50", "p95", "p99"):
            target = None
            if label == ACTIONQ and figure == START:
                target = {"p50": Target("<", 1.5), "p99": Target("<", 5.0)}.get(q)
            metrics.declare(f"{figure} {q} {tag}", "ms", per_run, target)
    target = Target("<", 20) if label == ACTIONQ else None
    metrics.declare(f"{IDLE} {tag}", "cmds/s", f"INFO commandstats delta over {idle_s:g} s, one run", target)


def _ratios(metrics: Metrics, labels: list[str]) -> None:
    """actionq / each contender for p50 and p99 of both latencies (run i with run i) and idle commands/s."""
    for label in (x for x in labels if x != ACTIONQ):
        names = [f"{figure} {q}" for figure in (START, RESULT) for q in ("p50", "p99")] + [IDLE]
        for figure in names:
            name = f"{figure} ratio [{ACTIONQ} / {label}]"
            metrics.declare(name, "ratio", "run i / run i; lower is better for actionq")
            ours, theirs = metrics.values(f"{figure} [{ACTIONQ}]"), metrics.values(f"{figure} [{label}]")
            for a, b in zip(ours, theirs, strict=True):
                metrics.add(name, a / b if b else float("nan"))


def _notes(idle: dict[str, Counter[str]], idle_s: float) -> list[str]:
    notes = [f"idle commands/s [{label}]: {top_commands(calls, idle_s)}" for label, calls in idle.items()]
    notes += missing_peers()
    notes.append(
        "t_enq, the job's start stamp and t_res are time.time() on one machine (one clock); the client, "
        "the worker and redis-server share the CPUs; load average at the end: "
        + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    )
    return notes
