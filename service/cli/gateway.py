"""``actionq gateway``: the HTTP API (docs/gateway.md), from the optional ``gateway`` extra."""

from __future__ import annotations

from typing import Annotated

import typer

from service.cli.app import app, fail, shared
from service.errors import ConfigError

__all__ = ["gateway_command"]


@app.command("gateway")
def gateway_command(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Address to listen on (default: gateway.host, 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65_535, help="Port (default: gateway.port, 8080)")] = None,
) -> None:
    """Serve the HTTP gateway: the JSON API under /v1, job events and streams as SSE; loopback only without a token."""
    options = shared(ctx)
    try:
        from service.gateway.server import serve
    except ImportError as exc:  # fastapi or uvicorn missing
        raise fail(ConfigError(f"the gateway needs its extra: pip install 'actionq[gateway]' ({exc})"), 2) from exc
    from service.logs import configure_logging
    from service.processes.parent import die_with_parent

    if not die_with_parent():  # started by `actionq up`, which is gone already
        return
    try:
        settings = options.settings()
        configure_logging(settings.log_format, settings.log_level)
        serve(settings, host, port)
    except ConfigError as exc:
        raise fail(exc, 2, verbose=options.verbose) from exc
