"""A worker's side of the concurrency limits, on fakeredis: the limits in effect, guard, renew, tend."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import cast

import pytest
import redis.asyncio as aioredis

from service.client.store import JobStore
from service.errors import ConfigError, ManifestError
from service.keys import Keys
from service.plugins.loader import LoadedPlugin
from service.plugins.manifest import PluginManifest, load_manifest
from service.settings import PluginEntry, PluginLimits, Settings, load_settings
from service.worker.limits import Limit, Limits, limit_table
from service.worker.settle import Settler
from service.worker.take import Claims, TakenJob
from tests.unit.redis.scripts.conftest import now, request_json

MANIFEST = PluginManifest.model_validate(
    {
        "name": "P",
        "max_concurrent": 5,
        "actions": [{"name": "render", "max_concurrent": 1}, {"name": "crop"}, {"name": "scale", "max_concurrent": 2}],
    }
)


class _Loaded:
    """What :class:`Limits` reads of a loaded plugin: its manifest."""

    def __init__(self, manifest: PluginManifest) -> None:
        self.manifest = manifest


def test_the_manifest_limits_under_the_deployments_override() -> None:
    table = limit_table(MANIFEST)
    assert table.plugin == Limit("P", None, 5)
    assert table.of("render") == (Limit("P", None, 5), Limit("P", "render", 1))
    assert table.of("crop") == (Limit("P", None, 5),)
    override = PluginLimits.model_validate({"max_concurrent": None, "actions": {"render": 3, "crop": 2, "scale": None}})
    table = limit_table(MANIFEST, override)
    assert table.plugin is None  # null lifts the manifest's limit
    assert table.of("render") == (Limit("P", "render", 3),)
    assert table.of("crop") == (Limit("P", "crop", 2),)
    assert table.of("scale") == ()
    kept = limit_table(MANIFEST, PluginLimits.model_validate({"actions": {"render": 4}}))
    assert kept.plugin == Limit("P", None, 5)  # left out: the manifest's stays
    assert kept.of("scale") == (Limit("P", None, 5), Limit("P", "scale", 2))
    assert kept.problems == ()


def test_an_override_naming_an_unknown_action_is_reported() -> None:
    table = limit_table(MANIFEST, PluginLimits.model_validate({"actions": {"rendr": 2}}))
    assert table.problems == ("limits.actions: 'rendr' is not an action of 'P' (it has crop, render, scale)",)
    assert table.of("render") == (Limit("P", None, 5), Limit("P", "render", 1))


def test_a_limit_below_one_or_a_misspelt_key_is_refused_naming_it(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "plugin.yml").write_text("name: p\nmax_concurrent: 0\nactions:\n  - {name: a, max_concurrent: -1}\n")
    with pytest.raises(ManifestError) as manifest_error:
        load_manifest(folder)
    assert "actions.0.max_concurrent: Input should be greater than or equal to 1" in str(manifest_error.value)
    assert "; max_concurrent: Input should be greater than or equal to 1" in str(manifest_error.value)
    config = tmp_path / "config.yml"
    config.write_text("plugins:\n  - name: p\n    limits: {max_concurent: 3, actions: {a: 0}}\n")
    with pytest.raises(ConfigError) as config_error:
        load_settings(config)
    assert "plugins.0.limits.actions.a: Input should be greater than or equal to 1" in str(config_error.value)
    assert "plugins.0.limits.max_concurent: unknown setting" in str(config_error.value)


def _limits(r: aioredis.Redis, keys: Keys, claims: Claims, *entries: PluginEntry) -> Limits:
    """The limits of a worker that loaded plugin P (``MANIFEST``), with the plugin ``entries`` of its config."""
    plugins = cast(Mapping[str, LoadedPlugin], {"P": _Loaded(MANIFEST)})
    settings = Settings(namespace=keys.namespace, lease_s=3, plugins=list(entries))
    return Limits(r, keys, settings, plugins=plugins, claims=claims, settler=Settler(r, keys), worker_id="w1")


async def _taken(r: aioredis.Redis, keys: Keys, claims: Claims, *job_ids: str) -> list[TakenJob]:
    """Render jobs ``job_ids``, submitted and taken by ``claims``."""
    store, queue = JobStore(r, keys), keys.queue("P")
    for job_id in job_ids:
        at = now()
        created = await store.create(job_id, request_json("P", "render"), queue=queue, now_ms=at, score_ms=at)
        assert created.created
    jobs = (await claims.take([queue], now(), limit=len(job_ids))).jobs
    assert sorted(job.job_id for job in jobs) == sorted(job_ids)
    return sorted(jobs, key=lambda job: job_ids.index(job.job_id))


@pytest.fixture
def keys() -> Keys:
    return Keys("lim")


async def test_a_job_runs_holding_its_slots_and_gives_them_back(fake_redis: aioredis.Redis, keys: Keys) -> None:
    claims = Claims(fake_redis, keys, worker_id="w1", lease_s=3)
    limits = _limits(fake_redis, keys, claims)
    [job] = await _taken(fake_redis, keys, claims, "a")
    seen: list[set[bytes]] = []

    async def run(taken: TakenJob) -> None:
        seen.append(set(await fake_redis.zrange(keys.limit_slots("P", "render"), 0, -1)))
        seen.append(set(await fake_redis.zrange(keys.limit_slots("P"), 0, -1)))

    await limits.guard(job, run)
    assert seen == [{b"a#1"}, {b"a#1"}]
    assert await fake_redis.zcard(keys.limit_slots("P", "render")) == 0
    assert await fake_redis.zcard(keys.limit_slots("P")) == 0


async def test_a_refused_job_goes_back_parked_and_is_promoted_when_the_slot_frees(
    fake_redis: aioredis.Redis, keys: Keys
) -> None:
    claims = Claims(fake_redis, keys, worker_id="w1", lease_s=3)
    limits = _limits(fake_redis, keys, claims)
    first, second = await _taken(fake_redis, keys, claims, "a", "b")
    release = asyncio.Event()
    ran: list[str] = []

    async def run(taken: TakenJob) -> None:
        ran.append(taken.job_id)
        await release.wait()

    holder = asyncio.create_task(limits.guard(first, run))
    async with asyncio.timeout(5):
        while ran != ["a"]:  # a holds the one render slot
            await asyncio.sleep(0.01)
    await limits.guard(second, run)  # render allows one: b is refused, not run
    assert ran == ["a"]
    record = await fake_redis.hgetall(keys.job("b"))  # type: ignore[misc]
    assert (record[b"state"], record[b"attempt"], record[b"worker"]) == (b"queued", b"0", b"")  # never started
    assert (await fake_redis.zscore(second.queue, second.arq_job_id) or 0) > now() + 20_000  # parked ahead
    assert second.arq_job_id not in claims.held
    assert await fake_redis.zcard(keys.limit_waiting("P", "render")) == 1
    release.set()
    await holder
    assert (await fake_redis.zscore(second.queue, second.arq_job_id) or 0) <= now()  # promoted: ready now
    [again] = (await claims.take([second.queue], now(), limit=5)).jobs
    assert (again.job_id, again.attempt) == ("b", 1)  # waiting for a slot was not an attempt
    await limits.guard(again, run)
    assert ran == ["a", "b"]
    assert await fake_redis.zcard(keys.limit_waiting("P", "render")) == 0


async def test_jobs_that_will_not_run_their_action_need_no_slot(fake_redis: aioredis.Redis, keys: Keys) -> None:
    claims = Claims(fake_redis, keys, worker_id="w1", lease_s=3)
    limits = _limits(fake_redis, keys, claims)
    [job] = await _taken(fake_redis, keys, claims, "a")
    assert limits.limits_of(job) == (Limit("P", None, 5), Limit("P", "render", 1))
    for status in ("expired", "malformed"):
        assert limits.limits_of(TakenJob(job.job_id, job.arq_job_id, job.queue, status, 1, job.request)) == ()
    cancelled = TakenJob(job.job_id, job.arq_job_id, job.queue, "run", 1, job.request, cancel_reason="stop")
    assert limits.limits_of(cancelled) == ()
    assert limits.limits_of(TakenJob(job.job_id, job.arq_job_id, job.queue, "run", 1, b"not json")) == ()
    other = TakenJob(job.job_id, job.arq_job_id, keys.queue("Q"), "run", 1, job.request)
    assert limits.limits_of(other) == ()  # a plugin not loaded here (or without limits)


async def test_slots_are_renewed_with_the_leases(fake_redis: aioredis.Redis, keys: Keys) -> None:
    claims = Claims(fake_redis, keys, worker_id="w1", lease_s=3)
    limits = _limits(fake_redis, keys, claims)
    [job] = await _taken(fake_redis, keys, claims, "a")
    renewed = asyncio.Event()

    async def run(taken: TakenJob) -> None:
        slots = keys.limit_slots("P", "render")
        await fake_redis.zadd(slots, {"a#1": now() + 100})  # about to lapse
        await claims.renew()
        assert (await fake_redis.zscore(slots, "a#1") or 0) > now() + 2000
        assert (await fake_redis.zscore(keys.limit_slots("P"), "a#1") or 0) > now() + 2000
        renewed.set()

    await limits.guard(job, run)
    assert renewed.is_set()


async def test_tending_finds_the_slot_of_a_dead_worker(fake_redis: aioredis.Redis, keys: Keys) -> None:
    claims = Claims(fake_redis, keys, worker_id="w1", lease_s=3)
    limits = _limits(fake_redis, keys, claims)
    [job] = await _taken(fake_redis, keys, claims, "b")
    await fake_redis.zadd(keys.limit_slots("P", "render"), {"dead#1": now() + 60_000})  # another worker's

    async def run(taken: TakenJob) -> None:
        raise AssertionError("refused: it must not run")

    await limits.guard(job, run)
    assert (await fake_redis.zscore(job.queue, job.arq_job_id) or 0) > now() + 20_000
    await limits.tend()  # the slot is held: nothing to promote
    assert (await fake_redis.zscore(job.queue, job.arq_job_id) or 0) > now() + 20_000
    await fake_redis.zadd(keys.limit_slots("P", "render"), {"dead#1": now() - 1})  # its worker died: it lapsed
    await limits.tend()
    assert (await fake_redis.zscore(job.queue, job.arq_job_id) or 0) <= now()


async def test_the_config_override_is_what_the_worker_enforces(fake_redis: aioredis.Redis, keys: Keys) -> None:
    claims = Claims(fake_redis, keys, worker_id="w1", lease_s=3)
    entry = {"name": "P", "path": "/nowhere", "limits": {"max_concurrent": None, "actions": {"render": None}}}
    limits = _limits(fake_redis, keys, claims, PluginEntry.model_validate(entry))
    [job] = await _taken(fake_redis, keys, claims, "a")
    assert limits.limits_of(job) == ()


async def test_a_job_whose_slots_cannot_be_taken_waits_parked_instead_of_running(
    fake_redis: aioredis.Redis, keys: Keys
) -> None:
    claims = Claims(fake_redis, keys, worker_id="w1", lease_s=3)
    limits = _limits(fake_redis, keys, claims)
    [job] = await _taken(fake_redis, keys, claims, "a")
    await fake_redis.set(keys.limit_slots("P"), "not a sorted set")  # the script fails (WRONGTYPE)

    async def run(taken: TakenJob) -> None:
        raise AssertionError("it must not run without its slots")

    await limits.guard(job, run)
    assert await fake_redis.hget(keys.job("a"), "state") == b"queued"  # type: ignore[misc]
    assert (await fake_redis.zscore(job.queue, job.arq_job_id) or 0) > now() + 20_000  # parked: no worker spins on it
    assert job.arq_job_id not in claims.held


def test_a_queue_names_its_plugin(keys: Keys) -> None:
    assert keys.queue_plugin(keys.queue("P")) == "P"
    assert keys.queue_plugin(keys.queue("P.v2", "bulk", "host-1.example")) == "P.v2"  # host-targeted


async def test_waiters_written_by_hand_are_dropped_not_promoted(fake_redis: aioredis.Redis, keys: Keys) -> None:
    claims = Claims(fake_redis, keys, worker_id="w1", lease_s=3)
    limits = _limits(fake_redis, keys, claims)
    limit = limits.table("P").of("render")[-1]
    waiting = keys.limit_waiting("P", "render")
    victim = "victim:zset"  # a key of no namespace: a forged waiter must not write to it
    await fake_redis.zadd(victim, {"x": 10**15})
    forged = [f"{victim}\nx", "no newline", f"{keys.queue('P')}\nnot-an-arq-id"]
    await fake_redis.zadd(waiting, {w: i for i, w in enumerate(forged)})
    assert await limits.store.promote(limit, 5, forged) == 0
    assert await fake_redis.zcard(waiting) == 0  # dropped
    assert await fake_redis.zscore(victim, "x") == 10**15  # untouched
