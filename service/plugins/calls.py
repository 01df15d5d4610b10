"""Plugin-to-plugin calls: ``await self.execute("PluginB", "calculate_square", 5, host="local")``.

A call inside an action is a **child job**: submitted like any other (validated against the
registry, routed by ``host``), with the running job as its parent (``options.parent_id``: in the
child's record and events). The caller waits for its result, and the child's failure raises in
the caller as the caller's own client would raise it (``PluginActionExecutionError``,
``PluginActionTimeoutError``, ``JobCancelledError``). When the calling attempt ends — by
finishing, failing, timing out or being cancelled — every child it started that is still
running is cancelled.

**No deadlock on a full worker.** A parent that waits on a child lends its slot while it
waits: the worker may take one more job (the child, or any other), and counts the parent again
once the child answered. A worker with ``concurrency 1`` whose only job calls another therefore
runs the child itself; a chain of calls never exhausts the slots.

The worker provides the submitting side (a :class:`JobCaller`); the plugin package only defines
what it needs of it, so plugins never import the client.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import AbstractContextManager, aclosing, nullcontext
from typing import Any, Protocol

__all__ = ["Calls", "JobCaller"]


class JobCaller(Protocol):
    """The submitting side of child jobs (the worker builds one on its own Redis connection)."""

    async def submit(self, plugin: str, action: str, params: Any, options: dict[str, Any]) -> str:
        """Submit a job (validated, routed by ``options["host"]``); its id."""
        ...

    async def result(self, job_id: str, timeout: float | None) -> Any:
        """Wait for ``job_id``'s result; raise what its end was (its error, or ``ResultTimeoutError``)."""
        ...

    def stream(self, job_id: str) -> AsyncGenerator[Any, None]:
        """The items of a generator job as they come; raises what the job ended with."""
        ...

    async def cancel(self, job_id: str, reason: str) -> None:
        """Cancel ``job_id`` if it has not ended (returns without waiting for it to stop)."""
        ...

    async def close(self) -> None:
        """Release what the caller holds (the worker calls it as it stops)."""
        ...


class Calls:
    """The child jobs of one running attempt (``ctx.calls``; the plugin's ``self.execute`` uses it)."""

    def __init__(
        self,
        caller: JobCaller | None,
        parent_id: str,
        *,
        lend_slot: Callable[[], AbstractContextManager[None]] = nullcontext,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._caller = caller
        self.parent_id = parent_id
        self._lend_slot = lend_slot
        self._loop = loop
        self._open: set[str] = set()
        self.children: list[str] = []
        """Every child job this attempt submitted, in order."""

    async def execute(
        self,
        plugin: str,
        method: str,
        args: Any = None,
        *,
        plugin_uuid: str = "",
        host: str = "any",
        timeout: float | None = None,
        **options: Any,
    ) -> Any:
        """Run ``plugin.method(args)`` as a child job and return its result (seed 004's ``execute``).

        ``args`` is a dict of named arguments, a tuple of positional ones or a single value;
        ``host`` is ``"any"``, ``"local"``, ``"remote"`` or a hostname; ``timeout`` bounds the wait
        (``ResultTimeoutError``; the child is then cancelled); other ``options`` are those of
        ``JobClient.submit`` (``timeout_s``, ``queue``, ``retry``…).
        """
        caller = self._need_caller(plugin_uuid)
        job_id = await self._submit(caller, plugin, method, args, host, options)
        with self._lend_slot():  # raised out of (cancelled, timed out): close() cancels the child
            result = await caller.result(job_id, timeout)
        self._open.discard(job_id)
        return result

    def execute_sync(self, plugin: str, method: str, args: Any = None, **options: Any) -> Any:
        """:meth:`execute` from a plain ``def`` action's thread: blocks it until the child answers."""
        loop = self._thread_side("execute_sync")
        return asyncio.run_coroutine_threadsafe(self.execute(plugin, method, args, **options), loop).result()

    def execute_stream_sync(self, plugin: str, method: str, args: Any = None, **options: Any) -> Iterator[Any]:
        """:meth:`execute_stream` for a plain ``def`` action: a plain iterator of the child's items."""
        loop = self._thread_side("execute_stream_sync")
        items = self.execute_stream(plugin, method, args, **options)
        try:
            while True:
                try:
                    yield asyncio.run_coroutine_threadsafe(anext(items), loop).result()
                except StopAsyncIteration:
                    return
        finally:
            asyncio.run_coroutine_threadsafe(items.aclose(), loop).result()

    def _thread_side(self, what: str) -> asyncio.AbstractEventLoop:
        """The worker's loop, for a call from a thread (never from the loop itself: it would block it)."""
        loop = self._loop
        if loop is None:
            raise RuntimeError(f"{what} needs the worker's loop: it is only available inside a running job")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise RuntimeError(f"{what} would block the worker's loop: use the async form (await / async for) here")
        return loop

    async def execute_stream(
        self, plugin: str, method: str, args: Any = None, *, plugin_uuid: str = "", host: str = "any", **options: Any
    ) -> AsyncGenerator[Any, None]:
        """The items of the generator action ``plugin.method(args)``, run as a child job, as they come."""
        caller = self._need_caller(plugin_uuid)
        job_id = await self._submit(caller, plugin, method, args, host, options)
        with self._lend_slot():
            async with aclosing(caller.stream(job_id)) as items:
                async for item in items:
                    yield item
        self._open.discard(job_id)

    @property
    def open(self) -> bool:
        """True while a child job this attempt submitted has not been seen to end."""
        return bool(self._open)

    async def close(self, reason: str) -> None:
        """The attempt ended: cancel the children still running (their results are of no use now)."""
        open_ids, self._open = sorted(self._open), set()
        if open_ids and self._caller is not None:
            caller = self._caller
            await asyncio.gather(*(caller.cancel(job_id, reason) for job_id in open_ids), return_exceptions=True)

    async def _submit(
        self, caller: JobCaller, plugin: str, method: str, args: Any, host: str, options: dict[str, Any]
    ) -> str:
        job_id = await caller.submit(plugin, method, args, {**options, "host": host, "parent_id": self.parent_id})
        self._open.add(job_id)
        self.children.append(job_id)
        return job_id

    def _need_caller(self, plugin_uuid: str) -> JobCaller:
        if plugin_uuid:
            raise ValueError(
                "plugin_uuid targeting is not available for calls from a plugin: route with host= (a hostname)"
            )
        if self._caller is None:
            raise RuntimeError("plugin-to-plugin calls need a worker started by `actionq worker` (no job caller here)")
        return self._caller
