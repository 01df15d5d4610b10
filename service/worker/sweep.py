"""The sweep of queues that no worker serves: their jobs end instead of waiting forever.

A job can be queued where no live worker reads: submitted with ``validate=False`` for a plugin
nobody runs, for a lane or a host no worker serves, or left behind when the last worker of a
plugin went away. Each worker's heartbeat records the queues it serves
(:meth:`service.keys.Keys.registry_queues`, queue → last heartbeat). Once in a while one worker
of the namespace (whichever takes the sweep lock) looks at every queue: in one that no worker has
served for ``unserved_expire_s``, a job due for longer than that fails with
``JobExpiredError`` naming the queue, without running. The settlement is fenced
(``unclaimed``): a job that a worker took meanwhile is left to it.

With no worker at all, nothing sweeps: the jobs wait for the first one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

import structlog
from redis.asyncio import Redis

from service.keys import Keys
from service.models import now_ms
from service.worker.take import TakenJob

__all__ = ["Sweeper"]

log = structlog.get_logger("actionq.worker")

_BATCH = 100  # jobs ended per queue and sweep; the next sweep goes on
_WAITING = (b"queued", b"retrying")
_RUNNING = b"running"  # taken by a worker that died since: its record says running, with no lease

Expire = Callable[[TakenJob, str], Awaitable[bool]]
"""Ends one job as expired (False: a worker holds it by now, it was left alone)."""


class Sweeper:
    """Ends the jobs that wait in queues no worker has served for ``unserved_expire_s``."""

    def __init__(self, redis: Redis, keys: Keys, *, worker_id: str, unserved_expire_s: float, expire: Expire) -> None:
        self.redis = redis
        self.keys = keys
        self.worker_id = worker_id
        self.unserved_ms = int(unserved_expire_s * 1000)
        self.every_ms = max(1000, min(60_000, self.unserved_ms // 4))
        """How often the namespace is swept (by one worker: the lock lasts this long)."""
        self._expire = expire
        self._next_ms = 0

    async def maybe_sweep(self) -> int:
        """Sweep if it is time and no other worker swept lately; the number of jobs ended."""
        if not self.unserved_ms or now_ms() < self._next_ms:
            return 0
        self._next_ms = now_ms() + self.every_ms
        if not await self.redis.set(self.keys.sweep_lock(), self.worker_id, nx=True, px=self.every_ms):
            return 0
        return await self.sweep()

    async def sweep(self) -> int:
        """Sweep now (whoever holds the lock); the number of jobs ended."""
        cutoff = now_ms() - self.unserved_ms
        served = dict(await self.redis.zrange(self.keys.registry_queues(), 0, -1, withscores=True))
        ended = 0
        async for raw in self.redis.scan_iter(match=self.keys.queue_prefix() + "*", count=1000, _type="zset"):
            if served.get(raw, 0) < cutoff:
                ended += await self._sweep_queue(raw.decode(errors="replace"), cutoff)
        return ended

    async def _sweep_queue(self, queue: str, cutoff: int) -> int:
        arq_ids = await self.redis.zrangebyscore(queue, "-inf", cutoff, start=0, num=_BATCH)
        jobs: dict[str, str] = {}  # arq id -> job id, of this namespace's entries only
        for member in arq_ids:
            arq_id = member.decode(errors="replace")
            with contextlib.suppress(ValueError):
                jobs[arq_id] = self.keys.job_id_from_arq(arq_id)
        if not jobs:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in jobs.values():
                pipe.hmget(self.keys.job(job_id), ["state", "attempt", "request"])
            records = await pipe.execute()
        reason = (
            f"no worker has served its queue {queue!r} for {self.unserved_ms / 1000:g} s (unserved_expire_s): "
            "it never ran"
        )
        ended = 0
        for (arq_id, job_id), (state, attempt, request) in zip(jobs.items(), records, strict=True):
            if state not in (*_WAITING, _RUNNING):
                continue  # gone or ended: a take of the queue, if one comes, removes the entry
            tries = int(attempt) if attempt and attempt.isdigit() else 0
            ended += await self._expire(TakenJob(job_id, arq_id, queue, "expired", tries, request or b""), reason)
        if ended:
            log.warning("unserved_jobs_expired", queue=queue, jobs=ended, unserved_expire_s=self.unserved_ms / 1000)
        return ended
