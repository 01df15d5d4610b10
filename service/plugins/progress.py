"""Progress as an action reports it: ``ctx.progress(...)``, ``ctx.subtask(...)`` and their checks.

An action reports with ``ctx.progress(current_step, total_steps, message, details)`` (or a
``percentage``); a plain ``def`` action may call it from its thread. The call validates at once
— a bad update raises :class:`InvalidProgressError` naming the problem — and returns without
waiting for Redis: the worker's reporter (:mod:`service.worker.progress`) coalesces the reports
and writes them.

Sub-tasks (``ctx.subtask(name, weight)``) form a tree; a parent's percentage is the
weight-averaged percentage of its children, and every update carries the whole tree.
"""

from __future__ import annotations

from typing import Any, Protocol

from service.errors import InvalidProgressError
from service.models import ProgressStatus, ProgressUpdate
from service.wire import dumps

__all__ = ["ProgressSink", "Raw", "SubTask", "check_update", "make_update", "to_model"]

_STATUSES = frozenset(s.value for s in ProgressStatus)
# The raw arguments of one report (current_step, total_steps, message, details, percentage, status),
# checked at the call and turned into a model only when written.
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
    return to_model((current_step, total_steps, message, details, percentage, str(status)))


def to_model(raw: Raw) -> ProgressUpdate:
    """The :class:`ProgressUpdate` of already checked raw arguments."""
    current_step, total_steps, message, details, percentage, status = raw
    return ProgressUpdate(
        current_step=current_step,
        total_steps=total_steps,
        message=message,
        details=details or {},
        percentage=percentage,
        status=ProgressStatus(status),
    )


class ProgressSink(Protocol):
    """Where a job's reports go: the worker's reporter (:class:`service.worker.progress.ProgressReporter`)."""

    def report(self, raw: Raw, path: tuple[str, ...] = ()) -> None:
        """Record an already checked update for the node at ``path`` (root by default)."""

    def add_subtask(self, path: tuple[str, ...], name: str, weight: float) -> None:
        """Create the child ``name`` under the node at ``path`` (an existing one is kept)."""


class SubTask:
    """A node of a job's progress tree: report its progress, or open sub-tasks below it.

    The job's own progress is the root (``ctx.progress`` / ``ctx.subtask``); without a reporter
    (an action called outside a job, e.g. in a unit test) reports are validated and dropped.
    """

    def __init__(self, reporter: ProgressSink | None, path: tuple[str, ...] = ()) -> None:
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
