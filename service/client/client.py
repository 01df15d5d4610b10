"""The producer side: :class:`JobClient` submits jobs, :class:`JobHandle` follows one.

::

    async with await JobClient.connect("redis://localhost:6379/0") as client:
        handle = await client.submit("PluginB", "calculate_square", {"x": 6})
        print(await handle.result(timeout=10))   # 36

Submission validates the params against the manifest that live workers published (the
registry) before anything is written, then writes the job record and the
queue entry in one atomic script. A second submit with the same ``job_id`` does not enqueue
again: it returns a handle with ``created=False`` (or raises :class:`JobConflictError` if the
id was used for different work).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType, TracebackType
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis

from service.client.deadletters import DeadLetterStore
from service.client.handle import JobHandle
from service.client.singleflight import SharedReads
from service.client.store import CreateResult, JobStore, NewJob
from service.errors import (
    ActionQError,
    ConfigError,
    FieldError,
    InvalidParamsError,
    JobConflictError,
    SubmissionError,
    UnknownPluginError,
    UnservableJobError,
)
from service.events.control import Command, ControlCommand, ControlReport, send_control
from service.events.models import EventKind, ReceivedEvent
from service.events.reader import read_events
from service.keys import Keys
from service.models import JobOptions, JobRequest, now_ms
from service.plugins.manifest import PluginManifest
from service.plugins.registry import RegisteredPlugin, Registry, WorkerInfo
from service.redis.cluster import check_layout, check_settings, layout
from service.redis.connection import broker_errors, connect, redact
from service.redis.pubsub import PubSubMultiplexer
from service.retry import RetryOverride
from service.settings import Settings, load_settings
from service.tracing import start as start_tracing
from service.wire import bad_key, check_size, not_json

__all__ = ["JobClient"]

_NO_TRACE = {"options": {"traceparent"}}
# Registry entries are re-read at most this often per plugin: submit stays one round trip.
_REGISTRY_CACHE_S = 1.0

Params = Mapping[str, Any] | Sequence[Any] | str | int | float | bool | None

_OPTION_NAMES = frozenset(
    {"job_id", "timeout_s", "queue", "defer_s", "at", "result_ttl_s", "retry", "expires_s", "host", "watch",
     "parent_id", "author", "traceparent"}
)  # fmt: skip
"""The keyword options of :meth:`JobClient.submit` (``validate`` aside), as :class:`JobSpec` names them."""
_OPTIONS_KEPT = 256  # distinct option sets validated once and kept (most submits share a few)


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One job of :meth:`JobClient.submit_many`: what :meth:`JobClient.submit` takes, as values.

    ``options`` are :meth:`~JobClient.submit`'s keyword options by name (``job_id``, ``queue``,
    ``defer_s``, ``at``, ``retry``, ``host``, ``watch``, ``author``, ...); an unknown one refuses the job.
    """

    plugin: str
    action: str
    params: Params = None
    options: Mapping[str, Any] = field(default_factory=lambda: _NO_OPTIONS)


_NO_OPTIONS: Mapping[str, Any] = MappingProxyType({})
"""Every option-less spec's options: one mapping, so that :meth:`JobClient.submit_many` checks them once."""


def fresh_ids(count: int) -> list[str]:
    """``count`` new job ids: 128 random bits each, in hex (as a uuid4's ``hex``), from one read of
    the system's random source."""
    raw = os.urandom(16 * count).hex()
    return [raw[i : i + 32] for i in range(0, 32 * count, 32)]


async def _guarded(submit: Awaitable[JobHandle]) -> JobHandle | ActionQError:
    try:
        return await submit
    except ActionQError as exc:
        return exc


class JobClient:
    """Submits jobs to one actionq deployment (a Redis URL and a namespace)."""

    def __init__(self, redis: Redis, settings: Settings, *, owns_redis: bool = True) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = layout(redis, settings.namespace, settings.cluster_partitions)
        self.signer = settings.signer()
        """Signs job requests, cancels and control commands when ``signing_keys`` are set."""
        check_settings(redis, settings)
        self.store = JobStore(
            redis,
            self.keys,
            signer=self.signer,
            wait_replicas=settings.wait_replicas,
            wait_timeout_s=settings.wait_replicas_timeout_s,
        )
        self.registry = Registry(redis, self.keys, heartbeat_s=settings.heartbeat_s)
        self._owns_redis = owns_redis
        self._mux: PubSubMultiplexer | None = None
        self.dead = DeadLetterStore(redis, self.keys, ttl_s=settings.dead_letter_ttl_s, submit=self.submit_request)
        self._entries: SharedReads[str, RegisteredPlugin | None] = SharedReads(_REGISTRY_CACHE_S)
        self._workers: SharedReads[None, list[WorkerInfo]] = SharedReads(_REGISTRY_CACHE_S)
        self._routed: dict[int, dict[str, int]] = {}
        self._options_seen: dict[tuple[tuple[tuple[str, Any], ...], tuple[type, ...]], JobOptions] = {}
        self._turn = -1
        self.on_submitted: list[Callable[[JobRequest, JobHandle], None]] = []
        """Called with each written request and its handle (``handle.created``: a new job), from any
        submit, single, batched or a dead letter's replay (the gateway counts them for its metrics)."""
        self.tracing = start_tracing(settings.tracing)
        """Starts the submit spans when ``tracing.enabled`` (``None``, and nothing imported, when not)."""

    @classmethod
    async def connect(
        cls, redis_url: str | None = None, *, namespace: str | None = None, settings: Settings | None = None
    ) -> JobClient:
        """Connect to ``redis_url`` (else the configured ``redis_url``) and check it answers."""
        settings = settings or load_settings(redis_url=redis_url, namespace=namespace)
        if redis_url is not None or namespace is not None:
            settings = settings.model_copy(
                update={k: v for k, v in {"redis_url": redis_url, "namespace": namespace}.items() if v is not None}
            )
        if settings.redis_url is None:
            raise ConfigError(
                "no Redis configured: set redis_url in config.yml or ACTIONQ_REDIS_URL "
                "(`actionq up` prints the URL of the server it starts)"
            )
        redis = connect(settings.redis_url)
        client = cls(redis, settings)
        with broker_errors(f"connecting to {redact(settings.redis_url)}"):
            await redis.ping()
            await check_layout(redis, client.keys)
        return client

    async def __aenter__(self) -> JobClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the pub/sub connection and, if this client opened it, the Redis connection."""
        if self._mux is not None:
            await self._mux.close()
            self._mux = None
        if self._owns_redis:
            await self.redis.aclose()

    @property
    def pubsub(self) -> PubSubMultiplexer:
        """The process-wide pub/sub connection of this client (opened on first use)."""
        if self._mux is None:
            self._mux = PubSubMultiplexer(self.redis, reconnect_s=self.settings.reconnect_s)
        return self._mux

    # -- submitting -----------------------------------------------------------------------
    async def submit(
        self,
        plugin: str,
        action: str,
        params: Params = None,
        *,
        job_id: str | None = None,
        timeout_s: float | None = None,
        queue: str = "default",
        defer_s: float | None = None,
        at: datetime | None = None,
        result_ttl_s: int | None = None,
        retry: RetryOverride | Mapping[str, Any] | None = None,
        expires_s: float | None = None,
        host: str = "any",
        watch: bool | None = None,
        validate: bool = True,
        parent_id: str | None = None,
        author: str | None = None,
        traceparent: str | None = None,
    ) -> JobHandle:
        """Submit ``plugin.action(**params)`` and return a handle to follow it.

        ``params`` is a mapping of argument names, or (as in the seeds' ``execute``) a tuple of
        positional values or a single value, bound to the declared arguments in order.
        ``host`` is ``"any"``, ``"local"`` (this machine) or a hostname. ``validate=False``
        skips the registry check, for submitting before any worker is up: the worker then
        validates, and a bad job fails there with the same error. ``watch=True`` publishes the
        job's changes on its channel from the start, for a raw subscriber that subscribed before
        this call (the handle's :meth:`~JobHandle.wait` and :meth:`~JobHandle.progress` need no flag);
        ``None`` (the default): as the plugin's manifest says (``publish_job_channels``, read when
        validating), else as the ``publish_job_channels`` setting says.
        ``parent_id`` links the job to the one that submitted it (plugin-to-plugin calls set it);
        ``author`` names who asked (seed 004's ``author=``), kept in the record. ``traceparent``
        (W3C trace context) makes the job part of the caller's trace: its attempt span (and, with
        tracing on here, the submit span) is a child of that span.
        """
        manifest = await self._manifest(plugin) if validate else None
        values = {
            "job_id": job_id, "timeout_s": timeout_s, "queue": queue, "defer_s": defer_s, "at": at,
            "result_ttl_s": result_ttl_s, "retry": retry, "expires_s": expires_s, "host": host, "watch": watch,
            "parent_id": parent_id, "author": author, "traceparent": traceparent,
        }  # fmt: skip
        request = self._request(manifest, plugin, action, params, values)
        if validate:
            await self._check_served(request)
        return await self.submit_request(request)

    async def submit_many(self, jobs: Iterable[JobSpec], *, validate: bool = True) -> list[JobHandle | ActionQError]:
        """Submit many jobs at once: each gets its handle, or the error that refused it, in order.

        A bad job refuses only itself (the others are written); the jobs share their round trips
        (as many per call as the submit batch holds) and their registry reads, with no task per job,
        which makes this the fastest way in. ``validate`` as for :meth:`submit`. A job whose round
        trip failed (Redis unreachable) gets that :class:`~service.errors.BrokerError`.
        """
        specs = list(jobs)
        results: list[JobHandle | ActionQError | None] = [None] * len(specs)
        manifests = await self._manifests({spec.plugin for spec in specs}) if validate else {}
        ready: list[tuple[int, JobRequest]] = []
        served: set[tuple[str, str, str]] = set()
        # Jobs that share their options mapping (a batch's usually do) share its checked options:
        # the mapping's identity, as every spec holds it until the call returns.
        options_of: dict[tuple[int, str], JobOptions] = {}
        for index, spec in enumerate(specs):
            try:
                manifest = manifests.get(spec.plugin)
                if isinstance(manifest, ActionQError):
                    raise manifest
                options = options_of.get((id(spec.options), spec.plugin))
                if options is None:
                    options = options_of[id(spec.options), spec.plugin] = self._job_options(manifest, spec.options)
                request = self._built(manifest, spec.plugin, spec.action, spec.params, options)
                where = (request.plugin, request.options.queue, request.options.host)
                if validate and where not in served:  # checked once for all the jobs that go there
                    await self._check_served(request)
                    served.add(where)
                ready.append((index, request))
            except ActionQError as exc:
                results[index] = exc
        for (index, _), written in zip(ready, await self._write_many([r for _, r in ready]), strict=True):
            results[index] = written
        return [result for result in results if result is not None]

    async def _manifests(self, plugins: set[str]) -> dict[str, PluginManifest | ActionQError]:
        found: dict[str, PluginManifest | ActionQError] = {}
        for plugin in plugins:
            try:
                found[plugin] = await self._manifest(plugin)
            except ActionQError as exc:
                found[plugin] = exc
        return found

    def _request(
        self, manifest: PluginManifest | None, plugin: str, action: str, params: Params, values: Mapping[str, Any]
    ) -> JobRequest:
        """The request :meth:`submit` would write for these arguments (``values``: its options)."""
        return self._built(manifest, plugin, action, params, self._job_options(manifest, values))

    def _job_options(self, manifest: PluginManifest | None, values: Mapping[str, Any]) -> JobOptions:
        """The checked options of a job of ``manifest``'s plugin (``values``: the options of :meth:`submit`)."""
        unknown = values.keys() - _OPTION_NAMES
        if unknown:
            raise SubmissionError(f"invalid job options: {', '.join(sorted(unknown))}: not an option of submit")
        opts = dict(values)
        at = opts.pop("at", None)
        opts["at_ms"] = int(at.timestamp() * 1000) if isinstance(at, datetime) else at
        if opts.get("host") == "local":
            opts["host"] = self.settings.hostname
        if opts.get("watch") is None:
            opts["watch"] = self._publishes(manifest)
        return self._kept_options(opts)

    def _built(
        self, manifest: PluginManifest | None, plugin: str, action: str, params: Params, options: JobOptions
    ) -> JobRequest:
        """The request of these checked ``options``, its params checked against ``manifest``."""
        checked = self._check_params(manifest, plugin, action, params)
        if manifest is not None:  # plugin and action are the manifest's (validate_params knew the action)
            return JobRequest.model_construct(plugin=plugin, action=action, params=checked, options=options)
        return JobRequest(plugin=plugin, action=action, params=checked, options=options)

    def _kept_options(self, values: dict[str, Any]) -> JobOptions:
        """Validated options; those without a job id are validated once and kept (they are frozen)."""
        if values.get("job_id") is not None:
            return self._options(**values)
        try:  # the types too: 1, 1.0 and True are equal keys, and need not validate alike
            key = (tuple(values.items()), tuple(map(type, values.values())))
            kept = self._options_seen.get(key)
        except TypeError:  # a value that cannot be hashed (a retry mapping): validated each time
            return self._options(**values)
        if kept is None:
            kept = self._options(**values)
            if len(self._options_seen) < _OPTIONS_KEPT:
                self._options_seen[key] = kept
        return kept

    def _publishes(self, manifest: PluginManifest | None) -> bool:
        """Whether a job is published from its submit on: as its plugin's manifest says, else the setting."""
        declared = manifest.publish_job_channels if manifest is not None else None
        return self.settings.publish_job_channels if declared is None else declared

    async def execute_stream(
        self, plugin: str, action: str, params: Params = None, **options: Any
    ) -> AsyncGenerator[Any, None]:
        """Submit a generator action and yield its items as they are produced (the seed's ``execute_stream``).

        ``options`` are those of :meth:`submit`. Ends when the action does; raises what the job
        ended with otherwise (see :meth:`JobHandle.stream`).
        """
        handle = await self.submit(plugin, action, params, **options)
        async with aclosing(handle.stream()) as items:
            async for item in items:
                yield item

    async def submit_request(self, request: JobRequest) -> JobHandle:
        """Write an already-built (and, if wanted, already-validated) request.

        With tracing on, in a submit span whose ``traceparent`` the request carries to the worker.
        """
        if self.tracing is None:
            return await self._write(request)
        with self.tracing.submit(request) as span:
            handle = await self._write(span.request)
            span.written(handle.job_id, created=handle.created)
            return handle

    async def _write(self, request: JobRequest) -> JobHandle:
        job = self._new_job(request, await self._queue_of(request))
        return self._written(request, job.job_id, await self.store.write(job))

    async def _write_many(self, requests: list[JobRequest]) -> list[JobHandle | ActionQError]:
        """Write prepared requests in shared round trips; a handle or an error each, in order."""
        if self.tracing is not None:  # a span each
            return list(await asyncio.gather(*(_guarded(self.submit_request(request)) for request in requests)))
        ids = iter(fresh_ids(sum(1 for request in requests if request.options.job_id is None)))
        out: list[JobHandle | ActionQError | None] = []
        jobs: list[tuple[int, JobRequest, NewJob]] = []
        for request in requests:
            try:
                jobs.append((len(out), request, self._new_job(request, await self._queue_of(request), ids)))
                out.append(None)  # written below
            except ActionQError as exc:
                out.append(exc)
        created = await self.store.create_many([job for _, _, job in jobs])
        for (at, request, job), result in zip(jobs, created, strict=True):
            try:
                out[at] = result if isinstance(result, ActionQError) else self._written(request, job.job_id, result)
            except ActionQError as exc:
                out[at] = exc
        return [result for result in out if result is not None]

    def _new_job(self, request: JobRequest, queue: str, ids: Iterator[str] | None = None) -> NewJob:
        """``request`` as the store writes it to ``queue`` (``ids``: fresh job ids to take from)."""
        opts = request.options
        fresh = opts.job_id is None  # a caller's id is an idempotency key; ours is fresh
        job_id = opts.job_id or next(ids if ids is not None else iter(fresh_ids(1)))
        now = now_ms()
        score = opts.at_ms if opts.at_ms is not None else now + int((opts.defer_s or 0) * 1000)
        # No "traceparent": null in every job: workers from before tracing refuse unknown fields.
        body = request.model_dump_json(exclude=_NO_TRACE if opts.traceparent is None else None)
        check_size(f"job {job_id}", body.encode(), self.settings.max_payload_bytes)
        return self.store.new_job(
            job_id,
            body,
            queue=queue,
            now_ms=now,
            score_ms=score,
            # The queue-wait limit: a worker that takes the job after this fails it instead.
            expires_at_ms=score + int(opts.expires_s * 1000) if opts.expires_s else None,
            fresh_id=fresh,
            watch=opts.watch,
            lease_ms=int(self.settings.lease_s * 1000),
            signature=self.signer.sign("job", job_id, body),
        )

    def _written(self, request: JobRequest, job_id: str, created: CreateResult) -> JobHandle:
        existing = created.existing_request
        if not created.created and existing is not None and not request.same_work(existing):
            raise JobConflictError(job_id)
        handle = JobHandle(self, job_id, created=created.created)
        for hook in self.on_submitted:
            hook(request, handle)
        return handle

    def _options(self, **values: Any) -> JobOptions:
        try:
            options = JobOptions(**values)
        except ValidationError as exc:
            errors = [FieldError(".".join(map(str, e["loc"])), e["msg"]) for e in exc.errors()]
            raise SubmissionError("invalid job options: " + "; ".join(map(str, errors))) from exc
        if options.timeout_s is not None and options.timeout_s > self.settings.max_timeout_s:
            raise SubmissionError(
                f"invalid job options: timeout_s: {options.timeout_s:g} is over the service maximum "
                f"of {self.settings.max_timeout_s:g}s"
            )
        return options

    @staticmethod
    def _check_params(manifest: PluginManifest | None, plugin: str, action: str, params: Params) -> dict[str, Any]:
        """The params as they will be sent: bound to the declared arguments, validated, JSON."""
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            values = list(params) if isinstance(params, list | tuple) else [params]
            if manifest is None:
                raise InvalidParamsError(
                    plugin, action, [FieldError("params", "positional params need validation (validate=True)")]
                )
            params = manifest.bind_positional(action, values)
        for key in params:  # a name JSON cannot carry would fail validation unnamed
            bad = bad_key(key)
            if bad:
                raise InvalidParamsError(plugin, action, [FieldError(str(key), bad)])
        checked = dict(params) if manifest is None else manifest.validate_params(action, params)
        problem = not_json(checked)
        if problem is not None:
            raise InvalidParamsError(plugin, action, [FieldError(*problem)])
        return checked

    async def _manifest(self, plugin: str) -> PluginManifest:
        kept, entry = self._entries.fresh(plugin)
        if not kept:
            entry = await self._entries.get(plugin, lambda: self.registry.plugin(plugin))
        if entry is None or not entry.live:
            live = [p.name for p in await self.registry.plugins() if p.live]
            raise UnknownPluginError(plugin, live)
        return entry.manifest

    async def _live_workers(self) -> list[WorkerInfo]:
        kept, workers = self._workers.fresh(None)
        if kept and workers is not None:
            return workers
        return await self._workers.get(None, self.registry.workers)

    async def _queue_of(self, request: JobRequest) -> str:
        """The queue ``request`` goes to: its plugin's, in its lane, for its host (``remote``: one picked)."""
        opts = request.options
        if opts.host == "remote":
            host: str | None = await self._remote_host(request.plugin, opts.queue)
        else:
            host = None if opts.host == "any" else opts.host
        return self.keys.queue(request.plugin, opts.queue, host)

    async def _remote_host(self, plugin: str, lane: str) -> str:
        """A host other than this one whose live workers serve ``plugin`` in ``lane`` (``routing``).

        ``least_loaded``: load is the running jobs the registry last showed plus the jobs this
        client sent there since, so a burst of submits spreads over the hosts instead of piling
        onto one. ``round_robin``: each host in turn.
        """
        workers = await self._live_workers()
        load: dict[str, int] = {}
        for w in workers:
            if w.hostname != self.settings.hostname and _serves(w, self.keys.queue(plugin, lane, w.hostname)):
                load[w.hostname] = load.get(w.hostname, 0) + w.running_jobs
        if not load:
            raise UnservableJobError(plugin, lane, "remote", _hosts_serving(workers, self.keys, plugin, lane))
        if self.settings.routing == "round_robin":
            hosts = sorted(load)
            self._turn = (self._turn + 1) % len(hosts)
            return hosts[self._turn]
        sent = self._routed.setdefault(id(workers), {})  # reset with each new registry read
        if len(self._routed) > 1:
            self._routed = {id(workers): sent}
        host = min(sorted(load), key=lambda h: load[h] + sent.get(h, 0))
        sent[host] = sent.get(host, 0) + 1
        return host

    async def _check_served(self, request: JobRequest) -> None:
        """Refuse ``request`` when no live worker reads the queue it would go to."""
        opts = request.options
        if opts.host == "remote":
            return  # a host was picked among those that serve it
        queue = await self._queue_of(request)
        workers = await self._live_workers()
        if not any(_serves(w, queue) for w in workers):
            hosts = _hosts_serving(workers, self.keys, request.plugin, opts.queue)
            raise UnservableJobError(request.plugin, opts.queue, opts.host, hosts)

    # -- looking things up ----------------------------------------------------------------
    def job(self, job_id: str) -> JobHandle:
        """A handle to an existing job (no Redis call until you ask it something)."""
        return JobHandle(self, job_id, created=False)

    async def plugins(self) -> list[RegisteredPlugin]:
        """The plugins in the registry, with their manifests and liveness."""
        return await self.registry.plugins()

    async def workers(self) -> list[WorkerInfo]:
        """The live workers."""
        return await self.registry.workers()

    async def control(
        self,
        command: Command,
        *,
        worker: str | None = None,
        host: str | None = None,
        args: dict[str, Any] | None = None,
        timeout: float = 3.0,
    ) -> ControlReport:
        """Send a control command to every worker, the workers on ``host``, or one ``worker``.

        Commands: ``pause``, ``resume``, ``drain``, ``stop``, ``load_plugin`` / ``disable_plugin``
        / ``reload_plugin`` (``args={"name": ..., "path": ...}``). The report lists each worker's
        acknowledgement and the targeted live workers that did not answer within ``timeout``.
        """
        cmd = ControlCommand(command=command, worker=worker, host=host, args=args or {}).signed(self.signer)
        live = [(w.worker_id, w.hostname) for w in await self.workers()]
        return await send_control(self.redis, self.keys, self.pubsub, cmd, live=live, timeout=timeout)

    # -- events ---------------------------------------------------------------------------
    def events(
        self,
        kinds: Iterable[str | EventKind] | None = None,
        plugin: str | None = None,
        job_id: str | None = None,
        since: str | datetime = "now",
        *,
        worker_id: str | None = None,
        follow: bool = True,
    ) -> AsyncIterator[ReceivedEvent]:
        """Every worker's events (``ReceivedEvent``: stream id + typed event), oldest first.

        ``since``: ``"now"`` (only new ones), ``"replay:N"`` (the last N matching, then live),
        a stream id (the events after it, e.g. the last ``id`` you saw) or a datetime. Nothing
        is missed or repeated between the replay and the live part. Filters: ``kinds``,
        ``plugin``, ``job_id``, ``worker_id``. ``follow=False`` stops at the newest event.
        """
        return read_events(
            self.redis, self.keys, kinds=kinds, plugin=plugin, job_id=job_id, worker_id=worker_id,
            since=since, follow=follow,
        )  # fmt: skip


def _serves(worker: WorkerInfo, queue: str) -> bool:
    """``worker`` reads ``queue`` and will take jobs from it (a paused one will, once resumed)."""
    return not worker.draining and queue in worker.queues


def _hosts_serving(workers: Sequence[WorkerInfo], keys: Keys, plugin: str, lane: str) -> list[str]:
    return sorted({w.hostname for w in workers if _serves(w, keys.queue(plugin, lane, w.hostname))})
