"""Dramatiq with its Redis broker: one process x 8 threads (``dramatiq --processes 1 --threads 8``).

Eight threads a process is Dramatiq's default (``--threads 8``): the setting the workload names,
not tuned further here. Its jobs are plain functions: the ``*_sync`` bodies. Worker:
``dramatiq.Worker`` in one process, as the ``dramatiq`` command's worker process runs it (without
the supervising parent). Results: the ``Results`` middleware on Redis, for the ``stamp`` actor only
(``store_results`` is off by default, so the drain's actors store none); ``get_result(block=True)``
waits with a blocking pop. Producer: Dramatiq has no batch enqueue (``group().run()`` sends one
message at a time): ``send()`` in a loop. No cancel of a running message (that is the separate
``dramatiq-abort`` package).
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench import jobs
from bench.jobs import Workload
from bench.peers.base import JOB_TIMEOUT_S, PeerProcess, library

if TYPE_CHECKING:
    from bench.harness import BenchEnv

__all__ = ["Dramatiq", "Producer", "open_producer", "serve"]

THREADS = 8


@dataclass
class _App:
    broker: Any
    backend: Any
    actors: dict[str, Any]


def _app(workload: Workload) -> _App:
    dramatiq = library("dramatiq")
    broker = library("dramatiq.brokers.redis").RedisBroker(url=workload.url, namespace=workload.queue)
    backend = library("dramatiq.results.backends.redis").RedisBackend(
        url=workload.url, namespace=f"{workload.queue}-results"
    )
    broker.add_middleware(library("dramatiq.results").Results(backend=backend))
    bodies = {"incr": (jobs.incr_sync, False), "noop": (jobs.noop_sync, False), "stamp": (jobs.stamp_sync, True)}
    actors = {
        name: dramatiq.actor(fn, actor_name=name, queue_name="bench", broker=broker, store_results=store)
        for name, (fn, store) in bodies.items()
    }
    return _App(broker, backend, actors)


def serve(workload: Workload) -> None:
    """Boot the broker, start 8 worker threads, stop on SIGTERM."""
    app = _app(workload)
    app.broker.emit_after("process_boot")
    worker = library("dramatiq").Worker(app.broker, worker_threads=THREADS)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    worker.start()
    stopping.wait()
    worker.stop()
    app.broker.close()


class Producer:
    """``actor.send()`` in a loop."""

    def __init__(self, app: _App) -> None:
        self.app = app

    async def enqueue(self, n: int, body: str) -> None:
        """Send ``n`` ``body`` messages (blocking: the producer process does nothing else)."""
        send = self.app.actors[body].send
        for _ in range(n):
            send()

    async def close(self) -> None:
        """Close the broker's connections."""
        self.app.broker.close()


async def open_producer(workload: Workload) -> Producer:
    """The broker and actors (each send declares nothing more: the queue is declared here)."""
    return Producer(_app(workload))


class Dramatiq(PeerProcess):
    """Dramatiq's worker and the bench's broker (a blocking client)."""

    label = "dramatiq"
    headline = "Dramatiq (1 process x 8 threads)"
    producer_kind = "dramatiq"
    sync_client = True
    cancel_note = "no cancel of a running message (dramatiq-abort is a separate package)"

    def __init__(self, env: BenchEnv) -> None:
        super().__init__(env)
        self.app = _app(self.workload)

    def settings(self) -> dict[str, Any]:
        return {
            "worker": {"processes": 1, "threads": THREADS, "middleware": "Dramatiq's defaults + Results (Redis)"},
            "drain jobs": "store_results off (Dramatiq's default); stamp: store_results=True",
            "producer": "actor.send() in a loop (no batch API; group().run() sends one at a time)",
            "results": "message.get_result(block=True) (a blocking pop on the result key)",
        }

    async def stop(self) -> None:
        try:
            await super().stop()
        finally:
            self.app.broker.close()

    def stamp_sync(self) -> float:
        message = self.app.actors["stamp"].send()
        return float(message.get_result(backend=self.app.backend, block=True, timeout=int(JOB_TIMEOUT_S * 1000)))
