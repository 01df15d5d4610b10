"""A small blocking facade over :class:`JobClient` for code that is not async.

It runs the async client on an event loop in a private background thread (the seeds'
``execute_sync`` used ``asyncio.run_coroutine_threadsafe`` the same way)::

    with SyncJobClient("redis://localhost:6379/0") as client:
        print(client.execute_sync("PluginB", "calculate_square", {"x": 6}, timeout=10))  # 36
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Coroutine, Iterable, Iterator
from types import TracebackType
from typing import Any, TypeVar

from service.client.client import JobClient, JobSpec, Params
from service.client.handle import JobHandle
from service.errors import ActionQError
from service.models import JobRecord, JobState
from service.settings import Settings

__all__ = ["SyncJobClient", "SyncJobHandle"]

T = TypeVar("T")


class SyncJobClient:
    """Blocking twin of :class:`JobClient`; safe to share between threads."""

    def __init__(
        self, redis_url: str | None = None, *, namespace: str | None = None, settings: Settings | None = None
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="actionq-sync-client", daemon=True)
        self._thread.start()
        try:
            self._client = self._call(JobClient.connect(redis_url, namespace=namespace, settings=settings))
        except BaseException:
            self._stop_loop()
            raise

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def submit(self, plugin: str, action: str, params: Params = None, **options: Any) -> SyncJobHandle:
        """Submit a job (same arguments as :meth:`JobClient.submit`)."""
        handle = self._call(self._client.submit(plugin, action, params, **options))
        return SyncJobHandle(self, handle)

    def submit_many(self, jobs: Iterable[JobSpec], *, validate: bool = True) -> list[SyncJobHandle | ActionQError]:
        """Submit many jobs at once (as :meth:`JobClient.submit_many`): a handle or an error each, in order."""
        written = self._call(self._client.submit_many(jobs, validate=validate))
        return [SyncJobHandle(self, result) if isinstance(result, JobHandle) else result for result in written]

    def execute_sync(
        self, plugin: str, action: str, params: Params = None, *, timeout: float | None = None, **options: Any
    ) -> Any:
        """Submit and wait for the result (raises what the job ended with)."""
        return self.submit(plugin, action, params, **options).result(timeout=timeout)

    def job(self, job_id: str) -> SyncJobHandle:
        """A handle to an existing job."""
        return SyncJobHandle(self, self._client.job(job_id))

    def close(self) -> None:
        """Close the client and stop its thread."""
        try:
            self._call(self._client.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> SyncJobClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class SyncJobHandle:
    """Blocking twin of :class:`JobHandle`."""

    def __init__(self, client: SyncJobClient, handle: JobHandle) -> None:
        self._client = client
        self._handle = handle

    @property
    def job_id(self) -> str:
        """The job's id."""
        return self._handle.job_id

    @property
    def created(self) -> bool:
        """False when the submit found the job id already taken."""
        return self._handle.created

    def state(self) -> JobState:
        """The job's current state."""
        return self._client._call(self._handle.state())

    def record(self) -> JobRecord:
        """The job's current record."""
        return self._client._call(self._handle.record())

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the job and return its result (or raise what it ended with)."""
        return self._client._call(self._handle.result(timeout=timeout))

    def stream(self, start: int = 0) -> Iterator[Any]:
        """Blocking twin of :meth:`JobHandle.stream`: the generator action's items, from ``start`` on."""
        items = self._handle.stream(start)
        try:
            while True:
                try:
                    yield self._client._call(_next(items))
                except StopAsyncIteration:
                    return
        finally:
            self._client._call(items.aclose())


async def _next(items: AsyncGenerator[Any, None]) -> Any:
    return await anext(items)
