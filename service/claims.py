"""Taking jobs: claim and start a batch in one script, hold them with short leases.

arq claims a job with one WATCH/MULTI transaction (six commands), then reads its body and bumps
its try counter in a second transaction, and our record said "running" in a third round trip.
Here one Lua script (:data:`_TAKE`) does all of it for every ready job a worker has room for,
across all of its queues, in one round trip:

* it reads each queue's head in score order (``ZRANGEBYSCORE``), up to the free slots;
* for each ready job it sets arq's in-progress key (``SET NX PX lease``, so arq's ``Job.status()``
  still says ``in_progress``) and reads the record (``HMGET``);
* it starts the attempt in the record (``HSET`` running, attempt + 1, worker, seq + 1) and
  publishes the state message if someone follows the job, exactly like a state transition;
* and it moves the taken jobs' scores to ``now + lease`` (one ``ZADD XX`` per queue): a running
  job stays in its queue, as in arq, but out of the ready window, so no worker reads it again.

The lease is that score plus the in-progress key, renewed together every ``lease_s / 3`` while the
job runs (:meth:`Claims.renew_forever`). A worker killed with SIGKILL stops renewing: its jobs'
scores fall due within ``lease_s`` and the next poll of any worker takes them again (at-least-once;
a job's checkpoint lets it resume). An event loop blocked for longer than the lease by a
misbehaving ``async`` action can lose its claims the same way.

A ready job whose record is gone (expired) or already ended leaves its queue in the same script;
one past its queue-wait limit (``expires_at_ms``) is handed back as ``expired`` for the worker to
record as failed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.keys import ARQ_IN_PROGRESS_PREFIX, Keys, arq_in_progress_key
from service.models import now_ms

__all__ = ["IDLE_TTL_S", "Claims", "TakenJob", "handed_job"]

log = structlog.get_logger("actionq.worker")

# KEYS: the queues. ARGV: now ms, how many to take at most, lease ms, worker id, the key prefixes
# (arq job id, in-progress key, record, job channel), then the listing: how this worker is listed
# ('none', 'idle' or 'wake'), the listing TTL ms (0: do not list), the idle and queue key prefixes,
# whether the listing is fresh ('1'), whether nothing runs here ('1'), then the queues whose listing
# a submit used up. Returns {next due score or -1, how it is listed now, then per job: {arq id,
# queue index, status, attempt, request, cancel reason, enqueued at}}.
_TAKE = """
local now, limit, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local worker, id_prefix, lease_prefix, rec_prefix, ch_prefix = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local terminal = {succeeded=true, failed=true, timed_out=true, cancelled=true}
local out, due, taken = {-1, 0}, -1, 0
local function start(q, qi, aid)
  local jid = string.sub(aid, #id_prefix + 1)
  local rec = rec_prefix .. jid
  local r = redis.call('HMGET', rec, 'state', 'attempt', 'seq', 'cancel_requested', 'request', 'expires_at_ms',
    'enqueued_at_ms', 'watched')
  if not r[1] or terminal[r[1]] then
    redis.call('ZREM', q, aid)
    redis.call('DEL', lease_prefix .. aid)
    return {aid, qi, r[1] and 'ended' or 'missing', 0, '', '', 0}
  end
  local attempt, seq = tonumber(r[2] or '0') + 1, tonumber(r[3] or '0') + 1
  if r[6] and tonumber(r[6]) < now then return {aid, qi, 'expired', attempt - 1, r[5] or '', '', r[7] or 0} end
  redis.call('HSET', rec, 'state', 'running', 'attempt', attempt, 'worker', worker, 'started_at_ms', ARGV[1],
    'seq', seq)
  if r[8] then  -- someone follows the job (see service.store._READ)
    redis.call('PUBLISH', ch_prefix .. jid, '{"type":"state","job_id":"' .. jid ..
      '","state":"running","attempt":' .. attempt .. ',"seq":' .. seq .. '}')
  end
  return {aid, qi, 'run', attempt, r[5] or '', r[4] or '', r[7] or 0}
end
for qi, q in ipairs(KEYS) do
  if taken >= limit then break end
  local entries = redis.call('ZRANGEBYSCORE', q, '-inf', '+inf', 'WITHSCORES', 'LIMIT', 0, limit - taken + 1)
  local bumped = {}
  for i = 1, #entries, 2 do
    local aid, score = entries[i], tonumber(entries[i + 1])
    if score > now then
      if due < 0 or score < due then due = score end
      break
    end
    if taken >= limit then break end
    if redis.call('SET', lease_prefix .. aid, worker, 'NX', 'PX', lease) then
      local job = start(q, qi, aid)
      out[#out + 1] = job
      if job[3] ~= 'missing' and job[3] ~= 'ended' then
        taken = taken + 1
        bumped[#bumped + 1] = now + lease
        bumped[#bumped + 1] = aid
      end
    else
      -- A lapsed claim whose in-progress key outlives its score by a few ms: look again then.
      local left = redis.call('PTTL', lease_prefix .. aid)
      if left > 0 and (due < 0 or now + left < due) then due = now + left end
    end
  end
  for i = 1, #bumped, 1000 do  -- in slices: Lua's unpack stops at a few thousand values
    redis.call('ZADD', q, 'XX', unpack(bumped, i, math.min(i + 999, #bumped)))
  end
end
-- Listing: a worker with free slots that took nothing, or not enough to fill them, waits for work
-- and lists itself in each of its queues' idle sets, so that a submit finds it: as itself when
-- nothing runs here (the submit hands it the job), as '~' .. itself when jobs run (the submit wakes
-- it, once: a busy worker takes new work in batches). A full worker is not listed: it looks again
-- when a slot frees up. Renewed when stale, when the kind changes, and where a submit used it up.
local cur, ttl, idle_prefix, queue_prefix = ARGV[9], tonumber(ARGV[10]), ARGV[11], ARGV[12]
local want = 'none'
if ttl > 0 and taken < limit then want = (taken == 0 and ARGV[14] == '1') and 'idle' or 'wake' end
local renew, used = want ~= cur or ARGV[13] ~= '1', {}
for i = 15, #ARGV do used[ARGV[i]] = true end
local function member(kind) return kind == 'idle' and worker or '~' .. worker end
if renew or #ARGV >= 15 then
  for _, q in ipairs(KEYS) do
    local set = idle_prefix .. string.sub(q, #queue_prefix + 1)
    if want == 'none' then
      if cur ~= 'none' then redis.call('ZREM', set, worker, '~' .. worker) end
    elseif renew or used[q] then
      if cur == 'none' then redis.call('ZREMRANGEBYSCORE', set, '-inf', now) end
      if cur ~= 'none' and cur ~= want then redis.call('ZREM', set, member(cur)) end
      redis.call('ZADD', set, now + ttl, member(want))
      redis.call('PEXPIRE', set, ttl)
    end
  end
end
out[1], out[2] = due, want
return out
"""

# How long an idle worker's listing lasts unless renewed (renewed at half of it): a worker killed
# while idle can be handed jobs for this long; they run again elsewhere after the lease.
IDLE_TTL_S = 10.0

TakeStatus = Literal["run", "expired", "missing", "ended"]
Listing = Literal["none", "idle", "wake"]


@dataclass(frozen=True, slots=True)
class TakenJob:
    """A job the take script handed to this worker (``status == "run"``: its attempt has started)."""

    job_id: str
    arq_job_id: str
    queue: str
    status: TakeStatus
    attempt: int
    request: bytes
    """The request JSON from the record (parsed by the executor, which records a malformed one)."""
    cancel_reason: str = ""
    """Set when a cancel arrived before the start: the job is cancelled at once."""
    enqueued_at_ms: int = 0


@dataclass(frozen=True, slots=True)
class Take:
    """What one take returned: the jobs, and when the earliest deferred job falls due (epoch ms)."""

    jobs: list[TakenJob]
    next_due_ms: int | None


class Claims:
    """The leases one worker holds: taken by :meth:`take`, renewed, released when a job is settled."""

    def __init__(self, redis: Redis, keys: Keys, *, worker_id: str, lease_s: float) -> None:
        self.redis = redis
        self.keys = keys
        self.worker_id = worker_id
        self.lease_ms = int(lease_s * 1000)
        self._held: dict[str, str] = {}  # arq job id -> queue
        self._take = redis.register_script(_TAKE)
        self._listing: Listing = "none"  # how this worker is listed in its queues' idle sets
        self._listed_at = 0  # when the listing was last renewed everywhere
        self._used: set[str] = set()  # queues whose listing a submit used up (a handoff, a wake-up)

    @property
    def held(self) -> frozenset[str]:
        """The arq job ids this worker holds a lease on."""
        return frozenset(self._held)

    async def take(
        self, queues: list[str], now_ms: int, limit: int, *, advertise: bool = False, idle: bool = False
    ) -> Take:
        """Claim and start up to ``limit`` ready jobs from ``queues`` (earlier queues first).

        ``advertise``: then list this worker where submits find it, if slots are still free: as
        idle (``idle``: nothing runs here, and nothing was taken) or as one to wake.
        """
        keys = self.keys
        args: list[str | int] = [now_ms, max(limit, 0), self.lease_ms, self.worker_id, keys.arq_job_id_prefix()]
        args += [ARQ_IN_PROGRESS_PREFIX, keys.job_prefix(), keys.job_channel_prefix()]
        used = self._used & set(queues)
        fresh = now_ms - self._listed_at < IDLE_TTL_S * 500
        ttl_ms = int(IDLE_TTL_S * 1000) if advertise else 0
        args += [self._listing, ttl_ms, keys.idle_prefix(), keys.queue_prefix(), int(fresh), int(idle), *used]
        reply = await self._take(keys=queues, args=args)
        due = int(float(reply[0]))
        listing: Listing = _text(reply[1])  # type: ignore[assignment]
        if listing != self._listing or not fresh:
            self._listing, self._listed_at = listing, now_ms
        self._used -= used
        jobs = [self._taken(queues, *job) for job in reply[2:]]
        return Take(jobs, due if due >= 0 else None)

    def _taken(self, queues: list[str], *reply: bytes | int) -> TakenJob:
        aid, qi, status, attempt, request, cancel, enqueued = reply
        arq_id = _text(aid)
        job = TakenJob(
            job_id=self.keys.job_id_from_arq(arq_id),
            arq_job_id=arq_id,
            queue=queues[int(qi) - 1],
            status=_text(status),  # type: ignore[arg-type]
            attempt=int(attempt),
            request=request if isinstance(request, bytes) else str(request).encode(),
            cancel_reason=_text(cancel),
            enqueued_at_ms=int(enqueued),
        )
        if job.status in ("run", "expired"):
            self._held[arq_id] = job.queue
        return job

    @property
    def listed(self) -> bool:
        """True while this worker is listed as idle everywhere (a handoff uses a listing up)."""
        return self._listing == "idle" and not self._used and now_ms() - self._listed_at < IDLE_TTL_S * 500

    def renew_listing_in_s(self) -> float:
        """Seconds until the listing goes stale and a take must renew it (``inf``: not listed)."""
        if self._listing == "none":
            return float("inf")
        return max(0.0, (self._listed_at + IDLE_TTL_S * 500 - now_ms()) / 1000)

    def handed(self, job: TakenJob) -> None:
        """A submit handed ``job`` to this worker (already claimed): hold its lease.

        The submit also took this worker off that queue's idle set: the next take lists it again.
        """
        self._held[job.arq_job_id] = job.queue
        self._used.add(job.queue)

    def woken(self, queue: str) -> None:
        """A submit to ``queue`` woke this worker (and took it off that queue's idle set)."""
        self._used.add(queue)

    async def unregister(self, queues: list[str]) -> None:
        """Leave the idle sets (pausing, draining, stopping): submits no longer find this worker."""
        if self._listing == "none":
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.zrem(self.keys.idle_workers(queue), self.worker_id, "~" + self.worker_id)
            await pipe.execute()
        self._listing = "none"

    def release(self, arq_job_id: str) -> None:
        """Forget a lease (the job's settle deleted its key and took it out of the ready window)."""
        self._held.pop(arq_job_id, None)

    async def renew(self) -> None:
        """Extend every held lease: the in-progress keys and the queue scores, in one round trip."""
        if not self._held:
            return
        deadline = now_ms() + self.lease_ms
        by_queue: dict[str, list[str]] = defaultdict(list)
        async with self.redis.pipeline(transaction=False) as pipe:
            for arq_id, queue in self._held.items():
                pipe.pexpire(arq_in_progress_key(arq_id), self.lease_ms)
                by_queue[queue].append(arq_id)
            for queue, ids in by_queue.items():
                pipe.zadd(queue, dict.fromkeys(ids, deadline), xx=True)
            await pipe.execute()

    async def renew_forever(self) -> None:
        """:meth:`renew` each third of the lease, until cancelled."""
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            try:
                await self.renew()
            except (RedisError, OSError) as exc:
                log.warning("lease_renewal_failed", error=str(exc), jobs=len(self._held))

    async def stop(self, renewer: asyncio.Task[None]) -> None:
        """Stop renewing (the worker is exiting)."""
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer


def _text(raw: bytes | str | int) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def handed_job(payload: bytes, keys: Keys) -> TakenJob:
    """The job a submit handed to this worker: ``arq id \\n queue \\n enqueued ms \\n request JSON``."""
    arq_id, queue, enqueued, request = payload.split(b"\n", 3)
    job_id = keys.job_id_from_arq(arq_id.decode())
    return TakenJob(job_id, arq_id.decode(), queue.decode(), "run", 1, request, enqueued_at_ms=int(enqueued))
