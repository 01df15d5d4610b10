"""The events bridge and reader against a real Redis: one XADD per batch + one PUBLISH per kind, replay -> live."""

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
from structlog.testing import capture_logs

from service.client.client import JobClient
from service.events.bridge import _BATCH, EVENTS_TTL_S, FIELD, LEGACY_FIELD, EventBridge
from service.events.delegates import DelegateManager
from service.events.models import (
    Event,
    JobFailedEvent,
    JobSucceededEvent,
    ReceivedEvent,
    WorkerStartedEvent,
    parse_event,
)
from service.events.reader import read_events
from service.keys import Keys
from service.models import ErrorInfo
from service.processes.embedded import EmbeddedRedis
from service.redis.cluster import pubsub_client
from service.settings import Settings
from tests.conftest import REPO_ROOT

# On one Redis and on a 3-master Redis Cluster (DESIGN.md section 11).
pytestmark = pytest.mark.topologies

pytestmark = pytest.mark.timeout(60)


def ok(i: int, plugin: str = "p1") -> JobSucceededEvent:
    return JobSucceededEvent(worker_id="w1", job_id=f"j{i}", plugin=plugin, action="a", attempt=1, duration_ms=i)


def failed(i: int, plugin: str = "p1") -> JobFailedEvent:
    error = ErrorInfo(type="RuntimeError", message=f"boom {i}")
    return JobFailedEvent(
        worker_id="w1", job_id=f"f{i}", plugin=plugin, action="a", attempt=1, error=error, duration_ms=1
    )


def index(received: ReceivedEvent) -> int:
    job_id = getattr(received.event, "job_id", None)
    assert isinstance(job_id, str)
    return int(job_id[1:])


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


def flat(entries: list[Any]) -> list[Event]:
    """Every event of the stream entries (each holding a JSON array of events), in order."""
    return [parse_event(item) for _, fields in entries for item in json.loads(fields[FIELD])]


async def entry_ids(redis: Redis, keys: Keys) -> list[str]:
    return [raw.decode() for raw, _ in await redis.xrange(keys.events())]


async def test_bridge_writes_the_stream_and_publishes_per_kind(redis: Redis, namespace: str) -> None:
    keys = Keys(namespace)
    pubsub = pubsub_client(redis).pubsub()  # on a cluster, a plain connection to one node
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

    assert flat(await redis.xrange(keys.events())) == events  # however the delegate lane batched them
    assert 0 < await redis.ttl(keys.events()) <= EVENTS_TTL_S

    direct: list[tuple[str, list[dict[str, Any]]]] = []
    via_pattern: list[tuple[str, dict[str, Any]]] = []
    async with asyncio.timeout(10):
        while len(via_pattern) < 3 or not direct:  # each message is a JSON array of one kind's events
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if message is None:
                continue
            channel, items = message["channel"].decode(), json.loads(message["data"])
            if message["type"] == "message":
                direct.append((channel, items))
            else:
                via_pattern += [(channel, item) for item in items]
    await pubsub.aclose()  # type: ignore[no-untyped-call]
    assert [(c, [d["kind"] for d in items]) for c, items in direct] == [
        (keys.event_channel("job_failed"), ["job_failed"])
    ]
    assert [(c, d["kind"]) for c, d in via_pattern] == [(keys.event_channel(e.kind), e.kind) for e in events]
    assert parse_event(json.dumps(direct[0][1][0])) == events[1]


async def _command_calls(redis: Redis) -> dict[str, int]:
    stats = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


async def test_a_flush_costs_one_xadd_one_expire_and_one_publish_per_kind(
    fresh_redis_server: EmbeddedRedis, namespace: str
) -> None:
    redis = Redis.from_url(fresh_redis_server.url)  # a server of this test alone: nothing else counts
    try:
        await _check_flush_commands(redis, Keys(namespace))
    finally:
        await redis.aclose()


async def _check_flush_commands(redis: Redis, keys: Keys) -> None:
    pubsub = pubsub_client(redis).pubsub()  # on a cluster, a plain connection to one node
    await pubsub.psubscribe(keys.event_channel_pattern())
    events: list[Event] = [ok(0), failed(1), ok(2), WorkerStartedEvent(worker_id="w1", hostname="h", pid=1), ok(3)]
    events += [failed(i) for i in range(4, 12)]
    before = await _command_calls(redis)
    bridge = await write(redis, keys, events)  # K = 13 events of 3 kinds, one flush
    after = await _command_calls(redis)
    spent = {name: after.get(name, 0) - before.get(name, 0) for name in ("xadd", "expire", "publish")}
    assert spent == {"xadd": 1, "expire": 1, "publish": 3}
    assert bridge.written == len(events)

    entries = await redis.xrange(keys.events())
    assert len(entries) == 1
    assert set(entries[0][1]) == {FIELD}
    assert flat(entries) == events
    messages: dict[str, list[Event]] = {}
    async with asyncio.timeout(10):
        while len(messages) < 3:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if message is not None:
                messages[message["channel"].decode()] = [parse_event(item) for item in json.loads(message["data"])]
    await pubsub.aclose()  # type: ignore[no-untyped-call]
    assert messages == {  # each kind's events of the batch, in order, in one message
        keys.event_channel(kind): [e for e in events if e.kind == kind]
        for kind in ("job_succeeded", "job_failed", "worker_started")
    }


async def test_a_big_flush_is_cut_into_entries_of_at_most_a_batch(redis: Redis, namespace: str) -> None:
    keys = Keys(namespace)
    await write(redis, keys, [ok(i) for i in range(2 * _BATCH + 7)])
    entries = await redis.xrange(keys.events())
    assert [len(json.loads(fields[FIELD])) for _, fields in entries] == [_BATCH, _BATCH, 7]
    assert [e.job_id for e in flat(entries)] == [f"j{i}" for i in range(2 * _BATCH + 7)]  # type: ignore[union-attr]


async def test_stream_is_capped_in_events_whatever_the_batch_size(redis: Redis, namespace: str) -> None:
    keys = Keys(namespace)
    bridge = EventBridge(redis, keys, max_len=400)
    for i in range(1000):  # 1000 entries of 2 events: trimmed to about 200 entries
        bridge.publish(ok(2 * i))
        bridge.publish(ok(2 * i + 1))
        await bridge.flush()
    length = await redis.xlen(keys.events())
    assert 200 <= length < 1000  # MAXLEN ~ trims whole nodes: at least the cap, never the lot
    for _ in range(20):  # 20 entries of 100 events: the cap is now 4 entries
        for i in range(100):
            bridge.publish(ok(i))
        await bridge.flush()
    entries = await redis.xrange(keys.events())
    assert len(entries) < 200  # the small entries went: about 400 events kept, not 200 entries of 100
    assert sum(len(json.loads(fields[FIELD])) for _, fields in entries) >= 400
    assert bridge.written == 4000


async def test_since_an_id_is_exclusive_and_follow_false_stops(redis: Redis, namespace: str) -> None:
    keys = Keys(namespace)
    for batch in ([0, 1, 2], [3, 4, 5, 6], [7], [8, 9]):
        await write(redis, keys, [ok(i) for i in batch])
    first, second, third, fourth = await entry_ids(redis, keys)
    got = [r async for r in read_events(redis, keys, since=second, follow=False)]  # after that whole entry
    assert [index(r) for r in got] == [7, 8, 9]
    assert [r.id for r in got] == [f"{third}.0", f"{fourth}.0", f"{fourth}.1"]
    everything = [r async for r in read_events(redis, keys, since="0", follow=False)]
    assert [r.id for r in everything][:4] == [f"{first}.0", f"{first}.1", f"{first}.2", f"{second}.0"]
    assert [index(r) async for r in read_events(redis, keys, since=everything[4].id, follow=False)] == [5, 6, 7, 8, 9]
    assert [r async for r in read_events(redis, keys, since="now", follow=False)] == []
    assert [r async for r in read_events(redis, keys, since=f"{fourth}.1", follow=False)] == []
    replayed = [r async for r in read_events(redis, keys, since="replay:3", follow=False)]
    assert [index(r) for r in replayed] == [7, 8, 9]
    assert [index(r) async for r in read_events(redis, keys, since="replay:100", follow=False)] == list(range(10))
    assert [r async for r in read_events(redis, keys, since="replay:0", follow=False)] == []
    stamp = datetime.fromtimestamp(int(third.split("-")[0]) / 1000, UTC)
    from_time = [index(r) async for r in read_events(redis, keys, since=stamp, follow=False)]
    assert from_time[-1] == 9
    assert 7 in from_time


async def test_resume_from_an_event_in_the_middle_of_an_entry(redis: Redis, namespace: str) -> None:
    keys = Keys(namespace)
    await write(redis, keys, [ok(0), failed(1), ok(2), failed(3), ok(4)])
    await write(redis, keys, [failed(5), ok(6)])
    first, second = await entry_ids(redis, keys)
    got = [r async for r in read_events(redis, keys, since=f"{first}.2", follow=False)]
    assert [(r.id, index(r)) for r in got] == [
        (f"{first}.3", 3),
        (f"{first}.4", 4),
        (f"{second}.0", 5),
        (f"{second}.1", 6),
    ]
    only_failed = [r async for r in read_events(redis, keys, kinds=["job_failed"], since=f"{first}.1", follow=False)]
    assert [r.id for r in only_failed] == [f"{first}.3", f"{second}.0"]  # ids keep their place in the entry

    live = read_events(redis, keys, since=f"{first}.3", block_ms=100)  # the rest, then live
    assert [index(r) for r in await take(live, 3)] == [4, 5, 6]
    await write(redis, keys, [ok(7), ok(8)])
    assert [index(r) for r in await take(live, 2)] == [7, 8]
    await live.aclose()  # type: ignore[attr-defined]


async def test_replay_is_exact_across_entries(redis: Redis, namespace: str) -> None:
    keys = Keys(namespace)
    sizes = [3, 4, 2, *[2] * 80]  # more entries than a replay page
    n = 0
    for size in sizes:
        await write(redis, keys, [ok(i) if i % 3 else failed(i) for i in range(n, n + size)])
        n += size

    async def replay(count: int, **kwargs: Any) -> list[int]:
        return [index(r) async for r in read_events(redis, keys, since=f"replay:{count}", follow=False, **kwargs)]

    for count in (1, 2, 3, 5, 150, n - 8, n - 3, n - 1, n):  # ending mid-entry, on a boundary, in the first
        assert await replay(count) == list(range(n - count, n)), count
    assert await replay(n + 10) == list(range(n))
    matching = [i for i in range(n) if i % 3 == 0]
    for count in (1, 4, 50, len(matching)):
        assert await replay(count, kinds=["job_failed"]) == matching[-count:], count


async def test_old_single_event_entries_still_read(redis: Redis, namespace: str) -> None:
    keys = Keys(namespace)
    old = await redis.xadd(keys.events(), {LEGACY_FIELD: ok(0).model_dump_json()})  # as an older worker wrote
    await write(redis, keys, [ok(1), failed(2)])
    old_id = old.decode()
    new_id = (await entry_ids(redis, keys))[1]
    got = [r async for r in read_events(redis, keys, since="replay:10", follow=False)]
    assert [(r.id, index(r)) for r in got] == [(f"{old_id}.0", 0), (f"{new_id}.0", 1), (f"{new_id}.1", 2)]
    assert [index(r) async for r in read_events(redis, keys, since=old_id, follow=False)] == [1, 2]
    assert [index(r) async for r in read_events(redis, keys, since=f"{old_id}.0", follow=False)] == [1, 2]
    assert [index(r) async for r in read_events(redis, keys, since="replay:2", follow=False)] == [1, 2]
    assert [index(r) async for r in read_events(redis, keys, since="0", follow=False)] == [0, 1, 2]


async def test_foreign_entries_and_items_are_skipped(redis: Redis, namespace: str) -> None:
    keys = Keys(namespace)
    await write(redis, keys, [ok(0)])
    await redis.xadd(keys.events(), {b"other": b"x"})
    await redis.xadd(keys.events(), {FIELD: b'{"not": "a list"}'})
    await redis.xadd(keys.events(), {FIELD: b"[" + ok(1).model_dump_json().encode() + b',{"kind": "job_exploded"},7]'})
    await write(redis, keys, [ok(2)])
    with capture_logs() as logs:
        got = [index(r) async for r in read_events(redis, keys, since="0", follow=False)]
    assert got == [0, 1, 2]
    skipped = [entry["id"] for entry in logs if entry["event"] == "event_skipped"]
    entries = await entry_ids(redis, keys)
    assert skipped == [entries[1], entries[2], f"{entries[3]}.1", f"{entries[3]}.2"]
    assert [index(r) async for r in read_events(redis, keys, since="replay:3", follow=False)] == [0, 1, 2]


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
        return [str(getattr(r.event, "job_id", "")) async for r in read_events(redis, keys, follow=False, **kwargs)]

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
