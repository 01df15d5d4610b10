"""Starting a worker process and knowing when it is up: ``actionq up``, the tests and the bench.

A worker registers itself in the namespace's workers ZSET under an id that embeds its pid
(``<host>-<pid>-<random>``, see :func:`service.runtime.new_worker_id`), so whoever started it can
tell when *that* process is ready, among others serving the same namespace.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from redis.asyncio import Redis

from service.errors import ActionQError
from service.keys import Keys
from service.processes.parent import owned_env

__all__ = [
    "WorkerStartError",
    "has_pid",
    "service_command",
    "spawn",
    "spawn_worker",
    "wait_registered",
    "worker_command",
]

_POLL_S = 0.05


class WorkerStartError(ActionQError):
    """A worker process exited, or did not register, before it was ready."""


def worker_command(
    config: Path | None = None, *, options: Sequence[str] = (), worker_options: Sequence[str] = ()
) -> list[str]:
    """``python -m service [--config config] [options] worker [worker_options]`` with this interpreter.

    ``options`` are the shared ones (``--redis-url``, ``--namespace``, ...), given before the command.
    """
    return service_command("worker", config, options=options, command_options=worker_options)


def service_command(
    command: str, config: Path | None = None, *, options: Sequence[str] = (), command_options: Sequence[str] = ()
) -> list[str]:
    """``python -m service [--config config] [options] <command> [command_options]`` with this interpreter."""
    shared = [*(["--config", str(config)] if config else []), *options]
    return [sys.executable, "-m", "service", *shared, command, *command_options]


def spawn_worker(
    config: Path | None,
    env: Mapping[str, str],
    *,
    log_path: Path | None = None,
    cwd: Path | None = None,
    new_session: bool = False,
    owned: bool = False,
) -> subprocess.Popen[bytes]:
    """Start a worker; its output goes to ``log_path`` (or is inherited when there is none).

    ``owned``: the worker exits when this process does, however it ends (:mod:`service.processes.parent`);
    wanted with ``new_session``, where no terminal signal reaches the worker any more.
    """
    return spawn(worker_command(config), env, log_path=log_path, cwd=cwd, new_session=new_session, owned=owned)


def spawn(
    command: Sequence[str],
    env: Mapping[str, str],
    *,
    log_path: Path | None = None,
    cwd: Path | None = None,
    new_session: bool = False,
    owned: bool = False,
) -> subprocess.Popen[bytes]:
    """Start ``command`` (a worker, the gateway) as :func:`spawn_worker` does."""
    log = log_path.open("wb") if log_path is not None else None
    try:
        return subprocess.Popen(
            list(command),
            env=owned_env(env) if owned else dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT if log is not None else None,
            start_new_session=new_session,
        )
    finally:
        if log is not None:
            log.close()  # the child has its own copy


def has_pid(worker_ids: Iterable[bytes | str], pid: int) -> bool:
    """True if one of ``worker_ids`` is the id of the worker process ``pid``."""
    marker = f"-{pid}-"
    return any(marker in (i.decode() if isinstance(i, bytes) else i) for i in worker_ids)


async def wait_registered(redis: Redis, keys: Keys, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Wait until the worker ``proc`` is in the workers ZSET.

    :class:`WorkerStartError` if it exits first, or is not there within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while not has_pid(await redis.zrange(keys.workers(), 0, -1), proc.pid):
        if proc.poll() is not None:
            raise WorkerStartError(f"worker {proc.pid} exited with {proc.returncode} before registering")
        if time.monotonic() > deadline:
            raise WorkerStartError(f"worker {proc.pid} did not register in {keys.workers()} within {timeout_s:g}s")
        await asyncio.sleep(_POLL_S)
