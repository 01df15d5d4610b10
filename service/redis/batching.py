"""Concurrent calls coalesced into one round trip: the submit script's batches and the settle script's.

A caller hands its item to a :class:`Batcher` and awaits its own result. With nothing in flight
the item goes out at once, from the caller's own task (no timer, no task switch: a lone call costs
what a direct call would); or, with ``same_turn``, from a task that also takes every item handed
over in the same loop turn (jobs that end together settle together, for one task switch). Items that
arrive while a call is in flight wait for it and then go out together, up to ``max_batch`` per
call. Each caller gets its own result, or the error of the call its item went out in.

**A window under load.** Coalescing by "in flight" alone falls apart when round trips are short
and items arrive spread out (jobs that each await their own I/O end a fraction of a millisecond
apart): every batch holds one or two items. With ``window_s``, a batch goes out no sooner than
``window_s`` after the previous one *while* ``busy()`` says more items are coming (say, other jobs
of the worker still run), so under load a batch holds what arrived in the window, whatever the
items' own timing; an item that arrives after a quiet spell, or while nothing else could join it,
goes out at once. So the added wait is at most ``window_s``, and only under load.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from service.errors import BrokerError

__all__ = ["Batcher"]

T = TypeVar("T")
R = TypeVar("R")


def _always() -> bool:
    return True


class PartlyFailed(BrokerError):
    """A batch's call failed for some of its items only (on Redis Cluster, one call per slot):
    ``replies`` in the items' order, ``None`` where the item's part failed, with ``error``."""

    def __init__(self, replies: Sequence[Any], error: BaseException) -> None:
        super().__init__(str(error))
        self.replies = replies
        self.error = error


class Batcher(Generic[T, R]):
    """Sends items with ``send`` (a list of items -> one result per item, in order), coalescing."""

    def __init__(
        self,
        send: Callable[[list[T]], Awaitable[Sequence[R]]],
        *,
        max_batch: int,
        name: str,
        same_turn: bool = False,
        window_s: float = 0.0,
        busy: Callable[[], bool] = _always,
    ) -> None:
        self._send = send
        self._max_batch = max_batch
        self._same_turn = same_turn
        self._name = name
        self._window_s = window_s
        self._more_coming = busy
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._busy = False
        self._flushing: asyncio.Task[None] | None = None
        self._last_sent = float("-inf")  # loop time of the last call sent
        self.calls = 0
        """Calls of ``send`` so far."""
        self.items = 0
        """Items sent so far (``items / calls``: the mean batch)."""

    async def submit(self, item: T) -> R:
        """Send ``item`` (now, or with the next batch) and return its result."""
        if self._busy or self._same_turn or self._wait_s() > 0:
            future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
            self._pending.append((item, future))
            if not self._busy:
                self._busy = True
                self._flushing = asyncio.create_task(self._flush(), name=self._name)
            return await future
        self._busy = True
        try:
            return (await self._call([item]))[0]
        finally:
            self._drain()

    async def submit_many(self, items: Sequence[T]) -> list[R | BaseException]:
        """Send ``items`` with the next batches (no task each) and return their results in order;
        an item whose call failed gets that call's error in its place."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        self._pending.extend(zip(items, futures, strict=True))
        if not self._busy:
            self._busy = True
            self._flushing = asyncio.create_task(self._flush(), name=self._name)
        # Awaited in order, not gathered: a future done already is read without a loop turn, so the
        # caller wakes once per batch sent, with no gather callback per item.
        results: list[R | BaseException] = []
        for future in futures:
            try:
                results.append(await future)
            except asyncio.CancelledError:
                for left in futures:  # as gather would: no reply is waited for any more
                    left.cancel()
                raise
            except Exception as exc:
                results.append(exc)
        return results

    def _wait_s(self) -> float:
        """How long the next batch waits for company (0: it goes now)."""
        if not self._window_s or len(self._pending) >= self._max_batch or not self._more_coming():
            return 0.0
        return self._last_sent + self._window_s - asyncio.get_running_loop().time()

    async def _call(self, items: list[T]) -> Sequence[R]:
        self._last_sent = asyncio.get_running_loop().time()
        self.calls += 1
        self.items += len(items)
        return await self._send(items)

    def _drain(self) -> None:
        """After a call: what arrived meanwhile goes out from a task of its own; else idle again."""
        if self._pending:
            self._flushing = asyncio.create_task(self._flush(), name=self._name)
        else:
            self._busy = False

    async def _flush(self) -> None:
        try:
            while self._pending:
                wait_s = self._wait_s()
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
                batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
                await self._send_batch(batch)
        finally:
            self._busy = False
            for _, future in self._pending:  # only when cancelled (the loop is closing)
                future.cancel()
            self._pending = []

    async def _send_batch(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results: Sequence[Any] = await self._call([item for item, _ in batch])
            error: BaseException | None = None
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except PartlyFailed as exc:  # the callers whose part went through get their replies
            results, error = exc.replies, exc.error
        except Exception as exc:  # every caller of the batch gets the error
            results, error = [None] * len(batch), exc
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if result is None and error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)
