"""What JSON cannot carry is refused at submit, naming the field; unreadable data in Redis is an actionq error."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from service.client.client import JobClient
from service.errors import InvalidParamsError, RecordUnreadableError
from service.plugins.manifest import PluginManifest
from service.redis.connection import redact
from service.settings import Settings
from service.wire import MAX_DEPTH, not_json
from tests.unit.fakes import serving

MANIFEST = PluginManifest.model_validate(
    {
        "name": "P",
        "actions": [{"name": "a", "arguments": {"x": {"type": "float"}, "y": {"type": "any", "default": None}}}],
    }
)


@pytest_asyncio.fixture
async def client(fake_redis: aioredis.Redis) -> AsyncIterator[JobClient]:
    c = JobClient(fake_redis, Settings(redis_url="redis://fake", namespace="hi"), owns_redis=False)
    await c.registry.publish(serving(c.keys, [MANIFEST], worker_id="w", hostname="h"), [MANIFEST])
    yield c
    await c.close()


def deep(n: int) -> Any:
    value: Any = 1
    for _ in range(n):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"x": math.nan}, "x"),
        ({"x": math.inf}, "x"),
        ({"x": "-inf"}, "x"),  # the string converts to a float: still no JSON for it
        ({"x": 1.0, "y": {"a": [1, math.nan]}}, "y.a.1"),
        ({"x": 1.0, "y": {1: "int key"}}, "y"),
        ({"x": 1.0, "y": {"s": {1, 2}}}, "y.s"),
        ({"x": 1.0, "y": deep(MAX_DEPTH + 5)}, "y"),
    ],
)
async def test_params_json_cannot_carry_are_refused_with_the_field(
    client: JobClient, params: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidParamsError) as info:
        await client.submit("P", "a", params)
    assert info.value.errors[0].field.startswith(field)
    assert not await client.redis.keys("hi:job:*")  # nothing written


async def test_without_validation_too(client: JobClient) -> None:
    with pytest.raises(InvalidParamsError, match="NaN"):
        await client.submit("P", "a", {"x": math.nan}, validate=False)


def test_not_json_names_the_first_bad_place() -> None:
    assert not_json({"a": [1, 2.5, "s", None, True, {"b": {}}]}) is None
    assert not_json([0, [math.inf]]) == ("1.0", "inf is not JSON (NaN and ±Infinity have no JSON form)")


async def test_a_malformed_record_read_back_is_an_actionq_error_naming_the_field(client: JobClient) -> None:
    await client.redis.hset(client.keys.job("m1"), mapping={"state": "queued", "attempt": "two"})  # type: ignore[misc]
    with pytest.raises(RecordUnreadableError, match="attempt"):
        await client.job("m1").record()
    await client.redis.hset(client.keys.job("m2"), mapping={"state": "nope", "request": "{}"})  # type: ignore[misc]
    with pytest.raises(RecordUnreadableError, match=r"request|state"):
        await client.job("m2").state()
    await client.redis.set(client.keys.arq_result("m3"), b"\x80\x04pickled")
    with pytest.raises(RecordUnreadableError, match="final record"):
        await client.job("m3").record()


async def test_a_bad_registry_entry_is_skipped_and_the_rest_still_work(client: JobClient) -> None:
    await client.redis.hset(client.keys.registry_manifests(), "Broken", "{not a manifest")  # type: ignore[misc]
    await client.redis.set(client.keys.worker("w-bad"), b"garbage")
    await client.redis.zadd(client.keys.workers(), {"w-bad": 1e15})
    assert [p.name for p in await client.plugins()] == ["P"]
    assert [w.worker_id for w in await client.workers()] == ["w"]
    handle = await client.submit("P", "a", {"x": 2})
    assert handle.created


async def test_an_unreadable_dead_letter_is_skipped_in_the_list_and_named_on_its_own(client: JobClient) -> None:
    await client.redis.set(client.keys.dead_letter("d1"), b"{broken")
    await client.redis.zadd(client.keys.dead_letters(), {"d1": 1})
    assert await client.dead.list() == []
    with pytest.raises(RecordUnreadableError, match="dead letter"):
        await client.dead.get("d1")


def test_credentials_are_redacted() -> None:
    assert redact("redis://user:s3cret@h:6379/0") == "redis://user:***@h:6379/0"
    assert redact("rediss://:s3cret@h/0?ssl_cert_reqs=none") == "rediss://:***@h/0?ssl_cert_reqs=none"
    assert "s3cret" not in redact("redis://h/0?password=s3cret")
    assert redact("redis://h:6379/0") == "redis://h:6379/0"
