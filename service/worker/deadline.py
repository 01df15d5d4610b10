"""Running an action under its timeout and its cancellation token, with escalation.

At the timeout, or on a cancel request, the job's token is set (its reason says which). An
action running on the loop — ``async def``, either kind of generator, whose items are pumped on
the loop — is then cancelled at once: asyncio raises ``CancelledError`` at its next ``await``
(or a generator's next item), and a ``try``/``finally`` in it still runs. A plain ``def`` in its
thread cannot be interrupted: it has the grace period to notice the token and return. The
grace bounds the escalation: an action still running after it (one that swallowed the cancel,
or a thread) is cancelled again, and if even that does not end it (a thread stuck in a call),
the supervisor gives up waiting, says so, and the job's slot is freed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

from service.plugins.cancellation import CancellationToken

__all__ = ["Supervised", "supervise"]

# After a forced cancel, how long to wait for the task to acknowledge it before calling it stuck.
_FORCE_WAIT_S = 1.0

Ending = Literal["done", "cancelled", "timed_out"]


@dataclass(frozen=True)
class Supervised:
    """How the supervised action ended.

    ``ending`` is ``done`` when it finished on its own (``result`` or ``error`` says how),
    ``cancelled`` or ``timed_out`` otherwise; ``forced`` when its task had to be cancelled and
    ``stuck`` when even that did not stop it.
    """

    ending: Ending
    result: Any = None
    error: BaseException | None = None
    forced: bool = False
    stuck: bool = False


async def supervise(
    action: Coroutine[Any, Any, Any],
    *,
    token: CancellationToken,
    timeout_s: float,
    grace_s: float,
    interruptible: bool = True,
    started: Callable[[], None] | None = None,
) -> Supervised:
    """Run ``action`` until it finishes, times out or is cancelled (see the module docstring).

    ``interruptible``: the action runs on the loop and is cancelled as soon as it must stop;
    False for a plain ``def`` in a thread, which gets the token and the grace period.
    ``started`` is called on the loop right after the action's first step (an action's first
    step is not kept waiting for bookkeeping such as the start events), unless that step ended it
    (then the caller's settlement goes first, and ``started`` is the caller's to call).
    """
    task: asyncio.Future[Any] = asyncio.ensure_future(action)
    if started is not None:  # after the action's first step, already queued
        asyncio.get_running_loop().call_soon(_if_running, task, started)
    await _first_of(task, token, timeout_s)
    if task.done():
        # An action that raised once its token was set stopped because it was asked to.
        stopped = token.is_cancelled and (task.cancelled() or task.exception() is not None)
        return _finished(task, _ending_of(token) if stopped else "done")
    ending: Ending = "cancelled" if token.is_cancelled else "timed_out"
    token.cancel("timeout")  # no-op when already cancelled; a timeout escalates the same way
    if interruptible:
        task.cancel()
    await asyncio.wait({task}, timeout=grace_s)
    if task.done():
        return _finished(task, ending)
    task.cancel()
    await asyncio.wait({task}, timeout=_FORCE_WAIT_S)
    if task.done():
        with contextlib.suppress(BaseException):
            task.result()
    return Supervised(ending, forced=True, stuck=not task.done())


async def _first_of(task: asyncio.Future[Any], token: CancellationToken, timeout_s: float) -> None:
    """Wait until the action ends, the token is set or the timeout passes, whichever comes first.

    One future woken by any of them: no extra task per job, unlike ``asyncio.wait`` over the
    action and ``token.wait()``. Cancelled (the worker is shutting down): the action is too.
    """
    loop = asyncio.get_running_loop()
    woken: asyncio.Future[None] = loop.create_future()

    def wake(*_: object) -> None:
        if not woken.done():
            woken.set_result(None)

    task.add_done_callback(wake)
    forget = token.on_cancel(wake)
    timer = loop.call_later(timeout_s, wake)
    try:
        await woken
    except asyncio.CancelledError:
        task.cancel()  # the job goes back to its queue
        raise
    finally:
        timer.cancel()
        forget()
        task.remove_done_callback(wake)


def _if_running(task: asyncio.Future[Any], started: Callable[[], None]) -> None:
    if not task.done():
        started()


def _ending_of(token: CancellationToken) -> Ending:
    return "timed_out" if token.reason == "timeout" else "cancelled"


def _finished(task: asyncio.Future[Any], ending: Ending) -> Supervised:
    if task.cancelled():
        return Supervised(ending if ending != "done" else "cancelled", error=asyncio.CancelledError())
    error = task.exception()
    if error is not None:
        return Supervised(ending, error=error)
    return Supervised(ending, result=task.result())
