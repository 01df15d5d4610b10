"""The dead-letter store on fakeredis: what a replay removes, and what it leaves."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from service.client.deadletters import DeadLetter, DeadLetterStore
from service.client.handle import JobHandle
from service.errors import DeadLetterNotFoundError, ErrorInfo
from service.keys import Keys
from service.models import JobRequest, JobState


def _letter(job_id: str, message: str) -> DeadLetter:
    request = JobRequest(plugin="long_running", action="fail", params={"message": message})
    error = ErrorInfo(type="RuntimeError", message=message)
    return DeadLetter(job_id=job_id, request=request, queue="q", state=JobState.FAILED, error=error, attempts=[])


async def _write(redis: aioredis.Redis, keys: Keys, letter: DeadLetter) -> None:
    await redis.set(keys.dead_letter(letter.job_id), letter.model_dump_json())
    await redis.zadd(keys.dead_letters(), {letter.job_id: letter.dead_at_ms})


async def test_a_replay_keeps_the_letter_its_own_job_wrote_before_it_returned(fake_redis: aioredis.Redis) -> None:
    keys = Keys("ut")
    again = _letter("dl-1", "boom again")

    async def submit_that_fails_at_once(request: JobRequest) -> JobHandle:
        await _write(fake_redis, keys, again)  # the replayed job ran and died before submit returned
        return JobHandle.__new__(JobHandle)

    store = DeadLetterStore(fake_redis, keys, ttl_s=3600, submit=submit_that_fails_at_once)
    await _write(fake_redis, keys, _letter("dl-1", "boom"))
    await store.replay("dl-1")
    assert (await store.get("dl-1")).error == again.error
    assert [letter.job_id for letter in await store.list()] == ["dl-1"]


async def test_a_replay_removes_the_letter_it_replayed(fake_redis: aioredis.Redis) -> None:
    keys = Keys("ut")

    async def submit(request: JobRequest) -> JobHandle:
        assert request.options.job_id == "dl-1"
        assert request.params == {"message": "boom"}
        return JobHandle.__new__(JobHandle)

    store = DeadLetterStore(fake_redis, keys, ttl_s=3600, submit=submit)
    await _write(fake_redis, keys, _letter("dl-1", "boom"))
    await store.replay("dl-1")
    with pytest.raises(DeadLetterNotFoundError):
        await store.get("dl-1")
    assert await store.list() == []
