"""The worker core: wake-ups instead of polling, short leases after a SIGKILL, supervised pools."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import yaml
from redis.asyncio import Redis

from service import JobClient, JobHandle, JobState
from service.keys import Keys
from service.models import now_ms
from service.processes.spawn import WorkerStartError, has_pid, spawn_worker, wait_registered
from service.worker.take import Claims
from tests.conftest import FAST, REPO_ROOT, WorkerFactory, bundled_plugins_config, fixture_plugin

# On one Redis and on a 3-master Redis Cluster (DESIGN.md section 11).
pytestmark = pytest.mark.topologies

RELIABILITY = fixture_plugin("reliability")


async def test_a_submit_wakes_an_idle_worker(worker_process: WorkerFactory, client: JobClient) -> None:
    # With a 30 s fallback poll, only the wake-up (or the deferred-job timer) can start these in time.
    worker_process(bundled_plugins_config(**{**FAST, "poll_delay_s": 30}))
    idle = _idle_sets(client, "PluginB")
    await _until(lambda: _listed(client, idle), "the worker to go idle and list itself")
    now = await client.submit("PluginB", "calculate_square", {"x": 3})
    assert await now.result(timeout=10) == 9
    deferred = await client.submit("PluginB", "calculate_square", {"x": 4}, defer_s=0.5)
    assert await deferred.result(timeout=10) == 16


async def test_a_sigkilled_workers_job_runs_again_elsewhere_from_its_checkpoint(
    worker_process: WorkerFactory, client: JobClient
) -> None:
    config = bundled_plugins_config(**{**FAST, "lease_s": 1.0})
    config["plugins"].append(RELIABILITY)
    first = worker_process(config)
    handle = await client.submit("long_running", "count_slowly", {"steps": 400, "delay_s": 0.05})
    async with asyncio.timeout(20):
        while (await handle.record()).progress is None:
            await asyncio.sleep(0.02)
    first.kill()  # SIGKILL: no cleanup, the lease is not released, the record still says running
    assert (await handle.record()).state is JobState.RUNNING
    second = worker_process(config)
    async with asyncio.timeout(30):
        while (await handle.record()).attempt < 2:
            await asyncio.sleep(0.05)
    record = await handle.record()
    assert record.state is JobState.RUNNING
    assert record.worker is not None
    assert f"-{second.pid}-" in record.worker
    assert await handle.cancel() is not None  # end it; the point was the re-run


def _pool(config: dict[str, object], env: dict[str, str], tmp_path: Path, processes: int) -> subprocess.Popen[bytes]:
    path = tmp_path / "pool.yml"
    path.write_text(yaml.safe_dump(config))
    with (tmp_path / "pool.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "service", "--config", str(path), "worker", "--processes", str(processes)],
            env=env,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def _live_workers(client: JobClient, count: int, timeout_s: float = 30) -> list[int]:
    async with asyncio.timeout(timeout_s):
        while True:
            workers = await client.workers()
            if len(workers) == count:
                return sorted(w.pid for w in workers)
            await asyncio.sleep(0.1)


async def test_a_pool_restarts_a_dead_worker_and_drains_on_sigterm(
    client: JobClient, redis_url: str, namespace: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTIONQ_")}
    env.update(ACTIONQ_REDIS_URL=redis_url, ACTIONQ_NAMESPACE=namespace, ACTIONQ_LOG_FORMAT="json")
    pool = _pool(bundled_plugins_config(**{**FAST, "heartbeat_s": 0.5}), env, tmp_path, processes=2)
    try:
        pids = await _live_workers(client, 2)
        os.kill(pids[0], signal.SIGKILL)
        async with asyncio.timeout(30):  # the dead one drops out of the registry, a new one joins
            while True:
                replacement = sorted(w.pid for w in await client.workers())
                if len(replacement) == 2 and pids[0] not in replacement:
                    break
                await asyncio.sleep(0.2)
        assert pids[0] not in replacement
        assert pids[1] in replacement
        results = [await client.submit("PluginB", "calculate_square", {"x": i}) for i in range(10)]
        assert [await h.result(timeout=20) for h in results] == [i * i for i in range(10)]
        pool.send_signal(signal.SIGTERM)
        assert pool.wait(timeout=30) == 0
        assert await client.workers() == []  # every member drained and left the registry
    finally:
        if pool.poll() is None:
            pool.kill()


async def test_running_jobs_do_not_crowd_new_ones_out_of_free_slots(
    worker_process: WorkerFactory, client: JobClient
) -> None:
    # arq keeps running jobs in their queue until they finish: they are the oldest entries a poll
    # reads, and claiming must skip them rather than count them against the free slots.
    config = bundled_plugins_config(**{**FAST, "concurrency": 3})
    config["plugins"].append(RELIABILITY)
    worker_process(config)
    long = [await client.submit("reliability", "cooperative", {"seconds": 60}) for _ in range(2)]
    for handle in long:
        async with asyncio.timeout(20):
            while await handle.state() is not JobState.RUNNING:
                await asyncio.sleep(0.02)
    quick = await client.submit("reliability", "slow_ok", {"seconds": 0})
    assert await quick.result(timeout=10) == "ok"
    for handle in long:
        await handle.cancel()


async def test_an_idle_worker_is_handed_jobs_and_a_paused_one_gives_them_back(
    worker_process: WorkerFactory, client: JobClient
) -> None:
    # On a cluster too: the hand-off is SPUBLISHed on the partition's master, where the worker holds
    # its sharded subscription, so the submit knows it was heard. A 30 s fallback poll: only a
    # handoff or a wake-up can start these in time.
    worker_process(bundled_plugins_config(**{**FAST, "poll_delay_s": 30}))
    idle = _idle_sets(client, "PluginB")
    await _until(lambda: _listed(client, idle), "the idle worker to list itself")
    handle = await client.submit("PluginB", "calculate_square", {"x": 5})
    assert await handle.result(timeout=10) == 25
    record = await handle.record()
    assert record.started_at_ms == record.enqueued_at_ms  # started by the submit itself: handed over
    # Paused, it leaves the idle sets; a listing that outlived the pause gets its job given back.
    assert (await client.control("pause")).acted
    await _until(lambda: _not(_listed(client, idle, every=False)), "the paused worker to leave the idle set")
    assert record.worker is not None
    for idle_set in idle:
        await client.redis.zadd(idle_set, {record.worker: now_ms() + 5_000})
    back = await client.submit("PluginB", "calculate_square", {"x": 6})
    await _until(lambda: _given_back(back), "the job to be given back")
    assert (await client.control("resume")).acted
    assert await back.result(timeout=10) == 36
    assert (await back.record()).attempt == 1


def _idle_sets(client: JobClient, plugin: str) -> list[str]:
    """The idle sets of a plugin's queue: one, or on a cluster one per partition (each of its sets)."""
    return [client.keys.idle_workers(queue_set) for queue_set in client.keys.queue_sets(client.keys.queue(plugin))]


async def _listed(client: JobClient, idle: list[str], *, every: bool = True) -> bool:
    """True when the worker is listed in every one of ``idle`` (or, not ``every``, in any)."""
    found = [await client.redis.zcard(idle_set) for idle_set in idle]
    return all(found) if every else any(found)


async def _until(check: Callable[[], Awaitable[object]], what: str) -> None:
    async with asyncio.timeout(10):
        while not await check():
            await asyncio.sleep(0.02)


async def _not(value: Awaitable[object]) -> bool:
    return not await value


async def _given_back(handle: JobHandle) -> bool:
    record = await handle.record()
    return record.state is JobState.QUEUED and record.seq == 2 and record.attempt == 0 and not record.worker


async def test_busy_workers_with_room_are_woken_and_lose_no_job(
    worker_process: WorkerFactory, client: JobClient
) -> None:
    # Two busy workers with free slots are listed to be woken, each once per take; with a 30 s
    # fallback poll and 30 s leases (a worker also looks when a lease falls due), a lost wake-up would
    # leave jobs waiting far past the 20 s below.
    config = bundled_plugins_config(**{**FAST, "poll_delay_s": 30, "lease_s": 30, "concurrency": 4})
    worker_process({**config, "queues": ["default", "one"]})
    worker_process({**config, "queues": ["default", "two"]})
    # A long job on each worker (its own lane): busy, so never idle (no handoffs), with room for 3.
    long = [
        await client.submit("long_running", "count_slowly", {"steps": 600, "delay_s": 0.05}, queue=lane)
        for lane in ("one", "two")
    ]
    async with asyncio.timeout(10):
        while {(await h.record()).state for h in long} != {JobState.RUNNING}:
            await asyncio.sleep(0.02)
    sequential = [await client.submit("PluginB", "calculate_square", {"x": i}) for i in range(150)]
    burst = await asyncio.gather(*(client.submit("PluginB", "calculate_square", {"x": i}) for i in range(150)))
    async with asyncio.timeout(20):
        results = [await h.result() for h in [*sequential, *burst]]
    assert results == [i * i for i in range(150)] * 2
    assert {(await h.record()).state for h in long} == {JobState.RUNNING}
    for h in long:
        await h.cancel()
    workers = {(await h.record()).worker for h in [*sequential, *burst]}
    assert len(workers) == 2  # both took work


async def test_one_take_of_thousands_of_jobs(client: JobClient, topology: str) -> None:
    if topology == "cluster":
        pytest.skip("writes one queue's entries by hand, in one Redis's layout (the point: Lua's unpack limit)")
    # Real Redis (Lua 5.1): a take's writes of 4,500 jobs once overran Lua's unpack() limit,
    # leaving jobs marked running that no worker ran (the memory bench's 5,000-job waves).
    async with client.redis.pipeline(transaction=False) as pipe:
        for i in range(4_500):
            pipe.zadd(client.keys.queue("PluginB"), {client.keys.arq_job_id(f"bulk{i}"): 1})
            pipe.hset(client.keys.job(f"bulk{i}"), mapping={"state": "queued", "request": "{}", "seq": 0})
            pipe.expire(client.keys.job(f"bulk{i}"), 60)
        await pipe.execute()
    claims = Claims(client.redis, client.keys, worker_id="w-bulk", lease_s=3)
    take = await claims.take([client.keys.queue("PluginB")], now_ms(), limit=5_000)
    assert len(take.jobs) == 4_500
    assert {job.status for job in take.jobs} == {"run"}
    scores = await client.redis.zrange(client.keys.queue("PluginB"), 0, -1, withscores=True)
    assert min(score for _, score in scores) > now_ms()  # every one out of the ready window


async def test_waiting_for_a_worker_that_exits_says_so(
    redis: Redis, redis_url: str, namespace: str, tmp_path: Path
) -> None:
    config = tmp_path / "config.yml"
    config.write_text("no_such_setting: 1\n")  # the worker refuses it and exits
    env = {**os.environ, "ACTIONQ_REDIS_URL": redis_url, "ACTIONQ_NAMESPACE": namespace}
    proc = spawn_worker(config, env, log_path=tmp_path / "worker.log", cwd=REPO_ROOT)
    with pytest.raises(WorkerStartError, match=f"worker {proc.pid} exited with [1-9]"):
        await wait_registered(redis, Keys(namespace), proc, timeout_s=30)
    assert "no_such_setting" in (tmp_path / "worker.log").read_text()
    assert not has_pid([f"vm-{proc.pid}1-abc", f"vm-1{proc.pid}-abc"], proc.pid)
    assert has_pid([b"a", f"vm-{proc.pid}-abc".encode()], proc.pid)
