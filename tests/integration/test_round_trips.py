"""What the hot paths cost in Redis commands (a private server each: its command counts are the test's alone)."""

from __future__ import annotations

import asyncio

from service.client.client import JobClient
from service.processes.embedded import EmbeddedRedis


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
