"""Reading the events stream back: :func:`read_events`, for clients, the CLI and the gateway.

:func:`read_events` reads the stream only (``XREAD BLOCK``, a push from Redis): the
stream is its own durable copy, so there is nothing to deduplicate between "replay" and "live".
It expands each entry into its events, in order; the event at index ``i`` (0-based) of entry
``<ms>-<seq>`` has the id ``"<ms>-<seq>.<i>"``. Entries written by an older worker (one event
per entry, field ``event``) still read, as index 0. Its cursor is always an explicit entry id,
and ``XREAD`` returns exactly the entries after it:

* ``since="now"``: the cursor is the newest id *at the start* (not ``$``, which each later
  ``XREAD`` would re-resolve, losing what arrived between two reads);
* ``since="<ms>-<seq>.<i>"`` (an event id): the events after that one — the rest of its entry,
  then later entries (resume from the last event you saw);
* ``since="<ms>-<seq>"`` (a stream id): the events of the entries after that whole entry;
* ``since="replay:N"``: the last N *matching* events (scanning back from the newest), then live
  from the newest entry seen by that first scan — no gap, no duplicate;
* ``since=<datetime>``: the events of the entries from that time on.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from redis.asyncio import Redis

from service.events.bridge import FIELD, LEGACY_FIELD
from service.events.models import EventKind, ReceivedEvent, check_kind_names, parse_event
from service.keys import Keys
from service.redis.connection import broker_errors
from service.wire import WireError, loads

__all__ = ["EventFilter", "read_events"]

log = structlog.get_logger("actionq.events")

# Entries per XREAD / XREVRANGE reply: an entry holds up to 500 events (the bridge's batch), so 50
# keeps a reply under ~25,000 events even when every flush was full.
_READ_COUNT = 50
_REPLAY_PAGE = 50
_MAX_SEQ = 2**64 - 1
_ID_RE = re.compile(r"^\d+(-\d+)?$")
_EVENT_ID_RE = re.compile(r"^(\d+-\d+)\.(\d+)$")


@dataclass(frozen=True)
class EventFilter:
    """Which events a reader wants (``None``: any); applied to the JSON before it is parsed."""

    kinds: frozenset[str] | None = None
    plugin: str | None = None
    job_id: str | None = None
    worker_id: str | None = None

    @classmethod
    def of(
        cls,
        kinds: Iterable[str | EventKind] | None = None,
        plugin: str | None = None,
        job_id: str | None = None,
        worker_id: str | None = None,
    ) -> EventFilter:
        """A filter; a kind that is neither built-in nor a valid plugin kind is a ``ValueError``.

        A plugin's own kinds (``ai_response_received``) pass; a typo of a built-in one
        (``job_faild``) does not, as it would silently match nothing.
        """
        names = None if kinds is None else check_kind_names(kinds) or None
        return cls(names, plugin, job_id, worker_id)

    @property
    def everything(self) -> bool:
        """True if nothing is filtered out."""
        return self.kinds is None and self.plugin is None and self.job_id is None and self.worker_id is None

    def matches(self, data: dict[str, Any]) -> bool:
        """True if the event ``data`` (parsed JSON) passes every condition."""
        return (
            (self.kinds is None or data.get("kind") in self.kinds)
            and (self.plugin is None or data.get("plugin") == self.plugin)
            and (self.job_id is None or data.get("job_id") == self.job_id)
            and (self.worker_id is None or data.get("worker_id") == self.worker_id)
        )


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _parse_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _id_before(entry_id: str) -> str:
    """The largest id below ``entry_id`` (an inclusive start as an exclusive XREAD cursor)."""
    ms, seq = _parse_id(entry_id)
    if seq > 0:
        return f"{ms}-{seq - 1}"
    return f"{ms - 1}-{_MAX_SEQ}" if ms > 0 else "0-0"


def _field(fields: dict[Any, Any], name: bytes) -> Any:
    """A field of an entry, whether the client decodes responses or not."""
    return fields.get(name, fields.get(name.decode()))


def _entry_items(fields: dict[Any, Any]) -> list[Any]:
    """The parsed (not yet validated) event objects of an entry: a batch, or one old-format event."""
    batch = _field(fields, FIELD)
    if batch is not None:
        items = loads(batch)
        if not isinstance(items, list):
            raise WireError("the events field is not a JSON array")
        return items
    single = _field(fields, LEGACY_FIELD)
    if single is not None:
        return [loads(single)]
    raise WireError("no events field")


def _decode_item(event_id: str, data: Any, wanted: EventFilter) -> ReceivedEvent | None:
    try:
        if not isinstance(data, dict):
            raise WireError("not a JSON object")
        if not wanted.matches(data):
            return None
        return ReceivedEvent(event_id, parse_event(data))
    except WireError as exc:  # foreign data, or a kind from a newer version: skip it
        log.warning("event_skipped", id=event_id, error=str(exc))
        return None


def _decode(raw_id: bytes | str, fields: dict[Any, Any], wanted: EventFilter, first: int = 0) -> list[ReceivedEvent]:
    """The matching events of one entry from index ``first`` on, in order, with their event ids."""
    entry_id = _text(raw_id)
    try:
        items = _entry_items(fields)
    except WireError as exc:  # foreign data: skip the entry
        log.warning("event_skipped", id=entry_id, error=str(exc))
        return []
    found = (_decode_item(f"{entry_id}.{i}", data, wanted) for i, data in enumerate(items) if i >= first)
    return [received for received in found if received is not None]


async def _newest_id(redis: Redis, key: str) -> str:
    with broker_errors(f"reading {key}"):
        newest = await redis.xrevrange(key, count=1)
    return _text(newest[0][0]) if newest else "0-0"


async def _replay(redis: Redis, key: str, n: int, wanted: EventFilter) -> tuple[str, list[ReceivedEvent]]:
    """The last ``n`` matching events (oldest first) and the newest entry id looked at (the live cursor)."""
    if n == 0:
        return await _newest_id(redis, key), []
    newest_first: list[ReceivedEvent] = []
    top, upper = "0-0", "+"
    while len(newest_first) < n:
        # Every entry holds at least one event: n - found entries may be enough when nothing is filtered.
        count = min(n - len(newest_first), _REPLAY_PAGE) if wanted.everything else _REPLAY_PAGE
        with broker_errors(f"replaying {key}"):
            page = await redis.xrevrange(key, max=upper, min="-", count=count)
        if not page:
            break
        if upper == "+":
            top = _text(page[0][0])
        for raw_id, fields in page:
            newest_first.extend(reversed(_decode(raw_id, fields, wanted)))
        last = _text(page[-1][0])
        if len(page) < count or last == "0-0":
            break
        upper = _id_before(last)
    return top, newest_first[:n][::-1]


async def _after_event(redis: Redis, key: str, entry_id: str, index: int, wanted: EventFilter) -> list[ReceivedEvent]:
    """The matching events after index ``index`` of entry ``entry_id`` (none if it was trimmed)."""
    with broker_errors(f"reading {key}"):
        entry = await redis.xrange(key, min=entry_id, max=entry_id, count=1)
    return _decode(entry[0][0], entry[0][1], wanted, first=index + 1) if entry else []


async def _start(redis: Redis, key: str, since: str | datetime, wanted: EventFilter) -> tuple[str, list[ReceivedEvent]]:
    """The first XREAD cursor (an entry id) and the events to yield before reading from it."""
    if isinstance(since, datetime):
        return _id_before(f"{int(since.timestamp() * 1000)}-0"), []
    if since == "now":
        return await _newest_id(redis, key), []
    if since.startswith("replay:"):
        count = since.partition(":")[2]
        if not count.isdigit():
            raise ValueError(f"since={since!r}: replay:N needs a number of events")
        return await _replay(redis, key, int(count), wanted)
    event_id = _EVENT_ID_RE.match(since)
    if event_id is not None:
        entry_id, index = event_id.group(1), int(event_id.group(2))
        return entry_id, await _after_event(redis, key, entry_id, index, wanted)
    if not _ID_RE.match(since):
        raise ValueError(f"since={since!r} is not 'now', 'replay:N', an event or stream id, or a datetime")
    return since, []


async def read_events(
    redis: Redis,
    keys: Keys,
    *,
    kinds: Iterable[str | EventKind] | None = None,
    plugin: str | None = None,
    job_id: str | None = None,
    worker_id: str | None = None,
    since: str | datetime = "now",
    follow: bool = True,
    block_ms: int = 1000,
) -> AsyncIterator[ReceivedEvent]:
    """Events from the events stream, oldest first, filtered; see the module docstring for ``since``.

    Each stream entry is expanded into its events, with ids ``"<entry id>.<index>"``; entries of
    the older one-event format (field ``event``) read as index 0. With ``follow`` it waits for
    new events forever (blocking ``block_ms`` per ``XREAD``); without, it stops at the newest
    event that existed when it started.
    """
    wanted = EventFilter.of(kinds, plugin, job_id, worker_id)
    key = keys.events()
    cursor, first = await _start(redis, key, since, wanted)
    for received in first:
        yield received
    end = None if follow else _parse_id(await _newest_id(redis, key))
    while True:
        with broker_errors(f"reading {key}"):
            reply = await redis.xread({key: cursor}, count=_READ_COUNT, block=block_ms if follow else None)
        entries = reply[0][1] if reply else []
        if not entries and end is not None:
            return
        for raw_id, fields in entries:
            cursor = _text(raw_id)
            if end is not None and _parse_id(cursor) > end:
                return
            for received in _decode(raw_id, fields, wanted):
                yield received
