"""RQ: one ``SimpleWorker`` process, one job at a time (RQ has no concurrency inside a worker).

RQ's default ``Worker`` forks a child per job; ``SimpleWorker`` runs jobs in the worker process,
RQ's fastest single-process setting. Its jobs are plain functions: the ``*_sync`` bodies. The
drain's jobs keep no result (``result_ttl=0``, RQ's documented option). Producer:
``Queue.enqueue_many`` (one pipeline), 1,000 jobs a call. Results: ``Job.latest_result(timeout=...)``
(a blocking ``XREAD`` on the job's result stream). No cancel of a running job with
``SimpleWorker`` (``send_stop_job_command`` kills a forked work horse).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench import jobs
from bench.jobs import Workload
from bench.peers.base import JOB_TIMEOUT_S, PeerProcess, library

if TYPE_CHECKING:
    from bench.harness import BenchEnv

__all__ = ["Producer", "Rq", "open_producer", "serve"]

CHUNK = 1_000
BODIES = {"incr": jobs.incr_sync, "noop": jobs.noop_sync}


def _queue(workload: Workload) -> Any:
    from redis import Redis

    return library("rq").Queue(workload.queue, connection=Redis.from_url(workload.url))


def serve(workload: Workload) -> None:
    """Run a ``SimpleWorker`` on the contender's queue until SIGTERM (RQ's warm shutdown)."""
    queue = _queue(workload)
    library("rq").SimpleWorker([queue], connection=queue.connection).work(logging_level="WARNING")


class Producer:
    """``enqueue_many``, 1,000 jobs a call."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    async def enqueue(self, n: int, body: str) -> None:
        """Enqueue ``n`` ``body`` jobs (blocking: the producer process does nothing else)."""
        fn = BODIES[body]
        for start in range(0, n, CHUNK):
            datas = [self.queue.prepare_data(fn, result_ttl=0) for _ in range(min(CHUNK, n - start))]
            self.queue.enqueue_many(datas)

    async def close(self) -> None:
        """Close the connection."""
        self.queue.connection.close()


async def open_producer(workload: Workload) -> Producer:
    """RQ's queue on a connection that has answered a PING."""
    queue = _queue(workload)
    queue.connection.ping()
    return Producer(queue)


class Rq(PeerProcess):
    """RQ's worker and the bench's queue (a blocking client)."""

    label = "rq"
    headline = "RQ (SimpleWorker: 1 job at a time)"
    producer_kind = "rq"
    sync_client = True
    cancel_note = "no cancel of a running job with SimpleWorker (send_stop_job_command kills a forked horse)"
    # One job at a time: 2,000 jobs show its rate as well as 10,000.
    max_drain_jobs = 2_000

    def __init__(self, env: BenchEnv) -> None:
        super().__init__(env)
        self.client = _queue(self.workload)

    def settings(self) -> dict[str, Any]:
        return {
            "worker": {"processes": 1, "class": "SimpleWorker", "concurrency": 1},
            "drain jobs": "result_ttl=0",
            "producer": f"Queue.enqueue_many, {CHUNK} jobs a call",
            "results": "Job.latest_result(timeout=...) (blocking XREAD)",
        }

    async def stop(self) -> None:
        try:
            await super().stop()
        finally:
            self.client.connection.close()

    def stamp_sync(self) -> float:
        job = self.client.enqueue(jobs.stamp_sync)
        result = job.latest_result(timeout=int(JOB_TIMEOUT_S))
        if result is None:
            raise TimeoutError(f"rq: no result for {job.id} within {JOB_TIMEOUT_S:g} s")
        return float(result.return_value)
