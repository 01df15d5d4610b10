"""The FastAPI app of the gateway: :func:`create_app` builds it from the settings.

One :class:`~service.client.client.JobClient` per app, opened by the lifespan and closed with
it, serves every request (its pub/sub connection is shared by every event stream: one
subscription per process, routed in-process). The gateway starts even while Redis is down:
``/healthz`` answers, ``/readyz`` says what is missing, and requests that need Redis get 503.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import Receive, Scope, Send

from service.client.client import JobClient
from service.errors import ConfigError
from service.gateway import catalog, dashboard, deadletters, firehose, jobs, metrics, operate, queues, seed
from service.gateway.fastlane import FastLane
from service.gateway.limits import BodyLimit
from service.gateway.problems import install_handlers
from service.processes.heap import settle_heap
from service.redis.connection import connect
from service.settings import Settings
from service.tracing import provider_installed

__all__ = ["ClientFactory", "GatewayApp", "create_app", "open_client"]

ClientFactory = Callable[[Settings], Awaitable[JobClient]]
"""Opens the app's client (tests pass one that builds a client on fakeredis)."""

_VERSION = "1"


async def open_client(settings: Settings) -> JobClient:
    """A client on the configured Redis, without waiting for it to answer (``/readyz`` tells)."""
    if settings.redis_url is None:
        raise ConfigError("the gateway needs redis_url (config.yml, ACTIONQ_REDIS_URL or --redis-url)")
    return JobClient(connect(settings.redis_url), settings)


def create_app(settings: Settings, *, client_factory: ClientFactory = open_client) -> GatewayApp:
    """The gateway's app for ``settings`` (its ``gateway`` block: tokens, CORS, limits)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = await client_factory(settings)
        app.state.client = client
        settle_heap()  # the long-lived objects out of the collector's sight (service.processes.heap says why)
        metrics.count_submits(app, client)
        try:
            yield
        finally:
            await client.close()

    app = GatewayApp(
        title="actionq gateway",
        version=_VERSION,
        description="Submit, follow and cancel actionq jobs over HTTP; job events and stream items as SSE.",
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry: its HTTP spans join actionq's traces when tracing is on; its OTel
        # metrics and logs are off (the gateway's metrics are Prometheus'), which also spares every
        # request two provider lookups.
        telemetry={"metrics": False, "logs": False},
    )
    app.state.settings = settings
    install_handlers(app)
    app.include_router(jobs.router)
    app.include_router(catalog.router)
    app.include_router(seed.router)
    app.include_router(firehose.router)
    app.include_router(queues.router)
    app.include_router(operate.router)
    app.include_router(deadletters.router)
    dashboard.install(app)  # the pages at / and /ui (docs/dashboard.md)
    metrics.install(app)
    gateway = settings.gateway
    if gateway.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=gateway.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID"],
            expose_headers=["Location", "Retry-After"],
        )
    app.add_middleware(BodyLimit, limit=gateway.max_body_bytes)
    if not gateway.cors_origins:  # the common submit, answered before the routing (service.gateway.fastlane)
        if _traced(settings):  # inside FastAPI's stack: its HTTP spans cover the submits too
            app.add_middleware(FastLane, gateway=app, limit=gateway.max_body_bytes)
        else:
            app.fast_lane = FastLane(app.stack, gateway=app, limit=gateway.max_body_bytes)
    return app


class GatewayApp(FastAPI):
    """FastAPI, with :class:`~service.gateway.fastlane.FastLane` in front of its whole stack when set.

    In front: before FastAPI's own ``__call__`` (its telemetry check reads the tracer provider on
    every request), Starlette's error and exception middlewares and the body limits, which cost
    the gateway about a tenth of a submit's CPU (py-spy, 64 submits in flight). Only when nothing
    has to see every request: no CORS, no tracing (:func:`create_app` decides).
    """

    fast_lane: FastLane | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lane = self.fast_lane
        await (self.stack if lane is None else lane)(scope, receive, send)

    async def stack(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app itself: FastAPI's middleware stack and routing."""
        await super().__call__(scope, receive, send)


def _traced(settings: Settings) -> bool:
    """Whether the gateway's requests are traced: actionq's tracing on, or a tracer provider installed already
    (FastAPI's HTTP spans follow the installed provider)."""
    return settings.tracing.enabled or provider_installed()
