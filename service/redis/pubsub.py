"""One pub/sub connection per process, routed in-process to many subscribers.

Opening a Redis connection per waiting caller does not scale (a service awaiting 5,000 results
would hold 5,000 connections), so — like SAQ's ``PubSubMultiplexer`` — a process holds one
``PubSub`` and a reader task that hands each message to the queues of the local subscribers of
its channel. :meth:`PubSubMultiplexer.subscribe` returns only once Redis has confirmed the
subscription, so a caller can then read durable state knowing that no later publish is missed.

On Redis Cluster the sharded channels (:func:`service.keys.is_sharded_channel`: a job's, a
partition's hand-offs and wake-ups, the events') are subscribed with ``SSUBSCRIBE`` on their slot's master
instead (:class:`service.redis.sharded.ShardedSubscriber`); the others on the one classic connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import structlog
from redis import exceptions as redis_exc
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from service.keys import is_sharded_channel
from service.redis.cluster import is_cluster, pubsub_client
from service.redis.connection import broker_errors, while_unreachable
from service.redis.sharded import ShardedSubscriber
from service.tasks import stop_tasks

__all__ = ["PubSubMultiplexer", "Subscription"]

log = structlog.get_logger("actionq.pubsub")

# How long the reader blocks for a message before it looks at its own state again; short enough
# to notice close() promptly, long enough that an idle process sends few commands.
_READ_TIMEOUT_S = 1.0
_SUBSCRIBE_TIMEOUT_S = 10.0


class Subscription:
    """Messages (raw ``bytes`` payloads) of one channel, in the order Redis delivered them.

    With a ``callback``, each message is handed to it by the reader at once instead (no queue,
    no task to wake: a worker's wake-ups, cancels and handed jobs skip a loop turn).
    """

    def __init__(self, channel: str, callback: Callable[[bytes], None] | None = None) -> None:
        self.channel = channel
        self.callback = callback
        self._items: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, payload: bytes) -> None:
        """The reader's call: queue ``payload`` and wake the :meth:`get` waiting for it."""
        self._items.append(payload)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self, timeout: float | None = None) -> bytes | None:
        """The next message, or ``None`` if ``timeout`` seconds pass first.

        A plain future and one timer handle, not ``asyncio.timeout`` around a queue: a gateway
        relays thousands of messages a second through here, and that machinery was a tenth of
        its time. (Not ``wait_for`` either: on 3.11 it can swallow a cancel.)
        """
        if self._items:
            return self._items.popleft()
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = None if timeout is None else loop.call_later(timeout, _wake, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()
        return self._items.popleft() if self._items else None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        while True:
            item = await self.get()
            if item is not None:
                yield item


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class PubSubMultiplexer:
    """Shares one Redis pub/sub connection among all subscribers of a process."""

    def __init__(self, redis: Redis, *, reconnect_s: float = 0) -> None:
        # On Redis Cluster a plain connection to one node (any node hears every PUBLISH).
        self._client = pubsub_client(redis)
        self._own_client = self._client is not redis
        self._pubsub: PubSub = self._client.pubsub()
        self._sharded = ShardedSubscriber(redis, self._deliver, self._confirm) if is_cluster(redis) else None
        self.reconnect_s = reconnect_s
        """How long a subscribe keeps trying while Redis is unreachable."""
        self._subs: defaultdict[str, set[Subscription]] = defaultdict(set)
        self._confirmed: dict[str, asyncio.Event] = {}
        self._lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._leaving: set[asyncio.Task[None]] = set()  # unsubscribes of channels nobody follows any more
        self._closed = False

    @asynccontextmanager
    async def subscribe(
        self, channel: str, callback: Callable[[bytes], None] | None = None
    ) -> AsyncIterator[Subscription]:
        """Subscribe to ``channel`` for the duration of the block (confirmed before it starts).

        ``callback``: called by the reader with each message (it must not block; errors are logged).
        """
        sub = Subscription(channel, callback)
        await self._add(sub)
        try:
            yield sub
        finally:
            await self._remove(sub)

    async def _add(self, sub: Subscription) -> None:
        async with self._lock:
            first = not self._subs[sub.channel]
            self._subs[sub.channel].add(sub)
            if first:
                event = self._confirmed.setdefault(sub.channel, asyncio.Event())
                try:
                    await while_unreachable(lambda: self._subscribe(sub.channel), for_s=self.reconnect_s)
                except BaseException:
                    self._subs[sub.channel].discard(sub)
                    if (sharded := self._sharded_for(sub.channel)) is not None:
                        await sharded.unsubscribe(sub.channel)
                    raise
                if self._sharded_for(sub.channel) is None:
                    self._ensure_reader()
            event = self._confirmed[sub.channel]
        try:
            async with asyncio.timeout(_SUBSCRIBE_TIMEOUT_S):
                await event.wait()
        except TimeoutError:
            await self._remove(sub)
            raise

    def _sharded_for(self, channel: str) -> ShardedSubscriber | None:
        """The sharded subscriber if ``channel`` goes to it (a cluster's sharded channel), else ``None``."""
        return self._sharded if is_sharded_channel(channel) else None

    async def _subscribe(self, channel: str) -> None:
        with broker_errors(f"subscribing to {channel}"):
            if (sharded := self._sharded_for(channel)) is not None:
                await sharded.subscribe(channel)
                return
            try:
                await self._pubsub.subscribe(channel)
            except RuntimeError as exc:  # the reader is reconnecting this connection: try again
                raise redis_exc.ConnectionError(f"the pub/sub connection is reconnecting ({exc})") from exc

    async def _remove(self, sub: Subscription) -> None:
        """Leave ``sub``'s channel; the last subscriber out unsubscribes it in the background.

        Not in the caller's time: a result's ``wait`` returned only after the ``UNSUBSCRIBE`` was
        written, 35-70 µs of every result's latency. A subscriber that comes back meanwhile finds
        the channel gone from the table and subscribes it again (Redis confirms a ``SUBSCRIBE`` of
        a channel the connection has); the unsubscribe, which takes the lock that every subscribe
        holds, then sees it wanted and leaves it (or goes first). A Cluster's sharded channels are
        let go at once, as before.
        """
        async with self._lock:
            subs = self._subs.get(sub.channel)
            if subs is None:
                return
            subs.discard(sub)
            if subs or self._closed:
                return
            del self._subs[sub.channel]
            self._confirmed.pop(sub.channel, None)
            if (sharded := self._sharded_for(sub.channel)) is not None:
                # In the caller's time, under the lock: the sharded subscriber sends nothing for a
                # channel it still has, so a subscriber coming back before it let go would never
                # see its subscription confirmed.
                await sharded.unsubscribe(sub.channel)
                return
        task = asyncio.create_task(self._unsubscribe_unwanted(sub.channel), name="actionq-pubsub-unsubscribe")
        self._leaving.add(task)
        task.add_done_callback(self._leaving.discard)

    async def _unsubscribe_unwanted(self, channel: str) -> None:
        async with self._lock:
            if self._subs.get(channel) or self._closed:
                return  # subscribed again meanwhile, or closing (the connection goes)
            # RuntimeError: the reader is reconnecting this connection (redis-py reads its handshake
            # on both); the reconnect subscribes only the channels still wanted.
            with contextlib.suppress(redis_exc.RedisError, RuntimeError):
                await self._pubsub.unsubscribe(channel)

    def _ensure_reader(self) -> None:
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read_forever(), name="actionq-pubsub-reader")

    async def _read_forever(self) -> None:
        backoff = 0.1
        while not self._closed:
            try:
                message = await self._pubsub.get_message(timeout=_READ_TIMEOUT_S)
            except (redis_exc.ConnectionError, redis_exc.TimeoutError, OSError, RuntimeError) as exc:
                # redis-py re-subscribes every channel when the connection comes back. RuntimeError:
                # a subscribe was reconnecting this connection at the same time (both read its handshake).
                log.warning("pubsub_reconnecting", error=str(exc), retry_in_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            if message is not None:
                self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        raw_channel = message.get("channel", b"")
        channel = raw_channel.decode() if isinstance(raw_channel, bytes) else str(raw_channel)
        if kind == "subscribe":
            self._confirm(channel)
        elif kind == "message":
            data = message["data"]
            self._deliver(channel, data if isinstance(data, bytes) else str(data).encode())

    def _confirm(self, channel: str) -> None:
        event = self._confirmed.get(channel)
        if event is not None:
            event.set()

    def _deliver(self, channel: str, payload: bytes) -> None:
        for sub in tuple(self._subs.get(channel, ())):
            if sub.callback is None:
                sub.put(payload)
                continue
            try:
                sub.callback(payload)
            except Exception:  # one bad handler must not stop the reader
                log.exception("pubsub_callback_failed", channel=channel)

    async def close(self) -> None:
        """Stop the reader and close the connection; pending subscriptions get nothing more."""
        self._closed = True
        if self._sharded is not None:
            await self._sharded.close()
        await stop_tasks(self._reader, *self._leaving)
        with contextlib.suppress(redis_exc.RedisError, RuntimeError):
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
            if self._own_client:
                await self._client.aclose()
