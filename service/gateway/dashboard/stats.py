"""The overview's numbers: jobs by state, queues, throughput, failure rate and run times of the last hour.

Every number is bounded work, whatever Redis holds: the queue depths are the API's own
(:func:`service.gateway.queues.queues`, two round trips per queue), and the last hour is read
backwards from the events stream, at most :data:`~.recent.MAX_EVENTS` events of any kind
(:mod:`.recent`) — when the cap is reached before the hour's start, the counts are a floor and
the page says so. Wait time is not shown: a job-end event
carries its run time (``duration_ms``), not its time in the queue, and reading each job's record
would not be bounded.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from service.client.client import JobClient
from service.events.models import EventKind
from service.gateway.dashboard.recent import MAX_EVENTS, newest_events
from service.models import now_ms

__all__ = ["WINDOW_S", "LastHour", "last_hour", "percentile"]

WINDOW_S = 3600
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


async def last_hour(client: JobClient, cap: int = MAX_EVENTS) -> LastHour:
    """The job ends among the events of the last :data:`WINDOW_S` seconds (at most about ``cap`` events read)."""
    since_ms = now_ms() - WINDOW_S * 1000
    recent = await newest_events(client, since_ms=since_ms, cap=cap)
    found = LastHour(capped=recent.capped)
    for event in recent.events:
        kind, ts_ms = event.get("kind"), event.get("ts_ms")
        if kind not in _END_KINDS or not isinstance(ts_ms, int) or ts_ms < since_ms:
            continue  # the entry's id bounds the read; an event may be older than its batch
        found.ends[str(kind)] += 1
        duration = event.get("duration_ms")
        if isinstance(duration, int):
            found.run_ms.append(duration)
    return found
