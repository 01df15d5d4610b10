"""Benchmark actions for ``bench/cancel.py``: wait for a cancel request, stamp when it is seen."""

from __future__ import annotations

import asyncio
import time

from service.plugins.context import JobContext
from service.plugins.plugin import Plugin


class BenchCancelPlugin(Plugin):
    """Actions whose only purpose is to be measured."""

    async def wait_cancel(self, ctx: JobContext, wait_s: float = 120) -> str:
        """Wait on the token; stamp ``time.time()`` the moment ``wait()`` returns, then stop.

        The "started" progress tells the bench the action is waiting; the "saw cancel" one carries
        the stamp in ``details.t`` (the executor flushes the last progress before the final state).
        """
        ctx.progress(message="started")
        try:
            async with asyncio.timeout(wait_s):
                await ctx.cancellation.wait()
        except TimeoutError:
            return "not cancelled"
        seen = time.time()
        ctx.progress(message="saw cancel", details={"t": seen})
        ctx.cancellation.raise_if_cancelled()
        return "unreachable"
