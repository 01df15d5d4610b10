"""The pub/sub multiplexer: while its one connection is being reconnected by another coroutine,
and when the last subscriber leaves a channel (the unsubscribe goes out after, in the background).

redis-py reads a reconnect's handshake on whichever coroutine reconnects; a second coroutine
using the connection then gets ``RuntimeError: read() called while another coroutine is already
waiting``. Neither the reader nor a subscribe or unsubscribe may die of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from service.redis.pubsub import PubSubMultiplexer

BUSY = RuntimeError("read() called while another coroutine is already waiting for incoming data")


@pytest.fixture
async def mux(fake_redis: aioredis.Redis) -> AsyncIterator[PubSubMultiplexer]:
    """A multiplexer on fakeredis that keeps trying a subscribe for 5 s, closed after the test."""
    multiplexer = PubSubMultiplexer(fake_redis, reconnect_s=5)
    yield multiplexer
    await multiplexer.close()


async def test_a_subscribe_during_a_reconnect_is_tried_again(
    mux: PubSubMultiplexer, fake_redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = mux._pubsub.subscribe
    calls = 0

    async def busy_once(*channels: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise BUSY
        await real(*channels)

    monkeypatch.setattr(mux._pubsub, "subscribe", busy_once)
    async with mux.subscribe("c") as sub:
        await fake_redis.publish("c", b"hello")
        assert await sub.get(timeout=5) == b"hello"
    assert calls == 2


async def test_an_unsubscribe_during_a_reconnect_is_not_an_error(
    mux: PubSubMultiplexer, fake_redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def busy(*channels: Any) -> None:
        raise BUSY

    async with mux.subscribe("c"):
        monkeypatch.setattr(mux._pubsub, "unsubscribe", busy)
    async with mux.subscribe("c") as sub:  # the channel can be followed again
        await fake_redis.publish("c", b"again")
        assert await sub.get(timeout=5) == b"again"


async def test_the_reader_outlives_a_busy_connection(
    mux: PubSubMultiplexer, fake_redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = mux._pubsub.get_message
    failed = asyncio.Event()

    async def busy_once(**kwargs: Any) -> Any:
        if not failed.is_set():
            failed.set()
            raise BUSY
        return await real(**kwargs)

    async with mux.subscribe("c") as sub:
        monkeypatch.setattr(mux._pubsub, "get_message", busy_once)
        await failed.wait()
        await fake_redis.publish("c", b"still here")
        assert await sub.get(timeout=5) == b"still here"


async def test_leaving_a_channel_does_not_wait_for_its_unsubscribe(
    mux: PubSubMultiplexer, fake_redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A result's wait returns without the UNSUBSCRIBE's write in its time: that goes out after."""
    real = mux._pubsub.unsubscribe
    release = asyncio.Event()
    unsubscribed: list[str] = []

    async def held(*channels: Any) -> None:
        await release.wait()
        unsubscribed.extend(channels)
        await real(*channels)

    async with asyncio.timeout(5):  # an exit that waited for the held unsubscribe would hang here
        async with mux.subscribe("c"):
            monkeypatch.setattr(mux._pubsub, "unsubscribe", held)
    assert unsubscribed == []
    release.set()
    await asyncio.gather(*mux._leaving)
    assert unsubscribed == ["c"]


async def test_a_channel_followed_again_before_its_unsubscribe_stays_subscribed(
    mux: PubSubMultiplexer, fake_redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    unsubscribed: list[str] = []

    async def recorded(*channels: Any) -> None:
        unsubscribed.extend(channels)

    monkeypatch.setattr(mux._pubsub, "unsubscribe", recorded)
    async with mux.subscribe("c"):
        pass
    async with mux.subscribe("c") as sub:  # in the same turn: the unsubscribe has not run yet
        await asyncio.gather(*mux._leaving)
        assert unsubscribed == []  # it found the channel wanted again
        await fake_redis.publish("c", b"still here")
        assert await sub.get(timeout=5) == b"still here"
