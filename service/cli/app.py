"""The ``actionq`` command line.

Params on the command line follow httpie's convention: ``key=value`` passes the string
``value`` (the action's declared type converts it: ``x=6`` gives the int 6 to an ``int``
argument) and ``key:=json`` passes a raw JSON value (``items:='[1, 2]'``, ``flag:=true``).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from service.client.client import JobClient
from service.client.handle import JobHandle, outcome_of
from service.errors import ActionQError, ConfigError, PluginActionExecutionError, SubmissionError
from service.logs import configure_logging
from service.models import JobRecord
from service.settings import Settings, load_settings

__all__ = ["app", "main", "parse_params"]

app = typer.Typer(
    name="actionq",
    help="A job execution service on Redis: submit plugin actions, run worker pools, follow jobs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)
T = TypeVar("T")

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="config.yml (default: $ACTIONQ_CONFIG)", dir_okay=False)
]
RedisOpt = Annotated[str | None, typer.Option("--redis-url", help="Redis URL (default: config / $ACTIONQ_REDIS_URL)")]
NamespaceOpt = Annotated[str | None, typer.Option("--namespace", "-n", help="Key namespace (default: actionq)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _settings(config: Path | None, redis_url: str | None, namespace: str | None, **more: Any) -> Settings:
    return load_settings(config, redis_url=redis_url, namespace=namespace, **more)


def _run(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run the coroutine ``make`` builds; an actionq error becomes a one-line message and an exit code."""
    try:
        return asyncio.run(_interruptible(make()))
    except PluginActionExecutionError as exc:
        err.print(f"[red]job failed[/red]: {exc}", markup=True, highlight=False)
        raise typer.Exit(1) from exc
    except (SubmissionError, ConfigError) as exc:
        err.print(f"[red]error[/red]: {exc}", markup=True, highlight=False)
        raise typer.Exit(2) from exc
    except ActionQError as exc:
        err.print(f"[red]error[/red]: {exc}", markup=True, highlight=False)
        raise typer.Exit(1) from exc


async def _interruptible(body: Coroutine[Any, Any, T]) -> T:
    """Await ``body``; Ctrl-C (SIGINT) cancels it and raises ``KeyboardInterrupt``.

    asyncio.run's own SIGINT handler cancels the task from a Python signal handler, that is in
    the middle of whatever the task is running; on Python 3.11 a cancel that lands while
    redis-py's hiredis parser is entering its ``asyncio.timeout(0)`` is turned into a timeout and
    swallowed, and a command like ``actionq events --follow`` never stops. A handler registered
    with the loop runs between steps instead, where cancellation always arrives.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    interrupted = False

    def on_sigint() -> None:
        nonlocal interrupted
        interrupted = True
        task.cancel()

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        return await body
    except asyncio.CancelledError:
        if interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def _client_run(
    config: Path | None, redis_url: str | None, namespace: str | None, body: Callable[[JobClient], Awaitable[T]]
) -> T:
    """Load settings, connect a client, run ``body`` with it: the shape of every client command."""
    return _run(lambda: _with_client(_settings(config, redis_url, namespace), body))


async def _with_client(settings: Settings, body: Callable[[JobClient], Awaitable[T]]) -> T:
    configure_logging(settings.log_format, settings.log_level)  # to stderr: stdout stays clean for --json
    client = await JobClient.connect(settings=settings)
    try:
        return await body(client)
    finally:
        await client.close()


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` (a string) and ``key:=json`` (a JSON value) pairs into a params dict."""
    params: dict[str, Any] = {}
    for pair in pairs:
        raw_idx, str_idx = pair.find(":="), pair.find("=")
        if str_idx <= 0:
            raise typer.BadParameter(f"{pair!r} is not key=value or key:=json", param_hint="PARAMS")
        if raw_idx > 0 and raw_idx < str_idx:
            key, raw = pair[:raw_idx], pair[raw_idx + 2 :]
            try:
                params[key] = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise typer.BadParameter(f"{key}: {raw!r} is not JSON ({exc.msg})", param_hint="PARAMS") from exc
        else:
            params[pair[:str_idx]] = pair[str_idx + 1 :]
    return params


def _dump(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def _print_record(record: JobRecord, as_json: bool) -> None:
    if as_json:
        out.print_json(record.model_dump_json())
        return
    table = Table(show_header=False, box=None)
    for name, value in (
        ("job", record.job_id),
        ("state", record.state.value),
        ("plugin.action", f"{record.request.plugin}.{record.request.action}"),
        ("params", _dump(record.request.params)),
        ("attempt", str(record.attempt)),
        ("worker", record.worker or "-"),
        ("queue", record.queue),
    ):
        table.add_row(f"[bold]{name}[/bold]", value)
    if record.is_terminal:
        table.add_row("[bold]result[/bold]", _dump(record.result) if record.error is None else "-")
    if record.error is not None:
        table.add_row("[bold]error[/bold]", f"{record.error.type}: {record.error.message}")
    out.print(table)


@app.command()
def worker(
    config: ConfigOpt = None,
    redis_url: RedisOpt = None,
    namespace: NamespaceOpt = None,
    concurrency: Annotated[int | None, typer.Option(help="Jobs one process runs at once (default: config)")] = None,
    processes: Annotated[
        int, typer.Option(min=1, help="Worker processes, supervised (restarted if one dies; SIGTERM drains all).")
    ] = 1,
) -> None:
    """Run a worker (or a pool of them) for the plugins config.yml lists; Ctrl-C / SIGTERM drains and stops."""
    from service.worker.adapter import main as run

    try:
        settings = _settings(config, redis_url, namespace, concurrency=concurrency)
        if processes > 1:
            raise typer.Exit(_run_pool(processes, config, redis_url, namespace, concurrency))
        run(settings)
    except ConfigError as exc:
        err.print(f"[red]error[/red]: {exc}", markup=True, highlight=False)
        raise typer.Exit(2) from exc
    except ActionQError as exc:
        err.print(f"[red]error[/red]: {exc}", markup=True, highlight=False)
        raise typer.Exit(1) from exc


def _run_pool(
    processes: int, config: Path | None, redis_url: str | None, namespace: str | None, concurrency: int | None
) -> int:
    from service.logs import configure_logging
    from service.processes.supervisor import WorkerPool, worker_command

    configure_logging(load_settings(config).log_format)
    options = {"--config": config, "--redis-url": redis_url, "--namespace": namespace, "--concurrency": concurrency}
    argv = [str(part) for name, value in options.items() if value is not None for part in (name, value)]
    return WorkerPool(worker_command(argv), processes).run()


@app.command()
def submit(
    plugin: Annotated[str, typer.Argument(help="Plugin name")],
    action: Annotated[str, typer.Argument(help="Action name")],
    params: Annotated[list[str] | None, typer.Argument(help="key=value (string) or key:=json (JSON value)")] = None,
    wait: Annotated[bool, typer.Option("--wait", "-w", help="Wait for the result and print it.")] = False,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Show a live progress bar, then the result.")] = False,
    timeout: Annotated[float | None, typer.Option(help="With --wait: give up after this many seconds.")] = None,
    job_id: Annotated[str | None, typer.Option("--job-id", help="Idempotency key (default: random).")] = None,
    job_timeout: Annotated[float | None, typer.Option("--job-timeout", help="Override the action timeout (s).")] = None,
    queue: Annotated[str, typer.Option(help="Lane.")] = "default",
    defer: Annotated[float | None, typer.Option(help="Start no earlier than this many seconds from now.")] = None,
    host: Annotated[str, typer.Option(help='"any", "local" or a hostname.')] = "any",
    validate: Annotated[bool, typer.Option(help="Check params against the registry first.")] = True,
    watch: Annotated[
        bool, typer.Option("--publish", help="Publish the job's changes from the start (for raw subscribers).")
    ] = False,
    config: ConfigOpt = None,
    redis_url: RedisOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Submit PLUGIN ACTION with params; prints the job id (and with --wait, the result)."""
    values = parse_params(params or [])

    async def go(client: JobClient) -> None:
        handle = await client.submit(
            plugin, action, values, job_id=job_id, timeout_s=job_timeout, queue=queue, defer_s=defer,
            host=host, watch=watch, validate=validate,
        )  # fmt: skip
        _report_submit(handle)
        if follow:
            await _follow(handle, timeout)
        elif wait:
            out.print_json(_dump(await handle.result(timeout=timeout)))

    _client_run(config, redis_url, namespace, go)


def _report_submit(handle: JobHandle) -> None:
    if handle.created:
        err.print(f"submitted job [bold]{handle.job_id}[/bold]", markup=True, highlight=False)
    else:
        err.print(f"job {handle.job_id} already exists: not submitted again", highlight=False)
    out.print(handle.job_id, highlight=False)


async def _follow(handle: JobHandle, timeout: float | None) -> None:
    from service.cli.progressbar import watch as show

    async with asyncio.timeout(timeout):
        record = await show(handle, err)
    out.print_json(_dump(outcome_of(record)))


@app.command()
def watch(
    job_id: Annotated[str, typer.Argument(help="Job id")],
    timeout: Annotated[float | None, typer.Option(help="Stop watching after this many seconds.")] = None,
    config: ConfigOpt = None,
    redis_url: RedisOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Follow a job's progress (with sub-tasks) live, then print its result."""

    async def go(client: JobClient) -> None:
        await _follow(client.job(job_id), timeout)

    _client_run(config, redis_url, namespace, go)


@app.command()
def status(
    job_id: Annotated[str, typer.Argument(help="Job id")],
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    redis_url: RedisOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Show a job's state and record."""

    async def go(client: JobClient) -> None:
        _print_record(await client.job(job_id).record(), as_json)

    _client_run(config, redis_url, namespace, go)


@app.command()
def result(
    job_id: Annotated[str, typer.Argument(help="Job id")],
    timeout: Annotated[float | None, typer.Option(help="Wait at most this long for it to finish.")] = None,
    config: ConfigOpt = None,
    redis_url: RedisOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Wait for a job and print its result as JSON (exit 1 if it failed)."""

    async def go(client: JobClient) -> None:
        out.print_json(_dump(await client.job(job_id).result(timeout=timeout)))

    _client_run(config, redis_url, namespace, go)


@app.command()
def plugins(
    as_json: JsonOpt = False, config: ConfigOpt = None, redis_url: RedisOpt = None, namespace: NamespaceOpt = None
) -> None:
    """List the plugins live workers serve, with their actions and arguments."""

    async def go(client: JobClient) -> None:
        entries = await client.plugins()
        if as_json:
            out.print_json(_dump([e.model_dump(mode="json", by_alias=True) for e in entries]))
            return
        table = Table("plugin", "version", "live", "action", "arguments", "description")
        for entry in entries:
            m = entry.manifest
            for action in m.actions or []:
                args = ", ".join(_describe_argument(a) for a in action.arguments)
                table.add_row(m.name, m.version, "yes" if entry.live else "no", action.name, args, action.description)
        out.print(table if entries else "no plugins registered (is a worker running?)")

    _client_run(config, redis_url, namespace, go)


def _describe_argument(arg: Any) -> str:
    text = f"{arg.name}: {arg.type}"
    return text if arg.required else f"{text} = {json.dumps(arg.default)}"


@app.command()
def workers(
    as_json: JsonOpt = False, config: ConfigOpt = None, redis_url: RedisOpt = None, namespace: NamespaceOpt = None
) -> None:
    """List the live workers."""

    async def go(client: JobClient) -> None:
        infos = await client.workers()
        if as_json:
            out.print_json(_dump([w.model_dump(mode="json") for w in infos]))
            return
        table = Table("worker", "host", "pid", "state", "plugins", "running", "failed plugins")
        for w in infos:
            plugins_text = ", ".join(f"{n} {v}" for n, v in sorted(w.plugins.items()))
            state = "draining" if w.draining else "paused" if w.paused else "active"
            table.add_row(w.worker_id, w.hostname, str(w.pid), state, plugins_text, str(w.running_jobs),
                          ", ".join(sorted(w.failed_plugins)) or "-")  # fmt: skip
        out.print(table if infos else "no live workers")

    _client_run(config, redis_url, namespace, go)


@app.command()
def up(
    config: ConfigOpt = None,
    redis_url: RedisOpt = None,
    namespace: NamespaceOpt = None,
    demo: Annotated[bool, typer.Option(help="Submit the demo jobs and print their results.")] = True,
    exit_after_demo: Annotated[bool, typer.Option(help="Stop everything once the demo jobs are done.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show the worker's info logs.")] = False,
) -> None:
    """Run the service: Redis (a private one if none is configured), a worker, demo jobs. Ctrl-C stops."""
    from service.cli.up import run_up

    try:
        code = run_up(
            config,
            redis_url=redis_url,
            namespace=namespace,
            demo=demo,
            exit_after_demo=exit_after_demo,
            verbose=verbose,
        )
    except ActionQError as exc:
        err.print(f"[red]error[/red]: {exc}", markup=True, highlight=False)
        raise typer.Exit(2) from exc
    raise typer.Exit(code)


# The operators' commands (cancel, dead letters, remote control, plugins) live in service.cliops.
from service.cli import operate  # noqa: E402, F401  (registers its commands on `app`)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
    sys.exit(0)
