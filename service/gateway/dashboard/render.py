"""Jinja2 rendering of the dashboard's pages, and the filters the templates format numbers with.

Autoescaping is on for every template: job params, results, errors and plugin descriptions are
data from outside, shown as text, never as markup.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from service.models import now_ms

__all__ = ["ago", "env", "page", "pretty", "when"]


def when(ms: int | None) -> str:
    """An epoch-ms time as ``2026-12-01 15:04:05Z`` (UTC: what the logs and events say)."""
    if ms is None:
        return "—"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def ago(ms: int | None) -> str:
    """How long before now an epoch-ms time was, to the second (``3m 05s``)."""
    if ms is None:
        return "—"
    return seconds(max(0.0, (now_ms() - ms) / 1000))


def seconds(value: float | None) -> str:
    """A duration: ``0.42 s`` below a minute, ``3m 05s`` or ``2h 01m`` above."""
    if value is None:
        return "—"
    if value < 60:
        return f"{value:.2f} s" if value < 10 else f"{value:.0f} s"
    minutes, secs = divmod(int(value), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    return f"{minutes // 60}h {minutes % 60:02d}m"


def pretty(value: Any) -> str:
    """A JSON value indented for a ``<pre>`` (strings as JSON too, so ``"1"`` and ``1`` differ)."""
    return json.dumps(value, indent=2, sort_keys=True, default=str)


env = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
env.filters.update(when=when, ago=ago, seconds=seconds, pretty=pretty, tojson_compact=lambda v: json.dumps(v))


def page(request: Request, template: str, viewer: object | None, *, status: int = 200, **context: Any) -> HTMLResponse:
    """Render ``template`` with the viewer (what they may do decides which buttons exist) and ``context``.

    ``viewer`` is an :class:`~service.gateway.dashboard.access.Viewer` (``None`` on the login form);
    typed loosely because the access module renders with this one.
    """
    html = env.get_template(template).render(request=request, viewer=viewer, path=request.url.path, **context)
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})
