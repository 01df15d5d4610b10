"""The sharded subscriber's bookkeeping (service/redis/sharded.py), node replies fed by hand.

What each reply of a node does to a subscription: a confirmation confirms it, an unasked
``sunsubscribe`` (its slot moved) and a lost connection place it again, ``MOVED`` places it on the
node named, and a confirmation of a channel no longer wanted is undone. The real nodes' side is
tests/integration/test_sharded_pubsub.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

import pytest
from redis import exceptions as redis_exc
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterParser

from service.keys import Keys
from service.redis import sharded
from service.redis.cluster import cluster_client
from service.redis.sharded import Address, ShardedSubscriber, _Node

KEYS = Keys("t", partitions=3)
JOB = KEYS.job_channel("j1")
OTHER = KEYS.job_channel("j2")
HERE: Address = ("10.0.0.1", 7000)
THERE: Address = ("10.0.0.2", 7001)


class _Wire:
    """Stands for a node's connection: records what is sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, ...]] = []
        self.closed = False

    async def send_command(self, *args: str, check_health: bool = True) -> None:
        self.sent.append(args)

    async def disconnect(self, nowait: bool = False) -> None:
        self.closed = True


class _Recorded(ShardedSubscriber):
    """Placements recorded instead of connecting: (channel, candidates)."""

    def __init__(self, redis: Redis) -> None:
        self.delivered: list[tuple[str, bytes]] = []
        self.confirmations: list[str] = []
        super().__init__(redis, lambda c, p: self.delivered.append((c, p)), self.confirmations.append)
        self.placed: list[tuple[str, list[Address]]] = []

    async def _place(self, channel: str, candidates: Iterable[Address]) -> None:
        self.placed.append((channel, list(candidates)))


@pytest.fixture
async def sub() -> AsyncIterator[_Recorded]:
    redis = cluster_client("redis+cluster://127.0.0.1:1", {})  # never connected
    subscriber = _Recorded(redis)
    yield subscriber
    await subscriber.close()
    await redis.aclose()


def _homed(sub: _Recorded, *channels: str, address: Address = HERE) -> tuple[_Node, _Wire]:
    wire = _Wire()
    node = _Node(address, wire)  # type: ignore[arg-type]
    sub._nodes[address] = node
    for channel in channels:
        sub._wanted.add(channel)
        sub._home[channel] = node
        node.pending.append(("SSUBSCRIBE", channel))
    return node, wire


async def _settled(sub: _Recorded) -> None:
    async with asyncio.timeout(5):
        while sub._placing or sub._chores:
            await asyncio.sleep(0)


async def test_a_confirmation_confirms_and_a_message_is_delivered(sub: _Recorded) -> None:
    node, _ = _homed(sub, JOB)
    sub._reply(node, [b"ssubscribe", JOB.encode(), 1])
    sub._reply(node, [b"smessage", JOB.encode(), b"hello"])
    sub._reply(node, [b"smessage", b"{t.0}t:ch:job:nobody-wants", b"dropped"])
    sub._reply(node, [b"pong", b""])
    assert sub.confirmations == [JOB]
    assert sub.delivered == [(JOB, b"hello")]
    assert node.channels == {JOB}
    assert not node.pending


async def test_an_unasked_sunsubscribe_places_the_channel_again(sub: _Recorded) -> None:
    node, _ = _homed(sub, JOB)
    sub._reply(node, [b"ssubscribe", JOB.encode(), 1])
    sub._reply(node, [b"sunsubscribe", JOB.encode(), 0])  # its slot moved to another master
    await _settled(sub)
    assert [channel for channel, _ in sub.placed] == [JOB]
    assert JOB not in node.channels
    assert JOB not in sub._home


async def test_an_asked_sunsubscribe_is_the_end_of_it(sub: _Recorded) -> None:
    node, wire = _homed(sub, JOB)
    sub._reply(node, [b"ssubscribe", JOB.encode(), 1])
    await sub.unsubscribe(JOB)
    assert wire.sent[-1] == ("SUNSUBSCRIBE", JOB)
    sub._reply(node, [b"sunsubscribe", JOB.encode(), 0])
    await _settled(sub)
    assert sub.placed == []
    assert not node.pending
    assert not node.channels


async def test_moved_places_the_channel_on_the_node_named_first(sub: _Recorded) -> None:
    node, _ = _homed(sub, OTHER, JOB)
    slot = KEYS.slot(JOB)
    assert KEYS.slot(OTHER) != slot
    error = ClusterParser(socket_read_size=65536).parse_error(f"MOVED {slot} {THERE[0]}:{THERE[1]}")
    assert isinstance(error, redis_exc.MovedError)
    sub._refused(node, error)
    await _settled(sub)
    assert sub.placed[0][0] == JOB
    assert sub.placed[0][1][0] == THERE
    assert node.pending == type(node.pending)([("SSUBSCRIBE", OTHER)])  # the other is still on its way


async def test_another_refusal_places_the_oldest_again(sub: _Recorded) -> None:
    node, _ = _homed(sub, JOB, OTHER)
    sub._refused(node, redis_exc.ResponseError("CLUSTERDOWN The cluster is down"))
    await _settled(sub)
    assert [channel for channel, _ in sub.placed] == [JOB]


async def test_a_confirmation_of_a_channel_no_longer_wanted_is_undone(sub: _Recorded) -> None:
    node, wire = _homed(sub, JOB)
    await sub.unsubscribe(JOB)  # before the node confirmed: nothing to undo yet
    assert wire.sent == []
    sub._reply(node, [b"ssubscribe", JOB.encode(), 1])
    await _settled(sub)
    assert wire.sent == [("SUNSUBSCRIBE", JOB)]
    assert sub.confirmations == []


async def test_a_lost_node_is_closed_and_its_channels_placed_again(sub: _Recorded) -> None:
    node, wire = _homed(sub, JOB, OTHER)
    elsewhere, _ = _homed(sub, KEYS.job_channel("j3"), address=THERE)
    sub._lost(node, redis_exc.ConnectionError("reset by peer"))
    await _settled(sub)
    assert sorted(channel for channel, _ in sub.placed) == sorted([JOB, OTHER])
    assert wire.closed
    assert HERE not in sub._nodes
    assert sub._nodes[THERE] is elsewhere


async def test_a_channel_moved_again_and_again_waits_longer_each_time(sub: _Recorded) -> None:
    pauses = []
    for _ in range(5):
        sub._wanted.add(JOB)
        sub._place_again(JOB)
        pauses.append(sub._hops[JOB])
        await _settled(sub)
    assert pauses == [1, 2, 3, 4, 5]  # hops counted until a confirmation resets them
    node, _ = _homed(sub, JOB)
    sub._reply(node, [b"ssubscribe", JOB.encode(), 1])
    assert JOB not in sub._hops


async def test_a_node_that_cannot_be_reached_is_not_tried_again_at_once(unused_tcp_port: int) -> None:
    redis = cluster_client(f"redis+cluster://127.0.0.1:{unused_tcp_port}", {})
    subscriber = ShardedSubscriber(redis, lambda c, p: None, lambda c: None)
    try:
        with pytest.raises(redis_exc.ConnectionError, match=r"(?i)connect|refused"):
            await subscriber._node(("127.0.0.1", unused_tcp_port))
        with pytest.raises(redis_exc.ConnectionError, match="could not be reached just now"):
            await subscriber._node(("127.0.0.1", unused_tcp_port))
    finally:
        await subscriber.close()
        await redis.aclose()


class _Silent(_Wire):
    """A connection that answers nothing (blackholed): every read times out empty."""

    async def read_response(self, timeout: float | None = None, **_: object) -> None:
        await asyncio.sleep(timeout or 0)


async def test_a_silent_node_is_pinged_then_given_up_and_its_channels_placed_again(
    sub: _Recorded, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sharded, "_READ_S", 0.01)
    monkeypatch.setattr(sharded, "_PING_S", 0.05)
    wire = _Silent()
    node = _Node(HERE, wire)  # type: ignore[arg-type]
    sub._nodes[HERE] = node
    sub._wanted.add(JOB)
    sub._home[JOB] = node
    node.channels.add(JOB)
    async with asyncio.timeout(5):
        await sub._read(node)  # returns once it gives the node up
    await _settled(sub)
    assert wire.sent == [("PING",)]
    assert wire.closed
    assert HERE not in sub._nodes
    assert [channel for channel, _ in sub.placed] == [JOB]
