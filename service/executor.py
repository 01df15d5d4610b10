"""Running one job: a short pipeline, each step its own function.

resolve action → validate params → mark running (+ state message) → run under the timeout with
a :class:`JobContext` → classify the outcome → record it (+ state message), the bookkeeping
shielded from cancellation. Policies (timeouts now; retries, cancellation and progress
throttling with their issues) are small units the pipeline calls, not branches inside it.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from typing import Any

import structlog
from pydantic import ValidationError

from service.context import JobContext, job_context
from service.errors import PayloadTooLargeError, PluginActionTimeoutError, SubmissionError
from service.loader import BoundAction, PluginLoader
from service.models import ErrorInfo, JobRequest, JobState, now_ms
from service.progress import ProgressReporter
from service.settings import Settings
from service.store import JobStore
from service.wire import check_size, dumps

__all__ = ["Executor", "Outcome"]

log = structlog.get_logger("actionq.executor")


@dataclass(frozen=True)
class Outcome:
    """How one attempt ended."""

    state: JobState
    result: Any = None
    error: ErrorInfo | None = None

    def summary(self) -> dict[str, Any]:
        """What arq stores as the job's result (so arq's ``Job.result()`` stays meaningful)."""
        return {
            "state": self.state.value,
            "result": self.result,
            "error": None if self.error is None else self.error.model_dump(exclude={"traceback"}),
        }

    @classmethod
    def failed(cls, exc: BaseException, *, with_traceback: bool = True) -> Outcome:
        """A failure described from ``exc``."""
        return cls(JobState.FAILED, error=ErrorInfo.from_exception(exc, with_traceback=with_traceback))


class Executor:
    """Runs jobs for one worker: the loaded plugins, the job store and the settings."""

    def __init__(self, *, loader: PluginLoader, store: JobStore, settings: Settings, worker_id: str) -> None:
        self.loader = loader
        self.store = store
        self.settings = settings
        self.worker_id = worker_id

    async def run(self, job_id: str, raw_request: Any, attempt: int) -> Outcome | None:
        """Run one attempt of ``job_id`` and record its outcome.

        Returns ``None`` when the job must not run because its record is gone (it expired).
        ``asyncio.CancelledError`` (the worker is shutting down) is recorded as "queued again"
        and re-raised so that arq hands the job back to the queue.
        """
        with structlog.contextvars.bound_contextvars(job_id=job_id, attempt=attempt):
            try:
                request = JobRequest.model_validate(raw_request)
            except ValidationError as exc:
                outcome = Outcome.failed(ValueError(f"malformed job data: {exc}"), with_traceback=False)
                await asyncio.shield(self._record(job_id, attempt, outcome, self.settings.result_ttl_s))
                return outcome
            with structlog.contextvars.bound_contextvars(plugin=request.plugin, action=request.action):
                return await self._run_request(job_id, request, attempt)

    async def _run_request(self, job_id: str, request: JobRequest, attempt: int) -> Outcome | None:
        started = await self.store.transition(
            job_id, JobState.RUNNING, attempt=attempt, fields={"worker": self.worker_id, "started_at_ms": now_ms()}
        )
        if started < 0:
            log.warning("job_record_missing", reason="the record expired before the job started; not running it")
            return None
        log.info("job_started")
        try:
            outcome = await self._execute(job_id, request, attempt)
        except asyncio.CancelledError:
            await asyncio.shield(self._requeued(job_id, attempt))
            raise
        ttl = request.options.result_ttl_s or self.settings.result_ttl_s
        await asyncio.shield(self._record(job_id, attempt, outcome, ttl))
        log.info("job_finished", state=outcome.state.value)
        return outcome

    async def _execute(self, job_id: str, request: JobRequest, attempt: int) -> Outcome:
        try:
            action = self.loader.resolve(request.plugin, request.action)
            params = action.validate(request.params)
        except SubmissionError as exc:
            return Outcome.failed(exc, with_traceback=False)
        reporter = ProgressReporter(
            functools.partial(self.store.progress, job_id),
            interval_s=self.settings.progress_interval_s,
            loop=asyncio.get_running_loop(),
        )
        ctx = JobContext.create(
            job_id=job_id,
            plugin=request.plugin,
            action=request.action,
            attempt=attempt,
            worker_id=self.worker_id,
            reporter=reporter,
        )
        try:
            return await self._invoke(action, params, ctx, self._timeout(request, action))
        finally:
            # The last progress is written before the final state, whatever the outcome.
            await asyncio.shield(reporter.close())

    async def _invoke(self, action: BoundAction, params: dict[str, Any], ctx: JobContext, timeout_s: float) -> Outcome:
        """Run the action under its timeout and classify how it ended."""
        try:
            with job_context(ctx):
                async with asyncio.timeout(timeout_s) as deadline:
                    result = await action.invoke(params, ctx)
        except TimeoutError as exc:
            if not deadline.expired():
                return Outcome.failed(exc)  # the action's own TimeoutError, not our deadline
            return self._timed_out(action, timeout_s)
        except Exception as exc:
            return Outcome.failed(exc)
        return self._succeeded(ctx.job_id, result)

    def _timeout(self, request: JobRequest, action: BoundAction) -> float:
        return request.options.timeout_s or action.spec.timeout_s or self.settings.default_timeout_s

    def _timed_out(self, action: BoundAction, timeout_s: float) -> Outcome:
        if action.kind in ("sync", "sync_gen"):
            # A thread cannot be interrupted: the slot is freed, the thread finishes on its own.
            log.warning("job_thread_still_running", timeout_s=timeout_s)
        message = f"action {action.plugin}.{action.name} ran past its timeout of {timeout_s:g}s"
        return Outcome(JobState.TIMED_OUT, error=ErrorInfo(type=PluginActionTimeoutError.__name__, message=message))

    def _succeeded(self, job_id: str, result: Any) -> Outcome:
        try:
            check_size(f"result of job {job_id}", dumps(result), self.settings.max_payload_bytes)
        except (TypeError, ValueError) as exc:
            return Outcome.failed(
                TypeError(f"the action returned a value that is not JSON: {exc}"), with_traceback=False
            )
        except PayloadTooLargeError as exc:
            return Outcome.failed(exc, with_traceback=False)
        return Outcome(JobState.SUCCEEDED, result=result)

    async def _record(self, job_id: str, attempt: int, outcome: Outcome, ttl_s: int) -> None:
        fields: dict[str, Any] = {"finished_at_ms": now_ms()}
        if outcome.state is JobState.SUCCEEDED:
            fields["result"] = dumps(outcome.result).decode()
        if outcome.error is not None:
            fields["error"] = outcome.error.model_dump_json()
        seq = await self.store.transition(job_id, outcome.state, attempt=attempt, fields=fields, ttl_s=ttl_s)
        if seq < 0:
            log.warning("job_record_missing", reason="the record expired while the job ran; outcome not kept")

    async def _requeued(self, job_id: str, attempt: int) -> None:
        await self.store.transition(job_id, JobState.QUEUED, attempt=attempt, fields={"worker": ""})
        log.info("job_interrupted", reason="worker shutting down; the job goes back to its queue")
