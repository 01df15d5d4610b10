"""Running one job: a short pipeline, each step its own function.

start (refused if the job ended, e.g. cancelled while queued; a durable cancel flag cancels at
once) → resolve action → validate params → run under :func:`~service.worker.deadline.supervise`
(timeout and cancellation, cooperative first, then forced) with a :class:`JobContext` → classify
the outcome → apply the retry policy → settle it, shielded from cancellation: attempt history,
final state or ``retrying``, stream end and dead letter in one script (:mod:`service.worker.settle`)
→ the events, only if the settlement was kept.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import structlog
from pydantic import ValidationError
from redis.asyncio import Redis

from service import arqformat
from service.errors import (
    ErrorInfo,
    JobExpiredError,
    JobSignatureError,
    MalformedJobError,
    SubmissionError,
    describe_validation,
)
from service.events.jobevents import JobEvents, Notify
from service.keys import Keys
from service.models import AttemptInfo, JobRequest, JobState, ProgressUpdate, now_ms
from service.plugins.calls import Calls, JobCaller
from service.plugins.cancellation import CancellationToken
from service.plugins.checkpoint import Checkpoint
from service.plugins.context import JobContext
from service.plugins.loader import BoundAction, PluginLoader
from service.redis.streams import StreamEnd
from service.retry import merge
from service.settings import Settings
from service.tracing import start as start_tracing
from service.wire import dumps
from service.worker import settle
from service.worker.cancels import Cancels
from service.worker.deadline import supervise
from service.worker.outcome import Outcome, classify, with_retry
from service.worker.progress import ProgressReporter, ProgressWriter
from service.worker.settle import Settlement, Settler
from service.worker.streams import StreamWriter, pump
from service.worker.take import TakenJob

__all__ = ["MAX_STARTS", "Attempt", "Executor", "Outcome"]

log = structlog.get_logger("actionq.executor")

# A job started this often never finished (each start killed its worker, say): fail it, stop the loop.
MAX_STARTS = 1000


@dataclass(slots=True)
class Attempt:
    """One attempt of a job on this worker: what every step of the pipeline needs."""

    job: TakenJob
    request: JobRequest
    token: CancellationToken
    stream: StreamWriter
    started_at_ms: int
    plugin_version: str | None = None
    """The version of the plugin that runs it (recorded on the attempt and the record)."""
    announced: bool = False
    """``job_received`` and ``job_started`` sent (:meth:`Executor._announce`)."""

    @property
    def job_id(self) -> str:
        """The job's id."""
        return self.job.job_id

    @property
    def number(self) -> int:
        """The attempt number (1 for the first run)."""
        return self.job.attempt


class Executor:
    """Runs jobs for one worker: the loaded plugins, Redis, the settings and the job events."""

    def __init__(
        self,
        *,
        loader: PluginLoader,
        redis: Redis,
        keys: Keys,
        settings: Settings,
        worker_id: str,
        notify: Notify | None = None,
        caller: JobCaller | None = None,
        lend_slot: Callable[[], AbstractContextManager[None]] = nullcontext,
    ) -> None:
        self.caller = caller
        """Submits the child jobs of plugin-to-plugin calls (None: such calls raise)."""
        self.lend_slot = lend_slot
        """Frees the job's slot while it waits on a child (:mod:`service.plugins.calls`)."""
        self.loader = loader
        self.redis = redis
        self.keys = keys
        self.settings = settings
        self.worker_id = worker_id
        self.cancels = Cancels()
        # Under load (other attempts still run here), settlements wait up to the window for company.
        self.settler = Settler(
            redis, keys, retry_s=settings.lease_s, window_s=settings.batch_window_ms / 1000, busy=self._others_run,
            wait_replicas=settings.wait_replicas, wait_timeout_s=settings.wait_replicas_timeout_s,
        )  # fmt: skip
        self.progress = ProgressWriter(redis, keys)
        self.events = JobEvents(notify, worker_id)
        self.signer = settings.signer()
        self.tracing = start_tracing(settings.tracing)
        """Starts the attempt spans when ``tracing.enabled`` (``None``, and nothing imported, when not)."""

    def _others_run(self) -> bool:
        return len(self.cancels) > 0

    def cancel(self, job_id: str, reason: str, generation: int) -> bool:
        """Set the token of ``job_id`` if it runs here (see :class:`~service.worker.cancels.Cancels`)."""
        return self.cancels.cancel(job_id, reason, generation)

    async def run(self, job: TakenJob) -> Outcome | None:
        """Run one attempt of a job the take script started, and settle it.

        Returns ``None`` when the job must not run (its record is gone, or it already ended).
        ``asyncio.CancelledError`` (the worker is shutting down) puts the job back in its queue,
        ready at once, and is re-raised. Malformed job data fails that job, never the worker.
        """
        request, error_type, problem = self._request_of(job)
        names = {} if request is None else {"plugin": request.plugin, "action": request.action}
        # Tokens, not bound_contextvars(): that one copies the whole context on every job.
        tokens = structlog.contextvars.bind_contextvars(job_id=job.job_id, attempt=job.attempt, **names)
        try:
            return await self._run_taken(job, request, error_type, problem)
        finally:
            structlog.contextvars.reset_contextvars(**tokens)

    def _request_of(self, job: TakenJob) -> tuple[JobRequest | None, str, str]:
        """The job's request, or the error type and what is wrong with the job's data ('' if nothing)."""
        malformed = MalformedJobError.__name__
        if job.status == "malformed":
            return None, malformed, job.problem
        if job.status != "run":
            return None, "", ""
        if not self.signer.verify(job.signature, "job", job.job_id, job.request):
            reason = "its request is not signed with a key this worker accepts (signing_keys): it never ran"
            return None, JobSignatureError.__name__, reason
        limit = self.settings.max_payload_bytes
        if len(job.request) > limit:
            return None, malformed, f"the request is {len(job.request)} bytes, over the payload limit of {limit} bytes"
        try:
            return JobRequest.model_validate_json(job.request), "", ""
        except ValidationError as exc:
            problem = f"malformed job data: the request is not a valid job request: {describe_validation(exc)}"
            return None, malformed, problem

    async def _run_taken(
        self, job: TakenJob, request: JobRequest | None, error_type: str, problem: str
    ) -> Outcome | None:
        if job.status == "expired":
            return await self._gave_up(job, JobExpiredError.__name__, "not started before its queue-wait limit")
        if job.status in ("missing", "ended"):
            log.info("job_not_started", reason=f"its record is {job.status}; it left its queue")
            return None
        if problem or request is None:
            self.events.received(job.job_id, None, job.attempt, job.queue)
            log.error("job_refused", error=error_type, problem=problem)
            # A forged job is recorded as failed, not kept to be replayed.
            dead_letter = error_type != JobSignatureError.__name__
            return await self._gave_up(job, error_type or MalformedJobError.__name__, problem, dead_letter=dead_letter)
        if job.attempt > MAX_STARTS:
            reason = f"started {job.attempt - 1} times without finishing (its workers died)"
            return await self._gave_up(job, "JobExecutionFailed", reason)
        if self.tracing is None:  # tracing off: this check is all it costs
            return await self._run_request(job, request)
        return await self._traced(job, request)

    async def _traced(self, job: TakenJob, request: JobRequest) -> Outcome:
        """:meth:`_run_request` in an attempt span (:mod:`service.tracing`), settling included."""
        assert self.tracing is not None
        with self.tracing.attempt(request, job_id=job.job_id, attempt=job.attempt, worker_id=self.worker_id) as span:
            outcome = await self._run_request(job, request)
            span.ended(outcome.state.value, outcome.error)
            return outcome

    async def _gave_up(self, job: TakenJob, error_type: str, message: str, *, dead_letter: bool = False) -> Outcome:
        """Failed without running: malformed, taken after its queue-wait limit, or started too often."""
        outcome = Outcome(JobState.FAILED, error=ErrorInfo(type=error_type, message=message), retryable=False)
        log.info("job_not_run", reason=message)
        fields = _fields(outcome)
        # The final record must read back (the error says what was wrong); the settle script renumbers seq.
        fields.update(dict.fromkeys((name for name in job.bad_fields if name != "seq"), 0))
        letter = self._readable(job.request) if dead_letter else None
        await asyncio.shield(self._settle_ended(job, outcome, fields, started_at_ms=0, dead_letter=letter))
        return outcome

    async def expire_unserved(self, job: TakenJob, reason: str) -> bool:
        """End a job that waited in a queue no worker serves (:mod:`service.worker.sweep`): failed,
        never run. False if a worker took it meanwhile (then it is left to that worker)."""
        error = ErrorInfo(type=JobExpiredError.__name__, message=reason)
        outcome = Outcome(JobState.FAILED, error=error, retryable=False)
        return await self._settle_ended(job, outcome, _fields(outcome), started_at_ms=0, unclaimed=True) > 0

    def _readable(self, raw: bytes) -> bool:
        """True if ``raw`` is a valid request within the payload limit: a malformed job's dead letter keeps it."""
        if len(raw) > self.settings.max_payload_bytes:
            return False
        try:
            JobRequest.model_validate_json(raw)
        except ValidationError:
            return False
        return True

    async def _run_request(self, job: TakenJob, request: JobRequest) -> Outcome:
        loaded = self.loader.loaded.get(request.plugin)  # resolved in the same turn: this version runs it
        attempt = Attempt(
            job=job,
            request=request,
            token=self.cancels.token(job.job_id, job.enqueued_at_ms, job.cancel_reason),
            stream=self._stream_writer(job.job_id),
            started_at_ms=now_ms(),
            plugin_version=loaded.manifest.version if loaded is not None else None,
        )
        try:
            outcome = await self._attempt(attempt)
        except asyncio.CancelledError:
            attempt.stream.abort()
            await asyncio.shield(self._requeued(job))
            raise
        finally:
            self.cancels.forget(job.job_id)
        await asyncio.shield(self._finish(attempt, outcome))
        return outcome

    def _stream_writer(self, job_id: str) -> StreamWriter:
        """The job's output stream (touched only if the action turns out to be a generator)."""
        return StreamWriter(
            self.redis,
            self.keys.job_stream(job_id),
            max_items=self.settings.stream_max_items,
            max_item_bytes=self.settings.max_payload_bytes,
            pending_ttl_s=self.settings.pending_ttl_s,
        )

    def _announce(self, attempt: Attempt) -> None:
        """``job_received`` and ``job_started``: sent right after the action's first step, so that
        building them, the log line and the event bridge's work do not delay the action's start;
        after the settlement is written if that step ended the action (:meth:`_finish`), so that
        they do not delay its result either."""
        if attempt.announced:
            return
        attempt.announced = True
        log.info("job_started")
        job, request = attempt.job, attempt.request
        self.events.received(job.job_id, request, job.attempt, job.queue)
        self.events.started(job.job_id, request, job.attempt, job.queue)

    async def _attempt(self, attempt: Attempt) -> Outcome:
        request = attempt.request
        try:
            action = self.loader.resolve(request.plugin, request.action)
            params = action.validate(request.params)
        except SubmissionError as exc:
            self._announce(attempt)
            return Outcome.failed(exc, with_traceback=False, retryable=False)
        outcome = await self._execute(attempt, action, params)
        if not outcome.may_retry:
            return outcome  # no policy to build: the common case costs nothing
        policy = merge(self.settings.retry, action.spec.retry, request.options.retry)
        return with_retry(outcome, policy, attempt.number)

    async def _execute(self, attempt: Attempt, action: BoundAction, params: dict[str, Any]) -> Outcome:
        loop = asyncio.get_running_loop()
        request, settings = attempt.request, self.settings

        async def write_progress(update: ProgressUpdate) -> None:
            if await self.progress.write(attempt.job_id, update) >= 0:
                self.events.progress(attempt.job_id, request, attempt.number, update)

        reporter = ProgressReporter(write_progress, interval_s=settings.progress_interval_s, loop=loop)
        ctx = JobContext.create(
            job_id=attempt.job_id,
            plugin=request.plugin,
            action=request.action,
            attempt=attempt.number,
            worker_id=self.worker_id,
            reporter=reporter,
            cancellation=attempt.token,
            checkpoint=self._checkpoint(attempt.job_id, loop),
            calls=Calls(self.caller, attempt.job_id, lend_slot=self.lend_slot, loop=loop),
        )
        timeout_s = request.options.timeout_s or action.spec.timeout_s or settings.default_timeout_s
        grace_s = action.spec.cancel_grace_s if action.spec.cancel_grace_s is not None else settings.cancel_grace_s
        try:
            # The action's task makes ctx current itself (BoundAction.invoke / iterate).
            if action.is_generator:
                coro = pump(action.iterate(params, ctx), attempt.stream)
            else:
                coro = action.invoke(params, ctx)
            started = lambda: self._announce(attempt)  # noqa: E731
            done = await supervise(
                coro,
                token=attempt.token,
                timeout_s=timeout_s,
                grace_s=grace_s,
                interruptible=action.kind != "sync",  # a plain def runs in a thread
                started=started,
            )
        finally:
            # The last progress is written before the final state, whatever the outcome (shielded:
            # a task each, so only when there is something to write or cancel).
            if not reporter.close_if_idle():
                await asyncio.shield(reporter.close())
            # Children still running are of no use to an attempt that ended (or went back to its queue).
            if ctx.calls.open:
                await asyncio.shield(ctx.calls.close(f"its parent job {attempt.job_id} ended"))
        name = f"{action.plugin}.{action.name}"
        return classify(
            done, job=name, timeout_s=timeout_s, reason=attempt.token.reason, max_bytes=settings.max_payload_bytes
        )

    def _checkpoint(self, job_id: str, loop: asyncio.AbstractEventLoop) -> Checkpoint:
        checkpoint = Checkpoint(
            self.redis,
            self.keys.checkpoint(job_id),
            ttl_s=self.settings.pending_ttl_s,
            max_bytes=self.settings.max_payload_bytes,
        )
        checkpoint.bind_loop(loop)
        return checkpoint

    async def _finish(self, attempt: Attempt, outcome: Outcome) -> None:
        """Settle the attempt, then send its events if the settlement was kept."""
        job = attempt.job
        info = AttemptInfo(
            attempt=job.attempt,
            worker=self.worker_id,
            started_at_ms=attempt.started_at_ms,
            finished_at_ms=now_ms(),
            state=outcome.ended_as or outcome.state,
            error=outcome.error,
            retry_in_s=outcome.retry_in_s,
            note=outcome.note,
            plugin_version=attempt.plugin_version,
        )
        fields = _fields(outcome)
        fields[f"attempt:{info.attempt}"] = info.model_dump_json()
        if attempt.plugin_version is not None:
            fields["plugin_version"] = attempt.plugin_version
        if outcome.state is JobState.RETRYING:
            due = now_ms() + int((outcome.retry_in_s or 0) * 1000)
            fields["scheduled_at_ms"] = due
            seq = await self._settle(settle.retrying(job, fields, due_ms=due, worker_id=self.worker_id))
        else:
            seq = await self._settle_ended(job, outcome, fields, started_at_ms=attempt.started_at_ms, attempt=attempt)
        self._announce(attempt)  # the action ended in its first step: not sent yet
        if seq > 0:
            self._finished_events(attempt, info, outcome)
            log.info("job_finished", state=outcome.state.value, note=outcome.note or None)

    def _finished_events(self, attempt: Attempt, info: AttemptInfo, outcome: Outcome) -> None:
        job, request = attempt.job, attempt.request
        if outcome.state in (JobState.FAILED, JobState.TIMED_OUT) and outcome.error is not None:
            self.events.dead_lettered(job.job_id, request, job.attempt, outcome.error, job.attempt)
            log.warning("job_dead_lettered", error=outcome.error.type)
        self.events.finished(
            job.job_id,
            request,
            job.attempt,
            state=outcome.state,
            error=outcome.error,
            duration_ms=(info.finished_at_ms or attempt.started_at_ms) - attempt.started_at_ms,
            retry_in_s=outcome.retry_in_s,
            timeout_s=outcome.timeout_s,
            reason=attempt.token.reason or "",
        )

    async def _settle_ended(
        self,
        job: TakenJob,
        outcome: Outcome,
        fields: dict[str, str | int],
        *,
        started_at_ms: int,
        attempt: Attempt | None = None,
        dead_letter: bool | None = None,
        unclaimed: bool = False,
    ) -> int:
        """The job ended: final record, arq's result, and (with an ``attempt`` that ran) its stream
        end and, failed for good, its dead letter. ``dead_letter`` (a job that did not run): keep
        one, with its request (True) or without (False: the request could not be read)."""
        request = attempt.request if attempt is not None else None
        ttl = (request.options.result_ttl_s if request else None) or self.settings.kept_for_s(outcome.state)
        failed = outcome.state in (JobState.FAILED, JobState.TIMED_OUT)
        readable = dead_letter is not False
        keep_letter = dead_letter is not None or (failed and attempt is not None)
        stream: tuple[int, StreamEnd] | None = None
        if attempt is not None and attempt.stream.started:
            written = await attempt.stream.flush()  # the items first; the end marker goes with the final state
            stream = (written, StreamEnd(outcome.state, attempt.stream.count, outcome.error))
        settlement = settle.ended(
            job,
            outcome.state,
            fields,
            arq_result=_arq_result(job, outcome, started_at_ms),
            result_ttl_s=ttl,
            dead_letter_ttl_s=self.settings.dead_letter_ttl_s if keep_letter else 0,
            readable_request=readable,
            stream_end=stream,
            # A job taken expired or malformed never started: no attempt of ours to check.
            worker_id=None if job.status in ("expired", "malformed") else self.worker_id,
            unclaimed=unclaimed,
        )
        return await self._settle(settlement)

    async def _settle(self, settlement: Settlement) -> int:
        seq = await self.settler.settle(settlement)
        if seq == -2:
            log.info("job_outcome_not_kept", reason=settle.NOT_KEPT[seq])
        elif seq < 0:
            log.warning("job_outcome_not_kept", reason=settle.NOT_KEPT[seq])
        return seq

    async def _requeued(self, job: TakenJob) -> None:
        log.info("job_interrupted", reason="stopped here (a shutdown, or its lease lapsed): back to its queue")
        await self._settle(settle.requeued(job, worker_id=self.worker_id, started=True))


def _fields(outcome: Outcome) -> dict[str, str | int]:
    fields: dict[str, str | int] = {"finished_at_ms": now_ms()}
    if outcome.state is JobState.SUCCEEDED:
        encoded = outcome.result_json
        fields["result"] = (dumps(outcome.result) if encoded is None else encoded).decode()
    if outcome.error is not None:
        fields["error"] = outcome.error.model_dump_json()
    return fields


def _arq_result(job: TakenJob, outcome: Outcome, started_at_ms: int) -> bytes:
    """The result arq's ``Job.result()`` / ``Job.info()`` read (:mod:`service.arqformat`)."""
    # A request that is not JSON (written by hand: the job failed as malformed) goes in as a string.
    request = job.request if outcome.state is JobState.SUCCEEDED or _is_json(job.request) else b""
    return arqformat.encode_result(
        arq_job_id=job.arq_job_id,
        queue=job.queue,
        attempt=job.attempt,
        request=request or dumps(job.request.decode(errors="replace")),
        enqueued_at_ms=job.enqueued_at_ms,
        started_at_ms=started_at_ms or now_ms(),
        finished_at_ms=now_ms(),
        state=outcome.state.value,
        result=outcome.result,
        error=outcome.error,
        result_json=outcome.result_json,
    )


def _is_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except ValueError:
        return False
    return True
