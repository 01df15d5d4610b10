"""The job record in Redis: created atomically with the queue entry, changed by state transitions.

The record is a hash (``Keys.job``) so that a transition touches only its own fields. Every
transition increments ``seq`` and publishes a state message on the job's channel in the same
Lua script, so a subscriber that reads the record can tell exactly which messages it has seen.
This module creates records, cancels and records progress; a worker starts attempts in its take
script (:mod:`service.claims`) and ends them in its settle script (:mod:`service.settle`).

Job channel messages (JSON)::

    {"type": "state", "job_id": "...", "state": "running", "attempt": 1, "seq": 2}
    {"type": "progress", "job_id": "...", "progress": {ProgressUpdate}, "seq": 3}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from service.batching import Batcher
from service.broker import broker_errors
from service.errors import BrokerError
from service.keys import Keys
from service.models import AttemptInfo, ErrorInfo, JobRecord, JobRequest, JobState, ProgressUpdate
from service.wire import WireError, loads

__all__ = ["CreateResult", "JobStore", "state_message_prefix"]

# Atomic submit: the record and the queue entry appear together or not at all, and an existing
# job (same idempotency key: its record, or its final record in arq's result) is returned instead
# of enqueuing twice. ``check`` is '0' for an id the client generated (a fresh uuid4 cannot exist:
# the check is skipped, two commands saved). The record has no TTL while its job is live (it is in
# its queue); it gets one when the job ends.
# A job that is ready now and finds an idle worker for its queue is handed to it at once: claimed
# and started here, exactly as the worker's take script would (:mod:`service.claims`), and sent
# on the worker's channel, which saves the worker a round trip. A busy worker with room, listed as
# '~' .. its id, is woken instead (once; it lists itself again after its next take). With nobody
# listed, every worker of the queue is busy or full and looks again when it can: nothing is sent.
# A handed job's "running" message is published only if the submit asked for ``watch`` (nobody
# else can follow a job that did not exist yet).
# Several submits in one call (concurrent ones are coalesced, see :meth:`JobStore.create`): KEYS, six
# per job: record, queue, idle workers, in-progress key, arq result, job channel. ARGV: the wake
# channel and the worker channel prefix, then nine per job: request, now, score, arq id, check,
# watch, job id, queue-wait limit ('' for none), lease ms (of a job handed over). Returns per job
# {1} (queued), {1, worker} (handed over) or {0, existing request, its state, its final record}
# (the id is taken).
_CREATE = """
local wake, worker_prefix = ARGV[1], ARGV[2]
local woke = {}
local function create(k, a)
  local rec, q, idle, claim, done_key, channel = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], KEYS[k + 5],
    KEYS[k + 6]
  local request, now, score, aid, check, watched, jid, expires, lease = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3],
    ARGV[a + 4], ARGV[a + 5], ARGV[a + 6], ARGV[a + 7], ARGV[a + 8], ARGV[a + 9]
  if check == '1' then
    local r = redis.call('HMGET', rec, 'request', 'state')
    if r[1] then return {0, r[1], r[2] or '', ''} end
    local done = redis.call('GET', done_key)
    if done then return {0, '', '', done} end
  end
  local extra = {}
  if expires ~= '' then extra[#extra + 1] = 'expires_at_ms'; extra[#extra + 1] = expires end
  if watched == '1' then extra[#extra + 1] = 'watched'; extra[#extra + 1] = '1' end
  local worker, ready = nil, tonumber(score) <= tonumber(now)
  if ready then worker = redis.call('ZRANGEBYSCORE', idle, now, '+inf', 'LIMIT', 0, 1)[1] end
  if worker and string.sub(worker, 1, 1) ~= '~' then
    redis.call('ZREM', idle, worker)
    redis.call('HSET', rec, 'state', 'running', 'request', request, 'queue', q, 'attempt', 1, 'enqueued_at_ms', now,
      'scheduled_at_ms', score, 'worker', worker, 'started_at_ms', now, 'seq', 1, unpack(extra))
    redis.call('SET', claim, worker, 'PX', lease)
    redis.call('ZADD', q, tonumber(now) + tonumber(lease), aid)
    if watched == '1' then
      redis.call('PUBLISH', channel, '{"type":"state","job_id":"' .. jid .. '","state":"running","attempt":1,"seq":1}')
    end
    redis.call('PUBLISH', worker_prefix .. worker, aid .. '\\n' .. q .. '\\n' .. now .. '\\n' .. request)
    return {1, worker}
  end
  redis.call('HSET', rec, 'state', 'queued', 'request', request, 'queue', q, 'attempt', 0, 'enqueued_at_ms', now,
    'scheduled_at_ms', score, 'seq', 0, unpack(extra))
  redis.call('ZADD', q, score, aid)
  if worker then  -- a busy worker with room: woken once, it takes this job (and what follows) in a batch
    redis.call('ZREM', idle, worker)
    redis.call('PUBLISH', worker_prefix .. string.sub(worker, 2), q)
  elseif not ready and not woke[q] then  -- every worker of the queue looks again, to wait for the right time
    woke[q] = true
    redis.call('PUBLISH', wake, q)
  end
  return {1}
end
local out = {}
for j = 0, #KEYS / 6 - 1 do out[j + 1] = create(j * 6, 2 + j * 9) end
return out
"""

_BATCH = 200  # submits per call at most

_TERMINAL_LUA = "local terminal = {succeeded=true, failed=true, timed_out=true, cancelled=true}\n"

# Read a record: the hash of a live job, else the final record kept in arq's result. With ARGV[1]
# '1' the job is marked as followed (``watched``): from then on its state changes and progress are
# published on its channel (a follower subscribes first, then reads here: nothing is missed).
# KEYS: record, arq result. Returns {hash fields (flat), final record or false}.
_READ = """
local h = redis.call('HGETALL', KEYS[1])
if #h > 0 then
  if ARGV[1] == '1' then redis.call('HSET', KEYS[1], 'watched', '1') end
  return {h, false}
end
return {h, redis.call('GET', KEYS[2])}
"""

# Cancel: a waiting job (queued, or retrying after a backoff) is cancelled here and now and
# leaves its queue; a running one gets the durable flag and a push to every worker.
# KEYS: record, job channel, cancel channel, checkpoint, arq result.
_CANCEL = (
    _TERMINAL_LUA
    + """
local r = redis.call('HMGET', KEYS[1], 'state', 'watched')
local current = r[1]
if not current then
  local done = redis.call('GET', KEYS[5])
  if not done then return {'missing', ''} end
  local ok, final = pcall(cjson.decode, done)
  local state = ok and type(final) == 'table' and type(final.actionq) == 'table' and final.actionq.state
  return {'finished', type(state) == 'string' and state or ''}
end
if terminal[current] then return {'finished', current} end
if current == 'running' then
  redis.call('HSET', KEYS[1], 'cancel_requested', ARGV[1])
  redis.call('PUBLISH', KEYS[3], ARGV[6])
  return {'running', current}
end
redis.call('ZREM', redis.call('HGET', KEYS[1], 'queue'), ARGV[4])
redis.call('DEL', KEYS[4])
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HSET', KEYS[1], 'state', 'cancelled', 'cancel_requested', ARGV[1], 'finished_at_ms', ARGV[2],
  'error', ARGV[5])
-- The job's own result TTL when it set one, else the service default.
local ok, request = pcall(cjson.decode, redis.call('HGET', KEYS[1], 'request'))
local ttl = ok and type(request) == 'table' and type(request.options) == 'table' and request.options.result_ttl_s
if type(ttl) ~= 'number' then ttl = tonumber(ARGV[3]) end
redis.call('EXPIRE', KEYS[1], ttl)
if r[2] then redis.call('PUBLISH', KEYS[2], ARGV[7] .. seq .. '}') end
return {'cancelled', current}
"""
)

# A progress update: only while the job runs (a late update never follows the final state);
# published only if someone follows the job.
_PROGRESS = """
local r = redis.call('HMGET', KEYS[1], 'state', 'watched')
if r[1] ~= 'running' then return -1 end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HSET', KEYS[1], 'progress', ARGV[1])
if r[2] then redis.call('PUBLISH', KEYS[2], ARGV[2] .. seq .. '}') end
return seq
"""

_INT_FIELDS = (
    "attempt",
    "enqueued_at_ms",
    "scheduled_at_ms",
    "expires_at_ms",
    "started_at_ms",
    "finished_at_ms",
    "seq",
)


class CreateResult:
    """Outcome of :meth:`JobStore.create`: created, or the existing job's request and state."""

    def __init__(self, created: bool, existing_request: JobRequest | None, existing_state: JobState | None) -> None:
        self.created = created
        self.existing_request = existing_request
        self.existing_state = existing_state


@dataclass(frozen=True, slots=True)
class _NewJob:
    """One submit's keys and arguments for :data:`_CREATE`."""

    job_id: str
    keys: tuple[str, ...]
    args: tuple[Any, ...]


class JobStore:
    """Reads and writes job records for one namespace (shared by producers and workers)."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._create = redis.register_script(_CREATE)
        self._creator: Batcher[_NewJob, list[Any]] = Batcher(
            self._create_batch, max_batch=_BATCH, name="actionq-submit"
        )
        self._progress = redis.register_script(_PROGRESS)
        self._cancel = redis.register_script(_CANCEL)
        self._read = redis.register_script(_READ)

    async def create(
        self,
        job_id: str,
        request_json: str,
        *,
        queue: str,
        now_ms: int,
        score_ms: int,
        expires_at_ms: int | None = None,
        fresh_id: bool = False,
        lease_ms: int = 3000,
        watch: bool = False,
    ) -> CreateResult:
        """Write the record and the queue entry atomically, unless the job id is taken.

        ``expires_at_ms``: the queue-wait limit; a worker that takes the job later fails it instead.
        ``fresh_id``: the id was just generated (a uuid4), so it cannot be taken; not checked.
        ``lease_ms``: the claim of a job handed straight to an idle worker (the workers' ``lease_s``).
        ``watch``: the job is followed from the start (its changes are published; see :meth:`get`).
        Concurrent calls share round trips: those made while one is in flight go out together next.
        """
        keys = self.keys
        job = _NewJob(
            job_id,
            keys=(
                keys.job(job_id),
                queue,
                keys.idle_workers(queue),
                keys.arq_in_progress(job_id),
                keys.arq_result(job_id),
                keys.job_channel(job_id),
            ),
            args=(
                request_json,
                now_ms,
                score_ms,
                keys.arq_job_id(job_id),
                "0" if fresh_id else "1",
                "1" if watch else "0",
                job_id,
                "" if expires_at_ms is None else expires_at_ms,
                lease_ms,
            ),
        )
        reply = await self._creator.submit(job)
        if int(reply[0]) == 1:
            return CreateResult(True, None, None)
        if reply[3]:  # the job ended: its final record is in arq's result
            final = parse_final(job_id, reply[3])
            return CreateResult(False, final.request, final.state)
        existing = JobRequest.model_validate_json(reply[1]) if reply[1] else None
        state = JobState(reply[2].decode()) if reply[2] else None
        return CreateResult(False, existing, state)

    async def _create_batch(self, jobs: list[_NewJob]) -> list[list[Any]]:
        keys: list[str] = []
        args: list[Any] = [self.keys.wake_channel(), self.keys.worker_channel_prefix()]
        for job in jobs:
            keys += job.keys
            args += job.args
        doing = f"submitting job {jobs[0].job_id}" if len(jobs) == 1 else f"submitting {len(jobs)} jobs"
        with broker_errors(doing):
            replies: list[list[Any]] = await self._create(keys=keys, args=args)
        return replies

    async def get(self, job_id: str, *, watch: bool = False) -> JobRecord | None:
        """The record of ``job_id`` (live or final), or ``None`` if there is none (never existed or expired).

        ``watch``: mark the job as followed, so that its changes are published on its channel
        from now on (subscribe to the channel first, then read with ``watch=True``).
        """
        with broker_errors(f"reading job {job_id}"):
            fields, final = await self._read(
                keys=[self.keys.job(job_id), self.keys.arq_result(job_id)], args=["1" if watch else "0"]
            )
        if fields:
            return parse_record(job_id, dict(zip(fields[::2], fields[1::2], strict=True)))
        return parse_final(job_id, final) if final else None

    async def cancel(self, job_id: str, *, reason: str, now_ms: int, ttl_s: int) -> tuple[str, str]:
        """Cancel ``job_id``: returns (what happened, the state it was in).

        What happened is ``cancelled`` (it was waiting: it will never run), ``running`` (the
        running worker was told; the outcome follows), ``finished`` (nothing changed) or
        ``missing`` (no record).
        """
        keys = self.keys
        error = ErrorInfo(type="JobCancelledError", message=f"cancelled before it started: {reason}")
        push = json.dumps({"job_id": job_id, "reason": reason})
        prefix = state_message_prefix(job_id, JobState.CANCELLED, 0)
        with broker_errors(f"cancelling job {job_id}"):
            what, state = await self._cancel(
                keys=[
                    keys.job(job_id),
                    keys.job_channel(job_id),
                    keys.cancel_channel(),
                    keys.checkpoint(job_id),
                    keys.arq_result(job_id),
                ],
                args=[reason, now_ms, ttl_s, keys.arq_job_id(job_id), error.model_dump_json(), push, prefix],
            )  # fmt: skip
        return what.decode(), state.decode()

    async def progress(self, job_id: str, update: ProgressUpdate) -> int:
        """Store ``update`` as the job's latest progress and publish it; -1 if the job is not running."""
        body = update.model_dump_json()
        prefix = f'{{"type":"progress","job_id":{json.dumps(job_id)},"progress":{body},"seq":'
        with broker_errors(f"recording progress of job {job_id}"):
            seq = await self._progress(keys=[self.keys.job(job_id), self.keys.job_channel(job_id)], args=[body, prefix])
        return int(seq)


def state_message_prefix(job_id: str, state: JobState, attempt: int) -> str:
    """A state message without its closing ``"seq": N}`` (the Lua script appends the seq)."""
    message = json.dumps({"type": "state", "job_id": job_id, "state": state.value, "attempt": attempt})
    return message[:-1] + ',"seq":'


def parse_record(job_id: str, raw: Mapping[bytes, bytes] | Mapping[str, str]) -> JobRecord:
    """Build a :class:`JobRecord` from the hash fields Redis returned."""
    data: dict[str, Any] = {"job_id": job_id}
    attempts = []
    for key, raw_value in raw.items():
        name = key.decode() if isinstance(key, bytes) else key
        value = raw_value.decode() if isinstance(raw_value, bytes) else raw_value
        if name.startswith("attempt:"):
            attempts.append(AttemptInfo.model_validate_json(value))
        elif name in _INT_FIELDS:
            data[name] = int(value)
        elif name == "request":
            data[name] = JobRequest.model_validate_json(value)
        elif name == "result":
            data[name] = _json_or_raw(value)
        elif name == "error":
            data[name] = ErrorInfo.model_validate_json(value)
        elif name == "progress":
            data[name] = ProgressUpdate.model_validate_json(value)
        elif name != "watched":
            data[name] = value
    data["attempts"] = sorted(attempts, key=lambda a: a.attempt)
    return JobRecord.model_validate(data)


def parse_final(job_id: str, raw: bytes) -> JobRecord:
    """The final record of an ended job, from arq's result (see :mod:`service.settle`)."""
    try:
        final = json.loads(raw)
        fields: dict[str, Any] = final["actionq"]
        fields["request"] = json.dumps(final["k"]["request"])
    except (ValueError, KeyError, TypeError) as exc:
        raise BrokerError(f"the final record of job {job_id} is unreadable: {exc}") from exc
    return parse_record(job_id, fields)


def _json_or_raw(value: str) -> Any:
    try:
        return loads(value)
    except WireError:
        return value
