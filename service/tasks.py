"""Stopping background tasks without swallowing the caller's own cancellation."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["STOP_WAIT_S", "stop_tasks"]

STOP_WAIT_S = 5.0
"""How long :func:`stop_tasks` waits, by default, for cancelled tasks to end."""


async def stop_tasks(*tasks: asyncio.Task[Any] | None, timeout_s: float = STOP_WAIT_S) -> bool:
    """Cancel ``tasks`` and wait, at most ``timeout_s``, until they have ended, whatever they end with.

    Not ``task.cancel()`` then ``await task`` inside ``suppress(CancelledError)``: that also
    swallows a cancel *of the caller* (a shutdown step's ``asyncio.timeout``, or
    ``asyncio.Runner`` cancelling every task at exit), so a task that did not end when told held
    its caller, and the process, forever (CI saw workers log ``worker_stopping`` or
    ``worker_stopped``, then never exit). Here the caller's cancellation propagates, and a task
    that ignores its own is left behind after ``timeout_s``. Their exceptions are retrieved (a
    reader that ended on a lost connection is not an error at shutdown). True if all ended.
    """
    running = {task for task in tasks if task is not None}
    for task in running:
        task.cancel()
    if not running:
        return True
    done, pending = await asyncio.wait(running, timeout=timeout_s)
    for task in done:
        if not task.cancelled():
            task.exception()  # retrieved: nobody else will
    return not pending
