"""The ``actionq`` command line.

Params on the command line follow httpie's convention: ``key=value`` passes the string
``value`` (the action's declared type converts it: ``x=6`` gives the int 6 to an ``int``
argument) and ``key:=json`` passes a raw JSON value (``items:='[1, 2]'``, ``flag:=true``).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from service.client import JobClient
from service.control import Command, ControlReport
from service.errors import ActionQError, ConfigError, PluginActionExecutionError, SubmissionError
from service.events import describe, reference_markdown
from service.events import write_readme as rewrite_readme
from service.handle import JobHandle, outcome_of
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
        return asyncio.run(make())
    except PluginActionExecutionError as exc:
        err.print(f"[red]job failed[/red]: {exc}", markup=True, highlight=False)
        raise typer.Exit(1) from exc
    except (SubmissionError, ConfigError) as exc:
        err.print(f"[red]error[/red]: {exc}", markup=True, highlight=False)
        raise typer.Exit(2) from exc
    except ActionQError as exc:
        err.print(f"[red]error[/red]: {exc}", markup=True, highlight=False)
        raise typer.Exit(1) from exc


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
    from service.worker import main as run

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
    from service.pool import WorkerPool, worker_command

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
    config: ConfigOpt = None,
    redis_url: RedisOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Submit PLUGIN ACTION with params; prints the job id (and with --wait, the result)."""
    values = parse_params(params or [])

    async def go(client: JobClient) -> None:
        handle = await client.submit(
            plugin, action, values, job_id=job_id, timeout_s=job_timeout, queue=queue, defer_s=defer,
            host=host, validate=validate,
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
    from service.watch import watch as show

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
    from service.up import run_up

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


@app.command()
def cancel(
    job_id: Annotated[str, typer.Argument(help="Job id")],
    reason: Annotated[str, typer.Option(help="Why (kept in the record).")] = "cancelled from the command line",
    timeout: Annotated[float, typer.Option(help="How long to wait for a running job to stop.")] = 30.0,
    config: ConfigOpt = None,
    redis_url: RedisOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Cancel a job in any state and say what happened."""

    async def go(client: JobClient) -> None:
        outcome = await client.job(job_id).cancel(reason, timeout=timeout)
        out.print(outcome.value, highlight=False)

    _client_run(config, redis_url, namespace, go)


@app.command()
def events(
    kind: Annotated[list[str] | None, typer.Option("--kind", "-k", help="Only this kind (repeatable).")] = None,
    plugin: Annotated[str | None, typer.Option(help="Only events of this plugin.")] = None,
    job: Annotated[str | None, typer.Option("--job", help="Only events of this job.")] = None,
    since: Annotated[str, typer.Option(help="now, replay:N (the last N matching) or a stream id.")] = "replay:50",
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep following new events (Ctrl-C stops).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help='One JSON line per event: {"id", "event"}.')] = False,
    reference: Annotated[bool, typer.Option("--reference", help="Print the event reference and exit.")] = False,
    write_readme: Annotated[
        Path | None, typer.Option(hidden=True, help="Rewrite the README's event reference.")
    ] = None,
    config: ConfigOpt = None,
    redis_url: RedisOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Print the workers' events: the recent past, then with --follow new ones as they happen."""
    if write_readme is not None:
        print(f"{write_readme}: {'updated' if rewrite_readme(write_readme) else 'unchanged'}")
        return
    if reference:
        print(reference_markdown())
        return

    async def go(client: JobClient) -> None:
        try:
            async for item in client.events(kind, plugin, job, since, follow=follow):
                if as_json:
                    print(json.dumps({"id": item.id, "event": item.event.model_dump(mode="json")}), flush=True)
                else:
                    when = datetime.fromtimestamp(item.event.ts_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
                    print(f"{when}  {item.kind:<24} {item.event.worker_id}  {describe(item.event)}", flush=True)
        except ValueError as exc:  # a bad --kind or --since
            raise typer.BadParameter(str(exc)) from exc

    try:
        _client_run(config, redis_url, namespace, go)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


dead = typer.Typer(help="Dead letters: jobs whose attempts ran out.", no_args_is_help=True)
app.add_typer(dead, name="dead")


@dead.command("list")
def dead_list(
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    redis_url: RedisOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """List dead letters."""

    async def go(client: JobClient) -> None:
        letters = await client.dead.list(limit)
        if as_json:
            out.print_json(_dump([letter.model_dump(mode="json") for letter in letters]))
            return
        table = Table("job", "plugin.action", "state", "attempts", "error", "dead at")
        for letter in letters:
            error = f"{letter.error.type}: {letter.error.message}" if letter.error else "-"
            when = datetime.fromtimestamp(letter.dead_at_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
            job = f"{letter.request.plugin}.{letter.request.action}"
            table.add_row(letter.job_id, job, letter.state.value, str(len(letter.attempts)), error, when)
        out.print(table if letters else "no dead letters")

    _client_run(config, redis_url, namespace, go)


@dead.command("show")
def dead_show(
    job_id: Annotated[str, typer.Argument(help="Job id")],
    config: ConfigOpt = None,
    redis_url: RedisOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Show a dead letter: request, every attempt, final error (JSON)."""

    async def go(client: JobClient) -> None:
        out.print_json((await client.dead.get(job_id)).model_dump_json())

    _client_run(config, redis_url, namespace, go)


@dead.command("replay")
def dead_replay(
    job_id: Annotated[str, typer.Argument(help="Job id")],
    new_id: Annotated[bool, typer.Option("--new-id", help="Replay under a new id (default: the same id).")] = False,
    config: ConfigOpt = None,
    redis_url: RedisOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Submit a dead job again as a fresh attempt series; prints the job id."""

    async def go(client: JobClient) -> None:
        handle = await client.dead.replay(job_id, new_id=new_id)
        out.print(handle.job_id, highlight=False)

    _client_run(config, redis_url, namespace, go)


@dead.command("purge")
def dead_purge(
    job_ids: Annotated[list[str] | None, typer.Argument(help="Job ids (none: use --all)")] = None,
    purge_all: Annotated[bool, typer.Option("--all", help="Purge every dead letter.")] = False,
    config: ConfigOpt = None,
    redis_url: RedisOpt = None,
    namespace: NamespaceOpt = None,
) -> None:
    """Delete dead letters; prints how many."""
    if not job_ids and not purge_all:
        raise typer.BadParameter("name the job ids to purge, or pass --all")

    async def go(client: JobClient) -> None:
        out.print(str(await client.dead.purge(None if purge_all else job_ids)), highlight=False)

    _client_run(config, redis_url, namespace, go)


WorkerOpt = Annotated[str | None, typer.Option("--worker", help="Only this worker (id from `actionq workers`).")]
HostOpt = Annotated[str | None, typer.Option("--host", help="Only the workers on this host.")]
AllOpt = Annotated[bool, typer.Option("--all", help="Every worker (the default when no target is given).")]
TimeoutOpt = Annotated[float, typer.Option(help="Seconds to wait for acknowledgements.")]


def _control(
    command: Command, worker: str | None, host: str | None, args: dict[str, Any] | None, timeout: float,
    config: Path | None, redis_url: str | None, namespace: str | None,
) -> None:  # fmt: skip
    async def go(client: JobClient) -> ControlReport:
        report = await client.control(command, worker=worker, host=host, args=args, timeout=timeout)
        table = Table("worker", "host", "answer", "result")
        for ack in report.acks:
            answer = "acted" if ack.ok else f"refused: {ack.error}"
            table.add_row(ack.worker_id, ack.hostname, answer, _dump(ack.result) if ack.result is not None else "")
        for missing in report.missing:
            table.add_row(missing, "", f"no answer within {timeout:g}s", "")
        out.print(table if report.acks or report.missing else "no live worker matches the target")
        return report

    report = _client_run(config, redis_url, namespace, go)
    if report.missing or report.refused:
        raise typer.Exit(1)


def _make_control_command(command: Command, doc: str) -> None:
    def run(
        worker: WorkerOpt = None,
        host: HostOpt = None,
        all_workers: AllOpt = False,
        timeout: TimeoutOpt = 3.0,
        config: ConfigOpt = None,
        redis_url: RedisOpt = None,
        namespace: NamespaceOpt = None,
    ) -> None:
        _control(command, worker, host, None, timeout, config, redis_url, namespace)

    run.__doc__ = doc
    app.command(command)(run)


_make_control_command("pause", "Pause workers: they take no new jobs and keep running the ones they have.")
_make_control_command("resume", "Resume paused workers.")
_make_control_command("drain", "Drain workers: take no more jobs, finish the running ones, then stop.")
_make_control_command("stop", "Stop workers gracefully (as SIGTERM: running jobs get the grace period).")

plugin_app = typer.Typer(help="Load, disable or reload a plugin on running workers.", no_args_is_help=True)
app.add_typer(plugin_app, name="plugin")


def _make_plugin_command(command: Command, verb: str, doc: str) -> None:
    def run(
        name: Annotated[str, typer.Argument(help="Plugin name")],
        path: Annotated[str | None, typer.Option(help="Plugin folder (default: config.yml's entry).")] = None,
        worker: WorkerOpt = None,
        host: HostOpt = None,
        all_workers: AllOpt = False,
        timeout: TimeoutOpt = 10.0,
        config: ConfigOpt = None,
        redis_url: RedisOpt = None,
        namespace: NamespaceOpt = None,
    ) -> None:
        args = {"name": name, **({"path": path} if path else {})}
        _control(command, worker, host, args, timeout, config, redis_url, namespace)

    run.__doc__ = doc
    plugin_app.command(verb)(run)


_make_plugin_command("load_plugin", "load", "Load (and enable) a plugin on running workers.")
_make_plugin_command("disable_plugin", "disable", "Disable and unload a plugin on running workers.")
_make_plugin_command("reload_plugin", "reload", "Reload a plugin from its folder (a new version serves the next job).")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
    sys.exit(0)
