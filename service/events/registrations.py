"""Registrations of notification delegates: what each one is for, its filter and its lane.

:meth:`DelegateManager.register <service.delegates.DelegateManager.register>` returns a
:class:`Registration`: the delegate, the event kinds it handles (``"*"``: every kind), an
optional predicate and the plugin code that registered it (its origin). Each registration has a
lane, the events waiting for its delegate, which the manager fills and drains on its event loop
(see :mod:`service.events.delegates`).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from service.events.models import Event, check_kind_names
from service.events.origin import Origin

__all__ = ["ALL_KINDS", "Registration"]

ALL_KINDS = "*"
NotificationDelegate = Callable[..., Any]
Predicate = Callable[[Event], bool]


def _name(fn: Callable[..., Any]) -> str:
    target = fn.func if isinstance(fn, functools.partial) else fn
    qualname = getattr(target, "__qualname__", None) or type(target).__qualname__
    return f"{getattr(target, '__module__', None) or type(target).__module__}.{qualname}"


def _is_async(fn: Callable[..., Any]) -> bool:
    # A callable object counts as async when its class's __call__ is a coroutine function.
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


def _check_kinds(kinds: Iterable[str]) -> frozenset[str] | None:
    names = frozenset(str(k) for k in kinds)
    if ALL_KINDS in names:
        return None
    if not names:
        raise ValueError("register for at least one event kind (or '*')")
    return check_kind_names(names)


class _Lane:
    """One registration's pending events and the task delivering them (touched on the loop only)."""

    def __init__(self) -> None:
        self.items: deque[tuple[object, Event]] = deque()
        self.task: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.busy = False
        self.closed = False
        self.dropped = 0

    @property
    def pending(self) -> int:
        return len(self.items) + self.busy


class Registration:
    """A registered notification delegate: what it handles (``kinds``: ``None`` = every kind) and its filter.

    ``origin`` is the plugin code that registered it (``None``: not a plugin's): the delegate runs
    under it, and goes when that plugin instance is disabled (see :mod:`service.events.origin`).
    """

    def __init__(
        self,
        delegate: NotificationDelegate,
        kinds: frozenset[str] | None,
        predicate: Predicate | None,
        origin: Origin | None = None,
    ):
        self.delegate = delegate
        self.kinds = kinds
        self.predicate = predicate
        self.origin = origin
        self.name = _name(delegate)
        self.is_async = _is_async(delegate)
        self._lane = _Lane()

    @property
    def owner(self) -> object:
        """The plugin instance this registration belongs to (``None``: nobody's)."""
        return None if self.origin is None else self.origin.owner

    def wants(self, kind: str) -> bool:
        """True if this registration is for events of ``kind`` (before its predicate)."""
        kinds = self.kinds
        return kinds is None or kind in kinds

    def __repr__(self) -> str:
        kinds = "*" if self.kinds is None else ",".join(sorted(self.kinds))
        owner = f" plugin={self.origin.plugin}" if self.origin is not None else ""
        return f"<Registration {self.name} kinds={kinds}{' predicate' if self.predicate else ''}{owner}>"
