"""Concurrency limits across real worker processes: at most N running, however many workers, and
after SIGKILLs of workers holding slots.

Every job of ``tests/fixtures/plugins/limited`` appends its start and its end to a journal file
outside the workers; the overlap is counted from that journal. An attempt killed with its worker
never writes its end: it ran until the kill (the time the test saw the worker dead).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from service import JobClient, JobHandle, JobState
from service.processes.spawn import has_pid
from tests.conftest import FAST, WorkerFactory, WorkerProc, fixture_plugin
from tests.faultkit import Entry, read_journal

# On one Redis and on a 3-master Redis Cluster (DESIGN.md section 11).
pytestmark = pytest.mark.topologies


def _config(*, limits: dict[str, Any] | None = None, **settings: Any) -> dict[str, Any]:
    entry: dict[str, Any] = fixture_plugin("limited")
    if limits is not None:
        entry["limits"] = limits
    return {"plugins": [entry], **FAST, "concurrency": 10, **settings}


def _now_ms() -> int:
    return int(time.time() * 1000)


async def _ready(client: JobClient, workers: list[WorkerProc]) -> None:
    """Wait until every one of ``workers`` (started with ``wait=False``) is registered."""
    async with asyncio.timeout(30):
        for worker in workers:
            while not has_pid(await client.redis.zrange(client.keys.workers(), 0, -1), worker.pid):
                assert worker.running, f"worker {worker.pid} exited:\n{worker.log_tail()}"
                await asyncio.sleep(0.05)


def _attempts(journal: dict[str, list[Entry]], killed: dict[int, int]) -> list[tuple[int, int]]:
    """(start, end) of every attempt journalled; a killed worker's open attempt ends at its kill."""
    runs = []
    for job_id, entries in journal.items():
        for i, entry in enumerate(entries):
            if entry.mark != "S":
                continue
            later = entries[i + 1 :]
            ends = [e.ms for e in later if (e.pid, e.attempt) == (entry.pid, entry.attempt) and e.mark != "S"]
            end = ends[0] if ends else killed.get(entry.pid)
            assert end is not None, f"{job_id}: attempt {entry.attempt} never ended, and its worker was not killed"
            runs.append((entry.ms, end))
    return runs


def _peak(runs: list[tuple[int, int]]) -> int:
    """The most attempts running at one moment (one that ends as another starts does not overlap it)."""
    edges = sorted([(start, 1) for start, _ in runs] + [(end, -1) for _, end in runs])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


async def _submit(
    client: JobClient, journal: Path, count: int, action: str = "render", work_ms: int = 200
) -> list[JobHandle]:
    params = [{"n": i, "journal": str(journal), "work_ms": work_ms} for i in range(count)]
    return list(await asyncio.gather(*(client.submit("limited", action, p) for p in params)))


async def _all_succeed(handles: list[JobHandle], timeout_s: float = 40) -> None:
    async with asyncio.timeout(timeout_s):
        results = await asyncio.gather(*(handle.result() for handle in handles))
    assert results == [2 * i for i in range(len(handles))]


async def test_an_action_limit_holds_across_workers(
    worker_process: WorkerFactory, client: JobClient, tmp_path: Path
) -> None:
    workers = [worker_process(_config(), wait=False) for _ in range(3)]  # 30 slots in all
    await _ready(client, workers)
    journal = tmp_path / "journal.log"
    handles = await _submit(client, journal, 30)
    await _all_succeed(handles)
    runs = _attempts(read_journal(journal), killed={})
    assert len(runs) == 30  # each ran once
    assert _peak(runs) == 2  # render's max_concurrent: 2 (plugin.yml), and the two slots were used
    records = [await handle.record() for handle in handles]
    assert {(r.state, r.attempt, len(r.attempts)) for r in records} == {(JobState.SUCCEEDED, 1, 1)}
    assert len({r.worker for r in records}) > 1  # spread over the workers, yet never more than 2 at once


async def test_the_limit_holds_while_workers_holding_slots_are_killed(
    worker_process: WorkerFactory, client: JobClient, tmp_path: Path
) -> None:
    config = _config(lease_s=1)  # a dead worker's slots and jobs come back within a second
    workers = [worker_process(config, wait=False) for _ in range(3)]
    await _ready(client, workers)
    journal = tmp_path / "journal.log"
    handles = await _submit(client, journal, 30, work_ms=300)
    killed: dict[int, int] = {}
    async with asyncio.timeout(30):
        while len(killed) < 3:
            victim = await _one_holding_a_slot(workers, journal, killed)
            victim.kill()  # SIGKILL, and reaped: whatever it ran has stopped by now
            killed[victim.pid] = _now_ms()
            workers.append(worker_process(config, wait=False))  # replaced
    await _all_succeed(handles)
    runs = _attempts(read_journal(journal), killed)
    assert _peak(runs) <= 2
    records = {handle.job_id: await handle.record() for handle in handles}
    assert {r.state for r in records.values()} == {JobState.SUCCEEDED}
    cut = _cut_short(read_journal(journal), killed)
    assert cut  # the kills did hit running jobs: each ran again, to its success
    assert {job_id: records[job_id].attempt > 1 for job_id in cut} == dict.fromkeys(cut, True)
    await _ready(client, [w for w in workers if w.pid not in killed])  # the replacements stop cleanly at teardown


def _cut_short(journal: dict[str, list[Entry]], killed: dict[int, int]) -> set[str]:
    """The jobs an attempt of which was running on a worker when it was killed."""
    cut = set()
    for job_id, entries in journal.items():
        for i, entry in enumerate(entries):
            later = [e for e in entries[i + 1 :] if (e.pid, e.attempt) == (entry.pid, entry.attempt)]
            if entry.mark == "S" and entry.pid in killed and not later:
                cut.add(job_id)
    return cut


async def _one_holding_a_slot(workers: list[WorkerProc], journal: Path, killed: dict[int, int]) -> WorkerProc:
    """Wait for a live worker running a render job (journalled started, not ended): it holds a slot."""
    by_pid = {w.pid: w for w in workers if w.running and w.pid not in killed}
    while True:
        for entries in read_journal(journal).values():
            last = entries[-1]
            if last.mark == "S" and last.pid in by_pid:
                return by_pid[last.pid]
        await asyncio.sleep(0.02)


async def test_a_plugin_limit_set_in_config_covers_all_its_actions(
    worker_process: WorkerFactory, client: JobClient, tmp_path: Path
) -> None:
    workers = [worker_process(_config(limits={"max_concurrent": 1}), wait=False) for _ in range(2)]
    await _ready(client, workers)
    journal = tmp_path / "journal.log"
    renders = await _submit(client, journal, 6, work_ms=100)
    crops = await _submit(client, journal, 6, action="crop", work_ms=100)
    await _all_succeed(renders)
    await _all_succeed(crops)
    runs = _attempts(read_journal(journal), killed={})
    assert len(runs) == 12
    assert _peak(runs) == 1  # one at a time, render and crop together, across both workers


async def test_a_slot_whose_worker_died_goes_to_a_waiting_job(
    worker_process: WorkerFactory, client: JobClient, tmp_path: Path
) -> None:
    config = _config(lease_s=1, limits={"actions": {"render": 1}})  # the manifest's 2, overridden
    holder = worker_process(config)
    journal = tmp_path / "journal.log"
    [long] = await _submit(client, journal, 1, work_ms=60_000)
    async with asyncio.timeout(20):
        while not read_journal(journal):  # it started: it holds render's one slot
            await asyncio.sleep(0.02)
    other = worker_process(config)
    [waiting] = await _submit(client, journal, 1, work_ms=100)
    parked_until = await _parked(client, waiting)
    holder.kill()
    # Its job must not take the slot back when it runs again: cancelled, it ends as it starts.
    assert (await long.cancel(timeout=20)).value == "cancelled_running"
    assert await waiting.result(timeout=20) == 0
    # Nobody released the dead worker's slot: it lapsed, and a worker's look promoted the waiting
    # job into it, before its parking ran out (the fallback had it waited for the slot to lapse).
    [start] = [e for e in read_journal(journal)[waiting.job_id] if e.mark == "S"]
    assert start.ms < parked_until
    assert start.pid == other.pid


async def _parked(client: JobClient, handle: JobHandle) -> int:
    """Wait until ``handle``'s job was refused a slot and parked; when its parking runs out (epoch ms)."""
    keys = client.keys
    # The job's queue set: on a cluster, its partition's.
    queue, waiting = keys.queue_of(keys.queue("limited"), handle.job_id), keys.limit_waiting("limited", "render")
    async with asyncio.timeout(20):
        while True:
            score = await client.redis.zscore(queue, keys.arq_job_id(handle.job_id))
            refused = await client.redis.zscore(waiting, f"{queue}\n{keys.arq_job_id(handle.job_id)}")
            state = await client.redis.hget(keys.job(handle.job_id), "state")  # type: ignore[misc]
            if refused is not None and state == b"queued" and score is not None and score > _now_ms() + 2000:
                return int(score)
            await asyncio.sleep(0.02)
