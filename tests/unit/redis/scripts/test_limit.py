"""limit.lua (through :class:`service.worker.limits.SlotStore`): acquire, renew, release, promote."""

from __future__ import annotations

import redis.asyncio as aioredis

from service.client.store import JobStore
from service.keys import Keys
from service.redis.pubsub import PubSubMultiplexer
from service.worker.limits import Limit, Refusal, SlotStore
from tests.unit.redis.scripts.conftest import create, now

RENDER = Limit("P", "render", 2)
PLUGIN = Limit("P", None, 3)


def store_of(r: aioredis.Redis, keys: Keys) -> SlotStore:
    return SlotStore(r, keys, lease_s=3)


def waiter(keys: Keys, job_id: str, plugin: str = "P") -> str:
    return f"{keys.queue(plugin)}\n{keys.arq_job_id(job_id)}"


async def acquire(slots: SlotStore, job_id: str, *limits: Limit, submitted_ms: int = 1) -> Refusal | None:
    return await slots.acquire(f"{job_id}#1", limits, waiter=waiter(slots.keys, job_id), submitted_ms=submitted_ms)


async def test_up_to_the_limit_and_no_more(r: aioredis.Redis, keys: Keys) -> None:
    slots = store_of(r, keys)
    assert await acquire(slots, "a", RENDER) is None
    assert await acquire(slots, "b", RENDER) is None
    assert await acquire(slots, "c", RENDER) == Refusal(RENDER, 2)
    assert {m.decode() for m in await r.zrange(keys.limit_slots("P", "render"), 0, -1)} == {"a#1", "b#1"}
    # The deadline is Redis's clock plus the lease; the set itself outlives every slot in it.
    deadline = await r.zscore(keys.limit_slots("P", "render"), "a#1")
    assert deadline is not None
    assert now() + 2000 < deadline <= now() + 3000 + 1000
    assert await r.pttl(keys.limit_slots("P", "render")) > 3000
    # The refused job waits, by submit time; acquiring again later does not count it twice.
    assert await r.zrange(keys.limit_waiting("P", "render"), 0, -1, withscores=True) == [
        (waiter(keys, "c").encode(), 1.0)
    ]
    assert await acquire(slots, "a", RENDER) is None  # the same attempt holds its slot already
    assert await r.zcard(keys.limit_slots("P", "render")) == 2


async def test_a_dead_slot_comes_back(r: aioredis.Redis, keys: Keys) -> None:
    slots = store_of(r, keys)
    assert await acquire(slots, "a", RENDER) is None
    await r.zadd(keys.limit_slots("P", "render"), {"dead#1": now() - 10})  # its worker stopped renewing
    assert await acquire(slots, "b", RENDER) is None
    members = {m.decode() for m in await r.zrange(keys.limit_slots("P", "render"), 0, -1)}
    assert members == {"a#1", "b#1"}


async def test_plugin_and_action_limits_are_taken_together_or_not_at_all(r: aioredis.Redis, keys: Keys) -> None:
    slots = store_of(r, keys)
    one = Limit("P", "render", 1)
    assert await acquire(slots, "a", PLUGIN, one) is None
    assert await acquire(slots, "b", PLUGIN, one) == Refusal(one, 1)
    assert await r.zcard(keys.limit_slots("P")) == 1  # refused by the action: no plugin slot taken either
    assert await acquire(slots, "c", PLUGIN) is None  # another action: only the plugin's limit
    assert await acquire(slots, "d", PLUGIN) is None
    assert await acquire(slots, "e", PLUGIN, Limit("P", "other", 5)) == Refusal(PLUGIN, 3)
    assert not await r.exists(keys.limit_slots("P", "other"))
    assert await r.zcard(keys.limit_waiting("P")) == 1
    assert await r.zcard(keys.limit_waiting("P", "render")) == 1


async def test_release_frees_the_slot_and_names_the_oldest_waiters(r: aioredis.Redis, keys: Keys) -> None:
    slots = store_of(r, keys)
    assert await acquire(slots, "a", RENDER) is None
    assert await acquire(slots, "b", RENDER) is None
    assert await acquire(slots, "late", RENDER, submitted_ms=20) is not None
    assert await acquire(slots, "early", RENDER, submitted_ms=10) is not None
    assert await slots.release("", (RENDER,)) == [(0, [])]  # only looking, and nothing free
    assert await slots.release("a#1", (RENDER,)) == [(1, [waiter(keys, "early"), waiter(keys, "late")])]
    assert await slots.release("a#1", (RENDER,)) == [(1, [waiter(keys, "early"), waiter(keys, "late")])]
    assert await acquire(slots, "early", RENDER, submitted_ms=10) is None
    assert await r.zrange(keys.limit_waiting("P", "render"), 0, -1) == [waiter(keys, "late").encode()]


async def test_renew_extends_held_slots_and_never_revives_a_dropped_one(r: aioredis.Redis, keys: Keys) -> None:
    slots = store_of(r, keys)
    assert await acquire(slots, "a", PLUGIN, RENDER) is None
    await r.zadd(keys.limit_slots("P"), {"a#1": now() + 500})  # about to lapse
    await r.zadd(keys.limit_slots("P", "render"), {"gone#1": now() - 10})  # lapsed already
    await acquire(slots, "c", RENDER)  # drops the lapsed one
    async with r.pipeline(transaction=False) as pipe:
        slots.renew_into(pipe, {"a#1": (PLUGIN, RENDER), "gone#1": (RENDER,)})
        [renewed] = await pipe.execute()
    assert renewed == 2
    assert (await r.zscore(keys.limit_slots("P"), "a#1") or 0) > now() + 2000
    assert await r.zscore(keys.limit_slots("P", "render"), "gone#1") is None


async def test_promote_makes_parked_waiters_ready_up_to_the_free_slots(
    r: aioredis.Redis, store: JobStore, keys: Keys
) -> None:
    slots = store_of(r, keys)
    queue = await create(store, "parked")
    await create(store, "next")
    full = Limit("P", "render", 0)  # refuses every job: both join render's waiting set
    for job_id in ("parked", "next"):
        await r.zadd(queue, {keys.arq_job_id(job_id): now() + 60_000}, xx=True)  # given back, parked ahead
        assert await slots.acquire("x#1", (full,), waiter=waiter(keys, job_id), submitted_ms=now()) is not None
    mux = PubSubMultiplexer(r)
    try:
        async with mux.subscribe(keys.wake_channel()) as wakes:
            at = now()
            assert await slots.promote(RENDER, 1, [waiter(keys, "parked"), waiter(keys, "next")]) == 1
            assert await wakes.get(5) == queue.encode()
    finally:
        await mux.close()
    assert (await r.zscore(queue, keys.arq_job_id("parked")) or 0) <= now()
    assert (await r.zscore(queue, keys.arq_job_id("parked")) or 0) >= at - 1000
    assert (await r.zscore(queue, keys.arq_job_id("next")) or 0) > now() + 50_000  # one free slot: one promoted
    # Promoted but not taken yet, it still counts: the next promotion into one slot leaves "next" parked.
    assert await slots.promote(RENDER, 1, [waiter(keys, "parked"), waiter(keys, "next")]) == 0
    assert await r.zcard(keys.limit_waiting("P", "render")) == 2  # waiters leave when they get their slots


async def test_promote_counts_running_waiters_and_drops_the_gone(
    r: aioredis.Redis, store: JobStore, keys: Keys
) -> None:
    slots = store_of(r, keys)
    queue = await create(store, "running")
    for job_id in ("ended", "deleted", "retrying", "parked"):
        await create(store, job_id)
    for job_id in ("running", "ended", "deleted", "retrying", "parked"):
        await r.zadd(queue, {keys.arq_job_id(job_id): now() + 60_000}, xx=True)
        await r.zadd(keys.limit_waiting("P", "render"), {waiter(keys, job_id): 1})
    await r.hset(keys.job("running"), "state", "running")  # type: ignore[misc]
    await r.hset(keys.job("ended"), "state", "succeeded")  # type: ignore[misc]
    await r.hset(keys.job("retrying"), "state", "retrying")  # type: ignore[misc]
    await r.delete(keys.job("deleted"))
    names = ["running", "ended", "deleted", "retrying", "parked"]
    assert await slots.promote(RENDER, 2, [waiter(keys, n) for n in names]) == 1
    assert (await r.zscore(queue, keys.arq_job_id("parked")) or 0) <= now()
    assert (await r.zscore(queue, keys.arq_job_id("retrying")) or 0) > now()  # its retry delay is its own
    left = {m.decode() for m in await r.zrange(keys.limit_waiting("P", "render"), 0, -1)}
    assert left == {waiter(keys, "running"), waiter(keys, "parked")}


async def test_on_a_cluster_layout_promote_looks_at_each_candidate_in_its_own_call(
    r: aioredis.Redis, keys: Keys
) -> None:
    # The partitioned names on a plain server: the calls are those a cluster gets (one slot each).
    tagged = Keys(keys.namespace, 6)
    store, slots = JobStore(r, tagged), store_of(r, tagged)
    names = ["running", "deleted", "parked", "later"]
    for job_id in names:
        await create(store, job_id)
        queue_set = tagged.queue_of(tagged.queue("P"), job_id)
        await r.zadd(queue_set, {tagged.arq_job_id(job_id): now() + 60_000}, xx=True)
        await r.zadd(tagged.limit_waiting("P", "render"), {f"{queue_set}\n{tagged.arq_job_id(job_id)}": 1})
    await r.hset(tagged.job("running"), "state", "running")  # type: ignore[misc]
    await r.delete(tagged.job("deleted"))
    members = [m.decode() for m in await r.zrange(tagged.limit_waiting("P", "render"), 0, -1)]
    ordered = sorted(members, key=lambda m: names.index(tagged.job_id_from_arq(m.partition("\n")[2])))
    assert await slots.promote(RENDER, 2, ordered) == 1  # running counts, deleted is gone, parked is promoted
    assert (await r.zscore(tagged.queue_of(tagged.queue("P"), "parked"), tagged.arq_job_id("parked")) or 0) <= now()
    assert (await r.zscore(tagged.queue_of(tagged.queue("P"), "later"), tagged.arq_job_id("later")) or 0) > now()
    left = {
        tagged.job_id_from_arq(m.decode().partition("\n")[2])
        for m in await r.zrange(tagged.limit_waiting("P", "render"), 0, -1)
    }
    assert left == {"running", "parked", "later"}  # the gone one left; the others wait for their slots
