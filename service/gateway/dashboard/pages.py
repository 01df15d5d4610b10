"""The overview (``/``) and the plugins page with a run form per action.

The overview gathers bounded reads (:mod:`.stats`): queue depths and oldest waits as
``/v1/queues`` gives them, the live workers, and the last hour from the events stream. The
plugins page shows the registry's manifests as ``/v1/plugins`` does, each action with a form
generated from its arguments' JSON Schema (:mod:`.forms`) that submits to ``POST /v1/jobs``.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from service.gateway.catalog import plugin_view
from service.gateway.dashboard.access import ViewerDep
from service.gateway.dashboard.forms import form_fields
from service.gateway.dashboard.recent import MAX_EVENTS
from service.gateway.dashboard.render import page
from service.gateway.dashboard.stats import WAIT_SAMPLE, last_hour
from service.gateway.jobs import Client
from service.gateway.queues import queues

__all__ = ["router"]

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
async def overview(request: Request, client: Client, viewer: ViewerDep) -> HTMLResponse:
    """Jobs by state, queues, workers online and the last hour, each read with bounded work."""
    depths, workers, hour = await asyncio.gather(queues(client), client.workers(), last_hour(client))
    totals = {
        "ready": sum(q.ready for q in depths),
        "deferred": sum(q.deferred for q in depths),
        "running": sum(q.running for q in depths),
    }
    return page(request, "overview.html", viewer, queues=depths, workers=workers, hour=hour, totals=totals,
                cap=MAX_EVENTS, wait_sample=WAIT_SAMPLE)  # fmt: skip


@router.get("/ui/plugins", response_class=HTMLResponse)
async def plugins_page(request: Request, client: Client, viewer: ViewerDep) -> HTMLResponse:
    """Every plugin of the registry; a run form for each action when the viewer may submit."""
    views = [plugin_view(entry.manifest, entry.live) for entry in await client.plugins()]
    forms = {(p.name, a.name): form_fields(a.arguments) for p in views for a in p.actions}
    return page(request, "plugins.html", viewer, plugins=sorted(views, key=lambda p: p.name), forms=forms)
