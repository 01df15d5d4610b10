"""Clients ride out a Redis restart: a result() or progress() started while Redis is down waits for it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator

import pytest

from service import BrokerError, JobClient, JobHandle
from service.processes.embedded import EmbeddedRedis
from tests.conftest import FAST, WorkerFactory, WorkerProc, bundled_plugins_config

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


async def _until(predicate: Callable[[], Awaitable[bool]], timeout_s: float = 20) -> None:
    async with asyncio.timeout(timeout_s):
        while not await predicate():
            await asyncio.sleep(0.02)


async def _logged(worker: WorkerProc, event: str) -> bool:
    return f'"event": "{event}"' in worker.log_text()


async def test_a_job_that_ends_while_redis_is_down_is_settled_once_it_is_back(
    durable_server: EmbeddedRedis, worker_process: WorkerFactory, namespace: str
) -> None:
    """The settle is tried again (for a lease): the job is not run a second time."""
    worker = worker_process(bundled_plugins_config(**FAST), env={"ACTIONQ_REDIS_URL": durable_server.url}, wait=False)
    async with await JobClient.connect(durable_server.url, namespace=namespace) as client:
        await _until_live(client)
        handle = await client.submit("long_running", "count_slowly", {"steps": 10, "delay_s": 0.1})

        async def nearly_done() -> bool:
            progress = (await handle.record()).progress
            return progress is not None and (progress.current_step or 0) >= 8

        await _until(nearly_done)
        durable_server.kill()
        await _until(lambda: _logged(worker, "lease_renewal_failed"))  # it noticed; the job ends meanwhile
        durable_server.start()
        assert (await handle.result(timeout=30))["steps"] == 10
        record = await handle.record()
    assert record.attempt == 1, worker.log_tail()
    assert not await _logged(worker, "job_not_settled")


async def test_an_attempt_whose_lease_lapsed_while_redis_was_down_stops(
    durable_server: EmbeddedRedis, worker_process: WorkerFactory, namespace: str
) -> None:
    """Past a whole lease without a renewal the attempt stops here, before another one can start."""
    config = bundled_plugins_config(**{**FAST, "lease_s": 1})
    worker = worker_process(config, env={"ACTIONQ_REDIS_URL": durable_server.url}, wait=False)
    async with await JobClient.connect(durable_server.url, namespace=namespace) as client:
        await _until_live(client)
        handle = await client.submit("long_running", "count_slowly", {"steps": 100, "delay_s": 0.05})
        await _until(lambda: _state_is(handle, "running"))
        durable_server.kill()
        await _until(lambda: _logged(worker, "leases_lapsed"))
        await _until(lambda: _logged(worker, "job_interrupted"))  # attempt 1 stopped, Redis still down
        durable_server.start()
        assert (await handle.result(timeout=60))["steps"] == 100
        record = await handle.record()
    assert record.attempt == 2
    log = worker.log_text()
    assert log.index('"event": "job_interrupted"') < log.rindex('"event": "job_started"')  # one at a time


async def _state_is(handle: JobHandle, state: str) -> bool:
    return (await handle.state()).value == state
