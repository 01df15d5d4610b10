"""The submitting side of plugin-to-plugin calls, on a worker's own Redis connection.

A worker never imports the client (the layers say so); the CLI that starts it hands it
:meth:`ClientCaller.on` as its caller factory, and the worker gives plugins the
:class:`~service.plugins.calls.JobCaller` it builds (see :mod:`service.plugins.calls`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from redis.asyncio import Redis

from service.client.client import JobClient
from service.settings import Settings

__all__ = ["ClientCaller"]


class ClientCaller:
    """A :class:`~service.plugins.calls.JobCaller` backed by a :class:`JobClient`."""

    def __init__(self, client: JobClient) -> None:
        self.client = client

    @classmethod
    def on(cls, redis: Redis, settings: Settings) -> ClientCaller:
        """A caller sharing the worker's connection pool (``host="local"`` is the worker's host)."""
        return cls(JobClient(redis, settings, owns_redis=False))

    async def submit(self, plugin: str, action: str, params: Any, options: dict[str, Any]) -> str:
        """Submit with the client's validation and routing; the job's id."""
        return (await self.client.submit(plugin, action, params, **options)).job_id

    async def result(self, job_id: str, timeout: float | None) -> Any:
        """The job's result, or the error it ended with (see :meth:`JobHandle.result`)."""
        return await self.client.job(job_id).result(timeout=timeout)

    def stream(self, job_id: str) -> AsyncGenerator[Any, None]:
        """The job's streamed items (see :meth:`JobHandle.stream`)."""
        return self.client.job(job_id).stream()

    async def cancel(self, job_id: str, reason: str) -> None:
        """Ask for the job's end without waiting for it."""
        await self.client.job(job_id).cancel(reason, timeout=0)

    async def close(self) -> None:
        """Close the client (its pub/sub connection; the Redis pool is the worker's)."""
        await self.client.close()
