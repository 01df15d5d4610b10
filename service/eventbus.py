"""Events across processes: a worker's notifications on Redis, and reading them back.

**Writing** — :class:`EventBridge` is a notification delegate registered for ``"*"``. The
delegate only appends to a buffer and returns; one flush task sends the buffer in batches of at
most ``_BATCH`` events, each batch as one pipeline of a constant number of commands, however
many events it holds::

    XADD <ns>:events MAXLEN ~ <events_max_len / batch size> * events <JSON array of the batch's events>
    EXPIRE <ns>:events <EVENTS_TTL_S>                    (no key without a TTL)
    PUBLISH <ns>:ch:events:<kind> <JSON array of the batch's events of that kind>   (per kind)

So a stream entry is a batch, and a channel message is the list of that kind's events of one
batch, in order. ``MAXLEN`` counts entries: each flush trims to ``events_max_len`` divided by its
own batch size, so the stream keeps about ``events_max_len`` events whether batches are small
(a quiet worker) or full (a busy one). Redis errors are
logged and the batch is dropped (counted in :attr:`EventBridge.failed`); they never reach the
job path. The buffer is bounded: past ``max_buffer`` events the oldest are dropped and counted.
Events are observability, best effort: the job record stays the source of truth.

**Reading** — :func:`read_events` reads the stream only (``XREAD BLOCK``, a push from Redis): the
stream is its own durable copy, so there is nothing to deduplicate between "replay" and "live".
It expands each entry into its events, in order; the event at index ``i`` (0-based) of entry
``<ms>-<seq>`` has the id ``"<ms>-<seq>.<i>"``. Entries written by an older worker (one event
per entry, field ``event``) still read, as index 0. Its cursor is always an explicit entry id,
and ``XREAD`` returns exactly the entries after it:

* ``since="now"``: the cursor is the newest id *at the start* (not ``$``, which each later
  ``XREAD`` would re-resolve, losing what arrived between two reads);
* ``since="<ms>-<seq>.<i>"`` (an event id): the events after that one — the rest of its entry,
  then later entries (resume from the last event you saw);
* ``since="<ms>-<seq>"`` (a stream id): the events of the entries after that whole entry;
* ``since="replay:N"``: the last N *matching* events (scanning back from the newest), then live
  from the newest entry seen by that first scan — no gap, no duplicate;
* ``since=<datetime>``: the events of the entries from that time on.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from service.broker import broker_errors
from service.delegates import DelegateManager
from service.events import Event, EventKind, ReceivedEvent, parse_event
from service.keys import Keys
from service.registrations import Registration
from service.wire import WireError, loads

__all__ = ["EVENTS_TTL_S", "EventBridge", "EventFilter", "read_events"]

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
# Entries per XREAD / XREVRANGE reply: an entry holds up to _BATCH events, so 50 keeps a reply
# under ~25,000 events even when every flush was full.
_READ_COUNT = 50
_REPLAY_PAGE = 50
_MAX_SEQ = 2**64 - 1
_ID_RE = re.compile(r"^\d+(-\d+)?$")
_EVENT_ID_RE = re.compile(r"^(\d+-\d+)\.(\d+)$")


def _json_array(items: Iterable[bytes]) -> bytes:
    """A JSON array of already-encoded JSON values (no re-encoding)."""
    return b"[" + b",".join(items) + b"]"


class EventBridge:
    """Publishes every notification to Redis: the events stream and a channel per kind."""

    def __init__(
        self, redis: Redis, keys: Keys, *, max_len: int, ttl_s: int = EVENTS_TTL_S, max_buffer: int = _MAX_BUFFER
    ) -> None:
        self.redis = redis
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
        self._buffer: deque[tuple[str, bytes]] = deque()
        self._flushing: asyncio.Task[None] | None = None
        self._failing = False

    def attach(self, manager: DelegateManager) -> Registration:
        """Register :meth:`notify` on ``manager`` for every kind."""
        return manager.register("*", self.notify)

    async def notify(self, sender: object, event_type: str, **kwargs: Any) -> None:
        """The notification delegate: queue ``kwargs["event"]`` for the next batch (returns at once)."""
        self.publish(kwargs["event"])

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

    def _pipeline(self, batch: list[tuple[str, bytes]]) -> Pipeline:
        """One XADD and one EXPIRE for the whole batch, and one PUBLISH per kind present in it."""
        key = self.keys.events()
        pipe = self.redis.pipeline(transaction=False)
        entries = max(1, self.max_len // len(batch))  # about max_len events, whatever the batch size
        pipe.xadd(key, {FIELD: _json_array(data for _, data in batch)}, maxlen=entries, approximate=True)
        pipe.expire(key, self.ttl_s)
        by_kind: dict[str, list[bytes]] = {}
        for kind, data in batch:
            by_kind.setdefault(kind, []).append(data)
        for kind, items in by_kind.items():
            pipe.publish(self.keys.event_channel(kind), _json_array(items))
        return pipe

    async def _flush(self) -> None:
        while self._buffer:
            batch = [self._buffer.popleft() for _ in range(min(len(self._buffer), _BATCH))]
            try:
                await self._pipeline(batch).execute()
            except Exception as exc:  # Redis down or failing: log, count, go on; never the job's problem
                self.failed += len(batch)
                if not self._failing:
                    log.warning("events_bridge_failing", error=str(exc), lost=len(batch))
                self._failing = True
            else:
                self.written += len(batch)
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
            self._flushing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flushing


# -- reading --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EventFilter:
    """Which events a reader wants (``None``: any); applied to the JSON before it is parsed."""

    kinds: frozenset[str] | None = None
    plugin: str | None = None
    job_id: str | None = None
    worker_id: str | None = None

    @classmethod
    def of(
        cls,
        kinds: Iterable[str | EventKind] | None = None,
        plugin: str | None = None,
        job_id: str | None = None,
        worker_id: str | None = None,
    ) -> EventFilter:
        """A filter; an unknown kind is a ``ValueError`` (a typo would silently match nothing)."""
        names = None if kinds is None else frozenset(str(k) for k in kinds) or None
        unknown = (names or frozenset()) - set(EventKind)
        if unknown:
            raise ValueError(f"unknown event kind(s): {', '.join(sorted(unknown))}")
        return cls(names, plugin, job_id, worker_id)

    @property
    def everything(self) -> bool:
        """True if nothing is filtered out."""
        return self.kinds is None and self.plugin is None and self.job_id is None and self.worker_id is None

    def matches(self, data: dict[str, Any]) -> bool:
        """True if the event ``data`` (parsed JSON) passes every condition."""
        return (
            (self.kinds is None or data.get("kind") in self.kinds)
            and (self.plugin is None or data.get("plugin") == self.plugin)
            and (self.job_id is None or data.get("job_id") == self.job_id)
            and (self.worker_id is None or data.get("worker_id") == self.worker_id)
        )


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _parse_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _id_before(entry_id: str) -> str:
    """The largest id below ``entry_id`` (an inclusive start as an exclusive XREAD cursor)."""
    ms, seq = _parse_id(entry_id)
    if seq > 0:
        return f"{ms}-{seq - 1}"
    return f"{ms - 1}-{_MAX_SEQ}" if ms > 0 else "0-0"


def _field(fields: dict[Any, Any], name: bytes) -> Any:
    """A field of an entry, whether the client decodes responses or not."""
    return fields.get(name, fields.get(name.decode()))


def _entry_items(fields: dict[Any, Any]) -> list[Any]:
    """The parsed (not yet validated) event objects of an entry: a batch, or one old-format event."""
    batch = _field(fields, FIELD)
    if batch is not None:
        items = loads(batch)
        if not isinstance(items, list):
            raise WireError("the events field is not a JSON array")
        return items
    single = _field(fields, LEGACY_FIELD)
    if single is not None:
        return [loads(single)]
    raise WireError("no events field")


def _decode_item(event_id: str, data: Any, wanted: EventFilter) -> ReceivedEvent | None:
    try:
        if not isinstance(data, dict):
            raise WireError("not a JSON object")
        if not wanted.matches(data):
            return None
        return ReceivedEvent(event_id, parse_event(data))
    except WireError as exc:  # foreign data, or a kind from a newer version: skip it
        log.warning("event_skipped", id=event_id, error=str(exc))
        return None


def _decode(raw_id: bytes | str, fields: dict[Any, Any], wanted: EventFilter, first: int = 0) -> list[ReceivedEvent]:
    """The matching events of one entry from index ``first`` on, in order, with their event ids."""
    entry_id = _text(raw_id)
    try:
        items = _entry_items(fields)
    except WireError as exc:  # foreign data: skip the entry
        log.warning("event_skipped", id=entry_id, error=str(exc))
        return []
    found = (_decode_item(f"{entry_id}.{i}", data, wanted) for i, data in enumerate(items) if i >= first)
    return [received for received in found if received is not None]


async def _newest_id(redis: Redis, key: str) -> str:
    with broker_errors(f"reading {key}"):
        newest = await redis.xrevrange(key, count=1)
    return _text(newest[0][0]) if newest else "0-0"


async def _replay(redis: Redis, key: str, n: int, wanted: EventFilter) -> tuple[str, list[ReceivedEvent]]:
    """The last ``n`` matching events (oldest first) and the newest entry id looked at (the live cursor)."""
    if n == 0:
        return await _newest_id(redis, key), []
    newest_first: list[ReceivedEvent] = []
    top, upper = "0-0", "+"
    while len(newest_first) < n:
        # Every entry holds at least one event: n - found entries may be enough when nothing is filtered.
        count = min(n - len(newest_first), _REPLAY_PAGE) if wanted.everything else _REPLAY_PAGE
        with broker_errors(f"replaying {key}"):
            page = await redis.xrevrange(key, max=upper, min="-", count=count)
        if not page:
            break
        if upper == "+":
            top = _text(page[0][0])
        for raw_id, fields in page:
            newest_first.extend(reversed(_decode(raw_id, fields, wanted)))
        last = _text(page[-1][0])
        if len(page) < count or last == "0-0":
            break
        upper = _id_before(last)
    return top, newest_first[:n][::-1]


async def _after_event(redis: Redis, key: str, entry_id: str, index: int, wanted: EventFilter) -> list[ReceivedEvent]:
    """The matching events after index ``index`` of entry ``entry_id`` (none if it was trimmed)."""
    with broker_errors(f"reading {key}"):
        entry = await redis.xrange(key, min=entry_id, max=entry_id, count=1)
    return _decode(entry[0][0], entry[0][1], wanted, first=index + 1) if entry else []


async def _start(redis: Redis, key: str, since: str | datetime, wanted: EventFilter) -> tuple[str, list[ReceivedEvent]]:
    """The first XREAD cursor (an entry id) and the events to yield before reading from it."""
    if isinstance(since, datetime):
        return _id_before(f"{int(since.timestamp() * 1000)}-0"), []
    if since == "now":
        return await _newest_id(redis, key), []
    if since.startswith("replay:"):
        count = since.partition(":")[2]
        if not count.isdigit():
            raise ValueError(f"since={since!r}: replay:N needs a number of events")
        return await _replay(redis, key, int(count), wanted)
    event_id = _EVENT_ID_RE.match(since)
    if event_id is not None:
        entry_id, index = event_id.group(1), int(event_id.group(2))
        return entry_id, await _after_event(redis, key, entry_id, index, wanted)
    if not _ID_RE.match(since):
        raise ValueError(f"since={since!r} is not 'now', 'replay:N', an event or stream id, or a datetime")
    return since, []


async def read_events(
    redis: Redis,
    keys: Keys,
    *,
    kinds: Iterable[str | EventKind] | None = None,
    plugin: str | None = None,
    job_id: str | None = None,
    worker_id: str | None = None,
    since: str | datetime = "now",
    follow: bool = True,
    block_ms: int = 1000,
) -> AsyncIterator[ReceivedEvent]:
    """Events from the events stream, oldest first, filtered; see the module docstring for ``since``.

    Each stream entry is expanded into its events, with ids ``"<entry id>.<index>"``; entries of
    the older one-event format (field ``event``) read as index 0. With ``follow`` it waits for
    new events forever (blocking ``block_ms`` per ``XREAD``); without, it stops at the newest
    event that existed when it started.
    """
    wanted = EventFilter.of(kinds, plugin, job_id, worker_id)
    key = keys.events()
    cursor, first = await _start(redis, key, since, wanted)
    for received in first:
        yield received
    end = None if follow else _parse_id(await _newest_id(redis, key))
    while True:
        with broker_errors(f"reading {key}"):
            reply = await redis.xread({key: cursor}, count=_READ_COUNT, block=block_ms if follow else None)
        entries = reply[0][1] if reply else []
        if not entries and end is not None:
            return
        for raw_id, fields in entries:
            cursor = _text(raw_id)
            if end is not None and _parse_id(cursor) > end:
                return
            for received in _decode(raw_id, fields, wanted):
                yield received
