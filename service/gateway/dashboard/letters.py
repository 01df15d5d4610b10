"""The dead-letter pages: the newest letters, and one letter with its request, attempts and final error.

Replay (one, the selected, all) and purge are the API's own calls (``/v1/dead-letters…``), made
from the browser with the viewer's cookie; the buttons exist only for a token with ``control``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from service.errors import DeadLetterNotFoundError
from service.gateway.dashboard.access import ViewerDep
from service.gateway.dashboard.render import page
from service.gateway.deadletters import JobIdPath
from service.gateway.jobs import Client
from service.gateway.redact import Redactor

__all__ = ["router"]

router = APIRouter(include_in_schema=False)


@router.get("/ui/dead-letters", response_class=HTMLResponse)
async def letters_page(
    request: Request, client: Client, viewer: ViewerDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> HTMLResponse:
    """The newest ``limit`` dead letters, newest first (secret params masked)."""
    redactor = Redactor(client)
    letters = [await redactor.letter(letter) for letter in await client.dead.list(limit)]
    return page(request, "dead_letters.html", viewer, letters=letters, limit=limit)


@router.get("/ui/dead-letters/{job_id}", response_class=HTMLResponse)
async def letter_page(job_id: JobIdPath, request: Request, client: Client, viewer: ViewerDep) -> HTMLResponse:
    """One dead letter; a readable 404 page (not the API's JSON problem) when there is none."""
    try:
        letter = await Redactor(client).letter(await client.dead.get(job_id))
    except DeadLetterNotFoundError:
        return page(request, "not_found.html", viewer, status=404, message=f"There is no dead letter {job_id!r}.",
                    why="It may have been replayed, deleted or purged, or it expired.",
                    back="/ui/dead-letters", back_label="Back to the dead letters")  # fmt: skip
    return page(request, "dead_letter.html", viewer, letter=letter)
