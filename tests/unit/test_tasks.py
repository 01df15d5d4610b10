"""stop_tasks: cancelled tasks are waited for, bounded, and the caller's own cancel is never swallowed."""

from __future__ import annotations

import asyncio

import pytest

from service.tasks import stop_tasks


async def _stubborn(release: asyncio.Event) -> None:
    """Ignores its first cancel (as a reader mid-reconnect may), then waits to be released."""
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        await release.wait()


async def test_a_task_that_ignores_its_cancel_is_left_after_the_timeout() -> None:
    release = asyncio.Event()
    task = asyncio.create_task(_stubborn(release))
    await asyncio.sleep(0)
    assert not await stop_tasks(task, timeout_s=0.01)
    release.set()
    await task


async def test_the_callers_own_cancel_propagates_while_it_waits() -> None:
    # The old pattern (suppress(CancelledError) around `await task`) swallowed this cancel, and the
    # caller went on waiting for a task that would not end: a worker that never exited.
    release = asyncio.Event()
    stubborn = asyncio.create_task(_stubborn(release))
    await asyncio.sleep(0)
    stopping = asyncio.create_task(stop_tasks(stubborn, timeout_s=3600))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    release.set()
    await stubborn


async def test_tasks_that_end_with_an_error_are_stopped_quietly() -> None:
    async def failing() -> None:
        raise OSError("connection lost")

    task = asyncio.create_task(failing())
    await asyncio.sleep(0)
    assert await stop_tasks(task, None)
    assert isinstance(task.exception(), OSError)
