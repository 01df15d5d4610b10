"""read.lua: a live record, an ended job's final record, nothing; marking a job as followed."""

from __future__ import annotations

import json

import redis.asyncio as aioredis

from service.client.store import JobStore
from service.keys import Keys
from service.models import JobState
from tests.unit.redis.scripts.conftest import create, request_json


async def test_a_live_record_is_read_and_marked_followed_only_when_asked(
    r: aioredis.Redis, store: JobStore, keys: Keys
) -> None:
    await create(store, "j1")
    record = await store.get("j1")
    assert record is not None
    assert (record.state, record.seq, record.request.params) == (JobState.QUEUED, 0, {"x": 1})
    assert not await r.hexists(keys.job("j1"), "watched")  # type: ignore[misc]
    assert await store.get("j1", watch=True) is not None
    assert await r.hget(keys.job("j1"), "watched") == b"1"  # type: ignore[misc]


async def test_an_ended_job_is_read_from_its_final_record(r: aioredis.Redis, store: JobStore, keys: Keys) -> None:
    fields = {
        "state": "failed",
        "queue": "q",
        "seq": "3",
        "attempt": "2",
        "enqueued_at_ms": "1",
        "scheduled_at_ms": "1",
    }
    fields["error"] = json.dumps({"type": "E", "message": "m", "traceback": None, "retryable": False})
    await r.set(keys.arq_result("j2"), json.dumps({"k": {"request": json.loads(request_json())}, "actionq": fields}))
    record = await store.get("j2", watch=True)  # an ended job publishes nothing more: nothing to mark
    assert record is not None
    assert (record.state, record.attempt, record.error and record.error.type) == (JobState.FAILED, 2, "E")
    assert not await r.exists(keys.job("j2"))


async def test_nothing_to_read(store: JobStore) -> None:
    assert await store.get("never") is None
