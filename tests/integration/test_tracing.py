"""One trace across processes: a client's submit span here, the attempt span in a real worker subprocess.

The worker runs with tracing on and the file exporter (JSON lines, the batch processor told to
export within 50 ms by the standard ``OTEL_BSP_SCHEDULE_DELAY``); the client here exports to an
in-memory exporter of this test's own provider. Needs the ``otel`` extra.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

pytest.importorskip("opentelemetry.sdk", reason="the otel extra (opentelemetry-sdk) is not installed")
pytest.importorskip("opentelemetry.instrumentation.redis", reason="the otel extra is not installed")

from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service.client.client import JobClient
from service.tracing.otel import Tracing
from tests.conftest import FAST, WorkerFactory

# A lone job's spans are exported within 50 ms; this only bites when the worker exports nothing.
SPANS_TIMEOUT_S = 20.0


@pytest_asyncio.fixture
async def traced_client(redis_url: str, namespace: str) -> AsyncIterator[tuple[JobClient, InMemorySpanExporter]]:
    """A client with tracing on, exporting to memory (this test's provider; redis-py instrumented meanwhile)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    RedisInstrumentor().instrument(tracer_provider=provider)
    try:
        async with await JobClient.connect(redis_url, namespace=namespace) as client:
            client.tracing = Tracing(provider)  # what tracing.enabled gives, on this test's provider
            yield client, exporter
    finally:
        RedisInstrumentor().uninstrument()
        provider.shutdown()


def _read_spans(path: Path) -> list[dict[str, Any]]:
    """The spans in the worker's file so far (a line being written is left for the next read)."""
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.splitlines() if line.endswith("}")]


async def _spans_until(path: Path, found: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
    """The spans the worker wrote to ``path``, once ``found`` says they are there (fail after a while)."""
    deadline = time.monotonic() + SPANS_TIMEOUT_S
    while True:
        spans = _read_spans(path)
        if found(spans):
            return spans
        if time.monotonic() > deadline:
            pytest.fail(f"the worker did not export the expected spans within {SPANS_TIMEOUT_S:g}s: {spans}")
        await asyncio.sleep(0.05)


async def test_the_workers_attempt_span_is_the_child_of_the_clients_submit_span(
    worker_process: WorkerFactory,
    plugins_config: Callable[..., dict[str, Any]],
    traced_client: tuple[JobClient, InMemorySpanExporter],
    tmp_path: Path,
) -> None:
    client, exporter = traced_client
    spans_file = tmp_path / "worker-spans.jsonl"
    tracing = {"enabled": True, "exporter": "file", "file": str(spans_file), "service_name": "test-worker"}
    worker_process(
        plugins_config(**FAST), env={"ACTIONQ_TRACING": json.dumps(tracing), "OTEL_BSP_SCHEDULE_DELAY": "50"}
    )

    handle = await client.submit("PluginB", "calculate_square", {"x": 9})
    assert await handle.result(timeout=20) == 81

    [submit] = [s for s in exporter.get_finished_spans() if s.name == "submit PluginB.calculate_square"]
    trace_id, submit_id = f"0x{submit.context.trace_id:032x}", f"0x{submit.context.span_id:016x}"
    client_redis = [s for s in exporter.get_finished_spans() if s.parent and s.parent.span_id == submit.context.span_id]
    assert any((s.attributes or {}).get("db.system") == "redis" for s in client_redis), "no traced Redis command"

    def has_attempt(spans: list[dict[str, Any]]) -> bool:
        return any(s["name"].startswith("attempt ") for s in spans)

    spans = await _spans_until(spans_file, has_attempt)
    [attempt] = [s for s in spans if s["name"] == "attempt PluginB.calculate_square"]
    assert attempt["context"]["trace_id"] == trace_id
    assert attempt["parent_id"] == submit_id
    assert attempt["kind"] == "SpanKind.CONSUMER"
    attrs = attempt["attributes"]
    assert (attrs["actionq.plugin"], attrs["actionq.action"], attrs["actionq.attempt"]) == (
        "PluginB",
        "calculate_square",
        1,
    )
    assert (attrs["actionq.job_id"], attrs["actionq.outcome"]) == (handle.job_id, "succeeded")
    assert attempt["resource"]["attributes"]["service.name"] == "test-worker"
    # The worker's Redis commands inside the attempt (its settlement) are in the same trace; its
    # background commands (polls, heartbeats) start no trace of their own.
    worker_redis = [s for s in spans if s["attributes"].get("db.system") == "redis"]
    assert any(s["parent_id"] == attempt["context"]["span_id"] for s in worker_redis), spans
    assert all(s["context"]["trace_id"] == trace_id for s in spans), "a span outside the job's trace was exported"
