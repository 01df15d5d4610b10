"""The overview's numbers: jobs by state, queues, throughput, failure rate and run times of the last hour.

Every number is bounded work, whatever Redis holds: the queue depths are the API's own
(:func:`service.gateway.queues.queues`, two round trips per queue), and the last hour is read
backwards from the events stream, at most :data:`~.recent.MAX_EVENTS` events of any kind
(:mod:`.recent`) — when the cap is reached before the hour's start, the counts are a floor and
the page says so. Wait time (scheduled -> first start) is on no event, only on the job's record
(``scheduled_at_ms``, the first attempt's ``started_at_ms``): it is read from the records of the
newest :data:`WAIT_SAMPLE` first starts (``job_started`` with attempt 1) of the window — one
round trip each, concurrently — and the page says it is a sample of that many.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from dataclasses import dataclass, field

from service.client.client import JobClient
from service.errors import JobNotFoundError
from service.events.models import EventKind
from service.gateway.dashboard.recent import MAX_EVENTS, newest_events
from service.models import JobRecord, now_ms

__all__ = ["WAIT_SAMPLE", "WINDOW_S", "LastHour", "last_hour", "percentile", "wait_ms"]

WINDOW_S = 3600
WAIT_SAMPLE = 200  # records read per overview for the wait times: ~200 round trips, pipelined by the pool
_END_KINDS = {EventKind.JOB_SUCCEEDED, EventKind.JOB_FAILED, EventKind.JOB_TIMED_OUT, EventKind.JOB_CANCELLED}


def percentile(values: list[int], fraction: float) -> int | None:
    """The nearest-rank percentile of ``values`` (None when there are none)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered) - 1e-9) - 1))  # 1e-9: 0.95*100 > 95
    return ordered[rank]


@dataclass
class LastHour:
    """The job ends of the window: counts by kind, run times, and whether the read was capped."""

    ends: Counter[str] = field(default_factory=Counter)
    run_ms: list[int] = field(default_factory=list)
    capped: bool = False
    started: list[str] = field(default_factory=list)  # the newest first starts, at most WAIT_SAMPLE
    wait_ms: list[int] = field(default_factory=list)  # their waits, from their records

    @property
    def finished(self) -> int:
        """Jobs that ended in the window."""
        return sum(self.ends.values())

    @property
    def per_minute(self) -> float:
        """Ended jobs per minute over the window."""
        return self.finished / (WINDOW_S / 60)

    @property
    def failure_rate(self) -> float | None:
        """Failed and timed-out ends over all ends (None with no end)."""
        if not self.finished:
            return None
        return (self.ends[EventKind.JOB_FAILED] + self.ends[EventKind.JOB_TIMED_OUT]) / self.finished

    def run_p(self, fraction: float) -> int | None:
        """A percentile of the run times (ms) of the jobs that succeeded or failed in the window."""
        return percentile(self.run_ms, fraction)

    def wait_p(self, fraction: float) -> int | None:
        """A percentile of the waits (ms) of the sampled first starts."""
        return percentile(self.wait_ms, fraction)


def wait_ms(record: JobRecord) -> int | None:
    """From when the job could first run (``scheduled_at_ms``: enqueue or its defer) to its first start."""
    first = record.attempts[0].started_at_ms if record.attempts else record.started_at_ms
    if first is None or (not record.attempts and record.attempt != 1):
        return None
    return max(0, first - record.scheduled_at_ms)


async def _waits(client: JobClient, job_ids: list[str]) -> list[int]:
    async def one(job_id: str) -> int | None:
        try:
            return wait_ms(await client.job(job_id).record())
        except JobNotFoundError:
            return None  # expired with its result TTL

    found = await asyncio.gather(*(one(job_id) for job_id in job_ids))
    return [w for w in found if w is not None]


async def last_hour(client: JobClient, cap: int = MAX_EVENTS) -> LastHour:
    """The job ends among the events of the last :data:`WINDOW_S` seconds (at most about ``cap`` events read)."""
    since_ms = now_ms() - WINDOW_S * 1000
    recent = await newest_events(client, since_ms=since_ms, cap=cap)
    found = LastHour(capped=recent.capped)
    for event in recent.events:
        kind, ts_ms = event.get("kind"), event.get("ts_ms")
        if not isinstance(ts_ms, int) or ts_ms < since_ms:
            continue  # the entry's id bounds the read; an event may be older than its batch
        _first_start(found, event)
        if kind not in _END_KINDS:
            continue
        found.ends[str(kind)] += 1
        duration = event.get("duration_ms")
        if isinstance(duration, int):
            found.run_ms.append(duration)
    found.wait_ms = await _waits(client, found.started)
    return found


def _first_start(found: LastHour, event: dict[str, object]) -> None:
    job_id = event.get("job_id")
    first = event.get("kind") == EventKind.JOB_STARTED and event.get("attempt") == 1
    if first and isinstance(job_id, str) and len(found.started) < WAIT_SAMPLE:
        found.started.append(job_id)
