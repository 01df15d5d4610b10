"""Seed 004's node endpoints, by their names, mapped onto the API.

The seed's nodes called each other over HTTP (``NetworkManager``); actionq's workers talk through
Redis, and these routes let code written against the seed's HTTP side keep working against the
gateway:

=====================  ==============================================================
``GET /ping``           the gateway is up (as ``/healthz``; no token needed)
``GET /has_plugin``     ``?name=``: whether a live worker serves the plugin
``POST /info``          this node: hostname, namespace, served plugins, live workers
``POST /execute``       submit and wait for the result: the seed's ``(result, error, request_id)``
``POST /execute_stream`` submit a generator action: its items as SSE (as ``/v1/jobs/{id}/stream``)
=====================  ==============================================================
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query
from fastapi.sse import ServerSentEvent

from service.client.client import JobClient
from service.errors import ActionQError, ResultTimeoutError
from service.gateway.auth import scoped
from service.gateway.jobs import AppSettings, Client
from service.gateway.schemas import ExecuteBody, ExecuteReply, HasPluginReply, InfoReply
from service.gateway.sse import EventStream, relay, sse_response, stream_items
from service.models import JobState
from service.settings import Settings

__all__ = ["router"]

router = APIRouter(tags=["seed 004"])


@router.get("/ping")
async def ping(settings: AppSettings) -> dict[str, str]:
    """The seed's health check: this node answers."""
    return {"status": "ok", "node": settings.hostname}


@router.get("/has_plugin", dependencies=scoped("read"))
async def has_plugin(name: Annotated[str, Query(min_length=1)], client: Client) -> HasPluginReply:
    """Whether a live worker serves plugin ``name``."""
    served = any(entry.live and entry.name == name for entry in await client.plugins())
    return HasPluginReply(name=name, has_plugin=served)


@router.post("/info", dependencies=scoped("read"))
async def info(
    client: Client,
    settings: AppSettings,
    _peer: Annotated[Any, Body(description="The caller's info (ignored).")] = None,
) -> InfoReply:
    """This node: its host, namespace, the plugins live workers serve, how many workers are live."""
    plugins = sorted(entry.name for entry in await client.plugins() if entry.live)
    live = await client.workers()
    return InfoReply(node=settings.hostname, namespace=settings.namespace, plugins=plugins, workers=len(live))


async def _submit(client: JobClient, body: ExecuteBody) -> str:
    handle = await client.submit(body.plugin, body.method, body.args, host=body.host, author=body.author)
    return handle.job_id


def _wait_s(body: ExecuteBody, settings: Settings) -> float:
    cap = settings.gateway.max_wait_s
    return cap if body.timeout is None else min(body.timeout, cap)


@router.post("/execute", dependencies=scoped("submit"))
async def execute(body: ExecuteBody, client: Client, settings: AppSettings) -> ExecuteReply:
    """Run ``plugin.method(args)`` and return ``(result, error, request_id)``; past the wait, 504 and cancelled."""
    job_id = await _submit(client, body)
    handle = client.job(job_id)
    wait_s = _wait_s(body, settings)
    try:
        record = await handle.wait(wait_s)
    except ResultTimeoutError:
        with contextlib.suppress(ActionQError):  # nobody will take its result: stop it (as PluginCore.execute)
            await handle.cancel(reason=f"the caller's timeout of {wait_s:g}s passed", timeout=0)
        raise
    if record.state is JobState.SUCCEEDED:
        return ExecuteReply(result=record.result, request_id=job_id)
    return ExecuteReply(error=record.error, request_id=job_id)


async def _submitted(body: ExecuteBody, client: Client) -> str:
    """Submit before the event stream starts, so a refused submit is an ordinary 4xx reply."""
    return await _submit(client, body)


@router.post("/execute_stream", response_class=EventStream, dependencies=scoped("submit"))
async def execute_stream(
    job_id: Annotated[str, Depends(_submitted)], client: Client, settings: AppSettings
) -> EventStream:
    """Run a generator action: a ``job`` event (its id), then its items as ``/v1/jobs/{id}/stream`` sends them."""

    async def events() -> AsyncIterator[ServerSentEvent]:
        yield ServerSentEvent(event="job", raw_data=json.dumps({"request_id": job_id}))
        async for event in relay(stream_items(client, job_id, 0), settings.gateway, what=f"stream:{job_id}"):
            yield event

    return sse_response(events())
