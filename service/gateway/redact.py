"""Secret params: the values of arguments declared secret are shown as ``"***"`` in every response.

A plugin may declare an argument secret (an API key, a password a job needs). The job still
carries the value (the worker needs it), but whoever reads the job back over HTTP — a record, a
dead letter — sees ``"***"`` in its place: a ``read`` token is for watching jobs, not for
collecting their credentials.

Which arguments are secret is read from the manifest the registry holds, as the ``secret`` flag
of an argument (:class:`~service.plugins.manifest.ArgumentSpec`; in ``plugin.yml``:
``arguments: [{name: api_key, type: str, secret: true}]``). :func:`redact_params` itself takes
the set of names, so it does not depend on where they come from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.client.client import JobClient
from service.client.deadletters import DeadLetter
from service.models import JobRecord, JobRequest
from service.plugins.manifest import PluginManifest

__all__ = ["MASK", "Redactor", "redact_params", "redact_request", "secret_arguments"]

MASK = "***"


def secret_arguments(manifest: PluginManifest | None, action: str) -> frozenset[str]:
    """The names of ``action``'s arguments its manifest declares secret (none without a manifest)."""
    if manifest is None:
        return frozenset()
    spec = next((a for a in manifest.actions if a.name == action), None)
    if spec is None:
        return frozenset()
    return frozenset(arg.name for arg in spec.arguments if arg.secret)


def redact_params(params: Mapping[str, Any], secrets: frozenset[str]) -> dict[str, Any]:
    """``params`` with the value of every secret argument replaced by ``"***"`` (a copy; absent ones stay absent)."""
    return {name: MASK if name in secrets else value for name, value in params.items()}


def redact_request(request: JobRequest, secrets: frozenset[str]) -> JobRequest:
    """``request`` with its secret params masked (itself when nothing is secret)."""
    if not secrets or not secrets & request.params.keys():
        return request
    return request.model_copy(update={"params": redact_params(request.params, secrets)})


class Redactor:
    """Masks the secret params of requests, reading each plugin's manifest once per response."""

    def __init__(self, client: JobClient) -> None:
        self.client = client
        self._manifests: dict[str, PluginManifest | None] = {}

    async def secrets(self, plugin: str, action: str) -> frozenset[str]:
        """The secret arguments of ``plugin.action`` as the registry's manifest declares them."""
        if plugin not in self._manifests:
            entry = await self.client.registry.plugin(plugin)
            self._manifests[plugin] = entry.manifest if entry is not None else None
        return secret_arguments(self._manifests[plugin], action)

    async def request(self, request: JobRequest | None) -> JobRequest | None:
        """``request`` with its secret params masked."""
        if request is None:
            return None
        return redact_request(request, await self.secrets(request.plugin, request.action))

    async def record(self, record: JobRecord) -> JobRecord:
        """``record`` with its request's secret params masked (for ``GET /v1/jobs/{id}``)."""
        request = await self.request(record.request)
        return record if request is record.request else record.model_copy(update={"request": request})

    async def letter(self, letter: DeadLetter) -> DeadLetter:
        """``letter`` with its request's secret params masked."""
        request = await self.request(letter.request)
        return letter if request is letter.request else letter.model_copy(update={"request": request})
