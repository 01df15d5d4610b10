"""The fault suite, in small rounds: workers killed under load, Redis restarted (AOF) under load,
connections reset and blackholed under load. Each round counts, from a journal of what the jobs
did (outside the workers) and their final records, the jobs lost, stuck, failed or wrong, started
again after their success, and run twice at once: all must be 0. ``python -m tests.faultkit`` runs
bigger rounds for the figures in docs/reliability.md."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from service import JobClient, JobState
from service.processes.embedded import EmbeddedRedis
from service.settings import Settings
from tests import faultkit

pytestmark = pytest.mark.faults


def _clean(figures: faultkit.Figures, run_dir: Path) -> None:
    assert figures.jobs > 0
    assert figures.clean, "\n".join([figures.row(), *figures.problems[:20], _tails(run_dir)])
    assert not figures.problems, "\n".join(figures.problems)  # every worker drained and exited 0 at the end


def _tails(run_dir: Path) -> str:
    return "\n".join(f"--- {log.name}\n" + log.read_text(errors="replace")[-3000:] for log in run_dir.glob("*.log"))


@pytest.fixture
def aof_server(server_binary: str) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(binary=server_binary, extra_args=faultkit.AOF)
    server.start()
    yield server
    server.stop()


async def test_workers_killed_under_load_lose_nothing(fresh_redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    figures = await faultkit.crash_loop(fresh_redis_server.url, tmp_path, jobs=400, kills=5, seed=1)
    _clean(figures, tmp_path)
    assert figures.faults == 5


async def test_redis_restarts_under_load_lose_nothing(aof_server: EmbeddedRedis, tmp_path: Path) -> None:
    figures = await faultkit.redis_restarts(aof_server, tmp_path, jobs=400, restarts=3, seed=1)
    _clean(figures, tmp_path)
    assert figures.resubmits > 0  # the producer did meet the outages


async def test_connections_reset_and_blackholed_lose_nothing_and_run_nothing_twice_at_once(
    fresh_redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    figures = await faultkit.network_faults(fresh_redis_server, tmp_path, jobs=400, faults_n=4, seed=1)
    _clean(figures, tmp_path)


async def test_a_partitioned_worker_stops_its_attempt_before_another_worker_takes_the_job(
    fresh_redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    """Blackholed (the connection open, nothing flowing) past its lease, a worker's renewals hang:
    it must stop the attempt by itself before the lease lapses and another worker starts it."""
    proxy = faultkit.FaultyProxy(fresh_redis_server.port)
    await proxy.start()
    run = faultkit.Run(proxy.url, fresh_redis_server.url, tmp_path)
    settings = Settings(redis_url=fresh_redis_server.url, namespace=run.namespace)
    try:
        async with await JobClient.connect(settings=settings) as client:
            partitioned = run.spawn()
            await run.ready(client, partitioned)
            params = {"n": 21, "journal": str(run.journal), "work_ms": 4000}
            handle = await client.submit("journal", "work", params, job_id="long")
            async with asyncio.timeout(20):
                while await handle.state() is not JobState.RUNNING:
                    await asyncio.sleep(0.02)
            # Cut off at once: the attempt must stop within its lease, well inside its 4 s of work,
            # whatever the other worker's start-up takes (on a slow machine, seconds).
            proxy.blackhole()
            await run.ready(client, run.spawn(fresh_redis_server.url))  # the other worker, not cut off
            assert await handle.result(timeout=30) == 42
            proxy.heal()
            record = await handle.record()
        codes = await asyncio.to_thread(run.stop_all)
    finally:
        await asyncio.to_thread(run.stop_all)  # none left running if the test failed
        await proxy.close()
    entries = faultkit.read_journal(run.journal)["long"]
    assert [(e.mark, e.attempt, e.pid) for e in entries] == [
        ("S", 1, partitioned.pid),
        ("C", 1, partitioned.pid),  # stopped there first...
        ("S", 2, run.workers[1].pid),  # ...then started here
        ("D", 2, run.workers[1].pid),
    ]
    assert record.attempt == 2
    assert not [code for code in codes.values() if code != 0]
