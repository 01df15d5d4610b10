"""The arq adapter on the worker side: arq runs one function, ``run_action``, from many queues.

arq's ``Worker`` reads a single queue; an actionq worker reads one queue per (lane, plugin,
host) it can serve, so that it never takes a job for a plugin it does not have. ``ActionWorker``
overrides the three places where arq names its queue: the poll (one pipelined ZRANGEBYSCORE
over every queue), the claim (arq's WATCH/MULTI claim, per queue) and the finish (removing the
job from the queue it came from). Everything else — the in-progress lock, results, retries on
shutdown, signals — is arq's own.

A failure arq detects before our function runs (job body expired, max tries exceeded) is also
written to the job record, so a job never stays "queued" because arq gave up on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from typing import Any

import structlog
from arq.connections import ArqRedis
from arq.jobs import deserialize_result
from arq.utils import timestamp_ms
from arq.worker import Retry as ArqRetry
from arq.worker import Worker, func
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.broker import connect
from service.claims import Claims
from service.client import ARQ_FUNCTION
from service.errors import ConfigError, JobExpiredError
from service.keys import arq_in_progress_key, arq_job_key, arq_result_key, arq_retry_key
from service.logs import configure_logging
from service.models import ErrorInfo, JobState, now_ms
from service.runtime import WorkerRuntime
from service.settings import Settings
from service.wire import WireError, loads

__all__ = ["ActionWorker", "build_worker", "run_worker"]

log = structlog.get_logger("actionq.worker")

# Our executor enforces each job's own timeout; arq's outer timeout only has to be later.
_ARQ_TIMEOUT_MARGIN_S = 60
_ARQ_MAX_TRIES = 1000
# Reconnect backoff while Redis is unreachable: quick for a blip, capped so a long outage costs little.
_BACKOFF_MIN_S = 0.1
_BACKOFF_MAX_S = 5.0


def job_serializer(obj: Any) -> bytes:
    """JSON; an exception arq puts in a failure result becomes its "Type: message" text (no pickle)."""
    return json.dumps(obj, separators=(",", ":"), default=_exception_text).encode()


def _exception_text(obj: object) -> str:
    if isinstance(obj, BaseException):
        return f"{type(obj).__name__}: {obj}"
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def job_deserializer(data: bytes) -> Any:
    """JSON job bodies; a malformed one becomes a job that our pipeline records as failed."""
    try:
        return loads(data)
    except WireError as exc:
        return {"f": ARQ_FUNCTION, "a": [], "k": {"request": {"malformed": str(exc)}}, "t": None, "et": 0}


async def run_action(ctx: dict[str, Any], *, request: Any) -> dict[str, Any]:
    """The one arq job function: hand the job to the worker's runtime."""
    runtime: WorkerRuntime = ctx["actionq"]
    job_id = runtime.keys.job_id_from_arq(ctx["job_id"])
    outcome = await runtime.run(job_id, request, attempt=int(ctx["job_try"]))
    if outcome is None:
        return {"state": "skipped"}
    if outcome.state is JobState.RETRYING:
        # arq re-queues the job with this delay and counts the next start as the next try.
        raise ArqRetry(defer=outcome.retry_in_s or 0)
    return outcome.summary()


class ActionWorker(Worker):
    """arq's worker, reading every queue the runtime serves, woken by submits, holding short leases."""

    def __init__(self, runtime: WorkerRuntime, redis_pool: ArqRedis, **kwargs: Any) -> None:
        self.runtime = runtime
        self.queues = runtime.queues() or [runtime.keys.queue("_none_")]
        self.claims = Claims(redis_pool, lease_s=runtime.settings.lease_s)
        self._queue_of: dict[str, str] = {}
        self._rotation = itertools.cycle(range(len(self.queues)))
        self._backoff_s = 0.0
        self._next_due_ms: int | None = None
        self._saturated = False
        super().__init__(queue_name=self.queues[0], redis_pool=redis_pool, **kwargs)
        # arq sizes its lock from the longest timeout; ours is the lease the worker renews.
        self.in_progress_timeout_s = runtime.settings.lease_s

    def set_queues(self, queues: list[str]) -> None:
        """Read these queues from the next poll on (plugins were loaded or disabled at runtime)."""
        self.queues = queues or [self.runtime.keys.queue("_none_")]
        self._rotation = itertools.cycle(range(len(self.queues)))

    async def main(self) -> None:
        """arq's main loop with its fixed-interval poll replaced by a wake-up.

        A submit publishes its queue on the wake channel and the worker polls at once; otherwise it
        polls when the earliest deferred job falls due, or after ``poll_delay_s`` at the latest
        (which also picks up jobs whose claim lapsed because their worker died).
        """
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        renewer = asyncio.create_task(self.claims.renew_forever(), name="actionq-lease-renewal")
        try:
            while True:
                await self._poll_iteration()
                await self._wait_for_work()
        finally:
            await self.claims.stop(renewer)

    async def _wait_for_work(self) -> None:
        wait_s = self.poll_delay_s
        if self._next_due_ms is not None:
            wait_s = min(wait_s, max(0.0, (self._next_due_ms - timestamp_ms()) / 1000))
        wake = self.runtime.wake
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), wait_s)
        wake.clear()

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        if self._saturated:  # ready jobs were left waiting for a free slot: look again now
            self._saturated = False
            self.runtime.wake.set()

    async def _poll_iteration(self) -> None:
        """One round of the loop; a lost Redis connection is waited out with backoff, not fatal."""
        try:
            await self._poll_queues()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            if not self._backoff_s:
                self.runtime.worker_error("poll", exc)
            self._backoff_s = min(max(self._backoff_s * 2, _BACKOFF_MIN_S), _BACKOFF_MAX_S)
            log.warning("redis_unavailable", error=str(exc), retry_in_s=self._backoff_s)
            await asyncio.sleep(self._backoff_s)
        else:
            if self._backoff_s:
                log.info("redis_reconnected")
            self._backoff_s = 0.0

    async def _poll_queues(self) -> None:
        if self.allow_pick_jobs and self.job_counter < self.max_jobs:
            start = next(self._rotation)  # rotate which queue goes first, for fairness
            order = self.queues[start:] + self.queues[:start]
            now = timestamp_ms()
            async with self.pool.pipeline(transaction=False) as pipe:
                for queue in order:
                    pipe.zrangebyscore(queue, min=float("-inf"), max=now, start=0, num=self.queue_read_limit)
                    pipe.zrange(queue, 0, 0, withscores=True)  # the earliest entry: when to look next
                found = await pipe.execute()
            ready, earliest = found[::2], found[1::2]
            dues = [int(entries[0][1]) for entries in earliest if entries and entries[0][1] > now]
            self._next_due_ms = min(dues) if dues else None
            for queue, job_ids in zip(order, ready, strict=True):
                if job_ids:
                    await self._start_from(queue, [raw.decode() for raw in job_ids])
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
                task.result()  # surface errors of run_job itself
        await self.heart_beat()

    async def _start_from(self, queue: str, job_ids: list[str]) -> None:
        """Lease as many of the ready jobs as there are free slots, in one script, and run them."""
        free = self.max_jobs - self.job_counter
        taken = await self.claims.claim(queue, job_ids, timestamp_ms(), limit=free)
        if len(taken) == free:
            self._saturated = True  # maybe more were ready: look again when a slot frees up
        for job_id, score in taken:
            await self.sem.acquire()
            self.job_counter += 1
            self._queue_of[job_id] = queue
            task = self.loop.create_task(self.run_job(job_id, score))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

    async def finish_job(
        self,
        job_id: str,
        finish: bool,
        result_data: bytes | None,
        result_timeout_s: float | None,
        keep_result_forever: bool,
        incr_score: int | None,
        keep_in_progress: float | None,
    ) -> None:
        """arq's ``finish_job`` against the queue the job came from."""
        queue = self._queue_of.pop(job_id, self.queue_name)
        self.claims.release(job_id)
        async with self.pool.pipeline(transaction=True) as tr:
            tr.delete(arq_in_progress_key(job_id))
            if finish:
                if result_data:
                    ttl_ms = None if keep_result_forever or not result_timeout_s else int(result_timeout_s * 1000)
                    tr.set(arq_result_key(job_id), result_data, px=ttl_ms)
                tr.delete(arq_retry_key(job_id), arq_job_key(job_id))
                tr.zrem(queue, job_id)
            elif incr_score:
                tr.zincrby(queue, incr_score, job_id)
            await tr.execute()

    async def finish_failed_job(self, job_id: str, result_data: bytes | None) -> None:
        """arq's ``finish_failed_job`` against the job's queue, then the record says so too."""
        queue = self._queue_of.pop(job_id, self.queue_name)
        self.claims.release(job_id)
        async with self.pool.pipeline(transaction=True) as tr:
            tr.delete(arq_retry_key(job_id), arq_in_progress_key(job_id), arq_job_key(job_id))
            tr.zrem(queue, job_id)
            if result_data is not None:
                tr.set(arq_result_key(job_id), result_data, px=int(self.keep_result_s * 1000))
            await tr.execute()
        await self._record_arq_failure(job_id, result_data)

    async def _record_arq_failure(self, arq_job_id: str, result_data: bytes | None) -> None:
        """arq failed the job before ``run_action`` ran (expired, max tries): record it."""
        try:
            job_id = self.runtime.keys.job_id_from_arq(arq_job_id)
            message = str(deserialize_result(result_data, deserializer=loads).result) if result_data else "unknown"
        except Exception as exc:  # the record is best effort; arq's own result is written
            log.warning("arq_failure_not_recorded", arq_job_id=arq_job_id, error=str(exc))
            return
        if "expired" in message:
            # Its body expired before a worker took it: the queue-wait limit (`expires_s`) passed.
            error = ErrorInfo(type=JobExpiredError.__name__, message="not started before its queue-wait limit")
        else:
            error = ErrorInfo(type="JobExecutionFailed", message=f"arq gave up on the job: {message}")
        fields = {"finished_at_ms": now_ms(), "error": error.model_dump_json()}
        await self.runtime.store.transition(
            job_id, JobState.FAILED, attempt=0, fields=fields, ttl_s=self.runtime.settings.result_ttl_s
        )


async def _stop_runtime(ctx: dict[str, Any]) -> None:
    # arq calls this after the running jobs are done and before it closes the connection pool.
    runtime: WorkerRuntime = ctx["actionq"]
    await runtime.stop()


def build_worker(runtime: WorkerRuntime) -> ActionWorker:
    """An ``ActionWorker`` for a started runtime (plugins loaded, so its queues are known)."""
    settings = runtime.settings
    pool = ArqRedis(
        connection_pool=runtime.redis.connection_pool, job_serializer=job_serializer, job_deserializer=job_deserializer
    )
    return ActionWorker(
        runtime,
        pool,
        functions=[
            func(
                run_action,
                name=ARQ_FUNCTION,
                timeout=settings.max_timeout_s + _ARQ_TIMEOUT_MARGIN_S,
                keep_result=settings.result_ttl_s,
                # Our retry policy counts attempts; arq's cap only stops a job that crashes workers forever.
                max_tries=_ARQ_MAX_TRIES,
            )
        ],
        ctx={"actionq": runtime},
        on_shutdown=_stop_runtime,
        max_jobs=settings.concurrency,
        poll_delay=settings.poll_delay_s,
        job_serializer=job_serializer,
        job_deserializer=job_deserializer,
        job_completion_wait=settings.shutdown_grace_s,
        keep_result=settings.result_ttl_s,
        health_check_interval=settings.heartbeat_s,
        health_check_key=runtime.keys.arq_health(runtime.worker_id),
    )


async def run_worker(settings: Settings) -> None:
    """Run a worker until SIGINT/SIGTERM: plugins, registry, arq loop, clean shutdown."""
    if settings.redis_url is None:
        raise ConfigError("no Redis configured for the worker: set redis_url in config.yml or ACTIONQ_REDIS_URL")
    runtime = WorkerRuntime(settings, connect(settings.redis_url))
    try:
        await runtime.start()
    except BaseException:
        await runtime.stop()
        await runtime.redis.aclose()
        raise
    worker = build_worker(runtime)
    runtime.attach(worker)
    try:
        await worker.async_run()
    except asyncio.CancelledError:
        log.info("worker_stopping")
    finally:
        try:
            await worker.close()  # waits for running jobs, stops the runtime, closes the pool
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            log.warning("redis_unavailable_at_shutdown", error=str(exc))
        await runtime.stop()  # no-op if arq's on_shutdown already ran it


def main(settings: Settings) -> None:
    """Blocking entry point used by ``actionq worker`` and ``python -m workers``."""
    configure_logging(settings.log_format, settings.log_level)
    asyncio.run(run_worker(settings))
