"""What a running action can see of its job: :class:`JobContext` and :func:`current_job`.

An action that wants the context declares a parameter named ``ctx``; code anywhere inside the
job (a helper function, the plugin's own methods) reaches it through :func:`current_job`, which
reads a context variable set by the executor. Plain ``def`` actions run in a thread that
inherits the context, so :func:`current_job` works there too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from service.models import ProgressStatus
from service.plugins.cancellation import CancellationToken
from service.plugins.checkpoint import Checkpoint
from service.plugins.progress import ProgressSink, SubTask

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

__all__ = ["JobContext", "current_job", "job_context"]


@dataclass(frozen=True)
class JobContext:
    """The running job as the action sees it: ids, a bound logger, progress, cancellation, checkpoints.

    ``cancellation`` is the job's :class:`CancellationToken` (set when a cancel request or the
    timeout arrives); ``checkpoint`` keeps JSON state for the next attempt. The executor is the
    only place that creates a context.
    """

    job_id: str
    plugin: str
    action: str
    attempt: int
    worker_id: str
    logger: FilteringBoundLogger = field(repr=False)
    tree: SubTask = field(default_factory=lambda: SubTask(None), repr=False)
    cancellation: CancellationToken = field(default_factory=CancellationToken, repr=False)
    checkpoint: Checkpoint = field(default_factory=lambda: Checkpoint(None, "", ttl_s=1, max_bytes=1 << 20), repr=False)

    @classmethod
    def create(
        cls,
        *,
        job_id: str,
        plugin: str,
        action: str,
        attempt: int,
        worker_id: str,
        reporter: ProgressSink | None = None,
        cancellation: CancellationToken | None = None,
        checkpoint: Checkpoint | None = None,
    ) -> JobContext:
        """A context whose logger is bound to the job's id, plugin and action."""
        logger: FilteringBoundLogger = _job_log.bind(job_id=job_id, plugin=plugin, action=action, attempt=attempt)
        return cls(
            job_id=job_id,
            plugin=plugin,
            action=action,
            attempt=attempt,
            worker_id=worker_id,
            logger=logger,
            tree=SubTask(reporter),
            cancellation=cancellation or CancellationToken(),
            checkpoint=checkpoint or Checkpoint(None, "", ttl_s=1, max_bytes=1 << 20),
        )

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
        """Report the job's progress (see :meth:`service.plugins.progress.SubTask.progress`).

        ``current_step``/``total_steps`` (total may be ``None``: indeterminate) or ``percentage``
        (0-100), a message, a status (``running``, ``milestone_reached``, ``completed``, ``error``)
        and a JSON ``details`` dict. Returns at once; callable from a plain ``def`` action's thread.
        """
        self.tree.progress(current_step, total_steps, message, details, percentage=percentage, status=status)

    def subtask(self, name: str, weight: float = 1.0) -> SubTask:
        """A child progress reporter; the job's percentage rolls up from its children by weight."""
        return self.tree.subtask(name, weight)


# One proxy for every job: structlog assembles it once (cache_logger_on_first_use), then binds cheaply.
_job_log = structlog.get_logger("actionq.job")

_current: ContextVar[JobContext | None] = ContextVar("actionq_current_job", default=None)


def current_job() -> JobContext:
    """The :class:`JobContext` of the job running in this task or thread.

    Raises :class:`LookupError` outside a job.
    """
    ctx = _current.get()
    if ctx is None:
        raise LookupError("current_job() called outside a running actionq job")
    return ctx


@contextmanager
def job_context(ctx: JobContext) -> Iterator[JobContext]:
    """Make ``ctx`` the current job for the duration of the block (used by the executor)."""
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)
