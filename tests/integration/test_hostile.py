"""Hostile input written straight into Redis, against a real worker process: each bad job fails
alone, with the reason, and the worker goes on to run the next job."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from service import (
    InvalidParamsError,
    JobClient,
    JobState,
    PayloadTooLargeError,
    UnknownActionError,
    UnknownPluginError,
)
from service.models import JobRequest, now_ms
from service.redis.cluster import publish
from service.worker.take import Claims
from tests.conftest import FAST, WorkerFactory, WorkerProc, bundled_plugins_config

REQUEST = JobRequest(plugin="PluginB", action="calculate_square", params={"x": 3}).model_dump_json()
LIMITS = {**FAST, "max_payload_bytes": 4096}


async def _write(client: JobClient, job_id: str, **fields: Any) -> None:
    """A job written by hand: its record (``fields`` over sane ones), its queue entry, a wake-up."""
    keys, queue = client.keys, client.keys.queue("PluginB")
    record: dict[str, Any] = {"state": "queued", "request": REQUEST, "queue": queue, "attempt": 0, "seq": 0}
    record |= {"enqueued_at_ms": now_ms(), "scheduled_at_ms": now_ms(), **fields}
    await client.redis.hset(keys.job(job_id), mapping={k: v for k, v in record.items() if v is not None})  # type: ignore[misc]
    await client.redis.zadd(queue, {keys.arq_job_id(job_id): now_ms() - 1})
    await client.redis.publish(keys.wake_channel(), queue)


async def _still_works(client: JobClient, worker: WorkerProc) -> None:
    assert await (await client.submit("PluginB", "calculate_square", {"x": 7})).result(timeout=20) == 49
    assert worker.running, worker.log_tail()


async def _until_logged(worker: WorkerProc, event: str, timeout_s: float = 20) -> None:
    async with asyncio.timeout(timeout_s):
        while f'"event": "{event}"' not in worker.log_text():
            await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"enqueued_at_ms": "abc"}, "enqueued_at_ms"),
        ({"attempt": "x"}, "attempt"),
        ({"seq": "NaN"}, "seq"),
        ({"expires_at_ms": "soon"}, "expires_at_ms"),
        ({"state": "bogus"}, "state"),
        ({"request": b"\x80\x04\x95\x00pickle"}, "not a valid job request"),
        ({"request": '{"plugin": "PluginB", "action": "calculate_square", "params": {"x": "three"}}'}, "x"),
        ({"request": json.dumps({"plugin": "PluginB", "action": "calculate_square", "pad": "y" * 8000})}, "payload"),
    ],
)
async def test_a_malformed_job_fails_alone_and_the_worker_runs_the_next(
    worker_process: WorkerFactory, client: JobClient, fields: dict[str, Any], named: str
) -> None:
    worker = worker_process(bundled_plugins_config(**LIMITS))
    await _write(client, "bad", **fields)
    async with asyncio.timeout(20):
        while not await client.redis.exists(client.keys.arq_result("bad")):
            await asyncio.sleep(0.05)
    letter = await client.dead.get("bad")
    assert letter.error is not None
    assert named in letter.error.message
    assert letter.state is JobState.FAILED
    assert not await client.redis.exists(client.keys.job("bad"))  # nothing half-written: one final record
    assert await client.redis.zscore(client.keys.queue("PluginB"), client.keys.arq_job_id("bad")) is None
    await _still_works(client, worker)


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("plugin", "action", "params", "error", "named"),
    [
        ("PluginB", "calculate_square", {"x": float("nan")}, InvalidParamsError, "x"),
        ("PluginB", "calculate_square", {"x": float("inf")}, InvalidParamsError, "x"),
        ("PluginB", "calculate_square", {"x": "three"}, InvalidParamsError, "x"),
        ("PluginB", "calculate_square", {}, InvalidParamsError, "x"),
        ("PluginB", "calculate_square", {"x": 3, "extra": 1}, InvalidParamsError, "extra"),
        ("long_running", "fail", {"message": _nested(300)}, InvalidParamsError, "message"),
        ("long_running", "fail", {"message": "\ud800"}, InvalidParamsError, "message"),
        ("long_running", "fail", {"message": "y" * 8000}, PayloadTooLargeError, "4096"),
        ("PluginB", "no_such_action", {"x": 3}, UnknownActionError, "no_such_action"),
        ("NoSuchPlugin", "act", {}, UnknownPluginError, "NoSuchPlugin"),
    ],
)
async def test_bad_input_through_the_client_is_refused_with_nothing_written(
    worker_process: WorkerFactory,
    client: JobClient,
    plugin: str,
    action: str,
    params: dict[str, Any],
    error: type[Exception],
    named: str,
) -> None:
    """Refused at submit, naming what was wrong; no key written; the worker runs the next job."""
    worker = worker_process(bundled_plugins_config(**LIMITS))
    settings = client.settings.model_copy(update={"max_payload_bytes": 4096})
    async with JobClient(client.redis, settings, owns_redis=False) as limited:
        with pytest.raises(error, match=named):
            await limited.submit(plugin, action, params, job_id="refused")
    for key in (client.keys.job("refused"), client.keys.arq_result("refused"), client.keys.dead_letter("refused")):
        assert not await client.redis.exists(key)
    assert not [q async for q in client.redis.scan_iter(match=client.keys.queue_prefix() + "*")]
    await _still_works(client, worker)


@pytest.mark.topologies
async def test_forged_channel_messages_are_refused_and_logged(
    worker_process: WorkerFactory, client: JobClient, topology: str
) -> None:
    """On a cluster the hand-off channels are sharded: the forged ones go there with SPUBLISH."""
    worker = worker_process(bundled_plugins_config(**FAST))
    [info] = await client.workers()
    keys = client.keys
    first, last = keys.worker_channels(info.worker_id)[0], keys.worker_channels(info.worker_id)[-1]
    for channel, message, logged in [
        (last, b"no newlines\nat all", "bad_handoff_message"),
        (first, b"other-ns:x\nq\n1\n{}", "bad_handoff_message"),
        (keys.cancel_channel(), b"\x80\x04pickle", "bad_cancel_message"),
        (keys.cancel_channel(), json.dumps({"job_id": "j", "reason": "r"}).encode(), "bad_cancel_message"),
        (keys.control_channel(), b'{"command": "format_disk"}', "bad_control_message"),
    ]:
        await publish(client.redis, channel, message)
        await _until_logged(worker, logged)
    await _still_works(client, worker)


async def test_a_stale_handoff_is_checked_against_the_claim_and_dropped(
    worker_process: WorkerFactory, client: JobClient
) -> None:
    """A hand-off that waited past the lease (a stalled connection) must not run a job another worker took."""
    worker = worker_process(bundled_plugins_config(**FAST))
    [info] = await client.workers()
    # Deferred, so that no live worker is handed it or takes it: "w-other" takes it, as if a minute had passed.
    handle = await client.submit("PluginB", "calculate_square", {"x": 5}, job_id="stale", defer_s=60)
    queue = (await handle.record()).queue
    other = Claims(client.redis, client.keys, worker_id="w-other", lease_s=3)
    [taken] = (await other.take([queue], now_ms() + 61_000, 1)).jobs
    assert taken.job_id == "stale"
    old = now_ms() - 10_000  # handed over ten seconds ago: long past the lease
    message = f"{client.keys.arq_job_id('stale')}\n{queue}\n{old}\n\n".encode() + taken.request  # unsigned
    await client.redis.publish(client.keys.worker_channel(info.worker_id), message)
    await _until_logged(worker, "stale_handoff_dropped")
    record = await handle.record()
    assert (record.state, record.worker) == (JobState.RUNNING, "w-other")  # untouched: w-other's attempt
    assert '"event": "job_started"' not in worker.log_text()
