"""cancel.lua: missing, finished (live or final), running (flag and push), waiting (cancelled), the queue reply."""

from __future__ import annotations

import json

import redis.asyncio as aioredis

from service.client.store import JobStore
from service.keys import Keys
from service.redis import scripts
from service.redis.pubsub import PubSubMultiplexer
from tests.unit.redis.scripts.conftest import create, now, request_json


async def cancel(store: JobStore, job_id: str) -> tuple[str, str]:
    return await store.cancel(job_id, reason="no longer needed", now_ms=now(), ttl_s=600)


async def test_missing_and_finished(r: aioredis.Redis, store: JobStore, keys: Keys) -> None:
    assert await cancel(store, "never") == ("missing", "")
    await r.set(keys.arq_result("done"), json.dumps({"k": {}, "actionq": {"state": "succeeded"}}))
    assert await cancel(store, "done") == ("finished", "succeeded")
    await r.set(keys.arq_result("odd"), b"not json")
    assert await cancel(store, "odd") == ("finished", "")  # unreadable, but it ended: nothing changes
    await r.hset(keys.job("ended"), mapping={"state": "failed", "queue": "q"})  # type: ignore[misc]
    assert await cancel(store, "ended") == ("finished", "failed")
    assert await r.hget(keys.job("ended"), "state") == b"failed"  # type: ignore[misc]


async def test_a_running_job_gets_the_flag_and_a_push(r: aioredis.Redis, store: JobStore, keys: Keys) -> None:
    running = {"state": "running", "queue": keys.queue("P"), "seq": 1, "enqueued_at_ms": 1234}
    await r.hset(keys.job("run"), mapping=running)  # type: ignore[misc]
    mux = PubSubMultiplexer(r)
    try:
        async with mux.subscribe(keys.cancel_channel()) as workers:
            assert await cancel(store, "run") == ("running", "running")
            push = json.loads(await workers.get(5) or b"null")
    finally:
        await mux.close()
    sent = push.pop("ts")
    assert push == {"job_id": "run", "reason": "no longer needed", "generation": 1234, "sig": ""}  # unsigned
    assert abs(sent - now()) < 60_000
    assert await r.hget(keys.job("run"), "cancel_requested") == b"no longer needed"  # type: ignore[misc]
    assert await r.hget(keys.job("run"), "state") == b"running"  # type: ignore[misc]  # the worker ends it


async def test_a_waiting_job_is_cancelled_and_leaves_its_queue(r: aioredis.Redis, store: JobStore, keys: Keys) -> None:
    queue = await create(store, "wait", score_delay_ms=60_000)
    await r.set(keys.checkpoint("wait"), b"{}")
    await r.hset(keys.job("wait"), "watched", "1")  # type: ignore[misc]
    mux = PubSubMultiplexer(r)
    try:
        async with mux.subscribe(keys.job_channel("wait")) as followers:
            assert await cancel(store, "wait") == ("cancelled", "queued")
            message = json.loads(await followers.get(5) or b"null")
    finally:
        await mux.close()
    assert message == {"type": "state", "job_id": "wait", "state": "cancelled", "attempt": 0, "seq": 1}
    record = await store.get("wait")
    assert record is not None
    assert record.state == "cancelled"
    assert record.error is not None
    assert "no longer needed" in record.error.message
    assert await r.zcard(queue) == 0
    assert not await r.exists(keys.checkpoint("wait"))
    assert 0 < await r.ttl(keys.job("wait")) <= 600  # the service's result TTL: the request set none


async def test_a_waiting_job_keeps_its_own_result_ttl(r: aioredis.Redis, store: JobStore, keys: Keys) -> None:
    queue = keys.queue("P")
    at = now()
    await store.create("own", request_json(result_ttl_s=30), queue=queue, now_ms=at, score_ms=at + 60_000)
    assert await cancel(store, "own") == ("cancelled", "queued")
    assert 0 < await r.ttl(keys.job("own")) <= 30


async def test_without_its_queue_a_waiting_job_is_left_alone(r: aioredis.Redis, store: JobStore, keys: Keys) -> None:
    """The script touches declared keys only: a caller that did not name the queue is told which it is."""
    queue = await create(store, "w2", score_delay_ms=60_000)
    script = scripts.register(r, "cancel")
    args: list[str | int] = [
        "why",
        now(),
        600,
        keys.arq_job_id("w2"),
        "{}",
        "{}",
        keys.job_channel("w2"),
        keys.cancel_channel(),
        "w2",
    ]
    declared = [keys.job("w2"), keys.arq_result("w2"), keys.checkpoint("w2")]
    assert await script(keys=declared, args=args) == [b"queue", queue.encode()]
    assert await script(keys=[*declared, keys.queue("Elsewhere")], args=args) == [b"queue", queue.encode()]
    assert await r.hget(keys.job("w2"), "state") == b"queued"  # type: ignore[misc]
    assert await r.zcard(queue) == 1
    assert await script(keys=[*declared, queue], args=args) == [b"cancelled", b"queued"]
