"""How an attempt ended: :class:`Outcome`, built from a supervised run, then passed through the
retry policy (:func:`with_retry`), which turns a retryable failure into ``retrying``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Any

import structlog

from service.errors import CancellationRequested, PayloadTooLargeError, PluginActionTimeoutError, Retry
from service.models import ErrorInfo, JobState
from service.retry import RetryPolicy, decide
from service.wire import check_size, dumps
from service.worker.deadline import Supervised

__all__ = ["Outcome", "classify", "with_retry"]

log = structlog.get_logger("actionq.executor")


@dataclass(frozen=True)
class Outcome:
    """How one attempt ended, and what happens next.

    ``retryable`` is False for failures that would fail the same way again (bad params, an
    unknown action, a result that is not JSON). ``error_types`` are the exception's class names
    along its MRO (what ``retry_on`` / ``never_retry_on`` match); ``requested_delay_s`` is set
    when the action raised ``Retry(delay)``. ``retry_in_s`` is set once the policy chose to retry,
    and ``ended_as`` then keeps how the attempt itself ended (``failed`` or ``timed_out``).
    """

    state: JobState
    result: Any = None
    error: ErrorInfo | None = None
    retryable: bool = True
    error_types: tuple[str, ...] = ()
    requested_delay_s: float | None = None
    retry_in_s: float | None = None
    ended_as: JobState | None = None
    timeout_s: float | None = None
    note: str = ""
    result_json: bytes | None = None
    """A success's result as JSON, encoded once when it was checked (the record and arq's result splice it in)."""

    @property
    def may_retry(self) -> bool:
        """A failure or timeout that a retry policy may turn into ``retrying``."""
        return self.retryable and self.state in (JobState.FAILED, JobState.TIMED_OUT)

    @classmethod
    def failed(cls, exc: BaseException, *, with_traceback: bool = True, retryable: bool = True) -> Outcome:
        """A failure described from ``exc``."""
        return cls(
            JobState.FAILED,
            error=ErrorInfo.from_exception(exc, with_traceback=with_traceback),
            retryable=retryable,
            error_types=tuple(c.__name__ for c in type(exc).__mro__ if c is not object),
        )


def classify(done: Supervised, *, job: str, timeout_s: float, reason: str | None, max_bytes: int) -> Outcome:
    """The outcome of a supervised run of ``job`` (``plugin.action``)."""
    note = _escalation_note(done, job)
    if done.ending == "timed_out":
        message = f"action {job} ran past its timeout of {timeout_s:g}s"
        error = ErrorInfo(type=PluginActionTimeoutError.__name__, message=message)
        return Outcome(JobState.TIMED_OUT, error=error, note=note, timeout_s=timeout_s)
    if done.ending == "cancelled" or isinstance(done.error, CancellationRequested):
        message = f"cancelled while running: {reason or 'cancelled'}"
        return Outcome(JobState.CANCELLED, error=ErrorInfo(type="JobCancelledError", message=message), note=note)
    if isinstance(done.error, Retry):
        return replace(Outcome.failed(done.error, with_traceback=False), requested_delay_s=done.error.delay)
    if isinstance(done.error, asyncio.CancelledError):
        return Outcome.failed(RuntimeError("the action was cancelled from inside"))
    if done.error is not None:
        return Outcome.failed(done.error)
    return _succeeded(job, done.result, max_bytes)


def _escalation_note(done: Supervised, job: str) -> str:
    if done.stuck:
        # Python cannot stop a thread: the slot is freed, the thread keeps running until it returns.
        log.error("job_thread_stuck", action=job, reason="the action ignored cancellation and its forced stop")
        return "forced; the action's thread was still running"
    return "forced after the grace period" if done.forced else ""


def _succeeded(job: str, result: Any, max_bytes: int) -> Outcome:
    try:
        encoded = check_size(f"result of {job}", dumps(result), max_bytes)
    except PayloadTooLargeError as exc:
        return Outcome.failed(exc, with_traceback=False, retryable=False)
    except (TypeError, ValueError) as exc:
        error = TypeError(f"the action returned a value that is not JSON: {exc}")
        return Outcome.failed(error, with_traceback=False, retryable=False)
    return Outcome(JobState.SUCCEEDED, result=result, result_json=encoded)


def with_retry(outcome: Outcome, policy: RetryPolicy, attempt: int) -> Outcome:
    """Apply the retry policy: a failure or timeout the policy retries becomes ``retrying``."""
    if not outcome.may_retry:
        return outcome
    decision = decide(
        policy,
        attempt,
        timed_out=outcome.state is JobState.TIMED_OUT,
        error_types=outcome.error_types,
        requested_delay_s=outcome.requested_delay_s,
    )
    if not decision.retry:
        return replace(outcome, note=_join(outcome.note, f"not retried: {decision.reason}"))
    note = _join(outcome.note, f"retry in {decision.delay_s:.3f}s ({decision.reason})")
    return replace(outcome, state=JobState.RETRYING, ended_as=outcome.state, retry_in_s=decision.delay_s, note=note)


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)
