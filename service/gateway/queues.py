"""``GET /v1/queues``: each queue's jobs by state (ready, deferred, running) and its oldest wait, read at request time.

The numbers come from :func:`service.client.queues.queue_depths`, whose docstring says how a
ready, a deferred and a running entry are told apart from the queue's scores and the jobs'
leases, in bounded work (no scan of every job, no record read). The queues listed are those a
worker served lately (the workers' heartbeats record them) and those live workers read now;
``served`` says whether one does.
"""

from __future__ import annotations

from fastapi import APIRouter

from service.client.queues import QueueDepth, known_queues, queue_depths
from service.gateway.auth import scoped
from service.gateway.jobs import Client
from service.gateway.schemas import QueueView
from service.models import now_ms

__all__ = ["queue_view", "router"]

router = APIRouter(tags=["operations"])


def queue_view(depth: QueueDepth, prefix: str, live: set[str]) -> QueueView:
    """A queue's depth as the API shows it."""
    name = depth.queue
    return QueueView(
        queue=name.key.removeprefix(prefix), lane=name.lane, plugin=name.plugin, host=name.host, ready=depth.ready,
        deferred=depth.deferred, running=depth.running, oldest_ready_age_s=depth.oldest_ready_age_s,
        exact=depth.exact, served=name.key in live, last_served_ms=depth.last_served_ms,
    )  # fmt: skip


@router.get("/v1/queues", dependencies=scoped("read"))
async def queues(client: Client) -> list[QueueView]:
    """Every known queue: ready, deferred and running jobs, the oldest ready job's wait, whether it is served."""
    live = {queue for worker in await client.workers() for queue in worker.queues}
    known = await known_queues(client.redis, client.keys, live)
    lease_ms = int(client.settings.lease_s * 1000)
    depths = await queue_depths(client.redis, client.keys, known, now_ms=now_ms(), lease_ms=lease_ms)
    return [queue_view(depth, client.keys.queue_prefix(), live) for depth in depths]
