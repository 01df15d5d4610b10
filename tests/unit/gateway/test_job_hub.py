"""Every follower of one job in a gateway shares one upstream: followed once, each snapshot encoded once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any, cast

import pytest
from fastapi.sse import ServerSentEvent

from service.client.handle import JobHandle
from service.errors import BrokerError
from service.gateway import sse
from service.models import JobState, ProgressSnapshot
from service.settings import GatewaySettings


class FakeClient:
    """Stands for the JobClient the hubs are kept by (weakly)."""


class FakeHandle:
    """A handle whose progress() yields what the test puts in, counting how often it is followed."""

    def __init__(self) -> None:
        self.client = FakeClient()
        self.job_id = "j1"
        self.followed = 0
        self.feed: asyncio.Queue[ProgressSnapshot] = asyncio.Queue()

    async def progress(self) -> AsyncIterator[ProgressSnapshot]:
        self.followed += 1
        while True:
            snap = await self.feed.get()
            yield snap
            if snap.state.is_terminal:
                return


async def job_events(handle: Any, after: int, settings: GatewaySettings) -> AsyncGenerator[ServerSentEvent, None]:
    """The follower's events one by one, as the hub batches them (the route sends each batch's bytes)."""
    async with aclosing(sse._hub(cast(JobHandle, handle)).batches(after, settings)) as batches:
        async for batch in batches:
            for event in batch:
                yield event


def snap(seq: int, state: JobState = JobState.RUNNING) -> ProgressSnapshot:
    return ProgressSnapshot(job_id="j1", seq=seq, state=state)


async def collect(handle: FakeHandle, after: int, into: list[tuple[str | None, str | None]]) -> None:
    async with aclosing(job_events(cast(JobHandle, handle), after, stream_settings(sse_queue=64))) as events:
        async for event in events:
            into.append((event.event, event.id))


async def test_followers_of_one_job_share_one_upstream_and_each_gets_what_is_new_to_it() -> None:
    handle = FakeHandle()
    first: list[tuple[str | None, str | None]] = []
    late: list[tuple[str | None, str | None]] = []
    resumed: list[tuple[str | None, str | None]] = []
    one = asyncio.create_task(collect(handle, -1, first))
    await asyncio.sleep(0)
    await handle.feed.put(snap(1))
    await handle.feed.put(snap(2))
    for _ in range(5):
        await asyncio.sleep(0)
    two = asyncio.create_task(collect(handle, -1, late))  # joins mid-job: gets the current snapshot first
    three = asyncio.create_task(collect(handle, 3, resumed))  # Last-Event-ID 3: nothing at or before it
    for _ in range(5):
        await asyncio.sleep(0)
    await handle.feed.put(snap(3))
    await handle.feed.put(snap(4, JobState.SUCCEEDED))
    await asyncio.wait_for(asyncio.gather(one, two, three), 5)
    assert handle.followed == 1  # one upstream for the three followers
    assert first == [("state", "1"), ("progress", "2"), ("progress", "3"), ("state", "4")]
    assert late[0] == ("state", "2")
    assert late[-1] == ("state", "4")
    assert resumed == [("state", "4")]


async def test_a_new_follower_after_the_end_follows_afresh() -> None:
    handle = FakeHandle()
    done: list[tuple[str | None, str | None]] = []
    await handle.feed.put(snap(5, JobState.FAILED))
    await asyncio.wait_for(collect(handle, -1, done), 5)
    again: list[Any] = []
    await handle.feed.put(snap(5, JobState.FAILED))
    await asyncio.wait_for(collect(handle, -1, again), 5)
    assert done == again == [("state", "5")]
    assert handle.followed == 2


async def test_each_snapshot_is_encoded_once_for_all_its_followers(monkeypatch: pytest.MonkeyPatch) -> None:
    formatted: list[bytes] = []
    real = sse._format

    def counting(event: Any) -> bytes:
        formatted.append(real(event))
        return formatted[-1]

    monkeypatch.setattr(sse, "_format", counting)
    handle = FakeHandle()
    received: list[list[bytes]] = [[], [], []]

    async def one(into: list[bytes]) -> None:
        wire = sse._hub(cast(JobHandle, handle)).wire(-1, stream_settings(sse_queue=64))
        async with aclosing(wire) as chunks:
            async for chunk in chunks:
                into.append(chunk)

    followers = [asyncio.create_task(one(into)) for into in received]
    for _ in range(5):
        await asyncio.sleep(0)
    for seq, state in ((1, JobState.RUNNING), (2, JobState.RUNNING), (3, JobState.SUCCEEDED)):
        await handle.feed.put(snap(seq, state))
    await asyncio.wait_for(asyncio.gather(*followers), 5)
    sent = [b"".join(chunks) for chunks in received]  # a follower that woke to several sends them in one write
    assert sent[0] == sent[1] == sent[2]
    assert [event.split(b"\n")[0] for event in sent[0].split(b"\n\n")[:-1]] == [
        b"event: state",
        b"event: progress",
        b"event: state",
    ]
    assert formatted == [event + b"\n\n" for event in sent[0].split(b"\n\n")[:-1]]  # once a snapshot, not a follower


def stream_settings(**overrides: Any) -> GatewaySettings:
    return GatewaySettings(**{"sse_queue": 3, "sse_stall_s": 60, "keepalive_s": 60, **overrides})


async def test_a_follower_that_lets_its_queue_stay_full_is_dropped_and_the_upstream_let_go() -> None:
    handle = FakeHandle()
    events = job_events(cast(JobHandle, handle), -1, stream_settings(sse_stall_s=0.05))
    first = asyncio.create_task(anext(events))
    await handle.feed.put(snap(1))
    assert (await asyncio.wait_for(first, 5)).id == "1"
    hub = sse._hub(cast(JobHandle, handle))
    for seq in range(2, 6):  # the client reads nothing more: three wait, then the queue is full
        await handle.feed.put(snap(seq))
    while hub.current is None or hub.current[0].seq != 5:
        await asyncio.sleep(0)
    await asyncio.sleep(0.06)  # the queue stays full past sse_stall_s ...
    await handle.feed.put(snap(6))  # ... when the next snapshot comes
    while hub.current[0].seq != 6:
        await asyncio.sleep(0)
    rest = [event async for event in events]
    assert len(rest) == 1
    assert rest[0].comment is not None
    assert "fell behind" in rest[0].comment
    assert hub.task is not None
    await asyncio.wait_for(asyncio.wait({hub.task}), 5)  # its last follower left: nobody follows the job
    assert hub.ended


async def test_an_idle_job_stream_gets_keep_alives_then_its_events() -> None:
    handle = FakeHandle()
    events = job_events(cast(JobHandle, handle), -1, stream_settings(keepalive_s=0.01))
    first = await asyncio.wait_for(anext(events), 5)
    assert first.comment == "keep-alive"
    await handle.feed.put(snap(1, JobState.SUCCEEDED))
    rest = [event async for event in events]
    assert [(e.event, e.id) for e in rest if e.comment is None] == [("state", "1")]


class FailingHandle(FakeHandle):
    async def progress(self) -> AsyncIterator[ProgressSnapshot]:
        self.followed += 1
        raise BrokerError("Redis is gone")
        yield  # pragma: no cover  (an async generator)


async def test_an_upstream_that_fails_ends_the_stream_with_an_error_event() -> None:
    events = [event async for event in job_events(cast(JobHandle, FailingHandle()), -1, stream_settings())]
    assert [event.event for event in events] == ["error"]
    assert json.loads(events[0].raw_data or "")["error"]["type"] == "BrokerError"


async def test_a_follower_that_was_behind_gets_its_pending_snapshots_in_one_write_in_order() -> None:
    # The route's bytes (job_event_stream): a follower that woke to several snapshots sends them as
    # one chunk, each event whole and in order; one that keeps up sends one event a chunk.
    handle = FakeHandle()
    wire = sse._hub(cast(JobHandle, handle)).wire(-1, stream_settings(sse_queue=64))
    first = asyncio.create_task(anext(wire))
    await handle.feed.put(snap(1))
    assert (await asyncio.wait_for(first, 5)).startswith(b"event: state\n")
    hub = sse._hub(cast(JobHandle, handle))
    for seq in (2, 3):  # the follower does not read meanwhile
        await handle.feed.put(snap(seq))
    await handle.feed.put(snap(4, JobState.SUCCEEDED))
    while hub.current is None or hub.current[0].seq != 4:
        await asyncio.sleep(0)
    rest = [chunk async for chunk in wire]
    assert len(rest) == 1
    events = rest[0].split(b"\n\n")
    assert events[-1] == b""
    names_ids = [(e.split(b"\n")[0], e.split(b"\n")[-1]) for e in events[:-1]]
    assert names_ids == [(b"event: progress", b"id: 2"), (b"event: progress", b"id: 3"), (b"event: state", b"id: 4")]
