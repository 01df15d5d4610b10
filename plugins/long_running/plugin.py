"""Long-running demo actions: the seed's ExampleLongRunningPlugin as an actionq plugin."""

from __future__ import annotations

import asyncio
import time

from service.plugins.context import JobContext, current_job
from service.plugins.plugin import Plugin


class LongRunningPlugin(Plugin):
    """Actions that take a while, block, or fail: handy for demos and tests."""

    async def count_slowly(self, ctx: JobContext, steps: int = 5, delay_s: float = 0.2) -> dict[str, float]:
        """Take ``steps`` steps of ``delay_s`` seconds each and report how long it slept."""
        started = time.monotonic()
        for step in range(1, steps + 1):
            await asyncio.sleep(delay_s)
            ctx.cancellation.raise_if_cancelled()  # cooperative: stop at the next step when asked
            await self.report_progress(step, steps, f"step {step} of {steps}")  # the seed's call
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

    async def pipeline(self, ctx: JobContext, stages: int = 3, steps: int = 5, delay_s: float = 0.05) -> int:
        """Run ``stages`` weighted sub-tasks of ``steps`` steps each; the job's percentage rolls up."""
        subtasks = [ctx.subtask(f"stage {n}", weight=n) for n in range(1, stages + 1)]
        for n, sub in enumerate(subtasks, start=1):
            for step in range(1, steps + 1):
                await asyncio.sleep(delay_s)
                sub.progress(step, steps, f"stage {n}: step {step}")
        ctx.progress(message="all stages done", status="completed")
        return stages * steps

    async def tight_loop(self, ctx: JobContext, iterations: int = 10_000) -> int:
        """Report progress on every iteration of a tight loop (coalescing keeps Redis calm)."""
        for i in range(1, iterations + 1):
            ctx.progress(i, iterations)
            if i % 500 == 0:
                await asyncio.sleep(0)  # let the coalesced writer run now and then
        return iterations

    def indeterminate(self, ctx: JobContext, ticks: int = 3, delay_s: float = 0.05) -> int:
        """Report steps without a total (indeterminate progress) from a worker thread."""
        for tick in range(1, ticks + 1):
            time.sleep(delay_s)
            ctx.progress(tick, None, f"tick {tick}")
        return ticks
