"""``recovery``: a SIGKILLed worker's job starts again on the other worker; how long after the kill.

The target (issue 6): a SIGKILLed worker's job starts again on another worker within 5 s, with the
default lease. Two actionq workers run with the service's defaults (``lease_s``, ``poll_delay_s``
and the rest are not overridden). Per run:

1. submit one ``benchnoop.hold`` job (it waits until cancelled) and poll its record every
   ``POLL_S`` until it says ``running``, attempt 1;
2. pause a random ``uniform(0, lease_s)``, so the kill falls anywhere in the lease's renewal cycle
   (a kill right after the start would always meet a fresh lease: the worst case);
3. ``os.kill(pid, SIGKILL)`` the worker whose id (``<host>-<pid>-<hex>``) is in the record's
   ``worker``; ``t_kill = time.time()`` just before the signal;
4. poll the record every ``POLL_S`` until it says ``running``, attempt 2, on the other worker;
5. cancel the job (``hold`` returns at once), reap the dead worker and start a new spare.

**re-run delay** = the record's ``started_at_ms`` of attempt 2 - ``t_kill`` (both epoch ms, one
machine clock). The dead worker renewed its lease every ``lease_s / 3``, so the lease lapses
``2/3 lease_s .. lease_s`` after the kill; the spare takes the job when its queue score falls due
(it wakes for the earliest due score, else after ``poll_delay_s``). Also reported: kill -> the
client's poll sees attempt 2 (the re-run delay plus the record write and up to one poll).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Callable
from typing import Any

from bench.harness import BenchEnv, BenchError, Worker, plugin_entry
from bench.options import RunOptions
from bench.report import EntryResult
from bench.stats import Metrics, Target, percentile
from service.client.handle import JobHandle
from service.models import JobRecord, JobState
from service.settings import Settings

__all__ = ["run"]

PLUGIN = "benchnoop"
ACTION = "hold"
RERUN = "re-run delay"
SEEN = "kill -> client sees the re-run"
# The job would hold far longer than any recovery takes; each run cancels it once it has re-run.
HOLD_S = 300.0
POLL_S = 0.005
# Generous: a start takes milliseconds and a re-run a few seconds; only a lost job reaches these.
START_TIMEOUT_S = 30.0
RERUN_TIMEOUT_S = 30.0
# Nothing but the plugin: the lease, the poll delay and the rest are the service's defaults.
WORKER: dict[str, Any] = {"plugins": [plugin_entry(PLUGIN)]}
LEASE_S = float(Settings.model_fields["lease_s"].default)
POLL_DELAY_S = float(Settings.model_fields["poll_delay_s"].default)


async def run(options: RunOptions) -> EntryResult:
    """``runs`` kills, each with a live spare: two workers up, one killed under the job, replaced."""
    runs = options.run_count(full=6, quick=3)
    metrics = Metrics()
    rerun = "the record's started_at_ms of attempt 2 (other worker) - time.time() at the SIGKILL"
    metrics.declare(RERUN, "ms", rerun, Target("<=", 5000))
    metrics.declare(SEEN, "ms", f"the client's {POLL_S * 1000:g} ms poll of the record sees attempt 2 running")
    async with BenchEnv() as env:
        workers = list(await asyncio.gather(env.start_worker(WORKER), env.start_worker(WORKER)))
        for i in range(runs):
            victim = await _one_run(env, workers, metrics)
            workers.remove(victim)
            await env.stop_worker(victim)  # dead already: this reaps it
            if i < runs - 1:
                workers.append(await env.start_worker(WORKER))
    return EntryResult("recovery", _settings(runs), metrics.metrics(), _notes(metrics.values(RERUN)))


async def _one_run(env: BenchEnv, workers: list[Worker], metrics: Metrics) -> Worker:
    """Start the job, kill its worker, wait for the re-run elsewhere, record it; the killed worker."""
    handle = await env.client.submit(PLUGIN, ACTION, {"seconds": HOLD_S})
    first = await _poll(handle, lambda r: r.attempt == 1, START_TIMEOUT_S, "start")
    victim = _worker_of(first, workers)
    await asyncio.sleep(random.uniform(0, LEASE_S))
    killed_ms = time.time() * 1000
    os.kill(victim.pid, signal.SIGKILL)
    second = await _poll(handle, lambda r: r.attempt >= 2, RERUN_TIMEOUT_S, "re-run")
    seen_ms = time.time() * 1000
    spare = _worker_of(second, workers)
    if second.attempt != 2 or spare is victim or second.started_at_ms is None:
        raise BenchError(f"job {handle.job_id}: expected attempt 2 on the spare, got {second!r}")
    metrics.add(RERUN, second.started_at_ms - killed_ms)
    metrics.add(SEEN, seen_ms - killed_ms)
    await handle.cancel("recovery bench: re-run measured")
    return victim


async def _poll(handle: JobHandle, done: Callable[[JobRecord], bool], timeout_s: float, what: str) -> JobRecord:
    """The job's record, read every ``POLL_S``, once it is running and ``done``; an ended job is an error."""
    deadline = time.monotonic() + timeout_s
    while True:
        record = await handle.record()
        if record.state is JobState.RUNNING and done(record):
            return record
        if record.is_terminal:
            raise BenchError(f"job {handle.job_id} ended ({record.state}) while waiting for its {what}")
        if time.monotonic() > deadline:
            raise BenchError(f"job {handle.job_id}: no {what} within {timeout_s:g} s (state {record.state})")
        await asyncio.sleep(POLL_S)


def _worker_of(record: JobRecord, workers: list[Worker]) -> Worker:
    """The worker process whose id (``<host>-<pid>-<hex>``) the record names."""
    for worker in workers:
        if record.worker is not None and f"-{worker.pid}-" in record.worker:
            return worker
    raise BenchError(f"job {record.job_id} runs on {record.worker!r}, not one of pids {[w.pid for w in workers]}")


def _settings(runs: int) -> dict[str, Any]:
    return {
        "runs": runs,
        "workers": "2 (the job's worker and a spare; a new spare after each kill)",
        "lease_s": LEASE_S,
        "poll_delay_s": POLL_DELAY_S,
        "worker settings": "service defaults (only the benchnoop plugin is configured)",
        "job": f"{PLUGIN}.{ACTION}(seconds={HOLD_S:g}), cancelled once it has re-run",
        "pause before the kill": f"uniform(0, lease_s={LEASE_S:g}) s after the record says running",
        "record_poll_s": POLL_S,
    }


def _notes(delays: list[float]) -> list[str]:
    if not delays:
        return []
    return [
        f"re-run delay over {len(delays)} runs: p95 {percentile(delays, 95):.0f} ms, max {max(delays):.0f} ms "
        f"(the lease lapses {LEASE_S * 2 / 3:g}..{LEASE_S:g} s after the kill)",
        "t_kill and started_at_ms are epoch ms from one machine clock; the bench client, both workers and "
        "redis-server share the CPUs; load average at the end: " + ", ".join(f"{x:.2f}" for x in os.getloadavg()),
    ]
