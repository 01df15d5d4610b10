"""The reader of output streams on fakeredis: resuming, trimmed items, a missing stream, a live reader."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis

from service.client.streams import follow
from service.errors import StreamTrimmedError, StreamUnavailableError
from service.models import JobState
from service.redis.streams import StreamEnd
from tests.unit.stream_io import KEY, read, write


async def test_resume_from_an_offset_and_past_the_end(fake_redis: aioredis.Redis) -> None:
    await write(fake_redis, list(range(10)))
    end = StreamEnd(JobState.SUCCEEDED, 10)
    assert await read(fake_redis, start=7) == [7, 8, 9, end]
    assert await read(fake_redis, start=10) == [end]
    assert await read(fake_redis, start=25) == [end]
    with pytest.raises(ValueError, match="start"):
        await read(fake_redis, start=-1)


async def test_trimmed_items_are_detected_by_the_gap(fake_redis: aioredis.Redis) -> None:
    await write(fake_redis, list(range(20)))
    await fake_redis.xtrim(KEY, maxlen=8, approximate=False)  # what MAXLEN does to a reader that fell behind
    with pytest.raises(StreamTrimmedError) as info:
        await read(fake_redis)
    assert (info.value.expected_index, info.value.first_available_index) == (0, 13)
    assert "resume from 13" in str(info.value)
    assert await read(fake_redis, start=13) == [*range(13, 20), StreamEnd(JobState.SUCCEEDED, 20)]


async def test_no_stream_after_the_job_ended_is_unavailable(fake_redis: aioredis.Redis) -> None:
    with pytest.raises(StreamUnavailableError, match="no output stream"):
        await read(fake_redis)


async def test_a_live_reader_waits_for_the_stream(fake_redis: aioredis.Redis) -> None:
    done, asked = asyncio.Event(), asyncio.Event()

    async def job_done() -> bool:
        asked.set()
        return done.is_set()

    async def reader() -> list[Any]:
        return [entry async for entry in follow(fake_redis, KEY, "job-1", 0, job_done)]

    task = asyncio.create_task(reader())
    async with asyncio.timeout(10):
        await asked.wait()  # the reader is waiting: it found no stream, and the job has not ended
    await write(fake_redis, ["late"])
    done.set()
    async with asyncio.timeout(10):
        assert await task == ["late", StreamEnd(JobState.SUCCEEDED, 1)]
