"""The newest events of the events stream, read backwards with a hard cap on the work.

The overview and the jobs list need "what happened lately", on a stream that holds up to
``events_max_len`` events (100,000 by default), most of them progress updates. Reading it with
``replay:N`` and a kind filter would scan back until ``N`` events of those kinds turned up, which
on a stream of progress updates is the whole stream. This reads ``XREVRANGE`` pages from the
newest entry down to a time bound, and stops after :data:`MAX_EVENTS` events whatever they are,
saying whether it stopped early. Events stay parsed JSON objects (their ``kind``, ``ts_ms``,
``job_id``, ``duration_ms`` are all that is read): validating 20,000 of them into models would
cost more than the page's budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from service.client.client import JobClient
from service.events.bridge import FIELD, LEGACY_FIELD
from service.redis.connection import broker_errors
from service.wire import WireError, loads

__all__ = ["MAX_EVENTS", "Recent", "newest_events"]

MAX_EVENTS = 20_000  # events decoded per page load at most: ~30 ms of json on a small machine
_PAGE = 50  # entries per XREVRANGE (a worker batches up to 500 events in one entry)


@dataclass
class Recent:
    """Events newest first, and ``capped``: the cap was reached before the time bound or the stream's start."""

    events: list[dict[str, Any]] = field(default_factory=list)
    capped: bool = False


def _items(fields: dict[bytes, bytes]) -> list[Any]:
    try:
        if FIELD in fields:
            batch = loads(fields[FIELD])
            return batch if isinstance(batch, list) else []
        if LEGACY_FIELD in fields:
            return [loads(fields[LEGACY_FIELD])]
    except WireError:
        pass  # foreign data: skipped, as the events reader skips it
    return []


async def newest_events(client: JobClient, *, since_ms: int | None = None, cap: int = MAX_EVENTS) -> Recent:
    """The events written since ``since_ms`` (all kept ones if None), newest first, at most about ``cap``."""
    key = client.keys.events()
    found = Recent()
    upper, lower = "+", f"{since_ms}-0" if since_ms is not None else "-"
    while len(found.events) < cap:
        with broker_errors(f"reading {key}"):
            page = await client.redis.xrevrange(key, max=upper, min=lower, count=_PAGE)
        for _, fields in page:
            found.events.extend(e for e in reversed(_items(fields)) if isinstance(e, dict))
        if len(page) < _PAGE:
            return found
        last = page[-1][0]
        upper = "(" + (last.decode() if isinstance(last, bytes) else str(last))  # exclusive: the next older entry
    found.capped = True
    return found
