"""Workers with signing keys: signed jobs, cancels and commands go through; forged ones are refused.

The worker stays up through all of it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from service import CancelOutcome, JobClient, JobSignatureError, JobState
from service.events.control import ControlCommand
from service.models import JobRequest, now_ms
from tests.conftest import FAST, WorkerFactory, WorkerProc, bundled_plugins_config

KEYS = ["new-key", "old-key"]
SIGNED = {**FAST, "signing_keys": KEYS}


@pytest_asyncio.fixture
async def signing_client(redis_url: str, namespace: str) -> AsyncIterator[JobClient]:
    """A client that signs with the first of the workers' keys."""
    async with await JobClient.connect(redis_url, namespace=namespace) as plain:
        settings = plain.settings.model_copy(
            update={"signing_keys": plain.settings.model_validate(SIGNED).signing_keys}
        )
    async with await JobClient.connect(settings=settings) as client:
        yield client


async def _until_logged(worker: WorkerProc, event: str, timeout_s: float = 20) -> None:
    async with asyncio.timeout(timeout_s):
        while f'"event": "{event}"' not in worker.log_text():
            await asyncio.sleep(0.05)


async def test_signed_work_runs_and_forged_jobs_fail_without_running(
    worker_process: WorkerFactory, signing_client: JobClient, client: JobClient
) -> None:
    worker = worker_process(bundled_plugins_config(**SIGNED))
    assert await (await signing_client.submit("PluginB", "calculate_square", {"x": 3})).result(timeout=20) == 9

    forged = await client.submit("PluginB", "calculate_square", {"x": 4})  # a client without the key
    record = await forged.wait(timeout=20)
    assert (record.state, record.error and record.error.type) == (JobState.FAILED, "JobSignatureError")
    with pytest.raises(JobSignatureError, match="not signed with a key this worker accepts"):
        await forged.result(timeout=1)
    assert [letter.job_id for letter in await client.dead.list()] == []  # a forged job is not kept to replay

    # A genuine signature copied onto another job's record does not verify either.
    genuine = await signing_client.submit("PluginB", "calculate_square", {"x": 5}, defer_s=60)
    signature = await client.redis.hget(client.keys.job(genuine.job_id), "sig")  # type: ignore[misc]
    assert signature
    copied = await client.submit("PluginB", "calculate_square", {"x": 5}, job_id="copy", defer_s=0.01)
    await client.redis.hset(client.keys.job("copy"), "sig", signature)  # type: ignore[misc]
    assert (await copied.wait(timeout=20)).state is JobState.FAILED
    assert worker.running


async def test_cancels_and_commands_must_be_signed(
    worker_process: WorkerFactory, signing_client: JobClient, client: JobClient
) -> None:
    worker = worker_process(bundled_plugins_config(**SIGNED))
    [info] = await client.workers()
    handle = await signing_client.submit("long_running", "count_slowly", {"steps": 200, "delay_s": 0.05})
    async with asyncio.timeout(20):
        while await handle.state() is not JobState.RUNNING:
            await asyncio.sleep(0.02)
    # A forged push (unsigned, right generation) is refused; the job runs on.
    generation = (await handle.record()).enqueued_at_ms
    push = {"job_id": handle.job_id, "reason": "forged", "generation": generation, "ts": now_ms(), "sig": ""}
    await client.redis.publish(client.keys.cancel_channel(), json.dumps(push))
    await _until_logged(worker, "bad_cancel_message")
    assert await handle.state() is JobState.RUNNING
    assert await handle.cancel("signed", timeout=20) is CancelOutcome.CANCELLED_RUNNING  # the signing client's

    refused = await client.control("pause", timeout=5)  # unsigned: acknowledged as refused
    assert [ack.error for ack in refused.acks] == ["the command is not signed with an accepted key (signing_keys)"]
    stale = ControlCommand(command="pause", sent_at_ms=now_ms() - 120_000).signed(signing_client.signer)
    await client.redis.publish(client.keys.control_channel(), stale.model_dump_json())  # a replay
    await _until_logged(worker, "control_command_refused")
    assert (await client.workers())[0].paused is False
    assert (await signing_client.control("pause", timeout=5)).acted == [info.worker_id]
    assert (await signing_client.control("resume", timeout=5)).acted == [info.worker_id]


async def test_a_forged_hand_off_does_not_run_without_its_claim(
    worker_process: WorkerFactory, signing_client: JobClient, client: JobClient
) -> None:
    """Even with a genuine signed request, a hand-off nobody claimed for this worker does not run."""
    worker = worker_process(bundled_plugins_config(**SIGNED))
    [info] = await client.workers()
    genuine = await signing_client.submit("PluginB", "calculate_square", {"x": 6}, defer_s=60)
    record = await client.redis.hmget(client.keys.job(genuine.job_id), ["sig", "queue", "request"])  # type: ignore[misc]
    signature, queue, request = record
    fresh = now_ms()  # looks fresh: only the claim check can tell
    message = b"\n".join(
        [client.keys.arq_job_id(genuine.job_id).encode(), queue, str(fresh).encode(), signature, request]
    )
    await client.redis.publish(client.keys.worker_channel(info.worker_id), message)
    await _until_logged(worker, "stale_handoff_dropped")
    assert await genuine.state() is JobState.QUEUED
    assert '"event": "job_started"' not in worker.log_text()
    assert JobRequest.model_validate_json(request).params == {"x": 6}
