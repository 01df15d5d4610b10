"""Remote control over HTTP: ``POST /v1/workers/{id}/pause|resume|drain|stop`` and plugin load/disable/reload.

Each route is one :meth:`JobClient.control` call, as the CLI's ``actionq pause --worker`` and
``actionq plugin load`` make it: the command is published, every targeted live worker asks its
control delegates, acts, and acknowledges; the reply lists each answer as the CLI prints it
(``acted`` with its result, ``refused`` with the worker's reason, ``no_answer``).

A worker command names one live worker (404 ``WorkerNotFoundError`` otherwise) and always returns
its answer, refused or not (``ok`` says whether it acted): the command was delivered and answered.
A plugin command loads or unloads code, so a refusal is an error: 409 ``ControlRefusedError``
with every refusing worker's reason (``plugin_commands: false``, a path outside the allowed
folders, a plugin that failed to import) and who did not answer in time.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path

from service.events.control import Command, ControlReport
from service.gateway.auth import scoped
from service.gateway.jobs import AppSettings, Client
from service.gateway.problems import ApiError
from service.gateway.schemas import ControlAnswer, ControlOptions, ControlReply, PluginCommandBody
from service.plugins.registry import WorkerInfo

__all__ = ["control_reply", "router"]

router = APIRouter(tags=["operations"])

WorkerIdPath = Annotated[str, Path(min_length=1, max_length=200, description="The worker id (from /v1/workers).")]
PluginPath = Annotated[str, Path(min_length=1, max_length=200, description="The plugin's name.")]

_WORKER_COMMANDS: dict[Command, str] = {
    "pause": "Pause the worker: it takes no new jobs and keeps running the ones it has.",
    "resume": "Resume a paused worker.",
    "drain": "Drain the worker: take no more jobs, finish the running ones, then stop.",
    "stop": "Stop the worker gracefully (as SIGTERM: running jobs get the grace period).",
}
_PLUGIN_COMMANDS: dict[str, tuple[Command, str]] = {
    "load": ("load_plugin", "Load (and enable) the plugin on running workers."),
    "disable": ("disable_plugin", "Disable and unload the plugin on running workers."),
    "reload": ("reload_plugin", "Reload the plugin from its folder: the new version serves the next job."),
}


def control_reply(report: ControlReport, timeout: float) -> ControlReply:
    """The report as the CLI shows it: every ack (acted or refused, with the reason), then who did not answer."""
    answers = [
        ControlAnswer(worker_id=a.worker_id, hostname=a.hostname, answer="acted" if a.ok else "refused",
                      result=a.result, error=a.error)
        for a in report.acks
    ]  # fmt: skip
    answers += [
        ControlAnswer(worker_id=w, hostname=None, answer="no_answer", error=f"no answer within {timeout:g}s")
        for w in report.missing
    ]
    ok = bool(answers) and all(a.answer == "acted" for a in answers)
    return ControlReply(command=report.command.command, command_id=report.command.id, ok=ok, answers=answers)


def _not_found(what: str, live: list[WorkerInfo]) -> ApiError:
    names = ", ".join(sorted(w.worker_id for w in live)) or "none"
    return ApiError(404, "WorkerNotFoundError", f"no live worker {what} (live: {names})")


def _add_worker_command(command: Command, doc: str) -> None:
    async def run(
        worker_id: WorkerIdPath,
        client: Client,
        settings: AppSettings,
        body: Annotated[ControlOptions | None, Body()] = None,
    ) -> ControlReply:
        live = await client.workers()
        if all(w.worker_id != worker_id for w in live):
            raise _not_found(repr(worker_id), live)
        timeout = min((body or ControlOptions()).timeout_s, settings.gateway.max_wait_s)
        return control_reply(await client.control(command, worker=worker_id, timeout=timeout), timeout)

    run.__doc__ = doc
    run.__name__ = f"worker_{command}"
    router.post(f"/v1/workers/{{worker_id}}/{command}", dependencies=scoped("control"), summary=doc)(run)


def _refusal(plugin: str, verb: str, reply: ControlReply) -> ApiError:
    why = "; ".join(f"{a.worker_id}: {a.error}" for a in reply.answers if a.answer != "acted")
    return ApiError(409, "ControlRefusedError", f"{verb} {plugin} was refused: {why}")


def _add_plugin_command(verb: str, command: Command, doc: str) -> None:
    async def run(
        name: PluginPath,
        client: Client,
        settings: AppSettings,
        body: Annotated[PluginCommandBody | None, Body()] = None,
    ) -> ControlReply:
        opts = body or PluginCommandBody()
        host = None if opts.host == "any" else settings.hostname if opts.host == "local" else opts.host
        live = await client.workers()
        if not any((opts.worker in (None, w.worker_id)) and host in (None, w.hostname) for w in live):
            raise _not_found(f"{opts.worker!r}" if opts.worker else f"on host {opts.host!r}", live)
        args: dict[str, Any] = {"name": name, **({"path": opts.path} if opts.path else {})}
        timeout = min(opts.timeout_s, settings.gateway.max_wait_s)
        report = await client.control(command, worker=opts.worker, host=host, args=args, timeout=timeout)
        reply = control_reply(report, timeout)
        if not reply.ok:
            raise _refusal(name, verb, reply)
        return reply

    run.__doc__ = doc
    run.__name__ = f"plugin_{verb}"
    router.post(f"/v1/plugins/{{name}}/{verb}", dependencies=scoped("admin"), summary=doc)(run)


for _command, _doc in _WORKER_COMMANDS.items():
    _add_worker_command(_command, _doc)
for _verb, (_plugin_command, _doc) in _PLUGIN_COMMANDS.items():
    _add_plugin_command(_verb, _plugin_command, _doc)
