"""Plain generators iterated in a thread of their own: backpressure, closing, errors after items."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from service.plugins.threads import iterate_in_thread
from tests.unit.stream_io import drain


async def test_thread_generator_has_backpressure_and_is_closed() -> None:
    produced: list[int] = []
    closed = threading.Event()

    def numbers() -> Iterator[int]:
        try:
            for i in range(10_000):
                produced.append(i)
                yield i
        finally:
            closed.set()

    items = iterate_in_thread(lambda: numbers(), {}, maxsize=4)
    assert await anext(items) == 0
    await asyncio.sleep(0.05)  # let the thread run ahead as far as it may
    assert len(produced) <= 1 + 4 + 1  # the item taken, a full channel, one blocked on put
    await items.aclose()
    assert await asyncio.to_thread(closed.wait, 5)  # the generator was closed in its thread


async def test_thread_generator_error_follows_its_items() -> None:
    def numbers() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("bad third")

    got: list[int] = []
    with pytest.raises(ValueError, match="bad third"):
        await drain(iterate_in_thread(numbers, {}), got)
    assert got == [1, 2]
