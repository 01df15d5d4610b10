"""Sharded pub/sub on a real Redis Cluster (service/redis/sharded.py, through the process's multiplexer).

A sharded channel is subscribed on the master of its slot, and stays subscribed when that changes:
its slot moved to another master (the node says ``sunsubscribe``), a slot map gone stale (``MOVED``),
its master killed and replaced by its replica (the connection is lost). Each test waits for a
message published after the change, on the channel's new master, to arrive.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot
from redis.exceptions import RedisError

from service.events.bridge import EventBridge
from service.events.delegates import DelegateManager
from service.events.models import WorkerStartedEvent
from service.keys import Keys, is_sharded_channel
from service.redis.cluster import channel_nodes, cluster_client, publish
from service.redis.pubsub import PubSubMultiplexer, Subscription
from tests.clusterkit import ClusterSet

pytestmark = pytest.mark.cluster

KEYS = Keys("sharded", partitions=3)


@pytest.fixture
def own_cluster(server_binary: str) -> Iterator[ClusterSet]:
    """Three masters with a replica each, of this module's tests alone (their slot map is changed)."""
    with ClusterSet(masters=3, replicas=1, binary=server_binary) as cluster:
        yield cluster


@pytest.fixture
async def redis(own_cluster: ClusterSet) -> AsyncIterator[Redis]:
    client = cluster_client(own_cluster.url, {"socket_timeout": 5})
    yield client
    await client.aclose()


def _owner(cluster: ClusterSet, channel: str) -> int:
    return cluster.slot_owner(key_slot(channel.encode()))


async def _move(cluster: ClusterSet, channel: str) -> tuple[int, int]:
    """Move ``channel``'s slot, keys and all, to another master: (its old owner, its new one)."""
    source = _owner(cluster, channel)
    target = next(port for port in cluster.master_ports if port != source)
    slot = key_slot(channel.encode())
    await asyncio.to_thread(cluster.begin_migration, slot, source, target)
    await asyncio.to_thread(cluster.migrate_keys, slot, source, target)
    await asyncio.to_thread(cluster.finish_migration, slot, source, target)
    return source, target


async def _heard(redis: Redis, sub: Subscription, message: bytes, *, timeout_s: float = 30.0) -> None:
    """Publish ``message`` on ``sub``'s channel until it arrives there (a re-placed subscription is
    confirmed by the node, not announced to the subscriber)."""
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                await publish(redis, sub.channel, message)
            except RedisError:  # a failover not yet over: the slot has no master
                await asyncio.sleep(0.1)
                continue
            got = await sub.get(0.2)
            while got is not None and got != message:
                got = await sub.get(0.05)
            if got == message:
                return


async def _shard_subscribers(cluster: ClusterSet, port: int, channel: str) -> int:
    node = Redis(port=port)
    try:
        reply = await node.execute_command("PUBSUB", "SHARDNUMSUB", channel)  # type: ignore[no-untyped-call]
    finally:
        await node.aclose()
    return int(reply[1]) if isinstance(reply, list) else int(reply[channel.encode()])


async def test_a_job_channel_is_subscribed_on_its_slots_master_and_published_there(
    own_cluster: ClusterSet, redis: Redis
) -> None:
    channel = KEYS.job_channel("job-1")
    assert is_sharded_channel(channel)
    mux = PubSubMultiplexer(redis)
    try:
        async with mux.subscribe(channel) as sub:
            owner = _owner(own_cluster, channel)
            assert await _shard_subscribers(own_cluster, owner, channel) == 1
            assert await publish(redis, channel, b"hello") == 1  # SPUBLISH counts its own node's receivers
            assert await sub.get(10) == b"hello"
            classic = KEYS.cancel_channel()  # a broadcast stays classic, on the same multiplexer
            async with mux.subscribe(classic) as broadcast:
                await publish(redis, classic, b"everyone")
                assert await broadcast.get(10) == b"everyone"
        async with asyncio.timeout(10):  # unsubscribed on the node when the block ends
            while await _shard_subscribers(own_cluster, owner, channel):
                await asyncio.sleep(0.02)
    finally:
        await mux.close()


async def test_a_subscription_follows_its_slot_to_another_master(own_cluster: ClusterSet, redis: Redis) -> None:
    channel = KEYS.worker_channel("w1", KEYS.tags[1])
    mux = PubSubMultiplexer(redis)
    try:
        async with mux.subscribe(channel) as sub:
            _, target = await _move(own_cluster, channel)
            await _heard(redis, sub, b"after the move")
            assert await _shard_subscribers(own_cluster, target, channel) == 1
    finally:
        await mux.close()


async def test_a_stale_slot_map_is_corrected_by_the_nodes_moved(own_cluster: ClusterSet, redis: Redis) -> None:
    channel = KEYS.job_channel("job-stale")
    await redis.set(KEYS.job("job-stale"), b"1")  # the client reads its slot map now
    source, target = await _move(own_cluster, channel)
    assert channel_nodes(redis, channel)[0] == ("127.0.0.1", source)  # the client's map is stale
    mux = PubSubMultiplexer(redis)  # so its first SSUBSCRIBE goes to the old owner, which says MOVED
    try:
        async with mux.subscribe(channel) as sub:
            assert await _shard_subscribers(own_cluster, target, channel) == 1
            await _heard(redis, sub, b"on the new owner")
    finally:
        await mux.close()


async def test_a_subscription_survives_its_master_killed_and_replaced(own_cluster: ClusterSet, redis: Redis) -> None:
    channel = KEYS.wake_channel(KEYS.tags[2])
    mux = PubSubMultiplexer(redis)
    try:
        async with mux.subscribe(channel) as sub:
            victim = _owner(own_cluster, channel)
            await publish(redis, channel, b"before")
            assert await sub.get(10) == b"before"
            own_cluster.node(victim).kill()
            heir = await asyncio.to_thread(own_cluster.wait_failover, victim)
            await _heard(redis, sub, b"after the failover")
            assert await _shard_subscribers(own_cluster, heir, channel) == 1
    finally:
        await mux.close()


async def test_a_worker_s_events_are_spublished_in_the_bridge_s_pipeline(own_cluster: ClusterSet, redis: Redis) -> None:
    manager = DelegateManager()
    bridge = EventBridge(redis, KEYS, max_len=1000)
    bridge.attach(manager)
    channel = KEYS.event_channel("worker_started")
    mux = PubSubMultiplexer(redis)
    try:
        async with mux.subscribe(channel) as sub:
            manager.invoke_notification(WorkerStartedEvent(worker_id="w1", hostname="h", pid=1))
            await bridge.flush()
            assert bridge.written == 1
            message = await sub.get(10)
            assert message is not None
            assert [event["worker_id"] for event in json.loads(message)] == ["w1"]
    finally:
        await mux.close()
        await manager.aclose()
        await bridge.aclose()
