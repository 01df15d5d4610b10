"""settle.lua (through :class:`service.worker.settle.Settler`): ended, retrying, requeued, and the three refusals."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis.asyncio as aioredis

from service import arqformat
from service.client.deadletters import DeadLetter
from service.client.store import JobStore
from service.keys import Keys
from service.models import AttemptInfo, JobState, ProgressStatus, ProgressUpdate, SubTaskProgress
from service.redis.pubsub import PubSubMultiplexer
from service.redis.streams import StreamEnd, entry_id
from service.worker import settle
from service.worker.progress import ProgressWriter
from service.worker.settle import Settler
from service.worker.take import Claims, TakenJob
from tests.unit.redis.scripts.conftest import create, now


async def taken(r: aioredis.Redis, store: JobStore, job_id: str, worker: str = "w1") -> TakenJob:
    """``job_id`` submitted to a queue of its own and taken by ``worker``."""
    queue = await create(store, job_id, plugin=f"P{job_id}")
    [job] = (await Claims(r, store.keys, worker_id=worker, lease_s=3).take([queue], now(), limit=1)).jobs
    assert job.status == "run"
    return job


def result_of(job: TakenJob, state: JobState = JobState.SUCCEEDED) -> bytes:
    return arqformat.encode_result(
        arq_job_id=job.arq_job_id, queue=job.queue, attempt=job.attempt, request=job.request,
        enqueued_at_ms=job.enqueued_at_ms, started_at_ms=now(), finished_at_ms=now(), state=state.value,
        result=49 if state is JobState.SUCCEEDED else None, error=None,
    )  # fmt: skip


def attempt_field(job: TakenJob, state: JobState) -> dict[str, str | int]:
    info = AttemptInfo(attempt=job.attempt, worker="w1", state=state)
    return {f"attempt:{job.attempt}": info.model_dump_json(), "finished_at_ms": now()}


async def test_an_ended_job_keeps_one_key_its_final_record(r: aioredis.Redis, store: JobStore, keys: Keys) -> None:
    job = await taken(r, store, "j1")
    await r.set(keys.checkpoint("j1"), b"{}")
    await r.hset(keys.job("j1"), "watched", "1")  # type: ignore[misc]
    fields = {**attempt_field(job, JobState.SUCCEEDED), "result": "49"}
    ended = settle.ended(job, JobState.SUCCEEDED, fields, arq_result=result_of(job), result_ttl_s=60, worker_id="w1")
    mux = PubSubMultiplexer(r)
    try:
        async with mux.subscribe(keys.job_channel("j1")) as followers:
            assert await Settler(r, keys).settle(ended) == 2
            message = json.loads(await followers.get(5) or b"null")
    finally:
        await mux.close()
    # The end carries the final record, as arq's result holds it: a follower need not read it back.
    assert message.pop("final") == json.loads(await r.get(keys.arq_result("j1")))
    assert message == {"type": "state", "job_id": "j1", "state": "succeeded", "attempt": 1, "seq": 2}
    for gone in (keys.job("j1"), keys.arq_in_progress("j1"), keys.checkpoint("j1")):
        assert not await r.exists(gone)
    assert await r.zcard(job.queue) == 0
    assert 0 < await r.pttl(keys.arq_result("j1")) <= 60_000
    record = await store.get("j1")
    assert record is not None
    assert (record.state, record.result, record.seq, record.worker) == (JobState.SUCCEEDED, 49, 2, "w1")
    assert [a.attempt for a in record.attempts] == [1]
    final = json.loads(await r.get(keys.arq_result("j1")) or b"{}")
    assert "request" not in final["actionq"]  # it is arq's kwargs already
    assert not await r.exists(keys.dead_letter("j1"))


async def test_a_job_that_failed_for_good_leaves_a_dead_letter_with_every_attempt(
    r: aioredis.Redis, store: JobStore, keys: Keys
) -> None:
    job = await taken(r, store, "dl")
    earlier = AttemptInfo(attempt=1, worker="w0", state=JobState.FAILED).model_dump_json()
    await r.hset(keys.job("dl"), mapping={"attempt:1": earlier})  # type: ignore[misc]
    job2 = TakenJob(job.job_id, job.arq_job_id, job.queue, "run", 2, job.request, enqueued_at_ms=job.enqueued_at_ms)
    await r.hset(keys.job("dl"), mapping={"attempt": 2})  # type: ignore[misc]
    error = '{"type":"RuntimeError","message":"boom","traceback":null,"retryable":false}'
    fields = {**attempt_field(job2, JobState.FAILED), "error": error}
    for n in (10, 11):  # attempt numbers sort as numbers, not as text
        info = AttemptInfo(attempt=n, state=JobState.FAILED).model_dump_json()
        fields[f"attempt:{n}"] = info
    ended = settle.ended(
        job2, JobState.FAILED, fields, arq_result=result_of(job2, JobState.FAILED), result_ttl_s=60,
        dead_letter_ttl_s=300, worker_id="w1",
    )  # fmt: skip
    assert await Settler(r, keys).settle(ended) == 2
    letter = DeadLetter.model_validate_json(await r.get(keys.dead_letter("dl")) or b"{}")
    assert (letter.job_id, letter.state, letter.queue) == ("dl", JobState.FAILED, job.queue)
    assert letter.error is not None
    assert letter.error.message == "boom"
    assert [a.attempt for a in letter.attempts] == [1, 2, 10, 11]
    assert letter.request is not None
    assert letter.request.params == {"x": 1}
    assert await r.zscore(keys.dead_letters(), "dl") is not None
    assert 0 < await r.ttl(keys.dead_letter("dl")) <= 300
    assert 0 < await r.ttl(keys.dead_letters()) <= 300


async def test_a_generator_stream_gets_its_end_marker_with_the_final_state(
    r: aioredis.Redis, store: JobStore, keys: Keys
) -> None:
    job = await taken(r, store, "gen")
    stream = keys.job_stream("gen")
    await r.xadd(stream, {"v": b"1"}, id=entry_id(0))
    await r.xadd(stream, {"v": b"2"}, id=entry_id(1))
    end = StreamEnd(JobState.SUCCEEDED, 2)
    ended = settle.ended(
        job, JobState.SUCCEEDED, attempt_field(job, JobState.SUCCEEDED), arq_result=result_of(job), result_ttl_s=60,
        stream_end=(2, end), worker_id="w1",
    )  # fmt: skip
    assert await Settler(r, keys).settle(ended) == 2
    entries = await r.xrange(stream)
    assert [e[0] for e in entries] == [b"0-1", b"0-2", b"0-3"]
    assert StreamEnd.parse(entries[-1][1]) == end
    assert 0 < await r.ttl(stream) <= 60


async def test_a_marker_that_cannot_go_in_does_not_fail_the_batch(
    r: aioredis.Redis, store: JobStore, keys: Keys
) -> None:
    job = await taken(r, store, "gen2")
    await r.xadd(keys.job_stream("gen2"), {"v": b"1"}, id="0-9")  # items past the marker's place
    ended = settle.ended(
        job, JobState.SUCCEEDED, {}, arq_result=result_of(job), result_ttl_s=60,
        stream_end=(0, StreamEnd(JobState.SUCCEEDED, 0)), worker_id="w1",
    )  # fmt: skip
    assert await Settler(r, keys).settle(ended) == 2
    assert (await store.get("gen2")) is not None


async def test_a_retry_keeps_the_record_and_moves_the_score(r: aioredis.Redis, store: JobStore, keys: Keys) -> None:
    job = await taken(r, store, "re")
    await r.set(keys.checkpoint("re"), b'{"done": 3}')
    due = now() + 5_000
    fields = {**attempt_field(job, JobState.FAILED), "scheduled_at_ms": due}
    assert await Settler(r, keys).settle(settle.retrying(job, fields, due_ms=due, worker_id="w1")) == 2
    record = await r.hgetall(keys.job("re"))  # type: ignore[misc]
    assert (record[b"state"], record[b"seq"], record[b"attempt"]) == (b"retrying", b"2", b"1")
    assert await r.zscore(job.queue, job.arq_job_id) == due
    assert not await r.exists(keys.arq_in_progress("re"))
    assert await r.get(keys.checkpoint("re")) == b'{"done": 3}'  # the next attempt resumes from it


async def test_requeued_and_given_back(r: aioredis.Redis, store: JobStore, keys: Keys) -> None:
    settler = Settler(r, keys)
    cut = await taken(r, store, "cut")
    assert await settler.settle(settle.requeued(cut, worker_id="w1", started=True)) == 2
    assert await r.hmget(keys.job("cut"), ["state", "attempt", "worker"]) == [b"queued", b"1", b""]  # type: ignore[misc]
    back = await taken(r, store, "back")
    assert await settler.settle(settle.requeued(back, worker_id="w1", started=False)) == 2
    assert await r.hget(keys.job("back"), "attempt") == b"0"  # type: ignore[misc]  # the start is undone
    assert (await r.zscore(back.queue, back.arq_job_id) or 0) <= now()  # ready again


async def test_missing_ended_and_superseded_write_nothing(r: aioredis.Redis, store: JobStore, keys: Keys) -> None:
    settler = Settler(r, keys)
    gone = await taken(r, store, "gone")
    await r.delete(keys.job("gone"))
    assert await settler.settle(settle.ended(gone, JobState.SUCCEEDED, {}, arq_result=result_of(gone),
                                             result_ttl_s=60, worker_id="w1")) == -1  # fmt: skip
    assert not await r.exists(keys.job("gone"))
    assert not await r.exists(keys.arq_result("gone"))
    assert await r.zscore(gone.queue, gone.arq_job_id) is None  # it leaves its queue

    over = await taken(r, store, "over")
    await r.hset(keys.job("over"), "state", "cancelled")  # type: ignore[misc]
    assert await settler.settle(settle.retrying(over, {}, due_ms=now(), worker_id="w1")) == -2
    assert await r.hget(keys.job("over"), "state") == b"cancelled"  # type: ignore[misc]

    # w1's lease lapsed and w2 took the job (attempt 2): w1's failure must not touch it.
    lapsed = await taken(r, store, "lapsed")
    await r.delete(keys.arq_in_progress("lapsed"))
    [second] = (await Claims(r, keys, worker_id="w2", lease_s=3).take([lapsed.queue], now() + 3_500, 1)).jobs
    await r.set(keys.checkpoint("lapsed"), b"{}")
    late = settle.ended(
        lapsed, JobState.FAILED, {"error": '{"type":"E","message":"m"}'}, arq_result=result_of(lapsed, JobState.FAILED),
        result_ttl_s=60, dead_letter_ttl_s=300, stream_end=(0, StreamEnd(JobState.FAILED, 0)), worker_id="w1",
    )  # fmt: skip
    assert await settler.settle(late) == -3
    record = await r.hgetall(keys.job("lapsed"))  # type: ignore[misc]
    assert (record[b"state"], record[b"worker"], record[b"attempt"]) == (b"running", b"w2", b"2")
    assert await r.get(keys.arq_in_progress("lapsed")) == b"w2"
    assert await r.zscore(lapsed.queue, lapsed.arq_job_id) is not None
    assert await r.exists(keys.checkpoint("lapsed"))
    for nothing in (keys.arq_result("lapsed"), keys.dead_letter("lapsed"), keys.job_stream("lapsed")):
        assert not await r.exists(nothing)
    assert second.attempt == 2


async def test_a_batch_settles_each_of_its_jobs(r: aioredis.Redis, store: JobStore, keys: Keys) -> None:
    jobs = [await taken(r, store, f"b{i}") for i in range(20)]
    settler = Settler(r, keys)
    seqs = await asyncio.gather(
        *(
            settler.settle(
                settle.ended(j, JobState.SUCCEEDED, {}, arq_result=result_of(j), result_ttl_s=60, worker_id="w1")
            )
            for j in jobs
        )
    )
    assert seqs == [2] * 20
    assert await r.zcard(jobs[0].queue) == 0


async def test_an_unclaimed_settle_ends_a_waiting_job_but_not_one_an_attempt_holds(
    r: aioredis.Redis, store: JobStore, keys: Keys
) -> None:
    """The sweep of a queue no worker serves: a queued job ends; a taken one is left to its attempt."""
    queue = await create(store, "waiting", plugin="Unserved")
    request = await r.hget(keys.job("waiting"), "request")  # type: ignore[misc]
    waiting = TakenJob("waiting", keys.arq_job_id("waiting"), queue, "expired", 0, request)
    held = await taken(r, store, "held")

    def expired(job: TakenJob) -> settle.Settlement:
        return settle.ended(
            job, JobState.FAILED, {}, arq_result=result_of(job, JobState.FAILED), result_ttl_s=60,
            worker_id=None, unclaimed=True,
        )  # fmt: skip

    settler = Settler(r, keys)
    assert await settler.settle(expired(waiting)) == 1
    assert await r.zcard(queue) == 0
    record = await store.get("waiting")
    assert record is not None
    assert record.state is JobState.FAILED
    assert await settler.settle(expired(held)) == -3  # running, with a lease: not the sweep's
    assert await r.hget(keys.job("held"), "state") == b"running"  # type: ignore[misc]
    assert await r.zcard(held.queue) == 1
    await r.delete(keys.arq_in_progress("held"))  # its worker died: a running record nobody holds
    assert await settler.settle(expired(held)) > 0
    assert not await r.exists(keys.job("held"))


# A progress update whose message and sub-task mention a status too: only its own status changes.
RUNNING = ProgressUpdate(
    percentage=50,
    message='it said "status":"running"',
    sub_tasks=[SubTaskProgress(name="part", weight=1, progress=ProgressUpdate(percentage=50))],
)


@pytest.mark.parametrize(
    ("state", "status"),
    [
        (JobState.SUCCEEDED, ProgressStatus.COMPLETED),
        (JobState.FAILED, ProgressStatus.ERROR),
        (JobState.TIMED_OUT, ProgressStatus.TIMED_OUT),
        (JobState.CANCELLED, ProgressStatus.CANCELLED),
    ],
)
async def test_an_ended_jobs_last_progress_says_how_it_ended(
    r: aioredis.Redis, store: JobStore, keys: Keys, state: JobState, status: ProgressStatus
) -> None:
    job = await taken(r, store, "p1")
    assert await ProgressWriter(r, keys).write("p1", RUNNING) == 2
    await r.hset(keys.job("p1"), "watched", "1")  # type: ignore[misc]
    ended = settle.ended(job, state, attempt_field(job, state), arq_result=result_of(job, state), result_ttl_s=60,
                         worker_id="w1")  # fmt: skip
    mux = PubSubMultiplexer(r)
    try:
        async with mux.subscribe(keys.job_channel("p1")) as followers:
            assert await Settler(r, keys).settle(ended) == 4  # the progress's change, then the final state
            progress = json.loads(await followers.get(5) or b"null")
            final = json.loads(await followers.get(5) or b"null")
    finally:
        await mux.close()
    expected = RUNNING.model_copy(update={"status": status})
    assert progress == {"type": "progress", "job_id": "p1", "progress": expected.model_dump(mode="json"), "seq": 3}
    assert final.pop("final")["actionq"]["state"] == state.value
    assert final == {"type": "state", "job_id": "p1", "state": state.value, "attempt": 1, "seq": 4}
    record = await store.get("p1")
    assert record is not None
    assert (record.state, record.seq, record.progress) == (state, 4, expected)
    assert record.progress is not None
    assert record.progress.sub_tasks[0].progress.status is ProgressStatus.RUNNING  # only the job's own status


async def test_a_progress_that_says_how_it_ended_already_is_not_a_change(
    r: aioredis.Redis, store: JobStore, keys: Keys
) -> None:
    job = await taken(r, store, "p2")
    done = ProgressUpdate(percentage=100, status=ProgressStatus.COMPLETED)
    assert await ProgressWriter(r, keys).write("p2", done) == 2
    ended = settle.ended(job, JobState.SUCCEEDED, attempt_field(job, JobState.SUCCEEDED), arq_result=result_of(job),
                         result_ttl_s=60, worker_id="w1")  # fmt: skip
    assert await Settler(r, keys).settle(ended) == 3
    record = await store.get("p2")
    assert record is not None
    assert record.progress == done


async def test_a_requeued_attempt_that_ran_keeps_its_history_entry(
    r: aioredis.Redis, store: JobStore, keys: Keys
) -> None:
    settler = Settler(r, keys)
    cut = await taken(r, store, "cut2")
    started = int(await r.hget(keys.job("cut2"), "started_at_ms") or 0)  # type: ignore[misc]
    assert await settler.settle(settle.requeued(cut, worker_id="w1", started=True)) == 2
    record = await store.get("cut2")
    assert record is not None
    [entry] = record.attempts
    assert (entry.attempt, entry.worker, entry.started_at_ms, entry.state) == (1, "w1", started, "interrupted")
    assert entry.finished_at_ms is not None
    assert entry.finished_at_ms >= started
    assert "back to its queue" in entry.note
    back = await taken(r, store, "back2")
    assert await settler.settle(settle.requeued(back, worker_id="w1", started=False)) == 2
    assert not await r.hexists(keys.job("back2"), "attempt:1")  # type: ignore[misc]  # undone: no attempt to keep


async def test_a_job_ended_with_no_owner_while_an_attempt_was_lost_records_it(
    r: aioredis.Redis, store: JobStore, keys: Keys
) -> None:
    """The sweep ends a job whose worker died while running it (its record says running, nobody holds it)."""
    held = await taken(r, store, "dead")
    await r.delete(keys.arq_in_progress("dead"))
    swept = settle.ended(held, JobState.FAILED, {}, arq_result=result_of(held, JobState.FAILED), result_ttl_s=60,
                         worker_id=None, unclaimed=True)  # fmt: skip
    assert await Settler(r, keys).settle(swept) > 0
    record = await store.get("dead")
    assert record is not None
    [lost] = record.attempts
    assert (lost.attempt, lost.worker, lost.state) == (1, "w1", "lost")


async def test_a_late_settlement_of_a_job_cancelled_while_waiting_writes_nothing(
    r: aioredis.Redis, store: JobStore, keys: Keys
) -> None:
    job = await taken(r, store, "gone2")
    await Settler(r, keys).settle(settle.retrying(job, {}, due_ms=now() + 60_000, worker_id="w1"))
    assert await store.cancel("gone2", reason="r", now_ms=now(), ttl_s=60) == ("cancelled", "retrying")
    late = settle.retrying(job, {}, due_ms=now(), worker_id="w1")
    assert await Settler(r, keys).settle(late) == -2  # it ended: its final record is in arq's result
    assert not await r.exists(keys.job("gone2"))
