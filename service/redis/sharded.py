"""Sharded pub/sub on Redis Cluster: each channel subscribed (``SSUBSCRIBE``) on the master of its slot.

A classic ``PUBLISH`` on a cluster is carried by the cluster bus to every node, whoever listens
there; at tens of thousands of jobs a second that is every node's load, and its reply counts only
the receivers of the node it ran on. The channels that carry a message per job — a job's own, each
partition's hand-offs and wake-ups (:func:`service.keys.is_sharded_channel`) — are sharded instead:
the scripts ``SPUBLISH`` them on the node that runs them, which is the master of the channel's slot,
and a subscriber holds one connection to each master owning one of its channels' slots. So a
message stays on one node, and a submit's hand-off knows exactly whether the worker heard it.

redis-py 5.3's asyncio client has no sharded pub/sub (no ``ssubscribe()``, no ``smessage``), so
:class:`ShardedSubscriber` speaks it on plain connections (one per node; the cluster's own options:
auth, TLS, timeouts) and follows what the nodes say:

- a channel goes first to the master the cluster client's slot map names; ``MOVED`` (the map was
  stale) sends it to the node named;
- an unasked ``sunsubscribe`` (its slot moved away in a resharding) or a lost connection (the node
  failed) places it again: from the slot map, then any node the client knows, then the URL's,
  whichever answers first — any of them answers ``MOVED`` with the slot's owner as the nodes see
  it. While a failover is not yet decided every node names the dead master, so successive tries
  pause longer (up to :data:`_PAUSE_MAX_S`);
- a node connection silent for :data:`_PING_S` is pinged, and one silent for twice that is lost.

Messages published while a channel is placed again are lost, as in a classic reconnect: every
follower of a job re-reads its durable state when it hears nothing for a while or sees a gap in its
sequence numbers, and a worker's loop looks at its queues on its own as well.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import structlog
from redis import exceptions as redis_exc
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.crc import key_slot

from service.redis.cluster import channel_nodes, node_connection, ready
from service.tasks import stop_tasks

__all__ = ["ShardedSubscriber"]

log = structlog.get_logger("actionq.pubsub")

Address = tuple[str, int]

_READ_S = 1.0
_PING_S = 5.0
_CONNECT_S = 3.0
_DOWN_S = 0.5
_PAUSE_MAX_S = 2.0
_LOST = (redis_exc.ConnectionError, redis_exc.TimeoutError, OSError, RuntimeError, TimeoutError)
_SUBSCRIBE, _UNSUBSCRIBE = "SSUBSCRIBE", "SUNSUBSCRIBE"


class _Node:
    """One node's subscription connection, the channels it confirmed, and the commands awaiting a reply."""

    def __init__(self, address: Address, connection: Connection) -> None:
        self.address = address
        self.connection = connection
        self.channels: set[str] = set()
        self.pending: deque[tuple[str, str]] = deque()  # (command, channel), in the order sent
        self.reader: asyncio.Task[None] | None = None

    async def send(self, command: str, channel: str) -> None:
        self.pending.append((command, channel))
        try:
            await self.connection.send_command(command, channel, check_health=False)
        except BaseException:
            with contextlib.suppress(ValueError):
                self.pending.remove((command, channel))
            raise

    def answered(self, slot: int | None) -> tuple[str, str] | None:
        """The command an error answers: the oldest pending one (of the slot a redirection names).

        Replies come in the order of the commands; only an unasked ``sunsubscribe`` (a slot moved)
        looks like one, and when it crosses an asked one for the same channel the next error of
        that slot is taken for the wrong command: a subscription then placed once more than needed.
        """
        for entry in self.pending:
            if slot is None or key_slot(entry[1].encode()) == slot:
                self.pending.remove(entry)
                return entry
        return None


class ShardedSubscriber:
    """The sharded channels of one process, each subscribed on the master of its slot.

    ``deliver(channel, payload)`` gets every message; ``confirmed(channel)`` is called when a node
    confirms a subscription (again after each placement).
    """

    def __init__(self, redis: Redis, deliver: Callable[[str, bytes], None], confirmed: Callable[[str], None]) -> None:
        self._redis = redis
        self._deliver = deliver
        self._confirmed = confirmed
        self._wanted: set[str] = set()
        self._nodes: dict[Address, _Node] = {}
        self._home: dict[str, _Node] = {}  # where each wanted channel was last sent
        self._hops: dict[str, int] = {}  # placements since the channel was last confirmed
        self._placing: dict[str, asyncio.Task[None]] = {}
        self._connecting: dict[Address, asyncio.Lock] = {}
        self._down: dict[Address, float] = {}  # node -> until when it is not tried again
        self._chores: set[asyncio.Task[None]] = set()
        self._closed = False

    async def subscribe(self, channel: str) -> None:
        """Send ``SSUBSCRIBE channel`` to its slot's master (the confirmation comes to ``confirmed``).

        ``redis.ConnectionError`` if no node can be reached (the caller tries again).
        """
        self._wanted.add(channel)
        if channel in self._home or channel in self._placing:
            return
        await ready(self._redis)
        await self._place(channel, channel_nodes(self._redis, channel))

    async def unsubscribe(self, channel: str) -> None:
        """Stop following ``channel`` (a subscription still on its way is undone when confirmed)."""
        self._wanted.discard(channel)
        self._hops.pop(channel, None)
        placing = self._placing.pop(channel, None)
        if placing is not None:
            placing.cancel()
        node = self._home.pop(channel, None)
        if node is not None and channel in node.channels:
            node.channels.discard(channel)
            with contextlib.suppress(*_LOST, redis_exc.RedisError):
                await node.send(_UNSUBSCRIBE, channel)

    async def close(self) -> None:
        """Stop every reader and close every connection."""
        self._closed = True
        tasks = [*self._placing.values(), *self._chores, *(n.reader for n in self._nodes.values() if n.reader)]
        await stop_tasks(*tasks)
        for node in list(self._nodes.values()):
            with contextlib.suppress(*_LOST, redis_exc.RedisError):
                await node.connection.disconnect()
        self._nodes.clear()

    # -- placing a channel -------------------------------------------------------------------
    async def _place(self, channel: str, candidates: Iterable[Address]) -> None:
        """Send the subscription to the first of ``candidates`` that can be reached."""
        last: BaseException | None = None
        for address in dict.fromkeys(candidates):
            try:
                node = await self._node(address)
            except (*_LOST, redis_exc.RedisError) as exc:
                last = exc
                continue
            self._home[channel] = node  # before the send: its reply may be read during it
            try:
                await node.send(_SUBSCRIBE, channel)
            except (*_LOST, redis_exc.RedisError) as exc:
                last = exc
                self._home.pop(channel, None)
                self._lost(node, exc)
                continue
            return
        raise redis_exc.ConnectionError(f"no cluster node could be reached to subscribe to {channel}: {last}")

    def _place_again(self, channel: str, first: Iterable[Address] = ()) -> None:
        """Place ``channel`` again in the background (after a pause once it has moved a few times)."""
        if self._closed or channel not in self._wanted or channel in self._placing:
            return
        hops = self._hops[channel] = self._hops.get(channel, 0) + 1
        pause = 0.0 if hops <= 2 else min(0.05 * 2 ** (hops - 2), _PAUSE_MAX_S)
        task = asyncio.create_task(self._placing_loop(channel, list(first), pause), name=f"actionq-place-{channel}")
        self._placing[channel] = task

    async def _placing_loop(self, channel: str, first: list[Address], pause: float) -> None:
        try:
            while not self._closed and channel in self._wanted:
                await asyncio.sleep(pause)
                try:
                    await self._place(channel, [*first, *channel_nodes(self._redis, channel)])
                    return
                except redis_exc.ConnectionError as exc:
                    log.warning("sharded_subscribe_retrying", channel=channel, error=str(exc), retry_in_s=pause)
                    first, pause = [], min(max(pause * 2, 0.1), _PAUSE_MAX_S)
        finally:
            if self._placing.get(channel) is asyncio.current_task():
                del self._placing[channel]

    async def _node(self, address: Address) -> _Node:
        """The connection to ``address``: one per node, made by one task while the others wait; a node
        that could not be reached is not tried again for :data:`_DOWN_S` (a failed master would
        otherwise be tried by each of its channels in turn)."""
        node = self._nodes.get(address)
        if node is not None:
            return node
        lock = self._connecting.setdefault(address, asyncio.Lock())
        async with lock:
            node = self._nodes.get(address)
            if node is not None:
                return node
            loop = asyncio.get_running_loop()
            if self._down.get(address, 0.0) > loop.time():
                raise redis_exc.ConnectionError(f"{address[0]}:{address[1]} could not be reached just now")
            connection = node_connection(self._redis, *address)
            try:
                async with asyncio.timeout(_CONNECT_S):
                    await connection.connect()  # type: ignore[no-untyped-call]
            except (*_LOST, redis_exc.RedisError):
                self._down[address] = loop.time() + _DOWN_S
                raise
            self._down.pop(address, None)
            node = self._nodes[address] = _Node(address, connection)
        node.reader = asyncio.create_task(self._read(node), name=f"actionq-sharded-{address[0]}:{address[1]}")
        return node

    # -- reading a node ----------------------------------------------------------------------
    async def _read(self, node: _Node) -> None:
        quiet, pinged = 0.0, False
        while True:
            try:
                reply = await node.connection.read_response(timeout=_READ_S, disconnect_on_error=False)
            except redis_exc.ResponseError as exc:  # a subscription refused: MOVED, CLUSTERDOWN...
                self._refused(node, exc)
                continue
            except _LOST as exc:
                self._lost(node, exc)
                return
            if reply is not None:
                quiet, pinged = 0.0, False
                self._reply(node, reply)
                continue
            quiet += _READ_S
            if quiet >= 2 * _PING_S:
                self._lost(node, redis_exc.TimeoutError(f"no answer to a PING in {_PING_S:g} s"))
                return
            if quiet >= _PING_S and not pinged:
                pinged = True
                try:
                    await node.connection.send_command("PING", check_health=False)
                except _LOST as exc:
                    self._lost(node, exc)
                    return

    def _reply(self, node: _Node, reply: object) -> None:
        if not isinstance(reply, list) or len(reply) < 3:
            return  # a PING's "pong" (or anything else not about a channel)
        kind, raw = reply[0], reply[1]
        channel = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        if kind == b"smessage":
            if channel in self._wanted:
                data = reply[2]
                self._deliver(channel, data if isinstance(data, bytes) else str(data).encode())
        elif kind == b"ssubscribe":
            with contextlib.suppress(ValueError):
                node.pending.remove((_SUBSCRIBE, channel))
            node.channels.add(channel)
            if channel not in self._wanted:  # unsubscribed while on its way
                node.channels.discard(channel)
                self._chore(node.send(_UNSUBSCRIBE, channel))
            elif self._home.get(channel) is node:
                self._hops.pop(channel, None)
                self._confirmed(channel)
        elif kind == b"sunsubscribe":
            asked = (_UNSUBSCRIBE, channel) in node.pending
            if asked:
                node.pending.remove((_UNSUBSCRIBE, channel))
            node.channels.discard(channel)
            if not asked and self._home.get(channel) is node:  # its slot moved to another master
                del self._home[channel]
                log.info("sharded_channel_moved", channel=channel, node=f"{node.address[0]}:{node.address[1]}")
                self._place_again(channel)

    def _refused(self, node: _Node, exc: redis_exc.ResponseError) -> None:
        moved = exc if isinstance(exc, redis_exc.AskError) else None  # MovedError is one too
        entry = node.answered(moved.slot_id if moved is not None else None)
        if entry is None or entry[0] != _SUBSCRIBE:
            return
        channel = entry[1]
        if self._home.get(channel) is not node:
            return
        del self._home[channel]
        if moved is None:
            log.warning("sharded_subscribe_refused", channel=channel, error=str(exc))
        self._place_again(channel, [moved.node_addr] if moved is not None else [])

    def _lost(self, node: _Node, exc: BaseException) -> None:
        """``node``'s connection failed: close it and place its channels again."""
        if self._nodes.get(node.address) is not node:
            return
        del self._nodes[node.address]
        if node.reader is not None and node.reader is not asyncio.current_task():
            node.reader.cancel()
        self._chore(node.connection.disconnect(nowait=True))
        moved = [channel for channel, home in self._home.items() if home is node]
        if not self._closed:
            log.warning("sharded_pubsub_reconnecting", node=f"{node.address[0]}:{node.address[1]}", error=str(exc))
        for channel in moved:
            del self._home[channel]
            self._place_again(channel)

    def _chore(self, work: Awaitable[Any]) -> None:
        """``work`` in the background, its connection errors ignored (the reader hears of them)."""

        async def run() -> None:
            with contextlib.suppress(*_LOST, redis_exc.RedisError):
                await work

        task = asyncio.create_task(run())
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)
