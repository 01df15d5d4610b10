"""streaq (Redis streams, on coredis and anyio): concurrency 100, its defaults otherwise.

Worker: ``Worker.run_sync()`` (what ``streaq run`` runs). The drain's tasks keep no result
(``ttl=0``, streaq's documented per-task option). Producer: ``Worker.enqueue_many`` (one pipeline
per call), 1,000 tasks a call. Results: ``Task.result()`` (streaq's pub/sub). Cancel:
``Task.abort()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench import jobs
from bench.jobs import Workload
from bench.peers.base import JOB_TIMEOUT_S, PeerProcess, library

if TYPE_CHECKING:
    from bench.harness import BenchEnv

__all__ = ["Producer", "Streaq", "open_producer", "serve"]

CHUNK = 1_000


@dataclass
class _App:
    worker: Any
    tasks: dict[str, Any]


def _app(workload: Workload) -> _App:
    worker = library("streaq").Worker(
        redis_url=workload.url, queue_name=workload.queue, concurrency=workload.concurrency
    )
    tasks = {
        "incr": worker.task(name="incr", ttl=0)(jobs.incr),
        "noop": worker.task(name="noop", ttl=0)(jobs.noop),
        "stamp": worker.task(name="stamp")(jobs.stamp),
        "hold": worker.task(name="hold")(jobs.hold),
    }
    return _App(worker, tasks)


def serve(workload: Workload) -> None:
    """Run the worker (it handles SIGTERM itself)."""
    _app(workload).worker.run_sync()


class Producer:
    """``enqueue_many``, 1,000 tasks a call."""

    def __init__(self, app: _App) -> None:
        self.app = app

    async def enqueue(self, n: int, body: str) -> None:
        """Enqueue ``n`` ``body`` tasks."""
        task = self.app.tasks[body]
        for start in range(0, n, CHUNK):
            await self.app.worker.enqueue_many([task.enqueue() for _ in range(min(CHUNK, n - start))])

    async def close(self) -> None:
        """Leave the worker's client context."""
        await self.app.worker.__aexit__(None, None, None)


async def open_producer(workload: Workload) -> Producer:
    """streaq's client is its ``Worker`` object, entered."""
    app = _app(workload)
    await app.worker.__aenter__()
    return Producer(app)


class Streaq(PeerProcess):
    """streaq's worker and the bench's client ``Worker``."""

    label = "streaq"
    cancel_spread_s = 0.5  # streaq's worker reads its abort set every 0.5 s
    headline = "streaq (concurrency 100)"
    producer_kind = "streaq"

    def __init__(self, env: BenchEnv) -> None:
        super().__init__(env)
        self.app = _app(self.workload)
        self.entered = False

    def settings(self) -> dict[str, Any]:
        return {
            "worker": {"processes": 1, "concurrency": self.workload.concurrency, "other": "streaq defaults"},
            "drain jobs": "ttl=0 (no result kept)",
            "producer": f"Worker.enqueue_many, {CHUNK} tasks a call",
            "results": "Task.result() (streaq's pub/sub)",
            "cancel": "Task.abort()",
        }

    async def start(self) -> None:
        await self.app.worker.__aenter__()
        self.entered = True
        await super().start()

    async def stop(self) -> None:
        try:
            await super().stop()
        finally:
            if self.entered:
                self.entered = False
                await self.app.worker.__aexit__(None, None, None)

    async def stamp(self) -> float:
        task = await self.app.tasks["stamp"].enqueue()
        result = await task.result(timeout=int(JOB_TIMEOUT_S))
        return float(result.result)

    async def submit_hold(self, key: str) -> Any:
        return await self.app.tasks["hold"].enqueue(key)

    async def cancel(self, handle: Any) -> None:
        await handle.abort(timeout=int(JOB_TIMEOUT_S))
