"""Job events and stream items as SSE on fakeredis, and the relay's bounded queue and keep-alives."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator

from fastapi.sse import ServerSentEvent

from service.gateway.sse import relay
from service.models import JobState
from service.redis.streams import StreamEnd, entry_id
from service.settings import GatewaySettings
from tests.unit.fakes import register
from tests.unit.gateway.conftest import Gateway, GatewayFactory
from tests.unit.gateway.sse_text import events_of


async def _cancelled_job(gw: Gateway) -> str:
    await register(gw.client, "PluginB")
    handle = await gw.client.submit("PluginB", "calculate_square", {"x": 1})
    await handle.cancel()
    return handle.job_id


async def test_the_events_of_an_ended_job_are_its_final_state_then_the_end(gateway: GatewayFactory) -> None:
    async with gateway() as gw:
        job_id = await _cancelled_job(gw)
        seq = (await gw.client.job(job_id).record()).seq
        reply = await gw.http.get(f"/v1/jobs/{job_id}/events")
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = [e for e in events_of(reply.text) if e.comment is None]
        assert [(e.event, e.id) for e in events] == [("state", str(seq))]
        assert events[0].json()["state"] == JobState.CANCELLED
        # A reconnect after the last event: nothing more, and 204 tells an EventSource to stop.
        after = await gw.http.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": str(seq)})
        assert after.status_code == 204
        assert after.content == b""
        earlier = await gw.http.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": str(seq - 1)})
        assert [e.id for e in events_of(earlier.text) if e.comment is None] == [str(seq)]
        bad = await gw.http.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "0-3"})
        assert bad.status_code == 400
        assert bad.json()["error"]["type"] == "InvalidLastEventIdError"
        assert (await gw.http.get("/v1/jobs/nope/events")).status_code == 404


async def test_stream_items_carry_their_entry_ids_and_resume_after_the_last_one(gateway: GatewayFactory) -> None:
    async with gateway() as gw:
        job_id = await _cancelled_job(gw)  # ended: the reader stops at the marker
        key = gw.client.keys.job_stream(job_id)
        for i, item in enumerate(["a", None, {"n": 3}]):
            await gw.client.redis.xadd(key, {b"v": json.dumps(item).encode()}, id=entry_id(i))
        await gw.client.redis.xadd(key, StreamEnd(JobState.SUCCEEDED, 3).fields(), id=entry_id(3))  # type: ignore[arg-type]
        reply = await gw.http.get(f"/v1/jobs/{job_id}/stream")
        events = [e for e in events_of(reply.text) if e.comment is None]
        assert [(e.event, e.id) for e in events] == [("item", "0-1"), ("item", "0-2"), ("item", "0-3"), ("end", "0-4")]
        assert [e.json() for e in events[:3]] == ["a", None, {"n": 3}]
        assert events[3].json() == {"state": "succeeded", "count": 3, "error": None}
        resumed = await gw.http.get(f"/v1/jobs/{job_id}/stream", headers={"Last-Event-ID": "0-2"})
        assert [e.id for e in events_of(resumed.text) if e.comment is None] == ["0-3", "0-4"]
        ended = await gw.http.get(f"/v1/jobs/{job_id}/stream", headers={"Last-Event-ID": "0-4"})
        assert ended.status_code == 204
        bad = await gw.http.get(f"/v1/jobs/{job_id}/stream", headers={"Last-Event-ID": "7"})
        assert bad.status_code == 400


async def test_a_job_without_a_stream_gets_an_error_event(gateway: GatewayFactory) -> None:
    async with gateway() as gw:
        job_id = await _cancelled_job(gw)
        reply = await gw.http.get(f"/v1/jobs/{job_id}/stream")
        events = [e for e in events_of(reply.text) if e.comment is None]
        assert [e.event for e in events] == ["error"]
        assert events[0].json()["error"]["type"] == "StreamUnavailableError"


async def test_a_client_that_falls_behind_is_dropped_with_a_bounded_queue() -> None:
    settings = GatewaySettings(sse_queue=3, sse_stall_s=0.05, keepalive_s=60)
    produced = 0
    closed = asyncio.Event()

    async def endless() -> AsyncGenerator[ServerSentEvent, None]:
        nonlocal produced
        try:
            while True:
                produced += 1
                yield ServerSentEvent(id=str(produced), raw_data="{}")
        finally:
            closed.set()

    events = relay(endless(), settings, what="test")
    first = await anext(events)
    assert first.id == "1"
    await asyncio.wait_for(closed.wait(), 5)  # the client took nothing more: the source is let go
    rest = [event async for event in events]
    assert produced <= 1 + settings.sse_queue + 1  # never more than the queue (+ the one waiting to go in)
    assert [e.id for e in rest[:-1]] == [str(i) for i in range(2, 2 + len(rest) - 1)]  # in order, no gap
    assert rest[-1].comment is not None
    assert "fell behind" in rest[-1].comment


async def test_an_idle_stream_gets_keep_alive_comments() -> None:
    settings = GatewaySettings(keepalive_s=0.01)
    gate = asyncio.Event()

    async def quiet() -> AsyncGenerator[ServerSentEvent, None]:
        await gate.wait()
        yield ServerSentEvent(id="1", raw_data="{}")

    events = relay(quiet(), settings, what="test")
    ping = await anext(events)
    assert ping.comment == "keep-alive"
    gate.set()
    rest = [e async for e in events if e.comment is None]
    assert [e.id for e in rest] == ["1"]


async def test_a_record_made_unreadable_in_redis_ends_its_event_stream_with_an_error(gateway: GatewayFactory) -> None:
    async with gateway() as gw:
        await register(gw.client, "PluginB")
        handle = await gw.client.submit("PluginB", "calculate_square", {"x": 1})
        key = gw.client.keys.job(handle.job_id)
        await gw.client.redis.hset(key, mapping={"state": "exploded", "seq": "many"})  # type: ignore[misc]  # by hand
        reply = await gw.http.get(f"/v1/jobs/{handle.job_id}/events")
        assert reply.status_code == 500, reply.text  # before any event: the one error shape, naming the field
        assert reply.json()["error"]["type"] == "RecordUnreadableError"
        assert "seq" in reply.json()["error"]["message"]
        assert (await gw.http.get("/healthz")).status_code == 200  # the gateway stays up
