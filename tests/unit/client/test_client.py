"""The producer side against fakeredis: validation, atomic submit, idempotency, records."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from arq.jobs import deserialize_result

from service.client.client import JobClient
from service.client.handle import JobHandle
from service.errors import (
    InvalidParamsError,
    JobConflictError,
    JobNotFoundError,
    PayloadTooLargeError,
    SubmissionError,
    UnknownActionError,
    UnknownPluginError,
)
from service.models import JobRequest, JobState, now_ms
from service.plugins.manifest import load_manifest
from service.plugins.registry import Registry, WorkerInfo
from service.settings import Settings
from service.wire import loads
from service.worker.settle import Settlement, Settler
from service.worker.take import IDLE_TTL_S, Claims, handed_job

PLUGINS = Path(__file__).resolve().parents[3] / "plugins"


@pytest_asyncio.fixture
async def client(fake_redis: aioredis.Redis) -> AsyncIterator[JobClient]:
    settings = Settings(redis_url="redis://fake", namespace="ut", hostname="here", max_payload_bytes=2048)
    client = JobClient(fake_redis, settings, owns_redis=False)
    yield client
    await client.close()


async def _register(client: JobClient, *names: str) -> None:
    registry = Registry(client.redis, client.keys, heartbeat_s=5)
    manifests = [load_manifest(PLUGINS / name, name) for name in names]
    await registry.publish(WorkerInfo(worker_id="w1", hostname="here"), manifests)


async def _all_keys(redis: aioredis.Redis) -> set[bytes]:
    return set(await redis.keys("*"))


async def test_submit_writes_the_record_and_the_queue_entry_together(client: JobClient) -> None:
    await _register(client, "PluginB")
    handle = await client.submit("PluginB", "calculate_square", {"x": "6"}, job_id="j1")
    assert handle.created
    record = await handle.record()
    assert record.state is JobState.QUEUED
    assert record.request.params == {"x": 6}  # coerced before it was stored
    assert record.queue == "ut:queue:default:PluginB"
    assert await client.redis.zscore("ut:queue:default:PluginB", "ut:j1") is not None
    assert await client.redis.ttl("ut:job:j1") == -1  # a live job's record: no TTL until it ends
    assert {b"ut:job:j1", b"ut:queue:default:PluginB"} <= await _all_keys(client.redis)
    assert not [k for k in await _all_keys(client.redis) if k.startswith(b"arq:")]  # the request is in the record


async def test_rejections_write_nothing(client: JobClient) -> None:
    await _register(client, "PluginB", "InteropTarget")
    before = await _all_keys(client.redis)
    with pytest.raises(UnknownPluginError, match=r"unknown plugin 'Nope' \(served: InteropTarget, PluginB\)"):
        await client.submit("Nope", "x")
    with pytest.raises(UnknownActionError, match="declared: calculate_square"):
        await client.submit("PluginB", "cube", {"x": 1})
    with pytest.raises(InvalidParamsError) as bad:
        # b is required here: its default comes from the Python signature, which only the worker's loader reads
        await client.submit("InteropTarget", "it_sync_add", {"a": "x", "b": 1, "zz": 1})
    assert {e.field for e in bad.value.errors} == {"a", "zz"}
    with pytest.raises(InvalidParamsError, match="at most 1 positional"):
        await client.submit("PluginB", "calculate_square", (1, 2))
    with pytest.raises(SubmissionError, match="timeout_s"):
        await client.submit("PluginB", "calculate_square", {"x": 1}, timeout_s=10**6)
    with pytest.raises(SubmissionError, match="job_id"):
        await client.submit("PluginB", "calculate_square", {"x": 1}, job_id="has space")
    with pytest.raises(PayloadTooLargeError):
        await client.submit("Big", "act", {"blob": "y" * 5000}, validate=False)
    assert await _all_keys(client.redis) == before


async def test_unvalidated_params_must_still_be_json(client: JobClient) -> None:
    with pytest.raises(InvalidParamsError, match="not JSON"):
        await client.submit("Any", "thing", {"s": {1, 2}}, validate=False)
    with pytest.raises(InvalidParamsError, match="positional"):
        await client.submit("Any", "thing", 5, validate=False)


async def test_stale_registry_entries_are_not_live(client: JobClient) -> None:
    await _register(client, "PluginB")
    await client.redis.zadd(client.keys.registry_heartbeats(), {"PluginB": 1})
    with pytest.raises(UnknownPluginError):
        await client.submit("PluginB", "calculate_square", {"x": 1})


async def test_idempotent_resubmission_and_conflict(client: JobClient) -> None:
    await _register(client, "PluginB")
    first = await client.submit("PluginB", "calculate_square", {"x": 2}, job_id="same")
    second = await client.submit("PluginB", "calculate_square", {"x": "2"}, job_id="same")  # same after coercion
    assert first.created
    assert not second.created
    assert await client.redis.zcard("ut:queue:default:PluginB") == 1
    with pytest.raises(JobConflictError, match="same"):
        await client.submit("PluginB", "calculate_square", {"x": 3}, job_id="same")


async def test_routing_by_lane_and_host(client: JobClient) -> None:
    await _register(client, "PluginB")
    local = await client.submit("PluginB", "calculate_square", {"x": 1}, host="local", queue="fast")
    assert (await local.record()).queue == "ut:queue:fast:PluginB@here"
    other = await client.submit("PluginB", "calculate_square", {"x": 1}, host="box-2")
    assert (await other.record()).queue == "ut:queue:default:PluginB@box-2"
    deferred = await client.submit("PluginB", "calculate_square", {"x": 1}, defer_s=60)
    record = await deferred.record()
    assert record.scheduled_at_ms - record.enqueued_at_ms >= 59_000


async def test_unknown_job(client: JobClient) -> None:
    with pytest.raises(JobNotFoundError, match="nope"):
        await client.job("nope").state()


async def test_take_and_settle_publish_with_sequence_numbers(client: JobClient) -> None:
    await _register(client, "PluginB")
    handle = await client.submit("PluginB", "calculate_square", {"x": 1}, job_id="s1")
    quiet = await client.submit("PluginB", "calculate_square", {"x": 2}, job_id="s2")  # nobody follows it
    queue = (await handle.record()).queue
    claims = Claims(client.redis, client.keys, worker_id="w", lease_s=3)
    settler = Settler(client.redis, client.keys)
    async with (
        client.pubsub.subscribe(client.keys.job_channel("s1")) as sub,
        client.pubsub.subscribe(client.keys.job_channel("s2")) as unwatched,
    ):
        await handle.record(watch=True)  # subscribe, then read with watch: from now on it is published
        take = await claims.take([queue], now_ms(), limit=5)
        started = loads(await sub.get(5) or b"null")
        done = Settlement(
            job_id="s1", queue=queue, state=JobState.SUCCEEDED, attempt=1, fields={"result": "1"}, result_ttl_s=60
        )
        seq = await settler.settle(done)
        ended = loads(await sub.get(5) or b"null")
        await settler.settle(Settlement(job_id="s2", queue=queue, state=JobState.SUCCEEDED, attempt=1, result_ttl_s=60))
        assert await unwatched.get(0.2) is None
    assert [(j.job_id, j.status, j.attempt) for j in take.jobs] == [("s1", "run", 1), ("s2", "run", 1)]
    assert started == {"type": "state", "job_id": "s1", "state": "running", "attempt": 1, "seq": 1}
    assert (seq, ended) == (2, {"type": "state", "job_id": "s1", "state": "succeeded", "attempt": 1, "seq": 2})
    record = await handle.record()
    assert (record.state, record.seq, record.worker, record.result) == (JobState.SUCCEEDED, 2, "w", 1)
    assert (await quiet.record()).state is JobState.SUCCEEDED
    assert await client.redis.zcard(queue) == 0
    # A record that is gone is not recreated; one that ended is not changed again.
    gone = Settlement(job_id="missing", queue=queue, state=JobState.SUCCEEDED, attempt=1)
    assert await settler.settle(gone) == -1
    assert not await client.redis.exists("ut:job:missing")
    assert await settler.settle(done) == -2
    cancelled = await client.submit("PluginB", "calculate_square", {"x": 3}, job_id="s3")
    await cancelled.cancel()
    late = Settlement(job_id="s3", queue=queue, state=JobState.SUCCEEDED, attempt=1, fields={"result": "9"})
    assert await settler.settle(late) == -2
    assert (await cancelled.record()).state is JobState.CANCELLED


async def test_an_ended_job_keeps_one_key_its_final_record_in_arqs_result(client: JobClient) -> None:
    await _register(client, "PluginB")
    handle = await client.submit("PluginB", "calculate_square", {"x": 5}, job_id="f1", result_ttl_s=60)
    queue = (await handle.record()).queue
    await Claims(client.redis, client.keys, worker_id="w", lease_s=3).take([queue], now_ms(), limit=5)
    settled = Settlement(
        job_id="f1", queue=queue, state=JobState.SUCCEEDED, attempt=1, fields={"result": "25"}, result_ttl_s=60
    )
    request = await client.redis.hget(client.keys.job("f1"), "request")  # type: ignore[misc]
    arq_result = b'{"t":1,"f":"run_action","a":[],"et":1,"s":true,"r":25,"st":2,"ft":3,"k":{"request":%s}}' % request
    assert (
        await Settler(client.redis, client.keys).settle(replace(settled, arq_result=arq_result, result_ttl_s=60)) == 2
    )
    assert not await client.redis.exists(client.keys.job("f1"))
    assert 0 < await client.redis.pttl(client.keys.arq_result("f1")) <= 60_000
    record = await handle.record()
    assert (record.state, record.result, record.worker, record.attempt, record.seq) == (
        JobState.SUCCEEDED,
        25,
        "w",
        1,
        2,
    )
    assert record.request.params == {"x": 5}
    arq_view = deserialize_result(await client.redis.get(client.keys.arq_result("f1")), deserializer=json.loads)
    assert (arq_view.success, arq_view.result, arq_view.job_try) == (True, 25, 1)
    # The same id again: the ended job is found (idempotent), not run twice.
    again = await client.submit("PluginB", "calculate_square", {"x": 5}, job_id="f1")
    assert not again.created
    assert await client.redis.zcard(queue) == 0
    assert (await client.store.cancel("f1", reason="late", now_ms=now_ms(), ttl_s=60)) == ("finished", "succeeded")


async def test_an_idle_worker_is_handed_a_ready_job_by_the_submit_itself(client: JobClient) -> None:
    await _register(client, "PluginB")
    queue = client.keys.queue("PluginB")
    claims = Claims(client.redis, client.keys, worker_id="w-idle", lease_s=3)
    assert (await claims.take([queue], now_ms(), limit=5, advertise=True, idle=True)).jobs == []  # listed
    assert await client.redis.zscore(client.keys.idle_workers(queue), "w-idle") > now_ms()
    assert 0 < await client.redis.pttl(client.keys.idle_workers(queue)) <= IDLE_TTL_S * 1000
    async with client.pubsub.subscribe(client.keys.worker_channel("w-idle")) as inbox:
        handle = await client.submit("PluginB", "calculate_square", {"x": 3}, job_id="h1")
        handed = handed_job(await inbox.get(5) or b"", client.keys)
    assert (handed.job_id, handed.queue, handed.status, handed.attempt) == ("h1", queue, "run", 1)
    assert JobRequest.model_validate_json(handed.request).params == {"x": 3}
    record = await handle.record()
    assert (record.state, record.worker, record.attempt, record.seq) == (JobState.RUNNING, "w-idle", 1, 1)
    assert await client.redis.get(client.keys.arq_in_progress("h1")) == b"w-idle"  # claimed, leased
    assert await client.redis.zscore(queue, client.keys.arq_job_id("h1")) > now_ms()  # out of the ready window
    assert await client.redis.zscore(client.keys.idle_workers(queue), "w-idle") is None  # one job per listing
    # The next submit finds nobody idle: queued, and the workers are woken instead.
    assert (await (await client.submit("PluginB", "calculate_square", {"x": 4})).record()).state is JobState.QUEUED


async def test_no_handoff_for_a_deferred_job_or_a_stale_listing_or_a_full_worker(client: JobClient) -> None:
    await _register(client, "PluginB")
    queue, idle = client.keys.queue("PluginB"), client.keys.idle_workers(client.keys.queue("PluginB"))
    await client.redis.zadd(idle, {"w-gone": now_ms() - 1})  # its listing ran out (killed while idle)
    later = await client.submit("PluginB", "calculate_square", {"x": 1}, defer_s=60)
    assert (await later.record()).state is JobState.QUEUED
    now = await client.submit("PluginB", "calculate_square", {"x": 1})
    assert (await now.record()).state is JobState.QUEUED
    # A worker with nothing to do is listed as itself (for a handoff), one with jobs running and free
    # slots as "~" itself (to be woken), a full one not at all.
    claims = Claims(client.redis, client.keys, worker_id="w-busy", lease_s=3)
    take = await claims.take([queue], now_ms(), limit=1, advertise=True, idle=True)
    assert len(take.jobs) == 1  # took as many as it had room for: not listed
    assert await client.redis.zrangebyscore(idle, now_ms(), "+inf") == []
    assert (await claims.take([queue], now_ms(), limit=5, advertise=True)).jobs == []  # a job runs, room for 5
    assert await client.redis.zrangebyscore(idle, now_ms(), "+inf") == [b"~w-busy"]
    assert (await claims.take([queue], now_ms(), limit=5, advertise=True, idle=True)).jobs == []  # nothing runs
    assert await client.redis.zrangebyscore(idle, now_ms(), "+inf") == [b"w-busy"]
    await client.submit("PluginB", "calculate_square", {"x": 2}, defer_s=0.001)  # not handed over: deferred
    await asyncio.sleep(0.01)
    assert len((await claims.take([queue], now_ms(), limit=5, advertise=True, idle=True)).jobs) == 1
    assert await client.redis.zrangebyscore(idle, now_ms(), "+inf") == [b"~w-busy"]  # busy now: to be woken
    assert not claims.listed


async def test_a_busy_worker_with_room_is_woken_once_by_a_submit(client: JobClient) -> None:
    await _register(client, "PluginB")
    queue, idle = client.keys.queue("PluginB"), client.keys.idle_workers(client.keys.queue("PluginB"))
    claims = Claims(client.redis, client.keys, worker_id="w-room", lease_s=3)
    await claims.take([queue], now_ms(), limit=5, advertise=True)  # jobs run elsewhere in it: room for 5
    assert await client.redis.zrange(idle, 0, -1) == [b"~w-room"]
    async with (
        client.pubsub.subscribe(client.keys.worker_channel("w-room")) as inbox,
        client.pubsub.subscribe(client.keys.wake_channel()) as everyone,
    ):
        first = await client.submit("PluginB", "calculate_square", {"x": 1})
        assert await inbox.get(5) == queue.encode()  # woken, not handed the job
        second = await client.submit("PluginB", "calculate_square", {"x": 2})
        assert await inbox.get(0.2) is None  # once: it takes both in its next take
        assert await everyone.get(0.1) is None  # nobody else was woken
    assert (await first.record()).state is (await second.record()).state is JobState.QUEUED
    assert await client.redis.zrange(idle, 0, -1) == []
    claims.woken(queue)
    take = await claims.take([queue], now_ms(), limit=5, advertise=True)
    assert {j.job_id for j in take.jobs} == {first.job_id, second.job_id}
    assert await client.redis.zrange(idle, 0, -1) == [b"~w-room"]  # listed again where it was used up


async def test_an_attempt_whose_lease_lapsed_does_not_settle_the_one_that_took_over(client: JobClient) -> None:
    await _register(client, "PluginB")
    handle = await client.submit("PluginB", "calculate_square", {"x": 4}, job_id="lap1")
    queue = (await handle.record()).queue
    settler = Settler(client.redis, client.keys)
    first = Claims(client.redis, client.keys, worker_id="w-a", lease_s=3)
    [a] = (await first.take([queue], now_ms(), limit=5)).jobs
    # w-a stops renewing (its loop blocked): the lease lapses and w-b takes the job, attempt 2.
    await client.redis.delete(client.keys.arq_in_progress("lap1"))
    second = Claims(client.redis, client.keys, worker_id="w-b", lease_s=3)
    [b] = (await second.take([queue], now_ms() + 3_500, limit=5)).jobs
    assert (a.attempt, b.attempt) == (1, 2)
    late = Settlement(
        job_id="lap1", queue=queue, state=JobState.SUCCEEDED, attempt=1, fields={"result": "16"}, owner=("w-a", 1)
    )
    assert await settler.settle(replace(late, arq_result=b'{"t":1,"k":{"request":null}}', result_ttl_s=60)) == -3
    record = await handle.record()
    assert (record.state, record.attempt, record.worker) == (JobState.RUNNING, 2, "w-b")  # untouched
    assert await client.redis.zscore(queue, client.keys.arq_job_id("lap1")) is not None  # still w-b's
    assert await client.redis.get(client.keys.arq_in_progress("lap1")) == b"w-b"
    assert not await client.redis.exists(client.keys.arq_result("lap1"))
    request = await client.redis.hget(client.keys.job("lap1"), "request")  # type: ignore[misc]
    done = replace(
        late, attempt=2, owner=("w-b", 2), arq_result=b'{"t":2,"k":{"request":%s}}' % request, result_ttl_s=60
    )
    assert await settler.settle(done) > 0
    assert (await handle.record()).state is JobState.SUCCEEDED
    assert await client.redis.zcard(queue) == 0


async def test_a_listed_worker_knows_when_to_renew_its_listing(client: JobClient) -> None:
    await _register(client, "PluginB")
    queue = client.keys.queue("PluginB")
    claims = Claims(client.redis, client.keys, worker_id="w-renew", lease_s=3)
    assert claims.renew_listing_in_s() == float("inf")  # not listed: nothing to renew
    await claims.take([queue], now_ms(), limit=5, advertise=True, idle=True)
    # The worker's loop waits no longer than this, whatever its poll_delay_s: the listing (10 s)
    # is renewed when half of it is gone, so an idle worker stays where submits find it.
    assert 0 < claims.renew_listing_in_s() <= IDLE_TTL_S / 2
    await claims.unregister([queue])
    assert claims.renew_listing_in_s() == float("inf")


async def test_concurrent_submits_share_round_trips(client: JobClient) -> None:
    await _register(client, "PluginB")
    sizes: list[int] = []
    send = client.store._create_batch

    async def counting(jobs: list[Any]) -> list[list[Any]]:
        sizes.append(len(jobs))
        return await send(jobs)

    client.store._creator._send = counting
    handles = await asyncio.gather(*(client.submit("PluginB", "calculate_square", {"x": i}) for i in range(50)))
    assert sum(sizes) == 50
    assert sizes[0] == 1  # the first alone, at once
    assert len(sizes) < 50  # the rest in batches behind it
    assert [(await h.record()).request.params["x"] for h in handles] == list(range(50))
    # Idempotency still holds inside one batch: the same id twice, the second is the existing job.
    twice = await asyncio.gather(
        *(client.submit("PluginB", "calculate_square", {"x": 7}, job_id="same") for _ in range(3)),
        return_exceptions=True,
    )
    assert [h.created for h in twice if isinstance(h, JobHandle)] == [True, False, False]
    clash = await asyncio.gather(
        client.submit("PluginB", "calculate_square", {"x": 1}, job_id="clash"),
        client.submit("PluginB", "calculate_square", {"x": 2}, job_id="clash"),
        return_exceptions=True,
    )
    assert isinstance(clash[0], JobHandle)
    assert isinstance(clash[1], JobConflictError)
    assert await client.redis.zcard(client.keys.queue("PluginB")) == 50 + 1 + 1
