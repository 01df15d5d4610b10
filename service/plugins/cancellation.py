"""The action's side of cancellation: :class:`CancellationToken` (the seed's, made thread-safe).

The executor gives every job a token (``ctx.cancellation``). A cancel request is pushed to the
worker over pub/sub and sets the token at once; a cooperative action notices it —
``token.is_cancelled``, ``await token.wait()`` or ``token.raise_if_cancelled()`` — and stops.
An action that ignores it is cancelled by force after the grace period (see
:mod:`service.worker.deadline`). Timeouts use the same token, with ``reason`` saying so.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from service.errors import CancellationRequested

__all__ = ["CancellationToken"]


class CancellationToken:
    """Set once, by a cancel request or a timeout; readable from the loop and from threads."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._cancelled = False
        self._lock = threading.Lock()
        self._thread_event: threading.Event | None = None  # made when a thread first waits (rare)
        self._loop = loop
        self._event: asyncio.Event | None = None  # made when something first awaits wait() (most never do)
        self._reason: str | None = None
        self._callbacks: list[Callable[[], None]] = []

    @property
    def is_cancelled(self) -> bool:
        """True once cancellation was requested."""
        return self._cancelled

    @property
    def reason(self) -> str | None:
        """Why: the caller's reason, or ``"timeout"``; ``None`` while not cancelled."""
        return self._reason

    def cancel(self, reason: str = "cancelled") -> bool:
        """Request cancellation (used by the worker); False if it was already requested."""
        with self._lock:
            if self._cancelled:
                return False
            self._reason = reason
            self._cancelled = True
            if self._thread_event is not None:
                self._thread_event.set()
        if self._loop is None:
            self._fire()
        else:
            self._loop.call_soon_threadsafe(self._fire)
        return True

    def _fire(self) -> None:
        if self._event is not None:
            self._event.set()
        for callback in list(self._callbacks):
            callback()

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` on the loop once cancellation is requested (now, if it already was).

        Returns a function that unregisters it. Cheaper than a task awaiting :meth:`wait`.
        """
        if self._cancelled:
            callback()
            return _nothing
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    async def wait(self) -> str:
        """Wait until cancellation is requested; returns the reason."""
        if not self._cancelled:
            if self._event is None:
                self._event = asyncio.Event()
            await self._event.wait()
        return self._reason or "cancelled"

    def wait_sync(self, timeout: float | None = None) -> bool:
        """For plain ``def`` actions: block up to ``timeout`` seconds; True if cancelled."""
        with self._lock:
            if self._cancelled:
                return True
            if self._thread_event is None:
                self._thread_event = threading.Event()
            event = self._thread_event
        return event.wait(timeout)

    def raise_if_cancelled(self) -> None:
        """Raise :class:`CancellationRequested` if cancellation was requested."""
        if self._cancelled:
            raise CancellationRequested(self._reason or "cancelled")


def _nothing() -> None:
    return None
