"""Streamed output of generator actions: real worker processes, real Redis, the per-job stream."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import pytest
from redis.asyncio.cluster import RedisCluster

from service import (
    JobClient,
    JobHandle,
    JobState,
    PluginActionExecutionError,
    PluginActionTimeoutError,
    StreamTrimmedError,
    StreamUnavailableError,
)
from service.redis.cluster import is_cluster
from tests.conftest import FAST, WorkerFactory, bundled_plugins_config

# On one Redis and on a 3-master Redis Cluster (DESIGN.md section 11).
pytestmark = pytest.mark.topologies

STREAMER = Path(__file__).resolve().parents[1] / "fixtures" / "plugins" / "streamer"


def config(**extra: Any) -> dict[str, Any]:
    cfg = bundled_plugins_config(**FAST, **extra)
    cfg["plugins"].append({"name": "streamer", "path": str(STREAMER)})
    return cfg


async def drain(handle: JobHandle, into: list[Any], timeout_s: float = 30) -> None:
    """Append each item to ``into`` (so a test still sees them when the stream raises)."""
    async with asyncio.timeout(timeout_s):
        async for item in handle.stream():
            into.append(item)


async def collect(handle: JobHandle, start: int = 0, timeout_s: float = 30) -> list[Any]:
    async with asyncio.timeout(timeout_s):
        return [item async for item in handle.stream(start)]


@pytest.mark.parametrize(("action", "prefix"), [("it_async_gen", "ag"), ("it_sync_gen", "g")])
async def test_generator_items_stream_end_to_end(
    worker_process: WorkerFactory, client: JobClient, action: str, prefix: str
) -> None:
    worker_process(config())
    async with asyncio.timeout(30):
        items = [item async for item in client.execute_stream("InteropTarget", action, {"n": 5}, job_id="s1")]
    assert items == [f"{prefix}{i}" for i in range(5)]
    handle = client.job("s1")
    assert await handle.result(timeout=10) == {"items": 5}  # the result says how many were produced


async def test_resume_after_the_job_finished(worker_process: WorkerFactory, client: JobClient) -> None:
    worker_process(config())
    handle = await client.submit("InteropTarget", "it_async_gen", {"n": 6, "delay_ms": 0})
    await handle.result(timeout=20)
    assert await collect(handle, start=4) == ["ag4", "ag5"]
    assert await collect(handle, start=0) == [f"ag{i}" for i in range(6)]


async def test_resume_while_it_runs(worker_process: WorkerFactory, client: JobClient) -> None:
    worker_process(config())
    handle = await client.submit("InteropTarget", "it_sync_gen", {"n": 15, "delay_ms": 30})
    first: list[Any] = []
    async with asyncio.timeout(30):
        async for item in handle.stream():
            first.append(item)
            if len(first) == 3:
                break  # a reader that goes away mid-stream...
    assert (await handle.state()) is JobState.RUNNING
    rest = await collect(handle, start=len(first))  # ...and comes back where it stopped
    assert first + rest == [f"g{i}" for i in range(15)]


@pytest.mark.parametrize("action", ["fail_after", "async_fail_after"])
async def test_a_generator_that_raises_midway(worker_process: WorkerFactory, client: JobClient, action: str) -> None:
    worker_process(config())
    handle = await client.submit("streamer", action, {"n": 3})
    got: list[Any] = []
    with pytest.raises(PluginActionExecutionError, match="failed after 3 items") as info:
        await drain(handle, got)
    assert got == [0, 1, 2]  # the items before the error are delivered first
    record = await handle.wait(timeout=10)  # the marker is written just before the final state
    assert record.state is JobState.FAILED
    assert info.value.error == record.error
    with pytest.raises(PluginActionExecutionError, match="failed after 3 items"):
        await handle.result(timeout=5)


async def test_a_timed_out_generator_ends_its_stream(worker_process: WorkerFactory, client: JobClient) -> None:
    worker_process(config())
    handle = await client.submit("InteropTarget", "it_async_gen", {"n": 10_000, "delay_ms": 10}, timeout_s=0.5)
    got: list[Any] = []
    with pytest.raises(PluginActionTimeoutError):
        await drain(handle, got)
    assert got == [f"ag{i}" for i in range(len(got))]
    assert len(got) < 10_000
    assert (await handle.wait(timeout=10)).state is JobState.TIMED_OUT


async def test_a_slow_consumer_loses_nothing_within_the_cap(worker_process: WorkerFactory, client: JobClient) -> None:
    worker_process(config(stream_max_items=50))
    handle = await client.submit("streamer", "burst", {"n": 40})
    got: list[Any] = []
    async with asyncio.timeout(30):
        async for item in handle.stream():
            got.append(item)
            await asyncio.sleep(0.01)  # far slower than the producer
    assert got == list(range(40))
    assert await handle.result(timeout=5) == {"items": 40}


async def test_past_the_cap_a_late_reader_is_told_and_can_resume(
    worker_process: WorkerFactory, client: JobClient
) -> None:
    worker_process(config(stream_max_items=50))
    n = 2000
    handle = await client.submit("streamer", "burst", {"n": n})
    assert await handle.result(timeout=30) == {"items": n}
    with pytest.raises(StreamTrimmedError) as info:
        await collect(handle)
    err = info.value
    assert err.expected_index == 0
    assert 0 < err.first_available_index <= n - 50  # at least the cap's latest items are kept
    assert await collect(handle, start=err.first_available_index) == list(range(err.first_available_index, n))


async def test_a_value_action_has_no_stream(worker_process: WorkerFactory, client: JobClient) -> None:
    worker_process(config())
    handle = await client.submit("InteropTarget", "it_async_add", {"a": 1})
    assert await handle.result(timeout=20) == 2
    with pytest.raises(StreamUnavailableError):
        await collect(handle)


async def _clients_of(client: JobClient, job_id: str) -> list[dict[str, str]]:
    """CLIENT LIST of the node holding the job's stream (on a cluster, the one owning its slot)."""
    if not is_cluster(client.redis):
        listed: list[dict[str, str]] = await client.redis.client_list()
        return listed
    cluster = cast(RedisCluster, client.redis)
    node = cluster.get_node_from_key(client.keys.job_stream(job_id))
    found: list[dict[str, str]] = await cluster.client_list(target_nodes=node)
    return found


async def test_a_queued_job_is_waited_for(worker_process: WorkerFactory, client: JobClient) -> None:
    handle = await client.submit("InteropTarget", "it_async_gen", {"n": 2}, validate=False)
    reader = asyncio.create_task(collect(handle))
    async with asyncio.timeout(10):  # until the reader blocks on the stream (its job is not over)
        while not any(c["cmd"] == "xread" and "b" in c["flags"] for c in await _clients_of(client, handle.job_id)):
            await asyncio.sleep(0.02)
    assert not reader.done()  # no worker yet: the reader waits
    worker_process(config())
    assert await reader == ["ag0", "ag1"]


async def test_no_stream_key_without_a_ttl(worker_process: WorkerFactory, client: JobClient) -> None:
    worker_process(config())
    ok = await client.submit("InteropTarget", "it_sync_gen", {"n": 3}, result_ttl_s=120)
    failed = await client.submit("streamer", "fail_after", {"n": 1}, result_ttl_s=120)
    await ok.result(timeout=20)
    with pytest.raises(PluginActionExecutionError):
        await failed.result(timeout=20)
    for handle in (ok, failed):
        key = client.keys.job_stream(handle.job_id)
        assert await client.redis.exists(key)
        assert 0 < await client.redis.ttl(key) <= 120  # the job's result TTL, re-armed at the end
    streams = [k async for k in client.redis.scan_iter(match=f"{client.keys.namespace}:stream:*")]
    assert len(streams) == 2
    assert [await client.redis.ttl(k) > 0 for k in streams] == [True, True]
