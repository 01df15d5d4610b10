"""A raw arq worker: ``python -m bench.arqworker URL QUEUE POLL_DELAY_S [--max-jobs N] [--abort]``.

Plain arq 0.28, nothing of actionq: JSON serialization, its own queue name, ``max_jobs`` (arq's
default 10) and ``allow_abort_jobs`` (``--abort``; arq's default is off) as given. Its functions:
:func:`noop` and :func:`stamp` (bench/throughput.py, bench/latency.py) and :func:`wait_abort`
(bench/cancel.py), which pushes ``time.time()`` to ``<key>:started`` once it
runs and, when arq aborts it (arq cancels the job's task), pushes the moment it saw
``asyncio.CancelledError`` to ``<key>:seen`` before re-raising. The bench BLPOPs both lists.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from arq.connections import RedisSettings
from arq.worker import Worker, func

__all__ = ["FUNCTION", "main", "noop", "stamp", "wait_abort"]

FUNCTION = "wait_abort"


async def noop(ctx: dict[str, Any]) -> None:
    """Nothing: the job's cost is arq's alone."""


async def stamp(ctx: dict[str, Any]) -> float:
    """``time.time()`` when the job started (the bench subtracts its enqueue time)."""
    return time.time()


async def wait_abort(ctx: dict[str, Any], key: str, wait_s: float = 120.0) -> str:
    """Say it started, then sleep until aborted; stamp the abort, record it, re-raise."""
    redis = ctx["redis"]
    await redis.lpush(f"{key}:started", repr(time.time()))
    try:
        await asyncio.sleep(wait_s)
    except asyncio.CancelledError:
        seen = time.time()
        # Shielded: the stamp is taken already; the write must not be cut short by a second cancel.
        await asyncio.shield(redis.lpush(f"{key}:seen", repr(seen)))
        raise
    return "not aborted"


def _dumps(obj: Any) -> bytes:
    """arq's job serializer: JSON bytes."""
    return json.dumps(obj).encode()


def build_worker(url: str, queue: str, poll_delay_s: float, *, max_jobs: int = 10, abort: bool = False) -> Worker:
    """The worker: arq's defaults except the queue, the poll delay, ``max_jobs``, aborts and JSON."""
    return Worker(
        functions=[func(wait_abort, name=FUNCTION), func(noop, name="noop"), func(stamp, name="stamp")],
        redis_settings=RedisSettings.from_dsn(url),
        queue_name=queue,
        poll_delay=poll_delay_s,
        max_jobs=max_jobs,
        allow_abort_jobs=abort,
        job_serializer=_dumps,
        job_deserializer=json.loads,
    )


def main(argv: list[str]) -> None:
    """Run the worker until SIGTERM/SIGINT (arq's own signal handling)."""
    parser = argparse.ArgumentParser(prog="python -m bench.arqworker")
    parser.add_argument("url")
    parser.add_argument("queue")
    parser.add_argument("poll_delay_s", type=float)
    parser.add_argument("--max-jobs", type=int, default=10)
    parser.add_argument("--abort", action="store_true", help="allow_abort_jobs=True")
    args = parser.parse_args(argv)
    build_worker(args.url, args.queue, args.poll_delay_s, max_jobs=args.max_jobs, abort=args.abort).run()


if __name__ == "__main__":
    main(sys.argv[1:])
