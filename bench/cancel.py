"""``cancel``: cancel -> the action sees it, for actionq and for raw arq's abort, on one Redis.

* **actionq**: ``benchcancel.wait_cancel`` reports "started", awaits ``ctx.cancellation.wait()``
  and stamps ``time.time()`` the moment it returns (in its last progress, ``details.t``). The
  bench submits a batch of jobs, waits until each has reported "started", then cancels them one
  at a time: a short pause, ``t0 = time.time()``, ``await handle.cancel(...)``. Two figures per
  job: *cancel -> seen* (the stamp - ``t0``) and *cancel -> cancelled* (``handle.cancel()``
  returned, having seen the record's final state ``cancelled``, - ``t0``).
* **raw arq**: the same measurement of ``Job.abort()`` against a plain arq worker
  (:mod:`bench.rawarq`), once with arq's default ``poll_delay`` (0.5 s) and once tuned (0.01 s).

Per run the p50/p95/p99 of the samples; reported: the median over runs of each percentile, and
actionq's p50 and p99 as ratios to each arq variant's (run i with run i; below 1: actionq is faster).
The phases run one after the other, each with only its own worker alive.
"""

from __future__ import annotations

import asyncio
import os
import random
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import BenchEnv, BenchError, plugin_entry
from bench.options import RunOptions
from bench.rawarq import ArqVariant, ArqWorkerProcess, abort_samples, arq_pool
from bench.report import EntryResult
from bench.stats import Metrics, Target, percentiles
from service.client.handle import JobHandle
from service.models import CancelOutcome, JobRecord, JobState

__all__ = ["run"]

PLUGIN = "benchcancel"
ACTION = "wait_cancel"
ACTIONQ = "actionq"
SEEN = "cancel->seen"
FINAL = "cancel->cancelled"
# arq with its defaults sees an abort after half a second or so, whatever the sample: 10 per run
# measure it as well as 40 and keep the full run short.
VARIANTS = (ArqVariant("arq defaults", 0.5, max_samples=10), ArqVariant("arq tuned", 0.01))
WORKER = {"concurrency": 10, "poll_delay_s": 0.5}
# Jobs running at once while they are cancelled one by one (below the worker's concurrency).
BATCH = 8
# Before each cancel: a fixed pause, so the previous job's ending does not overlap the next
# cancel, plus a random wait (actionq: up to 10 ms; arq: one poll period, a random phase).
SETTLE_S = 0.02
ACTIONQ_SPREAD_S = 0.01
# Generous: a cancel takes milliseconds; only a lost job reaches it.
TIMEOUT_S = 30.0
_POLL_S = 0.005
QS = ("p50", "p95", "p99")


@dataclass(frozen=True)
class Sizes:
    """How much each phase does, from the command-line options."""

    runs: int
    samples: int  # per run, per phase

    @classmethod
    def of(cls, options: RunOptions) -> Sizes:
        """Full: 3 runs x 40 samples; quick: 3 x 10 (``--runs`` overrides the runs)."""
        return cls(runs=options.run_count(full=3, quick=3), samples=options.pick(full=40, quick=10))


async def run(options: RunOptions) -> EntryResult:
    """actionq first, then each arq variant, on one private Redis; then the ratios."""
    sizes = Sizes.of(options)
    metrics = Metrics()
    _declare(metrics, sizes)
    async with BenchEnv() as env:
        worker = await env.start_worker({"plugins": [plugin_entry(PLUGIN)], **WORKER})
        for _ in range(sizes.runs):
            seen, final = await _actionq_samples(env, sizes.samples)
            _add(metrics, f"{SEEN} {{q}} [{ACTIONQ}]", seen)
            _add(metrics, f"{FINAL} {{q}} [{ACTIONQ}]", final)
        await env.stop_worker(worker)
        await _arq_phases(env, sizes, metrics)
    _ratios(metrics)
    return EntryResult("cancel", _settings(sizes), metrics.metrics(), _notes())


async def _arq_phases(env: BenchEnv, sizes: Sizes, metrics: Metrics) -> None:
    """Each arq variant with its own worker process and queue, on the bench's Redis."""
    redis = await arq_pool(env.url)
    try:
        with tempfile.TemporaryDirectory(prefix="actionq-bench-arq-") as tmp:
            for variant in VARIANTS:
                queue = f"{env.namespace}:rawarq:{uuid.uuid4().hex[:6]}"
                log = Path(tmp) / f"arq-{variant.poll_delay_s:g}.log"
                async with ArqWorkerProcess(redis, env.url, queue, variant.poll_delay_s, log):
                    for _ in range(sizes.runs):
                        n = min(sizes.samples, variant.max_samples or sizes.samples)
                        samples = await abort_samples(
                            redis, queue, n, batch=BATCH, settle_s=SETTLE_S, spread_s=variant.poll_delay_s
                        )
                        _add(metrics, f"{SEEN} {{q}} [{variant.label}]", samples)
    finally:
        await redis.aclose()


def _add(metrics: Metrics, pattern: str, samples: list[float]) -> None:
    """One run's percentiles into the metrics named by ``pattern`` (``{q}``: p50, p95, p99)."""
    for q, value in percentiles(samples).items():
        metrics.add(pattern.format(q=q), value)


async def _actionq_samples(env: BenchEnv, n: int) -> tuple[list[float], list[float]]:
    """``n`` (cancel -> seen, cancel -> cancelled) latencies in ms, from batches of running jobs."""
    seen: list[float] = []
    final: list[float] = []
    while len(seen) < n:
        handles = [await env.client.submit(PLUGIN, ACTION, {}) for _ in range(min(BATCH, n - len(seen)))]
        for handle in handles:
            await _wait_started(handle, env)
        for handle in handles:
            await asyncio.sleep(SETTLE_S + random.uniform(0, ACTIONQ_SPREAD_S))
            to_seen, to_final = await _cancel_one(handle)
            seen.append(to_seen)
            final.append(to_final)
    return seen, final


async def _wait_started(handle: JobHandle, env: BenchEnv) -> None:
    """Until the action has reported "started" (it is then awaiting its token)."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        record = await handle.record()
        if record.progress is not None and record.progress.message == "started":
            return
        if record.is_terminal or time.monotonic() > deadline:
            tail = env.workers[0].log_tail() if env.workers else ""
            raise BenchError(f"job {handle.job_id} did not start (state {record.state.value}):\n{tail}")
        await asyncio.sleep(_POLL_S)


async def _cancel_one(handle: JobHandle) -> tuple[float, float]:
    """Cancel a running job; ms to the action's stamp, and to ``cancel()`` returning."""
    t0 = time.time()
    outcome = await handle.cancel("bench", timeout=TIMEOUT_S)
    returned = time.time()
    record = await handle.record()
    stamp = _stamp(record)
    if outcome is not CancelOutcome.CANCELLED_RUNNING or record.state is not JobState.CANCELLED or stamp is None:
        progress = record.progress.message if record.progress else None
        raise BenchError(
            f"job {handle.job_id}: cancel() said {outcome.value}, record {record.state.value}, progress {progress!r}"
        )
    return (stamp - t0) * 1000, (returned - t0) * 1000


def _stamp(record: JobRecord) -> float | None:
    """The action's ``time.time()`` when its ``wait()`` returned (its last progress), if there."""
    if record.progress is None or record.progress.message != "saw cancel":
        return None
    stamp = record.progress.details.get("t")
    return stamp if isinstance(stamp, float) else None


def _declare(metrics: Metrics, sizes: Sizes) -> None:
    """Every figure, in report order: percentiles per phase, actionq's cancel -> cancelled, the ratios."""
    per_run = f"median over runs of the per-run percentile of {sizes.samples} samples"
    for label in (ACTIONQ, *(v.label for v in VARIANTS)):
        for q in QS:
            target = Target("<", 5.0) if (label, q) == (ACTIONQ, "p99") else None
            metrics.declare(f"{SEEN} {q} [{label}]", "ms", per_run, target)
    for q in QS:
        metrics.declare(f"{FINAL} {q} [{ACTIONQ}]", "ms", f"handle.cancel() returned (state cancelled); {per_run}")
    for variant in VARIANTS:
        for q in ("p50", "p99"):
            notes = f"actionq / {variant.label} (poll_delay {variant.poll_delay_s:g} s), run i with run i"
            metrics.declare(f"{SEEN} {q} ratio [{ACTIONQ} / {variant.label}]", "ratio", notes)


def _ratios(metrics: Metrics) -> None:
    """actionq's per-run p50 and p99 over each arq variant's, run by run."""
    for variant in VARIANTS:
        for q in ("p50", "p99"):
            ours = metrics.values(f"{SEEN} {q} [{ACTIONQ}]")
            theirs = metrics.values(f"{SEEN} {q} [{variant.label}]")
            for a, b in zip(ours, theirs, strict=True):
                metrics.add(f"{SEEN} {q} ratio [{ACTIONQ} / {variant.label}]", a / b)


def _settings(sizes: Sizes) -> dict[str, Any]:
    """What the report records of how the figures were taken."""
    return {
        "runs": sizes.runs,
        "samples_per_run": sizes.samples,
        "batch": BATCH,
        "pause_before_cancel_s": {
            ACTIONQ: f"{SETTLE_S:g} + uniform(0, {ACTIONQ_SPREAD_S:g})",
            **{v.label: f"{SETTLE_S:g} + uniform(0, {v.poll_delay_s:g})" for v in VARIANTS},
        },
        "actionq_worker": {"processes": 1, **WORKER, "log_level": "WARNING"},
        "arq_workers": [
            {"label": v.label, "poll_delay_s": v.poll_delay_s, "allow_abort_jobs": True, "serializer": "json"}
            for v in VARIANTS
        ],
        "canceller": "the bench process, on the same machine (same clock as the workers)",
    }


def _notes() -> list[str]:
    """How to read the figures."""
    return [
        "cancel->seen: t0 = time.time() just before handle.cancel() / Job.abort() is called; the end is the "
        "action's time.time() when ctx.cancellation.wait() returned (actionq) or when CancelledError reached "
        "the job function (arq)",
        "actionq's cancel() reads the record, then runs the cancel script (durable flag + PUBLISH); "
        "arq's abort() reads the job, then ZADDs arq:abort, seen at the worker's next poll iteration",
        "arq: the pause before each abort is uniform over one poll period, so aborts land at a random "
        "phase of the poll loop; Job.abort polls for the result every 10 ms (not timed)",
        f"{BATCH} jobs run at once while they are cancelled one at a time",
        "workers, redis-server and the bench share the machine's CPUs; load average (1, 5, 15 min) at the end: "
        + ", ".join(f"{x:.2f}" for x in os.getloadavg()),
    ]
