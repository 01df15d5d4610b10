"""Event models: a round trip for every kind, the generated reference, the README, the bridge's error path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from redis import exceptions as redis_exc

from service.delegates import DelegateManager
from service.eventbus import EventBridge, EventFilter, _id_before
from service.events import (
    EVENT_MODELS,
    BaseEvent,
    EventKind,
    JobFailedEvent,
    JobProgressEvent,
    ReceivedEvent,
    describe,
    parse_event,
    readme_section,
    reference_markdown,
    write_readme,
)
from service.keys import Keys
from service.models import ErrorInfo, ProgressUpdate
from service.settings import Settings
from service.wire import WireError

README = Path(__file__).resolve().parents[2] / "README.md"
ERROR = ErrorInfo(type="RuntimeError", message="boom", traceback="Traceback ...")
JOB = {"job_id": "j1", "plugin": "PluginB", "action": "calculate_square", "attempt": 2}
WORKER = {"hostname": "h", "pid": 42}
PLUGIN = {"plugin": "PluginB", "version": "1.0.0"}

SAMPLES: dict[EventKind, dict[str, Any]] = {
    EventKind.WORKER_STARTED: {**WORKER, "queues": ["q1"], "plugins": {"PluginB": "1.0.0"}},
    EventKind.WORKER_STOPPED: {**WORKER, "reason": "signal SIGTERM"},
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
    sections = text.split("#### ")[1:]
    assert [s.split("`")[1] for s in sections] == [k.value for k in EventKind]
    for section, model in zip(sections, EVENT_MODELS.values(), strict=True):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            assert f"| `{name}` |" in section, f"{name} missing from {model.__name__}'s section"
        assert model.__name__ in section
    assert "| `error` | `ErrorInfo` |" in text
    assert '| `delegate_type` | `"notification" \\| "control"` |' in text


def test_readme_event_reference_is_generated() -> None:
    assert readme_section(README.read_text()) == reference_markdown(), (
        "README's event reference is stale: run `actionq events --write-readme README.md`"
    )


def test_write_readme_replaces_only_the_section(tmp_path: Path) -> None:
    path = tmp_path / "README.md"
    path.write_text("# t\n\nbefore\n<!-- events:begin -->\nold\n<!-- events:end -->\nafter\n")
    assert write_readme(path)
    text = path.read_text()
    assert text.startswith("# t\n\nbefore\n<!-- events:begin -->\n")
    assert text.endswith("<!-- events:end -->\nafter\n")
    assert readme_section(text) == reference_markdown()
    assert not write_readme(path)


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
