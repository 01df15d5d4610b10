"""Cancellation, timeouts, retries, dead letters and checkpoints, with real worker processes."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
import redis.asyncio as aioredis

from service import (
    CancelOutcome,
    DeadLetterNotFoundError,
    JobCancelledError,
    JobClient,
    JobExpiredError,
    JobHandle,
    JobState,
    PluginActionExecutionError,
)
from service.models import now_ms
from service.processes.spawn import has_pid
from tests.conftest import FAST, WorkerFactory, WorkerProc, bundled_plugins_config, fixture_plugin

# On one Redis and on a 3-master Redis Cluster (DESIGN.md section 11).
pytestmark = pytest.mark.topologies

RELIABILITY = fixture_plugin("reliability")


def _config(**extra: Any) -> dict[str, Any]:
    config = bundled_plugins_config(**{**FAST, **extra})
    config["plugins"].append(RELIABILITY)
    return config


async def _running(handle: JobHandle, timeout_s: float = 20) -> None:
    async with asyncio.timeout(timeout_s):
        while await handle.state() is not JobState.RUNNING:
            await asyncio.sleep(0.01)


async def _listed_idle(client: JobClient, worker: WorkerProc, queue: str, timeout_s: float = 20) -> None:
    """Wait until ``worker`` lists itself as idle in ``queue``: a take of that queue found nothing to run."""
    async with asyncio.timeout(timeout_s):
        for queue_set in client.keys.queue_sets(queue):  # on a cluster, each partition's
            while not has_pid(await client.redis.zrange(client.keys.idle_workers(queue_set), 0, -1), worker.pid):
                await asyncio.sleep(0.02)


# -- cancellation ---------------------------------------------------------------------------------
async def test_cancel_while_queued_never_starts(worker_process: WorkerFactory, client: JobClient) -> None:
    handle = await client.submit("reliability", "slow_ok", {"seconds": 0.01}, validate=False)
    deferred = await client.submit("reliability", "slow_ok", {"seconds": 0.01}, validate=False, defer_s=60)
    assert await handle.cancel("changed my mind") is CancelOutcome.CANCELLED_QUEUED
    assert await deferred.cancel() is CancelOutcome.CANCELLED_QUEUED
    worker = worker_process(_config())
    await _listed_idle(client, worker, client.keys.queue("reliability"))  # it looked, and found nothing to take
    for h in (handle, deferred):
        record = await h.record()
        assert record.state is JobState.CANCELLED
        assert record.attempt == 0  # never started
        assert record.cancel_requested is not None
    error = (await handle.record()).error
    assert error is not None
    assert "changed my mind" in error.message
    assert [await client.redis.zcard(q) for q in client.keys.queue_sets(client.keys.queue("reliability"))] == [0] * len(
        client.keys.queue_sets(client.keys.queue("reliability"))
    )
    with pytest.raises(JobCancelledError):
        await handle.result(timeout=1)
    assert await handle.cancel() is CancelOutcome.ALREADY_FINISHED


async def test_cancel_while_running_cooperative(worker_process: WorkerFactory, client: JobClient) -> None:
    worker_process(_config())
    handle = await client.submit("reliability", "cooperative", {})
    await _running(handle)
    assert await handle.cancel("stop please") is CancelOutcome.CANCELLED_RUNNING
    record = await handle.record()
    assert record.state is JobState.CANCELLED
    assert record.error is not None
    assert "stop please" in record.error.message
    assert [a.state for a in record.attempts] == [JobState.CANCELLED]
    assert record.attempts[0].note == ""  # stopped by itself, not forced
    with pytest.raises(DeadLetterNotFoundError):
        await client.dead.get(handle.job_id)  # a cancelled job is not dead-lettered, nor retried


async def test_cancel_an_action_that_ignores_the_token(worker_process: WorkerFactory, client: JobClient) -> None:
    worker_process(_config())
    handle = await client.submit("reliability", "ignores_cancel", {})
    await _running(handle)
    assert await handle.cancel() is CancelOutcome.CANCELLED_RUNNING
    record = await handle.record()
    assert record.attempts[0].note == ""  # a coroutine is interrupted at once: nothing had to be forced
    assert record.attempt == 1


async def test_a_stuck_thread_is_logged_and_its_slot_freed(worker_process: WorkerFactory, client: JobClient) -> None:
    worker = worker_process(_config(concurrency=1))
    stuck = await client.submit("reliability", "stuck_thread", {"seconds": 3})
    await _running(stuck)
    assert await stuck.cancel() is CancelOutcome.CANCELLED_RUNNING
    # The only slot is free again although the thread is still sleeping.
    assert await (await client.submit("PluginB", "calculate_square", {"x": 5})).result(timeout=2) == 25
    assert "job_thread_stuck" in worker.log_text()


async def test_cancel_racing_completion_reports_what_really_happened(
    worker_process: WorkerFactory, client: JobClient
) -> None:
    worker_process(_config())
    for _ in range(5):
        handle = await client.submit("reliability", "slow_ok", {"seconds": 0.05})
        await _running(handle)
        outcome = await handle.cancel()
        state = (await handle.record()).state
        assert (outcome, state) in {
            (CancelOutcome.CANCELLED_RUNNING, JobState.CANCELLED),
            (CancelOutcome.ALREADY_FINISHED, JobState.SUCCEEDED),
        }
    done = await client.submit("reliability", "slow_ok", {"seconds": 0})
    await done.wait(timeout=10)
    assert await done.cancel() is CancelOutcome.ALREADY_FINISHED
    assert (await done.record()).state is JobState.SUCCEEDED


async def test_a_reused_job_id_is_not_hit_by_an_old_cancel(worker_process: WorkerFactory, client: JobClient) -> None:
    params = {"seconds": 0}
    old = await client.submit("reliability", "slow_ok", params, validate=False, job_id="reuse-1", result_ttl_s=1)
    assert await old.cancel() is CancelOutcome.CANCELLED_QUEUED
    assert not (await client.submit("reliability", "slow_ok", {"seconds": 0}, validate=False, job_id="reuse-1")).created
    async with asyncio.timeout(10):  # the cancelled record (and its flag, which lives on it) expires
        while await client.redis.exists(client.keys.job("reuse-1"), client.keys.arq_result("reuse-1")):
            await asyncio.sleep(0.05)
    worker_process(_config())
    new = await client.submit("reliability", "slow_ok", {"seconds": 0}, job_id="reuse-1")
    assert new.created
    assert await new.result(timeout=20) == "ok"
    assert (await new.record()).cancel_requested is None


# -- timeouts and retries -------------------------------------------------------------------------
async def test_timeouts_retry_with_the_policys_backoff(worker_process: WorkerFactory, client: JobClient) -> None:
    worker_process(_config())
    handle = await client.submit("reliability", "times_out", {"succeed_on": 3})
    assert await handle.result(timeout=30) == 3
    attempts = (await handle.record()).attempts
    assert [a.state for a in attempts] == [JobState.TIMED_OUT, JobState.TIMED_OUT, JobState.SUCCEEDED]
    assert [a.retry_in_s for a in attempts] == [0.1, 0.2, None]  # delay 0.1, multiplier 2, no jitter
    for before, after in itertools.pairwise(attempts):
        assert before.finished_at_ms is not None
        assert after.started_at_ms is not None
        assert after.started_at_ms >= before.finished_at_ms + int((before.retry_in_s or 0) * 1000)


async def test_retry_delays_stay_within_the_jitter_bounds(worker_process: WorkerFactory, client: JobClient) -> None:
    worker_process(_config())
    handle = await client.submit("reliability", "flaky", {"fail_times": 2})
    assert await handle.result(timeout=30) == 3
    attempts = (await handle.record()).attempts
    assert [a.state for a in attempts] == [JobState.FAILED, JobState.FAILED, JobState.SUCCEEDED]
    assert [a.error.type for a in attempts[:2] if a.error] == ["ConnectionError", "ConnectionError"]
    first, second = (a.retry_in_s or 0 for a in attempts[:2])
    assert 0.2 * 0.5 <= first <= 0.2 * 1.5  # delay_s 0.2, jitter 0.5
    assert 0.4 * 0.5 <= second <= 0.4 * 1.5  # multiplied by 2


async def test_non_retryable_errors_fail_at_once_into_the_dead_letters(
    worker_process: WorkerFactory, client: JobClient
) -> None:
    worker_process(_config())
    never = await client.submit("reliability", "flaky", {"fail_times": 5, "error": "PermissionError"})
    not_listed = await client.submit("reliability", "flaky", {"fail_times": 5, "error": "ValueError"})
    for handle, why in ((never, "never_retry_on"), (not_listed, "not in retry_on")):
        with pytest.raises(PluginActionExecutionError):
            await handle.result(timeout=20)
        record = await handle.record()
        assert len(record.attempts) == 1
        assert why in record.attempts[0].note
        letter = await client.dead.get(handle.job_id)
        assert letter.state is JobState.FAILED
        assert len(letter.attempts) == 1


async def test_retry_raised_by_the_action(worker_process: WorkerFactory, client: JobClient) -> None:
    worker_process(_config())
    handle = await client.submit("reliability", "retry_after", {"delay_s": 0.3})
    assert await handle.result(timeout=20) == 2
    attempts = (await handle.record()).attempts
    assert attempts[0].retry_in_s == 0.3
    assert attempts[0].error is not None
    assert attempts[0].error.type == "Retry"


async def test_exhaustion_dead_letters_and_replay(worker_process: WorkerFactory, client: JobClient) -> None:
    worker_process(_config())
    handle = await client.submit("reliability", "flaky", {"fail_times": 99}, job_id="dl-1", retry={"delay_s": 0.05})
    with pytest.raises(PluginActionExecutionError, match="attempt 4 fails"):
        await handle.result(timeout=30)
    letter = await client.dead.get("dl-1")
    assert [a.attempt for a in letter.attempts] == [1, 2, 3, 4]
    assert letter.request is not None
    assert letter.request.params == {"fail_times": 99, "error": "ConnectionError"}
    assert "exhausted" in letter.attempts[-1].note
    assert [d.job_id for d in await client.dead.list()] == ["dl-1"]

    again = await client.dead.replay("dl-1")  # same id: a fresh attempt series
    assert again.job_id == "dl-1"
    with pytest.raises(DeadLetterNotFoundError):
        await client.dead.get("dl-1")  # the letter left the store when replayed
    await again.wait(timeout=30)
    assert [a.attempt for a in (await again.record()).attempts] == [1, 2, 3, 4]
    copy = await client.dead.replay("dl-1", new_id=True)  # dead again, replayed under a new id
    assert copy.job_id != "dl-1"
    await copy.wait(timeout=30)
    assert await client.dead.purge() == 1  # the copy's letter; dl-1's was consumed by the replay
    assert await client.dead.list() == []


# -- checkpoints and queue-wait limits ------------------------------------------------------------
async def test_a_job_resumes_from_its_checkpoint(
    worker_process: WorkerFactory, client: JobClient, redis: aioredis.Redis
) -> None:
    worker_process(_config())
    handle = await client.submit("reliability", "resumable", {"steps": 5, "fail_at": 3})
    assert await handle.result(timeout=20) == {"done": 5, "resumed_from": 2, "attempt": 2}
    assert not await redis.exists(client.keys.checkpoint(handle.job_id))  # cleared when the job ended


async def test_a_job_that_waits_past_its_expiry_never_runs(worker_process: WorkerFactory, client: JobClient) -> None:
    handle = await client.submit("reliability", "slow_ok", {"seconds": 0}, validate=False, expires_s=0.3)
    expires_at_ms = (await handle.record()).expires_at_ms
    assert expires_at_ms is not None
    async with asyncio.timeout(10):  # the worker starts once the job is past its queue-wait limit
        while now_ms() <= expires_at_ms:
            await asyncio.sleep(0.02)
    worker: WorkerProc = worker_process(_config())
    with pytest.raises(JobExpiredError):
        await handle.result(timeout=20)
    assert worker.running


async def test_a_job_for_a_plugin_no_worker_serves_fails_after_unserved_expire_s(
    worker_process: WorkerFactory, client: JobClient
) -> None:
    """Unvalidated, for a plugin nobody runs: it fails (swept by a worker), it does not wait forever."""
    worker_process(_config(unserved_expire_s=1))
    nobody = await client.submit("NoSuchPlugin", "act", {"x": 1}, validate=False)
    served = await client.submit("reliability", "slow_ok", {"seconds": 0})
    assert await served.result(timeout=20) is not None
    with pytest.raises(JobExpiredError, match=r"NoSuchPlugin.*unserved_expire_s") as expired:
        await nobody.result(timeout=30)
    assert expired.value.error is not None
    assert "never ran" in expired.value.error.message
    record = await nobody.record()
    assert (record.state, record.attempt) == (JobState.FAILED, 0)
    assert await client.redis.zcard(client.keys.queue("NoSuchPlugin")) == 0  # nothing left behind
    again = await client.submit("reliability", "slow_ok", {"seconds": 0})  # the worker goes on
    assert await again.result(timeout=20) is not None
