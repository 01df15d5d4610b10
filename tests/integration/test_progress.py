"""Progress that nobody misses: real worker, real Redis, the job channel and the record."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis.asyncio as aioredis

from service import JobClient, JobHandle, JobState, ProgressSnapshot
from service.redis.cluster import channel_nodes, is_cluster, ready
from tests.conftest import FAST, WorkerFactory, bundled_plugins_config

# On one Redis and on a 3-master Redis Cluster (DESIGN.md section 11).
pytestmark = pytest.mark.topologies


async def _follow(handle: JobHandle, timeout_s: float = 30) -> list[ProgressSnapshot]:
    async with asyncio.timeout(timeout_s):
        return [snap async for snap in handle.progress()]


def _assert_well_ordered(snaps: list[ProgressSnapshot]) -> None:
    seqs = [s.seq for s in snaps]
    assert seqs == sorted(set(seqs)), f"duplicates or disorder: {seqs}"
    assert snaps[-1].state.is_terminal
    assert all(not s.state.is_terminal for s in snaps[:-1])


async def test_late_subscriber_gets_the_current_state_first(worker_process: WorkerFactory, client: JobClient) -> None:
    worker_process(bundled_plugins_config(**FAST))
    handle = await client.submit("long_running", "count_slowly", {"steps": 12, "delay_s": 0.05})
    async with asyncio.timeout(20):
        while (await handle.record()).progress is None:
            await asyncio.sleep(0.01)
    snaps = await _follow(handle)
    first = snaps[0]
    assert first.state is JobState.RUNNING
    assert first.progress is not None
    assert first.progress.current_step is not None
    assert first.progress.current_step >= 1  # the stored snapshot, not an empty start
    _assert_well_ordered(snaps)
    last_progress = [s.progress for s in snaps if s.progress is not None][-1]
    assert (last_progress.current_step, last_progress.total_steps, last_progress.percentage) == (12, 12, 100.0)
    assert last_progress.message == "step 12 of 12"  # the seed's report_progress reached the job
    assert snaps[-1].state is JobState.SUCCEEDED


async def test_subscriber_after_completion_gets_the_final_state_and_stops(
    worker_process: WorkerFactory, client: JobClient
) -> None:
    worker_process(bundled_plugins_config(**FAST))
    handle = await client.submit("long_running", "count_slowly", {"steps": 3, "delay_s": 0.01})
    await handle.result(timeout=20)
    snaps = await _follow(handle, timeout_s=5)
    assert len(snaps) == 1
    assert snaps[0].state is JobState.SUCCEEDED
    assert snaps[0].progress is not None
    assert snaps[0].progress.current_step == 3


async def test_tight_loop_is_coalesced_ordered_and_ends_with_the_last_update(
    worker_process: WorkerFactory, client: JobClient
) -> None:
    worker_process(bundled_plugins_config(**FAST))
    iterations = 50_000
    handle = await client.submit("long_running", "tight_loop", {"iterations": iterations})
    snaps = await _follow(handle)
    _assert_well_ordered(snaps)
    steps = [s.progress.current_step for s in snaps if s.progress is not None and s.progress.current_step]
    assert steps == sorted(steps)
    assert steps[-1] == iterations  # the last update is always delivered...
    assert snaps[-1].state is JobState.SUCCEEDED  # ...and the final state follows it
    assert snaps[-2].progress is not None
    assert snaps[-2].progress.current_step == iterations
    assert len(snaps) < iterations / 10  # coalesced: a bounded rate, not one write per call


async def test_sub_tasks_roll_up_by_weight(worker_process: WorkerFactory, client: JobClient) -> None:
    worker_process(bundled_plugins_config(**FAST))
    handle = await client.submit("long_running", "pipeline", {"stages": 3, "steps": 4, "delay_s": 0.02})
    snaps = await _follow(handle)
    _assert_well_ordered(snaps)
    trees = [s.progress for s in snaps if s.progress is not None and s.progress.sub_tasks]
    assert trees
    for tree in trees:
        subs = tree.sub_tasks
        assert [t.name for t in subs] == ["stage 1", "stage 2", "stage 3"]
        assert [t.weight for t in subs] == [1, 2, 3]
        expected = sum(t.weight * (t.progress.percentage or 0) for t in subs) / 6
        assert tree.percentage is not None
        assert abs(tree.percentage - expected) < 1e-3
    final = trees[-1]
    assert final.percentage == 100.0
    assert final.status == "completed"
    assert final.message == "all stages done"


async def test_indeterminate_progress_from_a_thread(worker_process: WorkerFactory, client: JobClient) -> None:
    worker_process(bundled_plugins_config(**FAST))
    handle = await client.submit("long_running", "indeterminate", {"ticks": 3, "delay_s": 0.1})
    snaps = await _follow(handle)
    progresses = [s.progress for s in snaps if s.progress is not None]
    assert progresses[-1].current_step == 3
    assert all(p.total_steps is None and p.percentage is None and p.indeterminate for p in progresses)


async def test_the_channel_speaks_documented_json(
    worker_process: WorkerFactory, client: JobClient, redis: aioredis.Redis
) -> None:
    """What a non-Python subscriber (redis-cli SUBSCRIBE) sees."""
    worker_process(bundled_plugins_config(**FAST))
    job_id = "raw-json-1"
    channel = client.keys.job_channel(job_id)
    if is_cluster(redis):  # a sharded channel: SSUBSCRIBE on its slot's master (redis-cli -c SSUBSCRIBE)
        await ready(redis)
        host, port = channel_nodes(redis, channel)[0]
        node = aioredis.Redis(host=host, port=port)
        pubsub = node.pubsub()
        await pubsub.execute_command("SSUBSCRIBE", channel)
    else:
        node, pubsub = redis, redis.pubsub()
        await pubsub.subscribe(channel)
    # Subscribed before the job exists: the submit asks for its changes to be published from the start.
    await client.submit("long_running", "count_slowly", {"steps": 2, "delay_s": 0.05}, job_id=job_id, watch=True)
    messages: list[dict[str, object]] = []
    async with asyncio.timeout(20):
        while not messages or messages[-1].get("state") not in ("succeeded", "failed"):
            raw = await pubsub.get_message(timeout=1)
            if raw is not None and raw["type"] in ("message", "smessage"):
                messages.append(json.loads(raw["data"]))
    await pubsub.aclose()  # type: ignore[no-untyped-call]
    if node is not redis:
        await node.aclose()
    assert [m["seq"] for m in messages] == list(range(len(messages)))  # from the submit's `queued`, seq 0
    assert {m["type"] for m in messages} == {"state", "progress"}
    progress = next(m for m in messages if m["type"] == "progress")
    assert set(progress) == {"type", "job_id", "progress", "seq"}
    body = progress["progress"]
    assert isinstance(body, dict)
    assert set(body) >= {"percentage", "current_step", "total_steps", "message", "status"}
    assert messages[0] == {"type": "state", "job_id": job_id, "state": "queued", "attempt": 0, "seq": 0}
    assert messages[1] == {"type": "state", "job_id": job_id, "state": "running", "attempt": 1, "seq": 1}
