"""The executor pipeline with a real PluginLoader and a fakeredis job store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from service.client.client import JobClient
from service.models import ErrorInfo, JobOptions, JobRequest, JobState, now_ms
from service.plugins.loader import PluginLoader
from service.settings import Settings
from service.worker.executor import Executor
from service.worker.take import Claims
from tests.conftest import take_job

PLUGINS = Path(__file__).resolve().parents[3] / "plugins"


@dataclass
class Rig:
    client: JobClient
    executor: Executor

    async def submit(self, plugin: str, action: str, params: dict[str, Any], **options: Any) -> str:
        request = JobRequest(plugin=plugin, action=action, params=params, options=JobOptions(**options))
        return (await self.client.submit_request(request)).job_id


@pytest_asyncio.fixture
async def rig(fake_redis: aioredis.Redis) -> AsyncIterator[Rig]:
    settings = Settings(
        redis_url="redis://fake", namespace="ex", default_timeout_s=5, cancel_grace_s=0.1, max_payload_bytes=4096
    )
    loader = PluginLoader(enable_timeout_s=5)
    await loader.load_all([(n, PLUGINS / n) for n in ("long_running", "PluginB", "InteropTarget")])
    client = JobClient(fake_redis, settings, owns_redis=False)
    executor = Executor(loader=loader, redis=client.redis, keys=client.keys, settings=settings, worker_id="w-test")
    yield Rig(client, executor)
    await loader.unload_all()
    await client.close()


async def test_success_is_recorded_with_result_and_ttl(rig: Rig) -> None:
    job = await rig.submit("PluginB", "calculate_square", {"x": 7}, result_ttl_s=60)
    outcome = await rig.executor.run(await take_job(rig.client, job))
    assert outcome is not None
    assert outcome.state is JobState.SUCCEEDED
    record = await rig.client.job(job).record()
    assert (record.state, record.result, record.worker, record.attempt) == (JobState.SUCCEEDED, 49, "w-test", 1)
    assert record.seq == 2  # running, succeeded
    assert not await rig.client.redis.exists(rig.client.keys.job(job))  # the final record is in arq's result
    assert 0 < await rig.client.redis.ttl(rig.client.keys.arq_result(job)) <= 60


async def _run(rig: Rig, plugin: str, action: str, params: dict[str, Any], **options: Any) -> Any:
    job = await rig.submit(plugin, action, params, **options)
    await rig.executor.run(await take_job(rig.client, job))
    return await rig.client.job(job).record()


async def test_exception_is_recorded_as_failed_with_traceback(rig: Rig) -> None:
    record = await _run(rig, "long_running", "fail", {"message": "nope"})
    assert record.state is JobState.FAILED
    assert (record.error.type, record.error.message) == ("RuntimeError", "nope")
    assert "raise RuntimeError" in record.error.traceback


async def test_timeout_is_timed_out_and_an_actions_own_timeout_error_is_a_failure(rig: Rig) -> None:
    record = await _run(rig, "long_running", "count_slowly", {"steps": 100, "delay_s": 0.05}, timeout_s=0.1)
    assert record.state is JobState.TIMED_OUT
    assert record.error.type == "PluginActionTimeoutError"
    assert "0.1s" in record.error.message

    async def own_timeout(**_: Any) -> None:
        raise TimeoutError("the upstream API timed out")

    bound = rig.executor.loader.resolve("long_running", "fail")
    object.__setattr__(bound, "func", own_timeout)
    object.__setattr__(bound, "kind", "async")
    record = await _run(rig, "long_running", "fail", {})
    assert record.state is JobState.FAILED
    assert record.error.message == "the upstream API timed out"


async def test_unknown_action_and_bad_params_fail_on_the_worker_too(rig: Rig) -> None:
    record = await _run(rig, "Nope", "x", {})
    assert (record.state, record.error.type) == (JobState.FAILED, "UnknownPluginError")
    record = await _run(rig, "PluginB", "calculate_square", {"y": 1})
    assert (record.state, record.error.type) == (JobState.FAILED, "InvalidParamsError")
    assert record.error.traceback is None


async def test_results_must_be_json_and_fit_the_limit(rig: Rig) -> None:
    record = await _run(rig, "long_running", "fail", {})  # warm-up: a plain failure
    assert record.state is JobState.FAILED

    async def returns(value: Any) -> Any:
        return value

    bound = rig.executor.loader.resolve("InteropTarget", "it_async_add")
    for value, expected in (({1, 2}, "not JSON"), ("z" * 10_000, "over the limit")):

        async def fake(a: int, b: int = 1, _v: Any = value) -> Any:
            return await returns(_v)

        object.__setattr__(bound, "func", fake)
        record = await _run(rig, "InteropTarget", "it_async_add", {"a": 1})
        assert record.state is JobState.FAILED
        assert expected in record.error.message


async def test_malformed_request_is_a_recorded_failure(rig: Rig) -> None:
    # A record whose request this worker cannot read (written by hand, or by a newer version).
    job = await rig.submit("PluginB", "calculate_square", {"x": 1})
    key, queue = rig.client.keys.job(job), (await rig.client.job(job).record()).queue
    await rig.client.redis.hset(key, "request", '{"malformed": "not JSON"}')  # type: ignore[misc]
    claims = Claims(rig.client.redis, rig.client.keys, worker_id="w-test", lease_s=3)
    [taken] = (await claims.take([queue], now_ms(), limit=10)).jobs
    outcome = await rig.executor.run(taken)
    assert outcome is not None
    assert outcome.state is JobState.FAILED
    final = json.loads(await rig.client.redis.get(rig.client.keys.arq_result(job)))["actionq"]  # not a JobRecord
    assert final["state"] == "failed"
    assert "malformed job data" in ErrorInfo.model_validate_json(final["error"]).message
    assert await rig.client.redis.zcard(queue) == 0


async def test_a_request_that_is_not_json_still_leaves_a_readable_arq_result(rig: Rig) -> None:
    job = await rig.submit("PluginB", "calculate_square", {"x": 1})
    key, queue = rig.client.keys.job(job), (await rig.client.job(job).record()).queue
    await rig.client.redis.hset(key, "request", "{not json")  # type: ignore[misc]
    [taken] = (
        await Claims(rig.client.redis, rig.client.keys, worker_id="w-test", lease_s=3).take([queue], now_ms(), 10)
    ).jobs
    outcome = await rig.executor.run(taken)
    assert outcome is not None
    assert outcome.state is JobState.FAILED
    result = json.loads(await rig.client.redis.get(rig.client.keys.arq_result(job)))  # valid JSON for arq
    assert result["k"]["request"] == "{not json"
    assert result["actionq"]["state"] == "failed"


async def test_a_job_whose_record_expired_leaves_its_queue_without_running(rig: Rig) -> None:
    job = await rig.submit("long_running", "fail", {})
    queue = (await rig.client.job(job).record()).queue
    await rig.client.redis.delete(rig.client.keys.job(job))
    claims = Claims(rig.client.redis, rig.client.keys, worker_id="w-test", lease_s=3)
    take = await claims.take([queue], now_ms(), limit=10)
    assert [(j.job_id, j.status) for j in take.jobs] == [(job, "missing")]
    assert claims.held == frozenset()
    assert await rig.client.redis.zcard(queue) == 0
    assert not await rig.client.redis.exists(rig.client.keys.job(job), rig.client.keys.arq_in_progress(job))


async def test_cancellation_by_shutdown_requeues_the_record(rig: Rig) -> None:
    job = await rig.submit("long_running", "count_slowly", {"steps": 100, "delay_s": 0.05})
    task = asyncio.create_task(rig.executor.run(await take_job(rig.client, job)))
    while (await rig.client.job(job).record()).state is not JobState.RUNNING:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    record = await rig.client.job(job).record()
    assert (record.state, record.worker) == (JobState.QUEUED, "")
    # Back in its queue, ready at once, and no longer leased.
    assert await rig.client.redis.zscore(record.queue, rig.client.keys.arq_job_id(job)) <= now_ms()
    assert not await rig.client.redis.exists(rig.client.keys.arq_in_progress(job))


async def test_sync_action_runs_in_a_thread_with_the_job_context(rig: Rig) -> None:
    record = await _run(rig, "long_running", "blocking_sleep", {"seconds": 0.01})
    assert (record.state, record.result) == (JobState.SUCCEEDED, 0.01)


async def test_a_cancel_push_that_arrives_before_the_job_starts_here_still_cancels_it(rig: Rig) -> None:
    # Taken (or handed over) before the cancel set its durable flag, the push beat the start.
    job = await rig.submit("long_running", "count_slowly", {"steps": 100, "delay_s": 0.05})
    taken = await take_job(rig.client, job)
    assert taken.cancel_reason == ""
    assert not rig.executor.cancel(job, "stop early", taken.enqueued_at_ms)  # no token yet: remembered, not lost
    assert not rig.executor.cancel("someone-elses-job", "not ours", taken.enqueued_at_ms)
    async with asyncio.timeout(5):
        outcome = await rig.executor.run(taken)
    assert outcome is not None
    assert outcome.state is JobState.CANCELLED
    error = (await rig.client.job(job).record()).error
    assert error is not None
    assert "stop early" in error.message


@pytest.mark.parametrize(
    ("plugin", "action", "params", "order"),
    [
        # Ended in its first step: the settlement (the result's path) is written before the start events.
        ("PluginB", "calculate_square", {"x": 3}, ["settled", "job_received", "job_started", "job_succeeded"]),
        # Still running after it: the start events go out while it runs, as before.
        ("long_running", "count_slowly", {"steps": 2, "delay_s": 0.01},
         ["job_received", "job_started", "settled", "job_succeeded"]),
    ],
)  # fmt: skip
async def test_the_start_events_of_an_action_that_ended_in_its_first_step_follow_its_settlement(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, plugin: str, action: str, params: dict[str, Any], order: list[str]
) -> None:
    seen: list[str] = []
    monkeypatch.setattr(rig.executor.events, "_notify", lambda event: seen.append(event.kind))
    settle = rig.executor.settler.settle

    async def settled(settlement: Any) -> int:
        seq = await settle(settlement)
        seen.append("settled")
        return seq

    monkeypatch.setattr(rig.executor.settler, "settle", settled)
    record = await _run(rig, plugin, action, params)
    assert record.state is JobState.SUCCEEDED
    assert [kind for kind in seen if kind != "job_progress"] == order
