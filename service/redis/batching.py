"""Concurrent calls coalesced into one round trip: the submit script's batches and the settle script's.

A caller hands its item to a :class:`Batcher` and awaits its own result. With nothing in flight
the item goes out at once, from the caller's own task (no timer, no task switch: a lone call costs
what a direct call would); or, with ``same_turn``, from a task that also takes every item handed
over in the same loop turn (jobs that end together settle together, for one task switch). Items that
arrive while a call is in flight wait for it and then go out together, up to ``max_batch`` per
call. Each caller gets its own result, or the error of the call its item went out in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["Batcher"]

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """Sends items with ``send`` (a list of items -> one result per item, in order), coalescing."""

    def __init__(
        self,
        send: Callable[[list[T]], Awaitable[Sequence[R]]],
        *,
        max_batch: int,
        name: str,
        same_turn: bool = False,
    ) -> None:
        self._send = send
        self._max_batch = max_batch
        self._same_turn = same_turn
        self._name = name
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._busy = False
        self._flushing: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """Send ``item`` (now, or with the next batch) and return its result."""
        if self._busy or self._same_turn:
            future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
            self._pending.append((item, future))
            if not self._busy:
                self._busy = True
                self._flushing = asyncio.create_task(self._flush(), name=self._name)
            return await future
        self._busy = True
        try:
            return (await self._send([item]))[0]
        finally:
            self._drain()

    def _drain(self) -> None:
        """After a call: what arrived meanwhile goes out from a task of its own; else idle again."""
        if self._pending:
            self._flushing = asyncio.create_task(self._flush(), name=self._name)
        else:
            self._busy = False

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
                await self._send_batch(batch)
        finally:
            self._busy = False
            for _, future in self._pending:  # only when cancelled (the loop is closing)
                future.cancel()
            self._pending = []

    async def _send_batch(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._send([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # every caller of the batch gets the error
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
