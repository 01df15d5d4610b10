"""Benchmark actions for ``bench/progress.py``: timed progress reports and a tight reporting loop."""

from __future__ import annotations

import asyncio
import time

from service.plugins.context import JobContext
from service.plugins.plugin import Plugin


def burn(work: int, acc: int) -> int:
    """A fixed small CPU workload: ``work`` steps of integer arithmetic."""
    for k in range(work):
        acc = (acc * 31 + k) & 0xFFFFFFFF
    return acc


class BenchProgressPlugin(Plugin):
    """Actions whose only purpose is to be measured."""

    async def report_timed(self, ctx: JobContext, n: int, interval_s: float, lead_s: float = 0.1) -> int:
        """Report steps 1..n, ``interval_s`` apart, each stamped with the wall clock at the call."""
        await asyncio.sleep(lead_s)
        for step in range(1, n + 1):
            ctx.progress(step, n, details={"t": time.time()})
            await asyncio.sleep(interval_s)
        return n

    def spin(self, ctx: JobContext, iterations: int, report: bool, work: int = 250) -> dict[str, float]:
        """Run the loop in the worker's thread; return the seconds it took, timed here."""
        acc = 0
        started = time.perf_counter()
        for i in range(1, iterations + 1):
            acc = burn(work, acc)
            if report:
                ctx.progress(i, iterations)
        return {"elapsed_s": time.perf_counter() - started, "acc": acc}

    async def spin_async(self, ctx: JobContext, iterations: int, report: bool, work: int = 250) -> dict[str, float]:
        """The same loop on the event loop, yielding to it every iteration."""
        acc = 0
        started = time.perf_counter()
        for i in range(1, iterations + 1):
            acc = burn(work, acc)
            if report:
                ctx.progress(i, iterations)
            await asyncio.sleep(0)
        return {"elapsed_s": time.perf_counter() - started, "acc": acc}
