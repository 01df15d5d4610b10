"""Raw arq's abort, measured the same way as actionq's cancel (for ``bench/cancel.py``).

:class:`ArqWorkerProcess` runs ``python -m bench.arqworker`` (plain arq, ``allow_abort_jobs=True``)
on the bench's private Redis, on a queue of its own. :func:`abort_samples` enqueues a batch of
``wait_abort`` jobs with ``ArqRedis.enqueue_job``, waits until each has started, then aborts them
one at a time: a settle pause plus a random wait (uniform over one poll period, so the abort lands
at a random phase of the worker's poll loop, as a user's would), ``t0 = time.time()``, then
``Job.abort()`` (``info()``, ZADD to ``arq:abort``, then polling for the result). The latency is
the job's stamp of the moment it saw ``CancelledError`` minus ``t0``.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import cast

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.jobs import Job, SerializationError

from bench.arqworker import FUNCTION
from bench.harness import REPO_ROOT, BenchError

__all__ = ["ArqVariant", "ArqWorkerProcess", "abort_samples", "arq_pool"]

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
# Generous: one wait is at most a couple of poll periods; only a lost job reaches it.
WAIT_TIMEOUT_S = 30
# Job.abort polls for the result this often (arq's default 0.5 s would only slow the bench down).
RESULT_POLL_S = 0.01


@dataclass(frozen=True)
class ArqVariant:
    """One raw arq worker setting."""

    label: str
    poll_delay_s: float
    max_samples: int | None = None
    """At most this many cancel samples per run (None: as many as the entry asks for)."""


async def arq_pool(url: str) -> ArqRedis:
    """An arq pool on ``url`` with JSON job serialization (the worker's)."""
    return await create_pool(
        RedisSettings.from_dsn(url), job_serializer=lambda d: json.dumps(d).encode(), job_deserializer=json.loads
    )


class ArqWorkerProcess:
    """``python -m bench.arqworker`` as an async context manager: started and ready, then stopped."""

    def __init__(
        self,
        redis: ArqRedis,
        url: str,
        queue: str,
        poll_delay_s: float,
        log_path: Path,
        *,
        max_jobs: int = 10,
        abort: bool = True,
    ) -> None:
        self.redis = redis
        self.url = url
        self.queue = queue
        self.poll_delay_s = poll_delay_s
        self.log_path = log_path
        self.args = [f"{poll_delay_s:g}", "--max-jobs", str(max_jobs), *(["--abort"] if abort else [])]
        self.proc: subprocess.Popen[bytes] | None = None

    async def __aenter__(self) -> ArqWorkerProcess:
        """Spawn the worker and wait until it has polled once; stop it if it does not get there."""
        self.proc = _spawn(self.url, self.queue, self.args, self.log_path)
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _wait_ready(self) -> None:
        """arq writes ``<queue>:health-check`` in its first poll iteration."""
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not await self.redis.exists(f"{self.queue}:health-check"):
            if self.proc.poll() is not None:
                raise BenchError(f"arq worker exited with {self.proc.returncode}:\n{self._log_tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"arq worker not ready within {READY_TIMEOUT_S:g}s:\n{self._log_tail()}")
            await asyncio.sleep(0.05)

    def _log_tail(self) -> str:
        """The last lines the worker wrote (for an error message)."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-30:])

    async def stop(self) -> None:
        """SIGTERM (arq shuts down gracefully), SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.proc.wait, STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait)


def _spawn(url: str, queue: str, args: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """``python -m bench.arqworker URL QUEUE POLL_DELAY_S ...``, its output going to ``log_path``."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "bench.arqworker", url, queue, *args],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def _pop(redis: ArqRedis, key: str) -> float:
    """BLPOP one stamp from ``key``."""
    # redis-py types BLPOP as sync-or-async; on an asyncio client it is a coroutine.
    popped = await cast(Awaitable[list[bytes] | None], redis.blpop([key], timeout=WAIT_TIMEOUT_S))
    if popped is None:
        raise BenchError(f"nothing arrived on {key} within {WAIT_TIMEOUT_S}s")
    return float(popped[1])


async def _abort_one(redis: ArqRedis, job: Job, key: str, pause_s: float) -> float:
    """Abort ``job`` after ``pause_s``; ms from the abort call to the job seeing ``CancelledError``."""
    await asyncio.sleep(pause_s)
    t0 = time.time()
    abort = asyncio.create_task(job.abort(timeout=WAIT_TIMEOUT_S, poll_delay=RESULT_POLL_S))
    seen = await _pop(redis, f"{key}:seen")
    # The aborted job's result is a CancelledError, which JSON cannot hold: arq stores
    # "unable to serialize result" and Job.result raises SerializationError. Either way it ended.
    with suppress(SerializationError):
        await abort
    return (seen - t0) * 1000


async def abort_samples(
    redis: ArqRedis, queue: str, n: int, *, batch: int, settle_s: float, spread_s: float
) -> list[float]:
    """``n`` abort latencies (ms), aborted one at a time from batches of ``batch`` running jobs."""
    latencies: list[float] = []
    while len(latencies) < n:
        keys = [f"{queue}:t:{uuid.uuid4().hex}" for _ in range(min(batch, n - len(latencies)))]
        jobs: list[Job] = []
        for key in keys:
            job = await redis.enqueue_job(FUNCTION, key, _job_id=key, _queue_name=queue)
            if job is None:
                raise BenchError(f"arq refused job {key} (id taken)")
            jobs.append(job)
        for key in keys:
            await _pop(redis, f"{key}:started")
        for job, key in zip(jobs, keys, strict=True):
            latencies.append(await _abort_one(redis, job, key, settle_s + random.uniform(0, spread_s)))
    return latencies
