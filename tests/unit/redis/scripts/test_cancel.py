"""cancel.lua: missing, finished (live or final), running (flag and push), waiting (cancelled), the queue reply."""

from __future__ import annotations

import json

import pytest
import redis.asyncio as aioredis
from arq.jobs import Job, JobStatus

from service import arqformat
from service.client.store import JobStore
from service.errors import JobCancelledError
from service.keys import Keys
from service.models import JobState, ProgressStatus, ProgressUpdate
from service.redis import scripts
from service.redis.pubsub import PubSubMultiplexer
from service.redis.streams import StreamEnd, entry_id
from service.worker import settle
from service.worker.progress import ProgressWriter
from service.worker.settle import Settler
from service.worker.take import Claims
from tests.unit.redis.scripts.conftest import create, now, request_json


async def cancel(store: JobStore, job_id: str) -> tuple[str, str]:
    return await store.cancel(job_id, reason="no longer needed", now_ms=now(), ttl_s=600)


async def test_missing_and_finished(r: aioredis.Redis, store: JobStore, keys: Keys) -> None:
    assert await cancel(store, "never") == ("missing", "")
    await r.set(keys.arq_result("done"), json.dumps({"k": {}, "actionq": {"state": "succeeded"}}))
    assert await cancel(store, "done") == ("finished", "succeeded")
    await r.set(keys.arq_result("odd"), b"not json")
    assert await cancel(store, "odd") == ("finished", "")  # unreadable, but it ended: nothing changes
    await r.hset(keys.job("ended"), mapping={"state": "failed", "queue": "q"})  # type: ignore[misc]
    assert await cancel(store, "ended") == ("finished", "failed")
    assert await r.hget(keys.job("ended"), "state") == b"failed"  # type: ignore[misc]


async def test_a_running_job_gets_the_flag_and_a_push(r: aioredis.Redis, store: JobStore, keys: Keys) -> None:
    running = {"state": "running", "queue": keys.queue("P"), "seq": 1, "enqueued_at_ms": 1234}
    await r.hset(keys.job("run"), mapping=running)  # type: ignore[misc]
    mux = PubSubMultiplexer(r)
    try:
        async with mux.subscribe(keys.cancel_channel()) as workers:
            assert await cancel(store, "run") == ("running", "running")
            push = json.loads(await workers.get(5) or b"null")
    finally:
        await mux.close()
    sent = push.pop("ts")
    assert push == {"job_id": "run", "reason": "no longer needed", "generation": 1234, "sig": ""}  # unsigned
    assert abs(sent - now()) < 60_000
    assert await r.hget(keys.job("run"), "cancel_requested") == b"no longer needed"  # type: ignore[misc]
    assert await r.hget(keys.job("run"), "state") == b"running"  # type: ignore[misc]  # the worker ends it


async def test_a_waiting_job_is_cancelled_and_leaves_its_queue(r: aioredis.Redis, store: JobStore, keys: Keys) -> None:
    queue = await create(store, "wait", score_delay_ms=60_000)
    await r.set(keys.checkpoint("wait"), b"{}")
    await r.hset(keys.job("wait"), "watched", "1")  # type: ignore[misc]
    mux = PubSubMultiplexer(r)
    try:
        async with mux.subscribe(keys.job_channel("wait")) as followers:
            assert await cancel(store, "wait") == ("cancelled", "queued")
            message = json.loads(await followers.get(5) or b"null")
    finally:
        await mux.close()
    assert message == {"type": "state", "job_id": "wait", "state": "cancelled", "attempt": 0, "seq": 1}
    record = await store.get("wait")
    assert record is not None
    assert record.state == "cancelled"
    assert record.error is not None
    assert "no longer needed" in record.error.message
    assert await r.zcard(queue) == 0
    # It ended as a settled job ends: one key, its final record in arq's result, with the result TTL.
    assert await r.keys(f"*{keys.namespace}*") == [keys.arq_result("wait").encode()]
    assert 0 < await r.ttl(keys.arq_result("wait")) <= 600  # the service's result TTL: the request set none


async def test_a_waiting_job_keeps_its_own_result_ttl(r: aioredis.Redis, store: JobStore, keys: Keys) -> None:
    queue = keys.queue("P")
    at = now()
    await store.create("own", request_json(result_ttl_s=30), queue=queue, now_ms=at, score_ms=at + 60_000)
    assert await cancel(store, "own") == ("cancelled", "queued")
    assert 0 < await r.ttl(keys.arq_result("own")) <= 30


async def test_without_its_queue_a_waiting_job_is_left_alone(r: aioredis.Redis, store: JobStore, keys: Keys) -> None:
    """The script touches declared keys only: a caller that did not name the queue is told which it is."""
    queue = await create(store, "w2", score_delay_ms=60_000)
    script = scripts.register(r, "cancel")
    error = '{"type":"JobCancelledError","message":"why","traceback":null,"retryable":false}'
    args: list[str | int] = [
        "why",
        now(),
        600,
        keys.arq_job_id("w2"),
        error,
        keys.job_channel("w2"),
        keys.cancel_channel(),
        "w2",
        now(),
        "",
        '{"state":"cancelled","result":null,"error":null}',
        "run_action",
        "cancelled",
    ]
    declared = [keys.job("w2"), keys.arq_result("w2"), keys.checkpoint("w2"), keys.job_stream("w2")]
    assert await script(keys=declared, args=args) == [b"queue", queue.encode()]
    assert await script(keys=[*declared, keys.queue("Elsewhere")], args=args) == [b"queue", queue.encode()]
    assert await r.hget(keys.job("w2"), "state") == b"queued"  # type: ignore[misc]
    assert await r.zcard(queue) == 1
    assert await script(keys=[*declared, queue], args=args) == [b"cancelled", b"queued"]


async def test_a_job_cancelled_while_waiting_keeps_the_keys_a_settled_job_keeps(
    r: aioredis.Redis, store: JobStore, keys: Keys
) -> None:
    """As settle ends a job: one key, the final record in arq's result, which arq's own Job API reads."""
    queue = await create(store, "ran", plugin="Ran")
    [job] = (await Claims(r, keys, worker_id="w1", lease_s=3).take([queue], now(), limit=1)).jobs
    result = arqformat.encode_result(
        arq_job_id=job.arq_job_id, queue=queue, attempt=1, request=job.request, enqueued_at_ms=job.enqueued_at_ms,
        started_at_ms=now(), finished_at_ms=now(), state="succeeded", result=1, error=None,
    )  # fmt: skip
    ended = settle.ended(job, JobState.SUCCEEDED, {}, arq_result=result, result_ttl_s=600, worker_id="w1")
    assert await Settler(r, keys).settle(ended) == 2
    waiting = await create(store, "waited", plugin="Waited", score_delay_ms=60_000)
    assert await cancel(store, "waited") == ("cancelled", "queued")
    names = {k.decode() for k in await r.keys(f"*{keys.namespace}*")}
    assert {n for n in names if n.endswith(":ran")} == {keys.arq_result("ran")}
    assert {n for n in names if n.endswith(":waited")} == {keys.arq_result("waited")}
    assert 0 < await r.ttl(keys.arq_result("waited")) <= 600
    arq_job = Job(keys.arq_job_id("waited"), r, _queue_name=waiting, _deserializer=arqformat.deserialize)
    assert await arq_job.status() is JobStatus.complete
    with pytest.raises(JobCancelledError, match="no longer needed"):
        await arq_job.result(timeout=1)
    info = await arq_job.result_info()
    assert info is not None
    assert (info.function, info.kwargs["request"], info.success) == ("run_action", json.loads(request_json()), False)
    record = await store.get("waited")
    assert record is not None
    assert (record.state, record.attempt, record.seq, record.queue) == (JobState.CANCELLED, 0, 1, waiting)
    assert record.request.params == {"x": 1}


async def test_a_retrying_job_cancelled_ends_its_progress_and_its_stream(
    r: aioredis.Redis, store: JobStore, keys: Keys
) -> None:
    """Attempt 1 reported progress and streamed two items, then failed; cancelled while it waits to retry."""
    queue = await create(store, "again")
    [job] = (await Claims(r, keys, worker_id="w1", lease_s=3).take([queue], now(), limit=1)).jobs
    assert await ProgressWriter(r, keys).write("again", ProgressUpdate(percentage=40, message="half-way")) == 2
    for i in range(2):
        await r.xadd(keys.job_stream("again"), {"v": b"1"}, id=entry_id(i))
    assert await Settler(r, keys).settle(settle.retrying(job, {}, due_ms=now() + 60_000, worker_id="w1")) == 3
    await r.hset(keys.job("again"), "watched", "1")  # type: ignore[misc]
    mux = PubSubMultiplexer(r)
    try:
        async with mux.subscribe(keys.job_channel("again")) as followers:
            assert await cancel(store, "again") == ("cancelled", "retrying")
            progress = json.loads(await followers.get(5) or b"null")
            final = json.loads(await followers.get(5) or b"null")
    finally:
        await mux.close()
    assert (progress["type"], progress["seq"], progress["progress"]["status"]) == ("progress", 4, "cancelled")
    assert final == {"type": "state", "job_id": "again", "state": "cancelled", "attempt": 1, "seq": 5}
    record = await store.get("again")
    assert record is not None
    assert record.progress is not None
    assert (record.progress.status, record.progress.message, record.seq) == (ProgressStatus.CANCELLED, "half-way", 5)
    entries = await r.xrange(keys.job_stream("again"))
    assert [e[0] for e in entries] == [b"0-1", b"0-2", b"0-3"]
    end = StreamEnd.parse(entries[-1][1])
    assert (end.state, end.count) == (JobState.CANCELLED, 2)
    assert end.error is not None
    assert "no longer needed" in end.error.message
    assert 0 < await r.ttl(keys.job_stream("again")) <= 600
