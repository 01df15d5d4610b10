"""A worker's notifications on Redis: the events stream and a channel per kind.

:class:`EventBridge` is a sink of the worker's delegate manager: it gets every event inline,
before the delegates (:meth:`DelegateManager.add_sink`), and only appends it to a buffer; one
flush task sends the buffer in batches of at most ``_BATCH`` events, each batch as one pipeline
of a constant number of commands, however many events it holds::

    XADD <ns>:events MAXLEN ~ <events_max_len / batch size> * events <JSON array of the batch's events>
    EXPIRE <ns>:events <EVENTS_TTL_S>      (no key without a TTL: with the first batch, then once a minute)
    PUBLISH <ns>:ch:events:<kind> <JSON array of the batch's events of that kind>   (per kind)

(on Redis Cluster ``SPUBLISH {<ns>.events}<ns>:ch:events:<kind> ...``: sharded, in the same pipeline).

Under load the batches go out at most once per ``window_s`` (the worker's ``batch_window_ms``): an
event after a quiet spell goes at once, the next ones within the window wait for it to close, so
a busy worker sends a few pipelines a second however its jobs are timed.

So a stream entry is a batch, and a channel message is the list of that kind's events of one
batch, in order. ``MAXLEN`` counts entries: each flush trims to ``events_max_len`` divided by its
own batch size, so the stream keeps about ``events_max_len`` events whether batches are small
(a quiet worker) or full (a busy one). Redis errors are
logged and the batch is dropped (counted in :attr:`EventBridge.failed`); they never reach the
job path. The buffer is bounded: past ``max_buffer`` events the oldest are dropped and counted.
Events are observability, best effort: the job record stays the source of truth.

Readers: :mod:`service.events.reader`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterable

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from service.events.delegates import DelegateManager
from service.events.models import Event
from service.keys import Keys, is_sharded_channel
from service.redis.cluster import is_cluster, publish
from service.tasks import stop_tasks

log = structlog.get_logger("actionq.events")

FIELD = b"events"
"""The stream entry field holding a batch: a JSON array of event objects."""
LEGACY_FIELD = b"event"
"""The field of the older one-event-per-entry format (still read, never written)."""
# The events stream outlives a week of silence (a deployment stopped over a long weekend can
# still be replayed), and then disappears: no key without a TTL.
EVENTS_TTL_S = 7 * 86_400
# Events per pipeline (and so per stream entry) at most: a few hundred KiB of JSON; and events
# buffered before dropping the oldest.
_BATCH = 500
_MAX_BUFFER = 10_000
_DROP_LOG_EVERY = 1_000
# The stream's TTL is refreshed this often (a week's TTL needs no refresh per batch).
_EXPIRE_EVERY_S = 60.0


def _json_array(items: Iterable[bytes]) -> bytes:
    """A JSON array of already-encoded JSON values (no re-encoding)."""
    return b"[" + b",".join(items) + b"]"


class EventBridge:
    """Publishes every notification to Redis: the events stream and a channel per kind."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        max_len: int,
        ttl_s: int = EVENTS_TTL_S,
        max_buffer: int = _MAX_BUFFER,
        window_s: float = 0.0,
    ) -> None:
        self.redis = redis
        self._cluster = is_cluster(redis)
        self.keys = keys
        self.max_len = max_len
        """Cap of the stream, in entries (batches of up to 500 events): ``MAXLEN ~``."""
        self.ttl_s = ttl_s
        self.max_buffer = max_buffer
        self.written = 0
        """Events written to Redis so far."""
        self.failed = 0
        """Events lost to Redis errors."""
        self.dropped = 0
        """Events dropped because the buffer was full (Redis slower than the worker)."""
        self.flushes = 0
        """Pipelines sent that went through (``written / flushes``: the mean batch)."""
        self._buffer: deque[tuple[str, bytes]] = deque()
        self._flushing: asyncio.Task[None] | None = None
        self._failing = False
        self.window_s = window_s
        """Batches go out at most this often (0: each as soon as the previous one returned)."""
        self._last_flush = float("-inf")  # loop time
        self._expired_at = float("-inf")  # loop time of the last EXPIRE sent

    def attach(self, manager: DelegateManager) -> None:
        """Receive every event of ``manager``: :meth:`publish` is its sink (called inline, no lane)."""
        manager.add_sink(self.publish)

    def publish(self, event: Event) -> None:
        """Queue ``event`` for the next batch; call on the event loop."""
        if len(self._buffer) >= self.max_buffer:
            self._buffer.popleft()
            self.dropped += 1
            if self.dropped % _DROP_LOG_EVERY == 1:
                log.warning("events_dropped", dropped=self.dropped, reason="Redis is slower than the worker")
        self._buffer.append((event.kind, event.model_dump_json().encode()))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(self._flush(), name="actionq-events-bridge")

    def _pipeline(self, batch: list[tuple[str, bytes]]) -> tuple[Pipeline, list[tuple[str, bytes]]]:
        """One XADD and one EXPIRE for the whole batch, and one PUBLISH per kind present in it.

        On Redis Cluster the channels are sharded (:meth:`Keys.event_channel`): each ``SPUBLISH`` goes
        in the pipeline, which routes it by its channel's slot like a key. A classic channel (a
        namespace of one Redis's layout on a cluster) is returned to be sent after the pipeline:
        redis-py's cluster pipeline refuses a ``PUBLISH``, which has no key to route by.
        """
        key = self.keys.events()
        pipe = self.redis.pipeline(transaction=False)
        entries = max(1, self.max_len // len(batch))  # about max_len events, whatever the batch size
        pipe.xadd(key, {FIELD: _json_array(data for _, data in batch)}, maxlen=entries, approximate=True)
        now = asyncio.get_running_loop().time()
        if now - self._expired_at >= _EXPIRE_EVERY_S:
            pipe.expire(key, self.ttl_s)
            self._expired_at = now
        by_kind: dict[str, list[bytes]] = {}
        for kind, data in batch:
            by_kind.setdefault(kind, []).append(data)
        messages = [(self.keys.event_channel(kind), _json_array(items)) for kind, items in by_kind.items()]
        after: list[tuple[str, bytes]] = []
        for channel, body in messages:
            if not self._cluster:
                pipe.publish(channel, body)
            elif is_sharded_channel(channel):
                pipe.execute_command("SPUBLISH", channel, body)
            else:
                after.append((channel, body))
        return pipe, after

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._buffer:
            wait_s = self._last_flush + self.window_s - loop.time()
            if wait_s > 0 and len(self._buffer) < _BATCH:
                await asyncio.sleep(wait_s)
            self._last_flush = loop.time()
            batch = [self._buffer.popleft() for _ in range(min(len(self._buffer), _BATCH))]
            try:
                pipe, after = self._pipeline(batch)
                await pipe.execute()
                for channel, body in after:
                    await publish(self.redis, channel, body)
            except Exception as exc:  # Redis down or failing: log, count, go on; never the job's problem
                self.failed += len(batch)
                if not self._failing:
                    log.warning("events_bridge_failing", error=str(exc), lost=len(batch))
                self._failing = True
            else:
                self.written += len(batch)
                self.flushes += 1
                if self._failing:
                    log.info("events_bridge_recovered", lost=self.failed)
                self._failing = False

    async def flush(self) -> None:
        """Wait until every queued event has been sent (or failed)."""
        while self._flushing is not None and not self._flushing.done():
            await asyncio.shield(self._flushing)

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Flush for at most ``timeout_s``, then stop."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self.flush()
        if self._flushing is not None and not self._flushing.done():
            log.warning("events_not_flushed", pending=len(self._buffer))
            await stop_tasks(self._flushing)
