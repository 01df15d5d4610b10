"""Claims on jobs as short leases: taken in batches, renewed by the worker, lapsing when it dies.

arq's claim is one WATCH/MULTI transaction per job (six commands) and its in-progress lock lasts
the longest timeout + 10 s, so a crashed worker's job waits that long (arq#402). Here a claim is
arq's same in-progress key (so arq's ``Job`` API still reads it), taken for a batch of ready jobs
in one script — ``ZSCORE`` + ``SET NX PX`` per job, the atomicity WATCH gave — with a lease of
``lease_s``, renewed every ``lease_s / 3`` while the job runs. A worker killed with SIGKILL stops
renewing: its jobs' claims lapse within ``lease_s`` and another worker's next poll runs them again
(at-least-once; a job's checkpoint lets it resume). An event loop blocked for longer than the
lease by a misbehaving ``async`` action can lose its claims the same way.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.keys import arq_in_progress_key

__all__ = ["Claims"]

log = structlog.get_logger("actionq.worker")

# KEYS[1] the queue, KEYS[2..] the jobs' in-progress keys; ARGV[1] lease ms, ARGV[2] now ms,
# ARGV[3] how many to take at most, ARGV[4..] the job ids. Jobs already claimed (arq keeps a running
# job in its queue until it finishes) are skipped, not counted. Returns id, score pairs of those taken.
_CLAIM = """
local claimed, limit = {}, tonumber(ARGV[3])
for i = 2, #KEYS do
  if #claimed >= 2 * limit then break end
  local id = ARGV[i + 2]
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score and tonumber(score) <= tonumber(ARGV[2]) and redis.call('SET', KEYS[i], '1', 'NX', 'PX', ARGV[1]) then
    claimed[#claimed + 1] = id
    claimed[#claimed + 1] = score
  end
end
return claimed
"""


class Claims:
    """The leases one worker holds."""

    def __init__(self, redis: Redis, *, lease_s: float) -> None:
        self.redis = redis
        self.lease_ms = int(lease_s * 1000)
        self._held: set[str] = set()
        self._claim = redis.register_script(_CLAIM)

    @property
    def held(self) -> frozenset[str]:
        """The arq job ids this worker holds a lease on."""
        return frozenset(self._held)

    async def claim(self, queue: str, job_ids: list[str], now_ms: int, limit: int) -> list[tuple[str, int]]:
        """Lease up to ``limit`` of ``job_ids`` (ready in ``queue``) that nobody holds; (id, score) of each."""
        candidates = [j for j in job_ids if j not in self._held]  # ours are running: skip them here already
        if not candidates or limit <= 0:
            return []
        keys = [queue, *(arq_in_progress_key(job_id) for job_id in candidates)]
        reply = await self._claim(keys=keys, args=[self.lease_ms, now_ms, limit, *candidates])
        taken = [
            (raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id), int(float(score)))
            for raw_id, score in zip(reply[::2], reply[1::2], strict=True)
        ]
        self._held.update(job_id for job_id, _ in taken)
        return taken

    def release(self, job_id: str) -> None:
        """Forget a lease (its key is deleted by the job's finish)."""
        self._held.discard(job_id)

    async def renew_forever(self) -> None:
        """Extend every held lease each third of the lease, until cancelled."""
        interval = self.lease_ms / 3000
        while True:
            await asyncio.sleep(interval)
            held = list(self._held)
            if not held:
                continue
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for job_id in held:
                        pipe.pexpire(arq_in_progress_key(job_id), self.lease_ms)
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                log.warning("lease_renewal_failed", error=str(exc), jobs=len(held))

    async def stop(self, renewer: asyncio.Task[None]) -> None:
        """Stop renewing (the worker is exiting)."""
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer
