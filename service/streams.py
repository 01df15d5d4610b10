"""Generator output: a capped Redis Stream per job (``Keys.job_stream``), ended by a terminal marker.

Entry ids are explicit: item ``n`` (0-based) is entry ``0-(n+1)``, so "resume from item ``k``" is
``XREAD ... STREAMS <key> 0-k`` — O(1), no scanning — and a reader detects trimmed items by the
gap between the index it expects and the first id it gets. Entries (field values are JSON)::

    0-1  {"v": <item 0>}
    0-2  {"v": <item 1>}
    ...
    0-(N+1)  {"end": "succeeded" | "failed" | "timed_out" | "cancelled", "count": N, "error": <ErrorInfo>}

(``error`` only when the run did not succeed.) Items are added with ``MAXLEN ~ stream_max_items``:
Redis trims whole radix-tree nodes only, so the stream never holds *fewer* than the cap's latest
items (a reader less than the cap behind loses nothing) and trimming stays O(1) amortised; the
terminal marker is added without trimming, so it never pushes an item out. The stream is deleted
when an attempt starts (a re-run restarts it; explicit ids require it), lives for the pending TTL
while the job runs and for the job's result TTL after the marker: never a key without a TTL.

Readers block on ``XREAD BLOCK`` rather than on pub/sub: the stream is its own push channel and
its own durable copy, so there is nothing to deduplicate and no per-item ``PUBLISH``.

Worker side: :class:`StreamWriter` (batched ``XADD`` pipelines, one round trip per batch) and
:func:`pump`; plain generators run in a thread of their own (:func:`iterate_in_thread`). Caller
side: :func:`follow`, used by :meth:`service.handle.JobHandle.stream`.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from contextlib import aclosing, suppress
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from service.broker import broker_errors
from service.errors import StreamTrimmedError, StreamUnavailableError
from service.models import ErrorInfo, JobState
from service.wire import check_size, dumps, loads

__all__ = [
    "StreamEnd",
    "StreamWriter",
    "entry_id",
    "entry_index",
    "follow",
    "iterate_in_thread",
    "pump",
]

ITEM = b"v"
END = b"end"
COUNT = b"count"
ERROR = b"error"

# Items sent in one pipeline at most, and buffered before the producer waits for the write in
# flight: large enough to amortise the round trip (~100x fewer for a fast generator), small
# enough that a batch of big items stays a few MiB at most in the common case.
_BATCH = 256
# A plain generator's thread runs at most this many items ahead of the loop before it blocks.
_THREAD_QUEUE = 256
# Entries fetched per XREAD by a reader.
_READ_COUNT = 500
# A reader with nothing new re-checks the job's state this often (a job that ends without a
# stream, or a stream that expired, is noticed within this time).
_BLOCK_MS = 1000


def entry_id(index: int) -> str:
    """The stream entry id of item ``index`` (0-based): ``0-(index+1)``."""
    return f"0-{index + 1}"


def entry_index(raw_id: bytes | str) -> int:
    """Inverse of :func:`entry_id`."""
    text = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
    return int(text.partition("-")[2]) - 1


@dataclass(frozen=True)
class StreamEnd:
    """The terminal marker: how the run ended, how many items it produced, and its error."""

    state: JobState
    count: int
    error: ErrorInfo | None = None

    def fields(self) -> dict[bytes, bytes]:
        """The marker's stream entry fields."""
        out = {END: self.state.value.encode(), COUNT: str(self.count).encode()}
        if self.error is not None:
            out[ERROR] = self.error.model_dump_json().encode()
        return out

    @classmethod
    def parse(cls, fields: dict[bytes, bytes]) -> StreamEnd:
        """The marker from its stream entry fields."""
        error = fields.get(ERROR)
        return cls(
            state=JobState(fields[END].decode()),
            count=int(fields.get(COUNT, b"0")),
            error=ErrorInfo.model_validate_json(error) if error else None,
        )


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

    async def finish(self, end: StreamEnd, ttl_s: int) -> None:
        """Write what is buffered, then the terminal marker, and keep the stream for ``ttl_s``."""
        if self._writing is not None:
            with suppress(Exception):  # its error, if any, already failed the job
                await self._writing
        pipe = self.redis.pipeline(transaction=False)
        self._queue_items(pipe)
        pipe.xadd(self.key, end.fields(), id=entry_id(self._written))  # type: ignore[arg-type]
        pipe.expire(self.key, ttl_s)
        with broker_errors(f"ending stream {self.key}"):
            await pipe.execute()

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


# -- plain generators: a thread of their own, a bounded hand-off to the loop -------------------
class _ThreadChannel:
    """Hands items from a generator's thread to the loop; the thread blocks when it is full."""

    def __init__(self, loop: asyncio.AbstractEventLoop, maxsize: int) -> None:
        self._loop = loop
        self._maxsize = maxsize
        self._entries: deque[tuple[bool, Any]] = deque()  # (is_item, item | outcome)
        self._space = threading.Semaphore(maxsize)
        self._ready = asyncio.Event()
        self._waiting = False  # the loop waits for an item: only then does the thread wake it
        self._stopped = threading.Event()

    # thread side
    def run(self, func: Callable[..., Iterable[Any]], kwargs: dict[str, Any]) -> None:
        try:
            gen = iter(func(**kwargs))
            try:
                for item in gen:
                    if not self._put(True, item):
                        return
            finally:
                close = getattr(gen, "close", None)
                if close is not None:
                    close()
        except BaseException as exc:  # relayed to the loop, where it fails the job
            self._put(False, exc)
            return
        self._put(False, None)

    def _put(self, is_item: bool, value: Any) -> bool:
        if is_item:
            self._space.acquire()
        if self._stopped.is_set():
            return False
        self._entries.append((is_item, value))
        if not self._waiting:
            return True  # the loop will find it before it waits (it checks after raising the flag)
        try:
            self._loop.call_soon_threadsafe(self._ready.set)
        except RuntimeError:  # the loop is closed: nobody is reading any more
            return False
        return True

    # loop side
    async def items(self) -> AsyncGenerator[Any, None]:
        while True:
            while not self._entries:
                self._ready.clear()
                self._waiting = True
                if not self._entries:
                    await self._ready.wait()
                self._waiting = False
            is_item, value = self._entries.popleft()
            if not is_item:
                if value is not None:
                    raise value
                return
            self._space.release()
            yield value

    def stop(self) -> None:
        self._stopped.set()
        self._space.release(self._maxsize)  # wake a thread blocked on a full channel


async def iterate_in_thread(
    func: Callable[..., Iterable[Any]], kwargs: dict[str, Any], *, maxsize: int = _THREAD_QUEUE
) -> AsyncGenerator[Any, None]:
    """Iterate ``func(**kwargs)`` in a thread of its own and yield its items on the loop.

    The thread runs at most ``maxsize`` items ahead, then blocks until the loop catches up
    (backpressure). It runs in a copy of the caller's context (so ``current_job()`` works). Closing
    this iterator stops the thread at its next item and closes the generator there; a thread
    stuck inside one ``next()`` cannot be interrupted and finishes on its own.
    """
    channel = _ThreadChannel(asyncio.get_running_loop(), maxsize)
    context = contextvars.copy_context()
    thread = threading.Thread(
        target=context.run, args=(channel.run, func, kwargs), name="actionq-generator", daemon=True
    )
    thread.start()
    try:
        async with aclosing(channel.items()) as items:
            async for item in items:
                yield item
    finally:
        channel.stop()


# -- caller side --------------------------------------------------------------------------------
async def follow(
    redis: Redis, key: str, job_id: str, start: int, job_finished: Callable[[], Awaitable[bool]]
) -> AsyncGenerator[Any | StreamEnd, None]:
    """Yield the items of the stream from index ``start`` on, following it live, then its marker.

    The last value yielded is the :class:`StreamEnd`. Raises :class:`StreamTrimmedError` on a gap
    (the reader fell more than the cap behind), and :class:`StreamUnavailableError` when
    ``job_finished()`` says the job is over but there is no stream (or no marker) to read.
    """
    if start < 0:
        raise ValueError(f"start must be >= 0, not {start}")
    next_index = start
    block: int | None = None  # the first read does not block: a finished job is answered at once
    while True:
        with broker_errors(f"reading stream {key}"):
            reply = await redis.xread({key: entry_id(next_index - 1)}, count=_READ_COUNT, block=block)
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
