"""Event models: round trips, the generated reference and its docs page, the bridge's commands and errors."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from redis import exceptions as redis_exc
from redis.asyncio import Redis
from structlog.testing import capture_logs

from service.events.bridge import _BATCH, FIELD, LEGACY_FIELD, EventBridge
from service.events.delegates import DelegateManager
from service.events.jobevents import JobEvents
from service.events.models import (
    EVENT_MODELS,
    BaseEvent,
    Event,
    EventKind,
    JobFailedEvent,
    JobProgressEvent,
    PluginEvent,
    ReceivedEvent,
    describe,
    docs_section,
    parse_event,
    reference_markdown,
    write_docs,
)
from service.events.reader import EventFilter, _decode, _id_before, read_events
from service.keys import Keys
from service.models import ErrorInfo, JobRequest, JobState, ProgressUpdate
from service.settings import Settings
from service.wire import WireError

# The repository root, wherever under tests/ this file lives.
ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
EVENTS_PAGE = ROOT / "docs" / "events.md"
ERROR = ErrorInfo(type="RuntimeError", message="boom", traceback="Traceback ...")
JOB = {"job_id": "j1", "plugin": "PluginB", "action": "calculate_square", "attempt": 2}
WORKER = {"hostname": "h", "pid": 42}
PLUGIN = {"plugin": "PluginB", "version": "1.0.0"}

SAMPLES: dict[EventKind, dict[str, Any]] = {
    EventKind.WORKER_STARTED: {**WORKER, "queues": ["q1"], "plugins": {"PluginB": "1.0.0"}},
    EventKind.WORKER_STOPPED: {**WORKER, "reason": "signal SIGTERM"},
    EventKind.WORKER_PAUSED: {**WORKER, "draining": True, "running_jobs": 2},
    EventKind.WORKER_RESUMED: WORKER,
    EventKind.WORKER_ERROR: {**WORKER, "where": "heartbeat", "error": ERROR},
    EventKind.PLUGIN_LOADED: PLUGIN,
    EventKind.PLUGIN_ENABLED: PLUGIN,
    EventKind.PLUGIN_DISABLED: PLUGIN,
    EventKind.PLUGIN_FAILED: {"plugin": "broken", "reason": "ImportError: no module named x"},
    EventKind.JOB_RECEIVED: {**JOB, "queue": "actionq:queue:default:PluginB"},
    EventKind.JOB_STARTED: {**JOB, "queue": "actionq:queue:default:PluginB"},
    EventKind.JOB_PROGRESS: {**JOB, "progress": ProgressUpdate(current_step=1, total_steps=4, message="m")},
    EventKind.JOB_SUCCEEDED: {**JOB, "duration_ms": 12},
    EventKind.JOB_FAILED: {**JOB, "error": ERROR, "duration_ms": 12},
    EventKind.JOB_RETRYING: {**JOB, "error": ERROR, "retry_in_s": 0.5},
    EventKind.JOB_TIMED_OUT: {**JOB, "timeout_s": 2.0, "error": ERROR},
    EventKind.JOB_CANCELLED: {**JOB, "reason": "user"},
    EventKind.JOB_DEAD_LETTERED: {**JOB, "error": ERROR, "attempts": 3},
    EventKind.DELEGATE_EXECUTION_ERROR: {"event_kind": "job_failed", "delegate": "m.f", "error": ERROR},
}


def sample(kind: EventKind) -> BaseEvent:
    return EVENT_MODELS[kind](worker_id="w1", **SAMPLES[kind])


def typed(kind: EventKind) -> Event:
    """``sample(kind)`` typed as an :data:`Event` (what the bridge and the reader deal in)."""
    return parse_event(sample(kind).model_dump(mode="json"))


def test_every_kind_has_a_model_and_a_sample() -> None:
    assert set(EVENT_MODELS) == set(EventKind) == set(SAMPLES)
    for kind, model in EVENT_MODELS.items():
        assert model.model_fields["kind"].default == kind.value
        assert model.__doc__


@pytest.mark.parametrize("kind", list(EventKind))
def test_round_trip(kind: EventKind) -> None:
    event = sample(kind)
    assert event.kind == kind.value
    assert event.ts_ms > 0
    as_json = event.model_dump_json()
    assert parse_event(as_json) == event
    assert parse_event(as_json.encode()) == event
    assert parse_event(event.model_dump(mode="json")) == event
    assert type(parse_event(as_json)) is EVENT_MODELS[kind]


def test_models_are_frozen_and_strict() -> None:
    event = sample(EventKind.JOB_FAILED)
    with pytest.raises(ValueError, match="frozen"):
        event.worker_id = "other"  # type: ignore[misc]
    data = event.model_dump(mode="json")
    with pytest.raises(WireError, match="surprise: Extra inputs"):
        parse_event({**data, "surprise": 1})
    with pytest.raises(WireError, match="kind"):
        parse_event({**data, "kind": "job_exploded"})
    with pytest.raises(WireError, match="duration_ms"):
        parse_event({k: v for k, v in data.items() if k != "duration_ms"})
    with pytest.raises(WireError):
        parse_event(b"\x80\x04pickle")


def test_received_event_exposes_kind() -> None:
    received = ReceivedEvent("1-0", parse_event(sample(EventKind.JOB_CANCELLED).model_dump()))
    assert received.kind is EventKind.JOB_CANCELLED


def test_describe_is_one_line_of_the_kind_fields() -> None:
    failed = sample(EventKind.JOB_FAILED)
    text = describe(failed)
    assert "job_id=j1" in text
    assert "error=RuntimeError: boom" in text
    assert "worker_id" not in text
    assert "\n" not in text
    progress = describe(sample(EventKind.JOB_PROGRESS))
    assert "progress=25% m" in progress


def test_reference_covers_every_kind_and_field() -> None:
    text = reference_markdown()
    *sections, plugin_section = text.split("#### ")[1:]
    assert [s.split("`")[1] for s in sections] == [k.value for k in EventKind]
    assert plugin_section.startswith("Plugin-defined kinds")
    models: list[type[BaseEvent]] = [*EVENT_MODELS.values(), PluginEvent]
    for section, model in zip([*sections, plugin_section], models, strict=True):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            assert f"| `{name}` |" in section, f"{name} missing from {model.__name__}'s section"
        assert model.__name__ in section
    assert "| `error` | `ErrorInfo` |" in text
    assert '| `delegate_type` | `"notification"` \\| `"control"` |' in text
    assert "| `version` | `str` \\| `null` |" in text


def test_docs_event_reference_is_generated() -> None:
    assert docs_section(EVENTS_PAGE.read_text()) == reference_markdown(), (
        "docs/events.md's event reference is stale: run `actionq events --write-docs docs/events.md`"
    )


def test_write_docs_replaces_only_the_section(tmp_path: Path) -> None:
    path = tmp_path / "events.md"
    path.write_text("# t\n\nbefore\n<!-- events:begin -->\nold\n<!-- events:end -->\nafter\n")
    assert write_docs(path)
    text = path.read_text()
    assert text.startswith("# t\n\nbefore\n<!-- events:begin -->\n")
    assert text.endswith("<!-- events:end -->\nafter\n")
    assert docs_section(text) == reference_markdown()
    assert not write_docs(path)


def test_keys_and_setting() -> None:
    keys = Keys("ns")
    assert keys.events() == "ns:events"
    assert keys.event_channel("job_failed") == "ns:ch:events:job_failed"
    assert keys.event_channel_pattern() == "ns:ch:events:*"
    assert Settings().events_max_len == 100_000
    with pytest.raises(ValueError, match="events_max_len"):
        Settings(events_max_len=99)


def test_filter_and_ids() -> None:
    failed = sample(EventKind.JOB_FAILED).model_dump(mode="json")
    assert EventFilter.of(["job_failed"], plugin="PluginB", job_id="j1", worker_id="w1").matches(failed)
    assert not EventFilter.of([EventKind.JOB_SUCCEEDED]).matches(failed)
    assert not EventFilter.of(plugin="other").matches(failed)
    assert not EventFilter.of(plugin="PluginB").matches(sample(EventKind.WORKER_STOPPED).model_dump())
    assert EventFilter.of().everything
    with pytest.raises(ValueError, match="job_faild"):
        EventFilter.of(["job_faild"])
    assert _id_before("5-3") == "5-2"
    assert _id_before("5-0") == f"4-{2**64 - 1}"
    assert _id_before("0-0") == "0-0"


class _BrokenPipeline:
    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None

    async def execute(self) -> None:
        raise redis_exc.ConnectionError("Redis is down")


class _BrokenRedis:
    def pipeline(self, transaction: bool = True) -> _BrokenPipeline:
        return _BrokenPipeline()


async def test_bridge_logs_redis_errors_and_never_raises() -> None:
    bridge = EventBridge(_BrokenRedis(), Keys("ns"), max_len=100)  # type: ignore[arg-type]
    manager = DelegateManager()
    bridge.attach(manager)
    errors: list[Any] = []
    manager.register("delegate_execution_error", lambda *a, **kw: errors.append(kw))
    event = JobFailedEvent(worker_id="w1", error=ERROR, duration_ms=1, **JOB)
    manager.invoke_notification(event)
    manager.invoke_notification(JobProgressEvent(worker_id="w1", progress=ProgressUpdate(), **JOB))
    await manager.aclose()
    await bridge.aclose()
    assert bridge.failed == 2
    assert bridge.written == 0
    assert errors == []  # the bridge itself did not fail as a delegate


async def test_bridge_buffer_is_bounded() -> None:
    bridge = EventBridge(_BrokenRedis(), Keys("ns"), max_len=100, max_buffer=3)  # type: ignore[arg-type]
    for _ in range(10):
        bridge.publish(sample(EventKind.JOB_SUCCEEDED))  # type: ignore[arg-type]
    assert bridge.dropped == 7
    await bridge.aclose()
    assert bridge.failed == 3


class _RecordingPipeline:
    """Records every command queued on it, whatever its name, and each ``execute``."""

    def __init__(self, calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> None:
        self.calls = calls

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: self.calls.append((name, args, kwargs))

    async def execute(self) -> list[Any]:
        self.calls.append(("execute", (), {}))
        return []


class _RecordingRedis:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def pipeline(self, transaction: bool = True) -> _RecordingPipeline:
        return _RecordingPipeline(self.calls)


async def test_a_flush_is_one_xadd_one_expire_and_one_publish_per_kind() -> None:
    redis = _RecordingRedis()
    bridge = EventBridge(redis, Keys("ns"), max_len=100, ttl_s=60)  # type: ignore[arg-type]
    kinds = [EventKind.JOB_RECEIVED, EventKind.JOB_STARTED, EventKind.JOB_SUCCEEDED] * 4 + [EventKind.JOB_FAILED]
    events = [typed(kind) for kind in kinds]  # K = 13 events of 4 kinds
    for event in events:
        bridge.publish(event)
    await bridge.flush()
    assert bridge.written == 13
    assert Counter(name for name, _, _ in redis.calls) == {"xadd": 1, "expire": 1, "publish": 4, "execute": 1}
    (_, xadd_args, xadd_kwargs), *_ = (call for call in redis.calls if call[0] == "xadd")
    assert xadd_args[0] == "ns:events"
    assert xadd_kwargs == {"maxlen": 100 // 13, "approximate": True}  # about 100 events, in entries of 13
    assert [parse_event(item) for item in json.loads(xadd_args[1][FIELD])] == events
    assert [args for name, args, _ in redis.calls if name == "expire"] == [("ns:events", 60)]
    published = {
        args[0]: [parse_event(item) for item in json.loads(args[1])]
        for name, args, _ in redis.calls
        if name == "publish"
    }
    assert published == {Keys("ns").event_channel(kind): [e for e in events if e.kind == kind] for kind in set(kinds)}


async def test_a_long_buffer_is_flushed_in_batches() -> None:
    redis = _RecordingRedis()
    bridge = EventBridge(redis, Keys("ns"), max_len=100)  # type: ignore[arg-type]
    for _ in range(2 * _BATCH + 1):
        bridge.publish(typed(EventKind.JOB_SUCCEEDED))
    await bridge.flush()
    sizes = [len(json.loads(args[1][FIELD])) for name, args, _ in redis.calls if name == "xadd"]
    assert sizes == [_BATCH, _BATCH, 1]
    # The stream's TTL is set with the first batch, not with every one (a week's TTL, refreshed each minute).
    assert Counter(name for name, _, _ in redis.calls) == {"xadd": 3, "expire": 1, "publish": 3, "execute": 3}
    assert bridge.written == 2 * _BATCH + 1


async def test_under_load_batches_go_out_at_most_once_per_window() -> None:
    redis = _RecordingRedis()
    bridge = EventBridge(redis, Keys("ns"), max_len=100, window_s=0.05)  # type: ignore[arg-type]
    bridge.publish(typed(EventKind.JOB_STARTED))  # after a quiet spell: at once
    await asyncio.sleep(0)
    assert bridge.flushes == 1
    for _ in range(5):  # inside the window: they wait for it to close, and go together
        bridge.publish(typed(EventKind.JOB_SUCCEEDED))
    await bridge.flush()
    sizes = [len(json.loads(args[1][FIELD])) for name, args, _ in redis.calls if name == "xadd"]
    assert sizes == [1, 5]


def test_decode_expands_an_entry_into_its_events() -> None:
    failed, done = typed(EventKind.JOB_FAILED), typed(EventKind.JOB_SUCCEEDED)
    batch = b"[" + failed.model_dump_json().encode() + b"," + done.model_dump_json().encode() + b"]"
    everything = EventFilter.of()
    assert _decode(b"5-1", {FIELD: batch}, everything) == [ReceivedEvent("5-1.0", failed), ReceivedEvent("5-1.1", done)]
    assert _decode("5-1", {"events": batch.decode()}, everything) == _decode(b"5-1", {FIELD: batch}, everything)
    assert _decode(b"5-1", {FIELD: batch}, everything, first=1) == [ReceivedEvent("5-1.1", done)]
    assert _decode(b"5-1", {FIELD: batch}, EventFilter.of(["job_succeeded"])) == [ReceivedEvent("5-1.1", done)]
    old = {LEGACY_FIELD: failed.model_dump_json().encode()}  # one event per entry, as older workers wrote
    assert _decode(b"4-0", old, everything) == [ReceivedEvent("4-0.0", failed)]
    assert _decode(b"4-0", old, everything, first=1) == []


def test_decode_skips_foreign_entries_and_items() -> None:
    done = typed(EventKind.JOB_SUCCEEDED)
    with capture_logs() as logs:
        assert _decode(b"1-0", {b"other": b"x"}, EventFilter.of()) == []
        assert _decode(b"2-0", {FIELD: b'{"kind": "job_succeeded"}'}, EventFilter.of()) == []
        assert _decode(b"3-0", {FIELD: b"\x80\x04pickle"}, EventFilter.of()) == []
        mixed = b'[7,{"kind": "job_exploded"},' + done.model_dump_json().encode() + b"]"
        assert _decode(b"4-0", {FIELD: mixed}, EventFilter.of()) == [ReceivedEvent("4-0.2", done)]
    assert [(log["event"], log["id"]) for log in logs] == [
        ("event_skipped", "1-0"),
        ("event_skipped", "2-0"),
        ("event_skipped", "3-0"),
        ("event_skipped", "4-0.0"),
        ("event_skipped", "4-0.1"),
    ]


async def test_reading_batches_on_fakeredis(fake_redis: Redis) -> None:
    keys = Keys("ns")
    bridge = EventBridge(fake_redis, keys, max_len=100)
    for size in (3, 1, 4):
        for _ in range(size):
            bridge.publish(typed(EventKind.JOB_STARTED))
        await bridge.flush()
    first, second, third = [raw.decode() for raw, _ in await fake_redis.xrange(keys.events())]
    ids = [r.id async for r in read_events(fake_redis, keys, since="0", follow=False)]
    assert ids == [f"{first}.{i}" for i in range(3)] + [f"{second}.0"] + [f"{third}.{i}" for i in range(4)]
    assert [r.id async for r in read_events(fake_redis, keys, since="replay:6", follow=False)] == ids[2:]
    assert [r.id async for r in read_events(fake_redis, keys, since=f"{first}.1", follow=False)] == ids[2:]
    assert [r.id async for r in read_events(fake_redis, keys, since=second, follow=False)] == ids[4:]
    with pytest.raises(ValueError, match="event or stream id"):
        [r async for r in read_events(fake_redis, keys, since="5-1.x", follow=False)]


def test_job_events_built_without_validation_are_valid_events() -> None:
    # JobEvents uses model_construct on the job path: what it builds must parse back unchanged.
    sent: list[Event] = []
    events = JobEvents(sent.append, "w-1")
    request = JobRequest(plugin="P", action="a", params={"x": 1})
    error = ErrorInfo(type="RuntimeError", message="boom")
    events.received("j1", request, 1, "q")
    events.received("j1", None, 1, "q")
    events.started("j1", request, 1, "q")
    events.progress("j1", request, 1, ProgressUpdate(percentage=50.0))
    for state in (JobState.SUCCEEDED, JobState.RETRYING, JobState.TIMED_OUT, JobState.CANCELLED, JobState.FAILED):
        events.finished("j1", request, 1, state=state, error=error, duration_ms=5, retry_in_s=0.5, timeout_s=2.0)
    events.dead_lettered("j1", request, 2, error, 2)
    assert len(sent) == 10
    for event in sent:
        parsed = parse_event(json.loads(event.model_dump_json()))
        assert type(parsed) is type(event)
        assert parsed.model_dump() == event.model_dump()


async def test_on_a_cluster_a_batch_s_sharded_publishes_go_in_its_one_pipeline() -> None:
    from service.redis.cluster import cluster_client

    redis = cluster_client("redis+cluster://127.0.0.1:1", {})  # nothing is sent: the pipeline is only built
    try:
        keys = Keys("ns", partitions=3)
        bridge = EventBridge(redis, keys, max_len=1000)
        batch = [("job_failed", b"{}"), ("job_succeeded", b"{}"), ("job_failed", b"{}")]
        pipe, after = bridge._pipeline(batch)
        assert after == []  # nothing left to send one by one after it
        sent = [command.args[:2] for command in pipe._command_stack]  # type: ignore[attr-defined]
        assert ("SPUBLISH", keys.event_channel("job_failed")) in sent
        assert ("SPUBLISH", keys.event_channel("job_succeeded")) in sent
        _, classic = EventBridge(redis, Keys("ns"), max_len=1000)._pipeline(batch)  # one Redis's names
        assert [channel for channel, _ in classic] == [
            Keys("ns").event_channel(k) for k in ("job_failed", "job_succeeded")
        ]
    finally:
        await redis.aclose()
