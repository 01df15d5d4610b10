"""Output streams with fakeredis: writer/reader round trip, resume, markers, trimming, bad items."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from service.client.client import JobClient
from service.client.streams import follow
from service.errors import (
    PayloadTooLargeError,
    PluginActionExecutionError,
    PluginActionTimeoutError,
    StreamTrimmedError,
    StreamUnavailableError,
)
from service.models import ErrorInfo, JobOptions, JobRequest, JobState, now_ms
from service.plugins.loader import PluginLoader
from service.plugins.threads import iterate_in_thread
from service.redis.streams import StreamEnd, entry_id, entry_index
from service.retry import RetryPolicy
from service.settings import Settings
from service.worker.executor import Executor
from service.worker.streams import StreamWriter, pump
from service.worker.take import Claims
from tests.conftest import take_job

ROOT = Path(__file__).resolve().parents[3]
KEY = "ns:stream:job-1"


def writer(redis: aioredis.Redis, **overrides: Any) -> StreamWriter:
    options: dict[str, Any] = {"max_items": 1000, "max_item_bytes": 1024, "pending_ttl_s": 300} | overrides
    return StreamWriter(redis, KEY, **options)


async def agen(items: list[Any], fail: BaseException | None = None) -> AsyncGenerator[Any, None]:
    for item in items:
        yield item
    if fail is not None:
        raise fail


async def drain(items: AsyncIterator[Any], into: list[Any]) -> None:
    """Append each item to ``into`` (so a test still sees them when the iterator raises)."""
    async with asyncio.timeout(10):
        async for item in items:
            into.append(item)


async def finished() -> bool:
    return True


async def read(redis: aioredis.Redis, start: int = 0) -> list[Any]:
    async with asyncio.timeout(10):
        return [entry async for entry in follow(redis, KEY, "job-1", start, finished)]


async def finish(w: StreamWriter, end: StreamEnd, ttl_s: int) -> None:
    """What the settle script does with a generator's stream when its job ends: the marker, the TTL."""
    written = await w.flush()
    await w.redis.xadd(KEY, end.fields(), id=entry_id(written))  # type: ignore[arg-type]
    await w.redis.expire(KEY, ttl_s)


async def write(redis: aioredis.Redis, items: list[Any], end: JobState = JobState.SUCCEEDED, **kw: Any) -> None:
    w = writer(redis, **kw)
    assert await pump(agen(items), w) == {"items": len(items)}
    await finish(w, StreamEnd(end, w.count), ttl_s=60)


def test_entry_ids_are_the_index_plus_one() -> None:
    assert [entry_id(i) for i in (0, 1, 41)] == ["0-1", "0-2", "0-42"]
    assert entry_index(b"0-42") == 41
    assert entry_index(entry_id(-1)) == -1  # "0-0": read from the very start


async def test_round_trip_with_marker_and_ttl(fake_redis: aioredis.Redis) -> None:
    items = [1, "two", {"three": [3]}, None]
    await write(fake_redis, items)
    assert await read(fake_redis) == [*items, StreamEnd(JobState.SUCCEEDED, 4)]
    raw = await fake_redis.xrange(KEY)
    assert [r[0] for r in raw] == [b"0-1", b"0-2", b"0-3", b"0-4", b"0-5"]
    assert raw[1][1] == {b"v": b'"two"'}
    assert raw[-1][1] == {b"end": b"succeeded", b"count": b"4"}
    assert 0 < await fake_redis.ttl(KEY) <= 60  # re-armed to the result TTL at the end


async def test_resume_from_an_offset_and_past_the_end(fake_redis: aioredis.Redis) -> None:
    await write(fake_redis, list(range(10)))
    end = StreamEnd(JobState.SUCCEEDED, 10)
    assert await read(fake_redis, start=7) == [7, 8, 9, end]
    assert await read(fake_redis, start=10) == [end]
    assert await read(fake_redis, start=25) == [end]
    with pytest.raises(ValueError, match="start"):
        await read(fake_redis, start=-1)


async def test_many_items_are_batched_in_order(fake_redis: aioredis.Redis) -> None:
    items = list(range(1000))  # several batches of a generator that never awaits
    await write(fake_redis, items)
    assert await read(fake_redis) == [*items, StreamEnd(JobState.SUCCEEDED, 1000)]


async def test_terminal_marker_carries_the_error(fake_redis: aioredis.Redis) -> None:
    w = writer(fake_redis)
    with pytest.raises(RuntimeError, match="midway"):
        await pump(agen(["a", "b"], RuntimeError("midway")), w)
    error = ErrorInfo(type="RuntimeError", message="midway")
    await finish(w, StreamEnd(JobState.FAILED, w.count, error), ttl_s=60)
    assert await read(fake_redis) == ["a", "b", StreamEnd(JobState.FAILED, 2, error)]


async def test_trimmed_items_are_detected_by_the_gap(fake_redis: aioredis.Redis) -> None:
    await write(fake_redis, list(range(20)))
    await fake_redis.xtrim(KEY, maxlen=8, approximate=False)  # what MAXLEN does to a reader that fell behind
    with pytest.raises(StreamTrimmedError) as info:
        await read(fake_redis)
    assert (info.value.expected_index, info.value.first_available_index) == (0, 13)
    assert "resume from 13" in str(info.value)
    assert await read(fake_redis, start=13) == [*range(13, 20), StreamEnd(JobState.SUCCEEDED, 20)]


async def test_bad_items_name_their_index(fake_redis: aioredis.Redis) -> None:
    with pytest.raises(TypeError, match="item 2 yielded by the action is not JSON"):
        await pump(agen([1, 2, {3}]), writer(fake_redis))
    with pytest.raises(PayloadTooLargeError, match="item 1 yielded by the action"):
        await pump(agen(["ok", "x" * 2000]), writer(fake_redis))


async def test_no_stream_after_the_job_ended_is_unavailable(fake_redis: aioredis.Redis) -> None:
    with pytest.raises(StreamUnavailableError, match="no output stream"):
        await read(fake_redis)


async def test_a_live_reader_waits_for_the_stream(fake_redis: aioredis.Redis) -> None:
    done = asyncio.Event()

    async def job_done() -> bool:
        return done.is_set()

    async def reader() -> list[Any]:
        return [entry async for entry in follow(fake_redis, KEY, "job-1", 0, job_done)]

    task = asyncio.create_task(reader())
    await asyncio.sleep(0.05)  # the reader is waiting: no stream yet, the job has not ended
    await write(fake_redis, ["late"])
    done.set()
    async with asyncio.timeout(10):
        assert await task == ["late", StreamEnd(JobState.SUCCEEDED, 1)]


# -- plain generators in a thread ---------------------------------------------------------------
async def test_thread_generator_has_backpressure_and_is_closed() -> None:
    produced: list[int] = []
    closed = threading.Event()

    def numbers() -> Iterator[int]:
        try:
            for i in range(10_000):
                produced.append(i)
                yield i
        finally:
            closed.set()

    items = iterate_in_thread(lambda: numbers(), {}, maxsize=4)
    assert await anext(items) == 0
    await asyncio.sleep(0.05)  # let the thread run ahead as far as it may
    assert len(produced) <= 1 + 4 + 1  # the item taken, a full channel, one blocked on put
    await items.aclose()
    assert await asyncio.to_thread(closed.wait, 5)  # the generator was closed in its thread


async def test_thread_generator_error_follows_its_items() -> None:
    def numbers() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("bad third")

    got: list[int] = []
    with pytest.raises(ValueError, match="bad third"):
        await drain(iterate_in_thread(numbers, {}), got)
    assert got == [1, 2]


# -- through the executor -------------------------------------------------------------------------
@pytest_asyncio.fixture
async def client(fake_redis: aioredis.Redis) -> AsyncIterator[JobClient]:
    settings = Settings(
        redis_url="redis://fake",
        namespace="st",
        default_timeout_s=5,
        cancel_grace_s=0.1,
        stream_max_items=100,
        retry=RetryPolicy(max_attempts=1),  # these tests look at one attempt's outcome
    )
    c = JobClient(fake_redis, settings, owns_redis=False)
    yield c
    await c.close()


@pytest_asyncio.fixture
async def executor(client: JobClient) -> AsyncIterator[Executor]:
    loader = PluginLoader(enable_timeout_s=5)
    await loader.load_all(
        [("InteropTarget", ROOT / "plugins" / "InteropTarget"), ("streamer", ROOT / "tests/fixtures/plugins/streamer")]
    )
    yield Executor(loader=loader, redis=client.redis, keys=client.keys, settings=client.settings, worker_id="w-test")
    await loader.unload_all()


async def run(client: JobClient, executor: Executor, action: str, params: dict[str, Any], **opts: Any) -> str:
    plugin = "InteropTarget" if action.startswith("it_") else "streamer"
    request = JobRequest(plugin=plugin, action=action, params=params, options=JobOptions(**opts))
    job = (await client.submit_request(request)).job_id
    await executor.run(await take_job(client, job))
    return job


@pytest.mark.parametrize(("action", "prefix"), [("it_sync_gen", "g"), ("it_async_gen", "ag")])
async def test_executor_streams_and_records_the_count(
    client: JobClient, executor: Executor, action: str, prefix: str
) -> None:
    job = await run(client, executor, action, {"n": 4, "delay_ms": 0}, result_ttl_s=90)
    handle = client.job(job)
    assert await handle.result() == {"items": 4}
    async with asyncio.timeout(10):
        assert [x async for x in handle.stream()] == [f"{prefix}{i}" for i in range(4)]
    assert 0 < await client.redis.ttl(client.keys.job_stream(job)) <= 90


async def test_executor_failure_midway_keeps_the_items_and_raises(client: JobClient, executor: Executor) -> None:
    job = await run(client, executor, "fail_after", {"n": 2})
    handle = client.job(job)
    got: list[Any] = []
    with pytest.raises(PluginActionExecutionError, match="failed after 2 items") as info:
        await drain(handle.stream(), got)
    assert got == [0, 1]
    record = await handle.record()
    assert record.state is JobState.FAILED
    assert info.value.error == record.error  # the same ErrorInfo as the record's


async def test_executor_non_json_item_fails_the_job(client: JobClient, executor: Executor) -> None:
    job = await run(client, executor, "not_json_at", {"index": 2})
    record = await client.job(job).record()
    assert record.state is JobState.FAILED
    assert record.error is not None
    assert "item 2 yielded by the action is not JSON" in record.error.message


async def test_executor_timeout_ends_the_stream(client: JobClient, executor: Executor) -> None:
    job = await run(client, executor, "it_async_gen", {"n": 1000, "delay_ms": 20}, timeout_s=0.2)
    handle = client.job(job)
    got: list[Any] = []
    with pytest.raises(PluginActionTimeoutError):
        await drain(handle.stream(), got)
    assert got[:2] == ["ag0", "ag1"]
    assert len(got) < 1000
    assert (await handle.record()).state is JobState.TIMED_OUT


async def test_a_rerun_restarts_the_stream(client: JobClient, executor: Executor) -> None:
    request = JobRequest(plugin="InteropTarget", action="it_async_gen", params={"n": 3, "delay_ms": 0})
    job = (await client.submit_request(request)).job_id
    stream = client.keys.job_stream(job)
    first = await take_job(client, job)
    await client.redis.xadd(stream, {"v": b'"from attempt 1"'}, id="0-1")  # attempt 1 got one item out...
    await client.redis.delete(client.keys.arq_in_progress(job))  # ...then its worker died: the lease lapses
    queue = (await client.job(job).record()).queue
    claims = Claims(client.redis, client.keys, worker_id="w-test", lease_s=3)
    [second] = (await claims.take([queue], now_ms() + 3_500, limit=5)).jobs
    assert (first.attempt, second.attempt) == (1, 2)
    await executor.run(second)
    assert await client.redis.xlen(stream) == 4  # three items and one marker, all of attempt 2
    assert [x async for x in client.job(job).stream()] == ["ag0", "ag1", "ag2"]


async def test_a_value_action_has_no_stream(client: JobClient, executor: Executor) -> None:
    job = await run(client, executor, "it_async_add", {"a": 1})
    with pytest.raises(StreamUnavailableError):
        await drain(client.job(job).stream(), [])
