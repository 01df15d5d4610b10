"""The events bridge and reader against a real Redis: XADD + PUBLISH per kind, replay -> live handover."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from redis.asyncio import Redis

from service.client import JobClient
from service.delegates import DelegateManager
from service.eventbus import EVENTS_TTL_S, FIELD, EventBridge, read_events
from service.events import Event, JobFailedEvent, JobSucceededEvent, ReceivedEvent, WorkerStartedEvent, parse_event
from service.keys import Keys
from service.models import ErrorInfo
from service.settings import Settings
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.timeout(60)


def ok(i: int, plugin: str = "p1") -> JobSucceededEvent:
    return JobSucceededEvent(worker_id="w1", job_id=f"j{i}", plugin=plugin, action="a", attempt=1, duration_ms=i)


def failed(i: int, plugin: str = "p1") -> JobFailedEvent:
    error = ErrorInfo(type="RuntimeError", message=f"boom {i}")
    return JobFailedEvent(
        worker_id="w1", job_id=f"f{i}", plugin=plugin, action="a", attempt=1, error=error, duration_ms=1
    )


def index(received: ReceivedEvent) -> int:
    return int(received.event.job_id[1:])  # type: ignore[union-attr]


async def write(redis: Redis, keys: Keys, events: list[Any], max_len: int = 10_000) -> EventBridge:
    bridge = EventBridge(redis, keys, max_len=max_len)
    for event in events:
        bridge.publish(event)
    await bridge.flush()
    return bridge


async def take(events: AsyncIterator[ReceivedEvent], n: int) -> list[ReceivedEvent]:
    out: list[ReceivedEvent] = []
    if n == 0:
        return out
    async with asyncio.timeout(20):
        async for received in events:
            out.append(received)
            if len(out) == n:
                break
    return out


async def test_bridge_writes_the_stream_and_publishes_per_kind(redis: Redis, namespace: str) -> None:
    keys = Keys(namespace)
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.event_channel("job_failed"))
    await pubsub.psubscribe(keys.event_channel_pattern())
    manager = DelegateManager()
    bridge = EventBridge(redis, keys, max_len=1000)
    bridge.attach(manager)
    events: list[Event] = [ok(1), failed(2), WorkerStartedEvent(worker_id="w1", hostname="h", pid=1)]
    for event in events:
        manager.invoke_notification(event)
    await manager.aclose()
    await bridge.aclose()
    assert bridge.written == 3

    entries = await redis.xrange(keys.events())
    assert [parse_event(fields[FIELD]) for _, fields in entries] == events
    assert 0 < await redis.ttl(keys.events()) <= EVENTS_TTL_S

    seen: list[tuple[str, str, dict[str, Any]]] = []
    async with asyncio.timeout(10):
        while len(seen) < 4:  # 3 via the pattern + job_failed on its own channel
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if message is not None:
                seen.append((message["type"], message["channel"].decode(), json.loads(message["data"])))
    await pubsub.aclose()  # type: ignore[no-untyped-call]
    direct = [s for s in seen if s[0] == "message"]
    assert [(c, d["kind"]) for _, c, d in direct] == [(keys.event_channel("job_failed"), "job_failed")]
    via_pattern = [(c, d["kind"]) for t, c, d in seen if t == "pmessage"]
    assert via_pattern == [(keys.event_channel(e.kind), e.kind) for e in events]
    assert parse_event(json.dumps(direct[0][2])) == events[1]


async def test_stream_is_capped(redis: Redis, namespace: str) -> None:
    keys = Keys(namespace)
    await write(redis, keys, [ok(i) for i in range(2000)], max_len=100)
    length = await redis.xlen(keys.events())
    assert 100 <= length < 2000  # MAXLEN ~ trims whole nodes: at least the cap, never the lot


async def test_since_an_id_is_exclusive_and_follow_false_stops(redis: Redis, namespace: str) -> None:
    keys = Keys(namespace)
    await write(redis, keys, [ok(i) for i in range(10)])
    ids = [raw.decode() for raw, _ in await redis.xrange(keys.events())]
    got = [r async for r in read_events(redis, keys, since=ids[3], follow=False)]
    assert [index(r) for r in got] == list(range(4, 10))
    assert [r.id for r in got] == ids[4:]
    assert [r async for r in read_events(redis, keys, since="now", follow=False)] == []
    replayed = [r async for r in read_events(redis, keys, since="replay:3", follow=False)]
    assert [index(r) for r in replayed] == [7, 8, 9]
    assert [index(r) async for r in read_events(redis, keys, since="replay:100", follow=False)] == list(range(10))
    stamp = datetime.fromtimestamp(int(ids[5].split("-")[0]) / 1000, UTC)
    from_time = [index(r) async for r in read_events(redis, keys, since=stamp, follow=False)]
    assert from_time[-1] == 9
    assert 5 in from_time


async def test_since_now_sees_only_new_events(redis: Redis, namespace: str) -> None:
    keys = Keys(namespace)
    await write(redis, keys, [failed(i) for i in range(5)])  # before the reader: never seen
    events = read_events(redis, keys, since="now", block_ms=100)

    async def next_event() -> ReceivedEvent:
        return await anext(events)

    first = asyncio.create_task(next_event())
    i = 0
    while not first.done():  # the reader starts at some point during this loop
        await write(redis, keys, [ok(i)])
        i += 1
        await asyncio.sleep(0.01)
    got = [first.result(), *await take(events, i - 1 - index(first.result()))]
    assert [index(r) for r in got] == list(range(index(first.result()), i))  # no gap, all new
    await events.aclose()  # type: ignore[attr-defined]


async def test_replay_then_live_has_no_gap_and_no_duplicate(redis: Redis, namespace: str) -> None:
    keys = Keys(namespace)
    await write(redis, keys, [ok(i) for i in range(20)])
    total = 300

    async def writer() -> None:  # keeps writing while the reader replays and switches to live
        bridge = EventBridge(redis, keys, max_len=10_000)
        for i in range(20, total):
            bridge.publish(ok(i))
            if i % 7 == 0:
                await bridge.flush()
        await bridge.flush()

    writing = asyncio.create_task(writer())
    got: list[int] = []
    async with asyncio.timeout(30):
        async for received in read_events(redis, keys, since="replay:5", block_ms=100):
            got.append(index(received))
            if got[-1] == total - 1:
                break
    await writing
    assert got == list(range(got[0], total))  # consecutive: nothing missed, nothing twice
    assert got[0] >= 15


async def test_filters_by_kind_plugin_and_job(redis: Redis, namespace: str) -> None:
    keys = Keys(namespace)
    mixed = [ok(0, "p1"), failed(1, "p1"), failed(2, "p2"), ok(3, "p2"), failed(4, "p1"), failed(5, "p1")]
    await write(redis, keys, [*mixed, WorkerStartedEvent(worker_id="w1", hostname="h", pid=1)])

    async def ids(**kwargs: Any) -> list[str]:
        return [r.event.job_id async for r in read_events(redis, keys, follow=False, **kwargs)]  # type: ignore[union-attr]

    assert await ids(kinds=["job_failed"], plugin="p1", since="replay:100") == ["f1", "f4", "f5"]
    assert await ids(kinds=["job_failed"], plugin="p1", since="replay:2") == ["f4", "f5"]  # the last 2 *matching*
    assert await ids(plugin="p2", since="replay:10") == ["f2", "j3"]
    assert await ids(job_id="j3", since="replay:10") == ["j3"]
    kinds = [r.event.kind async for r in read_events(redis, keys, kinds=["worker_started"], since="0", follow=False)]
    assert kinds == ["worker_started"]
    with pytest.raises(ValueError, match="job_faild"):
        await ids(kinds=["job_faild"])
    with pytest.raises(ValueError, match="replay:N"):
        await ids(since="replay:x")
    with pytest.raises(ValueError, match="stream id"):
        await ids(since="yesterday")


async def test_client_events_wraps_the_reader(redis: Redis, redis_url: str, namespace: str) -> None:
    keys = Keys(namespace)
    await write(redis, keys, [ok(i) for i in range(5)])
    client = JobClient(redis, Settings(redis_url=redis_url, namespace=namespace), owns_redis=False)
    events = client.events(kinds=["job_succeeded"], since="replay:2")
    got = await take(events, 2)
    assert [index(r) for r in got] == [3, 4]
    await write(redis, keys, [ok(5)])
    assert [index(r) for r in await take(events, 1)] == [5]  # then live
    await events.aclose()  # type: ignore[attr-defined]


def _env(redis_url: str, namespace: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTIONQ_")}
    return {**env, "ACTIONQ_REDIS_URL": redis_url, "ACTIONQ_NAMESPACE": namespace, "ACTIONQ_LOG_FORMAT": "json"}


async def test_cli_prints_recent_events_and_follows(redis: Redis, redis_url: str, namespace: str) -> None:
    keys = Keys(namespace)
    await write(redis, keys, [ok(0), failed(1), ok(2)])
    cmd = [sys.executable, "-m", "service", "events"]
    env = _env(redis_url, namespace)
    done = await asyncio.to_thread(
        subprocess.run, [*cmd, "--kind", "job_failed", "--json"], env=env, capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(line["event"]["kind"], line["event"]["job_id"]) for line in lines] == [("job_failed", "f1")]
    table = await asyncio.to_thread(subprocess.run, cmd, env=env, capture_output=True, text=True, cwd=REPO_ROOT)
    assert [line.split()[2] for line in table.stdout.splitlines()] == ["job_succeeded", "job_failed", "job_succeeded"]
    assert "error=RuntimeError: boom 1" in table.stdout

    proc = await asyncio.create_subprocess_exec(
        *cmd, "--since", "now", "--follow", "--json", env=env, stdout=subprocess.PIPE, cwd=REPO_ROOT
    )
    assert proc.stdout is not None
    try:
        line = asyncio.create_task(proc.stdout.readline())
        i = 100
        while not line.done():  # keep writing until the follower, once started, prints one
            await write(redis, keys, [ok(i)])
            i += 1
            await asyncio.wait([line], timeout=0.05)
        assert json.loads(line.result())["event"]["kind"] == "job_succeeded"
    finally:
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(20):
            code = await proc.wait()
    assert code == 0  # Ctrl-C stops it cleanly
