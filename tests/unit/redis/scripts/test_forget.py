"""forget.lua: a replayed dead letter removed with its index entry, unless it was replaced or is gone."""

from __future__ import annotations

import redis.asyncio as aioredis

from service.keys import Keys
from service.redis import scripts


async def _letter(r: aioredis.Redis, keys: Keys, job_id: str, body: bytes) -> None:
    await r.set(keys.dead_letter(job_id), body)
    await r.zadd(keys.dead_letters(job_id), {job_id: 1})


async def _forget(r: aioredis.Redis, keys: Keys, job_id: str, read: bytes) -> int:
    forget = scripts.register(r, "forget")
    removed: int = await forget(keys=[keys.dead_letter(job_id), keys.dead_letters(job_id)], args=[read, job_id])
    return removed


async def test_the_letter_as_read_goes_with_its_index_entry(r: aioredis.Redis, keys: Keys) -> None:
    await _letter(r, keys, "j1", b'{"letter": 1}')
    await _letter(r, keys, "j2", b'{"letter": 2}')
    assert await _forget(r, keys, "j1", b'{"letter": 1}') == 1
    assert await r.get(keys.dead_letter("j1")) is None
    assert await r.zrange(keys.dead_letters("j1"), 0, -1) == [b"j2"]  # the other letter stays


async def test_a_letter_written_again_since_it_was_read_stays(r: aioredis.Redis, keys: Keys) -> None:
    await _letter(r, keys, "j1", b'{"letter": "the replayed job failed again"}')
    assert await _forget(r, keys, "j1", b'{"letter": "the one replayed"}') == 0
    assert await r.get(keys.dead_letter("j1")) == b'{"letter": "the replayed job failed again"}'
    assert await r.zscore(keys.dead_letters("j1"), "j1") == 1


async def test_a_letter_gone_already_is_nothing_to_do(r: aioredis.Redis, keys: Keys) -> None:
    assert await _forget(r, keys, "j1", b'{"letter": 1}') == 0
    assert await r.exists(keys.dead_letter("j1"), keys.dead_letters("j1")) == 0
