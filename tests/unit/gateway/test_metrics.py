"""The gateway's /metrics on fakeredis: its submits, the queues and workers read at scrape time, open streams, auth."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.errors import BrokerError
from service.gateway.metrics import GatewayMetrics
from service.gateway.sse import EventStream
from tests.conftest import take_job
from tests.unit.fakes import register
from tests.unit.gateway.conftest import READ, SUBMIT, TOKENS, Gateway, GatewayFactory

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _samples(text: str) -> Samples:
    """Every sample of a scrape: (name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def _scrape(gw: Gateway, token: str | None = None) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    reply = await gw.http.get("/metrics", headers=headers)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain")
    return _samples(reply.text)


def _submitted(plugin: str, action: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return ("actionq_jobs_total", (("action", action), ("plugin", plugin), ("state", "submitted")))


def _depth(queue: str, state: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return ("actionq_queue_depth", (("queue", queue), ("state", state)))


async def _post(gw: Gateway, body: Any, **headers: str) -> httpx.Response:
    return await gw.http.post("/v1/jobs", json=body, headers=headers)


async def test_submits_queues_and_workers_are_counted(gateway: GatewayFactory) -> None:
    async with gateway() as gw:
        await register(gw.client, "PluginB")
        square = {"plugin": "PluginB", "action": "calculate_square", "params": {"x": 3}}
        assert (await _post(gw, square)).status_code == 202
        assert (await _post(gw, square, **{"Idempotency-Key": "once"})).status_code == 202
        assert (await _post(gw, square, **{"Idempotency-Key": "once"})).status_code == 200  # the same job: not counted
        refused = {**square, "params": {"x": "three"}}
        assert (await _post(gw, refused)).status_code == 422  # refused: nothing written, nothing counted
        batch = await gw.http.post("/v1/jobs:batch", json=[square, square, {"plugin": "PluginB"}])
        assert [r["status"] for r in batch.json()["results"]] == [202, 202, 422]
        deferred = await _post(gw, {**square, "options": {"defer_s": 3600}})
        queue = (await gw.client.job(deferred.json()["job_id"]).record()).queue

        samples = await _scrape(gw)
        assert samples[_submitted("PluginB", "calculate_square")] == 5
        assert samples[_depth(queue, "ready")] == 4
        assert samples[_depth(queue, "deferred")] == 1
        assert samples[_depth(queue, "running")] == 0
        assert samples[("actionq_queue_oldest_age_seconds", (("queue", queue),))] >= 0
        assert samples[("actionq_workers_online", ())] == 1
        assert samples[("actionq_gateway_redis_up", ())] == 1

        job_id = (await _post(gw, square)).json()["job_id"]
        await take_job(gw.client, job_id)  # as a worker would: it takes every ready job, leased, running
        samples = await _scrape(gw)
        assert samples[_depth(queue, "running")] == 5
        assert samples[_depth(queue, "ready")] == 0
        assert samples[_depth(queue, "deferred")] == 1
        assert samples[_submitted("PluginB", "calculate_square")] == 6


async def test_a_queue_with_no_ready_job_has_no_age(gateway: GatewayFactory) -> None:
    async with gateway() as gw:
        await register(gw.client, "PluginB")
        samples = await _scrape(gw)
        queues = {dict(labels)["queue"] for name, labels in samples if name == "actionq_queue_oldest_age_seconds"}
        assert queues  # the registered worker's queues, all empty
        assert all(samples[("actionq_queue_oldest_age_seconds", (("queue", q),))] == 0 for q in queues)
        assert not any(name == "actionq_jobs_total" for name, _ in samples)


async def test_metrics_need_the_read_scope_when_tokens_are_configured(gateway: GatewayFactory) -> None:
    async with gateway(tokens=TOKENS) as gw:
        assert (await gw.http.get("/metrics")).status_code == 401
        assert ("actionq_gateway_redis_up", ()) in await _scrape(gw, READ)
        assert ("actionq_gateway_redis_up", ()) in await _scrape(gw, SUBMIT)
    async with gateway() as gw:
        assert (await gw.http.get("/metrics")).status_code == 200  # no token configured: open, as the API is
        assert "/metrics" not in (await gw.http.get("/openapi.json")).json()["paths"]


async def test_a_scrape_while_redis_is_down_still_answers(gateway: GatewayFactory) -> None:
    async with gateway() as gw:
        await register(gw.client, "PluginB")
        assert (await _post(gw, {"plugin": "PluginB", "action": "calculate_square", "params": {"x": 1}})).is_success
        samples = await _scrape(gw)
        assert any(name == "actionq_queue_depth" for name, _ in samples)

        async def unreachable() -> list[Any]:
            raise BrokerError("Redis is unreachable")

        gw.client.workers = unreachable  # type: ignore[method-assign]
        samples = await _scrape(gw)
        assert samples[("actionq_gateway_redis_up", ())] == 0
        assert not any(name == "actionq_queue_depth" for name, _ in samples)  # no stale depths
        assert samples[_submitted("PluginB", "calculate_square")] == 1  # its own counts are still served


async def test_open_event_streams_are_counted_until_they_end(gateway: GatewayFactory) -> None:
    async with gateway() as gw:
        await register(gw.client, "PluginB")
        handle = await gw.client.submit("PluginB", "calculate_square", {"x": 1})
        following = asyncio.create_task(gw.http.get(f"/v1/jobs/{handle.job_id}/events"))
        async with asyncio.timeout(10):
            while (await _scrape(gw))[("actionq_sse_clients", ())] != 1:
                await asyncio.sleep(0.01)
        await handle.cancel()  # the terminal state ends the stream
        reply = await asyncio.wait_for(following, 10)
        assert reply.headers["content-type"].startswith("text/event-stream")
        assert (await _scrape(gw))[("actionq_sse_clients", ())] == 0
        assert (await gw.http.get(f"/v1/jobs/{handle.job_id}")).status_code == 200  # not a stream: not counted
        assert (await _scrape(gw))[("actionq_sse_clients", ())] == 0


async def test_the_counter_releases_a_stream_that_fails() -> None:
    metrics = GatewayMetrics()
    seen: list[int] = []

    async def breaking() -> AsyncGenerator[bytes, None]:
        seen.append(metrics.sse_open)
        yield b": one\n\n"
        raise RuntimeError("the stream broke")

    async def send(message: Any) -> None:
        pass

    async def receive() -> Any:
        await asyncio.Event().wait()  # no disconnect: the stream ends by itself

    app = SimpleNamespace(state=SimpleNamespace(metrics=metrics))
    scope = {"type": "http", "method": "GET", "path": "/v1/events", "app": app, "asgi": {"spec_version": "2.4"}}
    with pytest.raises(RuntimeError, match="the stream broke"):
        await EventStream(breaking())(scope, receive, send)
    assert seen == [1]
    assert metrics.sse_open == 0


def test_plugin_action_pairs_past_the_series_limit_share_one_series(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("service.gateway.metrics.MAX_SERIES", 2)
    state = GatewayMetrics()
    for plugin, action in [("A", "a"), ("B", "b"), ("A", "a"), ("C", "c"), ("D", "d")]:
        state.submitted(plugin, action)
    samples = _samples(state.render().decode())
    counted = {labels: value for (name, labels), value in samples.items() if name == "actionq_jobs_total"}
    assert counted == {
        _submitted("A", "a")[1]: 2,
        _submitted("B", "b")[1]: 1,
        _submitted("(other)", "(other)")[1]: 2,
    }
