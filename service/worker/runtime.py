"""A worker's runtime, apart from arq: its plugins, its registry heartbeat and its executor.

The arq adapter (:mod:`service.worker.adapter`) owns the queue loop and calls :meth:`WorkerRuntime.run`
for each job; everything here is plain asyncio and Redis, testable without arq.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.errors import ActionQError
from service.events.bridge import EventBridge
from service.events.delegates import DelegateManager
from service.events.models import (
    Event,
    PluginDisabledEvent,
    PluginEnabledEvent,
    PluginFailedEvent,
    PluginLoadedEvent,
    WorkerErrorEvent,
    WorkerStartedEvent,
    WorkerStoppedEvent,
)
from service.models import ErrorInfo, now_ms
from service.plugins.calls import JobCaller
from service.plugins.config import PluginEnvironment
from service.plugins.loader import PluginLoader
from service.plugins.registry import Registry, WorkerInfo
from service.redis.cluster import check_layout, layout
from service.redis.connection import broker_errors
from service.redis.pubsub import PubSubMultiplexer
from service.settings import SUPERVISOR_ENV, Settings
from service.signing import MAX_AGE_S
from service.worker.executor import Executor, Outcome
from service.worker.sweep import Sweeper
from service.worker.take import TakenJob, handed_job

if TYPE_CHECKING:
    from service.worker.metrics import MetricsServer, WorkerMetrics

__all__ = ["Puller", "WorkerRuntime", "new_worker_id"]

log = structlog.get_logger("actionq.worker")


class Puller(Protocol):
    """What the runtime and control commands need of the queue loop (:class:`service.worker.adapter.ActionWorker`)."""

    allow_pick_jobs: bool
    tasks: dict[str, asyncio.Task[Any]]
    job_counter: int

    def set_queues(self, queues: list[str]) -> None: ...

    def adopt(self, job: TakenJob) -> None: ...

    def woken(self, queue: str, arq_job_id: str = "") -> None: ...

    def handle_sig(self, signum: signal.Signals) -> None: ...

    def handle_sig_wait_for_completion(self, signum: signal.Signals) -> None: ...


def new_worker_id(hostname: str) -> str:
    """A worker id that is unique across hosts, processes and restarts."""
    return f"{hostname}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class WorkerRuntime:
    """Plugins, registry and executor of one worker process."""

    def __init__(self, settings: Settings, redis: Redis, *, caller: JobCaller | None = None) -> None:
        self.settings = settings
        self.redis = redis
        self.keys = layout(redis, settings.namespace, settings.cluster_partitions)
        self.worker_id = new_worker_id(settings.hostname)
        self.registry = Registry(redis, self.keys, heartbeat_s=settings.heartbeat_s)
        # Created on the running loop: delegates are dispatched there (see service.events.delegates).
        self.delegates = DelegateManager(worker_id=self.worker_id)
        self.bridge = EventBridge(
            redis, self.keys, max_len=settings.events_max_len, window_s=settings.batch_window_ms / 1000
        )
        self.bridge.attach(self.delegates)
        self.loader = PluginLoader(
            enable_timeout_s=settings.plugin_enable_timeout_s,
            delegates=self.delegates,
            environment=PluginEnvironment(settings, redis),  # plugins' self.config and self.storage
        )
        self.executor = Executor(
            loader=self.loader,
            redis=redis,
            keys=self.keys,
            settings=settings,
            worker_id=self.worker_id,
            notify=self.notify,  # job events carry the runtime as their sender, as worker and plugin events do
            caller=caller,
            lend_slot=self.lend_slot,
        )
        self.sweeper = Sweeper(
            redis,
            self.keys,
            worker_id=self.worker_id,
            unserved_expire_s=settings.unserved_expire_s,
            expire=self.executor.expire_unserved,
        )
        self.info = WorkerInfo(worker_id=self.worker_id, hostname=settings.hostname)
        self.signer = settings.signer()
        self.running_jobs = 0
        self._heartbeat: asyncio.Task[None] | None = None
        self._listeners: list[asyncio.Task[None]] = []
        self.wake = asyncio.Event()  # set when there may be work: the worker polls at once
        self._queue_set: frozenset[str] = frozenset()
        self._mux = PubSubMultiplexer(redis)
        self._stopped = False
        self.stop_reason = ""
        self.puller: Puller | None = None
        """The queue loop running this runtime's jobs, once :meth:`attach` gave it."""
        self.metrics: WorkerMetrics | None = None
        """The Prometheus metrics, with ``metrics_port`` set (imported only then: no cost when off)."""
        self._metrics_server: MetricsServer | None = None
        if settings.metrics_port is not None:
            from service.worker.metrics import WorkerMetrics

            self.metrics = WorkerMetrics(active=lambda: self.running_jobs)
            self.delegates.add_sink(self.metrics)

    def queues(self) -> list[str]:
        """Every queue this worker reads: per lane, per loaded plugin, any host and this host."""
        return [
            self.keys.queue(plugin, lane, host)
            for lane in self.settings.queues
            for plugin in sorted(self.loader.loaded)
            for host in (None, self.settings.hostname)
        ]

    async def start(self, on_control: Callable[[bytes], None]) -> None:
        """Load and enable the configured plugins, then announce this worker.

        ``on_control`` handles the messages of the control channel (:class:`service.worker.control.ControlHandler`).
        """
        with broker_errors("reading the namespace's layout"):
            await check_layout(self.redis, self.keys)
        entries = [(e.name, self.settings.plugin_path(e)) for e in self.settings.plugins if e.enabled]
        await self.loader.load_all(entries)
        self._plugin_events()
        if not self.loader.loaded:
            log.warning("no_plugins_loaded", configured=[name for name, _ in entries])
        self.info.queues = self.queues()
        self._queue_set = frozenset(self.keys.every_queue_set(self.info.queues))
        # Listen before announcing: a command sent as soon as this worker shows in the registry
        # (the tests', an operator's script's) must find it subscribed.
        await self._listen(self.keys.cancel_channel(), self._on_cancel)
        for channel in self.keys.wake_channels():
            await self._listen(channel, self._on_wake)
        for channel in self.keys.worker_channels(self.worker_id):
            await self._listen(channel, self._on_handoff)
        await self._listen(self.keys.control_channel(), on_control)
        if self.metrics is not None:  # before announcing: a listed worker's endpoint answers
            from service.worker.metrics import metrics_port, serve

            self._metrics_server = serve(self.metrics, self.settings.metrics_host, metrics_port(self.settings) or 0)
        await self.publish()
        self._heartbeat = asyncio.create_task(self._beat(), name="actionq-heartbeat")
        supervisor = os.environ.get(SUPERVISOR_ENV)
        if supervisor and supervisor.isdigit():
            watch = _watch_supervisor(int(supervisor), self)
            self._listeners.append(asyncio.create_task(watch, name="actionq-supervisor"))
        self.notify(WorkerStartedEvent(**self.me(), queues=self.info.queues, plugins=self.info.plugins))
        log.info(
            "worker_started",
            worker_id=self.worker_id,
            plugins=sorted(self.loader.loaded),
            failed=sorted(self.loader.failures),
            queues=self.info.queues,
        )

    def attach(self, puller: Puller) -> None:
        """The queue loop that runs this runtime's jobs (handoffs, wake-ups and control commands act on it)."""
        self.puller = puller

    async def load_plugin(self, name: str, path: Path) -> str:
        """Load (and enable) a plugin at runtime; returns its version. Raises ``PluginLoadError``."""
        try:
            plugin = await self.loader.load(name, path)
        finally:
            self._plugin_events_for(name)
        await self._plugins_changed()
        return plugin.manifest.version

    async def unload_plugin(self, name: str, *, missing_ok: bool = False) -> None:
        """Disable and unload a plugin at runtime (its running jobs finish)."""
        plugin = self.loader.loaded.get(name)
        if plugin is None:
            if missing_ok:
                return
            raise KeyError(f"plugin {name!r} is not loaded here")
        await self.loader.unload(name)
        self.notify(PluginDisabledEvent(worker_id=self.worker_id, plugin=name, version=plugin.manifest.version))
        await self._plugins_changed()  # this worker's entry no longer lists it, nor its queues
        await self.registry.retire(name, self.worker_id)

    async def _plugins_changed(self) -> None:
        self.info.queues = self.queues()
        self._queue_set = frozenset(self.keys.every_queue_set(self.info.queues))
        if self.puller is not None:
            self.puller.set_queues(self.keys.every_queue_set(self.info.queues))
        await self.publish()
        self.wake.set()

    def _plugin_events_for(self, name: str) -> None:
        plugin, failure = self.loader.loaded.get(name), self.loader.failures.get(name)
        if plugin is not None:
            version = plugin.manifest.version
            self.notify(PluginLoadedEvent(worker_id=self.worker_id, plugin=name, version=version))
            self.notify(PluginEnabledEvent(worker_id=self.worker_id, plugin=name, version=version))
        elif failure is not None:
            self.notify(PluginFailedEvent(worker_id=self.worker_id, plugin=name, reason=failure.reason))

    @contextmanager
    def lend_slot(self) -> Iterator[None]:
        """While a job waits on a child job, its slot is free for another (the child, typically).

        The worker's job count drops by one and it looks for work; the count is back once the
        wait ends, even if that briefly puts it over ``concurrency``.
        """
        puller = self.puller
        if puller is None:
            yield
            return
        puller.job_counter -= 1
        self.wake.set()
        try:
            yield
        finally:
            puller.job_counter += 1

    def notify(self, event: Event) -> None:
        """Hand an event to this worker's delegates (the Redis bridge is one of them); never blocks."""
        self.delegates.invoke_notification(event, sender=self)

    def me(self) -> dict[str, Any]:
        """The fields every worker event carries: worker id, host, pid."""
        return {"worker_id": self.worker_id, "hostname": self.settings.hostname, "pid": os.getpid()}

    def _plugin_events(self) -> None:
        for name in [*self.loader.loaded, *self.loader.failures]:
            self._plugin_events_for(name)

    def worker_error(self, where: str, exc: BaseException) -> None:
        """Report an error of the worker itself (not of a job) as a ``worker_error`` event."""
        self.notify(WorkerErrorEvent(**self.me(), where=where, error=ErrorInfo.from_exception(exc)))

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
                self.worker_error("heartbeat", exc)
                continue
            try:
                await self.sweeper.maybe_sweep()
            except (ActionQError, RedisError, OSError) as exc:
                log.warning("sweep_failed", error=str(exc))

    async def _listen(self, channel: str, handle: Callable[[bytes], None]) -> None:
        """Route a channel's messages to ``handle``, on the process's one pub/sub connection.

        Returns once the subscription is confirmed, so nothing published after start is missed.
        """
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def follow() -> None:
            try:
                async with self._mux.subscribe(channel, handle):  # the reader calls handle itself
                    ready.set_result(None)
                    await asyncio.Event().wait()  # subscribed until stop() cancels this task
            except Exception as exc:
                if not ready.done():
                    ready.set_exception(exc)
                raise

        self._listeners.append(asyncio.create_task(follow(), name=f"actionq-listen-{channel}"))
        await ready

    def _on_cancel(self, message: bytes) -> None:
        """Cancel requests are pushed to every worker; the one running the job acts at once."""
        try:
            data = json.loads(message)
            job_id, reason = str(data["job_id"]), str(data.get("reason") or "cancelled")
            generation = data["generation"]
            if type(generation) is not int:
                raise TypeError("generation is not an integer")
            self._check_cancel(job_id, reason, data)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("bad_cancel_message", error=str(exc), message=message[:200])
            return
        if self.executor.cancel(job_id, reason, generation):
            log.info("job_cancel_requested", job_id=job_id, reason=reason)

    def _check_cancel(self, job_id: str, reason: str, data: dict[str, Any]) -> None:
        """Raise ``ValueError`` unless a worker with signing keys accepts this cancel push."""
        if not self.signer.enabled:
            return
        sent = data.get("ts")
        if type(sent) is not int or not self.signer.verify(
            str(data.get("sig", "")), "cancel", job_id, reason, str(sent)
        ):
            raise ValueError("the cancel is not signed with an accepted key (signing_keys)")
        if abs(now_ms() - sent) > MAX_AGE_S * 1000:
            raise ValueError(f"the cancel was signed more than {MAX_AGE_S:g}s ago (a replay?)")

    def _on_wake(self, message: bytes) -> None:
        """A job was submitted to ``message`` (a queue name): poll now if it is one of ours."""
        if message.decode(errors="replace") in self._queue_set:
            self.wake.set()

    def _on_handoff(self, message: bytes) -> None:
        """A submit handed a job straight to this worker (it was listed as idle): run it now.

        "<queue> <arq id>" instead: a submit to that queue woke this busy worker (it had room) for that job.
        """
        if b"\n" not in message:
            queue, _, arq_job_id = message.decode(errors="replace").partition(" ")
            if self.puller is not None:
                self.puller.woken(queue, arq_job_id)
            return
        try:
            job = handed_job(message, self.keys)
        except ValueError as exc:  # also a bad UTF-8 or a foreign namespace
            log.warning("bad_handoff_message", error=str(exc), message=message[:200])
            return
        if self.puller is None:  # not listed before the loop runs: cannot happen; the lease lapses
            log.warning("handoff_before_start", job_id=job.job_id)
            return
        self.puller.adopt(job)

    async def run(self, job: TakenJob) -> Outcome | None:
        """Run one taken job (called by the worker loop)."""
        self.running_jobs += 1
        if self.metrics is not None:
            self.metrics.taken(job.job_id, job.attempt, job.enqueued_at_ms)
        try:
            return await self.executor.run(job)
        finally:
            self.running_jobs -= 1
            if self.metrics is not None:
                self.metrics.forget(job.job_id)

    async def stop(self) -> None:
        """Stop the heartbeat, leave the registry and disable the plugins (once; later calls do nothing)."""
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_STOP_STEP_S):
                await self._mux.close()  # first: the listeners then leave without an UNSUBSCRIBE each
        tasks = [task for task in (self._heartbeat, *self._listeners) if task is not None]
        for task in tasks:
            task.cancel()
        if tasks:  # each ends at its next await; one stuck in a dead connection is not waited for long
            await asyncio.wait(tasks, timeout=_STOP_STEP_S)
        # Best effort, and bounded: the entry expires by itself, and a connection left odd by a
        # heartbeat cancelled mid-pipeline must not hold the exit for its socket timeouts.
        with contextlib.suppress(ActionQError, TimeoutError):
            async with asyncio.timeout(_STOP_STEP_S):
                await self.registry.withdraw(self.worker_id)
        self.notify(WorkerStoppedEvent(**self.me(), reason=self.stop_reason))
        for name, plugin in self.loader.loaded.items():
            self.notify(PluginDisabledEvent(worker_id=self.worker_id, plugin=name, version=plugin.manifest.version))
        await self.loader.unload_all()
        await self.delegates.aclose()
        await self.bridge.aclose()
        if self._metrics_server is not None:
            await asyncio.to_thread(self._metrics_server.close)  # its shutdown waits for the server's poll
        log.info("worker_stopped", worker_id=self.worker_id)


_STOP_STEP_S = 3.0
"""How long a shutdown step that only tidies Redis may take (the worker's registry entry)."""


async def _watch_supervisor(pid: int, runtime: WorkerRuntime) -> None:
    """A pool member drains and exits when its supervisor is gone (SIGKILLed, say)."""
    while os.getppid() == pid:  # noqa: ASYNC110 - no event tells a process its parent died; poll
        await asyncio.sleep(1.0)
    log.warning("supervisor_gone", supervisor_pid=pid)
    runtime.stop_reason = f"its parent (pid {pid}) exited"
    os.kill(os.getpid(), signal.SIGTERM)  # the worker's own graceful shutdown
