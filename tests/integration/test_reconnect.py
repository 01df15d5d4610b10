"""Clients ride out a Redis restart: a result() or progress() started while Redis is down waits for it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from service import BrokerError, JobClient
from service.processes.embedded import EmbeddedRedis
from tests.conftest import FAST, WorkerFactory, bundled_plugins_config

# Durable, so that the jobs are still there after the server is killed and started again.
AOF = ["--appendonly", "yes", "--appendfsync", "always"]


@pytest.fixture
def durable_server(server_binary: str) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(binary=server_binary, extra_args=AOF)
    server.start()
    yield server
    server.stop()


async def _until_live(client: JobClient, timeout_s: float = 20) -> None:
    async with asyncio.timeout(timeout_s):
        while not any(p.live and p.name == "PluginB" for p in await client.plugins()):
            await asyncio.sleep(0.1)


# durable_server is requested before worker_process so that it is torn down after the worker.
async def test_waits_started_while_redis_is_down_finish_once_it_is_back(
    durable_server: EmbeddedRedis, worker_process: WorkerFactory, namespace: str
) -> None:
    worker = worker_process(bundled_plugins_config(**FAST), env={"ACTIONQ_REDIS_URL": durable_server.url}, wait=False)
    async with await JobClient.connect(durable_server.url, namespace=namespace) as client:
        await _until_live(client)
        handle = await client.submit("long_running", "count_slowly", {"steps": 10, "delay_s": 0.05})
        quick = await client.submit("PluginB", "calculate_square", {"x": 8})
        durable_server.kill()  # SIGKILL: the AOF keeps every write
        waiting = asyncio.create_task(handle.result(timeout=60))
        following = asyncio.create_task(_last_state(client, quick.job_id))
        await asyncio.sleep(0)  # both are trying to reach Redis now
        assert not waiting.done()
        durable_server.start()  # same port, same data
        assert (await waiting)["steps"] == 10
        assert await following == "succeeded"
    assert worker.running, worker.log_tail()


async def _last_state(client: JobClient, job_id: str) -> str:
    return [snap.state.value async for snap in client.job(job_id).progress()][-1]


async def test_a_read_gives_up_after_reconnect_s(durable_server: EmbeddedRedis, namespace: str) -> None:
    async with await JobClient.connect(durable_server.url, namespace=namespace) as client:
        settings = client.settings.model_copy(update={"reconnect_s": 0.3})
    async with await JobClient.connect(settings=settings) as client:
        durable_server.kill()
        with pytest.raises(BrokerError, match="cannot reach Redis"):
            await client.job("anything").record()
        durable_server.start()
