"""The live dashboard: server-rendered pages (Jinja2) on the gateway, at ``/`` and under ``/ui``.

Pages are rendered from the app's :class:`~service.client.client.JobClient`, with the same
tokens and scopes as the API (:mod:`.access`); everything that changes something (submit,
cancel, control, replay, purge) is a call from the browser to the ``/v1`` API itself, so the
API's checks and errors are the dashboard's. Live parts follow the API's own SSE streams with
``EventSource`` (``static/dashboard.js``) and the vendored htmx SSE extension. Every asset is
a file of this package (``static/``): nothing is loaded from a CDN, no build step.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from service.gateway.dashboard import access, jobs, letters, pages, workers

__all__ = ["STATIC", "install"]

STATIC = Path(__file__).parent / "static"


def install(app: FastAPI) -> None:
    """Mount the dashboard's pages and static files on ``app`` (none of it is in the OpenAPI document)."""
    access.install(app)
    for module in (pages, jobs, workers, letters):
        app.include_router(module.router)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="dashboard-static")
