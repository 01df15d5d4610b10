"""Fixtures of the script tests: each test runs on fakeredis and on the session's real redis-server.

Every Lua script (``service/redis/lua``) has a module here that walks each of its reply branches.
The ``r`` fixture is parametrized: ``fake`` (an in-memory fakeredis with Lua) and ``real`` (the
private redis-server of :func:`tests.conftest.redis_server`, marked ``integration``), so a
script that fakeredis runs differently from Redis fails here.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from service.client.store import JobStore
from service.keys import Keys
from service.models import JobOptions, JobRequest
from tests.conftest import _purge


@pytest_asyncio.fixture(params=["fake", pytest.param("real", marks=pytest.mark.integration)])
async def r(request: pytest.FixtureRequest, namespace: str) -> AsyncIterator[aioredis.Redis]:
    """A Redis client: fakeredis, or the session's real server (the namespace is purged after)."""
    if request.param == "fake":
        fake: aioredis.Redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
        yield fake
        await fake.aclose()
        return
    url = request.getfixturevalue("redis_url")
    client = aioredis.Redis.from_url(url)
    yield client
    await client.aclose()
    await _purge(url, namespace)


@pytest.fixture
def keys(namespace: str) -> Keys:
    """This test's key names."""
    return Keys(namespace)


@pytest.fixture
def store(r: aioredis.Redis, keys: Keys) -> JobStore:
    """The client's side of records (the submit, read and cancel scripts)."""
    return JobStore(r, keys)


def now() -> int:
    """Epoch ms."""
    return int(time.time() * 1000)


def request_json(plugin: str = "P", action: str = "a", **options: Any) -> str:
    """A request as the client writes it."""
    return JobRequest(plugin=plugin, action=action, params={"x": 1}, options=JobOptions(**options)).model_dump_json()


async def create(store: JobStore, job_id: str, *, score_delay_ms: int = 0, plugin: str = "P", **kwargs: object) -> str:
    """Submit ``job_id`` to the queue of ``plugin`` (ready now, or ``score_delay_ms`` later); its queue."""
    queue = store.keys.queue(plugin)
    at = now()
    result = await store.create(job_id, request_json(), queue=queue, now_ms=at, score_ms=at + score_delay_ms, **kwargs)
    assert result.created
    return queue
