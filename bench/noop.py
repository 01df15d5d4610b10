"""``noop``: drain N ``PluginB.calculate_square`` jobs through one worker (a check of the harness).

Not the throughput benchmark of §8 (that one runs raw arq beside actionq): a quick figure of how
fast one worker with default settings drains jobs that do nothing, timed from the job records.
"""

from __future__ import annotations

import asyncio
import time

from bench.harness import BenchEnv, plugin_entry
from bench.options import RunOptions
from bench.report import EntryResult
from bench.stats import Metrics
from service.client.client import JobClient
from service.models import JobRecord, JobState

__all__ = ["run"]


async def run(options: RunOptions) -> EntryResult:
    """Submit ``jobs`` jobs, wait for all, repeat; report submit rate, drain rate and wall time."""
    jobs = options.pick(full=2000, quick=300)
    runs = options.run_count(full=3, quick=3)
    worker = {"concurrency": 10, "poll_delay_s": 0.5}
    settings = {"jobs": jobs, "runs": runs, "worker": worker}
    metrics = Metrics()
    metrics.declare("submit rate", "jobs/s", "sequential submits from one client")
    metrics.declare("drain rate", "jobs/s", "jobs / (last finished_at - first enqueued_at), from the records")
    metrics.declare("wall time", "s", "first submit -> every job seen terminal by the client")
    async with BenchEnv() as env:
        await env.start_worker({"plugins": [plugin_entry("PluginB")], **worker})
        for _ in range(runs):
            await _one_run(env.client, jobs, metrics)
    return EntryResult("noop", settings, metrics.metrics())


async def _one_run(client: JobClient, jobs: int, metrics: Metrics) -> None:
    t0 = time.perf_counter()
    handles = [await client.submit("PluginB", "calculate_square", {"x": i}) for i in range(jobs)]
    submitted = time.perf_counter()
    records: list[JobRecord] = await asyncio.gather(*(handle.wait(timeout=120) for handle in handles))
    wall = time.perf_counter() - t0
    failed = [r.job_id for r in records if r.state is not JobState.SUCCEEDED]
    if failed:
        raise RuntimeError(f"{len(failed)} noop jobs did not succeed, e.g. {failed[0]}")
    first = min(r.enqueued_at_ms for r in records)
    last = max(r.finished_at_ms or 0 for r in records)
    metrics.add("submit rate", jobs / (submitted - t0))
    metrics.add("drain rate", jobs / max((last - first) / 1000, 1e-3))
    metrics.add("wall time", wall)
