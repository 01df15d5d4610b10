"""The HTTP gateway (``actionq gateway``): actionq's JSON API under ``/v1``, with Server-Sent Events.

Any language can submit, follow and cancel jobs over HTTP; the gateway is a
:class:`~service.client.client.JobClient` behind FastAPI, so it validates, batches and follows
exactly as the Python client does (docs/gateway.md). Modules:

* :mod:`~service.gateway.app`: :func:`create_app`, the lifespan that owns the client, middleware;
* :mod:`~service.gateway.problems`: the one error shape and the translation of our errors to HTTP;
* :mod:`~service.gateway.auth`: bearer tokens with scopes;
* :mod:`~service.gateway.limits`: the request body limit;
* :mod:`~service.gateway.schemas`: request and reply models (the OpenAPI document);
* :mod:`~service.gateway.jobs`, :mod:`~service.gateway.catalog`, :mod:`~service.gateway.seed`:
  the routes (jobs; plugins, workers and health; seed 004's node endpoints);
* :mod:`~service.gateway.firehose` (``/v1/events``), :mod:`~service.gateway.queues`,
  :mod:`~service.gateway.operate` (remote control), :mod:`~service.gateway.deadletters`: the
  operator's routes; :mod:`~service.gateway.redact`: secret params shown as ``"***"``;
* :mod:`~service.gateway.metrics`: ``/metrics`` (Prometheus) and its counters;
* :mod:`~service.gateway.sse`: job events and stream items as SSE, with a bounded queue per client;
* :mod:`~service.gateway.server`: running it under uvicorn (loopback only without a token).

It imports the client and below, never the worker (DESIGN.md §2).
"""

from service.gateway.app import create_app

__all__ = ["create_app"]
