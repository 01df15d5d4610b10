"""Writing and reading one job's output stream directly (no executor): shared by the stream tests.

The writer is the worker's (:mod:`service.worker.streams`), the reader the client's
(:func:`service.client.streams.follow`); :func:`finish` does what the settle script does when the job ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import redis.asyncio as aioredis

from service.client.streams import follow
from service.models import JobState
from service.redis.streams import StreamEnd, entry_id
from service.worker.streams import StreamWriter, pump

KEY = "ns:stream:job-1"


def writer(redis: aioredis.Redis, **overrides: Any) -> StreamWriter:
    """A writer of the stream at :data:`KEY` (1000 items, 1 KiB an item unless ``overrides`` say otherwise)."""
    options: dict[str, Any] = {"max_items": 1000, "max_item_bytes": 1024, "pending_ttl_s": 300} | overrides
    return StreamWriter(redis, KEY, **options)


async def agen(items: list[Any], fail: BaseException | None = None) -> AsyncGenerator[Any, None]:
    """An async generator yielding ``items``, then raising ``fail`` if given."""
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
    """A ``job_finished`` check for a job that has ended."""
    return True


async def read(redis: aioredis.Redis, start: int = 0) -> list[Any]:
    """Everything the reader yields from index ``start`` of an ended job's stream, the marker last."""
    async with asyncio.timeout(10):
        return [entry async for entry in follow(redis, KEY, "job-1", start, finished)]


async def finish(w: StreamWriter, end: StreamEnd, ttl_s: int) -> None:
    """What the settle script does with a generator's stream when its job ends: the marker, the TTL."""
    written = await w.flush()
    await w.redis.xadd(KEY, end.fields(), id=entry_id(written))  # type: ignore[arg-type]
    await w.redis.expire(KEY, ttl_s)


async def write(redis: aioredis.Redis, items: list[Any], end: JobState = JobState.SUCCEEDED, **kw: Any) -> None:
    """Write ``items`` as a job's run would, then end the stream with ``end`` (the writer gets ``kw``)."""
    w = writer(redis, **kw)
    assert await pump(agen(items), w) == {"items": len(items)}
    await finish(w, StreamEnd(end, w.count), ttl_s=60)
