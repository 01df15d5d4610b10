"""Running one job: a short pipeline, each step its own function.

start (refused if the job ended, e.g. cancelled while queued; a durable cancel flag cancels at
once) → resolve action → validate params → run under :func:`supervise` (timeout and cancellation,
cooperative first, then forced) with a :class:`JobContext` → classify the outcome → apply the
retry policy → record it, shielded from cancellation: attempt history, stream end, final state
or ``retrying``, dead letter when attempts ran out.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Callable
from typing import Any

import structlog
from pydantic import ValidationError

from service.cancellation import CancellationToken
from service.checkpoint import Checkpoint
from service.claims import TakenJob
from service.context import JobContext, job_context
from service.deadletter import DeadLetter, DeadLetterStore
from service.errors import BrokerError, JobExpiredError, SubmissionError
from service.loader import BoundAction, PluginLoader
from service.models import AttemptInfo, ErrorInfo, JobRequest, JobState, ProgressUpdate, now_ms
from service.notify import JobEvents, Notify
from service.outcome import Outcome, classify, with_retry
from service.progress import ProgressReporter
from service.retry import merge
from service.settings import Settings
from service.settle import ARQ_FUNCTION, Settlement, Settler
from service.store import JobStore
from service.streams import StreamEnd, StreamWriter, pump
from service.supervise import supervise
from service.wire import dumps

__all__ = ["Executor", "Outcome"]

log = structlog.get_logger("actionq.executor")

# Cancel pushes for jobs not (yet) running here are kept this long, and this many at most.
_EARLY_CANCEL_S = 30.0
_EARLY_CANCELS_MAX = 10_000

# A job started this often never finished (each start killed its worker, say): fail it, stop the loop.
MAX_STARTS = 1000


class Executor:
    """Runs jobs for one worker: the loaded plugins, the job store, dead letters and the settings."""

    def __init__(
        self,
        *,
        loader: PluginLoader,
        store: JobStore,
        settings: Settings,
        worker_id: str,
        dead_letters: DeadLetterStore | None = None,
        notify: Notify | None = None,
    ) -> None:
        self.loader = loader
        self.store = store
        self.settings = settings
        self.worker_id = worker_id
        self.dead_letters = dead_letters or DeadLetterStore(store.redis, store.keys, ttl_s=settings.dead_letter_ttl_s)
        self.settler = Settler(store.redis, store.keys)
        self._tokens: dict[str, CancellationToken] = {}
        self._early_cancels: dict[str, tuple[str, float]] = {}  # job id -> (reason, when)
        self.events = JobEvents(notify, worker_id)

    def cancel(self, job_id: str, reason: str) -> bool:
        """Set the token of ``job_id`` if it runs here; True if this worker acted on it.

        A push for a job this worker has no token for yet is remembered for a while: the job may
        have been taken (or handed over) before the cancel, and be about to start here. The
        durable flag the take reads cannot cover that gap; this does.
        """
        token = self._tokens.get(job_id)
        if token is not None:
            return token.cancel(reason)
        now = time.monotonic()
        if len(self._early_cancels) >= _EARLY_CANCELS_MAX:
            self._early_cancels = {j: (r, t) for j, (r, t) in self._early_cancels.items() if now - t < _EARLY_CANCEL_S}
        if len(self._early_cancels) < _EARLY_CANCELS_MAX:
            self._early_cancels[job_id] = (reason, now)
        return False

    def _new_token(self, job_id: str) -> CancellationToken:
        token = self._tokens[job_id] = CancellationToken(asyncio.get_running_loop())
        early = self._early_cancels.pop(job_id, None)
        if early is not None and time.monotonic() - early[1] < _EARLY_CANCEL_S:
            token.cancel(early[0])
        return token

    async def run(self, job: TakenJob) -> Outcome | None:
        """Run one attempt of a job the take script started, and settle it.

        Returns ``None`` when the job must not run (its record is gone, or it already ended).
        ``asyncio.CancelledError`` (the worker is shutting down) puts the job back in its queue,
        ready at once, and is re-raised.
        """
        request: JobRequest | None = None
        problem = ""
        if job.status == "run":
            try:
                request = JobRequest.model_validate_json(job.request)
            except ValidationError as exc:
                problem = f"malformed job data: {exc}"
        names = {} if request is None else {"plugin": request.plugin, "action": request.action}
        # Tokens, not bound_contextvars(): that one copies the whole context on every job.
        tokens = structlog.contextvars.bind_contextvars(job_id=job.job_id, attempt=job.attempt, **names)
        try:
            return await self._run_taken(job, request, problem)
        finally:
            structlog.contextvars.reset_contextvars(**tokens)

    async def _run_taken(self, job: TakenJob, request: JobRequest | None, problem: str) -> Outcome | None:
        if job.status == "expired":
            return await self._gave_up(job, JobExpiredError.__name__, "not started before its queue-wait limit")
        if job.attempt > MAX_STARTS:
            reason = f"started {job.attempt - 1} times without finishing (its workers died)"
            return await self._gave_up(job, "JobExecutionFailed", reason)
        if job.status != "run":
            log.info("job_not_started", reason=f"its record is {job.status}; it left its queue")
            return None
        if request is None:
            self.events.received(job.job_id, None, job.attempt, job.queue)
            outcome = Outcome.failed(ValueError(problem), with_traceback=False, retryable=False)
            await asyncio.shield(self._settle(job, outcome, _fields(outcome), ttl_s=self.settings.result_ttl_s))
            return outcome
        return await self._run_request(job, request)

    async def _gave_up(self, job: TakenJob, error_type: str, message: str) -> Outcome:
        """Failed without running: taken after its queue-wait limit, or started too often."""
        outcome = Outcome(JobState.FAILED, error=ErrorInfo(type=error_type, message=message), retryable=False)
        log.info("job_not_run", reason=message)
        await asyncio.shield(self._settle(job, outcome, _fields(outcome), ttl_s=self.settings.result_ttl_s))
        return outcome

    async def _run_request(self, job: TakenJob, request: JobRequest) -> Outcome:
        job_id, attempt = job.job_id, job.attempt
        token = self._new_token(job_id)
        try:
            started_at = now_ms()
            if job.cancel_reason:
                token.cancel(job.cancel_reason)  # cancelled between being claimed and starting: stop at once
            stream = self._stream_writer(job_id)
            announce = functools.partial(self._announce, job, request)
            try:
                outcome = await self._attempt(job_id, request, attempt, stream, token, announce)
            except asyncio.CancelledError:
                stream.abort()
                await asyncio.shield(self._requeued(job))
                raise
            info = AttemptInfo(
                attempt=attempt,
                worker=self.worker_id,
                started_at_ms=started_at,
                finished_at_ms=now_ms(),
                state=outcome.ended_as or outcome.state,
                error=outcome.error,
                retry_in_s=outcome.retry_in_s,
                note=outcome.note,
            )
            await asyncio.shield(self._finish(job, request, info, outcome, stream))
            self.events.finished(
                job_id,
                request,
                attempt,
                state=outcome.state,
                error=outcome.error,
                duration_ms=(info.finished_at_ms or started_at) - started_at,
                retry_in_s=outcome.retry_in_s,
                timeout_s=outcome.timeout_s,
                reason=token.reason or "",
            )
            log.info("job_finished", state=outcome.state.value, note=outcome.note or None)
            return outcome
        finally:
            self._tokens.pop(job_id, None)

    def _stream_writer(self, job_id: str) -> StreamWriter:
        """The job's output stream (touched only if the action turns out to be a generator)."""
        return StreamWriter(
            self.store.redis,
            self.store.keys.job_stream(job_id),
            max_items=self.settings.stream_max_items,
            max_item_bytes=self.settings.max_payload_bytes,
            pending_ttl_s=self.settings.pending_ttl_s,
        )

    def _announce(self, job: TakenJob, request: JobRequest) -> None:
        """``job_received`` and ``job_started``: sent right after the action's first step, so that
        building them, the log line and the event bridge's work do not delay the action's start."""
        log.info("job_started")
        self.events.received(job.job_id, request, job.attempt, job.queue)
        self.events.started(job.job_id, request, job.attempt, job.queue)

    async def _attempt(
        self,
        job_id: str,
        request: JobRequest,
        attempt: int,
        stream: StreamWriter,
        token: CancellationToken,
        announce: Callable[[], None],
    ) -> Outcome:
        try:
            action = self.loader.resolve(request.plugin, request.action)
            params = action.validate(request.params)
        except SubmissionError as exc:
            announce()
            return Outcome.failed(exc, with_traceback=False, retryable=False)
        outcome = await self._execute(job_id, request, attempt, action, params, stream, token, announce)
        policy = merge(self.settings.retry, action.spec.retry, request.options.retry)
        return with_retry(outcome, policy, attempt)

    async def _execute(
        self,
        job_id: str,
        request: JobRequest,
        attempt: int,
        action: BoundAction,
        params: dict[str, Any],
        stream: StreamWriter,
        token: CancellationToken,
        announce: Callable[[], None],
    ) -> Outcome:
        loop = asyncio.get_running_loop()

        async def write_progress(update: ProgressUpdate) -> None:
            if await self.store.progress(job_id, update) >= 0:
                self.events.progress(job_id, request, attempt, update)

        reporter = ProgressReporter(write_progress, interval_s=self.settings.progress_interval_s, loop=loop)
        ctx = JobContext.create(
            job_id=job_id,
            plugin=request.plugin,
            action=request.action,
            attempt=attempt,
            worker_id=self.worker_id,
            reporter=reporter,
            cancellation=token,
            checkpoint=self._checkpoint(job_id, loop),
        )
        timeout_s = request.options.timeout_s or action.spec.timeout_s or self.settings.default_timeout_s
        grace_s = action.spec.cancel_grace_s if action.spec.cancel_grace_s is not None else self.settings.cancel_grace_s
        try:
            with job_context(ctx):  # the action's task is created inside: it inherits the context
                coro = pump(action.iterate(params, ctx), stream) if action.is_generator else action.invoke(params, ctx)
                done = await supervise(coro, token=token, timeout_s=timeout_s, grace_s=grace_s, started=announce)
        finally:
            # The last progress is written before the final state, whatever the outcome.
            await asyncio.shield(reporter.close())
        job = f"{action.plugin}.{action.name}"
        return classify(
            done, job=job, timeout_s=timeout_s, reason=token.reason, max_bytes=self.settings.max_payload_bytes
        )

    def _checkpoint(self, job_id: str, loop: asyncio.AbstractEventLoop) -> Checkpoint:
        checkpoint = Checkpoint(
            self.store.redis,
            self.store.keys.checkpoint(job_id),
            ttl_s=self.settings.pending_ttl_s,
            max_bytes=self.settings.max_payload_bytes,
        )
        checkpoint.bind_loop(loop)
        return checkpoint

    async def _finish(
        self, job: TakenJob, request: JobRequest, info: AttemptInfo, outcome: Outcome, stream: StreamWriter
    ) -> None:
        fields = _fields(outcome)
        fields[f"attempt:{info.attempt}"] = info.model_dump_json()
        if outcome.state is JobState.RETRYING:
            due = now_ms() + int((outcome.retry_in_s or 0) * 1000)
            fields["scheduled_at_ms"] = due
            await self._settle(job, outcome, fields, score_ms=due)
            return
        ttl = request.options.result_ttl_s or self.settings.result_ttl_s
        if stream.started:
            # Before the final state: a reader sees the stream end no later than the record does.
            await self._end_stream(stream, outcome, ttl)
        if outcome.state in (JobState.FAILED, JobState.TIMED_OUT):
            # Also before the final state: whoever sees the job failed finds its dead letter.
            await self._dead_letter(job.job_id, request, info, outcome)
        await self._settle(job, outcome, fields, ttl_s=ttl, started_at_ms=info.started_at_ms or 0)

    async def _settle(
        self,
        job: TakenJob,
        outcome: Outcome,
        fields: dict[str, str | int],
        *,
        ttl_s: int = 0,
        score_ms: int | None = None,
        started_at_ms: int = 0,
    ) -> None:
        """Write the outcome: record, state message, queue entry, lease, and arq's result when it ended."""
        final = score_ms is None
        settlement = Settlement(
            job_id=job.job_id,
            queue=job.queue,
            state=outcome.state,
            attempt=job.attempt,
            fields=fields,
            ttl_s=ttl_s,
            score_ms=score_ms,
            arq_result=_arq_result(job, outcome, started_at_ms) if final else None,
            arq_result_ttl_ms=ttl_s * 1000,
            # The checkpoint goes with the final state: a job that ended has nothing to resume.
            delete=(self.store.keys.checkpoint(job.job_id),) if final else (),
            # A job taken after its queue-wait limit never started: no attempt of ours to check.
            owner=None if job.status == "expired" else (self.worker_id, job.attempt),
        )
        seq = await self.settler.settle(settlement)
        if seq == -1:
            log.warning(
                "job_outcome_not_kept", reason="the job's live record is gone (it ended elsewhere, or was deleted)"
            )
        elif seq == -2:
            log.info("job_outcome_not_kept", reason="the job already ended (it was cancelled meanwhile)")
        elif seq == -3:
            log.warning("job_outcome_not_kept", reason="this attempt's lease lapsed: another attempt holds the job")

    async def _dead_letter(self, job_id: str, request: JobRequest, info: AttemptInfo, outcome: Outcome) -> None:
        record = await self.store.get(job_id)
        if record is None or record.is_terminal:
            return  # expired, or ended meanwhile (cancelled): nothing to dead-letter
        letter = DeadLetter(
            job_id=job_id,
            request=request,
            queue=record.queue,
            state=outcome.state,
            error=outcome.error,
            attempts=[*record.attempts, info],
        )
        await self.dead_letters.add(letter)
        if outcome.error is not None:
            self.events.dead_lettered(job_id, request, info.attempt, outcome.error, len(letter.attempts))
        log.warning("job_dead_lettered", error=outcome.error.type if outcome.error else None)

    async def _end_stream(self, stream: StreamWriter, outcome: Outcome, ttl_s: int) -> None:
        try:
            await stream.finish(StreamEnd(outcome.state, stream.count, outcome.error), ttl_s)
        except BrokerError as exc:
            log.error("stream_end_not_written", reason=str(exc))

    async def _requeued(self, job: TakenJob) -> None:
        settlement = Settlement(
            job_id=job.job_id,
            queue=job.queue,
            state=JobState.QUEUED,
            attempt=job.attempt,
            fields={"worker": ""},
            score_ms=now_ms(),
            owner=(self.worker_id, job.attempt),
        )
        await self.settler.settle(settlement)
        log.info("job_interrupted", reason="worker shutting down; the job goes back to its queue")


def _fields(outcome: Outcome) -> dict[str, str | int]:
    fields: dict[str, str | int] = {"finished_at_ms": now_ms()}
    if outcome.state is JobState.SUCCEEDED:
        fields["result"] = dumps(outcome.result).decode()
    if outcome.error is not None:
        fields["error"] = outcome.error.model_dump_json()
    return fields


def _arq_result(job: TakenJob, outcome: Outcome, started_at_ms: int) -> bytes:
    """The result arq's ``Job.result()`` / ``Job.info()`` read (arq's own result format, as JSON)."""
    head = dumps(
        {
            "t": job.attempt,
            "f": ARQ_FUNCTION,
            "a": [],
            "et": job.enqueued_at_ms,
            "s": outcome.state is JobState.SUCCEEDED,
            "r": outcome.summary(),
            "st": started_at_ms or now_ms(),
            "ft": now_ms(),
            "q": job.queue,
            "id": job.arq_job_id,
        }
    )
    # The request goes in as arq's kwargs, spliced in as the JSON it already is; one that is not JSON
    # (written by hand: the job failed as malformed) goes in as a string, so the result stays JSON.
    request = job.request or b"null"
    if outcome.state is not JobState.SUCCEEDED and not _is_json(request):
        request = dumps(request.decode(errors="replace"))
    return head[:-1] + b',"k":{"request":' + request + b"}}"


def _is_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except ValueError:
        return False
    return True
