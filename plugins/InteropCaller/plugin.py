"""The seed's InteropCaller: the interop matrix through plugin-to-plugin calls (child jobs)."""

from __future__ import annotations

from typing import Any

from service.plugins.plugin import Plugin

TARGET = "InteropTarget"


class InteropCaller(Plugin):
    """Calls each InteropTarget endpoint, by value and by stream, from async and from sync code."""

    async def interop_run(self, host: str = "any") -> dict[str, Any]:
        """``{endpoint: what it gave}``: the adds with (2, 3), the generators' items with n=3."""
        results: dict[str, Any] = {}
        for name in ("it_sync_add", "it_async_add"):
            results[name] = await self.execute(TARGET, name, (2, 3), host=host)
        for name in ("it_sync_gen", "it_async_gen"):
            results[name] = [item async for item in self.execute_stream(TARGET, name, {"n": 3}, host=host)]
        self.logger.info("interop_run", host=host, results=results)
        return results

    def interop_run_sync(self, host: str = "any") -> dict[str, Any]:
        """:meth:`interop_run` from a worker thread, through ``execute_sync`` and ``execute_stream_sync``."""
        results: dict[str, Any] = {}
        for name in ("it_sync_add", "it_async_add"):
            results[name] = self.execute_sync(TARGET, name, (2, 3), host=host)
        for name in ("it_sync_gen", "it_async_gen"):
            results[name] = list(self.execute_stream_sync(TARGET, name, {"n": 3}, host=host))
        self.logger.info("interop_run_sync", host=host, results=results)
        return results
