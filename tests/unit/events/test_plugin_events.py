"""Plugin-defined events (seed 003): kind names, fields, the model, delegates, the bridge and readers."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import pytest
from redis.asyncio import Redis

from service.events.bridge import EventBridge
from service.events.delegates import DelegateManager
from service.events.models import EventKind, PluginEvent, check_kind_names, describe, parse_event
from service.events.origin import Origin, current_origin, running_as
from service.events.pluginevents import (
    MAX_FIELDS_BYTES,
    RESERVED_PREFIXES,
    InvalidEventError,
    check_fields,
    kind_problem,
    plugin_event,
)
from service.events.reader import EventFilter, read_events
from service.keys import Keys
from service.wire import WireError

pytestmark = pytest.mark.timeout(30)

OWNER = object()
IN_JOB = Origin(owner=OWNER, plugin="ai", version="2.1.0", job_id="j1", action="respond", attempt=2)


# -- kind names -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["ai_response_received", "a", "x9", "cache_warmed_2", "a" * 64])
def test_valid_plugin_kinds(kind: str) -> None:
    assert kind_problem(kind) == ""


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("AI_Response", "not a valid event kind"),
        ("ai-response", "not a valid event kind"),
        ("ai.response", "not a valid event kind"),
        ("", "not a valid event kind"),
        ("9lives", "not a valid event kind"),
        ("a" * 65, "not a valid event kind"),
        ("*", "not a valid event kind"),
        ("job_failed", "reserved for built-in kinds"),
        ("job_step_done", "reserved for built-in kinds"),
        ("worker_custom", "reserved for built-in kinds"),
        ("plugin_ready", "reserved for built-in kinds"),
        ("delegate_x", "reserved for built-in kinds"),
    ],
)
def test_invalid_plugin_kinds_are_named_with_the_reason(kind: str, reason: str) -> None:
    problem = kind_problem(kind)
    assert reason in problem
    assert repr(kind) in problem
    with pytest.raises(InvalidEventError, match=reason):
        plugin_event(kind, {}, IN_JOB, "w1")


def test_a_kind_must_be_a_string() -> None:
    assert kind_problem(3) == "an event kind is a string, not int"


def test_every_builtin_kind_is_in_a_reserved_namespace() -> None:
    # What keeps plugin kinds and built-in kinds (today's and future ones) apart.
    for kind in EventKind:
        assert kind_problem(kind.value), kind
        assert kind.value.startswith(RESERVED_PREFIXES), kind


def test_kind_names_for_filters_and_registrations() -> None:
    assert check_kind_names(["job_failed", EventKind.JOB_STARTED, "ai_response_received"]) == {
        "job_failed",
        "job_started",
        "ai_response_received",
    }
    with pytest.raises(ValueError, match="job_faild") as caught:
        check_kind_names(["job_faild", "ok_kind"])  # a typo of a built-in kind is not taken for a plugin's
    assert "ok_kind" not in str(caught.value)
    with pytest.raises(ValueError, match="Bad-Kind"):
        check_kind_names(["Bad-Kind"])


# -- fields ---------------------------------------------------------------------------------------
def test_fields_are_json_and_read_back_as_readers_see_them() -> None:
    fields = {"tokens_used": 812, "cost": 0.8, "model": "m", "tags": ("a", "b"), "usage": {"in": 1}, "none": None}
    assert check_fields("k", fields) == {
        "tokens_used": 812,
        "cost": 0.8,
        "model": "m",
        "tags": ["a", "b"],  # a tuple is a JSON array
        "usage": {"in": 1},
        "none": None,
    }


def test_non_json_fields_are_refused_naming_each_with_its_type() -> None:
    with pytest.raises(InvalidEventError) as caught:
        check_fields("ai_x", {"ok": 1, "when": {1, 2}, "obj": object(), "nan": math.nan})
    message = str(caught.value)
    assert "'ai_x'" in message
    assert "when: not JSON (set" in message
    assert "obj: not JSON (object" in message
    assert "nan: not JSON (float" in message
    assert "ok" not in message.replace("not ", "")


@pytest.mark.parametrize("name", ["event", "sender", "event_type"])
def test_reserved_field_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidEventError, match=f"{name}: reserved"):
        check_fields("k", {name: 1})


def test_fields_over_the_size_limit_are_refused() -> None:
    check_fields("k", {"blob": "x" * (MAX_FIELDS_BYTES - 20)})
    with pytest.raises(InvalidEventError, match=f"over the limit of {MAX_FIELDS_BYTES} bytes"):
        check_fields("k", {"blob": "x" * MAX_FIELDS_BYTES})


# -- the model ------------------------------------------------------------------------------------
def test_a_plugin_event_names_its_plugin_and_job_and_round_trips() -> None:
    event = plugin_event("ai_response_received", {"tokens_used": 812}, IN_JOB, "w1")
    assert (event.kind, event.worker_id, event.plugin, event.version) == ("ai_response_received", "w1", "ai", "2.1.0")
    assert (event.job_id, event.action, event.attempt) == ("j1", "respond", 2)
    assert event.fields == {"tokens_used": 812}
    assert event.ts_ms > 0
    parsed = parse_event(event.model_dump_json())
    assert type(parsed) is PluginEvent
    assert parsed == event
    assert parse_event(event.model_dump(mode="json")) == event


def test_outside_an_action_the_job_fields_are_null() -> None:
    event = plugin_event("cache_warmed", {}, IN_JOB.outside_job(), "w1")
    assert (event.plugin, event.job_id, event.action, event.attempt) == ("ai", None, None, None)
    assert json.loads(event.model_dump_json())["job_id"] is None


def test_outside_plugin_code_there_is_no_plugin_to_name() -> None:
    with pytest.raises(LookupError, match="outside plugin code"):
        plugin_event("cache_warmed", {}, None, "w1")


def test_parsing_refuses_what_is_not_a_plugin_event() -> None:
    base = {"kind": "ai_x", "worker_id": "w", "plugin": "p"}
    assert type(parse_event(base)) is PluginEvent
    with pytest.raises(WireError, match="surprise: Extra inputs"):
        parse_event({**base, "surprise": 1})
    with pytest.raises(ValueError, match="reserved for built-in kinds"):
        PluginEvent.model_validate({**base, "kind": "job_exploded"})
    with pytest.raises(WireError, match="kind"):
        parse_event({**base, "kind": "Not-A-Kind"})
    with pytest.raises(WireError, match="plugin"):
        parse_event({"kind": "ai_x", "worker_id": "w"})


def test_describe_shows_the_plugin_then_its_fields() -> None:
    event = plugin_event("ai_response_received", {"tokens_used": 812, "model": "m"}, IN_JOB, "w1")
    assert describe(event) == "plugin=ai version=2.1.0 job_id=j1 action=respond attempt=2 tokens_used=812 model=m"
    outside = plugin_event("cache_warmed", {"n": 3}, IN_JOB.outside_job(), "w1")
    assert describe(outside) == "plugin=ai version=2.1.0 n=3"


def test_filters_take_plugin_kinds() -> None:
    event = plugin_event("ai_response_received", {}, IN_JOB, "w1").model_dump(mode="json")
    assert EventFilter.of(["ai_response_received"], plugin="ai", job_id="j1").matches(event)
    assert not EventFilter.of(["ai_request_prepared"]).matches(event)
    with pytest.raises(ValueError, match="job_faild"):
        EventFilter.of(["job_faild"])


# -- delegates ------------------------------------------------------------------------------------
class Seen:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, str, dict[str, Any], Origin | None]] = []

    def __call__(self, sender: Any, event_type: str, **kwargs: Any) -> None:
        self.calls.append((sender, event_type, kwargs, current_origin()))


async def test_the_seed_form_reaches_delegates_with_the_fields_as_keywords() -> None:
    manager = DelegateManager(worker_id="w1")
    seen, everything = Seen(), Seen()
    manager.register("ai_response_received", seen)
    manager.register("*", everything)
    plugin = object()
    with running_as(Origin(owner=plugin, plugin="ai", version="2.1.0", job_id="j1", action="respond", attempt=1)):
        manager.invoke_notification("ai_response_received", sender=plugin, tokens_used=812, cost=0.5)
        manager.invoke_notification("ai_request_prepared", plugin, target_model="m")
    await manager.aclose()
    [(sender, kind, kwargs, _)] = seen.calls
    assert (sender, kind) == (plugin, "ai_response_received")
    event = kwargs.pop("event")
    assert kwargs == {"tokens_used": 812, "cost": 0.5}  # the seeds' delegates read kwargs["tokens_used"]
    assert isinstance(event, PluginEvent)
    assert (event.plugin, event.job_id, event.worker_id, event.fields) == ("ai", "j1", "w1", kwargs)
    assert [kind for _, kind, _, _ in everything.calls] == ["ai_response_received", "ai_request_prepared"]


async def test_bad_plugin_events_raise_at_the_call() -> None:
    manager = DelegateManager(worker_id="w1")
    with running_as(IN_JOB):
        with pytest.raises(InvalidEventError, match="job_done"):
            manager.invoke_notification("job_done", sender=None)
        with pytest.raises(InvalidEventError, match="when: not JSON"):
            manager.invoke_notification("ai_x", sender=None, when=object())
    with pytest.raises(LookupError, match="outside plugin code"):
        manager.invoke_notification("ai_x", sender=None)
    with pytest.raises(TypeError, match="fields go with a kind name"):
        manager.invoke_notification(plugin_event("ai_x", {}, IN_JOB, "w1"), None, extra=1)
    await manager.aclose()


def test_registering_for_kinds() -> None:
    manager = DelegateManager()
    reg = manager.register("ai_response_received", Seen(), kinds=["job_failed"])
    assert reg.kinds == frozenset({"ai_response_received", "job_failed"})
    with pytest.raises(ValueError, match="job_faild"):
        manager.register("job_faild", Seen())
    with pytest.raises(ValueError, match="Bad-Kind"):
        manager.register("Bad-Kind", Seen())


# -- the bridge and the reader --------------------------------------------------------------------
async def test_plugin_events_cross_redis_and_read_back_by_kind(fake_redis: Redis) -> None:
    keys = Keys("ns")
    manager = DelegateManager(worker_id="w1")
    bridge = EventBridge(fake_redis, keys, max_len=1000)
    bridge.attach(manager)
    async with fake_redis.pubsub() as channel:
        await channel.subscribe(keys.event_channel("ai_response_received"))
        await channel.get_message(timeout=1)  # the subscribe confirmation
        with running_as(IN_JOB):
            manager.invoke_notification("ai_request_prepared", sender=None, target_model="m")
            manager.invoke_notification("ai_response_received", sender=None, tokens_used=812)
        await manager.aclose()
        await bridge.aclose()
        message = None
        async with asyncio.timeout(5):
            while message is None:
                message = await channel.get_message(ignore_subscribe_messages=True, timeout=1)
    [published] = json.loads(message["data"])
    assert (published["kind"], published["fields"]) == ("ai_response_received", {"tokens_used": 812})
    read = [
        r async for r in read_events(fake_redis, keys, kinds=["ai_response_received"], since="replay:10", follow=False)
    ]
    assert [(r.kind, getattr(r.event, "job_id", None)) for r in read] == [("ai_response_received", "j1")]
    assert isinstance(read[0].event, PluginEvent)
    assert read[0].event.fields == {"tokens_used": 812}
    everything = [r.kind async for r in read_events(fake_redis, keys, since="replay:10", follow=False)]
    assert everything == ["ai_request_prepared", "ai_response_received"]
