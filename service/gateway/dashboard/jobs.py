"""The job pages: the list (filters, search by id) and one job live (progress, timeline, output, outcome).

The job page is rendered from the stored state first — the record (its latest progress snapshot,
attempts, result or error) and the items of its output stream so far — and then follows the
API's SSE streams (``/v1/jobs/{id}/events`` and ``/stream``) from ``static/dashboard.js``, which
drops what the page already shows (by the job's ``seq`` and the item's index). So a reload mid-job
shows where the job is and continues from there, with nothing missing and nothing twice.

The list cannot scan the keyspace for jobs (a deployment keeps 100,000s of records): it shows the
last :data:`SCANNED_JOBS` jobs named by the newest events of the events stream (at most
:data:`~.recent.MAX_EVENTS` events read, :mod:`.recent`), optionally only those with an event in
the last 5 minutes, hour or day (the events' ``ts_ms``), filtered; a search by a full id also
finds any job whose record still exists, by reading that record. A job still queued, never taken,
has no event yet: it is found by its id only. The rows are live: the page follows ``/v1/events``
(the job kinds of :data:`LIVE_KINDS`) and fetches the row of each job an event names again
(``/ui/jobs/{id}/row``, with the page's filters), so the row and the filters have one rendering,
on the server. A missing job is a readable 404 page, not the API's JSON problem.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from service.client.client import JobClient
from service.errors import JobNotFoundError
from service.events.models import EventKind
from service.gateway.dashboard.access import Viewer, ViewerDep
from service.gateway.dashboard.recent import MAX_EVENTS, newest_events
from service.gateway.dashboard.render import page
from service.gateway.jobs import Client, JobIdPath
from service.gateway.problems import ApiError
from service.gateway.redact import Redactor
from service.models import JobRecord, JobState, now_ms
from service.redis.connection import broker_errors
from service.redis.streams import END, ITEM
from service.wire import loads

__all__ = [
    "LIVE_KINDS",
    "SCANNED_JOBS",
    "SHOWN_ITEMS",
    "WINDOWS_S",
    "JobFilter",
    "live_rows_url",
    "recent_jobs",
    "router",
]

router = APIRouter(include_in_schema=False)

SCANNED_JOBS = 300  # records read per list: one round trip each, pipelined by the client's pool
SHOWN_JOBS = 100  # rows of the list
SHOWN_ITEMS = 1000  # stream items rendered with the page; the rest arrive over SSE
WINDOWS_S = {"5m": 300, "1h": 3600, "1d": 86_400}  # the time filter's choices
LIVE_KINDS = [  # the events that change a row's state (progress is left out: up to one per job per interval)
    EventKind.JOB_RECEIVED, EventKind.JOB_STARTED, EventKind.JOB_SUCCEEDED, EventKind.JOB_FAILED,
    EventKind.JOB_RETRYING, EventKind.JOB_TIMED_OUT, EventKind.JOB_CANCELLED,
]  # fmt: skip


def live_rows_url(wanted: JobFilter, read_ms: int) -> str:
    """The ``/v1/events`` stream the list follows: the job kinds, the plugin filter done by the gateway.

    It starts at the entries written from ``read_ms`` on (the time the page began reading), so an
    event written while the page was rendered is not missed; one seen twice only fetches a row again.
    """
    pairs = [("kind", k.value) for k in LIVE_KINDS] + ([("plugin", wanted.plugin)] if wanted.plugin else [])
    pairs.append(("since", f"{read_ms}-0"))
    return "/v1/events?" + urlencode(pairs)


@dataclass(frozen=True)
class JobFilter:
    """The list's filters (empty: any)."""

    state: str = ""
    plugin: str = ""
    action: str = ""
    queue: str = ""
    search: str = ""

    def keeps(self, record: JobRecord) -> bool:
        """Whether ``record`` passes every filter (``search``: a part of the job id)."""
        request = record.request
        return (
            (not self.state or record.state == self.state)
            and (not self.plugin or request.plugin == self.plugin)
            and (not self.action or request.action == self.action)
            and (not self.queue or request.options.queue == self.queue)
            and (not self.search or self.search in record.job_id)
        )


async def _record(client: JobClient, job_id: str) -> JobRecord | None:
    try:
        return await client.job(job_id).record()
    except JobNotFoundError:
        return None  # expired with its result TTL since the event was written


async def recent_jobs(
    client: JobClient, cap: int = MAX_EVENTS, since_ms: int | None = None
) -> tuple[list[JobRecord], bool]:
    """The records of the last :data:`SCANNED_JOBS` jobs named by the newest events, newest first.

    ``since_ms``: only jobs with an event at or after that time (the events' ``ts_ms``). Also
    whether the read stopped at its cap (older jobs exist that the list cannot reach). Jobs whose
    record expired since are left out.
    """
    recent = await newest_events(client, since_ms=since_ms, cap=cap)
    ids: dict[str, None] = {}
    for event in recent.events:  # newest first: the first mention is the latest
        job_id, ts_ms = event.get("job_id"), event.get("ts_ms")
        if since_ms is not None and (not isinstance(ts_ms, int) or ts_ms < since_ms):
            continue  # the entry's id bounds the read; an event may be older than its batch
        if isinstance(job_id, str) and str(event.get("kind", "")).startswith("job_"):
            ids.setdefault(job_id)
            if len(ids) >= SCANNED_JOBS:
                break
    records = await asyncio.gather(*(_record(client, job_id) for job_id in ids))
    return [record for record in records if record is not None], recent.capped or len(ids) >= SCANNED_JOBS


FilterState = Annotated[str, Query(max_length=40)]
FilterName = Annotated[str, Query(max_length=200)]
Since = Annotated[Literal["", "5m", "1h", "1d"], Query(description="Only jobs with an event this recent.")]


def _query(wanted: JobFilter, since: str) -> str:
    """The filters as a query string (what the live rows ask the row fragment with)."""
    pairs = {"state": wanted.state, "plugin": wanted.plugin, "action": wanted.action, "queue": wanted.queue,
             "q": wanted.search, "since": since}  # fmt: skip
    return urlencode({k: v for k, v in pairs.items() if v})


@router.get("/ui/jobs", response_class=HTMLResponse)
async def jobs_page(
    request: Request, client: Client, viewer: ViewerDep, state: FilterState = "", plugin: FilterName = "",
    action: FilterName = "", queue: FilterName = "", q: FilterName = "", since: Since = "",
) -> Response:  # fmt: skip
    """The jobs of the recent events, filtered, their rows live; a search naming one job's exact id opens that job."""
    read_ms, search = now_ms(), q.strip()
    if search and await _record(client, search) is not None:
        return RedirectResponse(f"/ui/jobs/{quote(search, safe='')}", status_code=303)
    wanted = JobFilter(state, plugin, action, queue, search)
    since_ms = read_ms - WINDOWS_S[since] * 1000 if since else None
    records, capped = await recent_jobs(client, since_ms=since_ms)
    shown = [r for r in records if wanted.keeps(r)][:SHOWN_JOBS]
    return page(
        request, "jobs.html", viewer, jobs=shown, filter=wanted, states=[s.value for s in JobState],
        scanned=len(records), capped=capped, max_events=MAX_EVENTS, plugins=sorted({r.request.plugin for r in records}),
        actions=sorted({r.request.action for r in records}), queues=sorted({r.request.options.queue for r in records}),
        since=since, events_url=live_rows_url(wanted, read_ms), row_query=_query(wanted, since),
        shown_jobs=SHOWN_JOBS,
    )  # fmt: skip


@router.get("/ui/jobs/{job_id}/row", response_class=HTMLResponse)
async def job_row(
    job_id: JobIdPath, request: Request, client: Client, viewer: ViewerDep, state: FilterState = "",
    plugin: FilterName = "", action: FilterName = "", queue: FilterName = "", q: FilterName = "",
) -> Response:  # fmt: skip
    """One row of the list, as it is now: what a live row is replaced with (204: it no longer passes the filters)."""
    record = await _record(client, job_id)
    if record is None or not JobFilter(state, plugin, action, queue, q.strip()).keeps(record):
        return Response(status_code=204)
    return page(request, "_job_row.html", viewer, j=record)


async def stored_items(client: JobClient, job_id: str, cap: int = SHOWN_ITEMS) -> tuple[list[Any], bool]:
    """The first ``cap`` items of the job's output stream, and whether it has a stream at all."""
    with broker_errors(f"reading the stream of job {job_id}"):
        entries = await client.redis.xrange(client.keys.job_stream(job_id), count=cap + 1)
    items = [loads(fields[ITEM]) for _, fields in entries if ITEM in fields and END not in fields]
    return items[:cap], bool(entries)


async def _job(client: JobClient, job_id: str) -> JobRecord:
    record = await _record(client, job_id)
    if record is None:
        raise JobNotFoundError(job_id)
    return await Redactor(client).record(record)


def _no_job(request: Request, viewer: Viewer, job_id: str) -> HTMLResponse:
    """A readable 404 page (not the API's JSON problem) with the way back to the list."""
    return page(request, "not_found.html", viewer, status=404, message=f"There is no job {job_id!r}.",
                why="Its id may be misspelt, or its record expired with its result TTL.",
                back="/ui/jobs", back_label="Back to the jobs")  # fmt: skip


@router.get("/ui/jobs/{job_id}", response_class=HTMLResponse)
async def job_page(job_id: JobIdPath, request: Request, client: Client, viewer: ViewerDep) -> HTMLResponse:
    """One job, rendered from its stored state, then live over SSE (a readable 404 page when there is none)."""
    try:
        record = await _job(client, job_id)
    except JobNotFoundError:
        return _no_job(request, viewer, job_id)
    items, has_stream = await stored_items(client, job_id)
    snapshot = {"job_id": job_id, "seq": record.seq, "state": record.state.value,
                "progress": record.progress.model_dump(mode="json") if record.progress else None}  # fmt: skip
    return page(request, "job.html", viewer, job=record, items=items, has_stream=has_stream,
                snapshot=snapshot, shown_items=SHOWN_ITEMS)  # fmt: skip


@router.get("/ui/jobs/{job_id}/outcome", response_class=HTMLResponse)
async def job_outcome(job_id: JobIdPath, request: Request, client: Client, viewer: ViewerDep) -> HTMLResponse:
    """The outcome and attempts part of the job page (fetched again when the job ends)."""
    try:
        return page(request, "job_outcome.html", viewer, job=await _job(client, job_id))
    except JobNotFoundError:
        return _no_job(request, viewer, job_id)


@router.post("/ui/jobs/{job_id}/replay")
async def replay_as_new(job_id: JobIdPath, client: Client, viewer: ViewerDep) -> JSONResponse:
    """Submit the job's request again under a new id (the stored request: secret params kept, never shown).

    The API has no such call, and the browser cannot rebuild the request from the page, which
    shows secret params masked; so this reads the record here and needs the ``submit`` scope.
    """
    if not viewer.can("submit"):
        raise ApiError(403, "Forbidden", f"this needs the 'submit' scope; token {viewer.name!r} has not")
    record = await _record(client, job_id)
    if record is None:
        raise JobNotFoundError(job_id)
    options = record.request.options.model_copy(update={"job_id": None, "at_ms": None, "defer_s": None})
    handle = await client.submit_request(record.request.model_copy(update={"options": options}))
    location = f"/ui/jobs/{handle.job_id}"
    body = {"job_id": handle.job_id, "location": location}
    return JSONResponse(body, status_code=202, headers={"Location": location})
