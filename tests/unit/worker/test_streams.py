"""The stream writer on fakeredis, alone and through the executor: batches, markers, bad items, timeouts, re-runs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from service.client.client import JobClient
from service.errors import (
    PayloadTooLargeError,
    PluginActionExecutionError,
    PluginActionTimeoutError,
    StreamUnavailableError,
)
from service.models import ErrorInfo, JobOptions, JobRequest, JobState, now_ms
from service.plugins.loader import PluginLoader
from service.redis.streams import StreamEnd
from service.retry import RetryPolicy
from service.settings import Settings
from service.worker.executor import Executor
from service.worker.streams import pump
from service.worker.take import Claims
from tests.conftest import REPO_ROOT, take_job
from tests.unit.stream_io import agen, drain, finish, read, write, writer


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


async def test_bad_items_name_their_index(fake_redis: aioredis.Redis) -> None:
    with pytest.raises(TypeError, match="item 2 yielded by the action is not JSON"):
        await pump(agen([1, 2, {3}]), writer(fake_redis))
    with pytest.raises(PayloadTooLargeError, match="item 1 yielded by the action"):
        await pump(agen(["ok", "x" * 2000]), writer(fake_redis))


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
        [
            ("InteropTarget", REPO_ROOT / "plugins" / "InteropTarget"),
            ("streamer", REPO_ROOT / "tests/fixtures/plugins/streamer"),
        ]
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
