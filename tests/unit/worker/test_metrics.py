"""The worker's metrics sink: job events in, counters and histograms out (read from its own registry)."""

from __future__ import annotations

import urllib.request

import pytest
import redis.asyncio as aioredis

from service.errors import ConfigError, ErrorInfo
from service.events.jobevents import JobEvents
from service.events.models import WorkerStartedEvent
from service.models import JobRequest, JobState
from service.settings import POOL_INDEX_ENV, Settings
from service.worker import metrics as metrics_module
from service.worker.metrics import OTHER, WorkerMetrics, metrics_port, serve
from service.worker.runtime import WorkerRuntime

SQUARE = JobRequest(plugin="PluginB", action="calculate_square", params={"x": 2})
SLOW = JobRequest(plugin="PluginB", action="sleep", params={})
BOOM = ErrorInfo(type="ValueError", message="boom")


def _count(metrics: WorkerMetrics, state: str, request: JobRequest = SQUARE) -> float | None:
    labels = {"plugin": request.plugin, "action": request.action, "state": state}
    return metrics.registry.get_sample_value("actionq_jobs_total", labels)


def _histogram(metrics: WorkerMetrics, name: str, suffix: str, request: JobRequest = SQUARE) -> float | None:
    labels = {"plugin": request.plugin, "action": request.action}
    return metrics.registry.get_sample_value(f"{name}_{suffix}", labels)


def _events(metrics: WorkerMetrics) -> JobEvents:
    return JobEvents(metrics, worker_id="w1")


def test_each_job_event_counts_under_its_state() -> None:
    metrics = WorkerMetrics()
    events = _events(metrics)
    for n, state in enumerate((JobState.SUCCEEDED, JobState.SUCCEEDED, JobState.FAILED)):
        events.started(f"j{n}", SQUARE, 1, "q")
        events.finished(f"j{n}", SQUARE, 1, state=state, error=BOOM, duration_ms=250)
    events.started("r", SLOW, 1, "q")
    events.finished("r", SLOW, 1, state=JobState.RETRYING, error=BOOM, duration_ms=0, retry_in_s=1)
    events.started("r", SLOW, 2, "q")
    events.finished("r", SLOW, 2, state=JobState.TIMED_OUT, error=BOOM, duration_ms=0, timeout_s=1)
    events.dead_lettered("r", SLOW, 2, BOOM, 2)
    events.started("c", SLOW, 1, "q")
    events.finished("c", SLOW, 1, state=JobState.CANCELLED, error=None, duration_ms=0, reason="stop")

    assert _count(metrics, "started") == 3
    assert _count(metrics, "succeeded") == 2
    assert _count(metrics, "failed") == 1
    assert _count(metrics, "retried") == 0  # every state's series exists from the first event
    assert _count(metrics, "started", SLOW) == 3
    assert _count(metrics, "retried", SLOW) == 1
    assert _count(metrics, "timed_out", SLOW) == 1
    assert _count(metrics, "dead_lettered", SLOW) == 1
    assert _count(metrics, "cancelled", SLOW) == 1
    assert _count(metrics, "succeeded", SLOW) == 0


def test_run_time_comes_from_the_duration_or_the_start_event() -> None:
    metrics = WorkerMetrics()
    events = _events(metrics)
    events.started("a", SQUARE, 1, "q")
    events.finished("a", SQUARE, 1, state=JobState.SUCCEEDED, error=None, duration_ms=1500)
    assert _histogram(metrics, "actionq_job_run_seconds", "count") == 1
    assert _histogram(metrics, "actionq_job_run_seconds", "sum") == 1.5
    # A timeout's event carries no duration: the time since this worker's job_started is observed.
    events.started("t", SLOW, 1, "q")
    events.finished("t", SLOW, 1, state=JobState.TIMED_OUT, error=BOOM, duration_ms=0, timeout_s=1)
    assert _histogram(metrics, "actionq_job_run_seconds", "count", SLOW) == 1
    # One that this worker did not see start is counted, not timed.
    events.finished("u", SLOW, 1, state=JobState.CANCELLED, error=None, duration_ms=0)
    assert _count(metrics, "cancelled", SLOW) == 1
    assert _histogram(metrics, "actionq_job_run_seconds", "count", SLOW) == 1


def test_wait_is_measured_from_the_submit_for_first_attempts_only() -> None:
    metrics = WorkerMetrics()
    events = _events(metrics)
    metrics.taken("a", 1, enqueued_at_ms=1)  # submitted at the epoch's first millisecond: a long wait
    events.started("a", SQUARE, 1, "q")
    count = _histogram(metrics, "actionq_job_wait_seconds", "count")
    total = _histogram(metrics, "actionq_job_wait_seconds", "sum")
    assert count == 1
    assert total is not None
    assert total > 1_000_000_000  # seconds since 1970
    metrics.taken("b", 2, enqueued_at_ms=1)  # a retry: its wait would include the earlier attempt
    events.started("b", SQUARE, 2, "q")
    events.started("c", SQUARE, 1, "q")  # never handed over by the runtime: not timed
    assert _histogram(metrics, "actionq_job_wait_seconds", "count") == 1
    assert _count(metrics, "started") == 3


def test_forget_drops_what_the_runtime_handed_over() -> None:
    metrics = WorkerMetrics()
    events = _events(metrics)
    metrics.taken("gone", 1, enqueued_at_ms=1)
    metrics.forget("gone")  # it never started (malformed, ended while queued)
    events.started("gone", SQUARE, 1, "q")
    assert _histogram(metrics, "actionq_job_wait_seconds", "count") == 0
    metrics.forget("gone")  # its attempt was handed back without an end event
    events.finished("gone", SQUARE, 1, state=JobState.CANCELLED, error=None, duration_ms=0)
    assert _histogram(metrics, "actionq_job_run_seconds", "count") == 0
    assert not metrics._enqueued
    assert not metrics._started


def test_other_events_are_ignored_and_the_active_gauge_reads_the_runtime() -> None:
    running = [3]
    metrics = WorkerMetrics(active=lambda: running[0])
    metrics(WorkerStartedEvent(worker_id="w1", hostname="h", pid=1))
    assert metrics.registry.get_sample_value("actionq_worker_jobs_active") == 3
    running[0] = 0
    assert metrics.registry.get_sample_value("actionq_worker_jobs_active") == 0
    assert _count(metrics, "started") is None


def test_labels_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_module, "MAX_SERIES", 2)
    metrics = WorkerMetrics()
    events = _events(metrics)
    for n in range(5):
        events.started(f"j{n}", JobRequest(plugin="PluginB", action=f"invented{n}"), 1, "q")
    other = {"plugin": OTHER, "action": OTHER, "state": "started"}
    assert metrics.registry.get_sample_value("actionq_jobs_total", other) == 3
    assert metrics.registry.get_sample_value("actionq_jobs_total", {**other, "action": "invented1"}) is None


def test_registries_are_per_worker() -> None:
    first, second = WorkerMetrics(), WorkerMetrics()
    _events(first).started("a", SQUARE, 1, "q")
    assert _count(first, "started") == 1
    assert _count(second, "started") is None  # no series at all in the other registry


def test_a_pool_member_adds_its_index_to_the_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(POOL_INDEX_ENV, raising=False)
    assert metrics_port(Settings()) is None
    assert metrics_port(Settings(metrics_port=9100)) == 9100
    monkeypatch.setenv(POOL_INDEX_ENV, "3")
    assert metrics_port(Settings(metrics_port=9100)) == 9103
    assert metrics_port(Settings()) is None


def test_the_endpoint_serves_the_registry_over_http() -> None:
    metrics = WorkerMetrics()
    _events(metrics).started("a", SQUARE, 1, "q")
    server = serve(metrics, "127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        assert 'actionq_jobs_total{action="calculate_square",plugin="PluginB",state="started"} 1.0' in text
        with pytest.raises(ConfigError, match=rf"127\.0\.0\.1:{server.port} \(metrics_port\)"):
            serve(metrics, "127.0.0.1", server.port)  # the port is in use
    finally:
        server.close()


async def test_the_runtime_counts_only_with_a_metrics_port(fake_redis: aioredis.Redis) -> None:
    off = WorkerRuntime(Settings(redis_url="redis://fake", namespace="ut"), fake_redis)
    assert off.metrics is None
    on = WorkerRuntime(Settings(redis_url="redis://fake", namespace="ut", metrics_port=9100), fake_redis)
    assert on.metrics is not None
    JobEvents(on.notify, worker_id=on.worker_id).started("a", SQUARE, 1, "q")  # the runtime's own notify path
    assert _count(on.metrics, "started") == 1
    on.running_jobs = 2
    assert on.metrics.registry.get_sample_value("actionq_worker_jobs_active") == 2
    for runtime in (on, off):
        await runtime.delegates.aclose()
        await runtime.bridge.aclose()
