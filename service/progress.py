"""Progress: the :class:`ProgressUpdate` model, sub-task trees, and per-job coalescing.

An action reports with ``ctx.progress(current_step, total_steps, message, details)`` (or a
``percentage``); a plain ``def`` action may call it from its thread. The call validates at once
— a bad update raises :class:`InvalidProgressError` naming the problem — and returns without
waiting for Redis. Updates are **coalesced** per job: at most one write per
``progress_interval_s``, always the newest, and the executor flushes the last one before it
records the final state, so a subscriber sees the final progress and then the end.

Sub-tasks (``ctx.subtask(name, weight)``) form a tree; a parent's percentage is the
weight-averaged percentage of its children, and every update carries the whole tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, ValidationError

from service.errors import InvalidProgressError
from service.models import JobState, ProgressStatus, ProgressUpdate, SubTaskProgress

__all__ = ["ProgressReporter", "ProgressSnapshot", "SubTask", "make_update"]

log = structlog.get_logger("actionq.progress")


class ProgressSnapshot(BaseModel):
    """What a follower of a job sees: its state and latest progress as of ``seq``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str
    seq: int
    state: JobState
    progress: ProgressUpdate | None = None


def make_update(
    current_step: int | None = None,
    total_steps: int | None = None,
    message: str = "",
    details: dict[str, Any] | None = None,
    *,
    percentage: float | None = None,
    status: str = ProgressStatus.RUNNING,
) -> ProgressUpdate:
    """Build and validate an update; :class:`InvalidProgressError` names what is wrong."""
    try:
        return ProgressUpdate(
            current_step=current_step,
            total_steps=total_steps,
            message=message,
            details=details or {},
            percentage=percentage,
            status=ProgressStatus(status),
        )
    except ValueError as exc:  # ValidationError is a ValueError; so is an unknown status
        raise InvalidProgressError(_reason(exc)) from exc


def _reason(exc: ValueError) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'update'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
    return f"status: {exc} (known: {', '.join(s.value for s in ProgressStatus)})"


class _Node:
    """A mutable node of the progress tree kept by the reporter (snapshotted into models)."""

    def __init__(self, name: str = "", weight: float = 1.0) -> None:
        self.name = name
        self.weight = weight
        self.own = ProgressUpdate()
        self.children: dict[str, _Node] = {}

    def snapshot(self) -> ProgressUpdate:
        if not self.children:
            return self.own
        subs = [SubTaskProgress(name=c.name, weight=c.weight, progress=c.snapshot()) for c in self.children.values()]
        total = sum(s.weight for s in subs)
        rolled = sum(s.weight * (s.progress.percentage or 0.0) for s in subs) / total
        return self.own.model_copy(update={"percentage": round(rolled, 4), "sub_tasks": subs})


class ProgressReporter:
    """Coalesces one job's progress and hands the newest update to ``sink`` at a bounded rate.

    ``report`` and the sub-task reporters may be called from the event loop or from any thread;
    ``close`` flushes what is pending and must be awaited before the job's final state is recorded.
    """

    def __init__(
        self,
        sink: Callable[[ProgressUpdate], Awaitable[object]],
        *,
        interval_s: float,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._sink = sink
        self._interval_s = interval_s
        self._loop = loop
        self._root = _Node()
        self._tree_lock = threading.Lock()
        self._dirty = False
        self._last_sent = float("-inf")
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.sent = 0

    def report(self, update: ProgressUpdate, path: tuple[str, ...] = ()) -> None:
        """Record ``update`` for the node at ``path`` (root by default) and schedule a write."""
        with self._tree_lock:
            node = self._root
            for name in path:
                node = node.children[name]
            node.own = update
        self._schedule()

    def add_subtask(self, path: tuple[str, ...], name: str, weight: float) -> None:
        """Create the child ``name`` under the node at ``path`` (an existing one is kept)."""
        if weight <= 0:
            raise InvalidProgressError(f"sub-task {name!r}: weight must be greater than 0, not {weight}")
        if not name:
            raise InvalidProgressError("sub-task name must not be empty")
        with self._tree_lock:
            node = self._root
            for part in path:
                node = node.children[part]
            node.children.setdefault(name, _Node(name, weight))
        self._schedule()

    def _schedule(self) -> None:
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._mark_dirty()
        else:
            self._loop.call_soon_threadsafe(self._mark_dirty)

    def _mark_dirty(self) -> None:
        if self._closing:
            return
        self._dirty = True
        if self._task is None or self._task.done():
            self._task = self._loop.create_task(self._drain(), name="actionq-progress")

    async def _drain(self) -> None:
        while self._dirty:
            wait = self._last_sent + self._interval_s - self._loop.time()
            if wait > 0 and not self._closing:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
            self._dirty = False
            with self._tree_lock:
                update = self._root.snapshot()
            self._last_sent = self._loop.time()
            try:
                await self._sink(update)
                self.sent += 1
            except Exception as exc:  # progress is best effort: it never fails the job
                log.warning("progress_write_failed", error=str(exc))

    async def close(self) -> None:
        """Write the pending update now (skipping the interval) and stop accepting more."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task


class SubTask:
    """A node of a job's progress tree: report its progress, or open sub-tasks below it.

    The job's own progress is the root (``ctx.progress`` / ``ctx.subtask``); without a reporter
    (an action called outside a job, e.g. in a unit test) reports are validated and dropped.
    """

    def __init__(self, reporter: ProgressReporter | None, path: tuple[str, ...] = ()) -> None:
        self._reporter = reporter
        self._path = path

    def progress(
        self,
        current_step: int | None = None,
        total_steps: int | None = None,
        message: str = "",
        details: dict[str, Any] | None = None,
        *,
        percentage: float | None = None,
        status: str = ProgressStatus.RUNNING,
    ) -> None:
        """Report progress: steps (``total_steps`` may be unknown) or a ``percentage``.

        Returns at once (the write is coalesced and done in the background); raises
        :class:`InvalidProgressError` if the update does not validate.
        """
        update = make_update(current_step, total_steps, message, details, percentage=percentage, status=status)
        if self._reporter is not None:
            self._reporter.report(update, self._path)

    def subtask(self, name: str, weight: float = 1.0) -> SubTask:
        """A child reporter; this node's percentage becomes the weighted mean of its children."""
        if self._reporter is not None:
            self._reporter.add_subtask(self._path, name, weight)
        elif weight <= 0 or not name:
            raise InvalidProgressError(f"sub-task {name!r}: needs a name and a weight greater than 0")
        return SubTask(self._reporter, (*self._path, name))
