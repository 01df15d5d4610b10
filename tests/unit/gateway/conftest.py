"""The gateway's app on fakeredis, driven in-process with httpx (no server, no worker).

``gateway(**gateway_settings)`` opens the app's lifespan with a :class:`JobClient` on the test's
fakeredis and yields a :class:`Gateway`: an ``httpx.AsyncClient`` on the app and that client
(to arrange state the way a worker would, or to compare with what the Python client says).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from service.client.client import JobClient
from service.gateway import create_app
from service.settings import Settings

READ = "r-token-0123456789abcdef"
SUBMIT = "s-token-0123456789abcdef"
CONTROL = "c-token-0123456789abcdef"
ADMIN = "a-token-0123456789abcdef"
TOKENS: list[dict[str, Any]] = [
    {"name": "reader", "token": READ, "scopes": ["read"]},
    {"name": "producer", "token": SUBMIT, "scopes": ["read", "submit"]},
    {"name": "operator", "token": CONTROL, "scopes": ["control"]},
    {"name": "root", "token": ADMIN, "scopes": ["admin"]},
]


@dataclass
class Gateway:
    """The app under test (``http``) and the client it runs on (``client``)."""

    http: httpx.AsyncClient
    client: JobClient


GatewayFactory = Callable[..., AbstractAsyncContextManager[Gateway]]


def settings_for(**gateway: Any) -> Settings:
    """Settings for namespace ``ut`` on host ``here`` with a 2 KiB payload limit, plus ``gateway`` keys."""
    return Settings(redis_url="redis://fake", namespace="ut", hostname="here", max_payload_bytes=2048, gateway=gateway)


@pytest.fixture
def gateway(fake_redis: aioredis.Redis) -> GatewayFactory:
    """Factory: ``async with gateway(**gateway_settings) as gw`` runs the app on fakeredis."""

    @asynccontextmanager
    async def start(**gateway_settings: Any) -> AsyncIterator[Gateway]:
        settings = settings_for(**gateway_settings)
        client = JobClient(fake_redis, settings, owns_redis=False)

        async def factory(_: Settings) -> JobClient:
            return client

        app = create_app(settings, client_factory=factory)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
                yield Gateway(http, client)

    return start
