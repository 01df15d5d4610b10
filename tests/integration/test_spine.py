"""The spine end to end: real redis-server, real worker processes, the Python client."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis.asyncio as aioredis
from arq.jobs import Job, JobResult, JobStatus

from service import (
    InvalidParamsError,
    JobClient,
    JobConflictError,
    JobHandle,
    JobSpec,
    JobState,
    PluginActionExecutionError,
    PluginActionTimeoutError,
    ResultTimeoutError,
    SyncJobClient,
    SyncJobHandle,
    UnknownActionError,
    UnknownPluginError,
    UnservableJobError,
)
from service.wire import loads
from tests.conftest import FAST, REPO_ROOT, WorkerFactory, bundled_plugins_config

# On one Redis and on a 3-master Redis Cluster (DESIGN.md section 11).
pytestmark = pytest.mark.topologies


async def _namespace_keys(redis: aioredis.Redis, namespace: str) -> list[str]:
    ours = [k.decode() async for k in redis.scan_iter(match=f"{namespace}:*")]
    arqs = [k.decode() async for k in redis.scan_iter(match=f"arq:*:{namespace}:*")]
    return sorted(ours + arqs)


async def _job_keys(redis: aioredis.Redis, namespace: str) -> list[str]:
    """The namespace's keys but the worker's own (its registry entry and health line come and go)."""
    workers = (f"{namespace}:worker:", f"{namespace}:workers")
    return [key for key in await _namespace_keys(redis, namespace) if not key.startswith(workers)]


async def test_bundled_actions_run_on_a_real_worker(worker_process: WorkerFactory, client: JobClient) -> None:
    worker_process(bundled_plugins_config(**FAST))
    square = await client.submit("PluginB", "calculate_square", {"x": 6})
    positional = await client.submit("PluginB", "calculate_square", 7)  # the seed's execute(..., 6) form
    sync_add = await client.submit("InteropTarget", "it_sync_add", {"a": 2, "b": 3})
    async_add = await client.submit("InteropTarget", "it_async_add", {"a": 40})  # b defaults to 1
    slow = await client.submit("long_running", "count_slowly", {"steps": 2, "delay_s": 0.01})

    assert await square.result(timeout=20) == 36
    assert await positional.result(timeout=20) == 49
    assert await sync_add.result(timeout=20) == 5
    assert await async_add.result(timeout=20) == 41
    assert (await slow.result(timeout=20))["steps"] == 2
    record = await square.record()
    assert record.state is JobState.SUCCEEDED
    assert record.attempt == 1
    assert record.worker is not None
    assert record.started_at_ms is not None
    assert record.finished_at_ms is not None
    assert record.finished_at_ms >= record.started_at_ms >= record.enqueued_at_ms


async def test_failure_and_timeout_are_recorded_as_data(worker_process: WorkerFactory, client: JobClient) -> None:
    worker_process(bundled_plugins_config(**FAST))
    failing = await client.submit("long_running", "fail", {"message": "kaput"})
    slow = await client.submit("long_running", "count_slowly", {"steps": 50, "delay_s": 0.1}, timeout_s=0.3)
    blocked = await client.submit("long_running", "blocking_sleep", {"seconds": 2}, timeout_s=0.3)

    with pytest.raises(PluginActionExecutionError) as failed:
        await failing.result(timeout=20)
    assert failed.value.error.type == "RuntimeError"
    assert failed.value.error.message == "kaput"
    assert failed.value.error.traceback is not None
    assert "kaput" in failed.value.error.traceback

    for handle in (slow, blocked):
        with pytest.raises(PluginActionTimeoutError) as timed_out:
            await handle.result(timeout=20)
        assert "0.3s" in timed_out.value.error.message
        assert (await handle.state()) is JobState.TIMED_OUT


async def test_submit_validates_against_the_registry_and_writes_nothing_when_rejected(
    worker_process: WorkerFactory, client: JobClient, redis: aioredis.Redis, namespace: str
) -> None:
    worker_process(bundled_plugins_config(**FAST))
    idle = client.keys.idle_workers(client.keys.queue_sets(client.keys.queue("PluginB"))[0])
    async with asyncio.timeout(10):
        while not await redis.exists(idle):  # the worker lists itself as idle (its own keys, not ours)
            await asyncio.sleep(0.02)
    before = await _job_keys(redis, namespace)

    with pytest.raises(UnknownPluginError, match="'Nope'") as unknown:
        await client.submit("Nope", "x", {})
    assert "PluginB" in str(unknown.value)
    with pytest.raises(UnknownActionError, match="on_enable"):
        await client.submit("PluginB", "on_enable", {})
    with pytest.raises(InvalidParamsError) as bad:
        await client.submit("InteropTarget", "it_sync_add", {"a": "not a number", "c": 1})
    fields = {e.field for e in bad.value.errors}
    assert fields == {"a", "c"}
    with pytest.raises(InvalidParamsError, match="a: Field required"):
        await client.submit("InteropTarget", "it_sync_add", {})  # a is required

    assert await _job_keys(redis, namespace) == before


async def test_same_job_id_is_not_run_twice(
    worker_process: WorkerFactory, client: JobClient, redis: aioredis.Redis, namespace: str
) -> None:
    worker_process(bundled_plugins_config(**FAST))
    first = await client.submit("long_running", "count_slowly", {"steps": 3, "delay_s": 0.05}, job_id="order-42")
    again = await client.submit("long_running", "count_slowly", {"steps": 3, "delay_s": 0.05}, job_id="order-42")
    assert first.created
    assert not again.created
    await first.result(timeout=20)
    after = await client.submit("long_running", "count_slowly", {"steps": 3, "delay_s": 0.05}, job_id="order-42")
    assert not after.created
    record = await after.record()
    assert record.attempt == 1  # ran exactly once
    with pytest.raises(JobConflictError):
        await client.submit("long_running", "count_slowly", {"steps": 4}, job_id="order-42")


async def test_namespaces_share_a_redis_without_seeing_each_other(
    worker_process: WorkerFactory, redis_url: str, namespace: str
) -> None:
    other_ns = namespace + "b"
    worker_process(bundled_plugins_config(**FAST))
    async with (
        await JobClient.connect(redis_url, namespace=namespace) as mine,
        await JobClient.connect(redis_url, namespace=other_ns) as theirs,
    ):
        handle = await mine.submit("PluginB", "calculate_square", {"x": 3}, job_id="shared-id")
        assert await handle.result(timeout=20) == 9
        # The other namespace has no worker: it cannot see our plugins, and the same id is free there.
        with pytest.raises(UnknownPluginError):
            await theirs.submit("PluginB", "calculate_square", {"x": 3})
        parked = await theirs.submit("PluginB", "calculate_square", {"x": 4}, job_id="shared-id", validate=False)
        assert parked.created
        # A deferred job is started by a take (a submit hands over only ready jobs): once ours has
        # run, our worker has taken jobs since theirs was queued.
        later = await mine.submit("PluginB", "calculate_square", {"x": 5}, defer_s=0.1)
        assert await later.result(timeout=20) == 25
        assert await parked.state() is JobState.QUEUED  # our worker never takes their job
        assert (await handle.record()).result == 9


async def test_submit_before_any_worker_then_worker_runs_it(worker_process: WorkerFactory, client: JobClient) -> None:
    early = await client.submit("PluginB", "calculate_square", {"x": "5"}, validate=False)
    bad = await client.submit("PluginB", "calculate_square", {"y": 1}, validate=False)
    assert await early.state() is JobState.QUEUED
    worker_process(bundled_plugins_config(**FAST))
    assert await early.result(timeout=20) == 25  # the worker validates and coerces "5"
    with pytest.raises(PluginActionExecutionError, match="InvalidParamsError"):
        await bad.result(timeout=20)


async def test_host_targeting(worker_process: WorkerFactory, client: JobClient) -> None:
    worker_process(bundled_plugins_config(hostname="host-a", **FAST))
    here = await client.submit("PluginB", "calculate_square", {"x": 2}, host="host-a")
    with pytest.raises(UnservableJobError, match="host-b"):  # no live worker on host-b
        await client.submit("PluginB", "calculate_square", {"x": 2}, host="host-b")
    elsewhere = await client.submit("PluginB", "calculate_square", {"x": 2}, host="host-b", validate=False)
    assert await here.result(timeout=20) == 4
    # Deferred, so started by a take (not handed over by its submit): the worker took jobs since.
    later = await client.submit("PluginB", "calculate_square", {"x": 3}, host="host-a", defer_s=0.1)
    assert await later.result(timeout=20) == 9
    with pytest.raises(ResultTimeoutError):
        await elsewhere.result(timeout=0.1)
    assert await elsewhere.state() is JobState.QUEUED
    assert (await elsewhere.record()).queue.endswith("PluginB@host-b")


async def test_broken_plugin_is_reported_and_the_others_work(worker_process: WorkerFactory, client: JobClient) -> None:
    config = bundled_plugins_config(**FAST)
    broken = REPO_ROOT / "tests" / "fixtures" / "plugins" / "import_error"
    config["plugins"].append({"name": "import_error", "path": str(broken)})
    worker = worker_process(config)
    assert await client.submit("PluginB", "calculate_square", {"x": 8}) is not None
    workers = await client.workers()
    assert len(workers) == 1
    assert "broken at import time" in workers[0].failed_plugins["import_error"]
    assert "import_error" not in workers[0].plugins
    assert "plugin_failed" in worker.log_text()
    with pytest.raises(UnknownPluginError):
        await client.submit("import_error", "anything", {})


async def test_finished_jobs_leave_no_key_without_a_ttl(
    worker_process: WorkerFactory, client: JobClient, redis: aioredis.Redis, namespace: str
) -> None:
    worker_process(bundled_plugins_config(**FAST))
    handles = [await client.submit("PluginB", "calculate_square", {"x": i}) for i in range(5)]
    handles.append(await client.submit("long_running", "fail", {}))
    for h in handles:
        await h.wait(timeout=20)
    for key in await _namespace_keys(redis, namespace):
        if await redis.type(key) == b"zset" and ":queue:" in key:
            continue  # an empty queue ZSET does not exist; a non-empty one holds unfinished jobs
        if key == client.keys.layout():
            continue  # a cluster namespace's partition count: kept as long as the namespace is used
        # -1 is a key without a TTL (the defect); -2 a key arq's finish deleted since we listed it.
        assert await redis.ttl(key) != -1, key


async def test_arq_job_api_still_reads_our_jobs(
    worker_process: WorkerFactory, client: JobClient, topology: str
) -> None:
    if topology == "cluster":
        pytest.skip("arq's Job API reads with MULTI/EXEC, which Redis Cluster clients refuse (docs/topology.md)")

    def arq_job(job_id: str, queue: str) -> Job:
        return Job(client.keys.arq_job_id(job_id), client.redis, _queue_name=queue, _deserializer=loads)

    # Before any worker: queued and deferred, as arq says it.
    queued = await client.submit("long_running", "count_slowly", {"steps": 40, "delay_s": 0.05}, validate=False)
    later = await client.submit("PluginB", "calculate_square", {"x": 2}, validate=False, defer_s=60)
    running = arq_job(queued.job_id, (await queued.record()).queue)
    assert await running.status() is JobStatus.queued
    assert await arq_job(later.job_id, (await later.record()).queue).status() is JobStatus.deferred
    worker_process(bundled_plugins_config(**FAST))
    await _wait_for_state(queued, JobState.RUNNING)
    assert await running.status() is JobStatus.in_progress
    handle = await client.submit("PluginB", "calculate_square", {"x": 12})
    assert await handle.result(timeout=20) == 144
    done = arq_job(handle.job_id, (await handle.record()).queue)
    summary: dict[str, Any] = await done.result(timeout=5)
    assert summary == {"state": "succeeded", "result": 144, "error": None}
    assert await done.status() is JobStatus.complete
    info = await done.info()
    assert isinstance(info, JobResult)  # a finished job's info is its result
    assert (info.function, info.job_try, info.success) == ("run_action", 1, True)
    assert info.kwargs["request"]["params"] == {"x": 12}


async def _wait_for_state(handle: JobHandle, state: JobState) -> None:
    async with asyncio.timeout(20):
        while (await handle.record()).state is not state:
            await asyncio.sleep(0.02)


async def test_sigterm_lets_a_running_job_finish(worker_process: WorkerFactory, client: JobClient) -> None:
    worker = worker_process(bundled_plugins_config(shutdown_grace_s=10, **FAST))
    handle = await client.submit("long_running", "count_slowly", {"steps": 10, "delay_s": 0.1})
    while await handle.state() is not JobState.RUNNING:
        await asyncio.sleep(0.02)
    worker.terminate()
    assert worker.proc.returncode == 0
    assert (await handle.result(timeout=1))["steps"] == 10


async def test_a_job_cut_short_by_shutdown_is_requeued_and_rerun(
    worker_process: WorkerFactory, client: JobClient, topology: str
) -> None:
    worker = worker_process(bundled_plugins_config(shutdown_grace_s=0, **FAST))
    handle = await client.submit("long_running", "count_slowly", {"steps": 40, "delay_s": 0.05})
    # Begun: its first step reported. A record that says running may be a take whose reply has not
    # reached the worker yet (longer on a cluster); cut short then, nothing of it ran here and it
    # goes back with its attempt undone, not as an interrupted attempt 1.
    while (await handle.record()).progress is None:
        await asyncio.sleep(0.02)
    worker.terminate()
    assert await handle.state() is JobState.QUEUED
    worker_process(bundled_plugins_config(**FAST))
    assert (await handle.result(timeout=30))["steps"] == 40
    assert (await handle.record()).attempt == 2


def test_sync_facade(worker_process: WorkerFactory, redis_url: str, namespace: str) -> None:
    worker_process(bundled_plugins_config(**FAST))
    with SyncJobClient(redis_url, namespace=namespace) as sync_client:
        assert sync_client.execute_sync("PluginB", "calculate_square", {"x": 9}, timeout=20) == 81
        handle = sync_client.submit("InteropTarget", "it_sync_add", {"a": 1, "b": 2})
        assert handle.result(timeout=20) == 3
        assert handle.state() is JobState.SUCCEEDED
        with pytest.raises(PluginActionExecutionError):
            sync_client.execute_sync("long_running", "fail", {}, timeout=20)
        many = sync_client.submit_many(
            [JobSpec("PluginB", "calculate_square", {"x": 4}), JobSpec("PluginB", "calculate_square", {"x": "four"}),
             JobSpec("InteropTarget", "it_sync_add", {"a": 2, "b": 5}, {"job_id": "sync-many-1"})]
        )  # fmt: skip
        first, bad, third = many
        assert isinstance(first, SyncJobHandle)
        assert first.result(timeout=20) == 16
        assert isinstance(bad, InvalidParamsError)
        assert isinstance(third, SyncJobHandle)
        assert third.job_id == "sync-many-1"
        assert third.result(timeout=20) == 7


async def test_waiting_for_a_result_that_is_already_there(worker_process: WorkerFactory, client: JobClient) -> None:
    worker_process(bundled_plugins_config(**FAST))
    handle = await client.submit("PluginB", "calculate_square", {"x": 5})
    deadline = time.monotonic() + 20
    while not (await handle.record()).is_terminal and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert await client.job(handle.job_id).result(timeout=1) == 25
