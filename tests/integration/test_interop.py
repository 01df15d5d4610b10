"""The seed's interop matrix through real workers: sync/async code by value/stream, async and sync clients."""

from __future__ import annotations

import asyncio

import pytest

from service import JobClient, SyncJobClient
from tests.conftest import FAST, WorkerFactory, bundled_plugins_config

VALUES = ["it_sync_add", "it_async_add"]
STREAMS = [("it_sync_gen", "g"), ("it_async_gen", "ag")]


@pytest.mark.parametrize("action", VALUES)
async def test_values_with_the_async_client(worker_process: WorkerFactory, client: JobClient, action: str) -> None:
    worker_process(bundled_plugins_config(**FAST))
    assert await (await client.submit("InteropTarget", action, {"a": 2, "b": 3})).result(timeout=20) == 5
    assert await (await client.submit("InteropTarget", action, {"a": 2})).result(timeout=20) == 3  # b=1
    assert await (await client.submit("InteropTarget", action, (4, 5))).result(timeout=20) == 9  # positional


@pytest.mark.parametrize(("action", "prefix"), STREAMS)
async def test_streams_with_the_async_client(
    worker_process: WorkerFactory, client: JobClient, action: str, prefix: str
) -> None:
    worker_process(bundled_plugins_config(**FAST))
    async with asyncio.timeout(30):
        defaults = [item async for item in client.execute_stream("InteropTarget", action)]
        custom = [
            item
            async for item in client.execute_stream("InteropTarget", action, {"n": 4, "prefix": "x", "delay_ms": 0})
        ]
    assert defaults == [f"{prefix}0", f"{prefix}1", f"{prefix}2"]  # the seed's n=3 and prefix
    assert custom == ["x0", "x1", "x2", "x3"]


@pytest.mark.parametrize("action", VALUES)
def test_values_with_the_sync_client(
    worker_process: WorkerFactory, redis_url: str, namespace: str, action: str
) -> None:
    worker_process(bundled_plugins_config(**FAST))
    with SyncJobClient(redis_url, namespace=namespace) as client:
        assert client.execute_sync("InteropTarget", action, {"a": 20, "b": 22}, timeout=20) == 42
        assert client.execute_sync("InteropTarget", action, 41, timeout=20) == 42  # one positional value


@pytest.mark.parametrize(("action", "prefix"), STREAMS)
def test_streams_with_the_sync_client(
    worker_process: WorkerFactory, redis_url: str, namespace: str, action: str, prefix: str
) -> None:
    worker_process(bundled_plugins_config(**FAST))
    with SyncJobClient(redis_url, namespace=namespace) as client:
        handle = client.submit("InteropTarget", action, {"n": 3})
        assert list(handle.stream()) == [f"{prefix}0", f"{prefix}1", f"{prefix}2"]
        assert list(handle.stream(start=2)) == [f"{prefix}2"]
        assert handle.result(timeout=10) == {"items": 3}
