"""Timeouts and cancels stop an action at once, not after its grace (issue 13, items 1 and 2).

Every action here ignores its token and has a grace of 120 s: a test that waits at most 30 s for
the end can only pass if the action was interrupted when its timeout passed or its cancel came.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from service import CancelOutcome, JobCancelledError, JobClient, JobHandle, JobState, PluginActionTimeoutError
from tests.conftest import FAST, WorkerFactory, bundled_plugins_config

DEADLINES = Path(__file__).resolve().parents[1] / "fixtures" / "plugins" / "deadlines"
WAIT_S = 30  # far below the actions' grace (120 s) and their sleeps (60 s)


def config() -> dict[str, Any]:
    cfg = bundled_plugins_config(**FAST)
    cfg["plugins"].append({"name": "deadlines", "path": str(DEADLINES)})
    return cfg


async def test_a_coroutine_is_stopped_at_its_timeout_and_the_caller_gets_the_timeout_error(
    worker_process: WorkerFactory, client: JobClient
) -> None:
    worker_process(config())
    handle = await client.submit("deadlines", "sleeps", {"seconds": 60})
    with pytest.raises(PluginActionTimeoutError, match="timeout of 1s"):
        await handle.result(timeout=WAIT_S)
    record = await handle.record()
    assert record.state is JobState.TIMED_OUT
    assert "forced" not in record.attempts[-1].note  # interrupted at the timeout, not after the grace


async def test_a_thread_gets_its_token_at_the_timeout(worker_process: WorkerFactory, client: JobClient) -> None:
    worker_process(config())
    handle = await client.submit("deadlines", "waits_for_token", {})
    with pytest.raises(PluginActionTimeoutError):
        await handle.result(timeout=WAIT_S)  # the thread returned once its token was set


async def test_a_cancelled_coroutine_stops_at_once(worker_process: WorkerFactory, client: JobClient) -> None:
    worker_process(config())
    handle = await client.submit("deadlines", "sleeps", {"seconds": 60}, timeout_s=600)
    async with asyncio.timeout(WAIT_S):
        while await handle.state() is not JobState.RUNNING:
            await asyncio.sleep(0.02)
    assert await handle.cancel(timeout=WAIT_S) is CancelOutcome.CANCELLED_RUNNING


async def read_and_cancel_at(
    handle: JobHandle, count: int, items: list[int], cancels: list[asyncio.Task[CancelOutcome]]
) -> None:
    """Read the stream into ``items``; after ``count`` items, send a cancel (not awaited: reading goes on)."""
    async with asyncio.timeout(WAIT_S):
        async for item in handle.stream():
            items.append(item)
            if len(items) == count:
                cancels.append(asyncio.create_task(handle.cancel(timeout=WAIT_S)))


@pytest.mark.parametrize("action", ["ticks", "sync_ticks"])
async def test_a_cancelled_generator_stops_at_its_next_item_and_its_stream_says_cancelled(
    worker_process: WorkerFactory, client: JobClient, action: str
) -> None:
    worker_process(config())
    handle = await client.submit("deadlines", action, {"delay_s": 0.2}, timeout_s=600)
    items: list[int] = []
    cancels: list[asyncio.Task[CancelOutcome]] = []
    with pytest.raises(JobCancelledError):
        await read_and_cancel_at(handle, 5, items, cancels)
    cancel = cancels[0]
    assert await cancel is CancelOutcome.CANCELLED_RUNNING
    # Items produced while the cancel travelled to the worker, at most: one every 0.2 s.
    assert len(items) <= 5 + 3, items
    assert items == list(range(len(items)))
