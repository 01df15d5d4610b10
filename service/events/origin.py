"""Whose code is running: the plugin instance (and, inside an action, the job) that code acts for.

The loader runs a plugin's ``on_load``, ``on_enable`` and ``on_disable``, and every action, inside
an :class:`Origin` held in a context variable (see :func:`service.plugins.context.plugin_code` and
:func:`~service.plugins.context.job_context`). Two things read it:

* :meth:`DelegateManager.register <service.events.delegates.DelegateManager.register>` and
  ``register_control`` record the origin's ``owner`` on the registration, so that when the plugin
  is disabled or reloaded every delegate it registered goes with it
  (:meth:`~service.events.delegates.DelegateManager.unregister_owner`);
* a plugin-defined event (``ctx.notify(kind, **fields)``, or the seeds'
  ``invoke_notification(kind, sender, **fields)``) takes its plugin, version, job, action and
  attempt from it.

A context variable, not an argument: it follows the plugin's code wherever asyncio and the
loader take it — tasks it creates, the thread of a plain ``def`` action, ``asyncio.to_thread``.
A thread started with ``threading.Thread`` starts with an empty context, so what it registers
belongs to nobody (run it under ``contextvars.copy_context().run`` to keep the origin).
A delegate runs under the origin it was registered with (without the job), so what a delegate
registers or emits is its own plugin's, whoever emitted the event it handles.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass, replace
from typing import Any, Protocol

__all__ = ["EventSink", "Origin", "current_origin", "reset_origin", "running_as", "set_origin"]


class EventSink(Protocol):
    """Where a plugin's events go: a :class:`~service.events.delegates.DelegateManager`."""

    def invoke_notification(self, event: Any, /, sender: object = None, **fields: Any) -> None:
        """Deliver an event (or build one from a kind name and fields) to the delegates."""


@dataclass(frozen=True, slots=True, eq=False)
class Origin:
    """The plugin instance code runs for, and the job when it runs inside an action.

    ``owner`` is the plugin instance (a reload creates a new one, so its registrations are told
    apart from the old instance's); ``manager`` is the worker's delegate manager, ``None`` for a
    plugin loaded outside a worker.
    """

    owner: object
    plugin: str
    version: str = ""
    manager: EventSink | None = None
    job_id: str | None = None
    action: str | None = None
    attempt: int | None = None

    def outside_job(self) -> Origin:
        """The same plugin without the job: what a registration made inside an action keeps."""
        return self if self.job_id is None else replace(self, job_id=None, action=None, attempt=None)


_origin: ContextVar[Origin | None] = ContextVar("actionq_origin", default=None)


def current_origin() -> Origin | None:
    """The :class:`Origin` of the code running now; ``None`` outside plugin code."""
    return _origin.get()


def set_origin(origin: Origin | None) -> Token[Origin | None]:
    """Make ``origin`` current until :func:`reset_origin` with the token (:func:`running_as`, unrolled)."""
    return _origin.set(origin)


def reset_origin(token: Token[Origin | None]) -> None:
    """Undo a :func:`set_origin`."""
    _origin.reset(token)


@contextmanager
def running_as(origin: Origin | None) -> Iterator[Origin | None]:
    """Make ``origin`` current for the block (``None``: code of nobody in particular)."""
    token = _origin.set(origin)
    try:
        yield origin
    finally:
        _origin.reset(token)
