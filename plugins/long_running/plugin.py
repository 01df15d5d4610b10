"""Long-running demo actions: the seed's ExampleLongRunningPlugin as an actionq plugin."""

from __future__ import annotations

import asyncio
import time

from service.context import JobContext, current_job
from service.plugin import Plugin


class LongRunningPlugin(Plugin):
    """Actions that take a while, block, or fail: handy for demos and tests."""

    async def count_slowly(self, ctx: JobContext, steps: int = 5, delay_s: float = 0.2) -> dict[str, float]:
        """Take ``steps`` steps of ``delay_s`` seconds each and report how long it slept."""
        started = time.monotonic()
        for step in range(1, steps + 1):
            await asyncio.sleep(delay_s)
            # The progress issue adds `await self.report_progress(step, steps)` here.
            ctx.logger.info("count_slowly_step", step=step, steps=steps)
        return {"steps": steps, "slept_s": round(time.monotonic() - started, 3)}

    def blocking_sleep(self, seconds: float = 0.5) -> float:
        """Block the calling thread for ``seconds`` (the executor runs plain ``def`` actions in a thread)."""
        current_job().logger.info("blocking_sleep", seconds=seconds)
        time.sleep(seconds)
        return seconds

    def fail(self, message: str = "boom") -> None:
        """Raise ``RuntimeError(message)``."""
        raise RuntimeError(message)
