"""Traces (service.tracing): submit and attempt spans on an in-memory exporter, fakeredis underneath.

The spans' tests need the ``otel`` extra (opentelemetry-sdk) and skip without it; the off path's
(nothing imported, no span) runs everywhere. The process-wide set-up (:func:`service.tracing.start`:
an exporter, the global provider, redis-py instrumented) runs in subprocesses, so that it never
leaks into the other tests of this process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from pydantic import ValidationError

from service.client.client import JobClient
from service.errors import ConfigError
from service.models import JobOptions, JobRequest, JobState
from service.plugins.loader import PluginLoader
from service.settings import Settings, TracingSettings, load_settings
from service.worker.executor import Executor
from tests.conftest import REPO_ROOT, take_job

try:
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind, StatusCode

    from service.tracing.otel import Tracing
except ImportError:  # the otel extra is not installed: the span tests skip (see needs_sdk)
    HAVE_SDK = False
else:
    HAVE_SDK = True

needs_sdk = pytest.mark.skipif(
    not HAVE_SDK, reason="the otel extra (opentelemetry-sdk, opentelemetry-instrumentation-redis) is not installed"
)
PLUGINS = REPO_ROOT / "plugins"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


# -- the request carries a W3C traceparent, nothing else ----------------------------------------
def test_a_traceparent_must_be_w3c() -> None:
    assert JobOptions(traceparent=TRACEPARENT).traceparent == TRACEPARENT
    assert JobOptions().traceparent is None
    bad = [
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",  # no flags
        TRACEPARENT.upper(),
        "ff" + TRACEPARENT[2:],  # version ff is invalid
        TRACEPARENT + "-" + "a" * 1000,  # longer than one
    ]
    for value in bad:
        with pytest.raises(ValidationError, match="traceparent"):
            JobOptions(traceparent=value)


def test_tracing_settings_are_off_by_default_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ACTIONQ_CONFIG", "ACTIONQ_TRACING"):
        monkeypatch.delenv(name, raising=False)
    assert Settings().tracing == TracingSettings(enabled=False, exporter="otlp")
    with pytest.raises(ValidationError, match="the file exporter needs a file"):
        TracingSettings(exporter="file")
    with pytest.raises(ValidationError, match="file is for the file exporter only"):
        TracingSettings(exporter="console", file=Path("x"))
    config = tmp_path / "config.yml"
    config.write_text("tracing: {enabled: true, exporter: file, file: spans.jsonl}\n")
    assert load_settings(config).tracing.file == tmp_path / "spans.jsonl"  # relative to the file
    monkeypatch.setenv("ACTIONQ_TRACING__SERVICE_NAME", "billing-workers")
    assert load_settings(config).tracing.service_name == "billing-workers"
    with pytest.raises(ConfigError, match="exporter"):
        load_settings(config, tracing={"enabled": True, "exporter": "jaeger"})


def test_tracing_on_without_the_extra_is_a_config_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from service import tracing

    # As if opentelemetry were missing: the import of service.tracing.otel fails.
    monkeypatch.setitem(sys.modules, "service.tracing.otel", None)
    monkeypatch.delattr(tracing, "otel", raising=False)
    with pytest.raises(ConfigError, match=r"pip install 'actionq\[otel\]'"):
        tracing.start(TracingSettings(enabled=True))
    assert tracing.start(TracingSettings()) is None


# -- off: no span, nothing imported ---------------------------------------------------------------
_OFF = """
import asyncio, sys
import fakeredis
from service.client.client import JobClient
from service.plugins.loader import PluginLoader
from service.settings import Settings
from service.worker.executor import Executor
from tests.conftest import take_job

async def main():
    redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    settings = Settings(redis_url="redis://fake", namespace="off")
    loader = PluginLoader(enable_timeout_s=5)
    await loader.load_all([("PluginB", {plugins!r} + "/PluginB")])
    client = JobClient(redis, settings, owns_redis=False)
    executor = Executor(loader=loader, redis=redis, keys=client.keys, settings=settings, worker_id="w-test")
    assert client.tracing is None and executor.tracing is None
    handle = await client.submit("PluginB", "calculate_square", {{"x": 3}}, validate=False)
    outcome = await executor.run(await take_job(client, handle.job_id))
    record = await client.job(handle.job_id).record()
    assert (outcome.state.value, record.result, record.request.options.traceparent) == ("succeeded", 9, None)
    await loader.unload_all()
    print("imported:", sorted(name for name in sys.modules if name.startswith("opentelemetry")))

asyncio.run(main())
"""


def test_tracing_off_imports_no_opentelemetry_and_adds_no_traceparent() -> None:
    code = _OFF.format(plugins=str(PLUGINS))
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "imported: []", f"tracing off, yet: {done.stdout}"


# -- on: spans on an in-memory exporter -----------------------------------------------------------
@pytest.fixture(autouse=True)
def _never_process_wide() -> Iterator[None]:
    """The process-wide set-up (global provider, instrumentation) runs in subprocesses only."""
    yield
    if HAVE_SDK:
        from service.tracing import otel

        assert otel._process is None, "a test set tracing up for the whole test process"


@dataclass
class Traced:
    client: JobClient
    executor: Executor
    exporter: InMemorySpanExporter

    async def run(self, plugin: str, action: str, params: dict[str, Any], **options: Any) -> str:
        request = JobRequest(plugin=plugin, action=action, params=params, options=JobOptions(**options))
        job_id = (await self.client.submit_request(request)).job_id
        await self.executor.run(await take_job(self.client, job_id))
        return job_id

    def spans(self, prefix: str) -> list[ReadableSpan]:
        return [span for span in self.exporter.get_finished_spans() if span.name.startswith(prefix)]

    def one(self, prefix: str) -> ReadableSpan:
        [span] = self.spans(prefix)
        return span


@pytest.fixture
def provider() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """A provider of this test alone (never the global one), and redis-py instrumented on it meanwhile."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    RedisInstrumentor().instrument(tracer_provider=provider)
    try:
        yield provider, exporter
    finally:
        RedisInstrumentor().uninstrument()
        provider.shutdown()


@pytest_asyncio.fixture
async def traced(
    fake_redis: aioredis.Redis, provider: tuple[TracerProvider, InMemorySpanExporter]
) -> AsyncIterator[Traced]:
    settings = Settings(redis_url="redis://fake", namespace="tr", default_timeout_s=5, cancel_grace_s=0.1)
    loader = PluginLoader(enable_timeout_s=5)
    await loader.load_all([(n, PLUGINS / n) for n in ("long_running", "PluginB")])
    client = JobClient(fake_redis, settings, owns_redis=False)
    executor = Executor(loader=loader, redis=fake_redis, keys=client.keys, settings=settings, worker_id="w-test")
    # What start() returns with tracing on, on this test's provider instead of the process's.
    client.tracing = executor.tracing = Tracing(provider[0])
    yield Traced(client, executor, provider[1])
    await loader.unload_all()
    await client.close()


def _traceparent_of(span: ReadableSpan) -> str:
    ctx = span.context
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


@needs_sdk
async def test_the_submit_spans_traceparent_is_in_the_request(traced: Traced) -> None:
    request = JobRequest(plugin="PluginB", action="calculate_square", params={"x": 2})
    handle = await traced.client.submit_request(request)
    submit = traced.one("submit ")
    redis_spans = [s for s in traced.exporter.get_finished_spans() if (s.attributes or {}).get("db.system") == "redis"]
    record = await handle.record()
    assert record.request.options.traceparent == _traceparent_of(submit)
    assert submit.name == "submit PluginB.calculate_square"
    assert submit.kind is SpanKind.PRODUCER
    attrs = dict(submit.attributes or {})
    assert attrs["actionq.plugin"] == "PluginB"
    assert attrs["actionq.action"] == "calculate_square"
    assert (attrs["actionq.job_id"], attrs["actionq.created"]) == (handle.job_id, True)
    # The write itself is a Redis span inside the submit span.
    assert redis_spans, "no Redis command was traced"
    assert all(s.parent is not None and s.parent.span_id == submit.context.span_id for s in redis_spans)


@needs_sdk
async def test_the_attempt_span_is_the_child_of_the_submit_span(traced: Traced) -> None:
    job_id = await traced.run("PluginB", "calculate_square", {"x": 3})
    submit, attempt = traced.one("submit "), traced.one("attempt ")
    assert attempt.name == "attempt PluginB.calculate_square"
    assert attempt.kind is SpanKind.CONSUMER
    assert attempt.parent is not None
    assert (attempt.context.trace_id, attempt.parent.span_id) == (submit.context.trace_id, submit.context.span_id)
    attrs = dict(attempt.attributes or {})
    assert {k: attrs[k] for k in ("actionq.plugin", "actionq.action", "actionq.job_id", "actionq.attempt")} == {
        "actionq.plugin": "PluginB",
        "actionq.action": "calculate_square",
        "actionq.job_id": job_id,
        "actionq.attempt": 1,
    }
    assert attrs["actionq.outcome"] == "succeeded"
    assert attrs["actionq.worker_id"] == "w-test"
    assert attempt.status.status_code is StatusCode.UNSET
    # The settlement's Redis commands belong to the attempt.
    inside = [
        s for s in traced.exporter.get_finished_spans() if s.parent and s.parent.span_id == attempt.context.span_id
    ]
    assert any((s.attributes or {}).get("db.system") == "redis" for s in inside)


@needs_sdk
async def test_a_failed_attempt_records_its_error(traced: Traced) -> None:
    await traced.run("long_running", "fail", {"message": "nope"})
    attempt = traced.one("attempt ")
    assert dict(attempt.attributes or {})["actionq.outcome"] == JobState.FAILED.value
    assert attempt.status.status_code is StatusCode.ERROR
    assert attempt.status.description == "RuntimeError: nope"
    [event] = [e for e in attempt.events if e.name == "exception"]
    attrs = dict(event.attributes or {})
    assert (attrs["exception.type"], attrs["exception.message"]) == ("RuntimeError", "nope")
    assert "raise RuntimeError" in str(attrs["exception.stacktrace"])


@needs_sdk
async def test_a_callers_traceparent_is_the_submit_spans_parent(traced: Traced) -> None:
    await traced.run("PluginB", "calculate_square", {"x": 4}, traceparent=TRACEPARENT)
    submit, attempt = traced.one("submit "), traced.one("attempt ")
    assert submit.parent is not None
    assert (f"{submit.context.trace_id:032x}", f"{submit.parent.span_id:016x}") == (
        TRACEPARENT[3:35],
        TRACEPARENT[36:52],
    )
    assert attempt.parent is not None
    assert attempt.parent.span_id == submit.context.span_id


@needs_sdk
async def test_a_request_without_traceparent_starts_its_own_trace(traced: Traced) -> None:
    traced.client.tracing = None  # a producer that traces nothing
    await traced.run("PluginB", "calculate_square", {"x": 5})
    assert not traced.spans("submit ")
    attempt = traced.one("attempt ")
    assert attempt.parent is None
    assert dict(attempt.attributes or {})["actionq.outcome"] == "succeeded"
    # An all-zero id matches the pattern but is no trace context (W3C: ignore it): a root too.
    await traced.run("PluginB", "calculate_square", {"x": 6}, traceparent="00-" + "0" * 32 + TRACEPARENT[35:])
    second = [s for s in traced.spans("attempt ") if s.context.span_id != attempt.context.span_id]
    assert [s.parent for s in second] == [None]


# -- the process-wide set-up: exporter, sampler, instrumentation (in a subprocess) -----------------
_ON = """
import asyncio, sys
import fakeredis
from opentelemetry import trace
from service.models import JobRequest
from service.settings import TracingSettings
from service.tracing import start

tracing = start(TracingSettings(enabled=True, exporter="file", file={path!r}))
assert start(TracingSettings(enabled=True, exporter="file", file={path!r})) is tracing  # once per process

async def main():
    redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    await redis.set("background", 1)  # a Redis command outside any span: starts no trace
    with tracing.submit(JobRequest(plugin="P", action="a")) as span:
        await redis.set("inside", 1)  # a child of the submit span
        span.written("j1", created=True)

asyncio.run(main())
trace.get_tracer_provider().force_flush()
"""


@needs_sdk
def test_start_exports_actionq_spans_and_redis_inside_them_as_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    done = subprocess.run(
        [sys.executable, "-c", _ON.format(path=str(path))],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    spans = [json.loads(line) for line in path.read_text().splitlines()]
    names = sorted(span["name"] for span in spans)
    assert names == ["SET", "submit P.a"], names  # the background SET was not sampled
    by_name = {span["name"]: span for span in spans}
    assert by_name["SET"]["parent_id"] == by_name["submit P.a"]["context"]["span_id"]
    assert by_name["submit P.a"]["resource"]["attributes"]["service.name"] == "actionq"


@needs_sdk
def test_each_exporter_setting_builds_its_exporter(tmp_path: Path) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    from service.tracing.otel import JsonLinesExporter, _exporter

    built = [
        _exporter(TracingSettings(enabled=True)),
        _exporter(TracingSettings(enabled=True, exporter="console")),
        _exporter(TracingSettings(enabled=True, exporter="file", file=tmp_path / "s.jsonl")),
    ]
    try:
        assert [type(e) for e in built] == [OTLPSpanExporter, ConsoleSpanExporter, JsonLinesExporter]
    finally:
        for exporter in built:
            exporter.shutdown()
    with pytest.raises(ConfigError, match=r"tracing.file .*missing.*cannot open it"):
        _exporter(TracingSettings(enabled=True, exporter="file", file=tmp_path / "missing" / "s.jsonl"))
