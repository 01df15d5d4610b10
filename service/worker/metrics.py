"""A worker's Prometheus metrics: a sink counting its job events, served over HTTP on ``metrics_port``.

Off unless ``metrics_port`` is set, and then cheap on the job path: :class:`WorkerMetrics` is a
sink of the worker's delegate manager (:meth:`~service.events.delegates.DelegateManager.add_sink`),
so each job event costs a dict lookup and a counter increment on the loop, with no await and no
I/O. prometheus_client's own HTTP server (a daemon thread) renders the registry when scraped.
Each worker has its own :class:`~prometheus_client.CollectorRegistry`, never the global one, so
several runtimes in one process (the tests) do not mix their counts.

======================================  ================================  ==========================================
metric                                  labels                            from
======================================  ================================  ==========================================
``actionq_jobs_total``                  ``plugin, action, state``         ``job_started`` (started), ``job_succeeded``,
                                                                          ``job_failed``, ``job_retrying`` (retried),
                                                                          ``job_timed_out``, ``job_cancelled``,
                                                                          ``job_dead_lettered``
``actionq_job_run_seconds``             ``plugin, action``                a finished attempt's run time
``actionq_job_wait_seconds``            ``plugin, action``                a first attempt: submit → start
``actionq_worker_jobs_active``          (none)                            the jobs this worker runs now
======================================  ================================  ==========================================

Labels are bounded: never a job id, and past :data:`MAX_SERIES` distinct ``(plugin, action)`` pairs
(a producer writing to Redis with ``validate=False`` can invent action names) the rest are counted
under ``plugin="(other)", action="(other)"``.

The wait is measured for first attempts only, from the job's ``enqueued_at_ms`` (its submit) to
its ``job_started`` event: ``job_started`` does not carry the enqueue time, so the runtime hands it
over when it takes the job (:meth:`WorkerMetrics.taken`). A deferred job's wait includes its
deferral, and a retried attempt's would include the earlier attempts, so retries are left out.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from threading import Thread
from wsgiref.simple_server import WSGIServer

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from service.errors import ConfigError
from service.events.models import Event, EventKind
from service.settings import POOL_INDEX_ENV, Settings

__all__ = ["MAX_SERIES", "STATES", "MetricsServer", "WorkerMetrics", "metrics_port", "serve"]

log = structlog.get_logger("actionq.metrics")

STATES = ("started", "succeeded", "failed", "retried", "timed_out", "cancelled", "dead_lettered")
"""The ``state`` label values of ``actionq_jobs_total`` a worker counts (the gateway counts ``submitted``)."""

# Distinct (plugin, action) pairs before the rest share one series: far more than any deployment
# declares, few enough that a flood of invented names cannot exhaust the worker's memory.
MAX_SERIES = 1000
OTHER = "(other)"

# Run and wait times of jobs span milliseconds to hours: the default buckets stop at 10 s.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, float("inf"))


@dataclass(slots=True)
class _Series:
    """The children of every metric for one ``(plugin, action)``: resolved once, incremented per event."""

    states: dict[str, Counter]
    run: Histogram
    wait: Histogram


class WorkerMetrics:
    """The metrics of one worker, fed by its job events (call it as a sink: ``metrics(event)``).

    ``active`` returns the number of jobs running now (the runtime's count), read at scrape time.
    """

    def __init__(self, *, active: Callable[[], int] | None = None, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.jobs = Counter(
            "actionq_jobs", "Job events counted by this worker, by state.", ["plugin", "action", "state"],
            registry=self.registry,
        )  # fmt: skip
        self.run_seconds = Histogram(
            "actionq_job_run_seconds", "Run time of finished attempts.", ["plugin", "action"],
            buckets=BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.wait_seconds = Histogram(
            "actionq_job_wait_seconds", "Time from submit to the start of a job's first attempt.", ["plugin", "action"],
            buckets=BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.active = Gauge("actionq_worker_jobs_active", "Jobs this worker runs now.", registry=self.registry)
        if active is not None:
            self.active.set_function(active)
        self._series: dict[tuple[str, str], _Series] = {}
        self._enqueued: dict[str, int] = {}  # job id -> enqueued_at_ms, taken (first attempt) and not yet started
        self._started: dict[str, int] = {}  # job id -> its job_started ts_ms, until the attempt's end
        self._handlers: dict[str, Callable[[Event], None]] = {
            EventKind.JOB_STARTED: self._on_started,
            EventKind.JOB_SUCCEEDED: self._on_finished,
            EventKind.JOB_FAILED: self._on_finished,
            EventKind.JOB_RETRYING: self._on_finished,
            EventKind.JOB_TIMED_OUT: self._on_finished,
            EventKind.JOB_CANCELLED: self._on_finished,
            EventKind.JOB_DEAD_LETTERED: self._on_dead_lettered,
        }
        self._state_of = {
            EventKind.JOB_SUCCEEDED.value: "succeeded",
            EventKind.JOB_FAILED.value: "failed",
            EventKind.JOB_RETRYING.value: "retried",
            EventKind.JOB_TIMED_OUT.value: "timed_out",
            EventKind.JOB_CANCELLED.value: "cancelled",
        }

    # -- the runtime's hooks ----------------------------------------------------------------------
    def taken(self, job_id: str, attempt: int, enqueued_at_ms: int) -> None:
        """The runtime took ``job_id``: remember when it was submitted, for its first attempt's wait."""
        if attempt == 1 and enqueued_at_ms > 0:
            self._enqueued[job_id] = enqueued_at_ms

    def forget(self, job_id: str) -> None:
        """The runtime is done with ``job_id`` (whether it started, ended or was handed back)."""
        self._enqueued.pop(job_id, None)
        self._started.pop(job_id, None)

    # -- the sink ---------------------------------------------------------------------------------
    def __call__(self, event: Event) -> None:
        """Count one event (any kind; only job events count)."""
        handler = self._handlers.get(event.kind)
        if handler is not None:
            handler(event)

    def series(self, plugin: str, action: str) -> _Series:
        """The children of ``(plugin, action)``, created on first use (bounded by :data:`MAX_SERIES`)."""
        found = self._series.get((plugin, action))
        if found is not None:
            return found
        if len(self._series) >= MAX_SERIES:
            plugin = action = OTHER
            found = self._series.get((plugin, action))
            if found is not None:
                return found
        found = _Series(
            states={state: self.jobs.labels(plugin, action, state) for state in STATES},
            run=self.run_seconds.labels(plugin, action),
            wait=self.wait_seconds.labels(plugin, action),
        )
        self._series[(plugin, action)] = found
        return found

    def _on_started(self, event: Event) -> None:
        job_id, ts_ms = getattr(event, "job_id", ""), event.ts_ms
        series = self.series(getattr(event, "plugin", OTHER), getattr(event, "action", OTHER))
        series.states["started"].inc()
        enqueued = self._enqueued.pop(job_id, None)
        if enqueued is not None:
            series.wait.observe(max(0, ts_ms - enqueued) / 1000)
        self._started[job_id] = ts_ms

    def _on_finished(self, event: Event) -> None:
        series = self.series(getattr(event, "plugin", OTHER), getattr(event, "action", OTHER))
        series.states[self._state_of[event.kind]].inc()
        started = self._started.pop(getattr(event, "job_id", ""), None)
        duration_ms = getattr(event, "duration_ms", None)  # succeeded and failed carry it; the others do not
        if duration_ms is None and started is not None:
            duration_ms = max(0, event.ts_ms - started)
        if duration_ms is not None:
            series.run.observe(duration_ms / 1000)

    def _on_dead_lettered(self, event: Event) -> None:
        self.series(getattr(event, "plugin", OTHER), getattr(event, "action", OTHER)).states["dead_lettered"].inc()


def metrics_port(settings: Settings) -> int | None:
    """This worker's metrics port: ``metrics_port``, plus its index in a pool (``--processes N``)."""
    if settings.metrics_port is None:
        return None
    index = os.environ.get(POOL_INDEX_ENV, "")
    return settings.metrics_port + (int(index) if index.isdigit() else 0)


@dataclass(frozen=True, slots=True)
class MetricsServer:
    """prometheus_client's HTTP server of one worker's registry, in a daemon thread."""

    server: WSGIServer
    thread: Thread

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self.server.server_port)

    def close(self) -> None:
        """Stop serving and release the port."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve(metrics: WorkerMetrics, host: str, port: int) -> MetricsServer:
    """Serve ``metrics`` at ``http://host:port/metrics``; a :class:`ConfigError` if the port cannot be bound."""
    try:
        server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as exc:
        raise ConfigError(f"cannot serve worker metrics on {host}:{port} (metrics_port): {exc.strerror}") from exc
    log.info("metrics_serving", url=f"http://{host}:{server.server_port}/metrics")
    return MetricsServer(server, thread)
