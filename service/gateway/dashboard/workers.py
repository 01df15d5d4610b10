"""The workers page: each live worker's host, pid, state, plugins with versions and running jobs.

The table is a fragment (``/ui/workers/table``) that htmx fetches again when the vendored SSE
extension receives a worker event from ``/v1/events`` (``worker_started``, ``worker_stopped``,
``worker_paused``, ``worker_resumed``, ``worker_error``: another operator's pause shows at once),
when a control command was acknowledged on this page, and every :data:`REFRESH_S` seconds (a
worker that died without a word leaves the registry when its heartbeat runs out).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from service.events.models import EventKind
from service.gateway.dashboard.access import ViewerDep
from service.gateway.dashboard.render import page
from service.gateway.jobs import Client
from service.plugins.registry import WorkerInfo

__all__ = ["REFRESH_S", "WORKER_KINDS", "router", "state_of"]

router = APIRouter(include_in_schema=False)

REFRESH_S = 5  # the heartbeat's order of magnitude: a registry change shows within one
WORKER_KINDS = [
    EventKind.WORKER_STARTED,
    EventKind.WORKER_STOPPED,
    EventKind.WORKER_PAUSED,
    EventKind.WORKER_RESUMED,
    EventKind.WORKER_ERROR,
]


def state_of(worker: WorkerInfo) -> str:
    """``draining``, ``paused`` or ``running`` (draining wins: a draining worker takes no jobs either)."""
    return "draining" if worker.draining else "paused" if worker.paused else "running"


async def _workers(client: Client) -> list[WorkerInfo]:
    return sorted(await client.workers(), key=lambda w: (w.hostname, w.worker_id))


@router.get("/ui/workers", response_class=HTMLResponse)
async def workers_page(request: Request, client: Client, viewer: ViewerDep) -> HTMLResponse:
    """The live workers, their table live."""
    events = "/v1/events?" + "&".join(f"kind={k.value}" for k in WORKER_KINDS)
    return page(request, "workers.html", viewer, workers=await _workers(client), state_of=state_of,
                events_url=events, kinds=[k.value for k in WORKER_KINDS], refresh_s=REFRESH_S)  # fmt: skip


@router.get("/ui/workers/table", response_class=HTMLResponse)
async def workers_table(request: Request, client: Client, viewer: ViewerDep) -> HTMLResponse:
    """Just the table (what htmx swaps in)."""
    return page(request, "workers_table.html", viewer, workers=await _workers(client), state_of=state_of)
