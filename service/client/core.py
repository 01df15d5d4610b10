"""Seed 004's ``PluginCore``, for code written against it: the same calls, run by actionq workers.

The seed's ``PluginCore`` loaded plugins into its own process; here plugins live in worker
processes (``actionq worker``, ``actionq up``) and a ``PluginCore`` is a client of them, through
Redis. So the seed's ``main_application.py`` runs with its import line changed::

    from service import PluginCore          # was: from PluginCore import PluginCore

    async def main():
        plugin_core = PluginCore("config.yml")
        await plugin_core.wait_until_ready()     # until live workers serve the configured plugins
        result = await plugin_core.execute("PluginB", "calculate_square", 6, host="local")

What each seed call becomes (``docs/python-client.md`` has the table):

* ``execute`` / ``execute_sync`` / ``execute_stream``: a job (:meth:`JobClient.submit`) and its
  result or items; ``author`` is kept in the job's record (``request.options.author``),
  ``plugin_uuid`` names a worker (below), ``timeout`` bounds the wait (the job is then cancelled).
* ``wait_until_ready``: waits until live workers serve every enabled plugin of ``plugins:``.
* ``get_plugins`` / ``start_plugins`` / ``purge_plugins`` / ``pop_plugin``: ``load_plugin`` and
  ``disable_plugin`` control commands to the workers of this host (``host=`` to choose others).

A plugin instance is a plugin loaded by one worker, so the ``plugin_uuid`` a core targets is that
worker's id (:meth:`PluginCore.plugin_uuids` lists them). actionq has no per-worker queue: the job
goes to the queue of that worker's host, which every worker on the host serving the plugin reads
(on a host with one worker, that is the instance).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncGenerator
from contextlib import aclosing
from pathlib import Path
from types import TracebackType
from typing import Any

from service.client.client import JobClient, Params
from service.client.handle import JobHandle, error_for
from service.client.loops import ClientPerLoop
from service.client.plugincontrol import disable_plugins, failures, load_plugins, serving
from service.errors import (
    ActionQError,
    ConfigError,
    PluginActionExecutionError,
    PluginsNotReadyError,
    ResultTimeoutError,
    StreamUnavailableError,
    SubmissionError,
)
from service.events.models import EventKind
from service.models import JobState
from service.settings import Settings, load_settings

__all__ = ["PluginCore", "PluginsNotReadyError", "StreamTuple"]

# What submit accepts besides plugin, action, params, host and author (an unknown name is refused by name).
_SUBMIT_OPTIONS = frozenset(inspect.signature(JobClient.submit).parameters) - {"self", "plugin", "action", "params"}

StreamTuple = tuple[Any, PluginActionExecutionError | ResultTimeoutError | None, str]
"""What :meth:`PluginCore.execute_stream` yields: ``(result, error, request_id)``, as in the seed."""

# wait_until_ready re-reads the registry at least this often: a plugin_enabled event can be
# published a moment before the worker's registry entry lists the plugin, and liveness changes
# with time alone (a worker that stops heartbeating).
_RECHECK_S = 0.5
# The default wait of wait_until_ready: a cold worker start takes a few seconds; past this, say
# what is missing rather than hang the seed's script forever.
_READY_TIMEOUT_S = 30.0
_NO_REDIS = (
    "PluginCore runs plugins on actionq workers, through Redis, and no Redis is configured: set redis_url in "
    "{source} or ACTIONQ_REDIS_URL (`actionq up` starts a Redis and a worker and prints the URL). It does not "
    "load plugins into this process."
)


class PluginCore:
    """Seed 004's ``PluginCore`` over actionq: ``PluginCore("config.yml")``, then ``await core.execute(...)``.

    ``config_path`` is read as actionq's ``config.yml`` (which takes the seed's ``plugins:``,
    ``general:`` and ``networking:`` sections); ``ACTIONQ_*`` variables override it, and
    ``redis_url`` / ``namespace`` override both. ``settings`` replaces all of that, and ``client``
    reuses a connected :class:`JobClient` (not closed by :meth:`close`). The connection opens on
    the first awaited call and closes with :meth:`close`, or when the event loop that opened it
    ends (``asyncio.run`` returning: the seed's example never closes its core).
    """

    def __init__(
        self,
        config_path: str | Path | None = None,
        *,
        redis_url: str | None = None,
        namespace: str | None = None,
        settings: Settings | None = None,
        client: JobClient | None = None,
    ) -> None:
        if settings is not None and config_path is not None:
            raise ConfigError("PluginCore takes a config_path or settings, not both")
        if settings is None:
            settings = client.settings if client is not None else load_settings(config_path)
        overrides = {k: v for k, v in {"redis_url": redis_url, "namespace": namespace}.items() if v is not None}
        self.settings = settings.model_copy(update=overrides) if overrides else settings
        if self.settings.redis_url is None and client is None:
            raise ConfigError(_NO_REDIS.format(source=config_path or "config.yml"))
        self.clients = ClientPerLoop(self.settings, client)
        """The connection of each event loop the core is used from."""

    @property
    def configured_plugins(self) -> list[str]:
        """The enabled plugins of ``plugins:``: what :meth:`wait_until_ready` waits for, :meth:`get_plugins` loads."""
        return [entry.name for entry in self.settings.plugins if entry.enabled]

    # -- the connection ---------------------------------------------------------------------
    async def connect(self) -> JobClient:
        """The :class:`JobClient` of the running event loop, connected on first use (one per loop)."""
        return await self.clients.get()

    async def close(self) -> None:
        """Close this loop's connection and the background loop of :meth:`execute_sync`, if any."""
        await self.clients.close()

    def close_sync(self) -> None:
        """Close what sync code opened: the background loop of :meth:`execute_sync` and its connection."""
        self.clients.close_sync()

    async def __aenter__(self) -> PluginCore:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __enter__(self) -> PluginCore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close_sync()

    # -- running actions ---------------------------------------------------------------------
    async def execute(
        self,
        plugin: str,
        method: str,
        args: Params = None,
        plugin_uuid: str = "",
        host: str = "any",
        author: str | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> Any:
        """Run ``plugin.method(args)`` on a worker and return its result (the seed's ``execute``).

        ``args``: a dict of named arguments, a tuple of positional ones, or one value.
        ``host``: ``"any"``, ``"local"`` (this host), ``"remote"`` (another host) or a hostname;
        ``plugin_uuid``: a worker id serving ``plugin`` (:meth:`plugin_uuids`); ``author``: kept
        in the record. ``timeout`` bounds the wait: past it the job is cancelled and
        :class:`ResultTimeoutError` (a ``TimeoutError``) raised. ``options``: fields of
        :class:`JobOptions` (``timeout_s``, ``queue``, ``retry``, ``job_id``...). A failed action
        raises :class:`PluginActionExecutionError`, one past its own timeout
        :class:`PluginActionTimeoutError`; a refused submit a :class:`SubmissionError`.
        """
        client = await self.connect()
        handle = await self._submit(client, plugin, method, args, plugin_uuid, host, author, options)
        try:
            return await handle.result(timeout=timeout)
        except ResultTimeoutError:
            await _abandon(handle, timeout)
            raise

    def execute_sync(
        self,
        plugin: str,
        method: str,
        args: Params = None,
        plugin_uuid: str = "",
        host: str = "any",
        author: str | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> Any:
        """:meth:`execute` for code that is not async: blocks this thread until the result.

        From a thread while the core's loop runs elsewhere, the call runs on that loop (the seed's
        ``run_coroutine_threadsafe``); with no loop of the core running, on a private one in a
        background thread (:meth:`close_sync` stops it). In a running event loop it is refused:
        it would stall that loop (``await core.execute(...)`` there).
        """
        loop = self.clients.sync_loop("execute_sync")
        call = self.execute(plugin, method, args, plugin_uuid, host, author, timeout, **options)
        return asyncio.run_coroutine_threadsafe(call, loop).result()

    async def execute_stream(
        self,
        plugin: str,
        method: str,
        args: Params = None,
        plugin_uuid: str = "",
        host: str = "any",
        author: str | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> AsyncGenerator[StreamTuple, None]:
        """Run a generator action and yield ``(result, error, request_id)`` per item (the seed's ``execute_stream``).

        Each item comes as ``(item, None, job_id)``. When the job fails (or times out, or is
        cancelled) after some items, the last tuple is ``(None, error, job_id)`` with the
        exception :meth:`execute` would raise, and the stream ends without raising; ``timeout``
        (the whole stream's) ends it the same way with a :class:`ResultTimeoutError`, the job
        cancelled. An action that is not a generator yields its result as one tuple. A submit
        that is refused raises, as there is no request yet. Arguments as for :meth:`execute`.
        """
        client = await self.connect()
        handle = await self._submit(client, plugin, method, args, plugin_uuid, host, author, options)
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        async with aclosing(_tuples(handle, deadline, timeout)) as tuples:
            async for found in tuples:
                yield found

    async def _submit(
        self,
        client: JobClient,
        plugin: str,
        method: str,
        args: Params,
        plugin_uuid: str,
        host: str,
        author: str | None,
        options: dict[str, Any],
    ) -> JobHandle:
        """Submit through :meth:`JobClient.submit`, with the seed's ``author`` and ``plugin_uuid``."""
        host = await self._target(client, plugin, plugin_uuid, host)
        unknown = sorted(set(options) - _SUBMIT_OPTIONS)
        if unknown:
            raise SubmissionError(f"invalid job options: unknown option(s) {', '.join(map(repr, unknown))}")
        return await client.submit(plugin, method, args, host=host, author=author or None, **options)

    async def _target(self, client: JobClient, plugin: str, plugin_uuid: str, host: str) -> str:
        """The host a job for ``plugin_uuid`` (a worker id) goes to; ``host`` when no uuid is given."""
        if not plugin_uuid:
            return host
        workers = await client.workers()
        worker = next((w for w in serving(workers, plugin) if w.worker_id == plugin_uuid), None)
        if worker is None:
            ids = [w.worker_id for w in serving(workers, plugin)]
            known = f"its instances: {', '.join(ids)}" if ids else "no live worker serves it"
            raise SubmissionError(f"plugin_uuid {plugin_uuid!r} is no live worker serving {plugin!r} ({known})")
        here, there = client.settings.hostname, worker.hostname
        if host in ("any", there) or (host == "local" and there == here) or (host == "remote" and there != here):
            return there
        raise SubmissionError(
            f"plugin_uuid {plugin_uuid!r} is a worker on host {worker.hostname!r}, which host={host!r} excludes"
        )

    async def plugin_uuids(self, plugin: str) -> list[str]:
        """The ``plugin_uuid`` of each live instance of ``plugin``: the ids of the workers serving it."""
        return [w.worker_id for w in serving(await (await self.connect()).workers(), plugin)]

    # -- waiting and managing plugins ----------------------------------------------------------
    async def wait_until_ready(self, timeout: float | None = _READY_TIMEOUT_S) -> None:
        """Wait until live workers serve every enabled plugin of ``plugins:`` (the seed's "loaded").

        Woken by the workers' ``worker_started`` and ``plugin_enabled`` events, re-checking the
        registry twice a second as well. Raises :class:`PluginsNotReadyError`, naming what is
        missing (and why, when a worker failed to load it), after ``timeout`` seconds (``None``:
        wait forever). With no plugin configured there is nothing to wait for: it returns at once.
        """
        client, names = await self.connect(), self.configured_plugins
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        changed = asyncio.Event()
        async with contextlib.AsyncExitStack() as stack:
            for kind in (EventKind.WORKER_STARTED, EventKind.PLUGIN_ENABLED):
                channel = client.keys.event_channel(kind)
                await stack.enter_async_context(client.pubsub.subscribe(channel, lambda _: changed.set()))
            while True:
                changed.clear()
                workers = await client.workers()
                missing = [name for name in names if not serving(workers, name)]
                if not missing:
                    return
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= 0:
                    raise PluginsNotReadyError(missing, timeout or 0.0, failures(workers, missing))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_RECHECK_S if left is None else min(left, _RECHECK_S)):
                        await changed.wait()

    async def get_plugins(self, host: str = "local") -> None:
        """Load the enabled plugins of ``plugins:`` on the workers of ``host`` that lack them (the seed's load).

        ``host``: ``"local"`` (this host, the seed's node), ``"any"`` (every live worker) or a
        hostname. Each worker loads the plugin from the entry's ``path`` if it has one, else from
        its own configuration. actionq loads and enables in one step, so the plugin serves once
        loaded. Raises :class:`PluginLoadError` with each worker's reason if any refused.
        """
        entries = [entry for entry in self.settings.plugins if entry.enabled]
        await load_plugins(await self.connect(), entries, host)

    async def start_plugins(self, host: str = "local", timeout: float | None = _READY_TIMEOUT_S) -> None:
        """The seed's "enable all loaded plugins": :meth:`get_plugins`, then :meth:`wait_until_ready`.

        A plugin actionq has loaded is enabled already; what this adds is bringing back the
        configured plugins a :meth:`purge_plugins` or :meth:`pop_plugin` took away, and waiting
        until they serve.
        """
        await self.get_plugins(host)
        await self.wait_until_ready(timeout)

    async def purge_plugins(self, host: str = "local") -> None:
        """Disable every plugin the workers of ``host`` serve (the seed's "unload all plugins").

        Each is unloaded from those workers (``disable_plugin``); their running jobs finish, and
        queued jobs wait until a worker serves the plugin again. Raises :class:`PluginError` with
        each worker's reason if any refused.
        """
        await disable_plugins(await self.connect(), host)

    async def pop_plugin(self, plugin_name: str, host: str = "local") -> None:
        """Disable ``plugin_name`` on the workers of ``host`` that serve it (the seed's "remove a plugin").

        Raises :class:`UnknownPluginError` when none of them serves it, :class:`PluginError` if
        a worker refused.
        """
        await disable_plugins(await self.connect(), host, plugin_name)


async def _tuples(
    handle: JobHandle, deadline: float | None, timeout: float | None
) -> AsyncGenerator[StreamTuple, None]:
    """The seed's stream tuples of ``handle``'s job: its items, then its error (if any) as the last one."""
    async with aclosing(handle.stream()) as items:
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    item = await anext(items)
            except StopAsyncIteration:
                return
            except TimeoutError:
                await _abandon(handle, timeout)
                yield None, ResultTimeoutError(handle.job_id, timeout or 0.0, "streaming"), handle.job_id
                return
            except PluginActionExecutionError as exc:
                yield None, exc, handle.job_id
                return
            except StreamUnavailableError:  # not a generator action: its result is the one item
                yield await _single(handle)
                return
            yield item, None, handle.job_id


async def _single(handle: JobHandle) -> StreamTuple:
    """The one tuple of a job that ended without a stream: its result, or its error."""
    record = await handle.wait()
    if record.state is JobState.SUCCEEDED:
        return record.result, None, handle.job_id
    return None, error_for(handle.job_id, record.state, record.error), handle.job_id


async def _abandon(handle: JobHandle, timeout: float | None) -> None:
    """The caller stopped waiting: cancel the job (nobody takes its result), without waiting for it to stop."""
    with contextlib.suppress(ActionQError):
        await handle.cancel(reason=f"the caller's timeout of {timeout or 0:g}s passed", timeout=0)
