"""The spans themselves, on OpenTelemetry (imported by :func:`service.tracing.start` only when tracing is on).

The submit span's context travels in the job request as a W3C ``traceparent`` (the client writes it,
:meth:`Tracing.submit`); the worker's attempt span takes it as its parent (:meth:`Tracing.attempt`),
so both are one trace, whatever processes and hosts they run in. A request without one (its
client traced nothing) starts a trace of its own on the worker.

Attributes: ``actionq.plugin``, ``actionq.action``, ``actionq.job_id``, ``actionq.queue``, and on an
attempt ``actionq.attempt``, ``actionq.worker_id`` and ``actionq.outcome`` (the state it ended in:
succeeded, failed, timed_out, cancelled, retrying, or interrupted when it went back to its queue),
with the messaging conventions' ``messaging.*`` beside them. A failed or timed-out attempt has an
error status and an ``exception`` event built from its :class:`~service.errors.ErrorInfo`.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import structlog
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

from service.errors import ConfigError, ErrorInfo
from service.models import JobRequest
from service.settings import TracingSettings

__all__ = ["ATTEMPT", "SUBMIT", "AttemptSpan", "JsonLinesExporter", "SubmitSpan", "Tracing", "process_tracing"]

log = structlog.get_logger("actionq.tracing")

SUBMIT = "submit"
ATTEMPT = "attempt"
# Marks actionq's own spans for the sampler of the provider actionq installs (see _OwnRoots).
_SYSTEM = {"messaging.system": "actionq"}
_EXTRA = "pip install 'actionq[otel]'"

_lock = threading.Lock()
_process: Tracing | None = None


class Tracing:
    """Starts actionq's spans on ``provider`` (default: the global TracerProvider, as it is when a span starts)."""

    def __init__(self, provider: trace.TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer("actionq", tracer_provider=provider)
        self._propagator = TraceContextTextMapPropagator()

    @contextmanager
    def submit(self, request: JobRequest) -> Iterator[SubmitSpan]:
        """A submit span around writing ``request``; :attr:`SubmitSpan.request` carries its traceparent.

        Its parent is the request's own ``traceparent`` when the caller set one (a gateway relaying
        an HTTP caller's), else the current span. Errors are recorded on the span.
        """
        given = request.options.traceparent
        parent = self._extract(given) if given is not None else None
        attributes = {
            **_SYSTEM,
            "messaging.operation.type": "send",
            "messaging.destination.name": request.options.queue,
            "actionq.plugin": request.plugin,
            "actionq.action": request.action,
            "actionq.queue": request.options.queue,
        }
        name = f"{SUBMIT} {request.plugin}.{request.action}"
        with self._tracer.start_as_current_span(
            name, context=parent, kind=SpanKind.PRODUCER, attributes=attributes
        ) as span:
            carrier: dict[str, str] = {}
            self._propagator.inject(carrier)  # the current context: this span
            traceparent = carrier.get("traceparent")  # none when the span is not real (no SDK provider)
            if traceparent is not None and traceparent != given:
                options = request.options.model_copy(update={"traceparent": traceparent})
                request = request.model_copy(update={"options": options})
            yield SubmitSpan(span, request)

    @contextmanager
    def attempt(self, request: JobRequest, *, job_id: str, attempt: int, worker_id: str) -> Iterator[AttemptSpan]:
        """An attempt span, the child of the request's submit span (a root without a ``traceparent``).

        The span is current inside, so the attempt's Redis commands and the action's own spans are
        its children. Leaving it by ``asyncio.CancelledError`` (the job went back to its queue) marks
        it ``interrupted``; any other exception is recorded as an error.
        """
        given = request.options.traceparent
        parent = self._extract(given) if given is not None else Context()  # never the worker loop's context
        attributes: dict[str, str | int] = {
            **_SYSTEM,
            "messaging.operation.type": "process",
            "messaging.destination.name": request.options.queue,
            "messaging.message.id": job_id,
            "actionq.plugin": request.plugin,
            "actionq.action": request.action,
            "actionq.queue": request.options.queue,
            "actionq.job_id": job_id,
            "actionq.attempt": attempt,
            "actionq.worker_id": worker_id,
        }
        name = f"{ATTEMPT} {request.plugin}.{request.action}"
        with self._tracer.start_as_current_span(
            name,
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield AttemptSpan(span)
            except asyncio.CancelledError:
                span.set_attribute("actionq.outcome", "interrupted")
                raise
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                raise

    def _extract(self, traceparent: str) -> Context:
        return self._propagator.extract({"traceparent": traceparent}, context=Context())


@dataclass(frozen=True, slots=True)
class SubmitSpan:
    """The span of one submit, and the request to write (with the span's ``traceparent``)."""

    span: trace.Span
    request: JobRequest

    def written(self, job_id: str, *, created: bool) -> None:
        """The job's id, and whether this submit created it (``False``: an idempotent repeat)."""
        self.span.set_attributes({"actionq.job_id": job_id, "messaging.message.id": job_id, "actionq.created": created})


@dataclass(frozen=True, slots=True)
class AttemptSpan:
    """The span of one attempt."""

    span: trace.Span

    def ended(self, state: str, error: ErrorInfo | None) -> None:
        """How the attempt ended: ``state`` as ``actionq.outcome``; an error but a cancel's as the status."""
        self.span.set_attribute("actionq.outcome", state)
        if error is None or state == "cancelled":
            return
        self.span.set_status(Status(StatusCode.ERROR, f"{error.type}: {error.message}"))
        event = {"exception.type": error.type, "exception.message": error.message}
        if error.traceback:
            event["exception.stacktrace"] = error.traceback
        self.span.add_event("exception", event)


def process_tracing(settings: TracingSettings) -> Tracing:
    """This process's :class:`Tracing`, setting OpenTelemetry up the first time (see :func:`service.tracing.start`)."""
    global _process
    with _lock:
        if _process is None:
            if settings.exporter != "none":
                _install_provider(settings)
            _instrument_redis()
            _process = Tracing()
        return _process


def _install_provider(settings: TracingSettings) -> None:
    """An SDK TracerProvider exporting as ``settings`` say, unless the application set one already."""
    current = trace.get_tracer_provider()
    if not isinstance(current, trace.ProxyTracerProvider):
        log.info("tracing_uses_existing_provider", provider=type(current).__name__, exporter=settings.exporter)
        return
    name = settings.service_name or os.environ.get("OTEL_SERVICE_NAME") or "actionq"
    provider = TracerProvider(resource=Resource.create({"service.name": name}), sampler=ParentBased(_OwnRoots()))
    # Batched off the job path, on the SDK's thread (OTEL_BSP_* tune it); flushed at exit.
    provider.add_span_processor(BatchSpanProcessor(_exporter(settings)))
    trace.set_tracer_provider(provider)


def _exporter(settings: TracingSettings) -> SpanExporter:
    if settings.exporter == "file":
        assert settings.file is not None  # TracingSettings requires it
        return JsonLinesExporter(settings.file)
    if settings.exporter == "console":
        return ConsoleSpanExporter(out=sys.stderr, formatter=_json_line)
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise ConfigError(
            f"tracing.exporter is otlp, which needs opentelemetry-exporter-otlp-proto-http ({_EXTRA}): {exc}"
        ) from exc
    return OTLPSpanExporter()  # endpoint, headers, timeout: the OTEL_EXPORTER_OTLP_* variables


def _instrument_redis() -> None:
    try:
        from opentelemetry.instrumentation.redis import RedisInstrumentor
    except ImportError as exc:
        raise ConfigError(f"tracing is enabled, but opentelemetry-instrumentation-redis is missing ({_EXTRA})") from exc
    instrumentor = RedisInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:  # the application (or opentelemetry-instrument) did
        instrumentor.instrument()


def _json_line(span: ReadableSpan) -> str:
    return str(span.to_json(indent=None)) + "\n"


class JsonLinesExporter(SpanExporter):
    """Appends each span to ``path`` as one line of JSON (``ReadableSpan.to_json``).

    One ``write`` per batch on a file opened with ``O_APPEND``: the members of a worker pool can
    share the file without their lines interleaving.
    """

    def __init__(self, path: Path) -> None:
        try:
            self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(f"tracing.file {path}: cannot open it for appending: {exc.strerror}") from exc

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Write ``spans``, one line each."""
        if self._fd is None:
            return SpanExportResult.FAILURE
        try:
            os.write(self._fd, "".join(_json_line(span) for span in spans).encode())
        except OSError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Close the file."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class _OwnRoots(Sampler):
    """The root sampler of the provider actionq installs: actionq's spans start traces, nothing else does.

    A worker sends Redis commands outside any job (polls, heartbeats, lease renewals): as roots,
    each would be a trace of one span, several a second from an idle worker. Inside a submit or an
    attempt they are children, and ParentBased samples them with their parent.
    """

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        """Record and sample a root span of actionq's own; drop any other root."""
        own = isinstance(attributes, Mapping) and attributes.get("messaging.system") == "actionq"
        return SamplingResult(Decision.RECORD_AND_SAMPLE if own else Decision.DROP, attributes if own else None)

    def get_description(self) -> str:
        """The sampler's name, as the SDK reports it."""
        return "ActionqOwnRoots"
