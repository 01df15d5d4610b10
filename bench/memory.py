"""``memory``: a worker running 5,000 concurrent sleeping jobs, its RSS, and whether it stays flat.

One worker with ``concurrency`` 5,100 gets waves of 5,000 jobs that each sleep a few seconds;
waves follow each other for the soak time (quick: ~20 s; full: 10 minutes). The worker's RSS is
sampled every second from /proc: the report gives the peak (VmHWM), the RSS after each wave (the
curve, in the JSON) and the growth from the first wave to the last (a leak shows as growth).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from bench.harness import BenchEnv, plugin_entry
from bench.options import RunOptions
from bench.report import EntryResult
from bench.stats import Metrics, Target
from service.client.client import JobClient
from service.client.handle import JobHandle

__all__ = ["run"]

CONCURRENT = 5000
SLEEP_S = 3.0


def _rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run(options: RunOptions) -> EntryResult:
    """Waves of 5,000 sleeping jobs for the soak time; RSS sampled throughout."""
    soak_s = options.pick(full=600, quick=20)
    worker_cfg = {"concurrency": CONCURRENT + 100, "poll_delay_s": 0.2, "heartbeat_s": 1, "log_level": "WARNING"}
    settings = {"concurrent_jobs": CONCURRENT, "sleep_s": SLEEP_S, "soak_s": soak_s, "worker": worker_cfg}
    metrics = Metrics()
    metrics.declare("peak RSS", "MiB", "VmHWM of the worker over the whole soak", Target("<=", 150))
    metrics.declare("most jobs running at once", "jobs", "as the worker reports it in the registry")
    metrics.declare("RSS growth, first wave -> last", "MiB", "RSS after the last wave - after the first")
    curve: list[tuple[float, float]] = []
    async with BenchEnv() as env:
        worker = await env.start_worker({"plugins": [plugin_entry("benchnoop")], **worker_cfg})
        sampler = asyncio.create_task(_sample(worker.pid, curve))
        after_wave, most = await _waves(env.client, soak_s)
        sampler.cancel()
        metrics.add("peak RSS", _rss_mib(worker.pid, "VmHWM"))
    metrics.add("most jobs running at once", most)
    metrics.add("RSS growth, first wave -> last", after_wave[-1] - after_wave[0] if len(after_wave) > 1 else 0.0)
    details = {"rss_curve_mib": [[round(t, 1), round(m, 1)] for t, m in curve], "rss_after_each_wave_mib": after_wave}
    notes = [f"{len(after_wave)} waves of {CONCURRENT} jobs sleeping {SLEEP_S:g}s"]
    return EntryResult("memory", settings, metrics.metrics(), notes=notes, details=details)


async def _sample(pid: int, curve: list[tuple[float, float]]) -> None:
    start = time.monotonic()
    while True:
        curve.append((time.monotonic() - start, _rss_mib(pid)))
        await asyncio.sleep(1.0)


async def _waves(client: JobClient, soak_s: float) -> tuple[list[float], int]:
    deadline, most = time.monotonic() + soak_s, 0
    after_wave: list[float] = []
    worker_pid = (await client.workers())[0].pid
    while time.monotonic() < deadline or not after_wave:
        handles = await asyncio.gather(
            *(client.submit("benchnoop", "sleep", {"seconds": SLEEP_S}, validate=False) for _ in range(CONCURRENT))
        )
        most = max(most, await _until_done(client, handles))
        after_wave.append(round(_rss_mib(worker_pid), 1))
    return after_wave, most


async def _until_done(client: JobClient, handles: list[JobHandle]) -> int:
    """Wait for every job of the wave; meanwhile, the most the worker reported running at once."""
    waiting = asyncio.gather(*(h.wait(timeout=SLEEP_S * 20 + 60) for h in handles))
    most = 0
    while not waiting.done():
        most = max(most, sum(w.running_jobs for w in await client.workers()))
        await asyncio.wait([waiting], timeout=0.5)
    await waiting
    return most
