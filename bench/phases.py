"""The latency, cancel and idle phases of ``bench compare``, one contender at a time.

* **latency**: ``stamp`` jobs at ``rate`` jobs/s for ``seconds`` (job i at ``t0 + i / rate``, one
  task each; a blocking client runs them one at a time on its thread). Per job: enqueue -> start
  (the job's ``time.time()`` at start less the one just before the enqueue call) and enqueue ->
  result (when the client has it, waiting as the library's docs say). One clock: one machine.
* **cancel**: batches of ``BATCH`` ``hold(key)`` jobs; once each has pushed its start stamp, they
  are cancelled one at a time, after a short pause plus a random wait (up to the period of the
  worker's cancel check where it polls for cancels): ``t0 = time.time()``, the
  library's cancel call (as a task), then the job's stamp of the moment it saw the cancel - ``t0``.
* **idle**: the worker alone with nothing to do: Redis commands/s over a window, and its RSS.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import cast

from bench.peers.base import Contender, PeerError
from bench.procstats import rss_mib
from bench.redisstats import command_calls, commands_delta

__all__ = ["IdleSample", "cancel_samples", "idle", "latency_samples"]

BATCH = 8
SETTLE_S = 0.02
WAIT_S = 30
IDLE_SETTLE_S = 1.0


async def latency_samples(contender: Contender, rate: float, seconds: float) -> tuple[list[float], list[float]]:
    """(enqueue -> start, enqueue -> result) in ms, one per job."""
    t0 = time.perf_counter() + 0.05
    count = max(1, round(rate * seconds))

    async def one(at: float) -> tuple[float, float]:
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        enqueued, started, resulted = await contender.timed_stamp()
        return (started - enqueued) * 1000, (resulted - enqueued) * 1000

    samples = await asyncio.gather(*(one(t0 + i / rate) for i in range(count)))
    return [s for s, _ in samples], [r for _, r in samples]


async def _pop(contender: Contender, key: str) -> float:
    """BLPOP one stamp from ``key`` on the bench's connection."""
    popped = await cast(Awaitable[list[bytes] | None], contender.probe.blpop([key], timeout=WAIT_S))
    if popped is None:
        raise PeerError(f"{contender.label}: nothing arrived on {key} within {WAIT_S} s")
    return float(popped[1])


async def cancel_samples(contender: Contender, n: int) -> list[float]:
    """``n`` cancel -> seen latencies (ms), cancelled one at a time from batches of running jobs."""
    latencies: list[float] = []
    while len(latencies) < n:
        keys = [f"{contender.queue}:hold:{uuid.uuid4().hex}" for _ in range(min(BATCH, n - len(latencies)))]
        handles = [await contender.submit_hold(key) for key in keys]
        for key in keys:
            await _pop(contender, f"{key}:started")
        for handle, key in zip(handles, keys, strict=True):
            await asyncio.sleep(SETTLE_S + random.uniform(0, contender.cancel_spread_s))
            t0 = time.time()
            asking = asyncio.create_task(contender.cancel(handle))
            seen = await _pop(contender, f"{key}:seen")
            await asking
            latencies.append((seen - t0) * 1000)
    return latencies


@dataclass(frozen=True)
class IdleSample:
    """The worker with nothing to do."""

    commands: Counter[str]
    seconds: float
    rss_mib: float

    @property
    def commands_per_s(self) -> float:
        """Redis commands per second."""
        return sum(self.commands.values()) / self.seconds


async def idle(contender: Contender, seconds: float) -> IdleSample:
    """After a settle, the ``INFO commandstats`` delta over ``seconds`` and the worker's RSS."""
    await asyncio.sleep(IDLE_SETTLE_S)
    before = await command_calls(contender.probe)
    await asyncio.sleep(seconds)
    calls = commands_delta(before, await command_calls(contender.probe), Counter())
    return IdleSample(calls, seconds, rss_mib(contender.pid))
