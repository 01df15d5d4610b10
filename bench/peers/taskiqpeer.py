"""taskiq with taskiq-redis: ``RedisStreamBroker`` (consumer groups, acks) and ``RedisAsyncResultBackend``.

Worker: ``run_receiver_task`` with ``max_async_tasks`` 100 on uvloop, as ``taskiq worker`` runs
when uvloop is installed. Producer: taskiq has no batch ``kiq``: ``kiq()`` with 100 in flight.
Results: ``wait_result()``, which polls (every 5 ms here; taskiq's default 0.2 s). taskiq has no
cancel of a running task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench import jobs
from bench.jobs import Workload
from bench.peers.base import CONCURRENCY, JOB_TIMEOUT_S, RESULT_POLL_S, PeerProcess, gather_window, library

if TYPE_CHECKING:
    from bench.harness import BenchEnv

__all__ = ["Producer", "Taskiq", "open_producer", "serve"]

# taskiq keeps results forever by default; an hour is as good on the bench's private Redis.
RESULT_TTL_S = 3600


def _broker(workload: Workload) -> Any:
    taskiq_redis = library("taskiq_redis")
    backend = taskiq_redis.RedisAsyncResultBackend(
        workload.url, prefix_str=f"{workload.queue}:result", result_ex_time=RESULT_TTL_S
    )
    broker = taskiq_redis.RedisStreamBroker(workload.url, queue_name=workload.queue).with_result_backend(backend)
    broker.register_task(jobs.incr, task_name="incr")
    broker.register_task(jobs.noop, task_name="noop")
    broker.register_task(jobs.stamp, task_name="stamp")
    return broker


async def _receive(workload: Workload) -> None:
    broker = _broker(workload)
    broker.is_worker_process = True
    await broker.startup()
    await library("taskiq.api").run_receiver_task(broker, max_async_tasks=workload.concurrency, run_startup=False)


def serve(workload: Workload) -> None:
    """Run the receiver on uvloop until the process is killed."""
    library("uvloop").run(_receive(workload))


class Producer:
    """``kiq()`` with 100 in flight."""

    def __init__(self, broker: Any) -> None:
        self.broker = broker

    async def enqueue(self, n: int, body: str) -> None:
        """Enqueue ``n`` ``body`` tasks."""
        task = self.broker.find_task(body)
        await gather_window(task.kiq, n)

    async def close(self) -> None:
        """Shut the broker down."""
        await self.broker.shutdown()


async def open_producer(workload: Workload) -> Producer:
    """The broker, started."""
    broker = _broker(workload)
    await broker.startup()
    return Producer(broker)


class Taskiq(PeerProcess):
    """taskiq's receiver and the bench's broker."""

    label = "taskiq"
    headline = "taskiq (Redis stream broker, uvloop, 100 async tasks)"
    producer_kind = "taskiq"
    cancel_note = "taskiq has no cancel of a running task"

    def settings(self) -> dict[str, Any]:
        return {
            "worker": {"processes": 1, "max_async_tasks": CONCURRENCY, "event loop": "uvloop"},
            "broker": f"RedisStreamBroker + RedisAsyncResultBackend (result TTL {RESULT_TTL_S} s)",
            "producer": "task.kiq(), 100 in flight (no batch API)",
            "results": f"wait_result(check_interval={RESULT_POLL_S}) (taskiq polls)",
        }

    def __init__(self, env: BenchEnv) -> None:
        super().__init__(env)
        self.broker = _broker(self.workload)

    async def start(self) -> None:
        await self.broker.startup()  # creates the stream's consumer group before anything is added
        await super().start()

    async def stop(self) -> None:
        try:
            await super().stop()
        finally:
            await self.broker.shutdown()

    async def stamp(self) -> float:
        task = await self.broker.find_task("stamp").kiq()
        result = await task.wait_result(check_interval=RESULT_POLL_S, timeout=JOB_TIMEOUT_S)
        return float(result.return_value)
