"""The caller's side of a generator action's output: :func:`follow` reads a job's stream live.

Readers block on ``XREAD BLOCK`` rather than on pub/sub: the stream (format:
:mod:`service.redis.streams`) is its own push channel and its own durable copy, so there is
nothing to deduplicate and no per-item ``PUBLISH``. Used by :meth:`service.client.handle.JobHandle.stream`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from service.errors import StreamTrimmedError, StreamUnavailableError
from service.redis.connection import broker_errors, while_unreachable
from service.redis.streams import END, ITEM, StreamEnd, entry_id, entry_index
from service.wire import loads

__all__ = ["follow"]

# Entries fetched per XREAD by a reader.
_READ_COUNT = 500
# A reader with nothing new re-checks the job's state this often (a job that ends without a
# stream, or a stream that expired, is noticed within this time).
_BLOCK_MS = 1000


async def follow(
    redis: Redis,
    key: str,
    job_id: str,
    start: int,
    job_finished: Callable[[], Awaitable[bool]],
    reconnect_s: float = 0,
) -> AsyncGenerator[Any | StreamEnd, None]:
    """Yield the items of the stream from index ``start`` on, following it live, then its marker.

    The last value yielded is the :class:`StreamEnd`. Raises :class:`StreamTrimmedError` on a gap
    (the reader fell more than the cap behind), and :class:`StreamUnavailableError` when
    ``job_finished()`` says the job is over but there is no stream (or no marker) to read. While
    Redis is unreachable it keeps trying for ``reconnect_s``.
    """
    if start < 0:
        raise ValueError(f"start must be >= 0, not {start}")
    next_index = start
    block: int | None = None  # the first read does not block: a finished job is answered at once
    while True:
        cursor = {key: entry_id(next_index - 1)}
        reply = await while_unreachable(lambda: _read(redis, key, cursor, block), for_s=reconnect_s)  # noqa: B023
        entries = reply[0][1] if reply else []
        for raw_id, fields in entries:
            index = entry_index(raw_id)
            if index != next_index:
                raise StreamTrimmedError(job_id, next_index, index)
            if END in fields:
                yield StreamEnd.parse(fields)
                return
            yield loads(fields[ITEM])
            next_index += 1
        if not entries:
            end = await _check_idle(redis, key, job_id, next_index, job_finished)
            if end is not None:
                yield end
                return
        block = _BLOCK_MS


async def _read(redis: Redis, key: str, cursor: dict[str, str], block: int | None) -> Any:
    with broker_errors(f"reading stream {key}"):
        return await redis.xread(cursor, count=_READ_COUNT, block=block)  # type: ignore[arg-type]


async def _check_idle(
    redis: Redis, key: str, job_id: str, next_index: int, job_finished: Callable[[], Awaitable[bool]]
) -> StreamEnd | None:
    """Nothing new to read: keep waiting (``None``), or the end if the reader is past it."""
    if not await job_finished():
        return None
    # The marker is written before the record's final state: a finished job's stream has it.
    with broker_errors(f"reading stream {key}"):
        tail = await redis.xrevrange(key, count=1)
    if not tail:
        raise StreamUnavailableError(job_id, "the job ended and has no output stream (not a generator, or expired)")
    raw_id, fields = tail[0]
    if entry_index(raw_id) >= next_index:
        return None  # entries arrived since the read: read them
    if END not in fields:
        raise StreamUnavailableError(job_id, "the job ended but its stream has no terminal marker")
    return StreamEnd.parse(fields)
