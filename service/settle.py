"""Settling jobs: whatever ended, retries or goes back to its queue, written in one script per batch.

When an attempt is over, four things change together: the record (state, fields, seq) with its
state message on the job channel; arq's result key (so ``Job.result()`` works); the queue entry
(removed, or moved to the retry time); and the lease (arq's in-progress key, deleted). arq does the
last three in one MULTI/EXEC per job and our record took another round trip.

A job that ended keeps one key, not two: its final record goes into arq's result (one ``SET`` with
the result TTL, under ``"actionq"``) and the record hash is deleted, so the final write costs a read
and a write. :meth:`service.store.JobStore.get` reads either form. A job that goes back to its queue
(retry, requeue) keeps its hash, updated in place.

Here every settlement made while a batch is in flight waits for the next one: :class:`Settler`
buffers them (:class:`service.batching.Batcher`) and sends each batch as one ``EVALSHA`` of
:data:`_SETTLE` (one round trip and one ``ZREM`` per queue and one ``DEL``, however many jobs).
Under load that turns four round trips per job into a fraction of one; alone, a job's settlement
goes out at once (no timer, no added wait). The caller awaits its own settlement, so "settled"
means "written".

A record that ended meanwhile is left as it is (seq ``-2``), a missing one (it ended elsewhere, or
was deleted) is not recreated (seq ``-1``); either way the job leaves its queue. A settlement that
names its attempt (``owner``) and finds the record held by another one (this worker's lease lapsed,
say an event loop blocked for longer than the lease, and another worker took the job) changes
nothing (seq ``-3``): the attempt that runs now settles the job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from redis.asyncio import Redis

from service.batching import Batcher
from service.broker import broker_errors
from service.keys import Keys
from service.models import JobState
from service.store import state_message_prefix

__all__ = ["ARQ_FUNCTION", "Settlement", "Settler"]

# The one function name arq's results report (arq's ``Job.result()`` / ``Job.info()`` read it).
ARQ_FUNCTION = "run_action"
_BATCH = 500

# ARGV[1]: a JSON list of settlements, each {k: record, c: channel, m: message without its seq,
# s: state, f: [field, value, ...], t: record TTL s ("0": keep), q: queue, a: arq id, l: lease key,
# z: new queue score (retry / requeue; absent: leave the queue), r: arq result (a JSON object),
# rk: its key, rt: its TTL ms, d: other keys to delete, o: {worker id, attempt} of the attempt
# settling, if it must still be the record's}. Returns the new seq of each (-1 missing, -2 ended,
# -3 superseded: another attempt holds the job now, so its queue entry and lease are left alone).
# A job that ended (``r`` given) leaves its record hash: the final record goes into arq's result,
# under "actionq" (less its request, which arq's kwargs hold), and the hash is deleted.
# The state message goes out only if someone follows the job (the record's ``watched``).
_SETTLE = """
local terminal = {succeeded=true, failed=true, timed_out=true, cancelled=true}
local ops = cjson.decode(ARGV[1])
local seqs, gone, dels = {}, {}, {}
local function superseded(op, state, worker, attempt)
  return op.o and (state ~= 'running' or worker ~= op.o[1] or attempt ~= op.o[2])
end
local function final(op)
  local h = redis.call('HGETALL', op.k)
  if #h == 0 then return -1, nil end
  local rec = {}
  for j = 1, #h, 2 do rec[h[j]] = h[j + 1] end
  if terminal[rec.state] then return -2, nil end
  if superseded(op, rec.state, rec.worker, rec.attempt) then return -3, nil end
  local seq = tonumber(rec.seq or '0') + 1
  rec.state, rec.seq, rec.request = op.s, tostring(seq), nil
  for j = 1, #op.f, 2 do rec[op.f[j]] = op.f[j + 1] end
  redis.call('SET', op.rk, string.sub(op.r, 1, -2) .. ',"actionq":' .. cjson.encode(rec) .. '}', 'PX', op.rt)
  dels[#dels + 1] = op.k
  return seq, rec.watched
end
local function step(op)
  local r = redis.call('HMGET', op.k, 'state', 'seq', 'watched', 'worker', 'attempt')
  if not r[1] then return -1, nil end
  if terminal[r[1]] then return -2, nil end
  if superseded(op, r[1], r[4], r[5]) then return -3, nil end
  local seq = tonumber(r[2] or '0') + 1
  redis.call('HSET', op.k, 'state', op.s, 'seq', seq, unpack(op.f))
  if op.t ~= '0' then redis.call('EXPIRE', op.k, op.t) end
  return seq, r[3]
end
for i, op in ipairs(ops) do
  local seq, watched
  if op.r then seq, watched = final(op) else seq, watched = step(op) end
  if watched then redis.call('PUBLISH', op.c, op.m .. seq .. '}') end
  seqs[i] = seq
  if seq == -3 then
    -- another attempt runs: its queue entry, lease and checkpoint stay
  elseif op.z and seq > 0 then
    redis.call('ZADD', op.q, op.z, op.a)
  else
    gone[op.q] = gone[op.q] or {}
    gone[op.q][#gone[op.q] + 1] = op.a
  end
  if seq ~= -3 then
    dels[#dels + 1] = op.l
    for _, key in ipairs(op.d) do dels[#dels + 1] = key end
  end
end
for q, ids in pairs(gone) do redis.call('ZREM', q, unpack(ids)) end
if #dels > 0 then redis.call('DEL', unpack(dels)) end
return seqs
"""


@dataclass(frozen=True, slots=True)
class Settlement:
    """One job's settlement: its new state and fields, and what happens to its queue entry."""

    job_id: str
    queue: str
    state: JobState
    attempt: int
    fields: dict[str, str | int] = field(default_factory=dict)
    ttl_s: int = 0
    """Re-arm the record's expiry (a finished job keeps its record for its result TTL); 0: keep."""
    score_ms: int | None = None
    """Back in the queue at this score (retry, requeue); ``None``: the job leaves its queue."""
    arq_result: bytes | None = None
    """arq's result payload, kept for ``arq_result_ttl_ms``."""
    arq_result_ttl_ms: int = 0
    delete: tuple[str, ...] = ()
    """Other keys that go with this step (a finished job's checkpoint)."""
    owner: tuple[str, int] | None = None
    """(worker id, attempt) of the attempt settling: if the record is no longer that attempt's
    (its lease lapsed and another worker took the job), nothing is written (seq ``-3``)."""


class Settler:
    """Sends settlements in batches: one script call per batch, each caller awaiting its own."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._script = redis.register_script(_SETTLE)
        self._batcher: Batcher[str, int] = Batcher(self._send, max_batch=_BATCH, name="actionq-settle", same_turn=True)

    async def settle(self, settlement: Settlement) -> int:
        """Write ``settlement`` (now, or with the next batch); returns the record's new seq, or -1, -2, -3."""
        return await self._batcher.submit(self._encode(settlement))

    def _encode(self, s: Settlement) -> str:
        keys = self.keys
        arq_id = keys.arq_job_id(s.job_id)
        flat: list[str] = ["attempt", str(s.attempt)]
        for name, value in s.fields.items():
            flat += [name, str(value)]
        op: dict[str, object] = {
            "k": keys.job(s.job_id),
            "c": keys.job_channel(s.job_id),
            "m": state_message_prefix(s.job_id, s.state, s.attempt),
            "s": s.state.value,
            "f": flat,
            "t": str(s.ttl_s),
            "q": s.queue,
            "a": arq_id,
            "l": keys.arq_in_progress(s.job_id),
            "d": list(s.delete),
        }
        if s.score_ms is not None:
            op["z"] = str(s.score_ms)
        if s.owner is not None:
            op["o"] = [s.owner[0], str(s.owner[1])]
        if s.arq_result is not None:
            op.update(r=s.arq_result.decode(), rk=keys.arq_result(s.job_id), rt=str(s.arq_result_ttl_ms))
        return json.dumps(op, separators=(",", ":"))

    async def _send(self, ops: list[str]) -> list[int]:
        with broker_errors(f"settling {len(ops)} job(s)"):
            seqs = await self._script(keys=[], args=["[" + ",".join(ops) + "]"])
        return [int(seq) for seq in seqs]
