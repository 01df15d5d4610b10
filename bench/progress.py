"""``progress``: publish -> subscriber latency, and the slowdown of a tight reporting loop (DESIGN §8).

Two worker settings, one after the other on the same private Redis: the default coalescing
(``progress_interval_s`` 0.05) and none (``ACTIONQ_PROGRESS_INTERVAL_S=0``).

* **Latency**: ``benchprog.report_timed`` reports ``n`` updates ``interval_s`` apart (longer than
  the coalescing interval, so none is merged away), each stamped with ``time.time()`` at the
  ``ctx.progress`` call; the subscriber (``handle.progress()``) takes ``time.time()`` on receipt.
  Per run the p50/p95/p99 of the samples; reported: the median over runs of each percentile.
* **Slowdown**: ``benchprog.spin`` (a plain ``def``, so it runs in a thread) and ``spin_async``
  (on the event loop, yielding every iteration) do a fixed ~30 µs of arithmetic per iteration and,
  when reporting, call ``ctx.progress(i, iterations)`` every iteration. Their duration is timed
  inside the action. Reporting and silent runs are interleaved (the order alternates per pair);
  the slowdown is the median over pairs of reporting / silent. The subscriber counts how many
  updates it received, and checks the last one is the last reported (``current_step == iterations``).
"""

from __future__ import annotations

import asyncio
import time
import timeit
from dataclasses import dataclass, field
from typing import Any

from bench.harness import BenchEnv, plugin_entry
from bench.options import RunOptions
from bench.plugins.benchprog.plugin import burn
from bench.report import EntryResult
from bench.stats import Metrics, Target, percentiles
from service.client.client import JobClient
from service.client.handle import JobHandle
from service.models import JobRecord, JobState
from service.plugins.progress import make_update

__all__ = ["run"]

PLUGIN = "benchprog"
# Generous: a job here takes at most a few seconds; only a hung job reaches it.
JOB_TIMEOUT_S = 120.0
MODES = {"thread": "spin", "async": "spin_async"}


@dataclass(frozen=True)
class Phase:
    """One worker setting: its coalescing interval and how far apart the timed updates are."""

    label: str
    interval_s: float | None  # None: the service default
    spacing_s: float  # between two timed updates: above the interval, so none is coalesced away
    samples: tuple[int, int]  # timed updates per run: (full, quick)
    slowdown_target: bool  # the §8 target applies to the default setting

    @property
    def env(self) -> dict[str, str]:
        """Extra worker environment."""
        return {} if self.interval_s is None else {"ACTIONQ_PROGRESS_INTERVAL_S": f"{self.interval_s:g}"}


PHASES = (
    Phase("interval 50 ms", None, spacing_s=0.06, samples=(100, 40), slowdown_target=True),
    Phase("interval 0", 0.0, spacing_s=0.005, samples=(300, 100), slowdown_target=False),
)


@dataclass(frozen=True)
class Sizes:
    """How much each measurement does, from the command-line options."""

    latency_runs: int
    spin_pairs: int
    iterations: int
    work: int
    quick: bool

    @classmethod
    def of(cls, options: RunOptions) -> Sizes:
        """Full or quick sizes; ``--runs`` sets both the latency runs and the spin pairs."""
        return cls(
            latency_runs=options.run_count(full=3, quick=3),
            spin_pairs=options.run_count(full=7, quick=3),
            iterations=options.pick(full=20_000, quick=5_000),
            work=250,
            quick=options.quick,
        )


@dataclass
class Follow:
    """What the subscriber saw of one job."""

    received: int = 0  # distinct progress updates (by current_step)
    last_step: int | None = None
    latencies_ms: list[float] = field(default_factory=list)
    final: JobState | None = None


async def run(options: RunOptions) -> EntryResult:
    """Measure both phases on one private Redis, one worker per phase."""
    sizes = Sizes.of(options)
    metrics = Metrics()
    metrics.declare("make_update cost", "µs", "validating one update, in-process (no worker, no Redis)")
    async with BenchEnv() as env:
        for _ in range(sizes.latency_runs):
            metrics.add("make_update cost", _validation_cost_us())
        for phase in PHASES:
            _declare(metrics, phase, sizes)
            worker = await env.start_worker({"plugins": [plugin_entry(PLUGIN)]}, env=phase.env)
            for _ in range(sizes.latency_runs):
                await _latency_run(env.client, phase, sizes, metrics)
            for pair in range(sizes.spin_pairs):
                for mode in MODES:
                    await _spin_pair(env.client, phase, mode, sizes, metrics, report_first=pair % 2 == 1)
            await env.stop_worker(worker)
    return EntryResult("progress", _settings(sizes), metrics.metrics(), _notes(metrics, sizes))


def _settings(sizes: Sizes) -> dict[str, Any]:
    return {
        "phases": [
            {
                "label": p.label,
                "progress_interval_s": 0.05 if p.interval_s is None else p.interval_s,
                "timed_updates_per_run": p.samples[1] if sizes.quick else p.samples[0],
                "timed_update_spacing_s": p.spacing_s,
            }
            for p in PHASES
        ],
        "latency_runs": sizes.latency_runs,
        "spin_pairs": sizes.spin_pairs,
        "spin_iterations": sizes.iterations,
        "spin_work_steps": sizes.work,
        "worker": {"processes": 1, "concurrency": 10, "log_level": "WARNING"},
        "subscriber": "JobHandle.progress() in the bench process, on the same machine",
    }


def _declare(metrics: Metrics, phase: Phase, sizes: Sizes) -> None:
    tag = f"[{phase.label}]"
    for q in ("p50", "p95", "p99"):
        target = Target("<", 5.0) if q == "p99" else None
        metrics.declare(f"publish->receive {q} {tag}", "ms", "median of per-run percentiles", target)
    metrics.declare(f"timed updates received {tag}", "%", "of those reported (100: none coalesced away)")
    for mode in MODES:
        where = "in a thread" if mode == "thread" else "on the loop, sleep(0) each iteration"
        metrics.declare(f"spin {mode} silent {tag}", "s", f"{sizes.iterations} iterations {where}, timed inside")
        metrics.declare(f"spin {mode} reporting {tag}", "s", "same, ctx.progress(i, n) every iteration")
        metrics.declare(
            f"spin {mode} slowdown {tag}",
            "ratio",
            "reporting / silent, median over interleaved pairs",
            Target("<=", 1.05) if phase.slowdown_target else None,
        )
        metrics.declare(f"spin {mode} job slowdown {tag}", "ratio", "same, from the records' started/finished ms")
        metrics.declare(
            f"spin {mode} cost per call {tag}",
            "µs",
            f"(reporting - silent) / iterations; 5% of the loop's work is {_budget_us(sizes)}",
        )
        metrics.declare(f"spin {mode} updates received {tag}", "count", f"of {sizes.iterations} reported")
        metrics.declare(
            f"spin {mode} last step received {tag}",
            "step",
            "must be the last reported",
            Target(">=", sizes.iterations),
        )


async def _follow(handle: JobHandle, *, timed: bool) -> Follow:
    """Follow ``handle`` to its end, counting distinct progress updates (and their latency if ``timed``)."""
    seen = Follow()
    async with asyncio.timeout(JOB_TIMEOUT_S):
        async for snap in handle.progress():
            received_at = time.time()
            update = snap.progress
            seen.final = snap.state
            if update is None or update.current_step == seen.last_step:
                continue  # a state change, or the same update again
            seen.received += 1
            seen.last_step = update.current_step
            stamp = update.details.get("t")
            if timed and isinstance(stamp, float):
                seen.latencies_ms.append((received_at - stamp) * 1000)
    return seen


async def _run_job(client: JobClient, action: str, params: dict[str, Any], *, timed: bool) -> tuple[Follow, JobRecord]:
    handle = await client.submit(PLUGIN, action, params)
    seen = await _follow(handle, timed=timed)
    record = await handle.record()
    if record.state is not JobState.SUCCEEDED:
        detail = record.error.message if record.error is not None else ""
        raise RuntimeError(f"{PLUGIN}.{action} ended {record.state.value}: {detail}")
    return seen, record


async def _latency_run(client: JobClient, phase: Phase, sizes: Sizes, metrics: Metrics) -> None:
    n = phase.samples[1] if sizes.quick else phase.samples[0]
    seen, _ = await _run_job(client, "report_timed", {"n": n, "interval_s": phase.spacing_s}, timed=True)
    tag = f"[{phase.label}]"
    for q, value in percentiles(seen.latencies_ms).items():
        metrics.add(f"publish->receive {q} {tag}", value)
    metrics.add(f"timed updates received {tag}", 100.0 * len(seen.latencies_ms) / n)


async def _spin_pair(
    client: JobClient, phase: Phase, mode: str, sizes: Sizes, metrics: Metrics, *, report_first: bool
) -> None:
    """One silent and one reporting run of ``mode`` back to back; their durations and ratio."""
    runs: dict[bool, tuple[Follow, JobRecord]] = {}
    for report in (report_first, not report_first):
        params = {"iterations": sizes.iterations, "report": report, "work": sizes.work}
        runs[report] = await _run_job(client, MODES[mode], params, timed=False)
    tag = f"[{phase.label}]"
    (_, silent), (seen, reporting) = runs[False], runs[True]
    metrics.add(f"spin {mode} silent {tag}", _elapsed(silent))
    metrics.add(f"spin {mode} reporting {tag}", _elapsed(reporting))
    metrics.add(f"spin {mode} slowdown {tag}", _elapsed(reporting) / _elapsed(silent))
    metrics.add(f"spin {mode} job slowdown {tag}", _job_ms(reporting) / _job_ms(silent))
    metrics.add(f"spin {mode} cost per call {tag}", (_elapsed(reporting) - _elapsed(silent)) / sizes.iterations * 1e6)
    metrics.add(f"spin {mode} updates received {tag}", seen.received)
    metrics.add(f"spin {mode} last step received {tag}", seen.last_step or 0)


def _budget_us(sizes: Sizes) -> str:
    """5% of one iteration's work, measured here the way the action does it."""
    per_iteration_s = timeit.timeit(lambda: burn(sizes.work, 0), number=2000) / 2000
    return f"{per_iteration_s * 0.05 * 1e6:.1f} µs"


def _validation_cost_us() -> float:
    """µs per ``make_update(i, n)``: what validating one report costs before any coalescing."""
    calls = 20_000
    return timeit.timeit(lambda: make_update(5, 100), number=calls) / calls * 1e6


def _elapsed(record: JobRecord) -> float:
    return float(record.result["elapsed_s"])


def _job_ms(record: JobRecord) -> float:
    assert record.started_at_ms is not None
    assert record.finished_at_ms is not None
    return float(max(record.finished_at_ms - record.started_at_ms, 1))


def _notes(metrics: Metrics, sizes: Sizes) -> list[str]:
    notes = [
        "latency = subscriber's time.time() on receipt - action's time.time() at the ctx.progress call "
        "(same machine, same clock); includes validation, coalescing, the Redis write + publish, "
        "pub/sub delivery and the subscriber's parsing",
        "worker, redis-server and the subscriber share the machine's CPUs",
    ]
    for phase in PHASES:
        for mode in MODES:
            steps = metrics.values(f"spin {mode} last step received [{phase.label}]")
            missed = [s for s in steps if s != sizes.iterations]
            if missed:
                notes.append(f"spin {mode} [{phase.label}]: the last update was NOT received in {len(missed)} run(s)")
    return notes
