"""submit.lua: every reply branch, on fakeredis and on a real redis-server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import redis.asyncio as aioredis

from service.client.store import CreateResult, JobStore
from service.errors import BrokerError
from service.keys import Keys
from service.models import JobState
from service.redis.pubsub import PubSubMultiplexer
from tests.unit.redis.scripts.conftest import create, now, request_json


async def test_a_fresh_job_is_queued_with_its_record_and_no_ttl(r: aioredis.Redis, store: JobStore, keys: Keys) -> None:
    queue = await create(store, "j1", expires_at_ms=now() + 60_000)
    record = await r.hgetall(keys.job("j1"))  # type: ignore[misc]
    assert record[b"state"] == b"queued"
    assert (record[b"attempt"], record[b"seq"], record[b"queue"]) == (b"0", b"0", queue.encode())
    assert b"expires_at_ms" in record
    assert b"watched" not in record
    assert await r.ttl(keys.job("j1")) == -1  # a live record goes with its job
    assert await r.zscore(queue, keys.arq_job_id("j1")) == float(record[b"scheduled_at_ms"])
    assert not await r.exists(keys.arq_in_progress("j1"))


async def test_a_taken_id_returns_the_live_request_and_state(store: JobStore) -> None:
    await create(store, "j1")
    again = await store.create("j1", request_json(), queue=store.keys.queue("P"), now_ms=now(), score_ms=now())
    assert (again.created, again.existing_state) == (False, JobState.QUEUED)
    assert again.existing_request is not None
    assert again.existing_request.params == {"x": 1}


async def test_an_id_taken_by_an_ended_job_returns_its_final_record(
    r: aioredis.Redis, store: JobStore, keys: Keys
) -> None:
    final = {"k": {"request": json.loads(request_json())}, "actionq": {"state": "succeeded", "queue": "q", "seq": "2"}}
    final["actionq"].update(enqueued_at_ms="1", scheduled_at_ms="1", attempt="1")
    await r.set(keys.arq_result("done"), json.dumps(final))
    again = await store.create("done", request_json(), queue=keys.queue("P"), now_ms=now(), score_ms=now())
    assert (again.created, again.existing_state) == (False, JobState.SUCCEEDED)
    assert not await r.exists(keys.job("done"))


async def test_a_fresh_id_skips_the_look(r: aioredis.Redis, store: JobStore, keys: Keys) -> None:
    await r.hset(keys.job("fresh"), mapping={"state": "queued", "request": request_json()})  # type: ignore[misc]
    created = await store.create(
        "fresh", request_json(), queue=keys.queue("P"), now_ms=now(), score_ms=now(), fresh_id=True
    )
    assert created.created  # a client-generated uuid4 cannot exist: not checked


async def test_a_ready_job_is_handed_to_an_idle_worker(r: aioredis.Redis, store: JobStore, keys: Keys) -> None:
    queue = keys.queue("P")
    listed_until = now() + 10_000
    await r.zadd(keys.idle_workers(queue), {"w1": listed_until})
    mux = PubSubMultiplexer(r)
    try:
        async with (
            mux.subscribe(keys.worker_channel("w1")) as inbox,
            mux.subscribe(keys.job_channel("j1")) as followers,
        ):
            await create(store, "j1", lease_ms=3000, watch=True)
            handed = await inbox.get(5)
            queued = json.loads(await followers.get(5) or b"null")
            running = json.loads(await followers.get(5) or b"null")
    finally:
        await mux.close()
    assert handed is not None
    arq_id, handed_queue, enqueued, signature, request = handed.split(b"\n", 4)
    assert signature == b""  # unsigned: this store has no signing keys
    assert (arq_id, handed_queue, json.loads(request)) == (
        keys.arq_job_id("j1").encode(),
        queue.encode(),
        json.loads(request_json()),
    )
    assert int(enqueued) > 0
    assert queued == {
        "type": "state",
        "job_id": "j1",
        "state": "queued",
        "attempt": 0,
        "seq": 0,
    }  # followed from the submit
    assert running == {"type": "state", "job_id": "j1", "state": "running", "attempt": 1, "seq": 1}
    record = await r.hgetall(keys.job("j1"))  # type: ignore[misc]
    assert (record[b"state"], record[b"attempt"], record[b"worker"], record[b"seq"]) == (b"running", b"1", b"w1", b"1")
    assert await r.get(keys.arq_in_progress("j1")) == b"w1"
    assert await r.zscore(queue, keys.arq_job_id("j1")) == float(int(enqueued) + 3000)  # out of the ready window
    # Listed as one to wake in its place, until when its idle listing ran: the next job wakes it.
    assert await r.zrange(keys.idle_workers(queue), 0, -1, withscores=True) == [(b"~w1", listed_until)]


async def test_a_busy_worker_with_room_is_woken_once(r: aioredis.Redis, store: JobStore, keys: Keys) -> None:
    queue = keys.queue("P")
    await r.zadd(keys.idle_workers(queue), {"~w2": now() + 10_000})
    mux = PubSubMultiplexer(r)
    try:
        async with mux.subscribe(keys.worker_channel("w2")) as inbox:
            await create(store, "j1")
            await create(store, "j2")  # the listing was used up: nobody is woken for this one
            other = keys.queue("Other")  # listed there too: its wake-up marks the end of the ones above
            await r.zadd(keys.idle_workers(other), {"~w2": now() + 10_000})
            await store.create("j3", request_json(), queue=other, now_ms=now(), score_ms=now())
            woken = []
            while (message := await inbox.get(5)) is not None and not message.startswith(other.encode()):
                woken.append(message)
    finally:
        await mux.close()
    assert woken == [f"{queue} {keys.arq_job_id('j1')}".encode()]  # the queue, and the job to take first
    assert (await r.hget(keys.job("j1"), "state"), await r.hget(keys.job("j2"), "state")) == (b"queued", b"queued")  # type: ignore[misc]
    assert await r.zcard(queue) == 2


async def test_a_stale_listing_is_not_used(r: aioredis.Redis, store: JobStore, keys: Keys) -> None:
    queue = keys.queue("P")
    await r.zadd(keys.idle_workers(queue), {"w-gone": now() - 1})  # listed until a moment ago
    await create(store, "j1")
    assert await r.hget(keys.job("j1"), "state") == b"queued"  # type: ignore[misc]
    assert await r.zscore(keys.idle_workers(queue), "w-gone") is not None  # left for a take to sweep


async def test_deferred_jobs_wake_every_worker_once_per_call(r: aioredis.Redis, store: JobStore, keys: Keys) -> None:
    queue = keys.queue("P")
    await r.zadd(keys.idle_workers(queue), {"w1": now() + 10_000})  # idle, but the jobs are not ready: not handed
    mux = PubSubMultiplexer(r)
    try:
        async with mux.subscribe(keys.wake_channel()) as wake:
            at = now()
            # Three concurrent submits: the first goes out alone, the two others together in a second call.
            await asyncio.gather(
                *(store.create(f"d{i}", request_json(), queue=queue, now_ms=at, score_ms=at + 60_000) for i in range(3))
            )
            other = keys.queue("Other")  # a later deferred submit: its wake-up marks the end of ours
            await store.create("later", request_json(), queue=other, now_ms=at, score_ms=at + 60_000)
            messages = []
            while (message := await wake.get(5)) is not None and message != other.encode():
                messages.append(message)
    finally:
        await mux.close()
    assert messages == [queue.encode(), queue.encode()]  # once per call, not once per job
    assert await r.zscore(keys.idle_workers(queue), "w1") is not None  # not used up
    assert await r.hget(keys.job("d1"), "state") == b"queued"  # type: ignore[misc]


async def test_a_batch_creates_each_job(r: aioredis.Redis, store: JobStore, keys: Keys) -> None:
    queue = keys.queue("P")
    at = now()
    results = await asyncio.gather(
        *(store.create(f"b{i}", request_json(), queue=queue, now_ms=at, score_ms=at) for i in range(50))
    )
    assert all(result.created for result in results)
    assert await r.zcard(queue) == 50


async def test_a_listed_worker_that_does_not_hear_the_hand_off_is_passed_over(
    r: aioredis.Redis, store: JobStore, keys: Keys
) -> None:
    """Listed, but not subscribed (its subscription has not come back): the job is queued instead."""
    queue = keys.queue("P")
    await r.zadd(keys.idle_workers(queue), {"w-deaf": now() + 10_000})
    await create(store, "j1")
    record = await r.hgetall(keys.job("j1"))  # type: ignore[misc]
    assert (record[b"state"], record[b"attempt"]) == (b"queued", b"0")
    assert b"worker" not in record
    assert not await r.exists(keys.arq_in_progress("j1"))
    assert await r.zscore(queue, keys.arq_job_id("j1")) == float(record[b"scheduled_at_ms"])  # ready to take
    assert await r.zcard(keys.idle_workers(queue)) == 0  # the listing that no one answers is gone


async def test_a_followed_submit_says_queued_and_an_unfollowed_one_nothing(
    r: aioredis.Redis, store: JobStore, keys: Keys
) -> None:
    mux = PubSubMultiplexer(r)
    try:
        async with (
            mux.subscribe(keys.job_channel("told")) as told,
            mux.subscribe(keys.job_channel("quiet")) as quiet,
        ):
            await create(store, "told", watch=True, score_delay_ms=60_000)
            await create(store, "quiet", score_delay_ms=60_000)
            await r.publish(keys.job_channel("quiet"), b"marker")  # after whatever the submit published
            queued = json.loads(await told.get(5) or b"null")
            heard = await quiet.get(5)
    finally:
        await mux.close()
    assert queued == {"type": "state", "job_id": "told", "state": "queued", "attempt": 0, "seq": 0}
    assert heard == b"marker"  # nobody follows it: nothing was published for it
    assert await r.hget(keys.job("told"), "seq") == b"0"  # type: ignore[misc]  # the message's seq is the record's


async def test_submits_whose_partition_failed_get_the_error_and_the_others_their_jobs(
    r: aioredis.Redis, namespace: str
) -> None:
    """On Redis Cluster a batch of submits is a call per partition: when one fails, the jobs of the
    others are written, and their callers must be told so (told "failed", a caller sends its job
    again: a second job). The key layout of a cluster is used on one server here."""
    keys = Keys(namespace, partitions=3)
    store = JobStore(r, keys)
    send = store._create_in_slot
    broken = keys.partition("j0")

    async def one_partition_fails(jobs: list[Any]) -> list[list[Any]]:
        if keys.partition(jobs[0].job_id) == broken:
            raise BrokerError("submitting: the partition's master is gone")
        return await send(jobs)

    store._create_in_slot = one_partition_fails  # type: ignore[method-assign]
    at = now()
    ids = [f"j{i}" for i in range(12)]
    queue = keys.queue("P")
    first = next(f"f{i}" for i in range(99) if keys.partition(f"f{i}") != broken)
    await store.create(first, request_json(), queue=queue, now_ms=at, score_ms=at)
    outcomes = await asyncio.gather(  # the first alone, the rest in one batch behind it
        *(store.create(job_id, request_json(), queue=queue, now_ms=at, score_ms=at) for job_id in ids),
        return_exceptions=True,
    )
    failed = {job_id for job_id in ids if keys.partition(job_id) == broken}
    assert failed
    assert failed != set(ids)
    for job_id, outcome in zip(ids, outcomes, strict=True):
        if job_id in failed:
            assert isinstance(outcome, BrokerError)
            assert not await r.exists(keys.job(job_id))
        else:
            assert isinstance(outcome, CreateResult)
            assert outcome.created
            assert await r.exists(keys.job(job_id))
