"""arq 0.28, twice: with its defaults, and tuned (10 ms poll, ``max_jobs`` 100, aborts on).

Worker: ``arq.worker.Worker`` (what ``arq`` the command runs), JSON serialization. Tuned, the
drain's jobs keep no result (``keep_result=0``, arq's documented per-function option: nobody reads
it). Producer: arq has no batch enqueue; ``ArqRedis.enqueue_job`` with 100 in flight. Results:
``Job.result()``, which polls (every 5 ms here). Cancel: ``Job.abort()`` (tuned only: arq's
defaults have ``allow_abort_jobs`` off).
"""

from __future__ import annotations

import json
import os
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.jobs import Job, SerializationError
from arq.worker import Worker, func

from bench import jobs
from bench.jobs import Workload
from bench.peers.base import CONCURRENCY, JOB_TIMEOUT_S, RESULT_POLL_S, PeerProcess, gather_window

if TYPE_CHECKING:
    from bench.harness import BenchEnv

__all__ = ["Arq", "Producer", "open_producer", "serve"]

VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "tuned": {"poll_delay": 0.01, "max_jobs": CONCURRENCY, "allow_abort_jobs": True},
}
_VARIANT_ENV = "BENCH_ARQ_VARIANT"


async def incr(ctx: dict[str, Any]) -> None:
    """:func:`bench.jobs.incr`."""
    await jobs.incr()


async def noop(ctx: dict[str, Any]) -> None:
    """:func:`bench.jobs.noop`."""


async def stamp(ctx: dict[str, Any]) -> float:
    """:func:`bench.jobs.stamp`."""
    return await jobs.stamp()


async def hold(ctx: dict[str, Any], key: str) -> str:
    """:func:`bench.jobs.hold`."""
    return await jobs.hold(key)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def serve(workload: Workload) -> None:
    """Run the worker of the variant named in ``BENCH_ARQ_VARIANT`` until SIGTERM."""
    variant = VARIANTS[os.environ[_VARIANT_ENV]]
    keep: dict[str, Any] = {"keep_result": 0} if variant else {}  # tuned: the drain's results are never read
    Worker(
        functions=[func(incr, **keep), func(noop, **keep), func(stamp), func(hold)],
        redis_settings=RedisSettings.from_dsn(workload.url),
        queue_name=workload.queue,
        job_serializer=_dumps,
        job_deserializer=json.loads,
        **variant,
    ).run()


async def _pool(url: str) -> ArqRedis:
    return await create_pool(RedisSettings.from_dsn(url), job_serializer=_dumps, job_deserializer=json.loads)


class Producer:
    """``enqueue_job`` with 100 in flight (no batch API)."""

    def __init__(self, redis: ArqRedis, queue: str) -> None:
        self.redis = redis
        self.queue = queue

    async def enqueue(self, n: int, body: str) -> None:
        """Enqueue ``n`` ``body`` jobs."""
        await gather_window(lambda: self.redis.enqueue_job(body, _queue_name=self.queue), n)

    async def close(self) -> None:
        """Close the pool."""
        await self.redis.aclose()


async def open_producer(workload: Workload) -> Producer:
    """An arq pool on the bench's Redis."""
    return Producer(await _pool(workload.url), workload.queue)


class Arq(PeerProcess):
    """One arq variant's worker and the bench's ``ArqRedis``."""

    producer_kind = "arq"

    def __init__(self, env: BenchEnv, variant: str) -> None:
        self.label = f"arq {variant}"
        self.headline = {
            "defaults": "arq defaults (max_jobs 10, poll 0.5 s)",
            "tuned": "arq tuned (max_jobs 100, poll 10 ms, aborts on)",
        }[variant]
        self.variant = variant
        self.cancel_note = "" if VARIANTS[variant].get("allow_abort_jobs") else "allow_abort_jobs is off by default"
        # arq's defaults drain at a rate set by their 0.5 s poll: 2,000 jobs show it as well as 10,000.
        self.max_drain_jobs = 2_000 if variant == "defaults" else None
        super().__init__(env)
        self.redis: ArqRedis | None = None

    def worker_env(self) -> dict[str, str]:
        return super().worker_env() | {_VARIANT_ENV: self.variant}

    def settings(self) -> dict[str, Any]:
        return {
            "worker": {"processes": 1, **VARIANTS[self.variant], "serializer": "json", "other": "arq defaults"},
            "drain jobs": "keep_result=0" if VARIANTS[self.variant] else "keep_result: arq default (3600 s)",
            "producer": "ArqRedis.enqueue_job, 100 in flight (arq has no batch enqueue)",
            "results": f"Job.result(poll_delay={RESULT_POLL_S}) (arq polls)",
            "cancel": "Job.abort()" if self.supports_cancel else self.cancel_note,
        }

    async def start(self) -> None:
        self.redis = await _pool(self.env.url)
        await super().start()
        await self.wait_for(lambda: self._exists(f"{self.queue}:health-check"), "no health check")

    async def _exists(self, key: str) -> bool:
        assert self.redis is not None
        return bool(await self.redis.exists(key))

    async def stop(self) -> None:
        try:
            await super().stop()
        finally:
            if self.redis is not None:
                await self.redis.aclose()
                self.redis = None

    async def stamp(self) -> float:
        assert self.redis is not None
        job = await self.redis.enqueue_job("stamp", _queue_name=self.queue)
        assert job is not None
        return float(await job.result(timeout=JOB_TIMEOUT_S, poll_delay=RESULT_POLL_S))

    async def submit_hold(self, key: str) -> Job:
        assert self.redis is not None
        job = await self.redis.enqueue_job("hold", key, _queue_name=self.queue)
        assert job is not None
        return job

    async def cancel(self, handle: Any) -> None:
        # The aborted job's result is a CancelledError, which JSON cannot hold: arq stores "unable to
        # serialize result" and reading it raises SerializationError. Either way the job ended.
        with suppress(SerializationError):
            await handle.abort(timeout=JOB_TIMEOUT_S, poll_delay=RESULT_POLL_S)
