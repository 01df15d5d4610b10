"""actionq on a Redis Cluster whose slots move while jobs run (a cluster of this module's own).

The slots that hold actionq's partitions (their hash tags) move from one master to another, slot by
slot, their keys migrated a few at a time, while a worker runs jobs submitted throughout: clients
and the worker meet ``ASK`` for keys already moved and ``MOVED`` once a slot is given over, and
``TRYAGAIN`` for a script whose keys are split between the two nodes for a moment. Every job must
end once, with its result.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.crc import key_slot

from service.client.client import JobClient
from service.client.handle import JobHandle
from service.models import JobState
from tests import faultkit
from tests.clusterkit import ClusterSet
from tests.conftest import FAST, WorkerFactory, bundled_plugins_config

pytestmark = pytest.mark.cluster

_JOBS = 240
_MIGRATE_STEP = 3  # keys per MIGRATE while a slot moves: small, so that jobs run across the move


@pytest.fixture
def own_cluster(server_binary: str) -> Iterator[ClusterSet]:
    """A 3-master cluster of this test alone (its slot map is changed)."""
    cluster = ClusterSet(masters=3, binary=server_binary)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_url(own_cluster: ClusterSet) -> str:
    """The worker and client fixtures use this test's cluster."""
    return own_cluster.url


async def _move_slot(cluster: ClusterSet, slot: int, source: int, target: int) -> int:
    """Move one slot, its keys a few at a time with the jobs running; how many keys went."""
    await asyncio.to_thread(cluster.begin_migration, slot, source, target)
    moved = 0
    while True:
        step = await asyncio.to_thread(cluster.migrate_keys, slot, source, target, _MIGRATE_STEP)
        moved += step
        if step < _MIGRATE_STEP:
            break
        await asyncio.sleep(0.005)  # let submits, takes and settles run into the half-moved slot
    await asyncio.to_thread(cluster.finish_migration, slot, source, target)
    return moved


async def test_slots_resharded_under_load_lose_no_job_and_run_none_twice(
    own_cluster: ClusterSet, worker_process: WorkerFactory, client: JobClient
) -> None:
    worker = worker_process(bundled_plugins_config(**{**FAST, "concurrency": 20}))
    masters = own_cluster.master_ports
    source, target = masters[0], masters[1]
    tag_slots = sorted({key_slot(tag.encode()) for tag in client.keys.tags})
    moving = [slot for slot in tag_slots if own_cluster.slot_owner(slot) == source]
    assert moving, "the partitions' tags should spread over every master"

    handles: list[JobHandle] = []

    async def submit_throughout() -> None:
        for i in range(_JOBS):
            if i % 20 == 0:  # some jobs that run for a while, writing progress across the move
                steps = {"steps": 5, "delay_s": 0.02}
                handles.append(await client.submit("long_running", "count_slowly", steps))
            handles.append(await client.submit("PluginB", "calculate_square", {"x": i}))
            await asyncio.sleep(0.01)  # about 2.5 s of submits: both moves run into them

    submitting = asyncio.create_task(submit_throughout())
    moved = 0
    for here, there in ((source, target), (target, source)):  # there, and back, as jobs come in
        for slot in moving:
            moved += await _move_slot(own_cluster, slot, here, there)
        await asyncio.to_thread(own_cluster.wait_settled)
        assert all(own_cluster.slot_owner(slot) == there for slot in moving)
    await submitting

    assert moved > 0, "the moved slots held none of the jobs' keys: nothing was tested"
    for handle in handles:
        record = await handle.wait(timeout=30)
        assert record.state is JobState.SUCCEEDED, (handle.job_id, record.error)
        assert record.attempt == 1, f"{handle.job_id} ran {record.attempt} times: {record.attempts}\n" + "\n".join(
            line for line in worker.log_text().splitlines() if handle.job_id in line or '"level": "warning"' in line
        )
    squares = [await h.result(timeout=1) for h in handles if (await h.record()).request.plugin == "PluginB"]
    assert squares == [i * i for i in range(_JOBS)]
    assert worker.logged("job_not_settled") == 0, worker.log_tail()


@pytest.fixture
def replicated_cluster(server_binary: str) -> Iterator[ClusterSet]:
    """Three masters with a replica each (the replica takes over when its master is killed)."""
    cluster = ClusterSet(masters=3, replicas=1, binary=server_binary)
    cluster.start()
    yield cluster
    cluster.stop()


async def test_a_master_killed_under_load_loses_no_acknowledged_job(
    replicated_cluster: ClusterSet, tmp_path: Path
) -> None:
    """SIGKILL a master mid-run: its replica takes its slots; every acknowledged submit ends, none
    lost and none run again after its success (tests/faultkit.py's journal), as on Sentinel."""
    cluster = replicated_cluster
    victim = cluster.master_ports[0]

    def kill() -> None:
        cluster.node(victim).kill()
        cluster.wait_failover(victim)

    await faultkit.failover_under_load(cluster.url, tmp_path, kill, "a master killed")
