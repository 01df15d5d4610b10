"""The action's side of cancellation: :class:`CancellationToken` (the seed's, made thread-safe).

The executor gives every job a token (``ctx.cancellation``). A cancel request is pushed to the
worker over pub/sub and sets the token at once; a cooperative action notices it —
``token.is_cancelled``, ``await token.wait()`` or ``token.raise_if_cancelled()`` — and stops.
An action that ignores it is cancelled by force after the grace period (see
:mod:`service.supervise`). Timeouts use the same token, with ``reason`` saying so.
"""

from __future__ import annotations

import asyncio
import threading

from service.errors import CancellationRequested

__all__ = ["CancellationToken"]


class CancellationToken:
    """Set once, by a cancel request or a timeout; readable from the loop and from threads."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._flag = threading.Event()
        self._loop = loop
        self._event = asyncio.Event()
        self._reason: str | None = None

    @property
    def is_cancelled(self) -> bool:
        """True once cancellation was requested."""
        return self._flag.is_set()

    @property
    def reason(self) -> str | None:
        """Why: the caller's reason, or ``"timeout"``; ``None`` while not cancelled."""
        return self._reason

    def cancel(self, reason: str = "cancelled") -> bool:
        """Request cancellation (used by the worker); False if it was already requested."""
        if self._flag.is_set():
            return False
        self._reason = reason
        self._flag.set()
        if self._loop is None:
            self._event.set()
        else:
            self._loop.call_soon_threadsafe(self._event.set)
        return True

    async def wait(self) -> str:
        """Wait until cancellation is requested; returns the reason."""
        await self._event.wait()
        return self._reason or "cancelled"

    def wait_sync(self, timeout: float | None = None) -> bool:
        """For plain ``def`` actions: block up to ``timeout`` seconds; True if cancelled."""
        return self._flag.wait(timeout)

    def raise_if_cancelled(self) -> None:
        """Raise :class:`CancellationRequested` if cancellation was requested."""
        if self._flag.is_set():
            raise CancellationRequested(self._reason or "cancelled")
