"""The worker's side of a generator action's output: :class:`StreamWriter` and :func:`pump`.

Items go to the job's stream (format: :mod:`service.redis.streams`) in batched ``XADD``
pipelines, one round trip per batch: a fast generator gets many items per round trip, a slow one
gets each item sent at once. The terminal marker is written by the settle script with the job's
final state (:mod:`service.worker.settle`), so an attempt that lost its claim writes none.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing, suppress
from typing import Any

import structlog
from redis.asyncio import Redis

from service.errors import BrokerError
from service.redis.connection import broker_errors
from service.redis.streams import ITEM, entry_id
from service.wire import check_size, dumps

__all__ = ["StreamWriter", "pump"]

log = structlog.get_logger("actionq.executor")

# Items sent in one pipeline at most, and buffered before the producer waits for the write in
# flight: large enough to amortise the round trip (~100x fewer for a fast generator), small
# enough that a batch of big items stays a few MiB at most in the common case.
_BATCH = 256


class StreamWriter:
    """Appends one attempt's items to a job's stream, in order, batched, then the terminal marker.

    :meth:`add` encodes and checks an item at once (a non-JSON or oversized item raises, naming
    its index) and buffers it; one write task sends the buffer as a pipeline, so a fast
    generator gets many items per round trip and a slow one gets each item sent immediately.
    """

    def __init__(
        self, redis: Redis, key: str, *, max_items: int, max_item_bytes: int, pending_ttl_s: int, batch: int = _BATCH
    ) -> None:
        self.redis = redis
        self.key = key
        self.max_items = max_items
        self.max_item_bytes = max_item_bytes
        self.pending_ttl_s = pending_ttl_s
        self.batch = batch
        self.started = False
        self.count = 0
        """Items accepted so far (all of them are written by :meth:`finish` at the latest)."""
        self._written = 0
        self._buffer: list[bytes] = []
        self._writing: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Delete what an earlier attempt left: this attempt's stream starts at item 0."""
        with broker_errors(f"starting stream {self.key}"):
            await self.redis.delete(self.key)
        self.started = True

    async def add(self, item: Any) -> None:
        """Append ``item``; waits only when a full batch is buffered behind the write in flight."""
        self._buffer.append(self._encode(item))
        self.count += 1
        if self._writing is not None and not self._writing.done():
            if len(self._buffer) >= self.batch:
                await asyncio.shield(self._writing)  # backpressure; a timeout must not cancel the write
            return
        if self._writing is not None:
            self._writing.result()  # a failed write fails the job
        self._writing = asyncio.create_task(self._write())

    async def drain(self) -> None:
        """Wait for the writes in flight; raises their error (a lost write fails the job)."""
        if self._writing is not None:
            await asyncio.shield(self._writing)

    async def flush(self) -> int:
        """Write what is buffered (no end marker: it goes with the job's final state); items written.

        A failed write is logged, not raised: the job has failed already (see :meth:`add`), or it
        is settling and its end marker goes after the items that made it.
        """
        if self._writing is not None:
            with suppress(Exception):  # its error, if any, already failed the job
                await self._writing
        if self._buffer:
            pipe = self.redis.pipeline(transaction=False)
            self._queue_items(pipe)
            pipe.expire(self.key, self.pending_ttl_s)
            try:
                with broker_errors(f"writing stream {self.key}"):
                    await pipe.execute()
            except BrokerError as exc:
                log.error("stream_items_not_written", reason=str(exc))
        return self._written

    def abort(self) -> None:
        """Stop writing (the attempt is handed back to the queue; the next one restarts the stream)."""
        if self._writing is not None:
            self._writing.cancel()
        self._buffer.clear()

    def _encode(self, item: Any) -> bytes:
        index = self.count
        try:
            data = dumps(item)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"item {index} yielded by the action is not JSON: {exc}") from exc
        return check_size(f"item {index} yielded by the action", data, self.max_item_bytes)

    async def _write(self) -> None:
        while self._buffer:
            first = self._written == 0
            pipe = self.redis.pipeline(transaction=False)
            self._queue_items(pipe)
            if first:
                pipe.expire(self.key, self.pending_ttl_s)
            with broker_errors(f"writing stream {self.key}"):
                await pipe.execute()

    def _queue_items(self, pipe: Any) -> None:
        batch, self._buffer = self._buffer, []
        for data in batch:
            pipe.xadd(self.key, {ITEM: data}, id=entry_id(self._written), maxlen=self.max_items, approximate=True)
            self._written += 1


async def pump(items: AsyncGenerator[Any, None], writer: StreamWriter) -> dict[str, int]:
    """Stream every item of ``items`` through ``writer``; the job's result, ``{"items": N}``.

    The iterator is closed whatever happens (a failing item, a timeout, a cancellation), so a
    generator's ``finally`` runs and a plain generator's thread stops.
    """
    await writer.start()
    async with aclosing(items):
        async for item in items:
            await writer.add(item)
    await writer.drain()
    return {"items": writer.count}
