"""What the hot paths cost in Redis commands (a private server each: its command counts are the test's alone)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest

from service import JobState, PluginActionExecutionError
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


async def _terminal_message(client: JobClient, job_id: str, handle_result: Any) -> dict[str, Any]:
    """Follow ``job_id``'s channel beside ``result()``; the terminal state message, parsed."""
    async with client.redis.pubsub() as channel:
        await channel.subscribe(client.keys.job_channel(job_id))
        await channel.get_message(timeout=5)  # the subscribe confirmation
        waiting = asyncio.ensure_future(handle_result())
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
    hold = await client.submit("long_running", "count_slowly", {"steps": 3, "delay_s": 0.2})
    end = await _terminal_message(client, hold.job_id, lambda: hold.result(timeout=20))
    assert end["final"]["actionq"]["state"] == "succeeded"  # what result() returns, with no read back
    assert (await hold.result(timeout=20))["steps"] == 3


async def test_a_large_final_record_is_read_back_not_published(
    worker_process: WorkerFactory, client: JobClient
) -> None:
    worker_process(bundled_plugins_config(**FAST))
    message = "x" * 70_000  # the final record holds it twice (params and error): over the inline limit
    failing = await client.submit("long_running", "fail", {"message": message})
    end = await _terminal_message(client, failing.job_id, lambda: failing.result(timeout=20))
    assert "final" not in end
    with pytest.raises(PluginActionExecutionError) as raised:
        await failing.result(timeout=20)
    assert message in str(raised.value.error.message)
