"""Benchmark actions: ``bench/compare.py`` (the bodies of :mod:`bench.jobs`), ``memory.py``, ``recovery.py``."""

from __future__ import annotations

import asyncio
import time

from bench import jobs
from service.plugins.context import JobContext
from service.plugins.plugin import Plugin


class BenchNoopPlugin(Plugin):
    """Actions whose only purpose is to be measured."""

    async def incr(self) -> None:
        """One ``INCR`` on the worker's own client: the body every contender runs."""
        await jobs.incr()

    async def noop(self) -> None:
        """Nothing: the job's cost is the service's alone."""

    async def stamp(self) -> float:
        """``time.time()`` when the action started (the bench subtracts its submit time)."""
        return time.time()

    async def hold_key(self, key: str) -> str:
        """Wait to be cancelled, stamping start and cancel in Redis (:func:`bench.jobs.hold`)."""
        return await jobs.hold(key)

    async def sleep(self, seconds: float) -> None:
        """Sleep (many of these run at once in the memory benchmark)."""
        await asyncio.sleep(seconds)

    async def hold(self, ctx: JobContext, seconds: float) -> None:
        """Wait until cancelled (returning at once, so the job ends without its grace period) or ``seconds``."""
        try:
            async with asyncio.timeout(seconds):
                await ctx.cancellation.wait()
        except TimeoutError:
            return
        ctx.cancellation.raise_if_cancelled()
