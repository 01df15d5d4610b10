"""The seed's InteropTarget: the same addition as a plain def and as an async def."""

from __future__ import annotations

from service.plugin import Plugin


class InteropTarget(Plugin):
    """Endpoints that check sync and async calls behave alike."""

    def it_sync_add(self, a: int, b: int = 1) -> int:
        """``a + b`` from a plain ``def`` (run in a worker thread)."""
        return a + b

    async def it_async_add(self, a: int, b: int = 1) -> int:
        """``a + b`` from an ``async def``."""
        return a + b
