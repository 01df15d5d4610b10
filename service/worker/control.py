"""The worker's side of remote control: act on a :class:`ControlCommand` and acknowledge it.

Before acting, the worker asks its control delegates (``invoke_control(command, **args)``): a
delegate that answers ``False`` vetoes the command (the ack says so); other answers are returned
in the ack. Pause stops taking jobs and keeps running the ones it has; drain also stops the worker
once they are done; stop is a graceful stop (as SIGTERM); plugins can be loaded, disabled and
reloaded — a reloaded plugin is imported afresh, so its new version serves the next job.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import structlog
from redis.asyncio import Redis

from service.errors import ActionQError
from service.events.control import ACK_TTL_S, ControlAck, ControlCommand
from service.events.models import WorkerPausedEvent, WorkerResumedEvent
from service.keys import Keys
from service.redis.cluster import is_cluster, publish
from service.worker.runtime import Puller, WorkerRuntime

__all__ = ["ControlHandler", "Puller", "record_ack", "wait_idle"]

log = structlog.get_logger("actionq.worker")


class ControlHandler:
    """Carries out control commands for one worker runtime."""

    def __init__(self, runtime: WorkerRuntime) -> None:
        self.runtime = runtime
        self._background: set[asyncio.Task[Any]] = set()

    def on_message(self, message: bytes) -> None:
        """A command arrived on the control channel (run it in the background)."""
        try:
            cmd = ControlCommand.model_validate_json(message)
        except ValueError as exc:
            log.warning("bad_control_message", error=str(exc)[:200])
            return
        runtime = self.runtime
        if not cmd.targets(runtime.worker_id, runtime.settings.hostname):
            return
        refused = cmd.verified(runtime.signer)
        coro = self._refuse(cmd, refused) if refused else self._handle(cmd)
        task = asyncio.create_task(coro, name=f"actionq-control-{cmd.command}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _refuse(self, cmd: ControlCommand, reason: str) -> None:
        """Acknowledge a command this worker will not act on, saying why (recorded like any ack)."""
        runtime = self.runtime
        log.warning("control_command_refused", command=cmd.command, id=cmd.id, reason=reason)
        ack = ControlAck(
            command_id=cmd.id, worker_id=runtime.worker_id, hostname=runtime.settings.hostname, ok=False, error=reason
        )
        await record_ack(runtime.redis, runtime.keys, ack)

    async def _handle(self, cmd: ControlCommand) -> None:
        runtime = self.runtime
        ok, result, error = True, None, None
        answers = await runtime.delegates.invoke_control(cmd.command, sender=runtime, **cmd.args)
        if any(answer is False for answer in answers):
            ok, error = False, "vetoed by a control delegate"
        else:
            try:
                result = await self._act(cmd)
            except (ActionQError, KeyError, ValueError, PermissionError) as exc:
                ok, error = False, f"{type(exc).__name__}: {exc}"
        extra = [a for a in answers if a is not None and a is not True]
        if extra:
            result = {"result": result, "delegates": extra}
        log.info("control_command", command=cmd.command, id=cmd.id, ok=ok, error=error)
        ack = ControlAck(
            command_id=cmd.id, worker_id=runtime.worker_id, hostname=runtime.settings.hostname, ok=ok,
            result=result, error=error,
        )  # fmt: skip
        await record_ack(runtime.redis, runtime.keys, ack)
        if ok and cmd.command in ("drain", "stop"):
            self._finish(cmd.command)

    async def _act(self, cmd: ControlCommand) -> Any:
        puller, runtime = self._puller(), self.runtime
        if cmd.command in ("pause", "drain"):
            puller.allow_pick_jobs = False
            runtime.info.paused = True
            runtime.info.draining = cmd.command == "drain"
            runtime.wake.set()  # the loop takes this worker off the idle sets: no more jobs handed here
            await runtime.publish()
            runtime.notify(WorkerPausedEvent(**runtime.me(), draining=cmd.command == "drain",
                                             running_jobs=runtime.running_jobs))  # fmt: skip
            return {"running_jobs": runtime.running_jobs}
        if cmd.command == "resume":
            puller.allow_pick_jobs = True
            runtime.info.paused = runtime.info.draining = False
            runtime.wake.set()
            await runtime.publish()
            runtime.notify(WorkerResumedEvent(**runtime.me()))
            return {"running_jobs": runtime.running_jobs}
        if cmd.command == "stop":
            return {"running_jobs": runtime.running_jobs}
        return await self._plugin_command(cmd)

    async def _plugin_command(self, cmd: ControlCommand) -> Any:
        runtime, name = self.runtime, str(cmd.args["name"])
        if not runtime.settings.plugin_commands:
            raise PermissionError("remote plugin commands are turned off on this worker (plugin_commands: false)")
        loader = runtime.loader
        if cmd.command == "disable_plugin":
            await runtime.unload_plugin(name)
            return {"plugin": name, "loaded": False}
        if cmd.command == "reload_plugin":
            path = loader.loaded[name].path if name in loader.loaded else self._path(name, cmd.args)
            await runtime.unload_plugin(name, missing_ok=True)
        else:
            path = self._path(name, cmd.args)
        version = await runtime.load_plugin(name, path)
        return {"plugin": name, "loaded": True, "version": version}

    def _path(self, name: str, args: dict[str, Any]) -> Path:
        """The folder to load ``name`` from; refused outside the folders this worker may load from."""
        settings = self.runtime.settings
        if args.get("path"):
            path = Path(str(args["path"]))
        else:
            entry = next((e for e in settings.plugins if e.name == name), None)
            path = settings.plugin_path(entry) if entry is not None else settings.plugin_dir / name
        if not settings.may_load_from(path):
            raise PermissionError(
                f"{path} is outside the folders this worker loads plugins from "
                "(plugin_dir, the configured plugins' folders and allowed_plugin_dirs)"
            )
        return path

    def _finish(self, command: str) -> None:
        puller = self._puller()
        self.runtime.stop_reason = f"{command} command"
        if command == "stop":
            puller.handle_sig_wait_for_completion(signal.SIGTERM)  # as SIGTERM: grace, then hand back
            return

        async def drain() -> None:
            await wait_idle(puller.tasks)
            puller.handle_sig(signal.SIGTERM)  # nothing runs any more: stop now

        task = asyncio.create_task(drain(), name="actionq-drain")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _puller(self) -> Puller:
        puller = self.runtime.puller
        if puller is None:
            raise ValueError("the worker's queue loop is not running yet")
        return puller


async def record_ack(redis: Redis, keys: Keys, ack: ControlAck) -> None:
    """Keep ``ack`` (a few minutes) and publish it to whoever is waiting."""
    body = ack.model_dump_json()
    async with redis.pipeline(transaction=False) as pipe:
        pipe.rpush(keys.control_acks(ack.command_id), body)
        pipe.expire(keys.control_acks(ack.command_id), ACK_TTL_S)
        if not is_cluster(redis):  # redis-py's cluster pipeline refuses a PUBLISH (no key to route by)
            pipe.publish(keys.control_acks_channel(), body)
        await pipe.execute()
    if is_cluster(redis):
        await publish(redis, keys.control_acks_channel(), body)


async def wait_idle(tasks: dict[str, asyncio.Task[Any]]) -> None:
    """Wait until none of ``tasks`` (the worker's running jobs) is left (for a drain)."""
    while any(not t.done() for t in tasks.values()):
        await asyncio.wait([t for t in tasks.values() if not t.done()])
