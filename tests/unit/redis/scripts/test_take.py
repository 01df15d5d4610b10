"""take.lua (through :class:`service.worker.take.Claims`): run, expired, missing, ended, skipped, the listing."""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ClusterError

from service.client.store import JobStore
from service.keys import Keys
from service.redis.pubsub import PubSubMultiplexer
from service.worker.take import IDLE_TTL_S, Claims, TakenJob
from tests.unit.redis.scripts.conftest import create, now, request_json


def claims(r: aioredis.Redis, keys: Keys, worker: str = "w1") -> Claims:
    return Claims(r, keys, worker_id=worker, lease_s=3)


async def test_a_ready_job_is_claimed_and_started(r: aioredis.Redis, store: JobStore, keys: Keys) -> None:
    queue = await create(store, "j1")
    await r.hset(keys.job("j1"), mapping={"watched": "1", "cancel_requested": "stop it"})  # type: ignore[misc]
    mux = PubSubMultiplexer(r)
    try:
        async with mux.subscribe(keys.job_channel("j1")) as followers:
            at = now()
            take = await claims(r, keys).take([queue], at, limit=5)
            message = json.loads(await followers.get(5) or b"null")
    finally:
        await mux.close()
    [job] = take.jobs
    assert (job.job_id, job.status, job.attempt, job.queue, job.cancel_reason) == ("j1", "run", 1, queue, "stop it")
    assert json.loads(job.request) == json.loads(request_json())
    assert message == {"type": "state", "job_id": "j1", "state": "running", "attempt": 1, "seq": 1}
    record = await r.hgetall(keys.job("j1"))  # type: ignore[misc]
    assert (record[b"state"], record[b"attempt"], record[b"worker"], record[b"seq"]) == (b"running", b"1", b"w1", b"1")
    assert await r.get(keys.arq_in_progress("j1")) == b"w1"
    assert 0 < await r.pttl(keys.arq_in_progress("j1")) <= 3000
    assert await r.zscore(queue, keys.arq_job_id("j1")) == at + 3000  # out of the ready window for the lease


async def test_expired_missing_and_ended_jobs(r: aioredis.Redis, store: JobStore, keys: Keys) -> None:
    queue = await create(store, "late", expires_at_ms=now() - 1)
    await create(store, "gone")
    await r.delete(keys.job("gone"))
    await create(store, "over")
    await r.hset(keys.job("over"), "state", "cancelled")  # type: ignore[misc]
    take = await claims(r, keys).take([queue], now(), limit=5)
    by_id = {job.job_id: job for job in take.jobs}
    assert {k: j.status for k, j in by_id.items()} == {"late": "expired", "gone": "missing", "over": "ended"}
    assert await r.hget(keys.job("late"), "state") == b"queued"  # type: ignore[misc]  # claimed, never started
    assert await r.get(keys.arq_in_progress("late")) == b"w1"
    members = {m.decode() for m in await r.zrange(queue, 0, -1)}
    assert members == {keys.arq_job_id("late")}  # the missing and the ended one left their queue
    assert not await r.exists(keys.arq_in_progress("gone"))
    assert not await r.exists(keys.arq_in_progress("over"))


async def test_a_held_lease_is_skipped_and_says_when_to_look_again(
    r: aioredis.Redis, store: JobStore, keys: Keys
) -> None:
    queue = await create(store, "held")
    await r.set(keys.arq_in_progress("held"), "w-other", px=800)  # a lapsed score, a lease still alive
    at = now()
    take = await claims(r, keys).take([queue], at, limit=5)
    assert take.jobs == []
    assert take.next_due_ms is not None
    assert at < take.next_due_ms <= at + 800
    assert await r.hget(keys.job("held"), "state") == b"queued"  # type: ignore[misc]


async def test_a_job_rescheduled_since_it_was_seen_is_not_taken(r: aioredis.Redis, store: JobStore, keys: Keys) -> None:
    """The script re-checks each candidate's score: a retry moved meanwhile waits for its time."""
    queue = await create(store, "moved")
    taker = claims(r, keys)
    assert (await taker.take([queue], now(), limit=0)).jobs == []  # full: it only sees the job, as a hint
    await r.zadd(queue, {keys.arq_job_id("moved"): now() + 60_000})  # another worker's settle: a retry
    take = await taker.take([queue], now(), limit=5)
    assert take.jobs == []
    assert await r.hget(keys.job("moved"), "state") == b"queued"  # type: ignore[misc]
    assert not await r.exists(keys.arq_in_progress("moved"))


async def test_the_limit_holds_across_queues_in_order(r: aioredis.Redis, store: JobStore, keys: Keys) -> None:
    first, second = keys.queue("A"), keys.queue("B")
    at = now()
    for i in range(3):
        await store.create(f"a{i}", request_json("A"), queue=first, now_ms=at, score_ms=at + i)
        await store.create(f"b{i}", request_json("B"), queue=second, now_ms=at, score_ms=at + i)
    take = await claims(r, keys).take([second, first], at + 10, limit=4)
    assert [job.job_id for job in take.jobs] == ["b0", "b1", "b2", "a0"]
    assert [await r.hget(keys.job(f"a{i}"), "state") for i in (1, 2)] == [b"queued", b"queued"]  # type: ignore[misc]


async def test_a_deferred_job_is_left_and_its_time_returned(r: aioredis.Redis, store: JobStore, keys: Keys) -> None:
    queue = await create(store, "later", score_delay_ms=60_000)
    at = now()
    take = await claims(r, keys).take([queue], at, limit=5)
    assert take.jobs == []
    assert take.next_due_ms is not None
    assert at + 59_000 < take.next_due_ms <= at + 61_000


async def test_a_foreign_queue_member_is_removed_not_fatal(r: aioredis.Redis, store: JobStore, keys: Keys) -> None:
    queue = await create(store, "ok")
    await r.zadd(queue, {b"someone-else:x": 0, b"\xff\xfe": 0})  # not arq ids of this namespace
    take = await claims(r, keys).take([queue], now(), limit=5)
    assert [job.job_id for job in take.jobs] == ["ok"]
    assert {m.decode() for m in await r.zrange(queue, 0, -1)} == {keys.arq_job_id("ok")}


async def test_an_idle_worker_lists_itself_a_busy_one_as_one_to_wake(r: aioredis.Redis, keys: Keys) -> None:
    queue = keys.queue("P")
    idle = keys.idle_workers(queue)
    taker = claims(r, keys)
    at = now()
    await taker.take([queue], at, limit=5, advertise=True, idle=True)
    assert await r.zrange(idle, 0, -1, withscores=True) == [(b"w1", at + IDLE_TTL_S * 1000)]
    assert taker.listed
    await taker.take([queue], at, limit=5, advertise=True, idle=False)  # jobs run here now, room for 5
    assert await r.zrange(idle, 0, -1) == [b"~w1"]
    assert not taker.listed
    await taker.take([queue], at, limit=0, advertise=True)  # full: not listed at all
    assert await r.zcard(idle) == 0


async def test_a_listing_a_submit_used_up_is_renewed_at_the_next_take(r: aioredis.Redis, keys: Keys) -> None:
    queue = keys.queue("P")
    idle = keys.idle_workers(queue)
    taker = claims(r, keys)
    await taker.take([queue], now(), limit=5, advertise=True, idle=False)
    await r.zrem(idle, "~w1")  # a submit woke it, taking its listing
    taker.woken(queue)
    await taker.take([queue], now(), limit=5, advertise=True, idle=False)
    assert await r.zrange(idle, 0, -1) == [b"~w1"]


async def test_unregister_leaves_every_idle_set(r: aioredis.Redis, keys: Keys) -> None:
    queues = [keys.queue("P"), keys.queue("Q")]
    taker = claims(r, keys)
    await taker.take(queues, now(), limit=5, advertise=True, idle=True)
    assert all([await r.zcard(keys.idle_workers(q)) == 1 for q in queues])
    await taker.unregister(queues)
    assert all([await r.zcard(keys.idle_workers(q)) == 0 for q in queues])


async def test_after_a_hand_off_the_next_take_lists_the_worker_once(
    r: aioredis.Redis, store: JobStore, keys: Keys
) -> None:
    """A hand-off lists the worker as one to wake in its place; listed idle again, it is not both."""
    queue = keys.queue("P")
    idle = keys.idle_workers(queue)
    taker = claims(r, keys)
    await taker.take([queue], now(), limit=5, advertise=True, idle=True)
    mux = PubSubMultiplexer(r)
    try:
        async with mux.subscribe(keys.worker_channel("w1")):  # a hand-off goes only to a listener
            await create(store, "handed")  # handed to w1, which is now listed as '~w1' there
    finally:
        await mux.close()
    assert await r.zrange(idle, 0, -1) == [b"~w1"]
    record = await store.get("handed")
    assert record is not None
    taker.handed(TakenJob("handed", keys.arq_job_id("handed"), queue, "run", 1, b"{}"))
    await taker.take([queue], now(), limit=5, advertise=True, idle=True)  # its job ended: idle again
    assert await r.zrange(idle, 0, -1) == [b"w1"]  # once, as idle: the next submit hands it a job


async def test_a_job_taken_again_after_its_lease_lapsed_records_the_lost_attempt(
    r: aioredis.Redis, store: JobStore, keys: Keys
) -> None:
    queue = await create(store, "lost")
    [first] = (await claims(r, keys, "w1").take([queue], now(), limit=1)).jobs
    started = int(await r.hget(keys.job("lost"), "started_at_ms") or 0)  # type: ignore[misc]
    await r.delete(keys.arq_in_progress("lost"))  # w1 was killed: its lease lapses, its score falls due
    [second] = (await claims(r, keys, "w2").take([queue], now() + 3_500, limit=1)).jobs
    assert (first.attempt, second.status, second.attempt) == (1, "run", 2)
    record = await store.get("lost")
    assert record is not None
    assert (record.state, record.worker, record.attempt) == ("running", "w2", 2)
    [lost] = record.attempts
    assert (lost.attempt, lost.worker, lost.started_at_ms, lost.finished_at_ms) == (1, "w1", started, None)
    assert (lost.state, lost.note) == ("lost", "its worker stopped answering (lease lapsed)")


async def test_a_lost_attempt_is_recorded_once_and_for_an_expired_job_too(
    r: aioredis.Redis, store: JobStore, keys: Keys
) -> None:
    queue = await create(store, "kept")
    await claims(r, keys, "w1").take([queue], now(), limit=1)
    own = '{"attempt":1,"state":"failed","note":"written meanwhile"}'
    await r.hset(keys.job("kept"), "attempt:1", own)  # type: ignore[misc]
    await r.delete(keys.arq_in_progress("kept"))
    await claims(r, keys, "w2").take([queue], now() + 3_500, limit=1)
    assert await r.hget(keys.job("kept"), "attempt:1") == own.encode()  # type: ignore[misc]  # left as it was

    late = await create(store, "late", plugin="Late", expires_at_ms=now() + 1_000)
    await claims(r, keys, "w1").take([late], now(), limit=1)
    await r.delete(keys.arq_in_progress("late"))
    [expired] = (await claims(r, keys, "w2").take([late], now() + 3_500, limit=1)).jobs
    assert (expired.status, expired.attempt) == ("expired", 1)
    entry = json.loads(await r.hget(keys.job("late"), "attempt:1") or b"{}")  # type: ignore[misc]
    assert (entry["state"], entry["worker"]) == ("lost", "w1")


async def test_a_partition_whose_call_fails_does_not_hide_what_the_others_claimed(
    r: aioredis.Redis, namespace: str
) -> None:
    """On Redis Cluster a take is a call per partition: one that fails (a slot moving, ``TTL
    exhausted``) must not drop the jobs the others claimed, or their leases would be renewed for
    ever with nothing running them. The key layout of a cluster is used on one server here."""
    keys = Keys(namespace, partitions=3)
    store = JobStore(r, keys)
    queue = keys.queue("P")
    at = now()
    for i in range(12):
        await store.create(f"p{i}", request_json("P"), queue=queue, now_ms=at, score_ms=at)
    taker = claims(r, keys)
    broken = keys.queue_sets(queue)[0]
    script = taker._take

    async def one_partition_fails(**call: Any) -> Any:
        if broken in call["keys"]:
            raise ClusterError("TTL exhausted.")
        return await script(**call)

    taker._take = one_partition_fails  # type: ignore[assignment]
    sets = keys.queue_sets(queue)
    await taker.take(sets, now(), limit=0)  # the look: every partition's ready jobs become hints
    take = await taker.take(sets, now(), limit=12)
    assert isinstance(take.failed, ClusterError)
    claimed = [job for job in take.jobs if job.claimed]
    stuck = {f"p{i}" for i in range(12) if keys.queue_of(queue, f"p{i}") == broken}
    assert claimed
    assert {job.job_id for job in claimed} == {f"p{i}" for i in range(12)} - stuck
    assert taker.held == {job.arq_job_id for job in claimed}
