"""What a job's record keeps, with real worker processes: every attempt (a SIGKILLed one too), a last
progress snapshot that says how the job ended, the plugin version, a final record arq's own ``Job``
API reads, and job channels published from the submit on for UIs that subscribe themselves."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from arq.jobs import Job, JobStatus

from service import arqformat
from service.client.client import JobClient
from service.client.handle import JobHandle
from service.errors import JobCancelledError, PluginActionExecutionError
from service.models import AttemptEnd, JobState, ProgressStatus
from tests.conftest import FAST, REPO_ROOT, WorkerFactory, bundled_plugins_config, fixture_plugin

# The version in plugins/long_running/plugin.yml.
LONG_RUNNING_VERSION = "1.0.0"


def _config(**extra: Any) -> dict[str, Any]:
    config = bundled_plugins_config(**{**FAST, **extra})
    config["plugins"].append(fixture_plugin("published"))
    return config


async def _ended(handle: JobHandle, timeout_s: float = 30) -> None:
    """Wait for the job's end without following it (a follower would mark it followed)."""
    async with asyncio.timeout(timeout_s):
        while not (await handle.state()).is_terminal:
            await asyncio.sleep(0.02)


# -- the record -----------------------------------------------------------------------------------
async def test_a_sigkilled_attempt_stays_in_the_history_of_the_retry(
    worker_process: WorkerFactory, client: JobClient
) -> None:
    config = _config(lease_s=1.0)
    first = worker_process(config)
    handle = await client.submit("long_running", "count_slowly", {"steps": 30, "delay_s": 0.05})
    async with asyncio.timeout(20):
        while (await handle.record()).progress is None:
            await asyncio.sleep(0.02)
    killed = await handle.record()
    first.kill()  # SIGKILL mid-job: attempt 1 never settles
    second = worker_process(config)
    assert (await handle.result(timeout=60))["steps"] == 30
    record = await handle.record()
    lost, retried = record.attempts
    assert (lost.attempt, lost.state, lost.worker) == (1, AttemptEnd.LOST, killed.worker)
    assert f"-{first.pid}-" in (lost.worker or "")
    assert lost.started_at_ms == killed.started_at_ms
    assert lost.note == "its worker stopped answering (lease lapsed)"
    assert (retried.attempt, retried.state) == (2, JobState.SUCCEEDED)
    assert f"-{second.pid}-" in (retried.worker or "")
    # The plugin version that ran it, on the attempt and the record; the last snapshot says how it ended.
    assert (retried.plugin_version, record.plugin_version) == (LONG_RUNNING_VERSION, LONG_RUNNING_VERSION)
    assert record.progress is not None
    assert record.progress.status is ProgressStatus.COMPLETED
    snapshots = [snap async for snap in handle.progress()]
    assert snapshots[-1].progress is not None
    assert snapshots[-1].progress.status is ProgressStatus.COMPLETED


async def test_actionq_status_shows_the_plugin_version(
    worker_process: WorkerFactory, client: JobClient, redis_url: str, namespace: str
) -> None:
    worker_process(_config())
    handle = await client.submit("long_running", "count_slowly", {"steps": 1, "delay_s": 0.01})
    await handle.result(timeout=20)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTIONQ_")}
    env |= {"ACTIONQ_REDIS_URL": redis_url, "ACTIONQ_NAMESPACE": namespace}
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "service", "status", handle.job_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr
    fields = dict(line.split("\t") for line in done.stdout.splitlines())
    assert fields["plugin version"] == LONG_RUNNING_VERSION


# -- arq's Job API ----------------------------------------------------------------------------------
async def test_arqs_own_job_api_reads_results_and_raises_failures(
    worker_process: WorkerFactory, client: JobClient
) -> None:
    worker_process(_config())

    def arq_job(handle: JobHandle, queue: str) -> Job:
        return Job(client.keys.arq_job_id(handle.job_id), client.redis, _queue_name=queue,
                   _deserializer=arqformat.deserialize)  # fmt: skip

    ok = await client.submit("PluginB", "calculate_square", {"x": 5})
    failed = await client.submit("long_running", "fail", {"message": "the disk is full"})
    waiting = await client.submit("long_running", "fail", defer_s=60)
    await waiting.cancel("not needed")
    await _ended(ok)
    await _ended(failed)
    assert await arq_job(ok, (await ok.record()).queue).result(timeout=5) == 25
    failed_job = arq_job(failed, (await failed.record()).queue)
    assert await failed_job.status() is JobStatus.complete
    with pytest.raises(PluginActionExecutionError, match="RuntimeError: the disk is full") as raised:
        await failed_job.result(timeout=5)
    assert raised.value.error.traceback  # the worker's traceback, as the client's own result() gives it
    info = await failed_job.info()
    assert info is not None
    assert (info.function, info.kwargs["request"]["params"]) == ("run_action", {"message": "the disk is full"})
    cancelled_job = arq_job(waiting, (await waiting.record()).queue)
    assert await cancelled_job.status() is JobStatus.complete  # it ended as any job ends: its final record is there
    with pytest.raises(JobCancelledError, match="not needed"):
        await cancelled_job.result(timeout=5)


# -- job channels published from the submit on ------------------------------------------------------
@pytest_asyncio.fixture
async def publishing(client: JobClient) -> AsyncIterator[JobClient]:
    """A client of the same deployment with ``publish_job_channels: true``."""
    settings = client.settings.model_copy(update={"publish_job_channels": True})
    yield JobClient(client.redis, settings, owns_redis=False)


async def _heard(pubsub: aioredis.client.PubSub, channel: str, redis: aioredis.Redis) -> list[dict[str, Any]]:
    """What a raw subscriber heard on ``channel`` until the marker published now, after the job ended."""
    await redis.publish(channel, b"marker")
    heard: list[dict[str, Any]] = []
    async with asyncio.timeout(20):
        while True:
            raw = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if raw is None:
                continue
            if raw["data"] == b"marker":
                return heard
            heard.append(json.loads(raw["data"]))


@pytest.mark.parametrize("how", ["the deployment's setting", "the plugin's manifest"])
async def test_a_raw_subscriber_hears_every_job_from_its_submit_on(
    worker_process: WorkerFactory, client: JobClient, publishing: JobClient, redis: aioredis.Redis, how: str
) -> None:
    worker_process(_config())
    submitter, plugin, action = (
        (publishing, "long_running", "count_slowly") if how == "the deployment's setting" else
        (client, "published", "steps")
    )  # fmt: skip
    job_id = f"raw-{plugin}"
    pubsub = redis.pubsub()
    await pubsub.subscribe(f"{client.keys.namespace}:ch:job:{job_id}")  # the documented channel, before the submit
    try:
        handle = await submitter.submit(plugin, action, {"steps": 2, "delay_s": 0.06} if plugin == "long_running"
                                        else {"n": 2}, job_id=job_id)  # fmt: skip
        await _ended(handle)
        heard = await _heard(pubsub, client.keys.job_channel(job_id), redis)
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    assert heard[0] == {"type": "state", "job_id": job_id, "state": "queued", "attempt": 0, "seq": 0}
    assert heard[1] == {"type": "state", "job_id": job_id, "state": "running", "attempt": 1, "seq": 1}
    assert [m["seq"] for m in heard] == list(range(len(heard)))  # nothing missed, nothing twice
    progress = [m["progress"] for m in heard if m["type"] == "progress"]
    assert [p["current_step"] for p in progress] == [1, 2, 2]  # the last one: the job ended
    assert [p["status"] for p in progress] == ["running", "running", "completed"]
    final = heard[-1].pop("final")  # the end carries the final record (arq's result), for no read back
    assert heard[-1] == {"type": "state", "job_id": job_id, "state": "succeeded", "attempt": 1, "seq": len(heard) - 1}
    assert final["actionq"]["state"] == "succeeded"


async def test_without_the_setting_a_job_nobody_follows_publishes_nothing(
    worker_process: WorkerFactory, client: JobClient, redis: aioredis.Redis
) -> None:
    worker_process(_config())
    job_id = "raw-quiet"
    pubsub = redis.pubsub()
    await pubsub.subscribe(client.keys.job_channel(job_id))
    try:
        handle = await client.submit("long_running", "count_slowly", {"steps": 2, "delay_s": 0.06}, job_id=job_id)
        await _ended(handle)
        heard = await _heard(pubsub, client.keys.job_channel(job_id), redis)
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    assert heard == []
    assert (await handle.record()).state is JobState.SUCCEEDED


async def test_failed_jobs_are_kept_for_failed_result_ttl_s(worker_process: WorkerFactory, client: JobClient) -> None:
    worker_process(bundled_plugins_config(**FAST, result_ttl_s=100, failed_result_ttl_s=50_000))
    ok = await client.submit("PluginB", "calculate_square", {"x": 2})
    bad = await client.submit("long_running", "fail", {"message": "x"})
    own = await client.submit("long_running", "fail", {"message": "x"}, result_ttl_s=7)
    assert await ok.result(timeout=20) == 4
    for handle in (bad, own):
        with pytest.raises(PluginActionExecutionError):
            await handle.result(timeout=20)
    ttl = {h.job_id: await client.redis.ttl(client.keys.arq_result(h.job_id)) for h in (ok, bad, own)}
    assert 0 < ttl[ok.job_id] <= 100
    assert 100 < ttl[bad.job_id] <= 50_000
    assert 0 < ttl[own.job_id] <= 7  # the job's own result_ttl_s wins
