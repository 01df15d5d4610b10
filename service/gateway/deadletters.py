"""Dead letters over HTTP: list, show, replay (one, many, all) and purge — the calls of ``actionq dead``.

Every route is a call on the client's :class:`~service.client.deadletters.DeadLetterStore`
(``client.dead``), as the CLI makes it. A replay submits the letter's request again as a fresh
attempt series — under the same job id by default (the failed record is replaced), or a new one —
and removes the letter; it answers 202 with the new job's ``Location``. A bulk replay gives each
letter its own result, at its place; one that fails does not stop the others. Letters show their
params with secret ones masked (:mod:`service.gateway.redact`).
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Body, Path, Query, Response

from service.client.client import JobClient
from service.client.deadletters import DeadLetter
from service.errors import ActionQError, DeadLetterNotFoundError
from service.gateway.auth import scoped
from service.gateway.jobs import AppSettings, Client
from service.gateway.problems import ApiError, error_body, fields_of, status_of
from service.gateway.redact import Redactor
from service.gateway.schemas import (
    BulkReplayReply,
    DeadLetterSelection,
    ErrorDetail,
    PurgeReply,
    ReplayBody,
    ReplayReply,
    ReplayResult,
)

__all__ = ["router"]

router = APIRouter(prefix="/v1/dead-letters", tags=["dead letters"])

JobIdPath = Annotated[str, Path(min_length=1, max_length=200, description="The dead job's id.")]


def _location(job_id: str) -> str:
    return f"/v1/jobs/{job_id}"


@router.get("", dependencies=scoped("read"))
async def list_letters(
    client: Client, limit: Annotated[int, Query(ge=1, le=1000, description="At most this many, newest first.")] = 100
) -> list[DeadLetter]:
    """The newest dead letters, newest first (secret params masked)."""
    redactor = Redactor(client)
    return [await redactor.letter(letter) for letter in await client.dead.list(limit)]


@router.get("/{job_id}", dependencies=scoped("read"))
async def show_letter(job_id: JobIdPath, client: Client) -> DeadLetter:
    """One dead letter: its request, every attempt, the final error (404 ``DeadLetterNotFoundError``)."""
    return await Redactor(client).letter(await client.dead.get(job_id))


@router.post("/{job_id}/replay", status_code=202, dependencies=scoped("control"))
async def replay_letter(
    job_id: JobIdPath, response: Response, client: Client, body: Annotated[ReplayBody | None, Body()] = None
) -> ReplayReply:
    """Submit the dead job again (same id unless ``new_id``); 202 with the new job's ``Location``."""
    handle = await client.dead.replay(job_id, new_id=(body or ReplayBody()).new_id)
    response.headers["Location"] = _location(handle.job_id)
    return ReplayReply(replayed=job_id, job_id=handle.job_id, location=_location(handle.job_id))


async def _selected(client: JobClient, selection: DeadLetterSelection, limit: int) -> list[str]:
    """The ids a bulk request names: its ``ids``, or (``all``) the newest ``limit`` letters."""
    if (selection.ids is None) == (not selection.all):
        raise ApiError(422, "RequestValidationError", "name the dead letters: either ids or all: true")
    if selection.ids is not None:
        if len(selection.ids) > limit:
            raise ApiError(422, "BatchTooLargeError", f"{len(selection.ids)} ids, over the limit of {limit} "
                           "(gateway.max_batch)")  # fmt: skip
        return list(dict.fromkeys(selection.ids))  # a letter named twice is replayed once
    return [letter.job_id for letter in await client.dead.list(limit)]


async def _replay_one(client: JobClient, job_id: str, new_id: bool) -> ReplayResult:
    try:
        handle = await client.dead.replay(job_id, new_id=new_id)
    except ActionQError as exc:
        detail = ErrorDetail.model_validate(error_body(type(exc).__name__, str(exc), fields_of(exc))["error"])
        return ReplayResult(replayed=job_id, status=status_of(exc), error=detail)
    return ReplayResult(replayed=job_id, status=202, job_id=handle.job_id, location=_location(handle.job_id))


@router.post(":replay", dependencies=scoped("control"))
async def replay_letters(selection: DeadLetterSelection, client: Client, settings: AppSettings) -> BulkReplayReply:
    """Replay many dead letters (``ids``, or ``all``: the newest ``gateway.max_batch``), each its own result."""
    ids = await _selected(client, selection, settings.gateway.max_batch)
    results = await asyncio.gather(*(_replay_one(client, job_id, selection.new_id) for job_id in ids))
    return BulkReplayReply(results=list(results))


@router.delete("/{job_id}", status_code=204, dependencies=scoped("control"))
async def delete_letter(job_id: JobIdPath, client: Client) -> Response:
    """Delete one dead letter (204); 404 ``DeadLetterNotFoundError`` if there is none."""
    if not await client.dead.purge([job_id]):
        raise DeadLetterNotFoundError(job_id)
    return Response(status_code=204)


@router.post(":purge", dependencies=scoped("control"))
async def purge_letters(selection: DeadLetterSelection, client: Client, settings: AppSettings) -> PurgeReply:
    """Delete the dead letters named (``ids``) or every one (``all``); how many were deleted."""
    if selection.all and selection.ids is None:
        return PurgeReply(purged=await client.dead.purge(None))
    return PurgeReply(purged=await client.dead.purge(await _selected(client, selection, settings.gateway.max_batch)))
