"""Workers of the optional peers: ``python -m bench.peerworker {saq,taskiq} URL QUEUE CONCURRENCY``.

Each runs the same two jobs as the actionq and arq workers: ``noop`` (returns None) and ``stamp``
(returns ``time.time()`` when it started), with the library's defaults except the queue name, the
concurrency and SAQ's sweep interval (see :func:`_run_saq`). SIGTERM ends the process (Python's
default handler: the bench is done with it).
The producers import :func:`saq_queue` and :func:`taskiq_broker` from here, so both sides agree.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any, cast

__all__ = ["main", "saq_queue", "taskiq_broker"]

# taskiq keeps results this long (it keeps them forever by default; the bench's Redis is private).
TASKIQ_RESULT_TTL_S = 3600
SAQ_SWEEP_S = 600


async def noop(ctx: Any = None) -> None:
    """Nothing."""


async def stamp(ctx: Any = None) -> float:
    """``time.time()`` when the job started."""
    return time.time()


def saq_queue(url: str, name: str) -> Any:
    """SAQ's Redis queue ``name`` on ``url``."""
    from saq import Queue

    return Queue.from_url(url, name=name)


def taskiq_broker(url: str, queue: str) -> Any:
    """taskiq-redis's list broker on ``queue`` with its Redis result backend; ``noop`` and ``stamp`` registered."""
    from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend

    backend: RedisAsyncResultBackend[Any] = RedisAsyncResultBackend(
        url, prefix_str=f"{queue}:result", result_ex_time=TASKIQ_RESULT_TTL_S
    )
    broker = ListQueueBroker(url, queue_name=queue).with_result_backend(backend)
    broker.register_task(noop, task_name="noop")
    broker.register_task(stamp, task_name="stamp")
    return broker


async def _run_saq(url: str, queue: str, concurrency: int) -> None:
    from saq import Worker

    # SAQ's sweep aborts ("swept") a job it finds in the active list still marked queued: the
    # window between the worker's BLMOVE and its SET of the job as active (tobymao/saq#124, #277).
    # The first sweep runs as the worker starts (Saq.start waits for it, so no job is in flight);
    # the next ones every SAQ_SWEEP_S, not SAQ's 60 s, so that none lands inside a bench phase.
    from saq.types import PartialTimersDict

    timers = cast("PartialTimersDict", {"sweep": SAQ_SWEEP_S})  # SAQ fills in the other timers
    functions = [("noop", noop), ("stamp", stamp)]
    worker = Worker(saq_queue(url, queue), functions=functions, concurrency=concurrency, timers=timers)
    await worker.start()


async def _run_taskiq(url: str, queue: str, concurrency: int) -> None:
    from taskiq.api import run_receiver_task

    broker = taskiq_broker(url, queue)
    broker.is_worker_process = True
    await broker.startup()
    await run_receiver_task(broker, max_async_tasks=concurrency, run_startup=False)


def main(argv: list[str]) -> None:
    """Run the named peer's worker until the process is killed."""
    kind, url, queue, concurrency = argv
    runner = {"saq": _run_saq, "taskiq": _run_taskiq}[kind]
    asyncio.run(runner(url, queue, int(concurrency)))


if __name__ == "__main__":
    main(sys.argv[1:])
