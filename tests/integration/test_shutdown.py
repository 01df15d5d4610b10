"""Stopping a worker that has to hand running jobs back: exit 0, everything cleaned up."""

from __future__ import annotations

import asyncio
import signal

from service import JobClient, JobState
from tests.conftest import FAST, WorkerFactory, bundled_plugins_config


async def test_a_shutdown_that_hands_jobs_back_exits_0_and_cleans_up(
    worker_process: WorkerFactory, client: JobClient
) -> None:
    worker = worker_process(bundled_plugins_config(shutdown_grace_s=0.2, **FAST))
    handles = [await client.submit("long_running", "count_slowly", {"steps": 200, "delay_s": 0.05}) for _ in range(3)]
    async with asyncio.timeout(20):
        while [await h.state() for h in handles] != [JobState.RUNNING] * 3:
            await asyncio.sleep(0.02)
    [info] = await client.workers()
    assert worker.terminate() == 0, worker.log_tail()
    log = worker.log_text()
    assert "Traceback" not in log, worker.log_tail()
    for logged in ("job_interrupted", "plugin_unloaded", "worker_stopped"):
        assert f'"event": "{logged}"' in log, logged
    assert [await h.state() for h in handles] == [JobState.QUEUED] * 3  # handed back, ready for another worker
    assert await client.redis.zscore(client.keys.workers(), info.worker_id) is None  # not listed any more
    for queue in info.queues:
        members = await client.redis.zrange(client.keys.idle_workers(queue), 0, -1)
        assert not [m for m in members if info.worker_id.encode() in m]
    assert not await client.redis.exists(client.keys.arq_health(info.worker_id))


async def test_sigusr2_writes_every_threads_stack_to_the_log_and_the_worker_goes_on(
    worker_process: WorkerFactory, client: JobClient
) -> None:
    worker = worker_process(bundled_plugins_config(**FAST))
    worker.send_signal(signal.SIGUSR2)
    async with asyncio.timeout(20):  # the main thread's stack, innermost frame first, down to the worker's entry
        while "most recent call first" not in (text := worker.log_text()) or "service/worker/adapter.py" not in text:
            await asyncio.sleep(0.05)
    async with asyncio.timeout(20):  # then, from the loop, each task at its await
        while "--- task actionq-" not in worker.log_text():
            await asyncio.sleep(0.05)
    assert "asyncio tasks (" in worker.log_text()
    handle = await client.submit("PluginB", "calculate_square", {"x": 4})
    assert await handle.result(timeout=20) == 16  # still running jobs
    assert worker.terminate() == 0, worker.log_tail()
