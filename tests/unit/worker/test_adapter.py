"""arq's shell around the take, on fakeredis: what a shutdown in the middle of a take leaves."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

from service.models import JobState
from service.settings import Settings
from service.worker.adapter import build_worker
from service.worker.runtime import WorkerRuntime
from tests.unit.fakes import fake_client, register


async def test_jobs_a_take_claimed_as_the_shutdown_cut_it_short_go_back_to_their_queue(
    fake_redis: aioredis.Redis,
) -> None:
    client = fake_client(fake_redis)
    await register(client, "PluginB")
    handle = await client.submit("PluginB", "calculate_square", {"x": 2})
    runtime = WorkerRuntime(Settings(redis_url="redis://fake", namespace="ut", hostname="here"), fake_redis)
    worker = build_worker(runtime)
    worker.queues = client.keys.every_queue_set([client.keys.queue("PluginB")])
    # The script runs in Redis (the job's record says running), and its reply is still on its way
    # when the cancel of the shutdown arrives.
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
    await ran.wait()
    assert (await handle.record()).state is JobState.RUNNING
    poll.cancel()
    reply.set()
    await asyncio.gather(poll, return_exceptions=True)
    await asyncio.gather(*worker._chores)
    record = await handle.record()
    assert (record.state, record.attempt, record.worker) == (JobState.QUEUED, 0, "")
    assert await fake_redis.get(client.keys.arq_in_progress(handle.job_id)) is None  # no lease left behind
    assert worker.claims.held == frozenset()
    await client.close()
