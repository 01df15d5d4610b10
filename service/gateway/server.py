"""Running the gateway: uvicorn serving :func:`~service.gateway.app.create_app`, loopback only without a token.

With no token configured (``gateway.tokens``) the API is open to whoever can connect, so it is
bound to loopback only: any other address is refused with the reason, and the start says so.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Generator

import structlog
import uvicorn

from service.errors import ConfigError
from service.gateway.app import create_app
from service.settings import Settings

__all__ = ["LOOPBACK", "bind_address", "serve", "uvicorn_config"]

log = structlog.get_logger("actionq.gateway")

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
# On SIGTERM, open event streams (which never end by themselves while a job runs) get this long
# before they are cut; a client reconnects with Last-Event-ID to another gateway and loses nothing.
_SHUTDOWN_GRACE_S = 5


class _Server(uvicorn.Server):
    """uvicorn's server, except that a SIGTERM or SIGINT it shut down gracefully for ends the process with 0.

    uvicorn re-raises the signal after its graceful shutdown, so the process would end "killed by
    SIGTERM"; an actionq process that stopped as asked exits 0, as the worker does.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def bind_address(settings: Settings, host: str | None = None, port: int | None = None) -> tuple[str, int]:
    """Where to listen: ``host``/``port`` over the settings; a non-loopback host without a token is refused."""
    host = host or settings.gateway.host
    port = port or settings.gateway.port
    if not settings.gateway.tokens and host not in LOOPBACK:
        raise ConfigError(
            f"the gateway refuses to listen on {host!r} with no token configured (anyone could submit jobs): "
            "set gateway.tokens (ACTIONQ_GATEWAY__TOKENS), or listen on 127.0.0.1"
        )
    return host, port


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    """Serve the API until SIGINT/SIGTERM (uvicorn's graceful shutdown: open streams are ended)."""
    if settings.redis_url is None:
        raise ConfigError("the gateway needs redis_url (config.yml, ACTIONQ_REDIS_URL or --redis-url)")
    host, port = bind_address(settings, host, port)
    open_api = not settings.gateway.tokens
    if open_api:
        note = "bound to loopback only because no token is configured (gateway.tokens)"
        print(f"actionq gateway: {note}", file=sys.stderr, flush=True)
    log.info("gateway_starting", url=f"http://{host}:{port}", tokens=[t.name for t in settings.gateway.tokens],
             loopback_only=open_api)  # fmt: skip
    _Server(uvicorn_config(settings, host, port)).run()


def uvicorn_config(settings: Settings, host: str, port: int) -> uvicorn.Config:
    """uvicorn's settings for the app of ``settings``, listening on ``host:port``."""
    return uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        log_config=None,
        access_log=settings.gateway.access_log,
        lifespan="on",
        server_header=False,
        timeout_keep_alive=settings.gateway.http_keep_alive_s,
        timeout_graceful_shutdown=_SHUTDOWN_GRACE_S,
    )
