"""``GET /v1/events``: every worker's events as Server-Sent Events, filtered, resumable without gap or duplicate.

The events come from :meth:`JobClient.events` (:func:`service.events.reader.read_events`), which
reads the capped events stream with ``XREAD BLOCK`` from an explicit cursor. The stream is its own
durable copy, so there is no replay/live seam to deduplicate. Each stream entry holds a batch of
events; each SSE ``id`` is the reader's event id ``<entry id>.<index>``, which names exactly one
event, and ``Last-Event-ID`` is passed back to the reader as ``since``: it resumes with the rest of
that entry, then later ones. The event name is the event's ``kind``; ``data`` is the event's JSON.

The first connection starts where ``?since=`` says (``now``, the default; ``replay:N``; an event
or stream id; an ISO 8601 time). ``Last-Event-ID``, sent by an ``EventSource`` on reconnect, wins
over ``since``. Both are checked before the response starts, so a bad one is a 400, not an error
event. ``?follow=false`` ends the response at the newest event (what curl and tests want).

The events pass through :func:`service.gateway.sse.relay`: a bounded queue per connection, keep-alives,
and a slow client dropped (``: dropped``), to reconnect with its last id.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.sse import ServerSentEvent

from service.client.client import JobClient
from service.events.reader import EventFilter
from service.gateway.auth import scoped
from service.gateway.jobs import Client, settings_of
from service.gateway.problems import ApiError
from service.gateway.schemas import FieldProblem
from service.gateway.sse import EventStream, relay, sse_response

__all__ = ["EventQuery", "event_stream", "router", "start_of"]

router = APIRouter(tags=["events"])

_EVENT_ID = re.compile(r"^\d{1,20}-\d{1,20}\.\d{1,9}$")
_STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
_REPLAY = re.compile(r"^replay:\d{1,6}$")


@dataclass(frozen=True)
class EventQuery:
    """The filters and start of one ``/v1/events`` request, checked before the response starts."""

    kinds: list[str] | None
    plugin: str | None
    job: str | None
    worker: str | None
    since: str | datetime
    follow: bool


def start_of(since: str, last_event_id: str | None) -> str | datetime:
    """Where reading starts: after ``Last-Event-ID`` if sent (an event id), else ``since``; 400 if malformed."""
    if last_event_id is not None:
        last = last_event_id.strip()
        if not _EVENT_ID.match(last):
            raise ApiError(
                400, "InvalidLastEventIdError", f"Last-Event-ID {last!r} is not an event id (<ms>-<seq>.<i>)"
            )
        return last
    since = since.strip()
    if since == "now" or _REPLAY.match(since) or _EVENT_ID.match(since) or _STREAM_ID.match(since):
        return since
    try:
        at = datetime.fromisoformat(since)
    except ValueError:
        message = f"since={since!r} is not 'now', 'replay:N', an event or stream id, or an ISO 8601 time"
        raise ApiError(
            422, "RequestValidationError", message, fields=[FieldProblem(field="since", message=message)]
        ) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)  # a time without a zone is UTC


async def _query(
    kind: Annotated[list[str] | None, Query(description="Only events of this kind (repeatable).")] = None,
    plugin: Annotated[str | None, Query(description="Only events of this plugin.")] = None,
    job: Annotated[str | None, Query(description="Only events of this job.")] = None,
    worker: Annotated[str | None, Query(description="Only events of this worker.")] = None,
    since: Annotated[
        str, Query(max_length=64, description="now, replay:N, an event or stream id, or an ISO 8601 time.")
    ] = "now",
    follow: Annotated[bool, Query(description="Keep following; false: end at the newest event.")] = True,
    last_event_id: Annotated[
        str | None, Header(alias="Last-Event-ID", description="The id of the last event received: resume after it.")
    ] = None,
) -> EventQuery:
    """The request's query and ``Last-Event-ID``, refused with a 4xx here rather than as an error event later."""
    try:
        EventFilter.of(kind, plugin, job, worker)
    except ValueError as exc:  # a typo of a built-in kind would silently match nothing
        raise ApiError(
            422, "RequestValidationError", str(exc), fields=[FieldProblem(field="kind", message=str(exc))]
        ) from None
    return EventQuery(kind or None, plugin, job, worker, start_of(since, last_event_id), follow)


async def event_stream(client: JobClient, query: EventQuery) -> AsyncGenerator[ServerSentEvent, None]:
    """The matching events as SSE: ``event`` the kind, ``id`` the event id, ``data`` the event."""
    reading = client.events(query.kinds, query.plugin, query.job, query.since, worker_id=query.worker,
                            follow=query.follow)  # fmt: skip
    async with aclosing(reading) as received:  # type: ignore[type-var]  # an async generator
        async for item in received:
            yield ServerSentEvent(event=item.kind, id=item.id, raw_data=item.event.model_dump_json())


@router.get("/v1/events", response_class=EventStream, dependencies=scoped("read"))
async def events(request: Request, client: Client, query: Annotated[EventQuery, Depends(_query)]) -> EventStream:
    """SSE of every worker's events, filtered (``id``: the event id; ``Last-Event-ID`` resumes after it)."""
    settings = settings_of(request).gateway
    return sse_response(relay(event_stream(client, query), settings, what="events"))
