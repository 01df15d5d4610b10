"""Events: one typed, documented model per kind of notification a worker emits.

Every notification a worker's :class:`~service.delegates.DelegateManager` delivers is one of the
models below (``kind`` is the discriminator), and the same JSON crosses Redis (the events
stream and channels of :mod:`service.events.bridge`), so a delegate in the worker, a Python client
and ``redis-cli`` in another language all see the same fields::

    BaseEvent                      kind, worker_id, ts_ms
    ├── worker_started / worker_stopped / worker_error     (+ hostname, pid, ...)
    ├── plugin_loaded / plugin_enabled / plugin_disabled / plugin_failed   (+ plugin, version)
    ├── job_received / job_started / job_progress / job_succeeded / job_failed / job_retrying /
    │   job_timed_out / job_cancelled / job_dead_lettered  (+ job_id, plugin, action, attempt)
    ├── delegate_execution_error   a delegate raised or timed out (reported by the manager)
    └── PluginEvent                any other kind: a plugin's own (service.events.pluginevents)

The docs' event reference (``docs/events.md``, between :data:`DOCS_BEGIN` and :data:`DOCS_END`)
is generated from these models by :func:`reference_markdown` (a unit test keeps it equal);
regenerate it with ``actionq events --write-docs docs/events.md``.
"""

from __future__ import annotations

import json
import types
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import Discriminator, Field, Tag, TypeAdapter, ValidationError

from service.events.base import BaseEvent
from service.events.pluginevents import PluginEvent, kind_problem
from service.models import ErrorInfo, ProgressUpdate
from service.wire import WireError

__all__ = [
    "EVENT_MODELS",
    "BaseEvent",
    "BuiltinEvent",
    "DelegateExecutionErrorEvent",
    "Event",
    "EventKind",
    "JobCancelledEvent",
    "JobDeadLetteredEvent",
    "JobFailedEvent",
    "JobProgressEvent",
    "JobReceivedEvent",
    "JobRetryingEvent",
    "JobStartedEvent",
    "JobSucceededEvent",
    "JobTimedOutEvent",
    "PluginDisabledEvent",
    "PluginEnabledEvent",
    "PluginEvent",
    "PluginFailedEvent",
    "PluginLoadedEvent",
    "ReceivedEvent",
    "WorkerErrorEvent",
    "WorkerStartedEvent",
    "WorkerStoppedEvent",
    "WorkerPausedEvent",
    "WorkerResumedEvent",
    "check_kind_names",
    "describe",
    "parse_event",
    "docs_section",
    "reference_markdown",
    "write_docs",
]

DOCS_BEGIN = "<!-- events:begin -->"
"""The line before the generated event reference in a docs page."""
DOCS_END = "<!-- events:end -->"
"""The line after it."""


class EventKind(StrEnum):
    """Every kind of event, in the order of the reference (worker, plugin, job, delegate)."""

    WORKER_STARTED = "worker_started"
    WORKER_STOPPED = "worker_stopped"
    WORKER_PAUSED = "worker_paused"
    WORKER_RESUMED = "worker_resumed"
    WORKER_ERROR = "worker_error"
    PLUGIN_LOADED = "plugin_loaded"
    PLUGIN_ENABLED = "plugin_enabled"
    PLUGIN_DISABLED = "plugin_disabled"
    PLUGIN_FAILED = "plugin_failed"
    JOB_RECEIVED = "job_received"
    JOB_STARTED = "job_started"
    JOB_PROGRESS = "job_progress"
    JOB_SUCCEEDED = "job_succeeded"
    JOB_FAILED = "job_failed"
    JOB_RETRYING = "job_retrying"
    JOB_TIMED_OUT = "job_timed_out"
    JOB_CANCELLED = "job_cancelled"
    JOB_DEAD_LETTERED = "job_dead_lettered"
    DELEGATE_EXECUTION_ERROR = "delegate_execution_error"


def _kind(kind: EventKind) -> Any:
    return Field(default=kind.value, description=f'Always `"{kind.value}"`: the discriminator.')


# -- worker ---------------------------------------------------------------------------------------
class _WorkerEvent(BaseEvent):
    hostname: str = Field(description="The worker's host.")
    pid: int = Field(description="The worker's process id.")


class WorkerStartedEvent(_WorkerEvent):
    """The worker is up: plugins loaded, about to take jobs."""

    kind: Literal["worker_started"] = _kind(EventKind.WORKER_STARTED)
    queues: list[str] = Field(default_factory=list, description="The arq queues it reads.")
    plugins: dict[str, str] = Field(default_factory=dict, description="Plugins it serves: name -> version.")


class WorkerStoppedEvent(_WorkerEvent):
    """The worker has stopped taking jobs and is exiting."""

    kind: Literal["worker_stopped"] = _kind(EventKind.WORKER_STOPPED)
    reason: str = Field(default="", description='Why, e.g. "signal SIGTERM" (empty if unknown).')


class WorkerPausedEvent(_WorkerEvent):
    """The worker stopped taking jobs on a control command (``pause``, or ``drain``: then it exits
    once its running jobs are done); the running ones go on."""

    kind: Literal["worker_paused"] = _kind(EventKind.WORKER_PAUSED)
    draining: bool = Field(default=False, description="A drain: the worker exits when its running jobs end.")
    running_jobs: int = Field(default=0, description="Jobs still running on it.")


class WorkerResumedEvent(_WorkerEvent):
    """The worker takes jobs again (a ``resume`` control command)."""

    kind: Literal["worker_resumed"] = _kind(EventKind.WORKER_RESUMED)


class WorkerErrorEvent(_WorkerEvent):
    """An error in the worker itself (not in a job), which it survived."""

    kind: Literal["worker_error"] = _kind(EventKind.WORKER_ERROR)
    where: str = Field(description='What the worker was doing, e.g. "heartbeat".')
    error: ErrorInfo = Field(description="The error.")


# -- plugins --------------------------------------------------------------------------------------
class _PluginEvent(BaseEvent):
    plugin: str = Field(description="Plugin name.")
    version: str = Field(description="Plugin version (from its manifest).")


class PluginLoadedEvent(_PluginEvent):
    """A plugin's manifest and code were loaded and its ``on_load`` ran."""

    kind: Literal["plugin_loaded"] = _kind(EventKind.PLUGIN_LOADED)


class PluginEnabledEvent(_PluginEvent):
    """A plugin's ``on_enable`` finished: its actions can run."""

    kind: Literal["plugin_enabled"] = _kind(EventKind.PLUGIN_ENABLED)


class PluginDisabledEvent(_PluginEvent):
    """A plugin was disabled (``on_disable`` ran): its actions no longer run here."""

    kind: Literal["plugin_disabled"] = _kind(EventKind.PLUGIN_DISABLED)


class PluginFailedEvent(BaseEvent):
    """A plugin could not be loaded or enabled; it is skipped, the others keep working."""

    kind: Literal["plugin_failed"] = _kind(EventKind.PLUGIN_FAILED)
    plugin: str = Field(description="Plugin name (from config.yml).")
    version: str | None = Field(default=None, description="Plugin version, if its manifest could be read.")
    reason: str = Field(description="What failed, e.g. the import error.")


# -- jobs -----------------------------------------------------------------------------------------
class _JobEvent(BaseEvent):
    job_id: str = Field(description="The job's id.")
    plugin: str = Field(description="Plugin name.")
    action: str = Field(description="Action name.")
    attempt: int = Field(ge=0, description="Attempt number (1 for the first run).")


class JobReceivedEvent(_JobEvent):
    """The worker took the job from its queue (before validation and start)."""

    kind: Literal["job_received"] = _kind(EventKind.JOB_RECEIVED)
    queue: str = Field(description="The arq queue it came from.")
    parent_id: str | None = Field(default=None, description="The job that submitted it (a plugin-to-plugin call).")


class JobStartedEvent(_JobEvent):
    """The action is about to run (the record says ``running``)."""

    kind: Literal["job_started"] = _kind(EventKind.JOB_STARTED)
    queue: str = Field(description="The arq queue it came from.")
    parent_id: str | None = Field(default=None, description="The job that submitted it (a plugin-to-plugin call).")


class JobProgressEvent(_JobEvent):
    """The action reported progress (coalesced like the job channel: at most one per interval)."""

    kind: Literal["job_progress"] = _kind(EventKind.JOB_PROGRESS)
    progress: ProgressUpdate = Field(description="The update (see Progress).")


class JobSucceededEvent(_JobEvent):
    """The action returned; its result is in the job record."""

    kind: Literal["job_succeeded"] = _kind(EventKind.JOB_SUCCEEDED)
    duration_ms: int = Field(ge=0, description="Run time of this attempt.")


class JobFailedEvent(_JobEvent):
    """The attempt failed and will not be retried (a retried one is ``job_retrying``)."""

    kind: Literal["job_failed"] = _kind(EventKind.JOB_FAILED)
    error: ErrorInfo = Field(description="The error.")
    duration_ms: int = Field(ge=0, description="Run time of this attempt.")


class JobRetryingEvent(_JobEvent):
    """The attempt failed (or timed out) and the job will run again."""

    kind: Literal["job_retrying"] = _kind(EventKind.JOB_RETRYING)
    error: ErrorInfo = Field(description="Why this attempt failed.")
    retry_in_s: float = Field(ge=0, description="Delay before the next attempt.")


class JobTimedOutEvent(_JobEvent):
    """The attempt ran past its timeout and will not be retried."""

    kind: Literal["job_timed_out"] = _kind(EventKind.JOB_TIMED_OUT)
    timeout_s: float = Field(description="The timeout it exceeded.")
    error: ErrorInfo = Field(description="The timeout error (`PluginActionTimeoutError`).")


class JobCancelledEvent(_JobEvent):
    """The job was cancelled while running on this worker."""

    kind: Literal["job_cancelled"] = _kind(EventKind.JOB_CANCELLED)
    reason: str = Field(description="The reason given to `cancel()`.")


class JobDeadLetteredEvent(_JobEvent):
    """The job ended for good (failed or timed out) and was kept in the dead-letter store."""

    kind: Literal["job_dead_lettered"] = _kind(EventKind.JOB_DEAD_LETTERED)
    error: ErrorInfo = Field(description="The final error.")
    attempts: int = Field(ge=1, description="Attempts made in all.")


# -- delegates ------------------------------------------------------------------------------------
class DelegateExecutionErrorEvent(BaseEvent):
    """A delegate raised or timed out; the others ran and the worker went on (never reported twice)."""

    kind: Literal["delegate_execution_error"] = _kind(EventKind.DELEGATE_EXECUTION_ERROR)
    event_kind: str = Field(description="The event kind (or control type) the delegate was handling.")
    delegate: str = Field(description="The delegate's qualified name (`module.qualname`).")
    delegate_type: Literal["notification", "control"] = Field(
        default="notification", description="Which kind of delegate failed."
    )
    error: ErrorInfo = Field(description="What it raised (`TimeoutError` when it overran its timeout).")


BuiltinEvent = Annotated[
    Union[  # noqa: UP007 - a runtime union of classes for pydantic's discriminator
        WorkerStartedEvent,
        WorkerStoppedEvent,
        WorkerPausedEvent,
        WorkerResumedEvent,
        WorkerErrorEvent,
        PluginLoadedEvent,
        PluginEnabledEvent,
        PluginDisabledEvent,
        PluginFailedEvent,
        JobReceivedEvent,
        JobStartedEvent,
        JobProgressEvent,
        JobSucceededEvent,
        JobFailedEvent,
        JobRetryingEvent,
        JobTimedOutEvent,
        JobCancelledEvent,
        JobDeadLetteredEvent,
        DelegateExecutionErrorEvent,
    ],
    Field(discriminator="kind"),
]
"""An event of a built-in kind: a discriminated union on ``kind``."""

_BUILTIN_KINDS = frozenset(EventKind)


def _family(data: Any) -> str:
    """Which side of :data:`Event` ``data`` is on: a built-in kind, or a plugin's own."""
    kind = data.get("kind") if isinstance(data, dict) else getattr(data, "kind", None)
    return "builtin" if kind in _BUILTIN_KINDS else "plugin"


Event = Annotated[
    Union[  # noqa: UP007 - a runtime union for pydantic's discriminator
        Annotated[BuiltinEvent, Tag("builtin")],
        Annotated[PluginEvent, Tag("plugin")],
    ],
    Discriminator(_family),
]
"""Any event: a built-in one (discriminated on ``kind``) or a :class:`PluginEvent` (use :func:`parse_event`)."""

EVENT_MODELS: dict[EventKind, type[BaseEvent]] = {
    EventKind(model.model_fields["kind"].default): model for model in get_args(get_args(BuiltinEvent)[0])
}
"""The model of each built-in kind (any other kind is a plugin's: :class:`PluginEvent`)."""
_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def check_kind_names(kinds: Iterable[str | EventKind]) -> frozenset[str]:
    """``kinds`` as names, if each is a built-in kind or a valid plugin kind; else a ``ValueError`` naming them.

    A typo of a built-in kind (``job_faild``) is refused, not taken for a plugin's kind: the
    built-in namespaces are closed to plugins.
    """
    names = frozenset(str(k) for k in kinds)
    unknown = sorted(name for name in names - _BUILTIN_KINDS if kind_problem(name))
    if unknown:
        raise ValueError(
            f"unknown event kind(s): {', '.join(unknown)} (built-in kinds: {', '.join(EventKind)}; a plugin's own "
            "kind is 1-64 lowercase letters, digits and underscores, outside the worker_, plugin_, job_ and "
            "delegate_ namespaces)"
        )
    return names


def parse_event(data: bytes | str | dict[str, Any]) -> Event:
    """The typed event in ``data`` (JSON or a mapping); :class:`~service.wire.WireError` if it is none."""
    try:
        if isinstance(data, dict):
            return _ADAPTER.validate_python(data)
        return _ADAPTER.validate_json(data)
    except ValidationError as exc:
        problems = "; ".join(f"{_where(e['loc'])}: {e['msg']}" for e in exc.errors())
        raise WireError(f"not an actionq event: {problems}") from exc


def _where(loc: tuple[int | str, ...]) -> str:
    """A validation error's location, without the union's own tag (``builtin`` / ``plugin``)."""
    parts = loc[1:] if loc and loc[0] in ("builtin", "plugin") else loc
    return ".".join(map(str, parts)) or "(event)"


@dataclass(frozen=True, slots=True)
class ReceivedEvent:
    """An event read from the events stream, with its id (resume after it with ``since=id``).

    The id is ``"<stream entry id>.<index>"`` (e.g. ``"1732200000000-0.2"``): an entry holds a
    batch of events, and ``index`` is the event's place in it, from 0.
    """

    id: str
    event: Event

    @property
    def kind(self) -> str:
        """The event's kind: an :class:`EventKind` for a built-in one, the plugin's name for its own."""
        kind = self.event.kind
        return EventKind(kind) if kind in _BUILTIN_KINDS else kind


def describe(event: BaseEvent) -> str:
    """A one-line human summary of ``event``'s own fields (what ``actionq events`` prints)."""
    parts = []
    items: list[tuple[str, Any]] = list(event)
    if isinstance(event, PluginEvent):  # its fields flat, after its identity (the job's parts if any)
        identity = [(name, value) for name, value in items if name != "fields" and value is not None]
        items = identity + list(event.fields.items())
    for name, value in items:
        if name in BaseEvent.model_fields:
            continue
        if isinstance(value, ErrorInfo):
            text = f"{value.type}: {value.message}"
        elif isinstance(value, ProgressUpdate):
            pct = "" if value.percentage is None else f"{value.percentage:.0f}% "
            text = f"{pct}{value.message}".strip()
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
        parts.append(f"{name}={text}")
    return " ".join(parts)


# -- the generated reference ---------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in get_args(tp))}]"
    return "null" if tp is type(None) else str(getattr(tp, "__name__", tp))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _type_cell(tp: Any) -> str:
    """A field's type as a table cell: each alternative of a union in its own code span.

    The ``|`` between them stays outside the code spans, escaped: a pipe inside a code span is
    text to mkdocs but a column break to GitHub, and an escaped one keeps its backslash in mkdocs.
    """
    origin = get_origin(tp)
    if origin is Literal:
        parts = [json.dumps(a) for a in get_args(tp)]
    elif origin in (Union, types.UnionType):
        parts = [_type_name(a) for a in get_args(tp)]
    else:
        parts = [_type_name(tp)]
    return " \\| ".join(f"`{part}`" for part in parts)


def _section(kind: EventKind, model: type[BaseEvent]) -> list[str]:
    return _section_table(kind.value, model)


def _section_table(title: str, model: type[BaseEvent]) -> list[str]:
    doc = " ".join((model.__doc__ or "").split())
    lines = [f"#### `{title}`", "", f"{doc} (`{model.__name__}`)", ""]
    lines += ["| field | type | description |", "| --- | --- | --- |"]
    for name, field in model.model_fields.items():
        lines.append(f"| `{name}` | {_type_cell(field.annotation)} | {_cell(field.description or '')} |")
    return [*lines, ""]


def reference_markdown() -> str:
    """The event reference: one section per kind with every field, its type and meaning."""
    lines = [
        "Every event is a JSON object with `kind`, `worker_id` and `ts_ms`, plus the fields of its kind.",
        "`ErrorInfo` is `{type, message, traceback, retryable}`; `ProgressUpdate` is described under",
        "[Progress](progress-and-streams.md#progress). Generated from `service/events/models.py` by",
        "`actionq events --write-docs docs/events.md`.",
        "",
    ]
    for kind, model in EVENT_MODELS.items():
        lines += _section(kind, model)
    lines += _plugin_section()
    return "\n".join(lines).rstrip("\n")


def _plugin_section() -> list[str]:
    """The reference of every plugin-defined kind: one model, whatever the kind's name."""
    return [
        "#### Plugin-defined kinds",
        "",
        "Any kind outside the built-in namespaces (`worker_`, `plugin_`, `job_`, `delegate_`) is a plugin's own,",
        "emitted with `ctx.notify(kind, **fields)`; see [Plugin-defined events](#plugin-defined-events).",
        "",
        *_section_table("<the plugin's kind>", PluginEvent)[2:],
    ]


def docs_section(text: str) -> str:
    """The text between the event-reference markers of a docs page (without the marker lines)."""
    start, end = text.index(DOCS_BEGIN) + len(DOCS_BEGIN), text.index(DOCS_END)
    return text[start:end].strip("\n")


def write_docs(path: Path) -> bool:
    """Replace the event reference between the markers in the docs page ``path``; True if it changed."""
    text = path.read_text()
    start, end = text.index(DOCS_BEGIN) + len(DOCS_BEGIN), text.index(DOCS_END)
    new = f"{text[:start]}\n{reference_markdown()}\n{text[end:]}"
    if new == text:
        return False
    path.write_text(new)
    return True
