"""Registry reads shared by every submit that needs them: kept briefly, read once at a time.

A producer that gathers 10,000 submits on a cold cache must not send 10,000 identical reads:
the first caller starts the read, the others wait on it (single flight), and its value is kept
for ``ttl_s``. A failed read reaches its waiters and is not kept.

When the kept value is past ``ttl_s`` (but not twice that), the first caller starts a fresh read
in the background and every caller meanwhile gets the kept value at once: a busy producer (a
gateway taking thousands of submits a second) would otherwise stall every second, each of its
submits in flight waiting on the refresh. A value is thus at most ``2 * ttl_s`` old.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["SharedReads"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SharedReads(Generic[K, V]):
    """Values by key, each read at most once at a time and kept ``ttl_s`` seconds."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._values: dict[K, tuple[float, V]] = {}
        self._reads: dict[K, asyncio.Future[V]] = {}

    def fresh(self, key: K) -> tuple[bool, V | None]:
        """``(True, value)`` if ``key``'s kept value is younger than ``ttl_s``, else ``(False, None)``.

        No coroutine: a gateway's batch of 500 submits reads the same entries 500 times, and the
        ``await`` of :meth:`get` was a tenth of its time.
        """
        kept = self._values.get(key)
        if kept is not None and self._clock() - kept[0] < self.ttl_s:
            return True, kept[1]
        return False, None

    async def get(self, key: K, read: Callable[[], Awaitable[V]]) -> V:
        """The value of ``key``: kept, or read by ``read()`` (once for every caller waiting)."""
        kept = self._values.get(key)
        age = self._clock() - kept[0] if kept is not None else float("inf")
        if age < self.ttl_s and kept is not None:
            return kept[1]
        reading = self._reads.get(key)
        if reading is None:
            reading = asyncio.ensure_future(read())
            self._reads[key] = reading
            reading.add_done_callback(lambda done: self._done(key, done))
        if age < 2 * self.ttl_s and kept is not None:
            return kept[1]  # refreshed in the background: nobody waits for it
        return await asyncio.shield(reading)  # one caller cancelled does not cancel the others' read

    def forget(self, key: K) -> None:
        """Drop the kept value of ``key``: the next :meth:`get` reads again."""
        self._values.pop(key, None)

    def _done(self, key: K, done: asyncio.Future[V]) -> None:
        del self._reads[key]
        if not done.cancelled() and done.exception() is None:  # an error goes to the waiters only
            self._values[key] = (self._clock(), done.result())
