"""The gateway's Prometheus endpoint, ``GET /metrics``: its own counts, and the queues read from Redis when scraped.

====================================  ===================  ==============================================
metric                                labels               what
====================================  ===================  ==============================================
``actionq_jobs_total``                ``plugin, action,    jobs this gateway created (``state="submitted"``;
                                      state``              an idempotent repeat is not counted)
``actionq_sse_clients``               (none)               event streams this gateway holds open now
``actionq_queue_depth``               ``queue, state``     jobs per queue: ``ready``, ``running``, ``deferred``
``actionq_queue_oldest_age_seconds``  ``queue``            how long the oldest ready job has been due
``actionq_workers_online``            (none)               live workers (heartbeat within the window)
``actionq_gateway_redis_up``          (none)               1 if this scrape could read Redis, else 0
====================================  ===================  ==============================================

The queue gauges come from :mod:`service.client.queues` at scrape time: a bounded number of
commands per queue, in two round trips, never a ``SCAN``. When Redis cannot be read the scrape
still answers, with this gateway's own counts and ``actionq_gateway_redis_up 0``.

The route needs the ``read`` scope when tokens are configured and is open otherwise, like every
other read of the API; give Prometheus a ``read`` token (``authorization: {credentials: ...}``).
It is left out of the OpenAPI document: its body is Prometheus's text format, not JSON.

Open event streams are counted by the response itself (:class:`~service.gateway.sse.EventStream`,
which every event-stream route answers with): ``sse_open`` goes up as it starts and down when it
ends, however it ends. Not a middleware that watches every message sent: with a thousand
followers that wrapper ran ten thousand times a second.
Each gateway process has its own :class:`~prometheus_client.CollectorRegistry` (``app.state.metrics``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import structlog
from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, Metric

from service.client.client import JobClient
from service.client.handle import JobHandle
from service.client.queues import known_queues, queue_depths
from service.errors import ActionQError
from service.gateway.auth import scoped
from service.models import JobRequest, now_ms

__all__ = ["GatewayMetrics", "count_submits", "install", "router"]

log = structlog.get_logger("actionq.gateway")

# Distinct (plugin, action) pairs counted before the rest share one series (a gateway validates
# submits against the registry, so this is a safety net, not a limit anyone should reach).
MAX_SERIES = 1000
OTHER = "(other)"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _Submitted:
    """``actionq_jobs_total{state="submitted"}``: plain counts, made samples when scraped.

    prometheus-client's ``Counter`` takes a lock per increment (it may be shared by threads): in a
    batch of 500 jobs that was ~4 % of the gateway's CPU (py-spy). The gateway counts on its event
    loop only, so ints in a dict do, reported through prometheus-client's custom-collector
    interface (``collect``), which is how its docs say to expose counts kept elsewhere.
    """

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def add(self, plugin: str, action: str) -> None:
        counts = self.counts
        key = (plugin, action)
        if key not in counts and len(counts) >= MAX_SERIES:
            key = (OTHER, OTHER)
        counts[key] = counts.get(key, 0) + 1

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "actionq_jobs", "Jobs created by this gateway (state: submitted).", labels=["plugin", "action", "state"]
        )
        for (plugin, action), count in self.counts.items():
            family.add_metric([plugin, action, "submitted"], count)
        yield family


class GatewayMetrics:
    """The metrics of one gateway process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.jobs = _Submitted()
        self.registry.register(self.jobs)
        self.sse = Gauge("actionq_sse_clients", "Event streams this gateway holds open.", registry=self.registry)
        self.sse_open = 0
        self.sse.set_function(lambda: self.sse_open)
        self.depth = Gauge(
            "actionq_queue_depth", "Jobs per queue and state (ready, running, deferred), read at scrape time.",
            ["queue", "state"], registry=self.registry,
        )  # fmt: skip
        self.oldest = Gauge(
            "actionq_queue_oldest_age_seconds", "How long the oldest ready job of each queue has been due.",
            ["queue"], registry=self.registry,
        )  # fmt: skip
        self.workers = Gauge("actionq_workers_online", "Live workers.", registry=self.registry)
        self.redis_up = Gauge("actionq_gateway_redis_up", "1 if the last scrape read Redis.", registry=self.registry)

    def submitted(self, plugin: str, action: str) -> None:
        """Count one job this gateway created."""
        self.jobs.add(plugin, action)

    async def refresh(self, client: JobClient) -> None:
        """Read the queue and worker gauges from Redis (on failure: cleared, ``redis_up`` 0)."""
        self.depth.clear()
        self.oldest.clear()
        try:
            workers = await client.workers()
            queues = await known_queues(client.redis, client.keys, (q for w in workers for q in w.queues))
            depths = await queue_depths(
                client.redis, client.keys, queues, now_ms=now_ms(), lease_ms=int(client.settings.lease_s * 1000)
            )
        except ActionQError as exc:
            log.warning("metrics_redis_unreadable", error=str(exc))
            self.redis_up.set(0)
            return
        self.redis_up.set(1)
        self.workers.set(len(workers))
        for depth in depths:
            name = depth.queue.key
            self.depth.labels(name, "ready").set(depth.ready)
            self.depth.labels(name, "running").set(depth.running)
            self.depth.labels(name, "deferred").set(depth.deferred)
            self.oldest.labels(name).set(depth.oldest_ready_age_s or 0.0)

    def render(self) -> bytes:
        """The registry in Prometheus's text format."""
        return generate_latest(self.registry)


router = APIRouter(tags=["operations"])


@router.get("/metrics", dependencies=scoped("read"), include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus metrics of this gateway and of the queues it reads."""
    state: GatewayMetrics = request.app.state.metrics
    await state.refresh(request.app.state.client)
    return Response(state.render(), media_type=CONTENT_TYPE_LATEST)


def count_submits(app: FastAPI, client: JobClient) -> None:
    """Count the jobs ``client`` creates (the app's client: every route submits through it, dead-letter
    replays included), through its ``on_submitted`` hook."""
    state: GatewayMetrics = app.state.metrics

    def counted(request: JobRequest, handle: JobHandle) -> None:
        if handle.created:
            state.submitted(request.plugin, request.action)

    client.on_submitted.append(counted)


def install(app: FastAPI) -> None:
    """Mount ``/metrics`` on ``app`` (its registry in ``app.state.metrics``, which the event streams count in)."""
    app.state.metrics = GatewayMetrics()
    app.include_router(router)
