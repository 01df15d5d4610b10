"""Taking jobs against fakeredis: the idle listing, a submit handing a job to an idle worker, wake-ups."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest_asyncio
import redis.asyncio as aioredis

from service.client.client import JobClient
from service.models import JobRequest, JobState, now_ms
from service.worker.take import IDLE_TTL_S, Claims, handed_job
from tests.unit.fakes import fake_client, register


@pytest_asyncio.fixture
async def client(fake_redis: aioredis.Redis) -> AsyncIterator[JobClient]:
    client = fake_client(fake_redis)
    yield client
    await client.close()


async def test_an_idle_worker_is_handed_a_ready_job_by_the_submit_itself(client: JobClient) -> None:
    await register(client, "PluginB")
    queue = client.keys.queue("PluginB")
    claims = Claims(client.redis, client.keys, worker_id="w-idle", lease_s=3)
    assert (await claims.take([queue], now_ms(), limit=5, advertise=True, idle=True)).jobs == []  # listed
    assert await client.redis.zscore(client.keys.idle_workers(queue), "w-idle") > now_ms()
    assert 0 < await client.redis.pttl(client.keys.idle_workers(queue)) <= IDLE_TTL_S * 1000
    async with client.pubsub.subscribe(client.keys.worker_channel("w-idle")) as inbox:
        handle = await client.submit("PluginB", "calculate_square", {"x": 3}, job_id="h1")
        handed = handed_job(await inbox.get(5) or b"", client.keys)
    assert (handed.job_id, handed.queue, handed.status, handed.attempt) == ("h1", queue, "run", 1)
    assert JobRequest.model_validate_json(handed.request).params == {"x": 3}
    record = await handle.record()
    assert (record.state, record.worker, record.attempt, record.seq) == (JobState.RUNNING, "w-idle", 1, 1)
    assert await client.redis.get(client.keys.arq_in_progress("h1")) == b"w-idle"  # claimed, leased
    assert await client.redis.zscore(queue, client.keys.arq_job_id("h1")) > now_ms()  # out of the ready window
    assert await client.redis.zscore(client.keys.idle_workers(queue), "w-idle") is None  # one job per listing
    # The next submit finds nobody idle: queued, and the workers are woken instead.
    assert (await (await client.submit("PluginB", "calculate_square", {"x": 4})).record()).state is JobState.QUEUED


async def test_no_handoff_for_a_deferred_job_or_a_stale_listing_or_a_full_worker(client: JobClient) -> None:
    await register(client, "PluginB")
    queue, idle = client.keys.queue("PluginB"), client.keys.idle_workers(client.keys.queue("PluginB"))
    await client.redis.zadd(idle, {"w-gone": now_ms() - 1})  # its listing ran out (killed while idle)
    later = await client.submit("PluginB", "calculate_square", {"x": 1}, defer_s=60)
    assert (await later.record()).state is JobState.QUEUED
    now = await client.submit("PluginB", "calculate_square", {"x": 1})
    assert (await now.record()).state is JobState.QUEUED
    # A worker with nothing to do is listed as itself (for a handoff), one with jobs running and free
    # slots as "~" itself (to be woken), a full one not at all.
    claims = Claims(client.redis, client.keys, worker_id="w-busy", lease_s=3)
    take = await claims.take([queue], now_ms(), limit=1, advertise=True, idle=True)
    assert len(take.jobs) == 1  # took as many as it had room for: not listed
    assert await client.redis.zrangebyscore(idle, now_ms(), "+inf") == []
    assert (await claims.take([queue], now_ms(), limit=5, advertise=True)).jobs == []  # a job runs, room for 5
    assert await client.redis.zrangebyscore(idle, now_ms(), "+inf") == [b"~w-busy"]
    assert (await claims.take([queue], now_ms(), limit=5, advertise=True, idle=True)).jobs == []  # nothing runs
    assert await client.redis.zrangebyscore(idle, now_ms(), "+inf") == [b"w-busy"]
    await client.submit("PluginB", "calculate_square", {"x": 2}, defer_s=0.001)  # not handed over: deferred
    await asyncio.sleep(0.01)
    assert len((await claims.take([queue], now_ms(), limit=5, advertise=True, idle=True)).jobs) == 1
    assert await client.redis.zrangebyscore(idle, now_ms(), "+inf") == [b"~w-busy"]  # busy now: to be woken
    assert not claims.listed


async def test_a_busy_worker_with_room_is_woken_once_by_a_submit(client: JobClient) -> None:
    await register(client, "PluginB")
    queue, idle = client.keys.queue("PluginB"), client.keys.idle_workers(client.keys.queue("PluginB"))
    claims = Claims(client.redis, client.keys, worker_id="w-room", lease_s=3)
    await claims.take([queue], now_ms(), limit=5, advertise=True)  # jobs run elsewhere in it: room for 5
    assert await client.redis.zrange(idle, 0, -1) == [b"~w-room"]
    async with (
        client.pubsub.subscribe(client.keys.worker_channel("w-room")) as inbox,
        client.pubsub.subscribe(client.keys.wake_channel()) as everyone,
    ):
        first = await client.submit("PluginB", "calculate_square", {"x": 1})
        woken = await inbox.get(5)  # woken for that job, not handed it
        assert woken == f"{queue} {client.keys.arq_job_id(first.job_id)}".encode()
        second = await client.submit("PluginB", "calculate_square", {"x": 2})
        # Published after the second submit, a marker arrives after whatever that submit published.
        await client.redis.publish(client.keys.worker_channel("w-room"), b"marker")
        await client.redis.publish(client.keys.wake_channel(), b"marker")
        assert await inbox.get(5) == b"marker"  # woken once: it takes both in its next take
        assert await everyone.get(5) == b"marker"  # nobody else was woken
    assert (await first.record()).state is (await second.record()).state is JobState.QUEUED
    assert await client.redis.zrange(idle, 0, -1) == []
    claims.woken(queue, client.keys.arq_job_id(first.job_id))
    take = await claims.take([queue], now_ms(), limit=5, advertise=True)
    assert {j.job_id for j in take.jobs} == {first.job_id, second.job_id}
    assert await client.redis.zrange(idle, 0, -1) == [b"~w-room"]  # listed again where it was used up


async def test_a_listed_worker_knows_when_to_renew_its_listing(client: JobClient) -> None:
    await register(client, "PluginB")
    queue = client.keys.queue("PluginB")
    claims = Claims(client.redis, client.keys, worker_id="w-renew", lease_s=3)
    assert claims.renew_listing_in_s() == float("inf")  # not listed: nothing to renew
    await claims.take([queue], now_ms(), limit=5, advertise=True, idle=True)
    # The worker's loop waits no longer than this, whatever its poll_delay_s: the listing (10 s)
    # is renewed when half of it is gone, so an idle worker stays where submits find it.
    assert 0 < claims.renew_listing_in_s() <= IDLE_TTL_S / 2
    await claims.unregister([queue])
    assert claims.renew_listing_in_s() == float("inf")
