"""The output stream format on fakeredis: entry ids, items and the terminal marker, the TTL at the end."""

from __future__ import annotations

import redis.asyncio as aioredis

from service.models import JobState
from service.redis.streams import StreamEnd, entry_id, entry_index
from tests.unit.stream_io import KEY, read, write


def test_entry_ids_are_the_index_plus_one() -> None:
    assert [entry_id(i) for i in (0, 1, 41)] == ["0-1", "0-2", "0-42"]
    assert entry_index(b"0-42") == 41
    assert entry_index(entry_id(-1)) == -1  # "0-0": read from the very start


async def test_round_trip_with_marker_and_ttl(fake_redis: aioredis.Redis) -> None:
    items = [1, "two", {"three": [3]}, None]
    await write(fake_redis, items)
    assert await read(fake_redis) == [*items, StreamEnd(JobState.SUCCEEDED, 4)]
    raw = await fake_redis.xrange(KEY)
    assert [r[0] for r in raw] == [b"0-1", b"0-2", b"0-3", b"0-4", b"0-5"]
    assert raw[1][1] == {b"v": b'"two"'}
    assert raw[-1][1] == {b"end": b"succeeded", b"count": b"4"}
    assert 0 < await fake_redis.ttl(KEY) <= 60  # re-armed to the result TTL at the end
