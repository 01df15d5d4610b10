"""Checkpoints: JSON state a job saves so that its next attempt resumes instead of starting over.

``await ctx.checkpoint.save(state)`` keeps ``state`` with the job (for the job's lifetime);
``await ctx.checkpoint.load()`` returns the last saved state or ``None`` — in a retry, in a re-run
after a worker crash, or after a shutdown handed the job back. The checkpoint is cleared when the
job ends. Plain ``def`` actions use ``save_sync`` / ``load_sync`` from their thread.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis

from service.errors import PayloadTooLargeError
from service.redis.connection import broker_errors
from service.wire import check_size, dumps, loads

__all__ = ["Checkpoint"]


class Checkpoint:
    """One job's checkpoint."""

    def __init__(self, redis: Redis | None, key: str, *, ttl_s: int, max_bytes: int) -> None:
        self._redis = redis
        self._key = key
        self._ttl_s = ttl_s
        self._max_bytes = max_bytes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._local: bytes | None = None  # without Redis (an action run outside a worker)

    async def save(self, state: Any) -> None:
        """Keep ``state`` (JSON) for the next attempt; replaces the previous checkpoint."""
        try:
            data = check_size("checkpoint", dumps(state), self._max_bytes)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, PayloadTooLargeError):
                raise
            raise TypeError(f"a checkpoint must be JSON: {exc}") from exc
        if self._redis is None:
            self._local = data
            return
        with broker_errors("saving a checkpoint"):
            await self._redis.set(self._key, data, ex=self._ttl_s)

    async def load(self) -> Any:
        """The last saved state, or ``None`` if this job never saved one."""
        if self._redis is None:
            return None if self._local is None else loads(self._local)
        with broker_errors("loading a checkpoint"):
            raw = await self._redis.get(self._key)
        return None if raw is None else loads(raw)

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Remember the worker's loop so that threads can use the blocking variants."""
        self._loop = loop

    def save_sync(self, state: Any, timeout: float = 30.0) -> None:
        """``save`` for a plain ``def`` action (blocks its thread, never the loop)."""
        self._blocking(self.save(state), timeout)

    def load_sync(self, timeout: float = 30.0) -> Any:
        """``load`` for a plain ``def`` action."""
        return self._blocking(self.load(), timeout)

    def _blocking(self, coro: Any, timeout: float) -> Any:
        if self._loop is None:
            coro.close()
            raise RuntimeError("blocking checkpoint calls need a worker loop (use await save/load)")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)
