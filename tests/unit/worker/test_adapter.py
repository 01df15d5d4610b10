"""arq's shell around the take, on fakeredis: what a shutdown in the middle of a take leaves."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

from service.client.client import JobClient
from service.client.handle import JobHandle
from service.models import JobState
from service.settings import Settings
from service.worker.adapter import ActionWorker, build_worker
from service.worker.runtime import WorkerRuntime
from service.worker.take import handed_job
from tests.unit.fakes import fake_client, register


class _Unclosed:
    """The worker's pool, less its closing (the test reads the fake Redis afterwards)."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

    def __getattr__(self, name: str) -> Any:
        return getattr(self._redis, name)

    async def close(self, **_: Any) -> None:
        return None


async def _taking_with_the_reply_held(
    fake_redis: aioredis.Redis,
) -> tuple[JobClient, JobHandle, ActionWorker, asyncio.Task[None], asyncio.Event]:
    """A worker polling (as arq's main task) whose take script has run in Redis (the job's record
    says running) while its reply is held until the returned event is set."""
    client = fake_client(fake_redis)
    await register(client, "PluginB")
    handle = await client.submit("PluginB", "calculate_square", {"x": 2})
    runtime = WorkerRuntime(Settings(redis_url="redis://fake", namespace="ut", hostname="here"), fake_redis)
    worker = build_worker(runtime)
    worker.queues = client.keys.every_queue_set([client.keys.queue("PluginB")])
    ran, reply = asyncio.Event(), asyncio.Event()
    script = worker.claims._take

    async def slow_reply(**call: Any) -> Any:
        answer = await script(**call)
        if len(answer) > 3:  # a reply naming taken jobs (the first only lists the ready ones)
            ran.set()
            await reply.wait()
        return answer

    worker.claims._take = slow_reply  # type: ignore[assignment]
    poll = asyncio.create_task(worker._poll_queues())
    worker.main_task = poll  # as arq runs it: its stop cancels the main task
    await ran.wait()
    return client, handle, worker, poll, reply


async def test_jobs_a_take_claimed_as_the_shutdown_cut_it_short_go_back_to_their_queue(
    fake_redis: aioredis.Redis,
) -> None:
    client, handle, worker, poll, reply = await _taking_with_the_reply_held(fake_redis)
    assert (await handle.record()).state is JobState.RUNNING
    poll.cancel()
    await asyncio.gather(poll, return_exceptions=True)
    worker.on_shutdown = None  # this test started no runtime
    worker._pool = _Unclosed(fake_redis)  # type: ignore[assignment]
    closing = asyncio.create_task(worker.close())  # arq's close, after the main task ended
    for _ in range(5):
        await asyncio.sleep(0)
    reply.set()  # the reply arrives while the worker closes: its jobs go back before the pool closes
    await closing
    record = await handle.record()
    assert (record.state, record.attempt, record.worker) == (JobState.QUEUED, 0, "")
    assert await fake_redis.get(client.keys.arq_in_progress(handle.job_id)) is None  # no lease left behind
    assert worker.claims.held == frozenset()
    await client.close()


async def test_a_handoff_that_fills_the_last_slot_takes_the_worker_off_its_other_queues(
    fake_redis: aioredis.Redis,
) -> None:
    """Still listed as idle in its other queues, a full worker would be handed their jobs only to give
    them back: it leaves those idle sets, and the next take after a slot frees lists it again."""
    client = fake_client(fake_redis)
    for plugin in ("PluginB", "long_running"):
        await register(client, plugin)
    settings = Settings(redis_url="redis://fake", namespace="ut", hostname="here", concurrency=1)
    worker = build_worker(WorkerRuntime(settings, fake_redis))
    keys, worker_id = client.keys, worker.runtime.worker_id
    worker.queues = keys.every_queue_set([keys.queue("PluginB"), keys.queue("long_running")])
    await worker._poll_queues()  # nothing ready: listed as idle in both queues
    idle_sets = [keys.idle_workers(queue) for queue in worker.queues]
    assert None not in [await fake_redis.zscore(s, worker_id) for s in idle_sets]
    hand_offs = fake_redis.pubsub()
    await hand_offs.subscribe(keys.worker_channel(worker_id))  # the worker's ear: the submit hands over
    await hand_offs.get_message(timeout=1)  # the subscribe confirmation
    handle = await client.submit("long_running", "count_slowly", {"steps": 1, "delay_s": 0})
    message = await hand_offs.get_message(timeout=1)
    assert message is not None
    assert message["type"] == "message"
    worker.adopt(handed_job(message["data"], keys))
    assert worker.job_counter == 1  # launched (its plugin is not loaded here: it fails at once)
    assert worker._delisting is not None
    await worker._delisting
    for idle in idle_sets:
        assert await fake_redis.zrange(idle, 0, -1) == []
    await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
    assert (await handle.record()).worker == worker_id
    assert worker.runtime.wake.is_set()  # the freed slot: look again
    await worker._poll_queues()
    assert None not in [await fake_redis.zscore(s, worker_id) for s in idle_sets]
    await hand_offs.aclose()  # type: ignore[no-untyped-call]
    await client.close()


async def test_a_graceful_stop_waits_for_the_take_in_flight_and_runs_its_jobs(fake_redis: aioredis.Redis) -> None:
    """SIGTERM with a grace period while a take's reply is on its way: the job it claimed (its
    record says running) is launched and waited for like any running job, not handed back."""
    client, handle, worker, poll, reply = await _taking_with_the_reply_held(fake_redis)
    worker.allow_pick_jobs = False  # what arq's graceful signal handler does first
    waiting = asyncio.create_task(worker._sleep_until_tasks_complete())
    for _ in range(3):
        await asyncio.sleep(0)
    reply.set()
    await waiting
    record = await handle.record()
    assert record.state.is_terminal, record  # it ran here (and failed: no plugin is loaded in this test)
    assert record.worker == worker.runtime.worker_id
    await poll
    await client.close()


def _saturated_worker(fake_redis: aioredis.Redis, window_ms: float) -> ActionWorker:
    """A worker of 8 slots, all running, that left ready jobs waiting for a free one."""
    settings = Settings(redis_url="redis://fake", namespace="ut", hostname="here", concurrency=8)
    worker = build_worker(WorkerRuntime(settings.model_copy(update={"batch_window_ms": window_ms}), fake_redis))
    worker.job_counter, worker._saturated = 8, True
    return worker


def _timer(worker: ActionWorker) -> asyncio.TimerHandle | None:
    return worker._refill_timer  # read through a call: mypy keeps no narrowing across the awaits


async def test_under_load_freed_slots_are_refilled_by_one_take_after_the_window(fake_redis: aioredis.Redis) -> None:
    worker = _saturated_worker(fake_redis, window_ms=1.0)
    wake = worker.runtime.wake
    worker._release_sem_dec_counter_on_complete()  # one slot of 8 free: wait for others to end
    assert not wake.is_set()
    assert _timer(worker) is not None
    await asyncio.wait_for(wake.wait(), timeout=5)  # the window passed: a take for what is free by now
    assert (worker._saturated, _timer(worker)) == (False, None)


async def test_a_quarter_of_the_slots_free_is_refilled_at_once(fake_redis: aioredis.Redis) -> None:
    worker = _saturated_worker(fake_redis, window_ms=100.0)
    wake = worker.runtime.wake
    worker._release_sem_dec_counter_on_complete()
    assert not wake.is_set()
    worker._release_sem_dec_counter_on_complete()  # 2 of 8 free: no need to wait for the window
    assert wake.is_set()
    assert (worker._saturated, worker._refill_timer) == (False, None)


async def test_with_no_window_each_freed_slot_is_refilled_at_once(fake_redis: aioredis.Redis) -> None:
    worker = _saturated_worker(fake_redis, window_ms=0.0)
    worker._release_sem_dec_counter_on_complete()
    assert worker.runtime.wake.is_set()
    assert worker._refill_timer is None
