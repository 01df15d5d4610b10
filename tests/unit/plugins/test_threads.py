"""Plain generators iterated in a thread of their own: backpressure, closing, errors after items."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Iterator

import pytest

from service.plugins.threads import iterate_in_thread
from tests.unit.stream_io import drain


def _waiting(thread: threading.Thread) -> bool:
    """True while ``thread`` is blocked in a ``threading`` wait (a semaphore, a condition, an event)."""
    assert thread.ident is not None
    frame = sys._current_frames().get(thread.ident)  # the innermost Python frame the thread is running
    return frame is not None and frame.f_code.co_name == "wait" and frame.f_code.co_filename == threading.__file__


async def test_thread_generator_has_backpressure_and_is_closed() -> None:
    produced: list[int] = []
    closed = threading.Event()
    runner: list[threading.Thread] = []

    def numbers() -> Iterator[int]:
        runner.append(threading.current_thread())
        try:
            for i in range(10_000):
                produced.append(i)
                yield i
        finally:
            closed.set()

    items = iterate_in_thread(lambda: numbers(), {}, maxsize=4)
    assert await anext(items) == 0
    # The thread runs ahead until the channel is full, then blocks handing over the next item (one
    # that did not block would run through all 10,000 and end instead): wait until it is blocked.
    async with asyncio.timeout(10):
        while not _waiting(runner[0]):
            await asyncio.sleep(0.001)
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
