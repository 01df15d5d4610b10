"""Seed 002's typed config and storage and seed 004's error decorators, in a real worker process."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from service import JobClient, PluginActionExecutionError
from tests.conftest import FAST, WorkerFactory, WorkerProc, fixture_plugin, until_logged

SECRET = "sk-integration-7f3a9c"
CONFIGURED = {**fixture_plugin("configured"), "config": {"api_key": SECRET, "step": 2}}
# The same folder under another name, with a config that does not validate.
MISCONFIGURED = {**fixture_plugin("configured"), "name": "misconfigured", "config": {"api_key": SECRET, "step": 0}}


def _config(**extra: Any) -> dict[str, Any]:
    return {"plugins": [CONFIGURED, MISCONFIGURED], "storage": {"backend": "redis"}, **FAST, **extra}


def _failed_lines(worker: WorkerProc) -> list[str]:
    return [line for line in worker.log_text().splitlines() if '"function_failed"' in line]


async def test_config_storage_and_decorators_in_a_worker(worker_process: WorkerFactory, client: JobClient) -> None:
    worker = worker_process(_config())

    # The typed config, from the plugin's config: block, with its default filled in.
    described = await (await client.submit("configured", "describe")).result(timeout=20)
    assert described["step"] == 2
    assert described["greeting"] == "hello"
    assert described["api_key_length"] == len(SECRET)
    assert described["api_key_shown"] == "**********"
    assert described["backend"] == "redis"
    assert described["keys"] == ["enables"]  # on_enable (decorated, still awaited) stored it

    # Storage on Redis: a second job sees what the first stored, and so does a thread.
    assert await (await client.submit("configured", "bump", {"name": "x"})).result(timeout=20) == 2
    assert await (await client.submit("configured", "bump", {"name": "x"})).result(timeout=20) == 4
    assert await (await client.submit("configured", "bump_sync", {"name": "x"})).result(timeout=20) == 6
    stored = await client.redis.hgetall(client.keys.plugin_storage("configured"))  # type: ignore[misc]
    assert stored == {b"enables": b"1", b"x": b"6"}

    # handle_errors: logged, the default returned; log_errors: logged, then the job fails.
    assert await (await client.submit("configured", "bump", {"name": "x", "fail": True})).result(timeout=20) == -1
    with pytest.raises(PluginActionExecutionError) as failed:
        await (await client.submit("configured", "explode")).result(timeout=20)
    assert failed.value.error.type == "RuntimeError"
    assert "exploded on purpose" in failed.value.error.message
    async with asyncio.timeout(30):
        items = [i async for i in client.execute_stream("configured", "count_to", {"n": 3})]
    assert items == [0, 1, 2]
    await until_logged(worker, "function_failed", times=2)
    handled, raised = _failed_lines(worker)
    assert '"function": "Configured.bump"' in handled
    assert '"outcome": "default_returned"' in handled
    assert '"error_type": "ValueError"' in handled
    assert '"function": "Configured.explode"' in raised
    assert '"outcome": "raised"' in raised


async def test_a_bad_config_fails_that_plugin_only_and_no_secret_shows(
    worker_process: WorkerFactory, client: JobClient
) -> None:
    worker = worker_process(_config())
    [info] = await client.workers()
    assert list(info.plugins) == ["configured"]
    reason = info.failed_plugins["misconfigured"]
    assert reason == "invalid config (ConfiguredConfig): step: Input should be greater than or equal to 1"
    assert await (await client.submit("configured", "bump", {"name": "y"})).result(timeout=20) == 2
    # Nowhere: not in the log, the registry, the worker's description or any other key of the namespace.
    assert SECRET not in worker.log_text()
    for key in await client.redis.keys(f"{client.keys.namespace}:*"):
        kind = await client.redis.type(key)
        if kind == b"hash":
            values = b"".join(k + v for k, v in (await client.redis.hgetall(key)).items())  # type: ignore[misc]
        elif kind == b"string":
            values = await client.redis.get(key) or b""
        else:
            continue
        assert SECRET.encode() not in values, key


async def test_stored_values_outlive_the_worker(worker_process: WorkerFactory, client: JobClient) -> None:
    first = worker_process(_config())
    assert await (await client.submit("configured", "bump", {"name": "z"})).result(timeout=20) == 2
    assert first.terminate() == 0
    worker_process(_config())
    assert await (await client.submit("configured", "bump", {"name": "z"})).result(timeout=20) == 4
