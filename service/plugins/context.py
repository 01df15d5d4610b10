"""What a running action can see of its job: :class:`JobContext` and :func:`current_job`.

An action that wants the context declares a parameter named ``ctx``; code anywhere inside the
job (a helper function, the plugin's own methods) reaches it through :func:`current_job`, which
reads a context variable set by the executor. Plain ``def`` actions run in a thread that
inherits the context, so :func:`current_job` works there too.

The same context carries the :class:`~service.events.origin.Origin` of the plugin code running:
:func:`plugin_code` (the loader's lifecycle calls) and :func:`job_context` (actions) set it, so
the delegates a plugin registers belong to its instance (and go with it: :func:`release`), and
:meth:`JobContext.notify` knows which plugin and job its events come from.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from service.events.origin import Origin, current_origin, reset_origin, running_as, set_origin
from service.events.pluginevents import plugin_event
from service.models import ProgressStatus
from service.plugins.calls import Calls
from service.plugins.cancellation import CancellationToken
from service.plugins.checkpoint import Checkpoint
from service.plugins.progress import ProgressSink, SubTask

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from service.events.delegates import DelegateManager

__all__ = ["JobContext", "PluginOwner", "current_job", "job_context", "plugin_code", "release"]


class PluginOwner(Protocol):
    """What the origin of plugin code needs of the plugin instance (a :class:`~service.plugins.plugin.Plugin`)."""

    version: str
    delegates: DelegateManager | None


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
    calls: Calls = field(default_factory=lambda: Calls(None, ""), repr=False)
    """Child jobs of this attempt (``await ctx.calls.execute(...)``, or the plugin's ``self.execute``)."""

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
        calls: Calls | None = None,
    ) -> JobContext:
        """A context whose logger is bound to the job's id, plugin and action."""
        # Lazy: bound (and cached) on the action's first log line; most jobs never log.
        logger: FilteringBoundLogger = structlog.get_logger(
            _JOB_LOGGER, job_id=job_id, plugin=plugin, action=action, attempt=attempt
        )
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
            calls=calls or Calls(None, job_id),
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

    def notify(self, kind: str, /, **fields: Any) -> None:
        """Emit the plugin-defined event ``kind`` with JSON ``fields``; returns at once.

        ``ctx.notify("ai_response_received", tokens_used=812, model="m")`` reaches this worker's
        delegates registered for the kind (or ``"*"``), the events stream and ``actionq events
        --kind ai_response_received``. The event names this job's plugin, action, job id,
        attempt and worker (see :class:`~service.events.pluginevents.PluginEvent`). A bad kind,
        a field that is not JSON or fields over 8 KiB raise
        :class:`~service.events.pluginevents.InvalidEventError` naming the problem. Works in the
        action and in what inherits its context (its tasks, its thread); elsewhere (a thread of
        its own) it raises ``LookupError``. Without a worker (a plugin loaded in a test) the event
        is checked and dropped.
        """
        origin = current_origin()
        if origin is None or origin.job_id != self.job_id:
            raise LookupError(
                f"ctx.notify({kind!r}) called outside job {self.job_id}'s action: call it from the action, "
                "a task it creates or its thread (a thread of its own has no context: contextvars.copy_context().run)"
            )
        if origin.manager is None:
            plugin_event(kind, fields, origin, self.worker_id)  # checked, then dropped: no worker to tell
            return
        origin.manager.invoke_notification(kind, sender=origin.owner, **fields)


# One proxy for every job: structlog assembles it once (cache_logger_on_first_use), then binds cheaply.
_JOB_LOGGER = "actionq.job"

_current: ContextVar[JobContext | None] = ContextVar("actionq_current_job", default=None)


def current_job() -> JobContext:
    """The :class:`JobContext` of the job running in this task or thread.

    Raises :class:`LookupError` outside a job.
    """
    ctx = _current.get()
    if ctx is None:
        raise LookupError("current_job() called outside a running actionq job")
    return ctx


class job_context:  # lower case: used as the function it was, ``with job_context(ctx, owner):``
    """Make ``ctx`` the current job for the duration of the block (used by the loader's actions).

    ``owner`` is the plugin instance whose action runs: the block runs as its code (its
    delegates are its own, :meth:`JobContext.notify` emits for it). A class, not a
    ``@contextmanager``: it is entered for every job, and a generator costs three times as much.
    """

    __slots__ = ("_ctx", "_origin", "_tokens")

    def __init__(self, ctx: JobContext, owner: PluginOwner | None = None) -> None:
        self._ctx = ctx
        self._origin = None
        if owner is not None:
            self._origin = Origin(
                owner=owner,
                plugin=ctx.plugin,
                version=owner.version,
                manager=owner.delegates,
                job_id=ctx.job_id,
                action=ctx.action,
                attempt=ctx.attempt,
            )

    def __enter__(self) -> JobContext:
        self._tokens = (_current.set(self._ctx), set_origin(self._origin))
        return self._ctx

    def __exit__(self, *exc: object) -> None:
        current, origin = self._tokens
        reset_origin(origin)
        _current.reset(current)


@contextmanager
def plugin_code(owner: PluginOwner, plugin: str) -> Iterator[None]:
    """Run the block as the code of the plugin instance ``owner`` (its ``on_load``, ``on_enable``, ``on_disable``).

    What it registers on the worker's delegate manager belongs to ``owner``. If the block fails
    (the hook raised or timed out), those registrations are removed at once: a plugin that did
    not load leaves nothing behind.
    """
    origin = Origin(owner=owner, plugin=plugin, version=owner.version, manager=owner.delegates)
    try:
        with running_as(origin):
            yield
    except BaseException:
        release(owner)
        raise


def release(owner: PluginOwner) -> int:
    """Remove every delegate ``owner`` registered (it is being disabled); how many there were."""
    manager = owner.delegates
    return 0 if manager is None else manager.unregister_owner(owner)
