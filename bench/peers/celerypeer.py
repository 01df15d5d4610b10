"""Celery with Redis as broker and result backend: one worker process, the threads pool, concurrency 100.

One process rules out Celery's default prefork pool (a child process per slot); its threads pool is
the documented single-process pool for I/O-bound tasks. Its tasks are plain functions: the
``*_sync`` bodies. The drain's tasks are ``ignore_result=True`` (Celery's documented setting for
results nobody reads), ``stamp`` stores its result. Producer: ``apply_async(producer=...)`` in a
loop on one producer connection (``group(...).apply_async()`` was slower here: 495 against 852
jobs/s on 500 jobs, and 14 commands a job against 11, a group result subscribing to every
task's channel). Results: ``AsyncResult.get()``, which waits on the
Redis backend's pub/sub. No cancel of a running task with the threads pool (``revoke(terminate=
True)`` needs a pool with child processes).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench import jobs
from bench.jobs import Workload
from bench.peers.base import JOB_TIMEOUT_S, PeerProcess, library

if TYPE_CHECKING:
    from bench.harness import BenchEnv

__all__ = ["Celery", "Producer", "open_producer", "serve"]


@dataclass
class _App:
    celery: Any
    tasks: dict[str, Any]


def _app(workload: Workload) -> _App:
    app = library("celery").Celery(
        f"bench-{workload.queue}", broker=workload.url, backend=workload.url, set_as_current=False
    )
    app.conf.update(task_default_queue=workload.queue, broker_connection_retry_on_startup=True, result_expires=3600)
    bodies = {"incr": (jobs.incr_sync, True), "noop": (jobs.noop_sync, True), "stamp": (jobs.stamp_sync, False)}
    tasks = {name: app.task(name=name, ignore_result=ignore)(fn) for name, (fn, ignore) in bodies.items()}
    return _App(app, tasks)


def serve(workload: Workload) -> None:
    """``celery worker --pool threads --concurrency N`` on the contender's queue, until SIGTERM."""
    app = _app(workload)
    argv = ["worker", "--pool=threads", f"--concurrency={workload.concurrency}", "--loglevel=WARNING"]
    app.celery.worker_main(argv)


class Producer:
    """``apply_async`` in a loop on one producer (a group would subscribe to, and drop, every result)."""

    def __init__(self, app: _App) -> None:
        self.app = app

    async def enqueue(self, n: int, body: str) -> None:
        """Send ``n`` ``body`` tasks (blocking: the producer process does nothing else)."""
        task = self.app.tasks[body]
        with self.app.celery.producer_or_acquire() as producer:
            for _ in range(n):
                task.apply_async(producer=producer)

    async def close(self) -> None:
        """Close the app's connections."""
        self.app.celery.close()


async def open_producer(workload: Workload) -> Producer:
    """The app, its broker connection opened."""
    app = _app(workload)
    with app.celery.connection_for_write() as connection:
        connection.ensure_connection(max_retries=3)
    return Producer(app)


class Celery(PeerProcess):
    """Celery's worker and the bench's app (a blocking client)."""

    label = "celery"
    headline = "Celery (threads pool, concurrency 100)"
    producer_kind = "celery"
    sync_client = True
    cancel_note = "no cancel of a running task with the threads pool (revoke(terminate=True) needs child processes)"

    def __init__(self, env: BenchEnv) -> None:
        super().__init__(env)
        self.app = _app(self.workload)

    def settings(self) -> dict[str, Any]:
        return {
            "worker": {"processes": 1, "pool": "threads", "concurrency": self.workload.concurrency},
            "worker other": "Celery defaults (prefetch multiplier 4, mingle and gossip on)",
            "drain jobs": "ignore_result=True; stamp stores its result (Redis backend)",
            "producer": "task.apply_async(producer=...) in a loop, one producer connection",
            "results": "AsyncResult.get() (the Redis backend's pub/sub)",
        }

    async def stop(self) -> None:
        try:
            await super().stop()
        finally:
            # An AsyncResult unsubscribes from its channel when collected: before the app closes.
            gc.collect()
            self.app.celery.close()

    def stamp_sync(self) -> float:
        result = self.app.tasks["stamp"].apply_async()
        return float(result.get(timeout=JOB_TIMEOUT_S))
