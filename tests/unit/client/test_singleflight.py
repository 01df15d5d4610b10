"""Registry reads shared by concurrent submits: one read at a time, kept briefly, refreshed in the background."""

from __future__ import annotations

import asyncio

import pytest

from service.client.singleflight import SharedReads


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def test_concurrent_callers_share_one_read(clock: Clock) -> None:
    reads = 0

    async def read() -> int:
        nonlocal reads
        reads += 1
        await asyncio.sleep(0)
        return reads

    shared: SharedReads[str, int] = SharedReads(ttl_s=1.0, clock=clock.monotonic)
    assert await asyncio.gather(*(shared.get("k", read) for _ in range(50))) == [1] * 50
    assert reads == 1
    assert await shared.get("k", read) == 1  # kept


async def test_a_stale_value_is_served_while_it_is_refreshed_and_a_too_old_one_is_waited_for(clock: Clock) -> None:
    release = asyncio.Event()
    value = 1

    async def read() -> int:
        await release.wait()
        return value

    shared: SharedReads[str, int] = SharedReads(ttl_s=1.0, clock=clock.monotonic)
    release.set()
    assert await shared.get("k", read) == 1
    release.clear()
    value = 2
    clock.now += 1.5  # past the TTL, not twice it: the kept value at once, a refresh behind it
    assert await asyncio.gather(*(shared.get("k", read) for _ in range(20))) == [1] * 20
    release.set()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert await shared.get("k", read) == 2  # the refresh landed
    release.clear()
    value = 3
    clock.now += 5  # twice the TTL and more: callers wait for the fresh value
    waiting = asyncio.ensure_future(shared.get("k", read))
    await asyncio.sleep(0)
    assert not waiting.done()
    release.set()
    assert await waiting == 3
