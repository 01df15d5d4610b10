"""arq's data format (service.arqformat) read back with arq's own Job API and deserializer."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import arq.constants
import fakeredis
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from arq.jobs import DeserializationError, Job, JobStatus, SerializationError, deserialize_result

from service import arqformat
from service.errors import (
    ErrorInfo,
    JobCancelledError,
    JobExpiredError,
    PluginActionExecutionError,
    PluginActionTimeoutError,
)
from service.keys import Keys
from service.wire import dumps, loads

KEYS = Keys("fmt")
QUEUE = KEYS.queue("P")
REQUEST = b'{"plugin":"P","action":"a","params":{"x":6},"options":{}}'


@pytest_asyncio.fixture
async def r() -> AsyncIterator[aioredis.Redis]:
    client: aioredis.Redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    yield client
    await client.aclose()


def job(job_id: str, redis: aioredis.Redis) -> Job:
    return Job(KEYS.arq_job_id(job_id), redis, _queue_name=QUEUE, _deserializer=loads)


def encoded(job_id: str, state: str = "succeeded", error: ErrorInfo | None = None) -> bytes:
    return arqformat.encode_result(
        arq_job_id=KEYS.arq_job_id(job_id), queue=QUEUE, attempt=2, request=REQUEST, enqueued_at_ms=1_000,
        started_at_ms=2_000, finished_at_ms=3_000, state=state, result=36 if state == "succeeded" else None,
        error=error,
    )  # fmt: skip


def test_a_result_encoded_once_is_spliced_in_as_the_same_json() -> None:
    # The worker hands over the result it encoded when checking it; the bytes are the same either way,
    # and the same JSON arq's reader (json) sees: the outcome under "r", the request under "k".
    result = {"text": 'é \\ "quoted" ,"result":null,"error":', "n": 10**40, "items": [1.5, None, True]}
    fields: dict[str, Any] = dict(
        arq_job_id=KEYS.arq_job_id("j"), queue=QUEUE, attempt=1, request=REQUEST, enqueued_at_ms=1,
        started_at_ms=2, finished_at_ms=3, state="succeeded", result=result, error=None,
    )  # fmt: skip
    spliced = arqformat.encode_result(**fields, result_json=dumps(result))
    assert spliced == arqformat.encode_result(**fields)
    decoded = json.loads(spliced)
    assert decoded["r"] == {"state": "succeeded", "result": result, "error": None}
    assert list(decoded) == ["t", "f", "a", "et", "s", "r", "st", "ft", "q", "id", "k"]
    assert decoded["k"] == {"request": json.loads(REQUEST)}
    # A failure's outcome keeps its error whatever its message says.
    error = ErrorInfo(type="ValueError", message=',"result":null,"error": in the message')
    failed = {**fields, "state": "failed", "result": None, "error": error}
    assert arqformat.encode_result(**failed, result_json=b"null") == arqformat.encode_result(**failed)
    assert json.loads(arqformat.encode_result(**failed, result_json=b"null"))["r"]["error"]["message"] == error.message


def test_the_prefixes_are_arqs() -> None:
    assert arq.constants.in_progress_key_prefix == arqformat.IN_PROGRESS_PREFIX
    assert arq.constants.result_key_prefix == arqformat.RESULT_PREFIX
    assert KEYS.arq_result("j") == arq.constants.result_key_prefix + KEYS.arq_job_id("j")
    assert KEYS.arq_in_progress("j") == arq.constants.in_progress_key_prefix + KEYS.arq_job_id("j")


async def test_arqs_job_api_follows_a_job_through_its_life(r: aioredis.Redis) -> None:
    now = int(time.time() * 1000)
    assert await job("j1", r).status() is JobStatus.not_found
    await r.zadd(QUEUE, {KEYS.arq_job_id("j1"): now - 1})
    assert await job("j1", r).status() is JobStatus.queued
    await r.zadd(QUEUE, {KEYS.arq_job_id("j1"): now + 60_000})
    assert await job("j1", r).status() is JobStatus.deferred
    await r.set(KEYS.arq_in_progress("j1"), "w1", px=3000)
    assert await job("j1", r).status() is JobStatus.in_progress
    await r.set(KEYS.arq_result("j1"), encoded("j1"))
    assert await job("j1", r).status() is JobStatus.complete
    assert await job("j1", r).result(timeout=1) == {"state": "succeeded", "result": 36, "error": None}
    assert await job("j1", r).info() is not None  # the job's definition, from its result
    info = await job("j1", r).result_info()
    assert info is not None
    assert (info.function, info.job_try, info.success, info.queue_name) == ("run_action", 2, True, QUEUE)
    assert info.kwargs == {"request": json.loads(REQUEST)}
    assert (info.enqueue_time.timestamp(), info.start_time.timestamp(), info.finish_time.timestamp()) == (1, 2, 3)


async def test_a_failure_reads_as_arqs_failure_without_a_traceback(r: aioredis.Redis) -> None:
    error = ErrorInfo(type="RuntimeError", message="boom", traceback="Traceback ...")
    raw = encoded("j2", "failed", error)
    result = deserialize_result(raw, deserializer=loads)
    assert result.success is False
    assert result.result == {"state": "failed", "result": None, "error": {"type": "RuntimeError", "message": "boom",
                                                                         "retryable": False}}  # fmt: skip


def test_the_final_record_round_trips_through_the_settle_scripts_splice() -> None:
    raw = encoded("j3")
    record = {"state": "succeeded", "seq": "2", "queue": QUEUE}
    spliced = raw[:-1] + b',"actionq":' + json.dumps(record).encode() + b"}"  # what settle.lua writes
    assert arqformat.decode_final(spliced) == {**record, "request": json.dumps(json.loads(REQUEST))}


@pytest.mark.parametrize("raw", [b"not json", b"{}", b'{"actionq": {}}', b'{"k": 1, "actionq": 2}', b"\x80\x04pickle"])
def test_foreign_data_is_not_a_final_record(raw: bytes) -> None:
    with pytest.raises(arqformat.FinalRecordError):
        arqformat.decode_final(raw)


def final(job_id: str, state: str, error: ErrorInfo | None = None) -> bytes:
    """An arq result with its final record, as the settle script writes it."""
    record: dict[str, str] = {"state": state, "seq": "2", "queue": QUEUE}
    if error is not None:
        record["error"] = error.model_dump_json()
    return encoded(job_id, state, error)[:-1] + b',"actionq":' + json.dumps(record).encode() + b"}"


async def test_with_actionqs_deserializer_arqs_result_returns_the_result_or_raises_the_failure(
    r: aioredis.Redis,
) -> None:
    def arq_job(job_id: str) -> Job:
        return Job(KEYS.arq_job_id(job_id), r, _queue_name=QUEUE, _deserializer=arqformat.deserialize)

    await r.set(KEYS.arq_result("ok"), final("ok", "succeeded"))
    assert await arq_job("ok").result(timeout=1) == 36
    boom = ErrorInfo(type="RuntimeError", message="boom", traceback="Traceback (most recent call last): ...")
    await r.set(KEYS.arq_result("bad"), final("bad", "failed", boom))
    with pytest.raises(PluginActionExecutionError, match="job bad: RuntimeError: boom") as raised:
        await arq_job("bad").result(timeout=1)
    assert raised.value.error == boom  # the final record's error, traceback and all
    info = await arq_job("bad").info()
    assert info is not None
    assert info.kwargs == {"request": json.loads(REQUEST)}
    # Without it: JSON gives arq no exception to raise, and pickle (arq's default) cannot read JSON.
    with pytest.raises(SerializationError):
        await Job(KEYS.arq_job_id("bad"), r, _queue_name=QUEUE, _deserializer=loads).result(timeout=1)
    with pytest.raises(DeserializationError):
        await Job(KEYS.arq_job_id("bad"), r, _queue_name=QUEUE).result(timeout=1)


@pytest.mark.parametrize(
    ("state", "error", "raised"),
    [
        ("timed_out", ErrorInfo(type="TimeoutError", message="ran past 1s"), PluginActionTimeoutError),
        ("cancelled", ErrorInfo(type="JobCancelledError", message="no longer needed"), JobCancelledError),
        ("failed", ErrorInfo(type="JobExpiredError", message="it never ran"), JobExpiredError),
        ("failed", None, PluginActionExecutionError),
    ],
)
def test_each_way_a_job_ends_becomes_the_exception_a_client_gets(
    state: str, error: ErrorInfo | None, raised: type[PluginActionExecutionError]
) -> None:
    result = deserialize_result(final("j4", state, error), deserializer=arqformat.deserialize)
    assert type(result.result) is raised
    assert result.result.job_id == "j4"
    assert result.result.error == (error or ErrorInfo(type="Unknown", message=f"job ended {state}"))


def test_data_that_is_not_actionqs_is_returned_as_it_is() -> None:
    foreign = {
        "t": 1,
        "f": "f",
        "a": [],
        "k": {},
        "et": 1,
        "s": False,
        "r": "unable to serialize result",
        "st": 1,
        "ft": 1,
    }
    assert arqformat.deserialize(json.dumps(foreign).encode()) == foreign
