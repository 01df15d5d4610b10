"""The job's typed models, shared by producers and workers.

Everything that crosses Redis is one of these models, serialized as JSON (never pickle).
"""

from __future__ import annotations

import re
import time
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from service.errors import ErrorInfo
from service.retry import RetryOverride
from service.wire import dumps

__all__ = [
    "ACTIVE_STATES",
    "FINAL_PROGRESS_STATUS",
    "ID_PATTERN",
    "NAME_PATTERN",
    "TRACEPARENT_PATTERN",
    "ProgressSnapshot",
    "ProgressStatus",
    "ProgressUpdate",
    "SubTaskProgress",
    "TERMINAL_STATES",
    "AttemptEnd",
    "AttemptInfo",
    "CancelOutcome",
    "ErrorInfo",
    "JobId",
    "JobOptions",
    "JobRecord",
    "JobRequest",
    "JobState",
    "Name",
    "now_ms",
]

# Ids and names end up inside Redis key names and channel names: keep them to a safe alphabet
# (no spaces, no glob characters, no braces that would change cluster hash slots).
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$"
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$"
JobId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
_NAME_RE = re.compile(NAME_PATTERN)
# A W3C trace context `traceparent`: version (not ff)-trace id-parent id-flags, 55 characters of
# lowercase hex, the only form carried. Checked by pydantic-core (no Python call per parse: every
# request has the field). All-zero ids match, and service.tracing ignores them, as W3C says to.
TRACEPARENT_PATTERN = r"^(?:[0-9a-e][0-9a-f]|f[0-9a-e])-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"
Traceparent = Annotated[str, StringConstraints(pattern=TRACEPARENT_PATTERN)]


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch (the unit of every timestamp we store)."""
    return int(time.time() * 1000)


class JobState(StrEnum):
    """Where a job is in its life. See ``TERMINAL_STATES`` and ``ACTIVE_STATES``."""

    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True once the job can no longer change state."""
        return self in TERMINAL_STATES


TERMINAL_STATES: frozenset[JobState] = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.TIMED_OUT, JobState.CANCELLED}
)
ACTIVE_STATES: frozenset[JobState] = frozenset(JobState) - TERMINAL_STATES


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProgressStatus(StrEnum):
    """What a progress update says about the work: the seed's statuses, and ``cancelled`` and
    ``timed_out``. When the job ends, its latest update's status follows the final state
    (:data:`FINAL_PROGRESS_STATUS`)."""

    RUNNING = "running"
    MILESTONE_REACHED = "milestone_reached"
    COMPLETED = "completed"
    ERROR = "error"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"


# The status a job's latest progress update takes when the job ends: its last snapshot says how it
# ended, whatever the action last reported (the settle and cancel scripts rewrite it).
FINAL_PROGRESS_STATUS: dict[JobState, ProgressStatus] = {
    JobState.SUCCEEDED: ProgressStatus.COMPLETED,
    JobState.FAILED: ProgressStatus.ERROR,
    JobState.TIMED_OUT: ProgressStatus.TIMED_OUT,
    JobState.CANCELLED: ProgressStatus.CANCELLED,
}


class ProgressUpdate(_Model):
    """One progress report: steps (``total_steps`` may be unknown) or a percentage, plus a message.

    ``percentage`` is derived from the steps when both are known; it stays ``None`` for
    indeterminate progress (steps without a total, or only a message).
    """

    percentage: float | None = Field(default=None, ge=0, le=100)
    current_step: int | None = Field(default=None, ge=0)
    total_steps: int | None = Field(default=None, ge=1)
    message: str = ""
    status: ProgressStatus = ProgressStatus.RUNNING
    details: dict[str, Any] = Field(default_factory=dict)
    sub_tasks: list[SubTaskProgress] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> ProgressUpdate:
        if self.current_step is not None and self.total_steps is not None:
            if self.current_step > self.total_steps:
                raise ValueError(f"current_step {self.current_step} is past total_steps {self.total_steps}")
            if self.percentage is None:
                object.__setattr__(self, "percentage", 100.0 * self.current_step / self.total_steps)
        try:
            dumps(self.details)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"details must be JSON: {exc}") from exc
        return self

    @property
    def indeterminate(self) -> bool:
        """True when there is no percentage to show (only steps without a total, or a message)."""
        return self.percentage is None


class SubTaskProgress(_Model):
    """A named, weighted child of a progress tree."""

    name: str = Field(min_length=1)
    weight: float = Field(gt=0)
    progress: ProgressUpdate


class JobOptions(_Model):
    """How to run a job. Every field is optional; unset fields take the service defaults."""

    job_id: JobId | None = Field(
        default=None, description="Idempotency key: a second submit with the same id does not run again."
    )
    timeout_s: float | None = Field(default=None, gt=0, description="Override the action's timeout.")
    queue: Name = Field(default="default", description="Lane: workers read the lanes they are configured for.")
    defer_s: float | None = Field(default=None, ge=0, description="Start no earlier than this many seconds.")
    at_ms: int | None = Field(default=None, ge=0, description="Start no earlier than this epoch-ms time.")
    result_ttl_s: int | None = Field(default=None, gt=0, description="Keep the record this long once done.")
    retry: RetryOverride | None = Field(default=None, description="Override the action's retry policy.")
    expires_s: float | None = Field(
        default=None, gt=0, description="Queue-wait limit: not started this long after its run-at time, it never runs."
    )
    host: str = Field(
        default="any",
        description='"any" worker serving the plugin, "remote" (a worker on another host than the '
        "submitter's, picked by the client) or a hostname: only workers on that host take it "
        '("local" is resolved to the submitting host by the client).',
    )
    parent_id: str | None = Field(
        default=None,
        max_length=200,
        description="The job whose action submitted this one (a plugin-to-plugin call): cancelling it cancels this.",
    )
    watch: bool = Field(
        default=False,
        description="Publish the job's changes on its channel from the start, for a subscriber that subscribed "
        "before the submit (the client's followers mark the job themselves when they start following).",
    )
    author: str | None = Field(
        default=None,
        max_length=200,
        description="Who asked for the job (seed 004's `author`: the caller's name), kept in its record.",
    )
    traceparent: Traceparent | None = Field(
        default=None,
        description="W3C trace context of the span that submitted the job (set by a client with tracing on): "
        "the worker's attempt span is its child.",
    )

    @field_validator("host")
    @classmethod
    def _host_is_a_name(cls, value: str) -> str:
        if value != "any" and not _NAME_RE.match(value):
            raise ValueError("must be 'any', 'local' or a hostname of letters, digits, '_', '.', '-'")
        return value


class JobRequest(_Model):
    """What a producer asks for: run ``plugin.action(**params)`` with ``options``."""

    plugin: Name
    action: Name
    params: dict[str, Any] = Field(default_factory=dict)
    options: JobOptions = Field(default_factory=JobOptions)

    def same_work(self, other: JobRequest) -> bool:
        """True if ``other`` asks for the same plugin, action and params (idempotency check)."""
        return (self.plugin, self.action, self.params) == (other.plugin, other.action, other.params)


class CancelOutcome(StrEnum):
    """What a cancel request did."""

    CANCELLED_QUEUED = "cancelled_queued"  # it was waiting: it will never start
    CANCELLED_RUNNING = "cancelled_running"  # it was running and stopped
    ALREADY_FINISHED = "already_finished"  # it had ended (or ended first): nothing changed
    CANCEL_REQUESTED = "cancel_requested"  # the worker was told; it had not stopped when we stopped waiting


class AttemptEnd(StrEnum):
    """How an attempt ended that did not end the way its job can: it was cut short and the job went on."""

    LOST = "lost"
    """Its worker stopped answering (killed, or cut off): the lease lapsed and the job was taken again.
    Written by the script that found it so (the next take, or the sweep), with no ``finished_at_ms``."""
    INTERRUPTED = "interrupted"
    """Its worker stopped it and handed the job back to its queue (a shutdown, or a lease it could
    no longer renew)."""


class AttemptInfo(_Model):
    """One attempt of a job, kept in its record's attempt history."""

    attempt: int
    worker: str | None = None
    started_at_ms: int | None = None
    finished_at_ms: int | None = None
    state: JobState | AttemptEnd = Field(
        description="How the attempt ended: succeeded, failed, timed_out, cancelled, or lost / interrupted."
    )
    error: ErrorInfo | None = None
    retry_in_s: float | None = Field(default=None, description="When the attempt was retried: the wait chosen.")
    note: str = ""
    plugin_version: str | None = Field(default=None, description="The version of the plugin that ran it.")


class JobRecord(_Model):
    """The service's own record of a job, kept in a Redis hash under ``Keys.job``.

    arq's status cannot tell success, failure, timeout and cancellation apart; this can.
    """

    job_id: JobId
    state: JobState
    request: JobRequest
    queue: str
    attempt: int = 0
    worker: str | None = None
    enqueued_at_ms: int
    scheduled_at_ms: int
    expires_at_ms: int | None = Field(default=None, description="The queue-wait limit (``expires_s``), if set.")
    started_at_ms: int | None = None
    finished_at_ms: int | None = None
    result: Any = None
    error: ErrorInfo | None = None
    progress: ProgressUpdate | None = None
    attempts: list[AttemptInfo] = Field(default_factory=list)
    cancel_requested: str | None = None
    plugin_version: str | None = Field(
        default=None, description="The version of the plugin that ran the job's latest finished attempt."
    )
    seq: int = 0

    @property
    def is_terminal(self) -> bool:
        """True once the job has finished, whatever the outcome."""
        return self.state.is_terminal


class ProgressSnapshot(_Model):
    """What a follower of a job sees: its state and latest progress as of ``seq``."""

    job_id: str
    seq: int
    state: JobState
    progress: ProgressUpdate | None = None

    @classmethod
    def of(cls, record: JobRecord) -> ProgressSnapshot:
        """The snapshot a record stands for."""
        return cls(job_id=record.job_id, seq=record.seq, state=record.state, progress=record.progress)
