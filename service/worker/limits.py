"""Concurrency limits across all workers: at most N running jobs of a plugin, or of one action.

A limit is declared in the manifest (``max_concurrent:`` on the plugin and on each action) and
overridden per deployment in the plugin's ``config.yml`` entry (``limits:``,
:class:`service.settings.PluginLimits`). It holds for the whole deployment, whatever the number of
workers, because its slots live in Redis (``service/redis/lua/limit.lua``): a ZSET per limit of
the attempts holding a slot, each scored by a lease deadline on Redis's clock.

* **Acquire.** A job taken by this worker (:meth:`Limits.guard`) gets a slot of each of its
  limits, the plugin's and the action's, in one script call, all or none, before it runs. The
  slots are renewed in the pipeline that renews the jobs' leases
  (:attr:`service.worker.take.Claims.also_renew`), so a slot lapses exactly when its job's lease
  does: a worker killed while holding one gives it back within ``lease_s``, and one cut off from
  Redis stops the job first (the lease watchdog) before its slot can be counted free.
* **Refused.** The job goes back to its queue as if it had never been taken (its attempt is
  undone: waiting for a slot is not a failure), parked a while ahead so that no worker spins on
  it, and it joins the limit's waiting set, ordered by submit time.
* **Release and promote.** When an attempt is settled its slots go back, and the oldest waiters,
  as many as slots are free, are promoted: ready now, with a wake-up, so one of them starts within
  a take. Every worker serving a limited plugin also looks every half lease (:meth:`Limits.tend`):
  slots freed by a worker that died are found that way, since nobody releases them. The parking is
  only the safety net for a promotion lost on the way (its worker died between the two calls).

Why promotion rather than a short retry delay (Sidekiq's and Dramatiq's limiters re-schedule with a
backoff): a backlog of B refused jobs retried every d seconds costs B/d takes, refusals and
settlements a second, and a slot freed waits up to d for its next job; here a waiting job costs one
refusal, and a freed slot is used after one wake-up.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from service.errors import ActionQError
from service.keys import Keys
from service.models import now_ms
from service.plugins.loader import LoadedPlugin
from service.plugins.manifest import PluginManifest
from service.redis import scripts
from service.redis.connection import unreachable
from service.settings import PluginLimits, Settings
from service.tasks import stop_tasks
from service.worker import settle
from service.worker.settle import Settler
from service.worker.take import Claims, TakenJob

__all__ = ["Limit", "LimitTable", "Limits", "SlotStore", "limit_table"]

log = structlog.get_logger("actionq.worker")

# A refused job is parked this many leases ahead: only the safety net, should its promotion be lost
# (promotions bring it back as soon as a slot is free). Short enough to heal, long enough not to spin.
_PARK_LEASES = 10
# Waiters a release reads beyond the free slots: the first few may be gone (cancelled, ended).
_EXTRA_WAITERS = 4


@dataclass(frozen=True, slots=True)
class Limit:
    """One concurrency limit: at most ``max_concurrent`` attempts of ``plugin`` (or of one action) at once."""

    plugin: str
    action: str | None
    max_concurrent: int

    @property
    def name(self) -> str:
        """``plugin`` or ``plugin.action``, as logs say it."""
        return self.plugin if self.action is None else f"{self.plugin}.{self.action}"

    def slots(self, keys: Keys) -> str:
        """Its slot set."""
        return keys.limit_slots(self.plugin, self.action)

    def waiting(self, keys: Keys) -> str:
        """Its waiting set."""
        return keys.limit_waiting(self.plugin, self.action)


@dataclass(frozen=True, slots=True)
class LimitTable:
    """A plugin's limits in effect: its own, and per action."""

    plugin: Limit | None = None
    actions: Mapping[str, Limit] = field(default_factory=dict)
    problems: tuple[str, ...] = ()
    """What is wrong with the deployment's override (an action the plugin does not have)."""

    def of(self, action: str) -> tuple[Limit, ...]:
        """The limits a job of ``action`` needs a slot of: the plugin's first, then the action's."""
        own = self.actions.get(action)
        return tuple(limit for limit in (self.plugin, own) if limit is not None)

    def all(self) -> tuple[Limit, ...]:
        """Every limit of the plugin."""
        return tuple(limit for limit in (self.plugin, *self.actions.values()) if limit is not None)


def limit_table(manifest: PluginManifest, override: PluginLimits | None = None) -> LimitTable:
    """The limits in effect for a plugin: its manifest's ``max_concurrent``, under ``override``
    (a key it sets wins, ``None`` lifts the limit; a key it leaves out keeps the manifest's)."""
    name = manifest.name
    plugin_max = manifest.max_concurrent
    if override is not None and "max_concurrent" in override.model_fields_set:
        plugin_max = override.max_concurrent
    wanted = {spec.name: spec.max_concurrent for spec in manifest.actions}
    known = sorted(wanted)
    problems = []
    for action, value in (override.actions if override is not None else {}).items():
        if action not in wanted:
            problems.append(f"limits.actions: {action!r} is not an action of {name!r} (it has {', '.join(known)})")
            continue
        wanted[action] = value
    return LimitTable(
        plugin=Limit(name, None, plugin_max) if plugin_max is not None else None,
        actions={action: Limit(name, action, n) for action, n in wanted.items() if n is not None},
        problems=tuple(problems),
    )


@dataclass(frozen=True, slots=True)
class Refusal:
    """An acquire refused by ``limit``, which had ``held`` live slots."""

    limit: Limit
    held: int


class SlotStore:
    """The limit script's calls: acquire, renew, release (and learn who is next), promote."""

    def __init__(self, redis: Redis, keys: Keys, *, lease_s: float) -> None:
        self.redis = redis
        self.keys = keys
        self.lease_ms = int(lease_s * 1000)
        self.park_ms = _PARK_LEASES * self.lease_ms
        self._script = scripts.register(redis, "limit")
        self._source = scripts.source("limit")

    async def acquire(
        self, member: str, limits: tuple[Limit, ...], *, waiter: str, submitted_ms: int
    ) -> Refusal | None:
        """A slot of each of ``limits`` for the attempt ``member``, or the refusal (then ``waiter`` waits)."""
        op = {
            "op": "acquire",
            "member": member,
            "limits": [limit.max_concurrent for limit in limits],
            "lease_ms": self.lease_ms,
            "waiter": waiter,
            "submitted_ms": submitted_ms,
            "waiting_ttl_ms": 2 * self.park_ms + self.lease_ms,
        }
        index, held = await self._call(self._sets(limits), op)
        return None if int(index) == 0 else Refusal(limits[int(index) - 1], int(held))

    def renew_into(self, pipe: Pipeline, held: Mapping[str, tuple[Limit, ...]]) -> None:
        """Add the renewal of the slots ``held`` (member -> its limits) to ``pipe``.

        EVAL, not EVALSHA: after a Redis restart the script may be missing, and a ``NOSCRIPT``
        would fail the pipeline that renews the jobs' leases too.
        """
        by_set: dict[str, list[str]] = {}
        for member, limits in held.items():
            for limit in limits:
                by_set.setdefault(limit.slots(self.keys), []).append(member)
        groups: dict[int, dict[str, list[str]]] = {}  # one call per slot: per plugin on a cluster
        for key, members in by_set.items():
            groups.setdefault(self.keys.slot(key), {})[key] = members
        for sets in groups.values():
            op = {"op": "renew", "lease_ms": self.lease_ms, "members": list(sets.values())}
            pipe.eval(self._source, len(sets), *sets, _json(op))

    async def release(self, member: str, limits: tuple[Limit, ...]) -> list[tuple[int, list[str]]]:
        """Give back the slots of ``member`` (``""``: none, only look); per limit, its free slots and
        the first waiters to promote into them."""
        op = {
            "op": "release",
            "member": member,
            "limits": [limit.max_concurrent for limit in limits],
            "extra": _EXTRA_WAITERS,
        }
        reply = await self._call(self._sets(limits), op)
        return [(int(free), [_text(w) for w in waiters]) for free, waiters in reply]

    async def promote(self, limit: Limit, free: int, waiters: list[str]) -> int:
        """Make up to ``free`` of ``waiters`` (``<queue>\\n<arq id>``, oldest first) ready now; how many were."""
        keys, members, foreign = [limit.waiting(self.keys)], [], []
        for waiter in waiters:
            queue, _, arq_id = waiter.partition("\n")
            try:
                record = self.keys.job(self.keys.job_id_from_arq(arq_id))
            except ValueError:
                record = ""
            if not record or not queue.startswith(self.keys.queue_prefix()):
                foreign.append(waiter)  # not a job and queue of this namespace (written by hand): dropped
                continue
            keys += [queue, record]
            members.append(waiter)
        if foreign:
            log.warning("limit_waiters_dropped", limit=limit.name, count=len(foreign), reason="not waiting jobs")
            await self.redis.zrem(limit.waiting(self.keys), *foreign)
        op = {"op": "promote", "free": free, "now": str(now_ms()), "wake_channel": self.keys.wake_channel()}
        if self.keys.partitions:
            return await self._promote_apart(limit, free, keys[1:], members, op)
        return int(await self._script(keys=keys, args=[_json(op), *members]))

    async def _promote_apart(
        self, limit: Limit, free: int, keys: list[str], members: list[str], op: dict[str, Any]
    ) -> int:
        """Redis Cluster: the waiting set and each candidate's job are in different slots, so each
        candidate is looked at with a call of its own, in order, until ``free`` are counted; those
        gone leave the waiting set after."""
        promoted, counted, gone = 0, 0, []
        for index, member in enumerate(members):
            if counted >= free:
                break
            one = {**op, "free": 1, "waiting": False}
            (outcome,) = await self._script(keys=keys[2 * index : 2 * index + 2], args=[_json(one), member])
            if int(outcome) == 0:
                gone.append(member)
                continue
            counted += 1
            promoted += int(outcome) == 2
        if gone:
            await self.redis.zrem(limit.waiting(self.keys), *gone)
        return promoted

    def _sets(self, limits: tuple[Limit, ...]) -> list[str]:
        return [limit.slots(self.keys) for limit in limits] + [limit.waiting(self.keys) for limit in limits]

    async def _call(self, keys: list[str], op: dict[str, Any]) -> Any:
        return await self._script(keys=keys, args=[_json(op)])


@dataclass(frozen=True, slots=True)
class _Held:
    member: str
    limits: tuple[Limit, ...]


class Limits:
    """One worker's side of the concurrency limits: each taken job gets its slots before it runs."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        settings: Settings,
        *,
        plugins: Mapping[str, LoadedPlugin],
        claims: Claims,
        settler: Settler,
        worker_id: str,
    ) -> None:
        self.keys = keys
        self.settings = settings
        self.store = SlotStore(redis, keys, lease_s=settings.lease_s)
        self.claims = claims
        self.settler = settler
        self.worker_id = worker_id
        self._plugins = plugins  # the loader's: plugins loaded, disabled and reloaded show here
        self._tables: dict[str, tuple[PluginManifest, LimitTable]] = {}
        self._held: dict[str, _Held] = {}  # arq job id -> the slots its attempt holds
        claims.also_renew = lambda pipe: self.store.renew_into(pipe, {h.member: h.limits for h in self._held.values()})
        for plugin in plugins:  # a misconfigured override is reported at startup (after a reload: at the next look)
            self.table(plugin)

    def table(self, plugin: str) -> LimitTable:
        """The limits of a loaded plugin (none if it is not loaded), rebuilt when it is reloaded."""
        loaded = self._plugins.get(plugin)
        if loaded is None:
            return LimitTable()
        manifest = loaded.manifest
        cached = self._tables.get(plugin)
        if cached is not None and cached[0] is manifest:
            return cached[1]
        entry = self.settings.plugin_entry(plugin)
        table = limit_table(manifest, entry.limits if entry is not None else None)
        for problem in table.problems:
            log.error("limits_misconfigured", plugin=plugin, problem=problem, reason="that entry is ignored")
        self._tables[plugin] = (manifest, table)
        return table

    def limits_of(self, job: TakenJob) -> tuple[Limit, ...]:
        """The limits ``job`` needs slots of (none for a job that will not run its action)."""
        if job.status != "run" or job.cancel_reason:
            return ()
        table = self.table(self.keys.queue_plugin(job.queue))
        if table.plugin is None and not table.actions:
            return ()
        try:
            action = json.loads(job.request)["action"]
        except (ValueError, KeyError, TypeError):  # malformed: the executor fails it, without running it
            return ()
        return table.of(action) if isinstance(action, str) else ()

    async def guard(self, job: TakenJob, run: Callable[[TakenJob], Awaitable[None]]) -> None:
        """Run ``job`` once it holds a slot of each of its limits, then give them back; a job
        refused goes back to its queue, parked, to be promoted when a slot is free."""
        limits = self.limits_of(job)
        if not limits:
            await run(job)
            return
        held = _Held(f"{job.job_id}#{job.attempt}", limits)
        if not await self._acquire(job, held):
            return
        self._held[job.arq_job_id] = held
        try:
            await run(job)
        finally:
            self._held.pop(job.arq_job_id, None)
            await asyncio.shield(self._release(held))

    async def _acquire(self, job: TakenJob, held: _Held) -> bool:
        """True if ``job`` got its slots; otherwise it was given back (refused, or Redis failed)."""
        waiter = f"{job.queue}\n{job.arq_job_id}"
        try:
            refusal = await self.store.acquire(held.member, held.limits, waiter=waiter, submitted_ms=job.enqueued_at_ms)
        except asyncio.CancelledError:  # shutting down: back to its queue, ready for another worker
            await asyncio.shield(self._give_back(job, now_ms()))
            raise
        except (RedisError, OSError) as exc:
            await self._acquire_failed(job, exc)
            return False
        if refusal is None:
            return True
        limit = refusal.limit
        log.debug("job_waits_for_slot", job_id=job.job_id, limit=limit.name, running=refusal.held,
                  max_concurrent=limit.max_concurrent)  # fmt: skip
        await self._give_back(job, now_ms() + self.store.park_ms)
        return False

    async def _acquire_failed(self, job: TakenJob, exc: RedisError | OSError) -> None:
        """Not run without its slots: back to its queue, ready if Redis was out of reach, else (the
        script refused: a bug, an ACL without ``+time``) parked, so that no worker spins on it."""
        error = str(exc) or type(exc).__name__
        if unreachable(exc):
            log.warning("limit_unavailable", job_id=job.job_id, error=error)
            await self._give_back(job, now_ms())
            return
        log.error("limit_failed", job_id=job.job_id, error=error, reason="the job waits, parked")
        await self._give_back(job, now_ms() + self.store.park_ms)

    async def _give_back(self, job: TakenJob, due_ms: int) -> None:
        """Back to its queue at ``due_ms``, its attempt undone (it never started)."""
        back = settle.requeued(job, worker_id=self.worker_id, started=False, due_ms=due_ms)
        try:
            await self.settler.settle(back)
        except (ActionQError, RedisError, OSError) as exc:  # its lease lapses: it is taken again then
            log.warning("job_not_given_back", job_id=job.job_id, error=str(exc))
        finally:
            self.claims.release(job.arq_job_id)

    async def _release(self, held: _Held) -> None:
        """Give the slots back and start the next waiters; if Redis fails, the slots lapse instead."""
        try:
            nexts = await self.store.release(held.member, held.limits)
            await self._promote(held.limits, nexts)
        except (RedisError, OSError) as exc:
            log.warning("limit_release_failed", error=str(exc) or type(exc).__name__, reason="its slots lapse")

    async def _promote(self, limits: tuple[Limit, ...], nexts: list[tuple[int, list[str]]]) -> None:
        """Per limit with free slots, make its first waiters ready (a second call: it names their keys)."""
        for limit, (free, waiters) in zip(limits, nexts, strict=True):
            if free > 0 and waiters:
                promoted = await self.store.promote(limit, free, waiters)
                if promoted:
                    log.debug("jobs_promoted", limit=limit.name, jobs=promoted)

    async def tend(self) -> None:
        """Promote waiters into the free slots of every limit of the loaded plugins.

        Slots of a worker that died are freed by no release: they lapse, and this look finds them.
        """
        limits = tuple(limit for plugin in sorted(self._plugins) for limit in self.table(plugin).all())
        if limits:
            await self._promote(limits, await self.store.release("", limits))

    async def tend_forever(self) -> None:
        """:meth:`tend` every half lease, until cancelled."""
        while True:
            await asyncio.sleep(self.settings.lease_s / 2)
            try:
                await self.tend()
            except (RedisError, OSError) as exc:
                log.warning("limit_tending_failed", error=str(exc) or type(exc).__name__)

    @staticmethod
    async def stop(tender: asyncio.Task[None]) -> None:
        """Stop :meth:`tend_forever` (the worker is exiting)."""
        await stop_tasks(tender)


def _json(op: dict[str, Any]) -> str:
    return json.dumps(op, separators=(",", ":"))


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw
