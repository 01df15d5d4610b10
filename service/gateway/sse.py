"""Server-Sent Events: a job's state and progress, a generator job's items, each resumable.

**Job events** (``GET /v1/jobs/{id}/events``) come from :meth:`JobHandle.progress`, which
subscribes to the job's channel first, then reads the record, then follows live, deduplicating by
the job's sequence number. Each event's ``id`` is that ``seq``; its ``data`` is the whole
:class:`~service.models.ProgressSnapshot` (state and latest progress), so an event supersedes every
earlier one. A reconnect with ``Last-Event-ID: N`` gets the current snapshot if its ``seq`` is past
``N`` (what changed while away, folded into one event: the record keeps the latest snapshot, not
every update), then every later change: never an event at or before ``N``, never a change lost.
The event name is ``state`` when the state changed (and for the first event), ``progress`` otherwise;
the response ends after the terminal state's event.

**Stream items** (``GET /v1/jobs/{id}/stream``) are read with :func:`service.client.streams.follow`
(``XREAD BLOCK`` on the job's output stream, which is its own durable copy). Item ``n`` has the
id ``0-(n+1)`` (its stream entry id); ``Last-Event-ID: 0-K`` resumes at item ``K``. An ``end``
event (the terminal marker: state, count, error) ends the response.

**A slow client is not buffered without bound.** A pump task reads the source into a queue of
``gateway.sse_queue`` events per connection; when the queue stays full for ``gateway.sse_stall_s``
the client has fallen behind: the pump stops (its Redis subscription or read is released), the
queued events are let go, and the response ends at the client's next read, with a ``: dropped``
comment. It can reconnect with
``Last-Event-ID`` and lose nothing that the rules above keep. A job's events need no pump: the
job's hub keeps a bounded queue per follower (:class:`_Slot`, ``gateway.sse_queue`` snapshots, the
oldest let go when it is full) and notes the stall itself, so a follower costs no task and no
second queue per event; a follower that wakes to several snapshots sends them in one write
(:func:`job_event_stream`). An idle stream gets a ``: keep-alive``
comment every ``gateway.keepalive_s`` seconds.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from typing import Protocol, cast

import structlog
from fastapi.responses import StreamingResponse
from fastapi.sse import ServerSentEvent, format_sse_event
from pydantic import PrivateAttr
from starlette.types import Receive, Scope, Send

from service.client.client import JobClient
from service.client.handle import JobHandle
from service.client.streams import follow
from service.errors import ActionQError
from service.gateway.problems import error_body, fields_of
from service.models import JobState, ProgressSnapshot
from service.redis.streams import StreamEnd, entry_id
from service.settings import GatewaySettings
from service.tasks import stop_tasks

__all__ = ["EventStream", "job_event_stream", "relay", "sse_response", "stream_items"]

log = structlog.get_logger("actionq.gateway")


class _Behind(Exception):
    """The client's queue stayed full for ``sse_stall_s``: it has fallen behind."""


def error_event(exc: ActionQError) -> ServerSentEvent:
    """An ``error`` event in the gateway's one error shape (it ends the stream)."""
    body = error_body(type(exc).__name__, str(exc), fields_of(exc))
    return ServerSentEvent(event="error", raw_data=json.dumps(body))


def failure_event(exc: BaseException, what: str) -> ServerSentEvent:
    """The ``error`` event that ends a stream whose source failed: an :class:`ActionQError` says what
    (Redis gone for good, a trimmed or missing stream); anything else is a bug of ours, logged, and
    the client is told no more (the gateway stays up)."""
    if isinstance(exc, ActionQError):
        return error_event(exc)
    log.error("sse_source_failed", stream=what, exc_info=exc)
    body = error_body("InternalError", f"unexpected {type(exc).__name__}; see the gateway's log")
    return ServerSentEvent(event="error", raw_data=json.dumps(body))


def job_event_stream(handle: JobHandle, after: int, settings: GatewaySettings) -> EventStream:
    """The job's snapshots past sequence number ``after`` (``-1``: all), as ``state``/``progress`` events.

    Every follower of one job in this gateway shares one upstream (:class:`_JobHub`): the job is
    followed, and each snapshot encoded, once, however many dashboards show it. The follower gets
    what :func:`relay` gives the other streams — keep-alives, and the end of the stream when it
    lets its queue (``sse_queue`` snapshots) stay full for ``sse_stall_s`` — from the hub itself:
    no pump task and no second queue per follower and event. The hub's bytes go straight to the
    response, the snapshots a follower had pending when it woke in one write.
    """
    return EventStream(_hub(handle).wire(after, settings), headers=_SSE_HEADERS)


class _Shared(ServerSentEvent):
    """An event every follower of one job sends as it is: built once per snapshot and name, its bytes
    encoded once, on first use (a thousand followers of a hundred jobs are ten thousand sends a second)."""

    _wire: bytes | None = PrivateAttr(default=None)

    def wire(self) -> bytes:
        """The event as the stream carries it."""
        # The private attribute's slot, not self._wire: pydantic's __getattr__ for a private
        # attribute costs ~1.7 us a read, once per follower and event here.
        private = cast(dict[str, bytes | None], self.__pydantic_private__)
        wire = private["_wire"]
        if wire is None:
            wire = private["_wire"] = _format(self)
        return wire


_Entry = tuple[ProgressSnapshot, str, dict[str, _Shared]]
"""A snapshot, its JSON (encoded once for every follower) and its events by name, made as followers need them."""


class _Slot:
    """One follower's place at a hub: the snapshots it has not taken yet, in order, at most ``depth``
    (past that the oldest go: each snapshot is the whole state, so a follower that far behind loses
    intermediate progress, not the outcome). Full for ``stall_s`` when a snapshot comes: the follower
    has fallen behind (:attr:`behind`), and its stream ends. The keep-alive ticker calls :meth:`tick`.

    The follower waits on a bare future, made only when it has nothing to send (an
    ``asyncio.Event`` made one per wait too, plus its own bookkeeping, per follower and snapshot).
    """

    def __init__(self, depth: int, stall_s: float) -> None:
        self.pending: deque[_Entry] = deque(maxlen=depth)
        self.waiter: asyncio.Future[None] | None = None
        self.stall_s = stall_s
        self.full_since: float | None = None
        self.behind = False
        self.keepalive = False  # a keep-alive comment is due
        self.sent = False  # something was taken since the ticker last looked
        self.ticker: _Ticker | None = None

    def offer(self, entry: _Entry | None) -> None:
        if entry is not None:
            if len(self.pending) == self.pending.maxlen:
                now = asyncio.get_running_loop().time()
                if self.full_since is None:
                    self.full_since = now
                elif now - self.full_since >= self.stall_s:
                    self.behind = True
            self.pending.append(entry)
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Until something is offered (or a tick makes a keep-alive due)."""
        waiter = self.waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self.waiter = None

    def take(self) -> list[_Entry]:
        """Every pending snapshot, oldest first."""
        self.full_since = None
        self.sent = True
        taken = list(self.pending)
        self.pending.clear()
        return taken

    def tick(self) -> None:
        """A keep-alive comment if nothing was taken since the last tick."""
        if not self.sent:
            self.keepalive = True
            self._wake()
        self.sent = False


class _JobHub:
    """One job's snapshots for every follower in this process: a single :meth:`JobHandle.progress`.

    Each follower gets every snapshot in order (ids only increase, so ``Last-Event-ID``
    resumption is as before); one far behind gets the newest (see :class:`_Slot`).
    """

    def __init__(self, handle: JobHandle, forget: Callable[[], None]) -> None:
        self.handle = handle
        self.forget = forget
        self.current: _Entry | None = None
        self.slots: set[_Slot] = set()
        self.ended = False
        self.error: BaseException | None = None
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        try:
            progress = cast(AsyncGenerator[ProgressSnapshot, None], self.handle.progress())
            async with aclosing(progress) as snapshots:
                async for snap in snapshots:
                    self.current = (snap, snap.model_dump_json(), {})
                    for slot in list(self.slots):
                        slot.offer(self.current)
        except Exception as exc:  # Redis gone for good, an unreadable record: every follower says so
            self.error = exc
        finally:
            self.ended = True
            self.forget()
            for slot in list(self.slots):
                slot.offer(None)

    async def _next(self, slot: _Slot) -> list[_Entry] | ServerSentEvent | None:
        """The follower's pending snapshots, a comment or error event to send, or ``None`` at the end."""
        while True:
            if slot.behind:
                log.warning("sse_client_behind", stream=f"events:{self.handle.job_id}",
                            queued=len(slot.pending), stall_s=slot.stall_s)  # fmt: skip
                return _DROPPED
            if slot.pending:
                return slot.take()
            if self.ended:
                return None if self.error is None else failure_event(self.error, f"events:{self.handle.job_id}")
            if slot.keepalive:
                slot.keepalive = False
                return _KEEPALIVE
            await slot.wait()

    async def batches(self, after: int, settings: GatewaySettings) -> AsyncGenerator[list[ServerSentEvent], None]:
        """The follower's events, as many at a time as were pending when it woke (never empty)."""
        slot = self._join(settings)
        last_state: JobState | None = None
        try:
            while True:
                taken = await self._next(slot)
                if taken is None:
                    return
                if isinstance(taken, ServerSentEvent):  # a keep-alive, or the last word: dropped, an error
                    yield [taken]
                    if taken is _KEEPALIVE:
                        continue
                    return
                batch: list[ServerSentEvent] = []
                for snap, data, shared in taken:
                    name = "state" if snap.state is not last_state else "progress"
                    last_state = snap.state
                    if snap.seq > after:
                        after = snap.seq
                        event = shared.get(name)
                        batch.append(event if event is not None else _shared(shared, name, snap.seq, data))
                    if snap.state.is_terminal:
                        break
                if batch:
                    yield batch
                if last_state is not None and last_state.is_terminal:
                    return
        finally:
            self._leave(slot)

    async def wire(self, after: int, settings: GatewaySettings) -> AsyncGenerator[bytes, None]:
        """The follower's events as the stream carries them: what was pending when it woke, in one
        write (a follower the gateway got behind on catches up in one send, not one per snapshot)."""
        async with aclosing(self.batches(after, settings)) as batches:
            async for batch in batches:
                yield batch[0].wire() if len(batch) == 1 and isinstance(batch[0], _Shared) else _joined(batch)

    def _join(self, settings: GatewaySettings) -> _Slot:
        slot = _Slot(settings.sse_queue, settings.sse_stall_s)
        self.slots.add(slot)
        slot.offer(self.current)
        if self.task is None:
            self.task = asyncio.create_task(self._run(), name=f"actionq-sse-job-{self.handle.job_id}")
        slot.ticker = _ticker(settings.keepalive_s)
        slot.ticker.add(slot)
        return slot

    def _leave(self, slot: _Slot) -> None:
        if slot.ticker is not None:
            slot.ticker.pumps.discard(slot)
        self.slots.discard(slot)
        if not self.slots and self.task is not None and not self.task.done():
            self.ended = True  # a follower that comes now gets a hub of its own
            self.task.cancel()  # nobody follows any more: stop following (and forget the hub)


def _joined(events: list[ServerSentEvent]) -> bytes:
    return b"".join(event.wire() if isinstance(event, _Shared) else _format(event) for event in events)


def _shared(shared: dict[str, _Shared], name: str, seq: int, data: str) -> _Shared:
    """The snapshot's event of that name, made once for every follower (the fields are ours: a name,
    digits, JSON; nothing to validate)."""
    event = shared[name] = _Shared.model_construct(event=name, id=str(seq), raw_data=data)
    return event


_hubs: weakref.WeakKeyDictionary[object, dict[str, _JobHub]] = weakref.WeakKeyDictionary()  # by client


def _hub(handle: JobHandle) -> _JobHub:
    """The hub of ``handle``'s job on its client, made on first use and forgotten when its upstream ends."""
    hubs = _hubs.setdefault(handle.client, {})
    job_id = handle.job_id
    hub = hubs.get(job_id)
    if hub is None or hub.ended:
        hub = hubs[job_id] = _JobHub(handle, lambda: _drop(hubs, job_id, hub))
    return hub


def _drop(hubs: dict[str, _JobHub], job_id: str, hub: _JobHub | None) -> None:
    if hubs.get(job_id) is hub:
        del hubs[job_id]


async def stream_items(client: JobClient, job_id: str, start: int) -> AsyncGenerator[ServerSentEvent, None]:
    """The job's output items from index ``start`` on as ``item`` events, then its ``end`` event."""
    handle = client.job(job_id)

    async def finished() -> bool:
        return (await handle.record()).is_terminal

    key = client.keys.job_stream(job_id)
    index = start
    reading = follow(client.redis, key, job_id, start, finished, client.settings.reconnect_s)
    async with aclosing(reading) as entries:
        async for entry in entries:
            if isinstance(entry, StreamEnd):
                if entry.count >= start:  # not delivered to this client before
                    yield _end_event(entry)
                return
            yield ServerSentEvent(event="item", id=entry_id(index), raw_data=json.dumps(entry))
            index += 1


def _end_event(end: StreamEnd) -> ServerSentEvent:
    data = {"state": end.state.value, "count": end.count, "error": end.error.model_dump() if end.error else None}
    return ServerSentEvent(event="end", id=entry_id(end.count), raw_data=json.dumps(data))


class _Pump:
    """Reads a source into a bounded queue; notes when the client let it stay full for ``sse_stall_s``."""

    def __init__(self, source: AsyncGenerator[ServerSentEvent, None], settings: GatewaySettings, what: str) -> None:
        self.source = source
        self.settings = settings
        self.what = what
        self.queue: asyncio.Queue[ServerSentEvent | None] = asyncio.Queue(settings.sse_queue)
        self.behind = asyncio.Event()
        self.sent = False  # something was queued since the keep-alive ticker last looked

    async def _put(self, event: ServerSentEvent | None) -> None:
        self.sent = True
        if not self.queue.full():  # the common case: no timer per event
            self.queue.put_nowait(event)
            return
        try:
            async with asyncio.timeout(self.settings.sse_stall_s):
                await self.queue.put(event)
        except TimeoutError:
            raise _Behind from None

    def tick(self) -> None:
        """The keep-alive ticker's call: a keep-alive comment if nothing was queued since the last one."""
        if not self.sent and not self.queue.full():
            self.queue.put_nowait(_KEEPALIVE)
        self.sent = False

    async def _drain(self) -> None:
        try:
            async with aclosing(self.source) as events:
                async for event in events:
                    await self._put(event)
        except _Behind:
            raise
        except Exception as exc:  # Redis gone for good, a trimmed or missing stream, a bug: say so, then end
            await self._put(failure_event(exc, self.what))

    async def run(self) -> None:
        """Pump until the source ends (then a ``None``), or until the client has fallen behind."""
        try:
            await self._drain()
            await self._put(None)
        except _Behind:
            log.warning("sse_client_behind", stream=self.what, queued=self.settings.sse_queue,
                        stall_s=self.settings.sse_stall_s)  # fmt: skip
            self.behind.set()


_KEEPALIVE = ServerSentEvent(comment="keep-alive")
_DROPPED = ServerSentEvent(comment="dropped: this client fell behind; reconnect with Last-Event-ID")


class _Ticking(Protocol):
    def tick(self) -> None: ...


class _Ticker:
    """One task per event loop and interval that offers every open stream its keep-alive.

    Not a timeout around each queue read: with a thousand busy streams that made a timer per
    event, the gateway's largest cost after the SSE encoding.
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.pumps: set[_Ticking] = set()  # relay()'s pumps and the job hubs' slots
        self.task: asyncio.Task[None] | None = None

    def add(self, pump: _Ticking) -> None:
        self.pumps.add(pump)
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run(), name="actionq-sse-keepalive")

    async def _run(self) -> None:
        while self.pumps:
            await asyncio.sleep(self.interval_s)
            for pump in list(self.pumps):
                pump.tick()


_tickers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, _Ticker]] = weakref.WeakKeyDictionary()


def _ticker(interval_s: float) -> _Ticker:
    by_interval = _tickers.setdefault(asyncio.get_running_loop(), {})
    return by_interval.setdefault(interval_s, _Ticker(interval_s))


async def relay(
    source: AsyncGenerator[ServerSentEvent, None], settings: GatewaySettings, *, what: str
) -> AsyncIterator[ServerSentEvent]:
    """``source``'s events through a bounded queue, with keep-alives; ends early for a client that fell behind."""
    pump = _Pump(source, settings, what)
    ticker = _ticker(settings.keepalive_s)
    ticker.add(pump)
    task = asyncio.create_task(pump.run(), name=f"actionq-sse-{what}")
    queue = pump.queue
    try:
        while not pump.behind.is_set():
            item = queue.get_nowait() if not queue.empty() else await queue.get()
            if item is None:
                return
            yield item
        yield _DROPPED
    finally:
        ticker.pumps.discard(pump)
        await stop_tasks(task)


class EventStream(StreamingResponse):
    """A ``text/event-stream`` response of bytes encoded here (routes declare it as their ``response_class``).

    Not FastAPI's ``EventSourceResponse``: FastAPI runs every event of those through a memory
    stream, a keep-alive inserter and anyio timeouts, several times the cost of the event
    itself; with a thousand followers the gateway spent its time there (docs/benchmarks.md,
    ``bench gateway``). :func:`relay` sends the keep-alives instead.
    """

    media_type = "text/event-stream"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The response, counted in ``actionq_sse_clients`` while it is open (the app's ``state.metrics``)."""
        metrics = getattr(getattr(scope.get("app"), "state", None), "metrics", None)
        if metrics is None:
            await super().__call__(scope, receive, send)
            return
        metrics.sse_open += 1
        try:
            await super().__call__(scope, receive, send)
        finally:
            metrics.sse_open -= 1


def sse_response(events: AsyncIterator[ServerSentEvent]) -> EventStream:
    """``events`` (from :func:`relay`) as an :class:`EventStream`."""
    return EventStream(_encoded(events), headers=_SSE_HEADERS)


_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def _encoded(events: AsyncIterator[ServerSentEvent]) -> AsyncGenerator[bytes, None]:
    async for event in events:
        yield event.wire() if isinstance(event, _Shared) else _format(event)


def _format(event: ServerSentEvent) -> bytes:
    return format_sse_event(
        data_str=event.raw_data, event=event.event, id=event.id, retry=event.retry, comment=event.comment
    )
