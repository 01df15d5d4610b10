"""Delegates: in-process observers (notifications) and deciders (controls) of a worker — the seeds' DelegateManager.

**Notification delegates** have the seeds' shape, ``delegate(sender, event_type: str, **kwargs)``,
with ``kwargs == {"event": <typed Event>}`` (see :mod:`service.events.models`); plain ``def`` or
``async def``. A delegate is registered for one kind, several, or every kind (``"*"``),
optionally with a predicate (``lambda e: getattr(e, "plugin", None) == "PluginB"``).

How :meth:`DelegateManager.invoke_notification` never makes the job path wait:

* It takes a snapshot of the matching registrations (under a ``threading.Lock``, so any thread
  may register, unregister and invoke at once) and hands ``(sender, event, snapshot)`` to the
  event loop — directly when called on the loop, by ``call_soon_threadsafe`` from any other
  thread — and returns. It never runs a delegate, a predicate or any I/O itself.
* Each registration has its own **lane**: a FIFO and a task on the loop that delivers its events
  in order, one at a time. Lanes run concurrently, so a slow delegate delays only itself;
  async delegates are awaited on the loop, plain ones run in a small dedicated thread pool
  (``sync_workers`` threads), each under ``delegate_timeout_s``.
* A lane holds at most ``max_pending`` events. A delegate that cannot keep up loses its
  **oldest** pending events (the newest state matters most to a monitor); drops are counted
  (:attr:`DelegateManager.dropped`) and logged on the first drop and every 1,000th after.
* A delegate that raises or times out is logged and reported as a ``delegate_execution_error``
  event; a delegate failing *on* a ``delegate_execution_error`` is only logged (no recursion).
  Nothing a delegate does stops the worker. (A plain ``def`` past its timeout keeps its thread
  until it returns — Python cannot interrupt it — but its lane moves on.)

**Control delegates**, ``delegate(sender, control_type: str, **kwargs) -> Any``, are asked
together by :meth:`DelegateManager.invoke_control`, which returns every response (a raising one
is left out, logged and reported); ``any_true(responses)`` is the seeds' "pause if any says so".

A registration made by a plugin's code belongs to that plugin instance and goes when it is
disabled or reloaded (:meth:`DelegateManager.unregister_owner`; :mod:`service.events.origin`).
``invoke_notification(kind, sender, **fields)`` emits a plugin-defined event, whose delegates
get ``event=`` and the fields as keywords (:mod:`service.events.pluginevents`).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import structlog

from service.events.models import DelegateExecutionErrorEvent, Event, EventKind
from service.events.origin import Origin, current_origin, running_as
from service.events.pluginevents import PluginEvent, plugin_event
from service.events.registrations import (
    ALL_KINDS,
    NotificationDelegate,
    Predicate,
    Registration,
    _check_kinds,
    _is_async,
    _Lane,
    _name,
)
from service.models import ErrorInfo

__all__ = ["ALL_KINDS", "DelegateManager", "Registration", "any_true"]

log = structlog.get_logger("actionq.delegates")

ControlDelegate = Callable[..., Any]
_Control = tuple[ControlDelegate, Origin | None]

# Pending events per delegate: ~10 s of a busy worker's events; beyond that a monitor that far
# behind is better served by the newest events than by a growing backlog.
_MAX_PENDING = 10_000
_DROP_LOG_EVERY = 1_000
_ERROR_KIND = EventKind.DELEGATE_EXECUTION_ERROR.value


def any_true(responses: Iterable[Any]) -> bool:
    """True if any control delegate answered exactly ``True`` (the seeds' "pause if any says pause")."""
    return any(response is True for response in responses)


def _registering_origin() -> Origin | None:
    """The plugin code registering a delegate now, without its job (the delegate outlives the job)."""
    origin = current_origin()
    return None if origin is None else origin.outside_job()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class DelegateManager:
    """Thread-safe registry and invoker of a worker's notification and control delegates.

    ``loop`` is where delegates run; by default the loop running when the manager is created,
    else the first loop that invokes it. Notifications invoked from a thread before any loop is
    bound are dropped (and counted).
    """

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        sync_workers: int = 4,
        delegate_timeout_s: float = 10.0,
        max_pending: int = _MAX_PENDING,
        worker_id: str = "",
    ) -> None:
        self._loop = loop or _running_loop()
        self.delegate_timeout_s = delegate_timeout_s
        self.max_pending = max_pending
        self.worker_id = worker_id
        self._lock = threading.Lock()
        self._registrations: tuple[Registration, ...] = ()
        self._sinks: tuple[Callable[[Event], None], ...] = ()
        self._controls: dict[str, tuple[_Control, ...]] = {}
        self._lanes: set[_Lane] = set()
        self._pool = ThreadPoolExecutor(max_workers=sync_workers, thread_name_prefix="actionq-delegate")
        # Controls get threads of their own: a hung notification delegate must not stall a pause check.
        self._control_pool = ThreadPoolExecutor(max_workers=sync_workers, thread_name_prefix="actionq-control")
        self._dropped = 0
        self._closed = False

    # -- registration (any thread) --------------------------------------------------------------
    def register(
        self,
        kind: str | EventKind | None,
        delegate: NotificationDelegate,
        *,
        kinds: Iterable[str | EventKind] | None = None,
        predicate: Predicate | None = None,
    ) -> Registration:
        """Call ``delegate(sender, kind, event=...)`` for events of ``kind`` and ``kinds`` (``"*"``: all).

        ``predicate(event)``, if given, must also be true; it runs on the event loop, so keep it
        cheap. Returns the :class:`Registration` (pass it to :meth:`unregister`). A kind that is
        neither built-in nor a valid plugin kind name is a ``ValueError``. Made from a plugin's
        code, the registration belongs to that plugin instance (see :meth:`unregister_owner`).
        """
        names = _check_kinds([*([] if kind is None else [kind]), *(kinds or [])])
        registration = Registration(delegate, names, predicate, _registering_origin())
        with self._lock:
            self._registrations = (*self._registrations, registration)
        return registration

    def unregister(self, target: Registration | str | EventKind, delegate: NotificationDelegate | None = None) -> bool:
        """Remove a registration, or (the seeds' form) ``unregister(kind, delegate)``; True if anything changed.

        ``unregister(kind, delegate)`` stops ``delegate`` receiving ``kind`` (``"*"``: anything);
        its other kinds stay. Events already queued for a removed delegate are still delivered.
        """
        removed: list[Registration] = []
        changed = False
        with self._lock:
            for reg in self._registrations:
                if isinstance(target, Registration):
                    outcome = "remove" if reg is target else "untouched"
                else:
                    outcome = self._narrow(reg, str(target)) if reg.delegate == delegate else "untouched"
                changed |= outcome != "untouched"
                if outcome == "remove":
                    removed.append(reg)
            self._registrations = tuple(reg for reg in self._registrations if reg not in removed)
        for reg in removed:
            self._on_loop(self._close_lane, reg._lane)
        return changed

    @staticmethod
    def _narrow(reg: Registration, kind: str) -> Literal["remove", "narrowed", "untouched"]:
        """Take ``kind`` off ``reg`` (called under the lock)."""
        if kind == ALL_KINDS:
            return "remove"
        kinds = frozenset(str(k) for k in EventKind) if reg.kinds is None else reg.kinds
        if kind not in kinds:
            return "untouched"
        reg.kinds = kinds - {kind}
        return "narrowed" if reg.kinds else "remove"

    def registrations(self) -> tuple[Registration, ...]:
        """A snapshot of the notification registrations."""
        with self._lock:
            return self._registrations

    def add_sink(self, sink: Callable[[Event], None]) -> None:
        """Hand every event to ``sink(event)`` on the event loop, at once, before any delegate.

        For the worker's own consumers that only queue the event (the Redis bridge): no lane, no
        task switch per event. A sink must not block or await; one that raises is logged
        (``event_sink_failed``). Plugins register delegates, not sinks.
        """
        with self._lock:
            self._sinks = (*self._sinks, sink)

    def register_control(self, control_type: str, delegate: ControlDelegate) -> None:
        """Ask ``delegate(sender, control_type, **kwargs)`` whenever ``control_type`` is invoked.

        Made from a plugin's code, it belongs to that plugin instance (see :meth:`unregister_owner`).
        """
        control = (delegate, _registering_origin())
        with self._lock:
            self._controls[control_type] = (*self._controls.get(control_type, ()), control)

    def unregister_control(self, control_type: str, delegate: ControlDelegate) -> bool:
        """Stop asking ``delegate`` about ``control_type``; True if it was registered."""
        with self._lock:
            current = self._controls.get(control_type, ())
            kept = tuple(c for c in current if c[0] != delegate)
            self._controls[control_type] = kept
            return len(kept) != len(current)

    def unregister_owner(self, owner: object) -> int:
        """Remove every notification and control registration of ``owner`` (a plugin instance); how many.

        The loader calls it when it disables, unloads or reloads the plugin (after its
        ``on_disable``) and when its ``on_load``/``on_enable`` fails. Events already queued for
        a removed delegate are still delivered: they happened while it was registered.
        """
        with self._lock:
            removed = [reg for reg in self._registrations if reg.owner is owner]
            self._registrations = tuple(reg for reg in self._registrations if reg.owner is not owner)
            dropped = 0
            for control_type, controls in self._controls.items():
                kept = tuple(c for c in controls if c[1] is None or c[1].owner is not owner)
                dropped += len(controls) - len(kept)
                self._controls[control_type] = kept
        for reg in removed:
            self._on_loop(self._close_lane, reg._lane)
        return len(removed) + dropped

    @property
    def dropped(self) -> int:
        """Notifications lost so far: a delegate's lane was full, or no event loop could take them."""
        return self._dropped

    # -- notifications --------------------------------------------------------------------------
    def invoke_notification(self, event: Event | str, /, sender: object = None, **fields: Any) -> None:
        """Deliver ``event`` to every matching delegate, later: returns at once, from any thread.

        The seeds' form, ``invoke_notification(kind, sender, **fields)``, emits the plugin-defined
        event ``kind`` from the plugin code running now; a bad kind or a field that is not JSON
        raises :class:`~service.events.pluginevents.InvalidEventError`, and outside plugin code
        it is a ``LookupError`` (see :mod:`service.events.pluginevents`).
        """
        if isinstance(event, str):
            event = plugin_event(event, fields, current_origin(), self.worker_id)
        elif fields:
            raise TypeError(f"invoke_notification({type(event).__name__}, ...): fields go with a kind name only")
        with self._lock:
            snapshot, sinks = self._registrations, self._sinks
        regs = [reg for reg in snapshot if reg.wants(event.kind)]
        if not regs and not sinks:
            return
        running = _running_loop()
        if self._loop is None and running is not None:
            self._loop = running
        loop = self._loop
        if loop is None or self._closed:
            self._count_drop(len(regs), "no event loop" if loop is None else "manager closed")
        elif running is loop:
            self._fan_out(regs, sinks, sender, event)
        else:
            try:
                loop.call_soon_threadsafe(self._fan_out, regs, sinks, sender, event)
            except RuntimeError:  # the loop is closed
                self._count_drop(len(regs), "event loop closed")

    def _fan_out(
        self, regs: list[Registration], sinks: tuple[Callable[[Event], None], ...], sender: object, event: Event
    ) -> None:
        for sink in sinks:
            try:
                sink(event)
            except Exception as exc:  # logged only: reporting it as an event would go to the sink again
                log.error("event_sink_failed", sink=_sink_name(sink), kind=event.kind, error=repr(exc))
        for reg in regs:
            lane = reg._lane
            if lane.closed and (lane.task is None or lane.task.done()):
                continue
            if len(lane.items) >= self.max_pending:
                lane.items.popleft()
                lane.dropped += 1
                self._count_drop(1, f"{reg.name} is {self.max_pending} events behind")
            lane.items.append((sender, event))
            lane.idle.clear()
            lane.wake.set()
            if lane.task is None:
                self._lanes.add(lane)
                # A context of its own: not the one of whatever code emitted the first event.
                lane.task = asyncio.get_running_loop().create_task(
                    self._run_lane(reg, lane), name=f"delegate:{reg.name}", context=contextvars.Context()
                )

    async def _run_lane(self, reg: Registration, lane: _Lane) -> None:
        try:
            while True:
                while lane.items:
                    sender, event = lane.items.popleft()
                    lane.busy = True
                    try:
                        await self._deliver(reg, sender, event)
                    finally:
                        lane.busy = False
                lane.idle.set()
                if lane.closed:
                    return
                lane.wake.clear()
                await lane.wake.wait()
        finally:
            lane.idle.set()
            self._lanes.discard(lane)

    async def _deliver(self, reg: Registration, sender: object, event: Event) -> None:
        kwargs: dict[str, Any] = {"event": event}
        if isinstance(event, PluginEvent):
            kwargs = {**event.fields, **kwargs}
        try:
            if reg.predicate is not None and not reg.predicate(event):
                return
            await self._call(reg.delegate, reg.is_async, (sender, event.kind), kwargs, self._pool, reg.origin)
        except Exception as exc:
            self._report(reg.name, event.kind, "notification", exc, event.worker_id or self.worker_id)

    def _count_drop(self, n: int, why: str) -> None:
        with self._lock:
            before = self._dropped
            self._dropped += n
        if before == 0 or before // _DROP_LOG_EVERY != self._dropped // _DROP_LOG_EVERY:
            log.warning("delegate_events_dropped", reason=why, dropped_total=self._dropped)

    # -- controls -------------------------------------------------------------------------------
    async def invoke_control(self, control_type: str, sender: object = None, **kwargs: Any) -> list[Any]:
        """Ask every control delegate of ``control_type`` at once; their responses, in registration order.

        A delegate that raises or times out is left out of the list, logged and reported as a
        ``delegate_execution_error`` event.
        """
        with self._lock:
            controls = self._controls.get(control_type, ())
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        calls = [
            self._call(d, _is_async(d), (sender, control_type), kwargs, self._control_pool, origin)
            for d, origin in controls
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        responses = []
        for (delegate, _), result in zip(controls, results, strict=True):
            if isinstance(result, Exception):
                self._report(_name(delegate), control_type, "control", result, self.worker_id)
            elif isinstance(result, BaseException):
                raise result
            else:
                responses.append(result)
        return responses

    # -- calling and reporting ------------------------------------------------------------------
    async def _call(
        self,
        fn: Callable[..., Any],
        is_async: bool,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        pool: Any,
        origin: Origin | None,
    ) -> Any:
        """Call ``fn`` under ``origin`` (the plugin that registered it) and its timeout."""
        try:
            async with asyncio.timeout(self.delegate_timeout_s):
                with running_as(origin):
                    if is_async:
                        result = fn(*args, **kwargs)
                    else:
                        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
                        result = await asyncio.get_running_loop().run_in_executor(pool, call)
                    if inspect.isawaitable(result):
                        result = await result
                return result
        except TimeoutError as exc:
            raise _DelegateTimeout(f"did not finish within {self.delegate_timeout_s:g}s") from exc

    def _report(
        self, name: str, kind: str, delegate_type: Literal["notification", "control"], exc: Exception, worker_id: str
    ) -> None:
        error = ErrorInfo.from_exception(exc)
        if isinstance(exc, _DelegateTimeout):
            error = error.model_copy(update={"type": "TimeoutError"})
        log.warning("delegate_failed", delegate=name, event_kind=kind, delegate_type=delegate_type, exc_info=exc)
        if kind == _ERROR_KIND:
            return  # a handler of delegate_execution_error failed: logged, never reported again
        report = DelegateExecutionErrorEvent(
            worker_id=worker_id, event_kind=kind, delegate=name, delegate_type=delegate_type, error=error
        )
        self.invoke_notification(report, sender=self)

    # -- shutting down --------------------------------------------------------------------------
    def _on_loop(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None or _running_loop() is loop:
            fn(*args)
            return
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            fn(*args)

    @staticmethod
    def _close_lane(lane: _Lane) -> None:
        lane.closed = True
        lane.wake.set()

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Deliver what is pending (for at most ``timeout_s``), then stop; later notifications are dropped."""
        if self._closed:
            return
        await asyncio.sleep(0)  # let notifications handed over by other threads reach their lanes
        left = await self._drain(timeout_s)
        self._closed = True
        if left:
            log.warning("delegates_not_drained", pending=left, timeout_s=timeout_s)
        tasks = [lane.task for lane in self._lanes if lane.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._control_pool.shutdown(wait=False, cancel_futures=True)

    async def _drain(self, timeout_s: float) -> int:
        try:
            async with asyncio.timeout(timeout_s):
                while busy := [lane for lane in self._lanes if not lane.idle.is_set()]:
                    await asyncio.gather(*(lane.idle.wait() for lane in busy))
                    await asyncio.sleep(0)  # a failure report may have just woken another lane
        except TimeoutError:
            pass
        return sum(lane.pending for lane in self._lanes)

    def close(self, timeout_s: float = 5.0) -> None:
        """:meth:`aclose` from a thread other than the loop's (it blocks until done)."""
        loop = self._loop
        if loop is not None and _running_loop() is loop:
            raise RuntimeError("DelegateManager.close() would block its own event loop: await aclose() instead")
        if loop is None or loop.is_closed() or not loop.is_running():
            self._closed = True
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._control_pool.shutdown(wait=False, cancel_futures=True)
            return
        asyncio.run_coroutine_threadsafe(self.aclose(timeout_s), loop).result(timeout_s + 5)


class _DelegateTimeout(Exception):
    """A delegate overran ``delegate_timeout_s`` (reported as a ``TimeoutError``)."""


def _sink_name(sink: Callable[..., Any]) -> str:
    return getattr(sink, "__qualname__", None) or type(sink).__qualname__
