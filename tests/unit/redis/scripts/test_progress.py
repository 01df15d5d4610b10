"""progress.lua: only a running job takes progress; it is published only when followed."""

from __future__ import annotations

import json

import redis.asyncio as aioredis

from service.keys import Keys
from service.models import ProgressUpdate
from service.redis.pubsub import PubSubMultiplexer
from service.worker.progress import ProgressWriter


async def test_a_job_that_is_not_running_takes_no_progress(r: aioredis.Redis, keys: Keys) -> None:
    writer = ProgressWriter(r, keys)
    await r.hset(keys.job("q1"), mapping={"state": "queued", "seq": 0})  # type: ignore[misc]
    assert await writer.write("q1", ProgressUpdate(percentage=10)) == -1
    assert not await r.hexists(keys.job("q1"), "progress")  # type: ignore[misc]
    assert await r.hget(keys.job("q1"), "seq") == b"0"  # type: ignore[misc]
    assert await writer.write("gone", ProgressUpdate(percentage=10)) == -1  # no record at all
    assert not await r.exists(keys.job("gone"))  # and none created


async def test_a_running_job_stores_it_and_publishes_only_when_followed(r: aioredis.Redis, keys: Keys) -> None:
    writer = ProgressWriter(r, keys)
    await r.hset(keys.job("p1"), mapping={"state": "running", "seq": 4})  # type: ignore[misc]
    update = ProgressUpdate(current_step=1, total_steps=4, message="one")
    mux = PubSubMultiplexer(r)
    try:
        async with mux.subscribe(keys.job_channel("p1")) as channel:
            assert await writer.write("p1", update) == 5  # not followed: stored, not published
            await r.hset(keys.job("p1"), "watched", "1")  # type: ignore[misc]
            assert await writer.write("p1", update.model_copy(update={"message": "two"})) == 6
            message = json.loads(await channel.get(5) or b"null")  # the first message is the followed one
    finally:
        await mux.close()
    assert message["type"] == "progress"
    assert (message["job_id"], message["seq"], message["progress"]["message"]) == ("p1", 6, "two")
    assert ProgressUpdate.model_validate_json(await r.hget(keys.job("p1"), "progress")).message == "two"  # type: ignore[misc]
