"""Settling against fakeredis: states published with sequence numbers, final records in arq's result, lapsed leases."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest_asyncio
import redis.asyncio as aioredis
from arq.jobs import deserialize_result

from service.client.client import JobClient
from service.models import JobState, now_ms
from service.wire import loads
from service.worker.settle import Settlement, Settler
from service.worker.take import Claims
from tests.unit.fakes import fake_client, register


@pytest_asyncio.fixture
async def client(fake_redis: aioredis.Redis) -> AsyncIterator[JobClient]:
    client = fake_client(fake_redis)
    yield client
    await client.close()


async def test_take_and_settle_publish_with_sequence_numbers(client: JobClient) -> None:
    await register(client, "PluginB")
    handle = await client.submit("PluginB", "calculate_square", {"x": 1}, job_id="s1")
    quiet = await client.submit("PluginB", "calculate_square", {"x": 2}, job_id="s2")  # nobody follows it
    queue = (await handle.record()).queue
    claims = Claims(client.redis, client.keys, worker_id="w", lease_s=3)
    settler = Settler(client.redis, client.keys)
    async with (
        client.pubsub.subscribe(client.keys.job_channel("s1")) as sub,
        client.pubsub.subscribe(client.keys.job_channel("s2")) as unwatched,
    ):
        await handle.record(watch=True)  # subscribe, then read with watch: from now on it is published
        take = await claims.take([queue], now_ms(), limit=5)
        started = loads(await sub.get(5) or b"null")
        done = Settlement(
            job_id="s1", queue=queue, state=JobState.SUCCEEDED, attempt=1, fields={"result": "1"}, result_ttl_s=60
        )
        seq = await settler.settle(done)
        ended = loads(await sub.get(5) or b"null")
        await settler.settle(Settlement(job_id="s2", queue=queue, state=JobState.SUCCEEDED, attempt=1, result_ttl_s=60))
        await client.redis.publish(client.keys.job_channel("s2"), b"marker")  # after whatever the settle published
        assert await unwatched.get(5) == b"marker"  # nobody follows s2: nothing was published for it
    assert [(j.job_id, j.status, j.attempt) for j in take.jobs] == [("s1", "run", 1), ("s2", "run", 1)]
    assert started == {"type": "state", "job_id": "s1", "state": "running", "attempt": 1, "seq": 1}
    assert (seq, ended) == (2, {"type": "state", "job_id": "s1", "state": "succeeded", "attempt": 1, "seq": 2})
    record = await handle.record()
    assert (record.state, record.seq, record.worker, record.result) == (JobState.SUCCEEDED, 2, "w", 1)
    assert (await quiet.record()).state is JobState.SUCCEEDED
    assert await client.redis.zcard(queue) == 0
    # A record that is gone is not recreated; one that ended is not changed again.
    gone = Settlement(job_id="missing", queue=queue, state=JobState.SUCCEEDED, attempt=1)
    assert await settler.settle(gone) == -1
    assert not await client.redis.exists("ut:job:missing")
    assert await settler.settle(done) == -2
    cancelled = await client.submit("PluginB", "calculate_square", {"x": 3}, job_id="s3")
    await cancelled.cancel()
    late = Settlement(job_id="s3", queue=queue, state=JobState.SUCCEEDED, attempt=1, fields={"result": "9"})
    assert await settler.settle(late) == -2
    assert (await cancelled.record()).state is JobState.CANCELLED


async def test_an_ended_job_keeps_one_key_its_final_record_in_arqs_result(client: JobClient) -> None:
    await register(client, "PluginB")
    handle = await client.submit("PluginB", "calculate_square", {"x": 5}, job_id="f1", result_ttl_s=60)
    queue = (await handle.record()).queue
    await Claims(client.redis, client.keys, worker_id="w", lease_s=3).take([queue], now_ms(), limit=5)
    settled = Settlement(
        job_id="f1", queue=queue, state=JobState.SUCCEEDED, attempt=1, fields={"result": "25"}, result_ttl_s=60
    )
    request = await client.redis.hget(client.keys.job("f1"), "request")  # type: ignore[misc]
    arq_result = b'{"t":1,"f":"run_action","a":[],"et":1,"s":true,"r":25,"st":2,"ft":3,"k":{"request":%s}}' % request
    assert (
        await Settler(client.redis, client.keys).settle(replace(settled, arq_result=arq_result, result_ttl_s=60)) == 2
    )
    assert not await client.redis.exists(client.keys.job("f1"))
    assert 0 < await client.redis.pttl(client.keys.arq_result("f1")) <= 60_000
    record = await handle.record()
    assert (record.state, record.result, record.worker, record.attempt, record.seq) == (
        JobState.SUCCEEDED,
        25,
        "w",
        1,
        2,
    )
    assert record.request.params == {"x": 5}
    arq_view = deserialize_result(await client.redis.get(client.keys.arq_result("f1")), deserializer=json.loads)
    assert (arq_view.success, arq_view.result, arq_view.job_try) == (True, 25, 1)
    # The same id again: the ended job is found (idempotent), not run twice.
    again = await client.submit("PluginB", "calculate_square", {"x": 5}, job_id="f1")
    assert not again.created
    assert await client.redis.zcard(queue) == 0
    assert (await client.store.cancel("f1", reason="late", now_ms=now_ms(), ttl_s=60)) == ("finished", "succeeded")


async def test_an_attempt_whose_lease_lapsed_does_not_settle_the_one_that_took_over(client: JobClient) -> None:
    await register(client, "PluginB")
    handle = await client.submit("PluginB", "calculate_square", {"x": 4}, job_id="lap1")
    queue = (await handle.record()).queue
    settler = Settler(client.redis, client.keys)
    first = Claims(client.redis, client.keys, worker_id="w-a", lease_s=3)
    [a] = (await first.take([queue], now_ms(), limit=5)).jobs
    # w-a stops renewing (its loop blocked): the lease lapses and w-b takes the job, attempt 2.
    await client.redis.delete(client.keys.arq_in_progress("lap1"))
    second = Claims(client.redis, client.keys, worker_id="w-b", lease_s=3)
    [b] = (await second.take([queue], now_ms() + 3_500, limit=5)).jobs
    assert (a.attempt, b.attempt) == (1, 2)
    late = Settlement(
        job_id="lap1", queue=queue, state=JobState.SUCCEEDED, attempt=1, fields={"result": "16"}, owner=("w-a", 1)
    )
    assert await settler.settle(replace(late, arq_result=b'{"t":1,"k":{"request":null}}', result_ttl_s=60)) == -3
    record = await handle.record()
    assert (record.state, record.attempt, record.worker) == (JobState.RUNNING, 2, "w-b")  # untouched
    assert await client.redis.zscore(queue, client.keys.arq_job_id("lap1")) is not None  # still w-b's
    assert await client.redis.get(client.keys.arq_in_progress("lap1")) == b"w-b"
    assert not await client.redis.exists(client.keys.arq_result("lap1"))
    request = await client.redis.hget(client.keys.job("lap1"), "request")  # type: ignore[misc]
    done = replace(
        late, attempt=2, owner=("w-b", 2), arq_result=b'{"t":2,"k":{"request":%s}}' % request, result_ttl_s=60
    )
    assert await settler.settle(done) > 0
    assert (await handle.record()).state is JobState.SUCCEEDED
    assert await client.redis.zcard(queue) == 0
