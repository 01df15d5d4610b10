"""The batcher that coalesces concurrent submits and settlements into one call."""

from __future__ import annotations

import asyncio

import pytest

from service.redis.batching import Batcher


class Recorder:
    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.tasks: list[asyncio.Task[object] | None] = []
        self.fail_on = fail_on

    async def send(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        self.tasks.append(asyncio.current_task())
        await asyncio.sleep(0.01)  # a round trip: what arrives meanwhile waits for the next call
        if self.fail_on in items:
            raise RuntimeError(f"batch with {self.fail_on} failed")
        return [i * 10 for i in items]


async def test_a_lone_call_goes_out_at_once_from_the_callers_task() -> None:
    rec = Recorder()
    batcher: Batcher[int, int] = Batcher(rec.send, max_batch=10, name="t")
    assert await batcher.submit(1) == 10
    assert rec.batches == [[1]]
    assert rec.tasks == [asyncio.current_task()]


async def test_calls_made_while_one_is_in_flight_go_together_next() -> None:
    rec = Recorder()
    batcher: Batcher[int, int] = Batcher(rec.send, max_batch=4, name="t")
    results = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
    assert results == [i * 10 for i in range(10)]
    assert rec.batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9]]  # at most max_batch per call
    assert await batcher.submit(11) == 110  # idle again: at once
    assert rec.batches[-1] == [11]


async def test_same_turn_mode_sends_what_arrived_in_one_loop_turn_together() -> None:
    rec = Recorder()
    batcher: Batcher[int, int] = Batcher(rec.send, max_batch=100, name="t", same_turn=True)
    assert await asyncio.gather(*(batcher.submit(i) for i in range(5))) == [0, 10, 20, 30, 40]
    assert rec.batches == [[0, 1, 2, 3, 4]]


async def test_every_caller_of_a_failed_call_gets_its_error_and_the_next_call_is_unharmed() -> None:
    rec = Recorder(fail_on=2)
    batcher: Batcher[int, int] = Batcher(rec.send, max_batch=10, name="t")
    first = asyncio.create_task(batcher.submit(0))
    await asyncio.sleep(0)  # 0 is in flight: 1 and 2 wait, and go out together
    results = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
    assert await first == 0
    assert [type(r) for r in results] == [RuntimeError, RuntimeError]
    assert await batcher.submit(3) == 30
    with pytest.raises(RuntimeError, match="batch with 2 failed"):
        await batcher.submit(2)  # a lone call's error is the caller's own


class Quick(Recorder):
    async def send(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        await asyncio.sleep(0)  # a round trip far shorter than the window
        return [i * 10 for i in items]


async def test_under_load_a_batch_waits_for_the_window_and_takes_what_arrived_in_it() -> None:
    rec = Quick()
    batcher: Batcher[int, int] = Batcher(rec.send, max_batch=100, name="t", window_s=0.05, busy=lambda: True)
    assert await batcher.submit(0) == 0  # after a quiet spell: at once, from the caller's task
    later = [asyncio.create_task(batcher.submit(i)) for i in range(1, 4)]
    for i in range(1, 4):  # spread out, each after the previous round trip: one batch all the same
        await asyncio.sleep(0.001)
        assert not later[i - 1].done()
    assert await asyncio.gather(*later) == [10, 20, 30]
    assert rec.batches == [[0], [1, 2, 3]]
    assert (batcher.calls, batcher.items) == (2, 4)


async def test_with_nothing_else_coming_an_item_goes_out_at_once_inside_the_window() -> None:
    rec = Quick()
    batcher: Batcher[int, int] = Batcher(rec.send, max_batch=100, name="t", window_s=60, busy=lambda: False)
    assert await batcher.submit(0) == 0
    assert await batcher.submit(1) == 10  # a window of a minute, yet no wait: nothing could join it
    assert rec.batches == [[0], [1]]


async def test_a_full_batch_does_not_wait_for_the_window() -> None:
    rec = Quick()
    batcher: Batcher[int, int] = Batcher(rec.send, max_batch=3, name="t", window_s=60, busy=lambda: True)
    assert await batcher.submit(0) == 0
    assert await asyncio.gather(*(batcher.submit(i) for i in range(1, 4))) == [10, 20, 30]
    assert rec.batches == [[0], [1, 2, 3]]


async def test_submit_many_gives_each_item_its_result_or_its_batchs_error_in_order() -> None:
    rec = Recorder(fail_on=5)
    batcher: Batcher[int, int] = Batcher(rec.send, max_batch=4, name="t")
    results = await batcher.submit_many(list(range(10)))
    assert rec.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert (results[:4], results[8:]) == ([0, 10, 20, 30], [80, 90])
    assert all(isinstance(r, RuntimeError) for r in results[4:8])  # the failed batch's items only


async def test_a_cancelled_submit_many_stops_waiting_for_every_item() -> None:
    rec = Recorder()
    batcher: Batcher[int, int] = Batcher(rec.send, max_batch=2, name="t")
    waiting = asyncio.create_task(batcher.submit_many([1, 2, 3, 4]))
    while not rec.batches:  # the first batch is in flight
        await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert await batcher.submit(9) == 90  # the batcher goes on: the items left were sent or dropped, never awaited
