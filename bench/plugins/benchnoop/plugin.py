"""Benchmark actions for ``bench/throughput.py``, ``latency.py``, ``memory.py`` and ``recovery.py``: idle jobs."""

from __future__ import annotations

import asyncio
import time

from service.plugins.context import JobContext
from service.plugins.plugin import Plugin


class BenchNoopPlugin(Plugin):
    """Actions whose only purpose is to be measured."""

    async def noop(self, ctx: JobContext) -> None:
        """Nothing: the job's cost is the service's alone."""

    async def stamp(self, ctx: JobContext) -> float:
        """``time.time()`` when the action started (the bench subtracts its submit time)."""
        return time.time()

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
