"""Queue depths read from Redis at request time: ready, deferred and running jobs per queue, and the oldest wait.

A queue is a ZSET of arq job ids scored by when each entry falls due (epoch ms). Three kinds of
entry share it, told apart without reading any job record:

* **ready**: score <= now. Submitted and due (or a retry whose backoff ended, or a job whose
  worker died and whose lease has lapsed): the next take picks it up.
* **running**: score > now *and* its lease (``arq:in-progress:<ns>:<id>``) exists. A worker that
  takes a job keeps it in its queue with the score ``now + lease`` and renews both while it runs
  (``service/redis/lua/take.lua``), so a running entry's score is at most one lease ahead.
* **deferred**: score > now, no lease. Scheduled later (``defer_s``, ``at``), a retry waiting its
  backoff, or a job parked by a concurrency limit until a slot frees up.

The work is bounded whatever the queue holds: two ``ZCOUNT`` and one ``ZRANGEBYSCORE ... LIMIT 0
1`` per queue, then the leases of at most :data:`LEASE_SAMPLE` entries scored within
``2 x lease`` of now (the only ones that can be running: a lease ahead, with as much again for
the clocks of workers and gateway to differ), each with its score again: an entry that moved
between the two round trips (a hand-off given back, a job ended) counts where it went. Past that
many, ``running`` counts those checked and ``exact`` is false.

The queues are those the workers' heartbeats recorded (``Keys.registry_queues``) and those live
workers read now; never a ``SCAN`` of the keyspace.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from service.keys import Keys
from service.redis.connection import broker_errors

__all__ = ["LEASE_SAMPLE", "QueueDepth", "QueueName", "known_queues", "parse_queue", "queue_depths"]

# Entries whose lease is checked per queue and request: a pool running more jobs than this at once
# from one queue gets `exact: false` rather than a request that grows with the load.
LEASE_SAMPLE = 1000


@dataclass(frozen=True, slots=True)
class QueueName:
    """What a queue's key says: its lane, its plugin, and the host it is for (``None``: any host)."""

    key: str
    lane: str
    plugin: str
    host: str | None


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """One queue's jobs by state at ``now_ms`` (see the module docstring for what each number means)."""

    queue: QueueName
    ready: int
    deferred: int
    running: int
    oldest_ready_age_s: float | None
    exact: bool
    last_served_ms: int | None


def parse_queue(keys: Keys, key: str) -> QueueName:
    """The parts of a queue key ``<ns>:queue:<lane>:<plugin>[@<host>]`` (the inverse of :meth:`Keys.queue`)."""
    lane, _, rest = key.removeprefix(keys.queue_prefix()).partition(":")
    plugin, at, host = rest.partition("@")
    return QueueName(key=key, lane=lane, plugin=plugin, host=host if at else None)


def _text(raw: bytes | str) -> str:
    return raw.decode(errors="replace") if isinstance(raw, bytes) else raw


async def known_queues(redis: Redis, keys: Keys, live: Iterable[str]) -> dict[str, int | None]:
    """Every queue a worker served lately (-> its last heartbeat, ms) plus the ``live`` ones read now."""
    with broker_errors("listing the served queues"):
        served = await redis.zrange(keys.registry_queues(), 0, -1, withscores=True)
    found: dict[str, int | None] = {}
    for name, score in served:  # on Redis Cluster a queue's sets (one per partition) are one queue
        queue = keys.logical_queue(_text(name))
        found[queue] = max(int(score), found.get(queue) or 0)
    for name in live:
        found.setdefault(name, None)
    return dict(sorted(found.items()))


@dataclass(frozen=True, slots=True)
class _Raw:
    """One queue's replies: ready and later counts, the oldest ready score, the entries that may be
    running (each as its sorted set and member)."""

    ready: int
    later: int
    oldest_score: float | None
    window: list[tuple[str, bytes]]


def _sum(raws: Sequence[_Raw]) -> _Raw:
    """The counts of one queue's sets as one."""
    if len(raws) == 1:
        return raws[0]
    oldest = [raw.oldest_score for raw in raws if raw.oldest_score is not None]
    return _Raw(
        ready=sum(raw.ready for raw in raws),
        later=sum(raw.later for raw in raws),
        oldest_score=min(oldest, default=None),
        window=[entry for raw in raws for entry in raw.window],
    )


async def _counts(redis: Redis, queues: Sequence[str], now: int, window: int) -> list[_Raw]:
    """Per queue: ready count, later count, the oldest ready entry, the entries that may be running."""
    async with redis.pipeline(transaction=False) as pipe:
        for queue in queues:
            pipe.zcount(queue, "-inf", now)
            pipe.zcount(queue, f"({now}", "+inf")
            pipe.zrangebyscore(queue, "-inf", now, start=0, num=1, withscores=True)
            pipe.zrangebyscore(queue, f"({now}", now + window, start=0, num=LEASE_SAMPLE + 1)
        with broker_errors("reading queue depths"):
            replies = await pipe.execute()
    raws = []
    for queue, i in zip(queues, range(0, len(replies), 4), strict=True):
        ready, later, oldest, candidates = replies[i : i + 4]
        entries = [(queue, member) for member in candidates]
        raws.append(_Raw(int(ready), int(later), float(oldest[0][1]) if oldest else None, entries))
    return raws


@dataclass(frozen=True, slots=True)
class _Checked:
    """What one queue's sampled entries were at the second look: running, due now, or gone."""

    running: int = 0
    due: int = 0
    gone: int = 0


async def _leased(
    redis: Redis, keys: Keys, samples: Sequence[Sequence[tuple[str, str, bytes]]], now: int
) -> list[_Checked]:
    """Each queue's sampled entries (set, job id, member) looked at again: those holding a lease and
    still scored ahead (running), those scored due by now (given back since the first look: a
    hand-off its worker could not run, say) and those gone from their set (ended since)."""
    async with redis.pipeline(transaction=False) as pipe:
        for entries in samples:
            for queue_set, job_id, member in entries:
                pipe.exists(keys.arq_in_progress(job_id))
                pipe.zscore(queue_set, member)
        with broker_errors("reading job leases"):
            found = await pipe.execute() if any(samples) else []
    checked, at = [], 0
    for entries in samples:
        running = due = gone = 0
        replies = found[at : at + 2 * len(entries)]
        for leased, score in zip(replies[::2], replies[1::2], strict=True):
            if score is None:
                gone += 1
            elif float(score) <= now:
                due += 1
            elif leased:
                running += 1
        checked.append(_Checked(running, due, gone))
        at += 2 * len(entries)
    return checked


def _sampled(keys: Keys, window: Sequence[tuple[str, bytes]]) -> list[tuple[str, str, bytes]]:
    """The entries of ``window`` (set, member) with their job ids, less entries that are not this
    namespace's arq job ids (never written by actionq: a hand-written entry is skipped, as the take
    script's callers skip it)."""
    sampled = []
    for queue_set, member in window:
        try:
            sampled.append((queue_set, keys.job_id_from_arq(_text(member)), member))
        except ValueError:
            continue
    return sampled


async def queue_depths(
    redis: Redis, keys: Keys, queues: dict[str, int | None], *, now_ms: int, lease_ms: int
) -> list[QueueDepth]:
    """The depth of each of ``queues`` (key -> last served ms) at ``now_ms``, two round trips in all.

    The second round trip looks again at the entries that may be running: one that moved meanwhile
    (given back, ended) is counted where it went, never as deferred. On Redis Cluster a queue is
    one sorted set per partition: their counts are added up.
    """
    names = list(queues)
    sets = [keys.queue_sets(name) for name in names]
    flat = await _counts(redis, [queue_set for group in sets for queue_set in group], now_ms, 2 * lease_ms)
    counts, at = [], 0
    for group in sets:
        counts.append(_sum(flat[at : at + len(group)]))
        at += len(group)
    checks = await _leased(redis, keys, [_sampled(keys, raw.window[:LEASE_SAMPLE]) for raw in counts], now_ms)
    return [
        _depth(keys, name, raw, check, now_ms, queues[name])
        for name, raw, check in zip(names, counts, checks, strict=True)
    ]


def _depth(keys: Keys, name: str, raw: _Raw, check: _Checked, now_ms: int, served_ms: int | None) -> QueueDepth:
    oldest = raw.oldest_score if raw.oldest_score is not None or not check.due else float(now_ms)
    return QueueDepth(
        queue=parse_queue(keys, name), ready=raw.ready + check.due,
        deferred=raw.later - check.running - check.due - check.gone, running=check.running,
        oldest_ready_age_s=None if oldest is None else max(0.0, (now_ms - oldest) / 1000),
        exact=len(raw.window) <= LEASE_SAMPLE, last_served_ms=served_ms,
    )  # fmt: skip
