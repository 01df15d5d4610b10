"""One :class:`JobClient` per event loop, for a facade called from async code, threads and plain sync code.

A Redis connection belongs to the event loop that opened it. :class:`ClientPerLoop` (used by
:class:`~service.client.core.PluginCore`) opens one per loop on first use and closes it when asked,
or when the loop ends: ``asyncio.run`` cancels the tasks still pending before it closes the loop,
and a keeper task per connection closes it then — so code that never closes (the seed's
``main_application.py``) leaves no connection open. Sync code gets the loop to run on from
:meth:`ClientPerLoop.sync_loop`: one of ours running in another thread, else a private loop in a
daemon thread.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
from collections.abc import Awaitable, Callable

from service.client.client import JobClient
from service.errors import ActionQError
from service.settings import Settings

__all__ = ["ClientPerLoop"]


class ClientPerLoop:
    """The :class:`JobClient` of each event loop it is used from (or one ``given`` client, not closed here)."""

    def __init__(self, settings: Settings, given: JobClient | None = None) -> None:
        self.settings = settings
        self._given = given
        self._lock = threading.Lock()  # sync callers read the dicts from other threads
        self._connecting: dict[asyncio.AbstractEventLoop, asyncio.Task[JobClient]] = {}
        self._keepers: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}
        self._background: _LoopThread | None = None

    async def get(self) -> JobClient:
        """The running loop's client, connected on first use (concurrent first calls share one connect)."""
        if self._given is not None:
            return self._given
        loop = asyncio.get_running_loop()
        with self._lock:
            task = self._connecting.get(loop)
            if task is None:
                task = self._connecting[loop] = loop.create_task(self._open(loop), name="actionq-connect")
        try:
            return await asyncio.shield(task)  # a cancelled caller leaves the connect to the others
        except ActionQError:
            with self._lock:
                if self._connecting.get(loop) is task:
                    del self._connecting[loop]  # the next call tries again
            raise

    async def _open(self, loop: asyncio.AbstractEventLoop) -> JobClient:
        client = await JobClient.connect(settings=self.settings)
        with self._lock:
            self._keepers[loop] = loop.create_task(self._keep(loop, client), name="actionq-client-keeper")
        return client

    async def _keep(self, loop: asyncio.AbstractEventLoop, client: JobClient) -> None:
        """Hold ``client`` until :meth:`close` or the loop's end, then close it."""
        try:
            await asyncio.Event().wait()
        finally:
            with self._lock:
                self._connecting.pop(loop, None)
                self._keepers.pop(loop, None)
            await client.close()

    async def close(self) -> None:
        """Close the running loop's client and the private loop of sync callers (with its client)."""
        await self._close_here()
        background, self._background = self._background, None
        if background is not None:
            atexit.unregister(self.close_sync)
            await asyncio.to_thread(background.stop, self._close_here)

    def close_sync(self) -> None:
        """Close the private loop of sync callers and its client (from sync code)."""
        background, self._background = self._background, None
        if background is not None:
            atexit.unregister(self.close_sync)
            background.stop(self._close_here)

    async def _close_here(self) -> None:
        with self._lock:
            keeper = self._keepers.get(asyncio.get_running_loop())
        if keeper is not None:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)

    def sync_loop(self, what: str) -> asyncio.AbstractEventLoop:
        """The loop a blocking call (``what``) runs its coroutine on; refused in a thread running a loop."""
        if _in_event_loop():
            raise ActionQError(
                f"{what} blocks its thread until the result, and this thread runs an event loop that it would "
                "stall: await the async form here"
            )
        if self._given is not None:
            raise ActionQError(f"{what} needs its own connection: it cannot use a client given from a loop")
        with self._lock:
            running = [loop for loop in self._keepers if loop.is_running()]
            if running:
                return running[0]  # the seed's way: run_coroutine_threadsafe onto the loop in use
            if self._background is None:
                self._background = _LoopThread()
                atexit.register(self.close_sync)  # a sync program that never closes leaves nothing open
            return self._background.loop


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class _LoopThread:
    """A private event loop in a daemon thread, for blocking calls from plain sync code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="actionq-sync-loop", daemon=True)
        self._thread.start()

    def stop(self, closing: Callable[[], Awaitable[None]]) -> None:
        """Run ``closing()`` on the loop, then stop it and join the thread."""

        async def run() -> None:
            await closing()

        try:
            asyncio.run_coroutine_threadsafe(run(), self.loop).result()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()
            self.loop.close()
