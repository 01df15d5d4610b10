"""Loading and disabling plugins on live workers by name: the control side of :class:`~service.client.core.PluginCore`.

Seed 004's ``get_plugins`` / ``purge_plugins`` / ``pop_plugin`` acted on the plugins of their own
process; here they are ``load_plugin`` and ``disable_plugin`` control commands
(:meth:`JobClient.control`) to the workers of a host. Each worker gets only the commands it needs
(no "already loaded" refusals), one after the other; the workers get theirs at once. A worker that
refuses or does not answer is reported by name, with its reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from service.client.client import JobClient
from service.errors import PluginError, PluginLoadError, UnknownPluginError
from service.events.control import Command
from service.plugins.registry import WorkerInfo
from service.settings import PluginEntry

__all__ = ["disable_plugins", "failures", "load_plugins", "serving", "workers_on"]

Plan = list[tuple[WorkerInfo, list[dict[str, Any]]]]


def serving(workers: Iterable[WorkerInfo], plugin: str) -> list[WorkerInfo]:
    """The live workers serving ``plugin`` that take jobs (a draining one is leaving)."""
    return [w for w in workers if plugin in w.plugins and not w.draining]


def failures(workers: Iterable[WorkerInfo], plugins: Sequence[str]) -> list[str]:
    """Why ``plugins`` are not served, where a worker says it failed to load them."""
    return [
        f"{name} failed on {w.worker_id}: {w.failed_plugins[name]}"
        for w in workers
        for name in plugins
        if name in w.failed_plugins
    ]


async def workers_on(client: JobClient, host: str) -> list[WorkerInfo]:
    """The live, not draining, workers ``host`` names (``"local"``, ``"any"`` or a hostname); none is an error."""
    workers = [w for w in await client.workers() if not w.draining]
    if host == "any":
        found = workers
    else:
        name = client.settings.hostname if host == "local" else host
        found = [w for w in workers if w.hostname == name]
    if not found:
        hosts = sorted({w.hostname for w in workers})
        where = f"live workers are on: {', '.join(hosts)}" if hosts else "no worker is live"
        raise PluginError(f"no live worker on host {host!r} to carry the command out ({where})")
    return found


async def load_plugins(client: JobClient, entries: Sequence[PluginEntry], host: str) -> None:
    """Load each of ``entries`` on the workers of ``host`` that lack it; :class:`PluginLoadError` if any refused.

    A worker loads a plugin from the entry's ``path`` when it names one (made absolute here),
    else from its own configuration (its ``plugins:`` entry, or ``<plugin_dir>/<name>``).
    """
    plan = [
        (w, [_load_args(e.name, e.path) for e in entries if e.name not in w.plugins])
        for w in await workers_on(client, host)
    ]
    problems = await _send(client, "load_plugin", plan)
    if problems:
        failed = sorted({name for name, _ in problems})
        raise PluginLoadError(", ".join(failed), "; ".join(why for _, why in problems))


async def disable_plugins(client: JobClient, host: str, plugin: str | None = None) -> None:
    """Disable ``plugin`` (``None``: every plugin) on the workers of ``host`` serving it.

    Raises :class:`UnknownPluginError` when none of them serves ``plugin``, :class:`PluginError`
    naming each worker that refused.
    """
    workers = await workers_on(client, host)
    if plugin is None:
        plan = [(w, [{"name": name} for name in sorted(w.plugins)]) for w in workers]
    else:
        targets = serving(workers, plugin)
        if not targets:
            raise UnknownPluginError(plugin, sorted({name for w in workers for name in w.plugins}))
        plan = [(w, [{"name": plugin}]) for w in targets]
    problems = await _send(client, "disable_plugin", plan)
    if problems:
        raise PluginError("disabling failed: " + "; ".join(why for _, why in problems))


def _load_args(name: str, path: Path | None) -> dict[str, Any]:
    return {"name": name} if path is None else {"name": name, "path": str(path.resolve())}


async def _send(client: JobClient, command: Command, plan: Plan) -> list[tuple[str, str]]:
    """Send each worker its commands: the ``(plugin, why)`` of each refusal or missing answer."""

    async def one(worker: WorkerInfo, args_list: list[dict[str, Any]]) -> list[tuple[str, str]]:
        problems = []
        for args in args_list:
            report = await client.control(command, worker=worker.worker_id, args=args)
            name = str(args["name"])
            problems += [(name, f"{name} on {a.worker_id}: {a.error}") for a in report.acks if not a.ok]
            problems += [(name, f"{name} on {w}: no answer") for w in report.missing]
        return problems

    found = await asyncio.gather(*(one(w, args) for w, args in plan if args))
    return [problem for problems in found for problem in problems]
