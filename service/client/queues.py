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
the clocks of workers and gateway to differ). Past that many, ``running`` counts those checked
and ``exact`` is false.

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
    """One queue's replies: ready and later counts, the oldest ready score, the entries that may be running."""

    ready: int
    later: int
    oldest_score: float | None
    window: list[bytes]


def _sum(raws: Sequence[_Raw]) -> _Raw:
    """The counts of one queue's sets as one."""
    if len(raws) == 1:
        return raws[0]
    oldest = [raw.oldest_score for raw in raws if raw.oldest_score is not None]
    return _Raw(
        ready=sum(raw.ready for raw in raws),
        later=sum(raw.later for raw in raws),
        oldest_score=min(oldest, default=None),
        window=[member for raw in raws for member in raw.window],
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
    for i in range(0, len(replies), 4):
        ready, later, oldest, candidates = replies[i : i + 4]
        raws.append(_Raw(int(ready), int(later), float(oldest[0][1]) if oldest else None, list(candidates)))
    return raws


async def _leased(redis: Redis, keys: Keys, candidates: Sequence[Sequence[str]]) -> list[int]:
    """How many of each queue's ``candidates`` (job ids) hold a lease."""
    async with redis.pipeline(transaction=False) as pipe:
        for members in candidates:
            for job_id in members:
                pipe.exists(keys.arq_in_progress(job_id))
        with broker_errors("reading job leases"):
            found = await pipe.execute() if any(candidates) else []
    counts, at = [], 0
    for members in candidates:
        counts.append(sum(int(flag) for flag in found[at : at + len(members)]))
        at += len(members)
    return counts


def _job_ids(keys: Keys, members: Sequence[bytes]) -> list[str]:
    """The job ids of ``members``, less entries that are not this namespace's arq job ids (never
    written by actionq: a hand-written entry is skipped, as the take script's callers skip it)."""
    ids = []
    for member in members:
        try:
            ids.append(keys.job_id_from_arq(_text(member)))
        except ValueError:
            continue
    return ids


async def queue_depths(
    redis: Redis, keys: Keys, queues: dict[str, int | None], *, now_ms: int, lease_ms: int
) -> list[QueueDepth]:
    """The depth of each of ``queues`` (key -> last served ms) at ``now_ms``, two round trips in all.

    On Redis Cluster a queue is one sorted set per partition: their counts are added up.
    """
    names = list(queues)
    sets = [keys.queue_sets(name) for name in names]
    flat = await _counts(redis, [queue_set for group in sets for queue_set in group], now_ms, 2 * lease_ms)
    counts, at = [], 0
    for group in sets:
        counts.append(_sum(flat[at : at + len(group)]))
        at += len(group)
    samples = [_job_ids(keys, raw.window[:LEASE_SAMPLE]) for raw in counts]
    running = await _leased(redis, keys, samples)
    return [
        QueueDepth(
            queue=parse_queue(keys, name), ready=raw.ready, deferred=raw.later - busy, running=busy,
            oldest_ready_age_s=None if raw.oldest_score is None else max(0.0, (now_ms - raw.oldest_score) / 1000),
            exact=len(raw.window) <= LEASE_SAMPLE, last_served_ms=queues[name],
        )
        for name, raw, busy in zip(names, counts, running, strict=True)
    ]  # fmt: skip
