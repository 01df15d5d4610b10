"""``python -m bench.producer KIND N BODY``: the drain phase's producer, a process of its own.

Configured by the ``BENCH_*`` variables (:class:`bench.jobs.Workload`). It opens the library's
client (``bench.peers.<KIND>peer.open_producer``), prints ``ready``, waits for a line on stdin,
then enqueues as fast as the library allows and prints one JSON line: ``t_first`` (``time.time()``
just before the first enqueue) and ``t_end`` (after the last one returned).

``BODY`` ``incr``: ``N`` ``incr`` jobs. ``noop``: ``N - 1`` ``noop`` jobs, then one ``incr`` job
as the end marker, enqueued once the others are: queues are first in, first out, so it is among
the last taken, and the counter shows when the drain is over for both workloads alike.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from bench.jobs import Workload
from bench.peers import peer_module

BODIES = ("incr", "noop")


def plan(n: int, body: str) -> list[tuple[int, str]]:
    """The enqueue calls of one drain: ``(count, body)`` in order (see the module docstring)."""
    if body not in BODIES:
        raise ValueError(f"unknown body {body!r}; known: {', '.join(BODIES)}")
    if n < 1:
        raise ValueError(f"the drain needs at least one job, not {n}")
    if body == "incr":
        return [(n, "incr")]
    return [(n - 1, "noop"), (1, "incr")] if n > 1 else [(1, "incr")]


async def produce(kind: str, n: int, body: str) -> dict[str, float]:
    """Open the client, say ready, wait for go, enqueue; the timestamps."""
    steps = plan(n, body)
    producer = await peer_module(kind).open_producer(Workload.from_env())
    try:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        t_first = time.time()
        for count, name in steps:
            if count:
                await producer.enqueue(count, name)
        t_end = time.time()
    finally:
        await producer.close()
    return {"t_first": t_first, "t_end": t_end}


def main(argv: list[str]) -> None:
    """Run one drain's producer and print its timestamps."""
    if len(argv) != 3:
        raise SystemExit("usage: python -m bench.producer KIND N BODY")
    kind, n, body = argv
    print(json.dumps(asyncio.run(produce(kind, int(n), body))), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
