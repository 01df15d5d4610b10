"""Plugin-to-plugin calls (seed 004's self.execute) as child jobs, through real workers (issue 13)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from service import JobClient, JobState, PluginActionExecutionError
from service.events.models import EventKind
from tests.conftest import FAST, WorkerFactory, bundled_plugins_config, fixture_plugin

MATRIX = {"it_sync_add": 5, "it_async_add": 5, "it_sync_gen": ["g0", "g1", "g2"], "it_async_gen": ["ag0", "ag1", "ag2"]}


def config(**extra: Any) -> dict[str, Any]:
    cfg = bundled_plugins_config(**{**FAST, **extra})
    cfg["plugins"].append(fixture_plugin("parent"))
    return cfg


@pytest.mark.parametrize("action", ["interop_run", "interop_run_sync"])
async def test_the_interop_matrix_runs_through_child_jobs_on_a_worker_with_one_slot(
    worker_process: WorkerFactory, client: JobClient, action: str
) -> None:
    # concurrency 1: the caller waits on each child in the only slot; lending it is what lets them run.
    worker_process(config(concurrency=1))
    handle = await client.submit("InteropCaller", action, {"host": "local"})
    assert await handle.result(timeout=30) == MATRIX


async def test_nested_calls_do_not_deadlock_one_slot(worker_process: WorkerFactory, client: JobClient) -> None:
    worker_process(config(concurrency=1))
    assert await (await client.submit("parent", "chain", {"depth": 4})).result(timeout=30) == 4


async def test_a_child_knows_its_parent(worker_process: WorkerFactory, client: JobClient) -> None:
    worker_process(config())
    handle = await client.submit("parent", "square_of", {"x": 7})
    since = "replay:1000"
    assert await handle.result(timeout=30) == 49
    started = []
    async with asyncio.timeout(10):  # events go out with the worker's next batch: wait for the child's
        async for e in client.events(kinds=[EventKind.JOB_STARTED], since=since, follow=True):
            if getattr(e.event, "parent_id", None) == handle.job_id:
                started.append(e.event)
                break
    assert [(e.plugin, e.action) for e in started] == [("PluginB", "calculate_square")]  # type: ignore[union-attr]
    child = await client.job(str(getattr(started[0], "job_id", ""))).record()
    assert child.request.options.parent_id == handle.job_id
    assert child.state is JobState.SUCCEEDED


async def test_a_childs_failure_raises_in_its_parent(worker_process: WorkerFactory, client: JobClient) -> None:
    worker_process(config())
    handle = await client.submit("parent", "fails_through", {}, retry={"max_attempts": 1})
    with pytest.raises(PluginActionExecutionError, match="child broke"):
        await handle.result(timeout=30)


async def test_cancelling_the_parent_cancels_its_child(worker_process: WorkerFactory, client: JobClient) -> None:
    worker_process(config())
    parent = await client.submit("parent", "waits_on_slow_child", {})
    async with asyncio.timeout(30):
        async for received in client.events(kinds=[EventKind.JOB_STARTED], since="replay:1000"):
            if getattr(received.event, "parent_id", None) == parent.job_id:
                child = client.job(str(getattr(received.event, "job_id", "")))
                break
    await parent.cancel(timeout=30)
    async with asyncio.timeout(30):
        record = await child.wait()
    assert record.state is JobState.CANCELLED
    assert record.error is not None
    assert parent.job_id in record.error.message


async def test_remote_calls_run_on_another_host(worker_process: WorkerFactory, client: JobClient) -> None:
    worker_process(config(hostname="node-a"), wait=False)
    worker_process(config(hostname="node-b"))
    async with asyncio.timeout(30):
        while len(hosts := {w.worker_id: w.hostname for w in await client.workers()}) < 2:
            await asyncio.sleep(0.05)
    parent = await client.submit("InteropCaller", "interop_run", {"host": "remote"}, host="node-a")
    assert await parent.result(timeout=30) == MATRIX
    children = [
        str(getattr(e.event, "job_id", ""))
        async for e in client.events(kinds=[EventKind.JOB_STARTED], since="replay:1000", follow=False)
        if getattr(e.event, "parent_id", None) == parent.job_id
    ]
    assert len(children) == 4
    ran_on = {hosts[(await client.job(c).record()).worker or ""] for c in children}
    assert ran_on == {"node-b"}
    assert hosts[(await parent.record()).worker or ""] == "node-a"
