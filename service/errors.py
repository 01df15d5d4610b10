"""The one exception tree of actionq.

Every error the service raises derives from :class:`ActionQError`; third-party errors are
translated at one boundary (Redis errors in :mod:`service.redis.connection`, pydantic validation errors
where params and settings are validated), so callers never have to catch ``redis.*`` or
``pydantic.*`` exceptions::

    ActionQError
    ├── ConfigError                    bad config.yml, settings or ACTIONQ_* variable
    ├── BrokerError                    Redis unreachable or failing (translated from redis-py)
    │   └── ReplicationTimeoutError    a write fewer replicas acknowledged than wait_replicas asks
    ├── PluginError
    │   ├── PluginLoadError            a plugin's manifest or code could not be loaded
    │   │   └── ManifestError          the manifest is malformed (names the field)
    │   ├── PluginsNotReadyError       PluginCore.wait_until_ready: no live worker serves them in time
    │   └── PluginActionExecutionError an action ran and failed (carries ErrorInfo)
    │       ├── PluginActionTimeoutError   it ran past its timeout
    │       ├── JobCancelledError          it was cancelled
    │       ├── JobExpiredError            it did not start before its queue-wait limit (``expires``)
    │       ├── MalformedJobError          its data in Redis could not be run (damaged or written by hand)
    │       └── JobSignatureError          its request is not signed with a key the worker accepts
    ├── SubmissionError                a job was rejected before anything was written
    │   ├── UnknownPluginError
    │   ├── UnknownActionError
    │   ├── InvalidParamsError         carries one FieldError per bad field
    │   ├── UnservableJobError         no live worker reads its queue (plugin, lane, host)
    │   ├── PayloadTooLargeError
    │   └── JobConflictError           the job id exists with a different request
    ├── InvalidEventError              a plugin event with a bad kind, non-JSON fields, or too large
    ├── InvalidProgressError           a progress update that does not validate (raised in the action)
    ├── RecordUnreadableError          a job's record in Redis is malformed (names the field)
    ├── JobNotFoundError               no record for that job id (never existed or expired)
    │   └── DeadLetterNotFoundError    no dead letter for that job id
    ├── ResultTimeoutError             waiting for a result took too long (also a TimeoutError)
    ├── StreamUnavailableError         the job ended and has no output stream (not a generator, or expired)
    └── StreamTrimmedError             a stream reader fell more than the cap behind; items were trimmed

A failure kept as data (in records, dead letters, events) is an :class:`ErrorInfo`.

Control flow that carries data is not an error and is never logged as a failure::

    ActionQSignal
    ├── Retry(delay)                   plugin code: run this job again after ``delay`` seconds
    └── CancellationRequested          ``token.raise_if_cancelled()``: the action stops as asked
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = [
    "ErrorInfo",
    "describe_validation",
    "ActionQError",
    "ActionQSignal",
    "CancellationRequested",
    "DeadLetterNotFoundError",
    "JobExpiredError",
    "MalformedJobError",
    "JobSignatureError",
    "Retry",
    "BrokerError",
    "ReplicationTimeoutError",
    "ConfigError",
    "FieldError",
    "InvalidEventError",
    "InvalidParamsError",
    "InvalidProgressError",
    "JobCancelledError",
    "JobConflictError",
    "JobNotFoundError",
    "RecordUnreadableError",
    "ManifestError",
    "PayloadTooLargeError",
    "PluginActionExecutionError",
    "PluginActionTimeoutError",
    "PluginError",
    "PluginLoadError",
    "PluginsNotReadyError",
    "ResultTimeoutError",
    "StreamTrimmedError",
    "StreamUnavailableError",
    "SubmissionError",
    "UnknownActionError",
    "UnknownPluginError",
    "UnservableJobError",
]


class ErrorInfo(BaseModel):
    """A failure recorded as data: exception type, message, and where it came from.

    Kept in job records, dead letters and events; the exceptions below that stand for a job's
    outcome carry one (``PluginActionExecutionError.error``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    message: str
    traceback: str | None = None
    retryable: bool = False

    @classmethod
    def from_exception(cls, exc: BaseException, *, with_traceback: bool = True) -> ErrorInfo:
        """Describe ``exc`` (its class name, ``str()`` and formatted traceback)."""
        tb = "".join(traceback.format_exception(exc)) if with_traceback else None
        return cls(type=type(exc).__name__, message=str(exc) or type(exc).__name__, traceback=tb)


class ActionQError(Exception):
    """Base of every error raised by actionq."""


class ConfigError(ActionQError):
    """The configuration (config.yml, settings, ``ACTIONQ_*`` variables) is invalid."""


class BrokerError(ActionQError):
    """Redis could not be reached or failed a command; the original error is ``__cause__``."""


class ReplicationTimeoutError(BrokerError):
    """A write reached the master but fewer replicas than ``wait_replicas`` acknowledged it in time.

    It is on the master: a failover now could lose it. A submit can be sent again with the same
    ``job_id`` (it is idempotent), which waits again.
    """

    def __init__(self, doing: str, acknowledged: int, wanted: int, timeout_s: float) -> None:
        super().__init__(
            f"{doing}: written on the master, but {acknowledged} of {wanted} replica(s) acknowledged it within "
            f"{timeout_s:g}s (wait_replicas): a failover now could lose it"
        )
        self.acknowledged = acknowledged
        self.wanted = wanted


class PluginError(ActionQError):
    """Something is wrong with a plugin or with running one of its actions."""


class PluginLoadError(PluginError):
    """A plugin could not be loaded; the worker reports it and keeps the other plugins."""

    def __init__(self, plugin: str, reason: str) -> None:
        super().__init__(f"plugin {plugin!r} failed to load: {reason}")
        self.plugin = plugin
        self.reason = reason


class ManifestError(PluginLoadError):
    """A plugin manifest (``plugin.yml`` or ``plugin_config.yml``) is malformed."""


class PluginActionExecutionError(PluginError):
    """An action ran and did not succeed. ``error`` describes what happened on the worker."""

    def __init__(self, job_id: str, error: ErrorInfo) -> None:
        super().__init__(f"job {job_id}: {error.type}: {error.message}")
        self.job_id = job_id
        self.error = error


class PluginActionTimeoutError(PluginActionExecutionError):
    """The action ran past its timeout and was stopped."""


class JobCancelledError(PluginActionExecutionError):
    """The job was cancelled before it could finish."""


class JobExpiredError(PluginActionExecutionError):
    """The job did not start before its queue-wait limit (``expires``), so it was never run."""


class JobSignatureError(PluginActionExecutionError):
    """The job's request is not signed with a key the worker accepts (``signing_keys``): it never ran."""


class MalformedJobError(PluginActionExecutionError):
    """The job's data in Redis could not be run (damaged, or written by hand): it failed without running.

    ``error.message`` names what was wrong (a field that is not an integer, a request that is not
    JSON or over the payload limit, ...). The job is dead-lettered; the worker went on.
    """


@dataclass(frozen=True)
class FieldError:
    """One invalid field of a submission: its dotted location and what is wrong with it."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{_printable(self.field)}: {self.message}"


def _printable(text: str) -> str:
    """``text`` with what would not print on one line (control characters, line separators) escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class PluginsNotReadyError(PluginError, TimeoutError):
    """``wait_until_ready`` ran out of time: no live worker serves ``missing`` (``reasons`` says why, if known)."""

    def __init__(self, missing: Sequence[str], timeout: float, reasons: Sequence[str] = ()) -> None:
        why = f": {'; '.join(reasons)}" if reasons else ""
        super().__init__(
            f"after {timeout:g}s no live worker serves {', '.join(missing)}{why} "
            "(start a worker whose config.yml lists them: `actionq worker`, or `actionq up`)"
        )
        self.missing = tuple(missing)
        self.reasons = tuple(reasons)


class InvalidEventError(ActionQError, ValueError):
    """A plugin event that cannot be sent: a bad kind name, a field that is not JSON, or too large."""


class SubmissionError(ActionQError):
    """A job was rejected before anything was written to Redis."""


class UnknownPluginError(SubmissionError):
    """No live worker serves the named plugin."""

    def __init__(self, plugin: str, known: Sequence[str] = ()) -> None:
        hint = f" (served: {', '.join(sorted(known))})" if known else " (no worker has registered any plugin)"
        super().__init__(f"unknown plugin {plugin!r}{hint}")
        self.plugin = plugin
        self.known = tuple(known)


class UnservableJobError(SubmissionError):
    """No live worker would take the job: none reads its plugin's queue in that lane on that host."""

    def __init__(self, plugin: str, lane: str, host: str, hosts: Sequence[str] = ()) -> None:
        where = {"any": "", "remote": " on another host"}.get(host, f" on host {host!r}")
        served = f"served on: {', '.join(hosts)}" if hosts else "no live worker serves it in that lane"
        super().__init__(
            f"no live worker takes {plugin!r} jobs in lane {lane!r}{where} ({served}); "
            "submit with validate=False to queue it anyway"
        )
        self.plugin, self.lane, self.host, self.hosts = plugin, lane, host, tuple(hosts)


class UnknownActionError(SubmissionError):
    """The plugin exists but does not declare the named action."""

    def __init__(self, plugin: str, action: str, known: Sequence[str] = ()) -> None:
        hint = f" (declared: {', '.join(sorted(known))})" if known else ""
        super().__init__(f"plugin {plugin!r} has no action {action!r}{hint}")
        self.plugin = plugin
        self.action = action
        self.known = tuple(known)


class InvalidParamsError(SubmissionError):
    """The params do not match the action's declared arguments; ``errors`` names each field."""

    def __init__(self, plugin: str, action: str, errors: Sequence[FieldError]) -> None:
        detail = "; ".join(str(e) for e in errors)
        super().__init__(f"invalid params for {plugin}.{action}: {detail}")
        self.plugin = plugin
        self.action = action
        self.errors = tuple(errors)


class PayloadTooLargeError(SubmissionError):
    """The serialized job (or a result) is larger than the configured limit."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(f"{what} is {size} bytes, over the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class JobConflictError(SubmissionError):
    """A job with this id exists and was submitted with a different plugin, action or params."""

    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"job id {job_id!r} is already used by a different request; "
            "an idempotency key may only be reused for the same plugin, action and params"
        )
        self.job_id = job_id


class InvalidProgressError(ActionQError, ValueError):
    """A progress update that does not validate; raised at the ``ctx.progress(...)`` call."""


class RecordUnreadableError(ActionQError):
    """A job's record in Redis could not be read (damaged, or written by hand); ``problem`` names the field."""

    def __init__(self, job_id: str, problem: str) -> None:
        super().__init__(f"the record of job {job_id!r} is unreadable: {problem}")
        self.job_id = job_id
        self.problem = problem


class JobNotFoundError(ActionQError):
    """No record exists for the job id: it never existed or its record has expired."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id!r} (never submitted, or its record expired)")
        self.job_id = job_id


class DeadLetterNotFoundError(JobNotFoundError):
    """No dead letter is kept for the job id (never dead-lettered, replayed, purged or expired)."""

    def __init__(self, job_id: str) -> None:
        ActionQError.__init__(self, f"no dead letter for job {job_id!r}")
        self.job_id = job_id


class ActionQSignal(Exception):
    """Base of control-flow exceptions raised by plugin code on purpose (never logged as failures)."""


class Retry(ActionQSignal):
    """Raise in an action to run the job again after ``delay`` seconds (within its attempt limit)."""

    def __init__(self, delay: float = 0.0, reason: str = "") -> None:
        if delay < 0:
            raise ValueError(f"Retry delay must be >= 0, not {delay}")
        super().__init__(reason or f"retry requested in {delay:g}s")
        self.delay = delay
        self.reason = reason


class CancellationRequested(ActionQSignal):
    """Raised by ``CancellationToken.raise_if_cancelled()``: the action stops because it was asked to."""

    def __init__(self, reason: str = "cancelled") -> None:
        super().__init__(reason)
        self.reason = reason


class ResultTimeoutError(ActionQError, TimeoutError):
    """The job did not reach a terminal state within the time the caller waited."""

    def __init__(self, job_id: str, timeout: float, state: str) -> None:
        super().__init__(f"job {job_id} still {state} after waiting {timeout:g}s")
        self.job_id = job_id
        self.timeout = timeout
        self.state = state


class StreamUnavailableError(ActionQError):
    """The job ended and there is no output stream to read.

    Either the action is not a generator (its result is the whole answer: use
    ``JobHandle.result()``), or the stream expired with the job's result TTL.
    """

    def __init__(self, job_id: str, reason: str) -> None:
        super().__init__(f"job {job_id}: no output stream: {reason}")
        self.job_id = job_id
        self.reason = reason


class StreamTrimmedError(ActionQError):
    """A stream reader fell more than the stream's cap behind: the oldest items were trimmed.

    The reader expected item ``expected_index``; the oldest item still stored is
    ``first_available_index``. A reader that accepts the loss can resume from there:
    ``handle.stream(start=exc.first_available_index)``. Raise ``stream_max_items`` (worker
    setting) or read faster to avoid it.
    """

    def __init__(self, job_id: str, expected_index: int, first_available_index: int) -> None:
        super().__init__(
            f"job {job_id}: stream items {expected_index}..{first_available_index - 1} were trimmed "
            f"(the reader fell more than the stream's cap behind); resume from {first_available_index} "
            "to accept the loss"
        )
        self.job_id = job_id
        self.expected_index = expected_index
        self.first_available_index = first_available_index


def describe_validation(exc: ValidationError, *, unknown: str = "unknown field", whole: str = "(value)") -> str:
    """One line naming each invalid field of a pydantic error: ``"a.b: <what is wrong>; c: ..."``.

    Pydantic errors are translated into ours with this (STYLE §4): ``unknown`` is what an
    unexpected key is called (``"unknown setting"``), ``whole`` the location of an error of the
    value as a whole. At most ten fields are named.
    """
    parts = []
    for err in exc.errors()[:10]:
        loc = ".".join(str(p) for p in err["loc"]) or whole
        msg = unknown if err["type"] == "extra_forbidden" else str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
