"""The producer's side on fakeredis, shared by the client's and the worker's unit tests.

:func:`fake_client` is a :class:`JobClient` on an in-memory server; :func:`register` makes bundled
plugins live in its registry, as a worker serving them would.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from service.client.client import JobClient
from service.plugins.manifest import load_manifest
from service.plugins.registry import Registry, WorkerInfo
from service.settings import Settings
from tests.conftest import REPO_ROOT


def fake_client(redis: aioredis.Redis) -> JobClient:
    """A client in namespace ``ut`` on host ``here``, with a 2 KiB payload limit (small enough to hit)."""
    settings = Settings(redis_url="redis://fake", namespace="ut", hostname="here", max_payload_bytes=2048)
    return JobClient(redis, settings, owns_redis=False)


async def register(client: JobClient, *names: str) -> None:
    """Publish the manifests of the bundled plugins ``names``, served by a live worker ``w1`` on ``here``."""
    registry = Registry(client.redis, client.keys, heartbeat_s=5)
    manifests = [load_manifest(REPO_ROOT / "plugins" / name, name) for name in names]
    await registry.publish(WorkerInfo(worker_id="w1", hostname="here"), manifests)
