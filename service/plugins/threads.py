"""Plugin code in threads: plain ``def`` actions, and plain generators with a bounded hand-off.

A plain ``def`` action runs in the loop's default executor (:func:`in_thread`); a plain generator
runs in a thread of its own that stays at most a bounded number of items ahead of the loop
(:func:`iterate_in_thread`). Both run in a copy of the caller's context, so ``current_job()``
works there.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import threading
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable
from contextlib import aclosing
from typing import Any

__all__ = ["in_thread", "iterate_in_thread"]

# A plain generator's thread runs at most this many items ahead of the loop before it blocks.
_THREAD_QUEUE = 256


async def in_thread(func: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    """Run ``func(**kwargs)`` in the default executor with a copy of the current context.

    Unlike ``asyncio.to_thread``, a cancelled call does not pretend to be over: Python cannot stop
    a thread, so it waits for the thread to return before re-raising. Whoever cancelled it can
    thus tell that the action is stuck (the supervisor logs it and frees the job's slot anyway).
    """
    context = contextvars.copy_context()
    future = asyncio.get_running_loop().run_in_executor(None, functools.partial(context.run, func, **kwargs))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await future
        raise


class _ThreadChannel:
    """Hands items from a generator's thread to the loop; the thread blocks when it is full."""

    def __init__(self, loop: asyncio.AbstractEventLoop, maxsize: int) -> None:
        self._loop = loop
        self._maxsize = maxsize
        self._entries: deque[tuple[bool, Any]] = deque()  # (is_item, item | outcome)
        self._space = threading.Semaphore(maxsize)
        self._ready = asyncio.Event()
        self._waiting = False  # the loop waits for an item: only then does the thread wake it
        self._stopped = threading.Event()

    # thread side
    def run(self, func: Callable[..., Iterable[Any]], kwargs: dict[str, Any]) -> None:
        try:
            gen = iter(func(**kwargs))
            try:
                for item in gen:
                    if not self._put(True, item):
                        return
            finally:
                close = getattr(gen, "close", None)
                if close is not None:
                    close()
        except BaseException as exc:  # relayed to the loop, where it fails the job
            self._put(False, exc)
            return
        self._put(False, None)

    def _put(self, is_item: bool, value: Any) -> bool:
        if is_item:
            self._space.acquire()
        if self._stopped.is_set():
            return False
        self._entries.append((is_item, value))
        if not self._waiting:
            return True  # the loop will find it before it waits (it checks after raising the flag)
        try:
            self._loop.call_soon_threadsafe(self._ready.set)
        except RuntimeError:  # the loop is closed: nobody is reading any more
            return False
        return True

    # loop side
    async def items(self) -> AsyncGenerator[Any, None]:
        while True:
            while not self._entries:
                self._ready.clear()
                self._waiting = True
                if not self._entries:
                    await self._ready.wait()
                self._waiting = False
            is_item, value = self._entries.popleft()
            if not is_item:
                if value is not None:
                    raise value
                return
            self._space.release()
            yield value

    def stop(self) -> None:
        self._stopped.set()
        self._space.release(self._maxsize)  # wake a thread blocked on a full channel


async def iterate_in_thread(
    func: Callable[..., Iterable[Any]], kwargs: dict[str, Any], *, maxsize: int = _THREAD_QUEUE
) -> AsyncGenerator[Any, None]:
    """Iterate ``func(**kwargs)`` in a thread of its own and yield its items on the loop.

    The thread runs at most ``maxsize`` items ahead, then blocks until the loop catches up
    (backpressure). It runs in a copy of the caller's context (so ``current_job()`` works). Closing
    this iterator stops the thread at its next item and closes the generator there; a thread
    stuck inside one ``next()`` cannot be interrupted and finishes on its own.
    """
    channel = _ThreadChannel(asyncio.get_running_loop(), maxsize)
    context = contextvars.copy_context()
    thread = threading.Thread(
        target=context.run, args=(channel.run, func, kwargs), name="actionq-generator", daemon=True
    )
    thread.start()
    try:
        async with aclosing(channel.items()) as items:
            async for item in items:
                yield item
    finally:
        channel.stop()
