"""``/v1/jobs``: submit (one or a batch), read, wait for, cancel and follow jobs.

Every route is a thin call into the app's :class:`~service.client.client.JobClient`, so the
validation, idempotency, batching and following are the Python client's own: a submit that the
client refuses is refused here with the same error (``InvalidParamsError`` with its fields, ...)
and nothing was written.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request, Response
from pydantic import TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from service.client.client import JobClient, JobSpec, Params
from service.client.handle import JobHandle
from service.errors import ActionQError, ResultTimeoutError
from service.gateway.auth import scoped
from service.gateway.problems import ApiError, error_body, fields_of, status_of
from service.gateway.redact import Redactor
from service.gateway.schemas import (
    BatchItem,
    BatchReply,
    BatchResult,
    CancelBody,
    CancelReply,
    ErrorDetail,
    FieldProblem,
    ResultReply,
    SubmitBody,
    SubmitReply,
)
from service.gateway.sse import EventStream, job_event_stream, relay, sse_response, stream_items
from service.models import TRACEPARENT_PATTERN, JobRecord
from service.redis.connection import broker_errors
from service.redis.streams import END, entry_index
from service.settings import Settings

__all__ = ["BATCH_ITEMS", "client_of", "router", "submit_body", "submitted", "submitted_batch"]

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

JobIdPath = Annotated[str, Path(min_length=1, max_length=200, description="The job id.")]
_TRACEPARENT = re.compile(TRACEPARENT_PATTERN)
Traceparent = Annotated[
    str | None, Header(description="W3C trace context: the job's spans join this trace (ignored if malformed).")
]
IdempotencyKey = Annotated[
    str | None, Header(alias="Idempotency-Key", description="Becomes the job id: the same key finds the same job.")
]
LastEventId = Annotated[
    str | None, Header(alias="Last-Event-ID", description="The id of the last event received: resume after it.")
]
_STREAM_ID = re.compile(r"^0-(\d{1,18})$")


def client_of(request: Request) -> JobClient:
    """The app's client (opened by the lifespan)."""
    client: JobClient = request.app.state.client
    return client


def settings_of(request: Request) -> Settings:
    """The app's settings."""
    settings: Settings = request.app.state.settings
    return settings


async def _client(request: Request) -> JobClient:
    return client_of(request)


async def _settings(request: Request) -> Settings:
    return settings_of(request)


# async dependencies: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hand-off
# per request (it halved the submit rate).
Client = Annotated[JobClient, Depends(_client)]
AppSettings = Annotated[Settings, Depends(_settings)]


async def submit_body(
    client: JobClient, body: SubmitBody, job_id: str | None, traceparent: str | None = None
) -> JobHandle:
    """Submit ``body`` through the client (its validation, its batching), as ``job_id`` if given.

    ``traceparent``: the request's W3C trace context header, passed on so that the job's spans
    join the caller's trace; one that is not well formed is ignored, as the W3C spec says.
    """
    opts = body.options
    params: Params = body.params
    return await client.submit(
        body.plugin, body.action, params, job_id=job_id, timeout_s=opts.timeout_s, queue=opts.queue,
        defer_s=opts.defer_s, at=opts.at, result_ttl_s=opts.result_ttl_s, retry=opts.retry,
        expires_s=opts.expires_s, host=opts.host, watch=opts.watch, author=opts.author,
        traceparent=_trace(traceparent),
    )  # fmt: skip


def _trace(traceparent: str | None) -> str | None:
    """The request's W3C ``traceparent``, or ``None`` if it has none or one that is not well formed."""
    trace = traceparent.strip().lower() if traceparent else None
    return trace if trace and _TRACEPARENT.match(trace) else None


def _location(job_id: str) -> str:
    return f"/v1/jobs/{job_id}"


@router.post(
    "",
    status_code=202,
    dependencies=scoped("submit"),
    response_model=SubmitReply,
    responses={200: {"model": SubmitReply, "description": "The Idempotency-Key named an existing job."}},
)
async def submit(
    body: SubmitBody, client: Client, key: IdempotencyKey = None, traceparent: Traceparent = None
) -> Response:
    """Submit a job; 202 with its ``Location``, or 200 when the ``Idempotency-Key`` named an existing one."""
    return submitted(await submit_body(client, body, key, traceparent))


def submitted(handle: JobHandle) -> Response:
    """``POST /v1/jobs``'s reply for the job submitted (also :mod:`service.gateway.fastlane`'s)."""
    location = _location(handle.job_id)
    reply = SubmitReply.model_construct(job_id=handle.job_id, created=handle.created, location=location)
    # Encoded here (the model is documented as the response_model): FastAPI would validate it again.
    return Response(
        reply.model_dump_json(), status_code=202 if handle.created else 200, media_type="application/json",
        headers={"Location": location},
    )  # fmt: skip


@router.post(":batch", dependencies=scoped("submit"), response_model=BatchReply)
async def submit_batch(
    items: Annotated[list[dict[str, Any]], Body(description="The jobs (each a submit body plus idempotency_key).")],
    client: Client,
    settings: AppSettings,
    traceparent: Traceparent = None,
) -> Response:
    """Submit many jobs: each item gets its own result or error, at its index (the submits share round trips)."""
    if len(items) > settings.gateway.max_batch:
        raise ApiError(422, "BatchTooLargeError", f"{len(items)} jobs in one batch, over the limit of "
                       f"{settings.gateway.max_batch} (gateway.max_batch)")  # fmt: skip
    return await submitted_batch(client, _batch_items(items), traceparent)


async def submitted_batch(
    client: JobClient, parsed: list[BatchItem | dict[str, Any]], traceparent: str | None
) -> Response:
    """Submit the valid items of ``parsed`` (an invalid one is its 422 result already) and reply with
    every item's result at its index (also :mod:`service.gateway.fastlane`'s)."""
    trace = _trace(traceparent)
    valid = [(i, item) for i, item in enumerate(parsed) if isinstance(item, BatchItem)]
    # Items with the same options object (every item without options has the default one) and no
    # idempotency key share one mapping: submit_many checks each mapping once.
    shared: dict[int, dict[str, Any]] = {}
    specs = []
    for _, item in valid:
        options = shared.get(id(item.options)) if item.idempotency_key is None else None
        if options is None:
            options = _spec_options(item, trace)
            if item.idempotency_key is None:
                shared[id(item.options)] = options
        specs.append(JobSpec(item.plugin, item.action, item.params, options))
    results: list[dict[str, Any] | None] = [item if isinstance(item, dict) else None for item in parsed]
    for (index, _), written in zip(valid, await client.submit_many(specs), strict=True):
        results[index] = _batch_result(index, written)
    # Encoded here, as plain values: a model per item (BatchReply's) costs as much as the submit.
    return Response(json.dumps({"results": results}, separators=(",", ":")), media_type="application/json")


BATCH_ITEMS = TypeAdapter(list[BatchItem])
"""A whole batch's items, validated in one call."""


def _batch_items(raw: list[dict[str, Any]]) -> list[BatchItem | dict[str, Any]]:
    """The items, validated in one call; if any is invalid, each on its own: an invalid one
    becomes its 422 result (a ``BatchResult`` as JSON values), at its index."""
    try:
        return list(BATCH_ITEMS.validate_python(raw))
    except ValidationError:
        pass
    parsed: list[BatchItem | dict[str, Any]] = []
    for index, item in enumerate(raw):
        try:
            parsed.append(BatchItem.model_validate(item))
        except ValidationError as exc:
            fields = [_problem(error) for error in exc.errors()]
            message = "invalid job: " + "; ".join(f"{f.field}: {f.message}" for f in fields)
            error = ErrorDetail(type="RequestValidationError", message=message, fields=fields)
            parsed.append(BatchResult(index=index, status=422, error=error).model_dump(mode="json"))
    return parsed


def _problem(error: ErrorDetails) -> FieldProblem:
    return FieldProblem(field=".".join(map(str, error["loc"])) or "(item)", message=error["msg"])


def _spec_options(item: BatchItem, traceparent: str | None) -> dict[str, Any]:
    """``JobClient.submit``'s options for a batch item (its ``idempotency_key`` is the job id)."""
    # The fields' values as they are (iterating the model costs microseconds a field).
    return {**item.options.__dict__, "job_id": item.idempotency_key, "traceparent": traceparent}


def _batch_result(index: int, written: JobHandle | ActionQError) -> dict[str, Any]:
    """An item's ``BatchResult``, as JSON values."""
    if isinstance(written, ActionQError):
        body = error_body(type(written).__name__, str(written), fields_of(written))
        error = ErrorDetail.model_validate(body["error"])
        return BatchResult(index=index, status=status_of(written), error=error).model_dump(mode="json")
    status = 202 if written.created else 200
    return {"index": index, "status": status, "job_id": written.job_id, "created": written.created, "error": None}


@router.get("/{job_id}", dependencies=scoped("read"))
async def get_job(job_id: JobIdPath, client: Client) -> JobRecord:
    """The job's record: state, progress, attempts, timestamps, worker, result or error (404 if none);
    params its manifest declares secret show as ``"***"``."""
    return await Redactor(client).record(await client.job(job_id).record())


@router.get(
    "/{job_id}/result",
    dependencies=scoped("read"),
    responses={202: {"model": ResultReply, "description": "Not ended when the wait ran out (done: false)."}},
)
async def get_result(
    job_id: JobIdPath,
    response: Response,
    client: Client,
    settings: AppSettings,
    wait: Annotated[float, Query(ge=0, description="Seconds to wait for the end (capped by gateway.max_wait_s).")] = 0,
) -> ResultReply:
    """The job's outcome: 200 once it ended (whatever the outcome), 202 with ``done: false`` if the wait ran out."""
    handle = client.job(job_id)
    wait_s = min(wait, settings.gateway.max_wait_s)
    try:
        record = await handle.wait(wait_s) if wait_s > 0 else await handle.record()
    except ResultTimeoutError:
        record = await handle.record()
    if not record.is_terminal:
        response.status_code = 202
        response.headers["Retry-After"] = "1"
    return ResultReply(
        job_id=job_id, state=record.state, done=record.is_terminal, result=record.result, error=record.error
    )


@router.post("/{job_id}/cancel", dependencies=scoped("control"))
async def cancel(
    job_id: JobIdPath,
    client: Client,
    settings: AppSettings,
    body: Annotated[CancelBody | None, Body()] = None,
    wait: Annotated[float, Query(ge=0, description="Seconds to wait for a running job to stop (capped).")] = 5,
) -> CancelReply:
    """Cancel the job, whatever its state, waiting up to ``wait`` seconds for a running one to stop."""
    reason = (body or CancelBody()).reason
    outcome = await client.job(job_id).cancel(reason, timeout=min(wait, settings.gateway.max_wait_s))
    return CancelReply(job_id=job_id, outcome=outcome)


class _NothingNew(ApiError):
    """A reconnect after the job's last event: 204, which tells an EventSource to stop reconnecting."""

    def __init__(self) -> None:
        super().__init__(204, "NoContent", "")


async def _events_start(job_id: JobIdPath, client: Client, last: LastEventId = None) -> int:
    """The sequence number to resume after (``-1``: from the start); 404 for no job, 204 if nothing is left."""
    after = -1
    if last is not None:
        if not last.strip().isdigit():
            raise ApiError(400, "InvalidLastEventIdError", f"Last-Event-ID {last!r} is not a job event id (a seq)")
        after = int(last)
    record = await client.job(job_id).record()
    if record.is_terminal and record.seq <= after:
        raise _NothingNew()
    return after


async def _stream_start(job_id: JobIdPath, client: Client, last: LastEventId = None) -> int:
    """The item index to resume at; 404 for no job, 204 if the end marker was delivered already."""
    start = 0
    if last is not None:
        found = _STREAM_ID.match(last.strip())
        if found is None:
            raise ApiError(400, "InvalidLastEventIdError", f"Last-Event-ID {last!r} is not a stream id (0-<n>)")
        start = int(found.group(1))
    record = await client.job(job_id).record()
    if record.is_terminal and start > 0:
        with broker_errors(f"reading the stream of job {job_id}"):
            tail = await client.redis.xrevrange(client.keys.job_stream(job_id), count=1)
        if tail and END in tail[0][1] and entry_index(tail[0][0]) < start:
            raise _NothingNew()
    return start


@router.get("/{job_id}/events", response_class=EventStream, dependencies=scoped("read"))
async def events(
    job_id: JobIdPath, request: Request, client: Client, after: Annotated[int, Depends(_events_start)]
) -> EventStream:
    """SSE of the job's state and progress (``id``: its seq; ``Last-Event-ID`` resumes); ends after the end."""
    settings = settings_of(request).gateway
    return job_event_stream(client.job(job_id), after, settings)


@router.get("/{job_id}/stream", response_class=EventStream, dependencies=scoped("read"))
async def stream(
    job_id: JobIdPath, request: Request, client: Client, start: Annotated[int, Depends(_stream_start)]
) -> EventStream:
    """SSE of a generator job's items (``id``: the stream entry id; ``Last-Event-ID`` resumes), then ``end``."""
    settings = settings_of(request).gateway
    return sse_response(relay(stream_items(client, job_id, start), settings, what=f"stream:{job_id}"))
