"""The worker's side of progress: one :class:`ProgressReporter` per job, coalescing its reports.

Reports (validated at the call, :mod:`service.plugins.progress`) are **coalesced** per job: at
most one write per ``progress_interval_s``, always the newest, and the executor flushes the last
one before it records the final state, so a subscriber sees the final progress and then the end.
:class:`ProgressWriter` writes one update to the job's record (and publishes it if the job is
followed) with the progress script.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable

import structlog
from redis.asyncio import Redis

from service.errors import InvalidProgressError
from service.keys import Keys
from service.models import ProgressStatus, ProgressUpdate, SubTaskProgress
from service.plugins.progress import Raw, to_model
from service.redis import scripts
from service.redis.connection import broker_errors

__all__ = ["ProgressReporter", "ProgressWriter"]

log = structlog.get_logger("actionq.progress")

_EMPTY: Raw = (None, None, "", None, None, ProgressStatus.RUNNING.value)


class _Node:
    """A node of the progress tree kept by the reporter (snapshotted into models when written)."""

    def __init__(self, name: str = "", weight: float = 1.0) -> None:
        self.name = name
        self.weight = weight
        self.own: Raw = _EMPTY
        self.children: dict[str, _Node] = {}

    def snapshot(self) -> ProgressUpdate:
        own = to_model(self.own)
        if not self.children:
            return own
        subs = [SubTaskProgress(name=c.name, weight=c.weight, progress=c.snapshot()) for c in self.children.values()]
        total = sum(s.weight for s in subs)
        rolled = sum(s.weight * (s.progress.percentage or 0.0) for s in subs) / total
        return own.model_copy(update={"percentage": round(rolled, 4), "sub_tasks": subs})


class ProgressReporter:
    """Coalesces one job's progress and hands the newest update to ``sink`` at a bounded rate.

    A report costs a few checks and an assignment: the model is built, and the event loop woken,
    only when an update is actually written. Reports may come from the loop or from any thread;
    ``close`` flushes what is pending and must be awaited before the job's final state is recorded.
    """

    def __init__(
        self,
        sink: Callable[[ProgressUpdate], Awaitable[object]],
        *,
        interval_s: float,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._sink = sink
        self._interval_s = interval_s
        self._loop = loop
        self._root = _Node()
        self._tree_lock = threading.Lock()
        self._dirty = False  # a report not written yet
        self._active = False  # the writer task is running (or a wake-up is on its way to the loop)
        self._last_sent = float("-inf")
        self._wake: asyncio.Event | None = None  # made when the writer first waits out the interval
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.sent = 0

    def report(self, raw: Raw, path: tuple[str, ...] = ()) -> None:
        """Record an already checked update for the node at ``path`` (root by default)."""
        if path:
            with self._tree_lock:
                self._node(path).own = raw
        else:
            self._root.own = raw  # one assignment: atomic under the GIL
        self._dirty = True
        if not self._active:
            self._wake_writer()

    def add_subtask(self, path: tuple[str, ...], name: str, weight: float) -> None:
        """Create the child ``name`` under the node at ``path`` (an existing one is kept)."""
        if not name or not isinstance(weight, int | float) or weight <= 0:
            raise InvalidProgressError(f"sub-task {name!r}: needs a name and a weight greater than 0, not {weight!r}")
        with self._tree_lock:
            self._node(path).children.setdefault(name, _Node(name, weight))
        self._dirty = True
        if not self._active:
            self._wake_writer()

    def _node(self, path: tuple[str, ...]) -> _Node:
        node = self._root
        for part in path:
            node = node.children[part]
        return node

    def _wake_writer(self) -> None:
        self._active = True
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._start_writer()
        else:
            self._loop.call_soon_threadsafe(self._start_writer)

    def _start_writer(self) -> None:
        if self._closing:
            return
        if self._task is None or self._task.done():
            self._task = self._loop.create_task(self._drain(), name="actionq-progress")

    async def _drain(self) -> None:
        while True:
            while self._dirty:
                await self._write_next()
            self._active = False
            if not self._dirty:  # checked after clearing _active: a report in between re-wakes us
                return
            self._active = True

    async def _write_next(self) -> None:
        wait = self._last_sent + self._interval_s - self._loop.time()
        if wait > 0 and not self._closing:
            wake = self._wake = self._wake or asyncio.Event()
            wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):  # not wait_for: it can swallow a cancel on 3.11
                    await wake.wait()
        self._dirty = False
        with self._tree_lock:
            update = self._root.snapshot()
        self._last_sent = self._loop.time()
        try:
            await self._sink(update)
            self.sent += 1
        except Exception as exc:  # progress is best effort: it never fails the job
            log.warning("progress_write_failed", error=str(exc))

    def close_if_idle(self) -> bool:
        """Stop accepting reports and return True if nothing is left to write (the job reported
        nothing, or all of it was written): then :meth:`close` need not be awaited."""
        if self._dirty or self._active or (self._task is not None and not self._task.done()):
            return False
        self._closing = True
        return True

    async def close(self) -> None:
        """Write the pending update now (skipping the interval) and stop accepting more."""
        self._closing = True
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            await self._task
        if self._dirty:  # reported after the writer last looked (or it never started)
            await self._write_next()


class ProgressWriter:
    """Writes a job's progress with the progress script (``service/redis/lua/progress.lua``)."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.keys = keys
        self._script = scripts.register(redis, "progress")

    async def write(self, job_id: str, update: ProgressUpdate) -> int:
        """Store ``update`` as the job's latest progress and publish it; -1 if the job is not running."""
        body = update.model_dump_json()
        keys = self.keys
        with broker_errors(f"recording progress of job {job_id}"):
            seq = await self._script(keys=[keys.job(job_id)], args=[body, keys.job_channel(job_id), job_id])
        return int(seq)
