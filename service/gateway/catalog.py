"""What the deployment serves and whether it is up: ``/v1/plugins``, ``/v1/workers``, ``/healthz``, ``/readyz``.

``/v1/plugins`` gives each action's arguments as a JSON Schema object built from the manifest's
argument specs (the type language of :mod:`service.plugins.argtypes`, through pydantic), so a
caller in any language can validate or generate a form before submitting.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter

from service.errors import BrokerError
from service.gateway.auth import scoped
from service.gateway.jobs import Client
from service.gateway.problems import error_body
from service.gateway.schemas import ActionView, PluginView, Readiness
from service.plugins.manifest import ActionSpec, ArgumentSpec, PluginManifest
from service.plugins.registry import WorkerInfo
from service.redis.connection import broker_errors

__all__ = ["arguments_schema", "plugin_view", "router"]

router = APIRouter()


def _argument_schema(arg: ArgumentSpec) -> dict[str, Any]:
    schema = TypeAdapter(arg.annotation).json_schema()
    if arg.description:
        schema["description"] = arg.description
    if not arg.required:
        schema["default"] = arg.default
    if arg.secret:
        schema["writeOnly"] = True  # sent with a submit, never shown back (service.gateway.redact)
    return schema


def arguments_schema(action: ActionSpec) -> dict[str, Any]:
    """The action's arguments as one JSON Schema object (required ones listed, unknown ones refused)."""
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {arg.name: _argument_schema(arg) for arg in action.arguments},
        "additionalProperties": False,
    }
    required = [arg.name for arg in action.arguments if arg.required]
    if required:
        schema["required"] = required
    return schema


def plugin_view(manifest: PluginManifest, live: bool) -> PluginView:
    """A registry entry as the API shows it."""
    actions = [
        ActionView(name=a.name, description=a.description, timeout_s=a.timeout_s, tags=a.tags,
                   arguments=arguments_schema(a))
        for a in manifest.actions
    ]  # fmt: skip
    return PluginView(
        name=manifest.name, version=manifest.version, description=manifest.description, live=live,
        tags=manifest.tags, actions=actions,
    )  # fmt: skip


@router.get("/v1/plugins", tags=["registry"], dependencies=scoped("read"))
async def plugins(client: Client) -> list[PluginView]:
    """The plugins in the registry, each action's arguments as JSON Schema; ``live``: a live worker serves it."""
    return [plugin_view(entry.manifest, entry.live) for entry in await client.plugins()]


@router.get("/v1/workers", tags=["registry"], dependencies=scoped("read"))
async def workers(client: Client) -> list[WorkerInfo]:
    """The live workers: host, queues, plugins, running jobs, paused or draining."""
    return await client.workers()


@router.get("/healthz", tags=["health"])
async def healthz() -> dict[str, str]:
    """The gateway process is up (it says nothing about Redis or workers: see ``/readyz``)."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    tags=["health"],
    response_model=Readiness,
    responses={503: {"description": "Redis unreachable or no live worker; the error says which."}},
)
async def readyz(client: Client) -> Readiness | JSONResponse:
    """Ready: Redis answers and at least one worker is live (503 otherwise, saying which)."""
    try:
        with broker_errors("pinging Redis"):
            await client.redis.ping()
        live = await client.workers()
    except BrokerError as exc:
        return JSONResponse(error_body("NotReady", f"Redis is unreachable: {exc}"), status_code=503)
    if not live:
        message = "no live worker in this namespace (start one: `actionq worker`)"
        return JSONResponse(error_body("NotReady", message), status_code=503)
    return Readiness(ready=True, redis="ok", workers=len(live))
