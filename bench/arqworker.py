"""A raw arq worker for ``bench/cancel.py``: ``python -m bench.arqworker URL QUEUE POLL_DELAY_S``.

Plain arq 0.28, nothing of actionq: ``allow_abort_jobs=True``, JSON serialization, its own queue
name. Its one function, :func:`wait_abort`, pushes ``time.time()`` to ``<key>:started`` once it
runs and, when arq aborts it (arq cancels the job's task), pushes the moment it saw
``asyncio.CancelledError`` to ``<key>:seen`` before re-raising. The bench BLPOPs both lists.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from arq.connections import RedisSettings
from arq.worker import Worker, func

__all__ = ["FUNCTION", "main", "wait_abort"]

FUNCTION = "wait_abort"


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


def build_worker(url: str, queue: str, poll_delay_s: float) -> Worker:
    """The worker: arq's defaults except the queue, the poll delay, aborts allowed and JSON."""
    return Worker(
        functions=[func(wait_abort, name=FUNCTION)],
        redis_settings=RedisSettings.from_dsn(url),
        queue_name=queue,
        poll_delay=poll_delay_s,
        allow_abort_jobs=True,
        job_serializer=_dumps,
        job_deserializer=json.loads,
    )


def main(argv: list[str]) -> None:
    """Run the worker until SIGTERM/SIGINT (arq's own signal handling)."""
    url, queue, poll_delay = argv
    build_worker(url, queue, float(poll_delay)).run()


if __name__ == "__main__":
    main(sys.argv[1:])
