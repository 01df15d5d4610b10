"""What the hot paths cost in Redis commands (a private server each: its command counts are the test's alone)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from service import JobHandle, JobState, PluginActionExecutionError
from service.client.client import JobClient
from service.processes.embedded import EmbeddedRedis
from tests.conftest import FAST, WorkerFactory, bundled_plugins_config


async def test_a_batch_of_submits_looks_for_an_idle_worker_once_per_call(
    fresh_redis_server: EmbeddedRedis, namespace: str
) -> None:
    async with await JobClient.connect(fresh_redis_server.url, namespace=namespace) as client:
        await client.submit("nobody", "serves", validate=False)  # the script loaded (a first EVALSHA fails)
        await client.redis.config_resetstat()
        handles = await asyncio.gather(*(client.submit("nobody", "serves", validate=False) for _ in range(50)))
        stats = await client.redis.info("commandstats")
        assert len({h.job_id for h in handles}) == 50
    calls = {name.removeprefix("cmdstat_"): value["calls"] for name, value in stats.items()}
    assert calls["evalsha"] < 50  # coalesced: the first alone, the rest together
    # Nobody listed in the queue's idle set: the call's first job finds that out, the others do not ask.
    assert calls["zrangebyscore"] == calls["evalsha"]
    assert calls["hset"] == calls["zadd"] == 50


async def _terminal_message(client: JobClient, submit: Callable[[str], Awaitable[JobHandle]]) -> dict[str, Any]:
    """Subscribe to a new job's channel, then submit it (``submit(job_id)``, published from its submit
    on) and wait for it beside ``result()``: its terminal state message, parsed."""
    job_id = uuid.uuid4().hex
    async with client.redis.pubsub() as channel:
        await channel.subscribe(client.keys.job_channel(job_id))
        await channel.get_message(timeout=5)  # the subscribe confirmation
        handle = await submit(job_id)
        waiting = asyncio.ensure_future(handle.result(timeout=20))
        while True:
            message = await channel.get_message(timeout=20)
            assert message is not None, "no terminal state message"
            data: dict[str, Any] = json.loads(message["data"])
            if data.get("type") == "state" and JobState(data["state"]).is_terminal:
                break
        with contextlib.suppress(PluginActionExecutionError):
            await waiting
    return data


async def test_the_end_of_a_followed_job_carries_its_final_record(
    worker_process: WorkerFactory, client: JobClient
) -> None:
    worker_process(bundled_plugins_config(**FAST))
    params = {"steps": 3, "delay_s": 0.2}
    end = await _terminal_message(
        client, lambda job_id: client.submit("long_running", "count_slowly", params, job_id=job_id, watch=True)
    )
    assert end["final"]["actionq"]["state"] == "succeeded"  # what result() returns, with no read back
    assert json.loads(end["final"]["actionq"]["result"])["steps"] == 3


async def test_a_large_final_record_is_read_back_not_published(
    worker_process: WorkerFactory, client: JobClient
) -> None:
    worker_process(bundled_plugins_config(**FAST))
    message = "x" * 70_000  # the final record holds it twice (params and error): over the inline limit
    job_ids: list[str] = []

    async def submit(job_id: str) -> JobHandle:
        job_ids.append(job_id)
        return await client.submit("long_running", "fail", {"message": message}, job_id=job_id, watch=True)

    end = await _terminal_message(client, submit)
    assert "final" not in end
    with pytest.raises(PluginActionExecutionError) as raised:
        await client.job(job_ids[0]).result(timeout=20)
    assert message in str(raised.value.error.message)


async def test_a_forged_end_message_with_an_unreadable_final_record_is_read_back(
    worker_process: WorkerFactory, client: JobClient
) -> None:
    worker_process(bundled_plugins_config(**FAST))
    handle = await client.submit("long_running", "count_slowly", {"steps": 20, "delay_s": 0.1})
    waiting = asyncio.ensure_future(handle.result(timeout=30))
    async with asyncio.timeout(20):
        while await handle.state() is not JobState.RUNNING:
            await asyncio.sleep(0.02)
    # Written straight into Redis by someone else: a terminal state whose "final" is no record.
    forged = {"type": "state", "job_id": handle.job_id, "state": "succeeded", "attempt": 1, "seq": 99,
              "final": {"actionq": "not a record"}}  # fmt: skip
    await client.redis.publish(client.keys.job_channel(handle.job_id), json.dumps(forged))
    assert (await waiting)["steps"] == 20  # read back, and waited for the real end
