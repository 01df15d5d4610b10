"""Plugin-defined events (seed 003): a plugin's own notification kinds, checked before they leave it.

A plugin emits ``ctx.notify("ai_response_received", tokens_used=812)`` inside an action, or, in
the seeds' form, ``self.delegates.invoke_notification("ai_response_received", sender=self,
tokens_used=812)`` anywhere in its code. Either way the worker's delegates registered for that
kind (or ``"*"``) get a :class:`PluginEvent`, and the events bridge puts it on the events stream
like any other event. The event names its plugin, version, job, action and attempt (from the
:class:`~service.events.origin.Origin` the code runs in; the job fields are ``null`` outside an
action) and carries the plugin's keyword arguments as ``fields``.

What is refused, at the call, with :class:`InvalidEventError` naming the problem:

* a kind that is not 1-64 lowercase letters, digits and underscores starting with a letter (it
  becomes part of a Redis channel name), or that starts with a built-in namespace (``worker_``,
  ``plugin_``, ``job_``, ``delegate_``: every built-in kind is in one, and future ones will be,
  so a plugin's kind can never collide with one);
* a field whose value is not JSON (named, with its type), or named ``event``, ``sender`` or
  ``event_type`` (delegates receive ``sender``, ``event_type``, ``event=`` and then the fields);
* fields larger than :data:`MAX_FIELDS_BYTES` of JSON (events are notifications; large data
  belongs in the job's result or output stream).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from pydantic import Field, JsonValue, field_validator

from service.errors import InvalidEventError
from service.events.base import BaseEvent
from service.events.origin import Origin
from service.models import now_ms

__all__ = [
    "MAX_FIELDS_BYTES",
    "RESERVED_FIELDS",
    "RESERVED_PREFIXES",
    "InvalidEventError",
    "PluginEvent",
    "check_fields",
    "kind_problem",
    "plugin_event",
]

_KIND_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
RESERVED_PREFIXES = ("worker_", "plugin_", "job_", "delegate_")
"""The namespaces of the built-in event kinds; a plugin's kind may not start with one."""
RESERVED_FIELDS = frozenset({"event", "sender", "event_type"})
"""Field names a plugin event may not use: delegates are called ``(sender, event_type, event=..., **fields)``."""
# The events stream keeps about events_max_len (100,000) events: at 8 KiB each, a stream full of
# the largest plugin events is ~800 MB, the most a deployment should have to plan for.
MAX_FIELDS_BYTES = 8192
"""Largest JSON encoding of a plugin event's fields, in bytes."""


def kind_problem(kind: object) -> str:
    """Why ``kind`` cannot name a plugin's event ('' if it can)."""
    if not isinstance(kind, str):
        return f"an event kind is a string, not {type(kind).__name__}"
    if not _KIND_RE.match(kind):
        return (
            f"{kind!r} is not a valid event kind: use 1-64 lowercase letters, digits and underscores, "
            "starting with a letter"
        )
    prefix = next((p for p in RESERVED_PREFIXES if kind.startswith(p)), None)
    if prefix is not None:
        return f"{kind!r} cannot be a plugin's event kind: names starting with {prefix} are reserved for built-in kinds"
    return ""


class PluginEvent(BaseEvent):
    """An event of a kind a plugin defined and emitted itself (``ctx.notify(kind, **fields)``)."""

    kind: str = Field(description="The plugin's own kind, e.g. `ai_response_received` (never a built-in kind).")
    plugin: str = Field(description="The plugin that emitted it.")
    version: str = Field(default="", description="That plugin's version (from its manifest).")
    job_id: str | None = Field(default=None, description="The job whose action emitted it (`null` outside an action).")
    action: str | None = Field(default=None, description="The action that emitted it (`null` outside an action).")
    attempt: int | None = Field(default=None, ge=0, description="The attempt number (`null` outside an action).")
    fields: dict[str, JsonValue] = Field(
        default_factory=dict, description="The plugin's keyword arguments: JSON values, at most 8 KiB in all."
    )

    @field_validator("kind")
    @classmethod
    def _plugin_kind(cls, kind: str) -> str:
        problem = kind_problem(kind)
        if problem:
            raise ValueError(problem)
        return kind


def _field_problem(name: object, value: Any) -> str:
    if not isinstance(name, str) or not name:
        return f"{name!r}: a field name must be a non-empty string"
    if name in RESERVED_FIELDS:
        return f"{name}: reserved (delegates are called with sender, event_type and event=)"
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        return f"{name}: not JSON ({type(value).__name__}: {exc})"
    return ""


def check_fields(kind: str, fields: Mapping[str, Any], *, limit: int = MAX_FIELDS_BYTES) -> dict[str, Any]:
    """``fields`` as readers will see them (JSON round trip: tuples become lists); raises :class:`InvalidEventError`."""
    problems = [problem for name, value in fields.items() if (problem := _field_problem(name, value))]
    if problems:
        raise InvalidEventError(f"event {kind!r}: field(s) not accepted: {'; '.join(problems)}")
    text = json.dumps(dict(fields), allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    size = len(text.encode())
    if size > limit:
        raise InvalidEventError(
            f"event {kind!r}: its fields are {size} bytes of JSON, over the limit of {limit} bytes "
            "(large data belongs in the job's result or output stream)"
        )
    data: dict[str, Any] = json.loads(text)
    return data


def plugin_event(kind: str, fields: Mapping[str, Any], origin: Origin | None, worker_id: str) -> PluginEvent:
    """The :class:`PluginEvent` ``kind`` with ``fields``, emitted by the code of ``origin``.

    Raises :class:`InvalidEventError` for a bad kind or fields, and :class:`LookupError` outside
    plugin code (``origin`` is ``None``: there is no plugin the event could name).
    """
    problem = kind_problem(kind)
    if problem:
        raise InvalidEventError(problem)
    if origin is None:
        raise LookupError(
            f"the event {kind!r} was emitted outside plugin code: a plugin's event kind can only be emitted by "
            "its plugin (an action, on_load/on_enable/on_disable, a delegate or task it started)"
        )
    data = check_fields(kind, fields)
    # Everything is checked above: model_construct skips validating it all again.
    return PluginEvent.model_construct(
        kind=kind,
        worker_id=worker_id,
        ts_ms=now_ms(),
        plugin=origin.plugin,
        version=origin.version,
        job_id=origin.job_id,
        action=origin.action,
        attempt=origin.attempt,
        fields=data,
    )
