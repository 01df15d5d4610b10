"""Taking jobs: claim and start a batch in one script, hold them with short leases.

arq claims a job with one WATCH/MULTI transaction (six commands), then reads its body and bumps
its try counter in a second transaction, and our record said "running" in a third round trip.
Here the take script (``service/redis/lua/take.lua``) does it for as many ready jobs as the
worker has free slots, across all of its queues, in one round trip. It declares every key it
touches, so it takes only the jobs the worker names, with their record and lease keys:

* the candidates are the jobs the last take saw ready at its queues' heads (its *hints*), and
  the job a submit woke this worker for; a take that finds ready jobs it did not know of, with
  slots still free, calls again at once with them;
* for each candidate the script checks that it is still ready (``ZMSCORE``), sets arq's
  in-progress key (``SET NX PX lease``, so arq's ``Job.status()`` still says ``in_progress``),
  reads the record (``HMGET``), starts the attempt (``HSET`` running, attempt + 1, worker,
  seq + 1) and publishes the state message if someone follows the job;
* it moves the taken jobs' scores to ``now + lease`` (one ``ZADD XX`` per queue): a running job
  stays in its queue, as in arq, but out of the ready window, so no worker reads it again;
* and it keeps the worker's listing in its queues' idle sets, where submits find it.

The lease is that score plus the in-progress key, renewed together every ``lease_s / 3`` while the
job runs (:meth:`Claims.renew_forever`). A worker killed with SIGKILL stops renewing: its jobs'
scores fall due within ``lease_s`` and the next poll of any worker takes them again (at-least-once;
a job's checkpoint lets it resume). An event loop blocked for longer than the lease by a
misbehaving ``async`` action can lose its claims the same way.

A ready job whose record is gone (expired) or already ended leaves its queue in the same script;
one past its queue-wait limit (``expires_at_ms``) or malformed is claimed but not started, for the
worker to record as failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from service.keys import Keys
from service.models import now_ms
from service.redis import scripts
from service.tasks import stop_tasks

__all__ = ["IDLE_TTL_S", "Claims", "Take", "TakenJob", "handed_job"]

log = structlog.get_logger("actionq.worker")

# Ready jobs a take reports per queue beyond the slots it could not fill: a full worker learns of a
# few to take when slots free up (a take frees a few at a time). Each costs the script an entry read.
_AHEAD = 8

# How long an idle worker's listing lasts unless renewed (renewed at half of it): a worker killed
# while idle can be handed jobs for this long; they run again elsewhere after the lease.
IDLE_TTL_S = 10.0

TakeStatus = Literal["run", "expired", "malformed", "missing", "ended"]
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
    problem: str = ""
    """``status == "malformed"``: what is wrong with the record (the job fails with it)."""
    bad_fields: tuple[str, ...] = ()
    """``status == "malformed"``: the record's integer fields that are not integers."""
    signature: str = ""
    """The request's signature from the record (checked by the executor when the worker has ``signing_keys``)."""

    @property
    def claimed(self) -> bool:
        """True if this worker holds the job's lease (it must run or settle it)."""
        return self.status in ("run", "expired", "malformed")


@dataclass(frozen=True, slots=True)
class Take:
    """What one take returned: the jobs, and when the earliest deferred job falls due (epoch ms).

    ``failed``: on Redis Cluster, the error of a partition's call that failed while others claimed
    jobs: those are here all the same (they must run, or their leases would be renewed for ever
    with nothing running them); the caller raises it once they are launched.
    """

    jobs: list[TakenJob]
    next_due_ms: int | None
    failed: BaseException | None = None


@dataclass(frozen=True, slots=True)
class _Candidate:
    """A ready job the look found: the take script tries to claim it."""

    queue_index: int  # 1-based, as in the script
    arq_job_id: str
    job_id: str


class Claims:
    """The leases one worker holds: taken by :meth:`take`, renewed, released when a job is settled."""

    def __init__(self, redis: Redis, keys: Keys, *, worker_id: str, lease_s: float) -> None:
        self.redis = redis
        self.keys = keys
        self.worker_id = worker_id
        self.lease_ms = int(lease_s * 1000)
        self._held: dict[str, tuple[str, str, float]] = {}  # arq job id -> (job id, queue, held since, monotonic)
        self._take = scripts.register(redis, "take")
        self._listing: Listing = "none"  # how this worker is listed in its queues' idle sets
        self._listed_at = 0  # when the listing was last renewed everywhere
        self._renewed = time.monotonic()  # when the last renewal that went through was sent
        self._used: set[str] = set()  # queues whose listing a submit used up (a handoff, a wake-up)
        self._hints: dict[str, dict[str, str]] = {}  # queue -> {arq job id: job id} seen ready, to try next
        self.ahead = _AHEAD
        """Ready jobs a take reports per queue beyond its free slots: the next take's candidates."""
        self.also_renew: Callable[[Pipeline], None] | None = None
        """Adds to every renewal's pipeline: the held jobs' concurrency-limit slots
        (:mod:`service.worker.limits`), so that they are renewed, or lapse, with their leases."""

    @property
    def held(self) -> frozenset[str]:
        """The arq job ids this worker holds a lease on."""
        return frozenset(self._held)

    async def take(
        self, queues: list[str], now_ms: int, limit: int, *, advertise: bool = False, idle: bool = False
    ) -> Take:
        """Claim and start up to ``limit`` ready jobs from ``queues`` (earlier queues first).

        ``advertise``: then list this worker where submits find it, if slots are still free: as
        idle (``idle``: nothing runs here, and nothing was taken) or as one to wake. The jobs named
        by the last take's hints (and by wake-ups) are tried first; if ready jobs it did not know
        of remain and slots are free, a second call takes them at once.
        """
        limit = max(limit, 0)
        groups = self._by_slot(queues)
        first = await self._round(groups, now_ms, limit, advertise=advertise, idle=idle)
        left = limit - sum(1 for job in first.jobs if job.claimed)
        if first.failed is not None or left <= 0 or not any(self._candidates(group, left) for group in groups):
            return first
        second = await self._round(groups, now_ms, left, advertise=advertise, idle=idle and not first.jobs)
        return _merged([first, second])

    def _by_slot(self, queues: list[str]) -> list[list[str]]:
        """``queues`` in groups that one script call may name together: one group on one Redis, one
        per partition on a cluster (each group keeps the order of ``queues``)."""
        if not self.keys.partitions:
            return [queues]
        groups: dict[int, list[str]] = {}
        for queue in queues:
            groups.setdefault(self.keys.slot(queue), []).append(queue)
        return list(groups.values())

    async def _round(self, groups: list[list[str]], now_ms: int, limit: int, *, advertise: bool, idle: bool) -> Take:
        """One call per group, at once. Only named candidates can be claimed, so the free slots are
        shared out over the groups' candidates in order (a group with none only lists the worker and
        reports its ready jobs): together the calls never claim more than ``limit``."""
        if len(groups) == 1:
            return await self._call(groups[0], now_ms, limit, advertise=advertise, idle=idle)
        room, shares = limit, []
        for group in groups:
            share = min(limit, len(self._candidates(group, limit))) if limit else 0
            shares.append(share)
            limit -= share
        # Each call lists the worker, and reports ready jobs, by every free slot (room), not by its share.
        calls = [
            self._call(group, now_ms, share, room=room, advertise=advertise, idle=idle)
            for group, share in zip(groups, shares, strict=True)
        ]
        # Each call's claims stand whatever the others do: a failed one must not hide them.
        replies = await asyncio.gather(*calls, return_exceptions=True)
        merged = _merged([reply for reply in replies if isinstance(reply, Take)])
        failed = next((reply for reply in replies if isinstance(reply, BaseException)), None)
        return merged if failed is None else Take(merged.jobs, merged.next_due_ms, failed)

    def _candidates(self, queues: list[str], limit: int) -> list[_Candidate]:
        """The hinted jobs of ``queues`` to try, in queue order (at most ``2 * limit``)."""
        found: list[_Candidate] = []
        for index, queue in enumerate(queues, 1):
            for arq_id, job_id in self._hints.get(queue, {}).items():
                if len(found) >= 2 * limit:
                    return found
                found.append(_Candidate(index, arq_id, job_id))
        return found

    async def _call(
        self, queues: list[str], now_ms: int, limit: int, *, room: int | None = None, advertise: bool, idle: bool
    ) -> Take:
        """One call of the take script: the hinted candidates, the listing, and the next hints."""
        candidates = self._candidates(queues, limit) if limit else []
        used = [i for i, queue in enumerate(queues, 1) if queue in self._used]
        fresh = now_ms - self._listed_at < IDLE_TTL_S * 500
        listing = {
            "current": self._listing,
            "ttl_ms": int(IDLE_TTL_S * 1000) if advertise else 0,
            "fresh": fresh,
            "idle": idle,
            "used": used,
        }
        header = {
            "now": str(now_ms),
            "limit": limit,
            "room": limit if room is None else room,
            "ahead": self.ahead,
            "lease_ms": self.lease_ms,
            "worker": self.worker_id,
            "queues": len(queues),
            "job_channel": self.keys.job_channel_prefix(self.keys.set_tag(queues[0]) if queues else ""),
            "listing": listing,
        }
        keys = [*queues, *(self.keys.idle_workers(queue) for queue in queues)]
        for c in candidates:
            keys += [self.keys.job(c.job_id), self.keys.arq_in_progress(c.job_id)]
        args: list[str | int] = [json.dumps(header, separators=(",", ":"))]
        for c in candidates:
            args += [c.queue_index, c.arq_job_id, c.job_id]
        reply = await self._take(keys=keys, args=args)
        due = int(float(reply[0]))
        now_listed: Listing = _text(reply[1])  # type: ignore[assignment]
        if now_listed != self._listing or not fresh:
            self._listing, self._listed_at = now_listed, now_ms
        self._used.difference_update(queues[i - 1] for i in used)
        await self._keep_hints(queues, reply[2])
        by_arq_id = {c.arq_job_id: c.job_id for c in candidates}
        jobs = [self._taken(queues, by_arq_id, *job) for job in reply[3:]]
        return Take(jobs, due if due >= 0 else None)

    async def _keep_hints(self, queues: list[str], flat: list[Any]) -> None:
        """The ready jobs the script saw become the next candidates; foreign members leave the queue."""
        for queue in queues:
            self._hints[queue] = {}
        foreign: list[tuple[str, bytes]] = []
        for qi, member in zip(flat[::2], flat[1::2], strict=True):
            queue = queues[int(qi) - 1]
            try:
                arq_id = member.decode()
                self._hints[queue][arq_id] = self.keys.job_id_from_arq(arq_id)
            except ValueError:
                foreign.append((queue, member))
        if foreign:
            await self._remove_foreign(foreign)

    async def _remove_foreign(self, members: list[tuple[str, bytes]]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for queue, member in members:
                reason = "not a job id of this namespace"
                log.error("queue_member_removed", queue=queue, member=member[:200], reason=reason)
                pipe.zrem(queue, member)
            await pipe.execute()

    def _taken(self, queues: list[str], by_arq_id: dict[str, str], *reply: Any) -> TakenJob:
        aid, qi, status, attempt, request, cancel, enqueued, problem, bad, signature = reply
        arq_id = _text(aid)
        job = TakenJob(
            job_id=by_arq_id[arq_id],
            arq_job_id=arq_id,
            queue=queues[int(qi) - 1],
            status=_text(status),  # type: ignore[arg-type]
            attempt=int(attempt),
            request=request if isinstance(request, bytes) else str(request).encode(),
            cancel_reason=_text(cancel),
            enqueued_at_ms=int(enqueued),
            problem=_text(problem),
            bad_fields=tuple(_text(name) for name in bad),
            signature=_text(signature),
        )
        if job.claimed:
            self._held[arq_id] = (job.job_id, job.queue, time.monotonic())
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

        The submit also listed this worker in that queue's idle set as one to wake (busy with
        room), in place of its idle listing: the next take sets its listing right everywhere.
        """
        self._held[job.arq_job_id] = (job.job_id, job.queue, time.monotonic())
        self._used.add(job.queue)

    def is_fresh(self, job: TakenJob) -> bool:
        """True if a handed ``job`` is younger than half its lease: its claim cannot have lapsed yet.

        The age is this host's clock against the submitting host's (the hand-off carries the submit's
        time): hosts whose clocks differ by more than half the lease get every hand-off checked.
        """
        return now_ms() - job.enqueued_at_ms < self.lease_ms / 2

    async def still_ours(self, job: TakenJob) -> bool:
        """True if this worker still holds ``job``'s claim: its lease, and the record's running attempt.

        A hand-off that arrives late (this worker's connection stalled past the lease) may be for a
        job another worker has taken since, or already ran: it must not run here.
        """
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(self.keys.arq_in_progress(job.job_id))
            pipe.hmget(self.keys.job(job.job_id), ["state", "worker", "attempt"])
            lease, (state, worker, attempt) = await pipe.execute()
        mine = self.worker_id.encode()
        return lease == mine and (state, worker, attempt) == (b"running", mine, str(job.attempt).encode())

    def woken(self, queue: str, arq_job_id: str = "") -> None:
        """A submit to ``queue`` woke this worker (and took it off that queue's idle set).

        ``arq_job_id``: the job it submitted, tried first by the next take.
        """
        self._used.add(queue)
        if arq_job_id:
            with contextlib.suppress(ValueError):  # not of this namespace: not a candidate
                self._hints.setdefault(queue, {})[arq_job_id] = self.keys.job_id_from_arq(arq_job_id)

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
            for arq_id, (job_id, queue, _) in self._held.items():
                pipe.pexpire(self.keys.arq_in_progress(job_id), self.lease_ms)
                by_queue[queue].append(arq_id)
            for queue, ids in by_queue.items():
                pipe.zadd(queue, dict.fromkeys(ids, deadline), xx=True)
            if self.also_renew is not None:
                self.also_renew(pipe)
            await pipe.execute()

    async def renew_forever(self, on_lapsed: Callable[[list[str]], None] | None = None) -> None:
        """:meth:`renew` each third of the lease, until cancelled.

        A lease runs from when Redis set it, which is after this worker sent the take or the
        renewal that set it. When renewals fail (Redis unreachable, or a partition where each one
        times out) for two thirds of a lease since then, the lease is about to lapse and another
        worker to take the job: ``on_lapsed`` gets those jobs' arq ids, once, so that their
        attempts stop here first instead of running twice at once. (An action that ignores
        cancellation — a thread, a blocking call — runs on until it returns: its outcome is then
        not kept, but its side effects were made twice.)
        """
        self._renewed = time.monotonic()  # when the last renewal that went through was sent
        watchdog = asyncio.create_task(self._watch(on_lapsed), name="actionq-lease-watchdog")
        try:
            while True:
                await asyncio.sleep(self.lease_ms / 3000)
                sent = time.monotonic()
                try:
                    # Bounded: over a partition (packets dropped, the connection still open) a
                    # renewal would hang until the socket timeout, well past the lease.
                    async with asyncio.timeout(self.lease_ms / 3000):
                        await self.renew()
                except (RedisError, OSError, TimeoutError) as exc:
                    log.warning("lease_renewal_failed", error=str(exc) or type(exc).__name__, jobs=len(self._held))
                else:
                    self._renewed = sent
        finally:
            watchdog.cancel()

    async def _watch(self, on_lapsed: Callable[[list[str]], None] | None) -> None:
        """Every twelfth of a lease, give up the leases about to lapse (see :meth:`renew_forever`)."""
        while True:
            await asyncio.sleep(self.lease_ms / 12_000)
            self._lapsing(on_lapsed)

    def _lapsing(self, on_lapsed: Callable[[list[str]], None] | None) -> None:
        """Give up the leases last set two thirds of a lease ago or more."""
        cutoff = time.monotonic() - self.lease_ms * 2 / 3000
        lapsed = [arq_id for arq_id, (_, _, since) in self._held.items() if max(since, self._renewed) <= cutoff]
        if lapsed and on_lapsed is not None:
            log.error("leases_lapsed", jobs=len(lapsed), reason="Redis unreachable: their leases are about to lapse")
            on_lapsed(lapsed)
            for arq_id in lapsed:
                self._held.pop(arq_id, None)

    async def stop(self, renewer: asyncio.Task[None]) -> None:
        """Stop renewing (the worker is exiting)."""
        await stop_tasks(renewer)


def _merged(takes: list[Take]) -> Take:
    """Several takes as one: their jobs, and the earliest due time."""
    due = min((t.next_due_ms for t in takes if t.next_due_ms is not None), default=None)
    failed = next((t.failed for t in takes if t.failed is not None), None)
    return Take([job for t in takes for job in t.jobs], due, failed)


def _text(raw: bytes | str | int) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def handed_job(payload: bytes, keys: Keys) -> TakenJob:
    """The job a submit handed to this worker: ``arq id \\n queue \\n enqueued ms \\n signature \\n request JSON``."""
    arq_id, queue, enqueued, signature, request = payload.split(b"\n", 4)
    job_id = keys.job_id_from_arq(arq_id.decode())
    return TakenJob(
        job_id, arq_id.decode(), queue.decode(), "run", 1, request, enqueued_at_ms=int(enqueued),
        signature=signature.decode(),
    )  # fmt: skip
