"""A worker's runtime, apart from arq: its plugins, its registry heartbeat and its executor.

The arq adapter (:mod:`service.worker`) owns the queue loop and calls :meth:`WorkerRuntime.run`
for each job; everything here is plain asyncio and Redis, testable without arq.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from typing import Any

import structlog
from redis.asyncio import Redis

from service.errors import ActionQError
from service.executor import Executor, Outcome
from service.keys import Keys
from service.loader import PluginLoader
from service.pubsub import PubSubMultiplexer, Subscription
from service.registry import Registry, WorkerInfo
from service.settings import Settings
from service.store import JobStore

__all__ = ["WorkerRuntime", "new_worker_id"]

log = structlog.get_logger("actionq.worker")


def new_worker_id(hostname: str) -> str:
    """A worker id that is unique across hosts, processes and restarts."""
    return f"{hostname}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class WorkerRuntime:
    """Plugins, registry and executor of one worker process."""

    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.keys = Keys(settings.namespace)
        self.worker_id = new_worker_id(settings.hostname)
        self.store = JobStore(redis, self.keys)
        self.registry = Registry(redis, self.keys, heartbeat_s=settings.heartbeat_s)
        self.loader = PluginLoader(enable_timeout_s=settings.plugin_enable_timeout_s)
        self.executor = Executor(loader=self.loader, store=self.store, settings=settings, worker_id=self.worker_id)
        self.info = WorkerInfo(worker_id=self.worker_id, hostname=settings.hostname)
        self.running_jobs = 0
        self._heartbeat: asyncio.Task[None] | None = None
        self._cancels: asyncio.Task[None] | None = None
        self._mux = PubSubMultiplexer(redis)
        self._stopped = False

    def queues(self) -> list[str]:
        """Every queue this worker reads: per lane, per loaded plugin, any host and this host."""
        return [
            self.keys.queue(plugin, lane, host)
            for lane in self.settings.queues
            for plugin in sorted(self.loader.loaded)
            for host in (None, self.settings.hostname)
        ]

    async def start(self) -> None:
        """Load and enable the configured plugins, then announce this worker."""
        entries = [(e.name, self.settings.plugin_path(e)) for e in self.settings.plugins if e.enabled]
        await self.loader.load_all(entries)
        if not self.loader.loaded:
            log.warning("no_plugins_loaded", configured=[name for name, _ in entries])
        self.info.queues = self.queues()
        await self.publish()
        self._heartbeat = asyncio.create_task(self._beat(), name="actionq-heartbeat")
        ready = asyncio.get_running_loop().create_future()
        self._cancels = asyncio.create_task(self._listen_for_cancels(ready), name="actionq-cancel-listener")
        await ready
        log.info(
            "worker_started",
            worker_id=self.worker_id,
            plugins=sorted(self.loader.loaded),
            failed=sorted(self.loader.failures),
            queues=self.info.queues,
        )

    async def publish(self) -> None:
        """Send this worker's description and manifests to the registry."""
        self.info.plugins = {name: p.manifest.version for name, p in self.loader.loaded.items()}
        self.info.failed_plugins = {name: err.reason for name, err in self.loader.failures.items()}
        self.info.running_jobs = self.running_jobs
        await self.registry.publish(self.info, [p.manifest for p in self.loader.loaded.values()])

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            try:
                await self.publish()
            except ActionQError as exc:
                log.warning("heartbeat_failed", error=str(exc))

    async def _listen_for_cancels(self, ready: asyncio.Future[None]) -> None:
        """Cancel requests are pushed to every worker; the one running the job acts at once."""
        try:
            async with self._mux.subscribe(self.keys.cancel_channel()) as sub:
                ready.set_result(None)
                await self._route_cancels(sub)
        except Exception as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    async def _route_cancels(self, sub: Subscription) -> None:
        async for message in sub:
            try:
                data = json.loads(message)
                job_id, reason = str(data["job_id"]), str(data.get("reason") or "cancelled")
            except (ValueError, KeyError, TypeError):
                log.warning("bad_cancel_message", message=message[:200])
                continue
            if self.executor.cancel(job_id, reason):
                log.info("job_cancel_requested", job_id=job_id, reason=reason)

    async def run(self, job_id: str, raw_request: Any, attempt: int) -> Outcome | None:
        """Run one job (called by the arq adapter)."""
        self.running_jobs += 1
        try:
            return await self.executor.run(job_id, raw_request, attempt)
        finally:
            self.running_jobs -= 1

    async def stop(self) -> None:
        """Stop the heartbeat, leave the registry and disable the plugins (once; later calls do nothing)."""
        if self._stopped:
            return
        self._stopped = True
        for task in (self._heartbeat, self._cancels):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._mux.close()
        with contextlib.suppress(ActionQError):
            await self.registry.withdraw(self.worker_id)
        await self.loader.unload_all()
        log.info("worker_stopped", worker_id=self.worker_id)
