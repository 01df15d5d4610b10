"""The registry: which plugins live workers serve, with their manifests.

Workers publish the manifests of the plugins they loaded and refresh a heartbeat; producers
read them to validate a submission (plugin, action, params) *before* writing anything, and to
list what can be run — without importing any plugin code. A plugin is live while some worker
serving it has sent a heartbeat within ``LIVENESS_FACTOR * heartbeat_s``.
"""

from __future__ import annotations

import os
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from service.errors import describe_validation
from service.keys import Keys
from service.models import now_ms
from service.plugins.manifest import PluginManifest
from service.redis.cluster import is_cluster
from service.redis.connection import broker_errors

__all__ = ["LIVENESS_FACTOR", "RegisteredPlugin", "Registry", "WorkerInfo"]

log = structlog.get_logger("actionq.registry")

# A worker is presumed dead after missing this many heartbeats in a row.
LIVENESS_FACTOR = 3
QUEUES_TTL_S = 30 * 86_400
"""The served-queues index outlives long gaps: a lane whose workers were away for hours is not
taken for one that no worker ever served (whose jobs the sweep ends after ``unserved_expire_s``)."""


class WorkerInfo(BaseModel):
    """A worker as it describes itself in the registry."""

    model_config = ConfigDict(extra="forbid")

    worker_id: str
    hostname: str
    pid: int = Field(default_factory=os.getpid)
    queues: list[str] = Field(default_factory=list)
    plugins: dict[str, str] = Field(default_factory=dict, description="plugin name -> version")
    failed_plugins: dict[str, str] = Field(default_factory=dict, description="plugin name -> reason")
    started_at_ms: int = Field(default_factory=now_ms)
    heartbeat_ms: int = Field(default_factory=now_ms)
    running_jobs: int = 0
    paused: bool = Field(default=False, description="Takes no new jobs (keeps running the ones it has).")
    draining: bool = Field(default=False, description="Finishing its running jobs, then stopping.")


class RegisteredPlugin(BaseModel):
    """A plugin as producers see it: its manifest and whether a live worker serves it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    manifest: PluginManifest
    last_seen_ms: int
    live: bool

    @property
    def name(self) -> str:
        """The plugin's name."""
        return self.manifest.name


class Registry:
    """Reads and writes the registry of one namespace."""

    def __init__(self, redis: Redis, keys: Keys, *, heartbeat_s: float) -> None:
        self.redis = redis
        self.keys = keys
        self.heartbeat_s = heartbeat_s

    @property
    def _window_ms(self) -> int:
        return int(self.heartbeat_s * LIVENESS_FACTOR * 1000)

    @property
    def _ttl_s(self) -> int:
        # The shared registry keys outlive one heartbeat window so a short gap between workers
        # does not wipe them, and vanish once a deployment is gone for good.
        return max(60, int(self.heartbeat_s * LIVENESS_FACTOR * 4))

    async def publish(self, worker: WorkerInfo, manifests: list[PluginManifest]) -> None:
        """Announce ``worker`` and the manifests it serves; called at start and every heartbeat."""
        keys, now = self.keys, now_ms()
        worker.heartbeat_ms = now
        # A cluster pipeline sends to each node at once: there, what the worker serves is written
        # first, on its own, so that no submit sees the worker listed and its plugin unknown (one
        # Redis runs a pipeline in order).
        apart = is_cluster(self.redis)
        if apart:
            async with self.redis.pipeline(transaction=False) as pipe:
                self._served(pipe, worker, manifests, now)
                with broker_errors("publishing the registry"):
                    await pipe.execute()
        async with self.redis.pipeline(transaction=False) as pipe:
            if not apart:
                self._served(pipe, worker, manifests, now)
            pipe.set(keys.worker(worker.worker_id), worker.model_dump_json(), px=self._window_ms)
            pipe.zadd(keys.workers(), {worker.worker_id: now})
            pipe.zremrangebyscore(keys.workers(), "-inf", now - self._window_ms)
            pipe.expire(keys.workers(), self._ttl_s)
            with broker_errors("publishing the registry"):
                await pipe.execute()

    def _served(self, pipe: Pipeline, worker: WorkerInfo, manifests: list[PluginManifest], now: int) -> None:
        """Add the manifests, their heartbeats and the worker's queue sets to ``pipe``."""
        keys = self.keys
        if manifests:
            pipe.hset(keys.registry_manifests(), mapping={m.name: m.model_dump_json(by_alias=True) for m in manifests})
            pipe.zadd(keys.registry_heartbeats(), {m.name: now for m in manifests})
            pipe.expire(keys.registry_manifests(), self._ttl_s)
            pipe.expire(keys.registry_heartbeats(), self._ttl_s)
        if worker.queues:
            pipe.zadd(keys.registry_queues(), dict.fromkeys(keys.every_queue_set(worker.queues), now))
            pipe.expire(keys.registry_queues(), QUEUES_TTL_S)

    async def withdraw(self, worker_id: str) -> None:
        """Remove a stopping worker (its plugins stay listed while other workers serve them)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self.keys.workers(), worker_id)
            pipe.delete(self.keys.worker(worker_id))
            with broker_errors("withdrawing a worker"):
                await pipe.execute()

    async def plugin(self, name: str) -> RegisteredPlugin | None:
        """The registry entry of ``name``, live or not; ``None`` if it was never registered."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(self.keys.registry_manifests(), name)
            pipe.zscore(self.keys.registry_heartbeats(), name)
            with broker_errors(f"reading the registry entry of {name}"):
                raw, score = await pipe.execute()
        return self._entry(name, raw, score) if raw else None

    async def retire(self, plugin: str, worker_id: str) -> bool:
        """``worker_id`` no longer serves ``plugin`` (disabled there): unless another live worker does,
        the plugin stops being live now, not once its heartbeat ages out. True if it did.

        Its manifest stays (submits get "unknown plugin … served: …", listings show it not live);
        a worker that loads it again makes it live with its next publish.
        """
        others = [w.worker_id for w in await self.workers() if w.worker_id != worker_id and plugin in w.plugins]
        if others:
            return False
        with broker_errors(f"retiring plugin {plugin}"):
            await self.redis.zrem(self.keys.registry_heartbeats(), plugin)
        return True

    async def plugins(self) -> list[RegisteredPlugin]:
        """Every registered plugin, live or not, sorted by name."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.registry_manifests())
            pipe.zrange(self.keys.registry_heartbeats(), 0, -1, withscores=True)
            with broker_errors("reading the registry"):
                manifests, scores = await pipe.execute()
        seen = {name.decode(errors="replace"): score for name, score in scores}
        found = (
            self._entry(name.decode(errors="replace"), raw, seen.get(name.decode(errors="replace")))
            for name, raw in manifests.items()
        )
        entries = [entry for entry in found if entry is not None]
        return sorted(entries, key=lambda e: e.name)

    async def workers(self) -> list[WorkerInfo]:
        """The live workers, sorted by id."""
        with broker_errors("listing workers"):
            ids = await self.redis.zrangebyscore(self.keys.workers(), now_ms() - self._window_ms, "+inf")
            raws = await self.redis.mget([self.keys.worker(i.decode(errors="replace")) for i in ids]) if ids else []
        infos = []
        for worker_id, raw in zip(ids, raws, strict=True):
            if not raw:
                continue  # gone since the listing
            try:
                infos.append(WorkerInfo.model_validate_json(raw))
            except ValidationError as exc:  # foreign or damaged: skipped, reported, never fatal
                log.warning("registry_worker_unreadable", worker=worker_id[:200], error=describe_validation(exc))
        return sorted(infos, key=lambda w: w.worker_id)

    def _entry(self, name: str, raw: Any, score: float | None) -> RegisteredPlugin | None:
        """The entry of plugin ``name``; None (and a warning) when its manifest does not parse."""
        last = int(score or 0)
        try:
            manifest = PluginManifest.model_validate_json(raw)
        except ValidationError as exc:  # foreign or damaged: skipped, reported, never fatal
            log.warning("registry_entry_unreadable", plugin=name[:200], error=describe_validation(exc))
            return None
        return RegisteredPlugin(manifest=manifest, last_seen_ms=last, live=last >= now_ms() - self._window_ms)
