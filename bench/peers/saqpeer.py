"""SAQ with its Redis queue: concurrency 100, its defaults otherwise (but the sweep interval).

The bench's client keeps one standing listener on SAQ's pub/sub (see
``Saq.start``). Producer: SAQ has no batch enqueue (its own ``Queue.map`` gathers ``enqueue`` calls): ``enqueue``
with 100 in flight, which SAQ bounds itself (``max_concurrent_ops``). Results: ``Job.refresh(
until_complete=...)``, which waits on SAQ's pub/sub. Cancel: ``Queue.abort()``, seen at the
worker's abort check (every second, SAQ's default).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from bench import jobs
from bench.jobs import Workload
from bench.peers.base import JOB_TIMEOUT_S, PeerProcess, gather_window, library

if TYPE_CHECKING:
    from bench.harness import BenchEnv

__all__ = ["Producer", "Saq", "open_producer", "serve"]

# SAQ's sweep aborts ("swept") a job it finds in the active list still marked queued: the window
# between the worker's BLMOVE and its SET of the job as active (tobymao/saq#124, #277). The first
# sweep runs as the worker starts (Saq.start waits for it); the next ones every SWEEP_S, not
# SAQ's 60 s, so that none lands inside a bench phase.
SWEEP_S = 600
# How long one Job.refresh waits for the job's message before reading the job again.
REFRESH_S = 1.0


def _never(job_key: str, status: Any) -> bool:
    """A listener callback that never stops listening."""
    return False


async def incr(ctx: Any) -> None:
    """:func:`bench.jobs.incr`."""
    await jobs.incr()


async def noop(ctx: Any) -> None:
    """:func:`bench.jobs.noop`."""


async def stamp(ctx: Any) -> float:
    """:func:`bench.jobs.stamp`."""
    return await jobs.stamp()


async def hold(ctx: Any, marker: str) -> str:
    """:func:`bench.jobs.hold` (``key`` would be taken by SAQ as the job's own key)."""
    return await jobs.hold(marker)


def _queue(workload: Workload) -> Any:
    return library("saq").Queue.from_url(workload.url, name=workload.queue)


def serve(workload: Workload) -> None:
    """Run SAQ's worker until the process is killed."""
    timers = {"sweep": SWEEP_S}  # SAQ fills in the other timers
    functions = [("incr", incr), ("noop", noop), ("stamp", stamp), ("hold", hold)]
    worker = library("saq").Worker(
        _queue(workload), functions=functions, concurrency=workload.concurrency, timers=timers
    )
    asyncio.run(worker.start())


class Producer:
    """``Queue.enqueue`` with 100 in flight."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    async def enqueue(self, n: int, body: str) -> None:
        """Enqueue ``n`` ``body`` jobs."""
        await gather_window(lambda: self.queue.enqueue(body), n)

    async def close(self) -> None:
        """Disconnect."""
        await self.queue.disconnect()


async def open_producer(workload: Workload) -> Producer:
    """SAQ's queue, connected."""
    queue = _queue(workload)
    await queue.connect()
    return Producer(queue)


class Saq(PeerProcess):
    """SAQ's worker and the bench's ``Queue``."""

    label = "saq"
    cancel_spread_s = 1.0  # SAQ's abort check: timers["abort"], 1 s by default
    headline = "SAQ (concurrency 100)"
    producer_kind = "saq"

    def __init__(self, env: BenchEnv) -> None:
        super().__init__(env)
        self.client = _queue(self.workload)
        self.listener: asyncio.Task[None] | None = None

    def settings(self) -> dict[str, Any]:
        return {
            "worker": {"processes": 1, "concurrency": self.workload.concurrency, "timers.sweep_s": SWEEP_S},
            "worker other": "SAQ defaults (job timeout 10 s, abort check every 1 s, ttl 600 s)",
            "producer": "Queue.enqueue, 100 in flight (SAQ has no batch enqueue; Queue.map gathers too)",
            "results": "Job.refresh(until_complete=1 s), again until complete (SAQ's pub/sub), one standing "
            "listener so SAQ keeps its subscription",
            "cancel": "Queue.abort(job) (seen at the worker's abort check)",
        }

    async def start(self) -> None:
        """Start the worker and wait for its first sweep, which would abort a job dequeued meanwhile."""
        await self.client.connect()
        # A standing listener, as a busy client has: SAQ drops its pattern subscription whenever no one
        # listens, and the next wait's re-subscription can land after the job's completion (missed).
        self.listener = asyncio.create_task(self.client.listen([f"{self.queue}:keepalive"], _never, timeout=None))
        await super().start()
        sweep_lock = self.client.namespace("sweep")  # SETEX'd in the same script as the sweep's LRANGE
        await self.wait_for(lambda: self._exists(sweep_lock), "no first sweep")

    async def _exists(self, key: str) -> bool:
        return bool(await self.probe.exists(key))

    async def stop(self) -> None:
        try:
            await super().stop()
        finally:
            if self.listener is not None:
                self.listener.cancel()
                await asyncio.gather(self.listener, return_exceptions=True)
            await self.client.disconnect()

    async def stamp(self) -> float:
        job = await self.client.enqueue("stamp")
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while True:
            try:
                await job.refresh(until_complete=REFRESH_S)
                return float(job.result)
            except TimeoutError:
                # SAQ reads the job, then waits for its message: a completion in between is missed,
                # and only the next refresh sees it. Counted in the latency, as a user would see it.
                if time.monotonic() > deadline:
                    raise

    async def submit_hold(self, key: str) -> Any:
        return await self.client.enqueue("hold", marker=key)

    async def cancel(self, handle: Any) -> None:
        await self.client.abort(handle, "bench")
