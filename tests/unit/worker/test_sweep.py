"""The sweep of unserved queues, against fakeredis: which jobs end, which wait, and the lock."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
import redis.asyncio as aioredis

from service.client.client import JobClient
from service.models import now_ms
from service.worker.sweep import Sweeper
from service.worker.take import TakenJob
from tests.unit.fakes import fake_client

DAY_MS = 86_400_000


@pytest_asyncio.fixture
async def client(fake_redis: aioredis.Redis) -> AsyncIterator[JobClient]:
    client = fake_client(fake_redis)
    yield client
    await client.close()


class Expired:
    """Records what the sweep ends (the executor's settle is tested with the settle script)."""

    def __init__(self) -> None:
        self.jobs: list[tuple[TakenJob, str]] = []

    async def __call__(self, job: TakenJob, reason: str) -> bool:
        self.jobs.append((job, reason))
        return True


def sweeper(client: JobClient, expired: Expired, worker_id: str = "w1") -> Sweeper:
    return Sweeper(client.redis, client.keys, worker_id=worker_id, unserved_expire_s=86_400, expire=expired)


async def _due(client: JobClient, job_id: str, plugin: str, *, ago_ms: int) -> str:
    """A job of ``plugin`` submitted (unvalidated) and made due ``ago_ms`` ago."""
    await client.submit(plugin, "act", {}, job_id=job_id, validate=False)
    queue = client.keys.queue(plugin)
    await client.redis.zadd(queue, {client.keys.arq_job_id(job_id): now_ms() - ago_ms})
    return queue


async def test_a_long_due_job_in_a_queue_nobody_serves_ends(client: JobClient) -> None:
    queue = await _due(client, "old", "Nobody", ago_ms=DAY_MS + 60_000)
    await _due(client, "recent", "Nobody", ago_ms=60_000)  # due for a minute only: it waits
    expired = Expired()
    assert await sweeper(client, expired).sweep() == 1
    [(job, reason)] = expired.jobs
    assert (job.job_id, job.queue, job.status, job.attempt) == ("old", queue, "expired", 0)
    assert repr(queue) in reason
    assert "unserved_expire_s" in reason


async def test_a_queue_served_lately_keeps_its_backlog(client: JobClient) -> None:
    """A lane whose workers are away for a while (a deploy) is not swept: its jobs wait for them."""
    queue = await _due(client, "backlog", "Away", ago_ms=3 * DAY_MS)
    await client.redis.zadd(client.keys.registry_queues(), {queue: now_ms() - 3_600_000})  # served an hour ago
    expired = Expired()
    assert await sweeper(client, expired).sweep() == 0
    await client.redis.zadd(client.keys.registry_queues(), {queue: now_ms() - DAY_MS - 1})  # a day ago
    assert await sweeper(client, expired).sweep() == 1


async def test_one_worker_sweeps_at_a_time(client: JobClient) -> None:
    await _due(client, "old", "Nobody", ago_ms=2 * DAY_MS)
    expired = Expired()
    first, second = sweeper(client, expired, "w1"), sweeper(client, expired, "w2")
    assert await first.maybe_sweep() == 1
    assert await second.maybe_sweep() == 0  # w1 holds the lock for this round
    assert await client.redis.get(client.keys.sweep_lock()) == b"w1"
    assert len(expired.jobs) == 1


async def test_jobs_of_other_namespaces_and_ended_ones_are_left(client: JobClient) -> None:
    queue = await _due(client, "gone", "Nobody", ago_ms=2 * DAY_MS)
    await client.redis.delete(client.keys.job("gone"))  # its record went (ended elsewhere, deleted)
    await client.redis.zadd(queue, {"another-namespace:x": now_ms() - 2 * DAY_MS})
    expired = Expired()
    assert await sweeper(client, expired).sweep() == 0
    assert expired.jobs == []


async def test_a_zero_limit_never_sweeps(client: JobClient) -> None:
    await _due(client, "old", "Nobody", ago_ms=2 * DAY_MS)
    expired = Expired()
    never = Sweeper(client.redis, client.keys, worker_id="w1", unserved_expire_s=0, expire=expired)
    assert await never.maybe_sweep() == 0
    assert not await client.redis.exists(client.keys.sweep_lock())
