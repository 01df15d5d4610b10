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
from pydantic import BaseModel, ConfigDict

from service.errors import InvalidProgressError
from service.models import JobState, ProgressStatus, ProgressUpdate, SubTaskProgress
from service.wire import dumps

__all__ = ["ProgressReporter", "ProgressSnapshot", "SubTask", "check_update", "make_update"]

log = structlog.get_logger("actionq.progress")


class ProgressSnapshot(BaseModel):
    """What a follower of a job sees: its state and latest progress as of ``seq``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str
    seq: int
    state: JobState
    progress: ProgressUpdate | None = None


_STATUSES = frozenset(s.value for s in ProgressStatus)
# The raw arguments of one report: validated at the call, turned into a model only when written.
Raw = tuple[int | None, int | None, str, dict[str, Any] | None, float | None, str]


def check_update(
    current_step: int | None,
    total_steps: int | None,
    message: str,
    details: dict[str, Any] | None,
    percentage: float | None,
    status: str,
) -> None:
    """The checks of :class:`ProgressUpdate`, cheap enough for a tight loop (no model is built).

    Raises :class:`InvalidProgressError` naming the field, as the model would.
    """
    if current_step is not None and (type(current_step) is not int or current_step < 0):
        raise InvalidProgressError(f"current_step: must be an int >= 0, not {current_step!r}")
    if total_steps is not None and (type(total_steps) is not int or total_steps < 1):
        raise InvalidProgressError(f"total_steps: must be an int >= 1, not {total_steps!r}")
    if current_step is not None and total_steps is not None and current_step > total_steps:
        raise InvalidProgressError(f"update: current_step {current_step} is past total_steps {total_steps}")
    if percentage is not None and not (isinstance(percentage, int | float) and 0 <= percentage <= 100):
        raise InvalidProgressError(f"percentage: must be a number from 0 to 100, not {percentage!r}")
    if status not in _STATUSES:
        raise InvalidProgressError(f"status: {status!r} is not one of {', '.join(sorted(_STATUSES))}")
    if type(message) is not str:
        raise InvalidProgressError(f"message: must be a string, not {type(message).__name__}")
    if details is not None:
        try:
            dumps(details)
        except (TypeError, ValueError) as exc:
            raise InvalidProgressError(f"details: details must be JSON: {exc}") from exc
        if not isinstance(details, dict):
            raise InvalidProgressError(f"details: must be a dict, not {type(details).__name__}")


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
    check_update(current_step, total_steps, message, details, percentage, str(status))
    return _model((current_step, total_steps, message, details, percentage, str(status)))


def _model(raw: Raw) -> ProgressUpdate:
    current_step, total_steps, message, details, percentage, status = raw
    return ProgressUpdate(
        current_step=current_step,
        total_steps=total_steps,
        message=message,
        details=details or {},
        percentage=percentage,
        status=ProgressStatus(status),
    )


_EMPTY: Raw = (None, None, "", None, None, ProgressStatus.RUNNING.value)


class _Node:
    """A node of the progress tree kept by the reporter (snapshotted into models when written)."""

    def __init__(self, name: str = "", weight: float = 1.0) -> None:
        self.name = name
        self.weight = weight
        self.own: Raw = _EMPTY
        self.children: dict[str, _Node] = {}

    def snapshot(self) -> ProgressUpdate:
        own = _model(self.own)
        if not self.children:
            return own
        subs = [SubTaskProgress(name=c.name, weight=c.weight, progress=c.snapshot()) for c in self.children.values()]
        total = sum(s.weight for s in subs)
        rolled = sum(s.weight * (s.progress.percentage or 0.0) for s in subs) / total
        return own.model_copy(update={"percentage": round(rolled, 4), "sub_tasks": subs})


class ProgressReporter:
    """Coalesces one job's progress and hands the newest update to ``sink`` at a bounded rate.

    A report costs a few checks and an assignment: the model is built, and the event loop woken,
    only when an update is actually written. Reports may come from the loop or from any thread;
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
        self._dirty = False  # a report not written yet
        self._active = False  # the writer task is running (or a wake-up is on its way to the loop)
        self._last_sent = float("-inf")
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.sent = 0

    def report(self, raw: Raw, path: tuple[str, ...] = ()) -> None:
        """Record an already checked update for the node at ``path`` (root by default)."""
        if path:
            with self._tree_lock:
                self._node(path).own = raw
        else:
            self._root.own = raw  # one assignment: atomic under the GIL
        self._dirty = True
        if not self._active:
            self._wake_writer()

    def add_subtask(self, path: tuple[str, ...], name: str, weight: float) -> None:
        """Create the child ``name`` under the node at ``path`` (an existing one is kept)."""
        if not name or not isinstance(weight, int | float) or weight <= 0:
            raise InvalidProgressError(f"sub-task {name!r}: needs a name and a weight greater than 0, not {weight!r}")
        with self._tree_lock:
            self._node(path).children.setdefault(name, _Node(name, weight))
        self._dirty = True
        if not self._active:
            self._wake_writer()

    def _node(self, path: tuple[str, ...]) -> _Node:
        node = self._root
        for part in path:
            node = node.children[part]
        return node

    def _wake_writer(self) -> None:
        self._active = True
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._start_writer()
        else:
            self._loop.call_soon_threadsafe(self._start_writer)

    def _start_writer(self) -> None:
        if self._closing:
            return
        if self._task is None or self._task.done():
            self._task = self._loop.create_task(self._drain(), name="actionq-progress")

    async def _drain(self) -> None:
        while True:
            while self._dirty:
                await self._write_next()
            self._active = False
            if not self._dirty:  # checked after clearing _active: a report in between re-wakes us
                return
            self._active = True

    async def _write_next(self) -> None:
        wait = self._last_sent + self._interval_s - self._loop.time()
        if wait > 0 and not self._closing:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):  # not wait_for: it can swallow a cancel on 3.11
                    await self._wake.wait()
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
        if self._dirty:  # reported after the writer last looked (or it never started)
            await self._write_next()


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
        status: str = "running",
    ) -> None:
        """Report progress: steps (``total_steps`` may be unknown) or a ``percentage``.

        Returns at once (the write is coalesced and done in the background); raises
        :class:`InvalidProgressError` if the update does not validate.
        """
        check_update(current_step, total_steps, message, details, percentage, status)
        if self._reporter is not None:
            self._reporter.report((current_step, total_steps, message, details, percentage, status), self._path)

    def subtask(self, name: str, weight: float = 1.0) -> SubTask:
        """A child reporter; this node's percentage becomes the weighted mean of its children."""
        if self._reporter is not None:
            self._reporter.add_subtask(self._path, name, weight)
        elif not name or weight <= 0:
            raise InvalidProgressError(f"sub-task {name!r}: needs a name and a weight greater than 0")
        return SubTask(self._reporter, (*self._path, name))
