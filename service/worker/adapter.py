"""The arq adapter on the worker side: arq's worker loop, with job taking and settling of our own.

arq's ``Worker`` reads a single queue and handles each job in three round trips (a WATCH/MULTI
claim, a transaction that reads the body and bumps the try counter, a MULTI/EXEC finish). An
actionq worker reads one queue per (lane, plugin, host) it can serve and handles jobs in batches:

* **wake-up**: a submit publishes its queue on the wake channel, and the worker looks at once;
  otherwise when the earliest deferred job falls due, or after ``poll_delay_s`` at the latest;
* **take**: one script claims and starts as many ready jobs as there are free slots, across all
  queues (:mod:`service.worker.take`), with short leases renewed while the jobs run;
* **settle**: one script per batch writes the outcomes (:mod:`service.worker.settle`).

What stays arq's: the data model (queues are arq's sorted sets of arq job ids; arq's in-progress
and result keys), so arq's ``Job(...).status()`` and ``.result()`` still work; the worker's
lifecycle (signals, graceful shutdown waiting ``job_completion_wait``, the health-check key).
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import itertools
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, cast

import structlog
from arq.connections import ArqRedis
from arq.utils import timestamp_ms
from arq.worker import Worker, func
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service import arqformat
from service.errors import ConfigError
from service.logs import configure_logging
from service.models import JobState
from service.plugins.calls import JobCaller
from service.processes.heap import settle_heap
from service.processes.parent import die_with_parent, expected_parent
from service.redis.cluster import is_cluster, publish
from service.redis.connection import connect
from service.settings import Settings
from service.worker import settle
from service.worker.control import ControlHandler
from service.worker.limits import Limits
from service.worker.runtime import WorkerRuntime
from service.worker.take import Claims, Take, TakenJob

__all__ = ["ActionWorker", "build_worker", "run_worker"]

log = structlog.get_logger("actionq.worker")

# Reconnect backoff while Redis is unreachable: quick for a blip, capped so a long outage costs little.
_BACKOFF_MIN_S = 0.1
_BACKOFF_MAX_S = 5.0


async def run_action(ctx: dict[str, Any], **kwargs: Any) -> None:
    """arq's name for every actionq job (arq's results report it); never called by arq here.

    arq's ``Worker`` needs one function to exist; :class:`ActionWorker` takes and runs jobs itself.
    """
    raise RuntimeError("actionq jobs are run by ActionWorker, not by arq's run_job")


class ActionWorker(Worker):
    """arq's worker, reading every queue the runtime serves, woken by submits, taking jobs in batches."""

    def __init__(self, runtime: WorkerRuntime, redis_pool: ArqRedis, **kwargs: Any) -> None:
        self.runtime = runtime
        # The queues' sorted sets: on Redis Cluster one per partition, taken from by a call each.
        self.queues = runtime.keys.every_queue_set(runtime.queues()) or self._no_queue()
        settings = runtime.settings
        self.claims = Claims(redis_pool, runtime.keys, worker_id=runtime.worker_id, lease_s=settings.lease_s)
        self.limits = Limits(
            runtime.redis, runtime.keys, settings, plugins=runtime.loader.loaded, claims=self.claims,
            settler=runtime.executor.settler, worker_id=runtime.worker_id,
        )  # fmt: skip
        self._rotation = itertools.cycle(range(len(self.queues)))
        self._backoff_s = 0.0
        self._next_due_ms: int | None = None
        self._saturated = False
        # Under load a freed slot is refilled by a take at most once per window, or at once when a
        # quarter of the slots are free: one take for several ended jobs, not one each.
        self._refill_window_s = settings.batch_window_ms / 1000
        self._refill_timer: asyncio.TimerHandle | None = None
        self._taking: asyncio.Future[Take] | None = None  # the take in flight, and the launch of its jobs
        self._delisting: asyncio.Task[None] | None = None  # leaving the idle sets: the next take waits for it
        self._chores: set[asyncio.Task[None]] = set()
        self._begun: set[str] = set()  # arq ids of the launched jobs whose task has started running
        self._closing = False
        self._stop_requested = False
        super().__init__(queue_name=self.queues[0], redis_pool=redis_pool, **kwargs)
        self._refill_at = max(1, self.max_jobs // 4)
        self.on_stop = self._stop  # arq calls it as it cancels the main task, on every path to a stop

    def set_queues(self, queues: list[str]) -> None:
        """Read these queues from the next poll on (plugins were loaded or disabled at runtime)."""
        old, self.queues = self.queues, queues or self._no_queue()
        self._rotation = itertools.cycle(range(len(self.queues)))
        # Leave the old queues' idle sets; the next take lists this worker in the new ones.
        self._background(self.claims.unregister(old), "actionq-unlist")

    def _no_queue(self) -> list[str]:
        """What a worker with no plugin reads: a queue no job is sent to (arq's shell needs one)."""
        keys = self.runtime.keys
        return keys.queue_sets(keys.queue("_none_"))[:1]

    async def main(self) -> None:
        """arq's main loop with its fixed-interval poll replaced by a wake-up and a batch take."""
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        renewer = asyncio.create_task(self.claims.renew_forever(self._lapsed), name="actionq-lease-renewal")
        tender = asyncio.create_task(self.limits.tend_forever(), name="actionq-limit-tending")
        try:
            # Not only the cancel ends the loop: one swallowed on its way (seen rarely, under load, in
            # a drain) would leave the worker idling for ever.
            while not self._stop_requested:
                await self._poll_iteration()
                await self._wait_for_work()
        finally:
            self._closing = True  # a job handed over from now on goes back to its queue
            await self.claims.stop(renewer)
            await self.limits.stop(tender)
            with contextlib.suppress(RedisError, OSError):
                await self.claims.unregister(self.queues)

    def _lapsed(self, arq_job_ids: list[str]) -> None:
        """These jobs' leases lapsed (Redis unreachable for a whole lease): stop their attempts here.

        Another worker may take them once Redis is back; each goes back to its queue (a settlement
        fenced by the attempt, which writes nothing if another attempt holds the job by then).
        """
        for arq_id in arq_job_ids:
            task = self.tasks.get(arq_id)
            if task is not None and not task.done():
                task.cancel()

    def _stop(self, signum: signal.Signals) -> None:
        self._stop_requested = True
        if not self.runtime.stop_reason:  # a control command or the parent watch says more
            self.runtime.stop_reason = f"{signum.name}" + (" (its parent exited)" if _orphaned() else "")
        self.runtime.wake.set()

    async def _wait_for_work(self) -> None:
        # A listing must be renewed before it runs out, whatever poll_delay_s says: submits find
        # only listed workers (an unlisted one with room would wait for its fallback poll).
        wait_s = min(self.poll_delay_s, self.claims.renew_listing_in_s())
        if self._next_due_ms is not None:
            wait_s = min(wait_s, max(0.0, (self._next_due_ms - timestamp_ms()) / 1000))
        wake = self.runtime.wake
        # asyncio.timeout, not wait_for: on Python 3.11, wait_for returns normally when the event is
        # set in the same loop turn as a cancel (shutdown), and the worker would go on taking jobs.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await wake.wait()
        wake.clear()

    def _release_sem_dec_counter_on_complete(self) -> None:
        # arq's semaphore is not used: a take asks for no more jobs than there are free slots.
        self.job_counter -= 1
        if not self._saturated:
            return
        # Ready jobs were left waiting for a free slot: look again, for several freed slots at once.
        if not self._refill_window_s or self.max_jobs - self.job_counter >= self._refill_at:
            self._refill()
        elif self._refill_timer is None:
            self._refill_timer = self.loop.call_later(self._refill_window_s, self._refill)

    def _refill(self) -> None:
        if self._refill_timer is not None:
            self._refill_timer.cancel()
            self._refill_timer = None
        if self._saturated:
            self._saturated = False
            self.runtime.wake.set()

    async def close(self) -> None:
        """arq's ``close``, less its error when a running job was handed back (arq gathers the job
        tasks without ``return_exceptions``, so a task cancelled by the shutdown raised out of it)."""
        if not self._handle_signals:
            self.handle_sig(signal.SIGUSR1)
        if not self._pool:
            return
        if self._taking is not None:  # a take the stop cut short gives its jobs back (bounded: leases lapse)
            await asyncio.wait({self._taking}, timeout=_TIDY_S)
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        await asyncio.gather(*self._chores, return_exceptions=True)  # jobs given back as their tasks ended
        with contextlib.suppress(TimeoutError):  # arq's health line expires by itself: best effort, bounded
            async with asyncio.timeout(_TIDY_S):
                await self.pool.delete(self.health_check_key)
        if self.on_shutdown:
            await self.on_shutdown(self.ctx)
        if is_cluster(self.pool):
            await self.pool.aclose()
        else:
            await self.pool.close(close_connection_pool=True)
        self._pool = None

    async def _poll_iteration(self) -> None:
        """One round of the loop; a lost Redis connection is waited out with backoff, not fatal."""
        try:
            await self._poll_queues()
        except (RedisError, RedisClusterException) as exc:  # a script error must not stop the loop either
            if not isinstance(exc, RedisConnectionError | RedisTimeoutError):
                log.error("poll_failed", error=str(exc))
            await self._back_off(exc)
        except OSError as exc:
            await self._back_off(exc)
        else:
            if self._backoff_s:
                log.info("redis_reconnected")
            self._backoff_s = 0.0

    async def _back_off(self, exc: BaseException) -> None:
        """Wait out a failed poll, longer each time (Redis down or restarting)."""
        if not self._backoff_s:
            self.runtime.worker_error("poll", exc)
        self._backoff_s = min(max(self._backoff_s * 2, _BACKOFF_MIN_S), _BACKOFF_MAX_S)
        log.warning("redis_unavailable", error=str(exc), retry_in_s=self._backoff_s)
        await asyncio.sleep(self._backoff_s)

    async def _poll_queues(self) -> None:
        if self._delisting is not None:  # its ZREMs must not land after the listings this take writes
            await self._delisting
            self._delisting = None
        free = self.max_jobs - self.job_counter
        if not self.allow_pick_jobs:
            await self.claims.unregister(self.queues)  # paused or draining: submits must not hand jobs here
        elif free > 0:
            start = next(self._rotation)  # rotate which queue goes first, for fairness
            queues = self.queues[start:] + self.queues[:start]
            take = await self._take(queues, free)
            self._next_due_ms = take.next_due_ms
            if len([job for job in take.jobs if job.claimed]) == free:
                self._saturated = True  # maybe more were ready: look again when a slot frees up
            if take.failed is not None:  # a partition's call failed: back off, its jobs' claims stand
                raise take.failed
        else:
            self._saturated = True  # full (a handoff filled the last slot): look again when one frees up
        await self.heart_beat()

    async def _take(self, queues: list[str], free: int) -> Take:
        """A take that a shutdown does not cut in half: its scripts may have claimed jobs (their
        records already say running) when the stop arrives. The take and the launch of its jobs go
        on in a task of their own (:attr:`_taking`): with a grace period the stop waits for it, and
        the jobs run as any other running job does (:meth:`_sleep_until_tasks_complete`); without
        one they go back to their queues at once, not when their leases lapse (on a cluster a take
        is a call per partition, in flight longer)."""
        self._taking = asyncio.ensure_future(self._take_and_launch(queues, free))
        self._taking.add_done_callback(_consumed)  # failed after its caller was cancelled: not "never retrieved"
        return await asyncio.shield(self._taking)

    async def _take_and_launch(self, queues: list[str], free: int) -> Take:
        take = await self.claims.take(queues, timestamp_ms(), free, advertise=True, idle=self.job_counter == 0)
        main = self.main_task
        if self._closing or self._stop_requested or (main is not None and main.cancelling()):
            claimed = [job for job in take.jobs if job.claimed]  # stopping now: nothing more starts
            await asyncio.gather(*(self._give_back(job) for job in claimed), return_exceptions=True)
            return Take([], take.next_due_ms, take.failed)
        for job in take.jobs:
            self._launch(job)
        return take

    async def _sleep_until_tasks_complete(self) -> None:
        """arq's wait for the running jobs in a graceful stop, after the take in flight if there is
        one: the jobs it claimed are launched, and waited for with the others."""
        if self._taking is not None and not self._taking.done():
            await asyncio.wait({self._taking})
        await super()._sleep_until_tasks_complete()

    def adopt(self, job: TakenJob) -> None:
        """Run a job a submit handed straight to this worker (``service/redis/lua/submit.lua``).

        A hand-off older than half the lease is checked against the claim first: it may have waited
        in a stalled connection while the claim lapsed and another worker ran the job.
        """
        # With signing keys every hand-off is checked: a replayed one must not run without its claim.
        if self.runtime.signer.enabled or not self.claims.is_fresh(job):
            self.claims.woken(job.queue)  # the listing was used up all the same
            self._background(self._adopt_if_ours(job), f"actionq-check-handoff-{job.job_id}")
            return
        self._adopt(job)

    async def _adopt_if_ours(self, job: TakenJob) -> None:
        try:
            ours = await self.claims.still_ours(job)
        except (RedisError, OSError) as exc:
            log.warning("handoff_not_checked", job_id=job.job_id, error=str(exc), reason="its lease will lapse")
            return
        if ours:
            self._adopt(job)
        else:
            log.warning("stale_handoff_dropped", job_id=job.job_id, reason="its claim lapsed: another attempt has it")
            self.runtime.wake.set()

    def _adopt(self, job: TakenJob) -> None:
        self.claims.handed(job)
        runnable = self.allow_pick_jobs and not self._closing and self.job_counter < self.max_jobs
        if runnable and job.queue in self.queues:
            # No look now: the submit listed this worker as one to wake in that queue, so the next
            # job there wakes it, naming the job; it lists itself again when a take runs.
            self._launch(job)
            if self.job_counter >= self.max_jobs:
                self._filled_by_handoff()
        else:  # paused, stopping, full, or the plugin just went: back to its queue, ready, for another worker
            self._background(self._give_back(job), f"actionq-give-back-{job.job_id}")

    def _filled_by_handoff(self) -> None:
        """The last slot is taken: leave the idle sets of the other queues, where this worker is still
        listed as idle, so that their submits hand their jobs to a worker that can run them rather
        than to this one, which would only give them back. The take after a slot frees lists it again."""
        self._saturated = True
        if self._delisting is None:
            self._delisting = asyncio.create_task(self._unlist(), name="actionq-unlist-full")

    async def _unlist(self) -> None:
        try:
            await self.claims.unregister(self.queues)
        except (RedisError, RedisClusterException, OSError) as exc:  # the listings lapse on their own
            log.warning("unlist_failed", error=str(exc) or type(exc).__name__)

    def woken(self, queue: str, arq_job_id: str = "") -> None:
        """A submit to ``queue`` found this worker listed as one to wake: look now (for that job first)."""
        self.claims.woken(queue, arq_job_id)
        self.runtime.wake.set()

    async def _give_back(self, job: TakenJob) -> None:
        back = settle.requeued(job, worker_id=self.runtime.worker_id, started=False)
        try:
            await self.runtime.executor.settler.settle(back)
            await publish(self.pool, self.runtime.keys.wake_channel(), job.queue)
        finally:
            self.claims.release(job.arq_job_id)

    def _background(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    def _launch(self, job: TakenJob) -> None:
        if not job.claimed:
            log.info("job_not_started", job_id=job.job_id, reason=f"its record is {job.status}; it left its queue")
            return
        self.job_counter += 1
        # Its concurrency limits' slots first (service.worker.limits): refused, it goes back to its queue.
        task = self.loop.create_task(self._begin(job), name=f"actionq-job-{job.job_id}")
        task.add_done_callback(lambda done: self._done(job, done))
        self.tasks[job.arq_job_id] = task

    async def _begin(self, job: TakenJob) -> None:
        self._begun.add(job.arq_job_id)
        await self.limits.guard(job, self._run)

    def _done(self, job: TakenJob, task: asyncio.Task[None]) -> None:
        arq_job_id = job.arq_job_id
        # Out of arq's task list at once: its shutdown waits while the list is not empty.
        if self.tasks.get(arq_job_id) is task:
            del self.tasks[arq_job_id]
        if arq_job_id not in self._begun:
            # Cancelled before it ran a step (a shutdown right after the take): nothing of it ran,
            # so nothing put it back; it goes back now rather than when its lease lapses.
            self._background(self._give_back(job), f"actionq-give-back-{job.job_id}")
        self._begun.discard(arq_job_id)
        self._release_sem_dec_counter_on_complete()
        if self.job_counter == 0 and not self.claims.listed:
            self.runtime.wake.set()  # idle now: look for work, and list this worker if there is none

    async def _run(self, job: TakenJob) -> None:
        """Run a taken job; arq's counters (its health-check line) follow the outcome."""
        try:
            outcome = await self.runtime.run(job)
        except asyncio.CancelledError:
            self.jobs_retried += 1  # shutting down: the executor put it back in its queue
            raise
        except Exception:
            self.jobs_failed += 1
            log.exception("job_not_settled", job_id=job.job_id, reason="its lease will lapse and it will run again")
            return
        finally:
            self.claims.release(job.arq_job_id)
        if outcome is None or outcome.state is JobState.SUCCEEDED:
            self.jobs_complete += 1
        elif outcome.state is JobState.RETRYING:
            self.jobs_retried += 1
        else:
            self.jobs_failed += 1


async def _stop_runtime(ctx: dict[str, Any]) -> None:
    # arq calls this after the running jobs are done and before it closes the connection pool.
    runtime: WorkerRuntime = ctx["actionq"]
    await runtime.stop()


def build_worker(runtime: WorkerRuntime) -> ActionWorker:
    """An ``ActionWorker`` for a started runtime (plugins loaded, so its queues are known)."""
    settings = runtime.settings
    # arq's pool shares the runtime's connections; arq never enqueues or reads a job body here,
    # so it gets no serializers (there is no pickle anywhere in actionq either way).
    # On Redis Cluster, the cluster client itself: arq's shell sends it only single-key commands (its
    # health line), and takes and settles go through actionq's own calls, one slot each.
    pool = (
        cast(ArqRedis, runtime.redis)
        if is_cluster(runtime.redis)
        else ArqRedis(connection_pool=runtime.redis.connection_pool)
    )
    return ActionWorker(
        runtime,
        pool,
        functions=[func(run_action, name=arqformat.FUNCTION)],
        ctx={"actionq": runtime},
        on_shutdown=_stop_runtime,
        max_jobs=settings.concurrency,
        poll_delay=settings.poll_delay_s,
        job_completion_wait=settings.shutdown_grace_s,
        health_check_interval=settings.heartbeat_s,
        health_check_key=runtime.keys.arq_health(runtime.worker_id),
    )


_MIN_SOCKET_TIMEOUT_S = 5.0
_TIDY_S = 3.0  # a shutdown's deletion of the health line: best effort


def _orphaned() -> bool:
    """This worker was started by a pool or by ``up`` and that parent is gone (its SIGTERM came from the kernel)."""
    parent = expected_parent()
    return parent is not None and os.getppid() != parent


CallerFactory = Callable[[Redis, Settings], JobCaller]
"""Builds the submitting side of plugin-to-plugin calls on the worker's connection (the CLI passes
one: the worker itself never imports the client, see service.plugins.calls)."""


async def run_worker(settings: Settings, caller_factory: CallerFactory | None = None) -> None:
    """Run a worker until SIGINT/SIGTERM: plugins, registry, arq loop, clean shutdown."""
    if settings.redis_url is None:
        raise ConfigError("no Redis configured for the worker: set redis_url in config.yml or ACTIONQ_REDIS_URL")
    # A command that gets no reply fails after a while instead of hanging: over a partition
    # (packets dropped, the connection still open) the worker notices, as it does a reset. The
    # worker sends no blocking command; its pub/sub reads pass their own timeouts.
    timeout_s = max(_MIN_SOCKET_TIMEOUT_S, 2 * settings.lease_s)
    _dump_on_sigusr2(asyncio.get_running_loop())
    redis = connect(settings.redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    caller = caller_factory(redis, settings) if caller_factory is not None else None
    runtime = WorkerRuntime(settings, redis, caller=caller)
    try:
        await runtime.start(on_control=ControlHandler(runtime).on_message)
    except BaseException:
        await runtime.stop()
        await runtime.redis.aclose()
        raise
    worker = build_worker(runtime)
    runtime.attach(worker)
    settle_heap()  # what exists now lives as long as the process (service.processes.heap says why)
    try:
        await worker.async_run()
    except asyncio.CancelledError:
        log.info("worker_stopping")
    finally:
        try:
            await worker.close()  # waits for running jobs, stops the runtime, closes the pool
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            log.warning("redis_unavailable_at_shutdown", error=str(exc))
        finally:
            await runtime.stop()  # no-op if arq's on_shutdown already ran it
            if caller is not None:
                await caller.close()


def main(settings: Settings, caller_factory: CallerFactory | None = None) -> None:
    """Blocking entry point used by ``actionq worker`` and ``python -m workers``.

    A worker started by a pool or by ``actionq up`` ends with that parent (:mod:`service.processes.parent`).
    """
    configure_logging(settings.log_format, settings.log_level)
    # SIGUSR2: every thread's stack to stderr, the process going on (a worker that does not stop
    # says where it is; docs/operations.md). faulthandler's C handler: no Python needs to run.
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    if not die_with_parent():
        log.warning("parent_gone", parent_pid=expected_parent(), reason="the process that started this worker exited")
        return
    with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
        runner.run(run_worker(settings, caller_factory))


def _dump_on_sigusr2(loop: asyncio.AbstractEventLoop) -> None:
    """SIGUSR2 dumps every thread's stack (faulthandler, in C: it works while the loop is blocked),
    then, once the loop runs the signal's callback, every asyncio task's stack: a worker whose loop
    idles while its shutdown waits on something says which await that is."""
    faulthandler.unregister(signal.SIGUSR2)  # so that the loop's handler comes first, then chained
    loop.add_signal_handler(signal.SIGUSR2, _dump_tasks)
    faulthandler.register(signal.SIGUSR2, all_threads=True, chain=True)


def _dump_tasks() -> None:
    tasks = asyncio.all_tasks()
    print(f"asyncio tasks ({len(tasks)}), each at its await, outermost first:", file=sys.stderr)
    for task in tasks:
        print(f"--- task {task.get_name()}: {task!r}", file=sys.stderr)
        for line in _await_chain(task.get_coro())[:_TASK_FRAMES]:
            print(line, file=sys.stderr)
    sys.stderr.flush()


def _await_chain(coro: object) -> list[str]:
    """Where a suspended coroutine is: its frame, the frame of what it awaits, and so on down
    (``Task.get_stack`` gives only the outermost frame of a suspended task)."""
    lines: list[str] = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            lines.append(f'  File "{frame.f_code.co_filename}", line {frame.f_lineno}, in {frame.f_code.co_name}')
        coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None) or getattr(coro, "gi_yieldfrom", None)
    return lines


_TASK_FRAMES = 30
"""Frames printed per asyncio task on SIGUSR2."""


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop ``event_loop`` asks for: uvloop's (``auto``: if importable) or asyncio's (``None``).

    uvloop runs the same code with its transports and scheduling in C: the worker's own Python per
    job (socket writes, callbacks) is what it saves (docs/benchmarks.md has the figures).
    """
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("event_loop is uvloop, but uvloop is not installed (pip install uvloop)") from None
        return None
    return uvloop.new_event_loop


def _consumed(done: asyncio.Future[Any]) -> None:
    """Mark a finished future's outcome as read (the caller that would have read it was cancelled)."""
    if not done.cancelled():
        done.exception()
