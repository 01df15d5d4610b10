"""The bench environment: a private redis-server, actionq worker subprocesses, a :class:`JobClient`.

::

    async with BenchEnv() as env:
        worker = await env.start_worker({"plugins": [plugin_entry("PluginB")]})
        handle = await env.client.submit("PluginB", "calculate_square", {"x": 6})
        ...

Each :class:`BenchEnv` starts its own server through :class:`service.embedded.EmbeddedRedis` (never
the shared Redis on 6379) and stops it, and every worker it started, on exit. Workers are
``python -m service --config <tmp>/config-N.yml worker`` with ``ACTIONQ_REDIS_URL`` and
``ACTIONQ_NAMESPACE`` set (outer ``ACTIONQ_*`` variables are not passed on); a worker is ready once
its id, which embeds ``-<pid>-``, is in the namespace's workers ZSET.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from service.client.client import JobClient
from service.keys import Keys
from service.processes.embedded import EmbeddedRedis
from service.processes.spawn import WorkerStartError, spawn_worker, wait_registered

__all__ = ["BENCH_PLUGIN_DIR", "REPO_ROOT", "BenchEnv", "BenchError", "Worker", "plugin_entry"]

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_PLUGIN_DIR = Path(__file__).resolve().parent / "plugins"
# A cold interpreter plus plugin imports takes a few seconds on a busy 2-core machine.
WORKER_READY_TIMEOUT_S = 30.0
# Above the default shutdown grace (10 s) of an idle worker, with slack.
WORKER_STOP_TIMEOUT_S = 20.0
_LOG_TAIL_LINES = 30


class BenchError(RuntimeError):
    """The bench environment could not be set up (a worker did not start, or died)."""


def plugin_entry(name: str, path: Path | None = None) -> dict[str, str]:
    """A ``plugins:`` entry loading ``name`` by absolute path (default: bench/plugins, then plugins/)."""
    if path is None:
        path = BENCH_PLUGIN_DIR / name
        if not path.is_dir():
            path = REPO_ROOT / "plugins" / name
    return {"name": name, "path": str(path.resolve())}


@dataclass
class Worker:
    """A worker subprocess started by :meth:`BenchEnv.start_worker`."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    config: dict[str, Any]
    env: dict[str, str]

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self.proc.pid

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self.proc.poll() is None

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of what the worker wrote."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    async def stop(self, timeout_s: float = WORKER_STOP_TIMEOUT_S) -> int:
        """SIGTERM, wait for the exit code; SIGKILL if it outlives ``timeout_s``."""
        if self.running:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.proc.wait, timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return await asyncio.to_thread(self.proc.wait)


class BenchEnv:
    """A private Redis server, a namespace, the workers started on it and a client (async context manager)."""

    def __init__(self, namespace: str | None = None, *, log_level: str = "WARNING") -> None:
        self.namespace = namespace or "bench" + uuid.uuid4().hex[:8]
        self.log_level = log_level
        self.server = EmbeddedRedis()
        self.workers: list[Worker] = []
        self._spawned = 0  # numbers each worker's files: len(workers) repeats once one is stopped
        self._tmp = Path(tempfile.mkdtemp(prefix="actionq-bench-"))
        self._client: JobClient | None = None

    @property
    def url(self) -> str:
        """The private server's URL."""
        return self.server.url

    @property
    def client(self) -> JobClient:
        """The client connected to the private server and namespace."""
        if self._client is None:
            raise BenchError("BenchEnv is not started (use `async with BenchEnv() as env`)")
        return self._client

    async def __aenter__(self) -> BenchEnv:
        try:
            await asyncio.to_thread(self.server.start)
            self._client = await JobClient.connect(self.url, namespace=self.namespace)
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop every worker, close the client, stop the server, remove the temporary files."""
        for worker in self.workers:
            await worker.stop()
        self.workers.clear()
        if self._client is not None:
            await self._client.close()
            self._client = None
        await asyncio.to_thread(self.server.stop)
        shutil.rmtree(self._tmp, ignore_errors=True)

    def worker_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of a worker: ours without ``ACTIONQ_*``, plus the server, namespace and ``extra``."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ACTIONQ_")}
        env |= {
            "ACTIONQ_REDIS_URL": self.url,
            "ACTIONQ_NAMESPACE": self.namespace,
            "ACTIONQ_LOG_FORMAT": "json",
            "ACTIONQ_LOG_LEVEL": self.log_level,
            "PYTHONUNBUFFERED": "1",
        }
        return env | dict(extra or {})

    async def start_worker(
        self, config: Mapping[str, Any], env: Mapping[str, str] | None = None, *, wait: bool = True
    ) -> Worker:
        """Start ``python -m service worker`` with ``config`` (written to a YAML file) and wait until ready."""
        self._spawned += 1
        n = self._spawned
        config_path = self._tmp / f"config-{n}.yml"
        config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
        log_path = self._tmp / f"worker-{n}.log"
        proc = spawn_worker(config_path, self.worker_env(env), log_path=log_path, cwd=REPO_ROOT)
        worker = Worker(proc=proc, log_path=log_path, config=dict(config), env=dict(env or {}))
        self.workers.append(worker)
        if wait:
            await self.wait_ready(worker)
        return worker

    async def wait_ready(self, worker: Worker, timeout_s: float = WORKER_READY_TIMEOUT_S) -> None:
        """Wait until ``worker`` is registered (its id, with ``-<pid>-``, is in the workers ZSET)."""
        try:
            await wait_registered(self.client.redis, Keys(self.namespace), worker.proc, timeout_s)
        except WorkerStartError as exc:
            raise BenchError(f"{exc}:\n{worker.log_tail()}") from exc
        await self._check_plugins(worker)

    async def _check_plugins(self, worker: Worker) -> None:
        """A benchmark of a worker that failed to load a plugin would measure nothing: refuse it."""
        infos = [w for w in await self.client.workers() if w.pid == worker.pid]
        failed = infos[0].failed_plugins if infos else {}
        if failed:
            reasons = "; ".join(f"{name}: {reason}" for name, reason in failed.items())
            raise BenchError(f"worker {worker.pid} failed to load plugins: {reasons}")

    async def stop_worker(self, worker: Worker) -> int:
        """SIGTERM one worker and wait for it; its exit code."""
        code = await worker.stop()
        self.workers.remove(worker)
        return code
