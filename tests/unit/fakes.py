"""The producer's side on fakeredis, shared by the client's and the worker's unit tests.

:func:`fake_client` is a :class:`JobClient` on an in-memory server; :func:`register` makes bundled
plugins live in its registry, as a worker serving them would.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from service.client.client import JobClient
from service.keys import Keys
from service.plugins.manifest import PluginManifest, load_manifest
from service.plugins.registry import Registry, WorkerInfo
from service.settings import Settings
from tests.conftest import REPO_ROOT


def fake_client(redis: aioredis.Redis) -> JobClient:
    """A client in namespace ``ut`` on host ``here``, with a 2 KiB payload limit (small enough to hit)."""
    settings = Settings(redis_url="redis://fake", namespace="ut", hostname="here", max_payload_bytes=2048)
    return JobClient(redis, settings, owns_redis=False)


def serving(
    keys: Keys,
    manifests: Sequence[PluginManifest],
    *,
    worker_id: str = "w1",
    hostname: str = "here",
    lanes: Sequence[str] = ("default",),
) -> WorkerInfo:
    """A live worker's entry that reads every queue of ``manifests`` in ``lanes``, any host and its own."""
    queues = [keys.queue(m.name, lane, host) for m in manifests for lane in lanes for host in (None, hostname)]
    return WorkerInfo(worker_id=worker_id, hostname=hostname, queues=queues)


async def register(client: JobClient, *names: str, lanes: Sequence[str] = ("default",)) -> None:
    """Publish the manifests of the bundled plugins ``names``, served by a live worker ``w1`` on ``here``."""
    registry = Registry(client.redis, client.keys, heartbeat_s=5)
    manifests = [load_manifest(REPO_ROOT / "plugins" / name, name) for name in names]
    await registry.publish(serving(client.keys, manifests, lanes=lanes), manifests)
