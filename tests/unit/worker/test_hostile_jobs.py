"""Malformed job data, unencodable results and lapsed claims fail that job (or write nothing), never the worker.

The executor runs with a real plugin loader on fakeredis; jobs are written straight into Redis
the way a hostile or broken producer would, then taken by the take script.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from service.client.client import JobClient
from service.errors import MalformedJobError, RecordUnreadableError
from service.events.models import Event
from service.keys import Keys
from service.models import JobOptions, JobRequest, JobState, now_ms
from service.plugins.loader import PluginLoader
from service.settings import Settings
from service.worker.executor import Executor
from service.worker.take import Claims, TakenJob

ROOT = Path(__file__).resolve().parents[3]
REQUEST = JobRequest(plugin="hostile", action="fail").model_dump_json()


@dataclass
class Rig:
    client: JobClient
    executor: Executor
    events: list[Event]

    @property
    def keys(self) -> Keys:
        return self.client.keys

    @property
    def redis(self) -> aioredis.Redis:
        return self.client.redis

    def queue(self) -> str:
        return self.keys.queue("hostile")

    async def take(self, worker: str = "w-test", at: int | None = None) -> list[TakenJob]:
        claims = Claims(self.redis, self.keys, worker_id=worker, lease_s=3)
        return (await claims.take([self.queue()], at or now_ms(), limit=10)).jobs

    async def write(self, job_id: str, **fields: Any) -> None:
        """A job written straight into Redis: its record (``fields`` over sane ones) and queue entry."""
        record = {"state": "queued", "request": REQUEST, "queue": self.queue(), "attempt": 0, "seq": 0}
        record |= {"enqueued_at_ms": now_ms(), "scheduled_at_ms": now_ms()}
        record |= fields
        await self.redis.hset(self.keys.job(job_id), mapping={k: v for k, v in record.items() if v is not None})  # type: ignore[misc]
        await self.redis.zadd(self.queue(), {self.keys.arq_job_id(job_id): now_ms() - 1})


@pytest_asyncio.fixture
async def rig(fake_redis: aioredis.Redis) -> AsyncIterator[Rig]:
    settings = Settings(redis_url="redis://fake", namespace="hj", cancel_grace_s=0.1, max_payload_bytes=4096)
    loader = PluginLoader(enable_timeout_s=5)
    await loader.load_all([("hostile", ROOT / "tests" / "fixtures" / "plugins" / "hostile")])
    client = JobClient(fake_redis, settings, owns_redis=False)
    events: list[Event] = []
    executor = Executor(loader=loader, redis=fake_redis, keys=client.keys, settings=settings, worker_id="w-test",
                        notify=events.append)  # fmt: skip
    yield Rig(client, executor, events)
    await loader.unload_all()
    await client.close()


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"enqueued_at_ms": "abc"}, 'enqueued_at_ms: "abc" is not an integer'),
        ({"attempt": "x"}, 'attempt: "x" is not an integer'),
        ({"seq": "NaN"}, 'seq: "NaN" is not an integer'),
        ({"expires_at_ms": "1e3"}, 'expires_at_ms: "1e3" is not an integer'),
        ({"attempt": "0x10"}, 'attempt: "0x10" is not an integer'),
        ({"state": "bogus"}, 'state: "bogus" is not a job state'),
    ],
)
async def test_a_malformed_record_fails_its_job_with_the_reason(rig: Rig, fields: dict[str, Any], named: str) -> None:
    await rig.write("bad", **fields)
    [taken] = await rig.take()
    assert taken.status == "malformed"
    assert named in taken.problem
    outcome = await rig.executor.run(taken)
    assert outcome is not None
    assert outcome.state is JobState.FAILED
    record = await rig.client.job("bad").record()  # the final record reads back
    assert record.state is JobState.FAILED
    assert record.error is not None
    assert (record.error.type, named in record.error.message) == ("MalformedJobError", True)
    with pytest.raises(MalformedJobError, match=r"not an integer|not a job state"):
        await rig.client.job("bad").result(timeout=1)
    letter = await rig.client.dead.get("bad")
    assert letter.error is not None
    assert named in letter.error.message
    assert await rig.redis.zcard(rig.queue()) == 0


async def test_a_record_without_a_request_fails_and_reads_back_as_unreadable(rig: Rig) -> None:
    await rig.write("noreq", request=None)
    [taken] = await rig.take()
    assert (taken.status, taken.problem) == ("malformed", "request: missing")
    await rig.executor.run(taken)
    with pytest.raises(RecordUnreadableError, match="request"):  # no request to show: it says so
        await rig.client.job("noreq").result(timeout=1)
    letter = await rig.client.dead.get("noreq")
    assert letter.request is None
    assert letter.error is not None
    assert letter.error.message == "request: missing"


@pytest.mark.parametrize(
    ("request_raw", "named"),
    [
        (b"\x80\x04\x95pickle bytes", "not a valid job request"),
        (b'{"plugin": 1, "action": "fail"}', "plugin"),
        (b'{"plugin": "hostile", "action": "fail", "params": {}, "options": {}, "extra": 1}', "extra"),
        (json.dumps({"plugin": "hostile", "action": "fail", "params": {"x": "y" * 5000}}).encode(), "payload limit"),
    ],
)
async def test_a_request_that_cannot_run_fails_its_job_and_is_dead_lettered(
    rig: Rig, request_raw: bytes, named: str
) -> None:
    await rig.write("req", request=request_raw)
    [taken] = await rig.take()
    assert taken.status == "run"  # the take script cannot read requests: the executor does
    outcome = await rig.executor.run(taken)
    assert outcome is not None
    assert outcome.error is not None
    assert (outcome.state, outcome.error.type) == (JobState.FAILED, "MalformedJobError")
    assert named in outcome.error.message
    letter = await rig.client.dead.get("req")
    assert letter.request is None  # unreadable: kept as null, the error says why
    assert [e.kind for e in rig.events].count("job_received") == 1


async def test_an_unencodable_result_fails_the_job_once(rig: Rig) -> None:
    request = JobRequest(plugin="hostile", action="deep_result", options=JobOptions(retry={"max_attempts": 3}))
    handle = await rig.client.submit_request(request)
    [taken] = await rig.take()
    outcome = await rig.executor.run(taken)
    assert outcome is not None
    assert outcome.state is JobState.FAILED  # not retried: it would fail the same way again
    assert outcome.error is not None
    assert "nested too deeply" in outcome.error.message
    assert (await handle.record()).state is JobState.FAILED


async def test_an_attempt_whose_claim_lapsed_writes_no_dead_letter_and_sends_no_events(rig: Rig) -> None:
    """w-test's attempt fails after w-other took the job over: only w-other's attempt may settle it."""
    handle = await rig.client.submit_request(JobRequest(plugin="hostile", action="fail"))
    [first] = await rig.take("w-test")
    await rig.redis.delete(rig.keys.arq_in_progress(handle.job_id))  # w-test stalled past its lease
    [second] = await rig.take("w-other", at=now_ms() + 3_500)
    assert (first.attempt, second.attempt) == (1, 2)
    outcome = await rig.executor.run(first)
    assert outcome is not None
    assert outcome.state is JobState.FAILED  # the attempt itself failed...
    record = await handle.record()
    assert (record.state, record.worker, record.attempt) == (JobState.RUNNING, "w-other", 2)  # ...nothing kept
    assert not await rig.redis.exists(rig.keys.dead_letter(handle.job_id))
    ends = [e.kind for e in rig.events if e.kind in ("job_failed", "job_dead_lettered", "job_retrying")]
    assert ends == []
