"""The seed's InteropTarget: the same addition and the same stream, each as sync and as async code."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

from service.plugins.plugin import Plugin


class InteropTarget(Plugin):
    """Endpoints that check sync and async calls (values and streams) behave alike."""

    def it_sync_add(self, a: int, b: int = 1) -> int:
        """``a + b`` from a plain ``def`` (run in a worker thread)."""
        return a + b

    async def it_async_add(self, a: int, b: int = 1) -> int:
        """``a + b`` from an ``async def``."""
        return a + b

    def it_sync_gen(self, n: int = 3, prefix: str = "g", delay_ms: int = 10) -> Iterator[str]:
        """``f"{prefix}{i}"`` for i in range(n), from a plain generator (runs in a thread), ``delay_ms`` apart."""
        for i in range(n):
            if i and delay_ms:
                time.sleep(delay_ms / 1000)
            yield f"{prefix}{i}"

    async def it_async_gen(self, n: int = 3, prefix: str = "ag", delay_ms: int = 10) -> AsyncIterator[str]:
        """``f"{prefix}{i}"`` for i in range(n), from an async generator, ``delay_ms`` apart."""
        for i in range(n):
            if i and delay_ms:
                await asyncio.sleep(delay_ms / 1000)
            yield f"{prefix}{i}"
