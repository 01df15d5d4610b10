"""The worker's progress reporter: per-job coalescing, reports from threads, sub-task roll-up (no Redis)."""

from __future__ import annotations

import asyncio
import inspect
import threading

import pytest

from service.models import ProgressUpdate
from service.plugins.progress import SubTask
from service.worker.progress import ProgressReporter


def _other_tasks() -> set[asyncio.Task[object]]:
    """The tasks on the loop besides the test's own (a reporter's writer, if one is running)."""
    return {task for task in asyncio.all_tasks() if task is not asyncio.current_task() and not task.done()}


class Sink:
    def __init__(self, delay_s: float = 0.0) -> None:
        self.updates: list[ProgressUpdate] = []
        self.delay_s = delay_s

    async def __call__(self, update: ProgressUpdate) -> None:
        await asyncio.sleep(self.delay_s)
        self.updates.append(update)


async def test_tight_loop_is_coalesced_and_the_last_update_is_delivered_on_close() -> None:
    sink = Sink(delay_s=0.001)
    reporter = ProgressReporter(sink, interval_s=0.05, loop=asyncio.get_running_loop())
    root = SubTask(reporter)
    for i in range(1, 10_001):
        root.progress(i, 10_000)
        if i % 1000 == 0:
            await asyncio.sleep(0)
    await reporter.close()
    assert 1 <= len(sink.updates) < 50
    assert sink.updates[-1].current_step == 10_000
    steps = [u.current_step or 0 for u in sink.updates]
    assert steps == sorted(steps)
    root.progress(1, 1)  # after close: ignored...
    assert _other_tasks() == set()  # ...no writer was started that could still write it
    assert sink.updates[-1].current_step == 10_000


async def test_the_first_update_after_a_quiet_spell_is_written_at_once() -> None:
    written: list[int | None] = []

    async def sink(update: ProgressUpdate) -> None:
        written.append(update.current_step)  # before any await: a write shows in the writer's first step

    reporter = ProgressReporter(sink, interval_s=10, loop=asyncio.get_running_loop())
    SubTask(reporter).progress(1, 5)
    async with asyncio.timeout(5):  # leading edge: written well before the 10 s interval is up
        while not written:
            await asyncio.sleep(0.001)
    assert written == [1]
    SubTask(reporter).progress(2, 5)
    [writer] = _other_tasks()  # the report started the writer
    steps = writer.get_coro()
    assert inspect.iscoroutine(steps)
    while inspect.getcoroutinestate(steps) == inspect.CORO_CREATED:
        await asyncio.sleep(0)  # until the writer has taken its first step
    assert not writer.done()  # within the interval it waits...
    assert written == [1]  # ...holding the update back...
    await reporter.close()
    assert written == [1, 2]  # ...until close flushes it


async def test_reports_from_a_thread_reach_the_loop() -> None:
    sink = Sink()
    reporter = ProgressReporter(sink, interval_s=0, loop=asyncio.get_running_loop())
    root = SubTask(reporter)

    def work() -> None:
        for i in range(1, 101):
            root.progress(i, 100)

    thread = threading.Thread(target=work)
    thread.start()
    await asyncio.to_thread(thread.join)
    async with asyncio.timeout(5):  # the thread's last report reaches the loop on its own, not by close
        while not sink.updates or sink.updates[-1].current_step != 100:
            await asyncio.sleep(0.001)
    await reporter.close()
    assert sink.updates[-1].current_step == 100


async def test_sub_tasks_roll_up_by_weight_and_nest() -> None:
    sink = Sink()
    reporter = ProgressReporter(sink, interval_s=0, loop=asyncio.get_running_loop())
    root = SubTask(reporter)
    download, convert = root.subtask("download", weight=1), root.subtask("convert", weight=3)
    download.progress(percentage=100)
    part = convert.subtask("part 1")
    part.progress(1, 2)
    await reporter.close()
    tree = sink.updates[-1]
    assert [t.name for t in tree.sub_tasks] == ["download", "convert"]
    assert tree.sub_tasks[1].progress.percentage == 50.0  # convert = its only child, half done
    assert tree.percentage == pytest.approx((1 * 100 + 3 * 50) / 4)


async def test_a_failing_sink_never_fails_the_job() -> None:
    async def broken(update: ProgressUpdate) -> None:
        raise RuntimeError("redis down")

    reporter = ProgressReporter(broken, interval_s=0, loop=asyncio.get_running_loop())
    SubTask(reporter).progress(1, 2)
    await reporter.close()
    assert reporter.sent == 0
