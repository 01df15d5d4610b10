"""The operator commands: workers and pools, the registry, ``up``, events, dead letters, remote control."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from service.cli.app import JsonOpt, app, client_run, dump, err, fail, out, reported_errors, shared
from service.cli.tables import Column, ident, print_table
from service.client.client import JobClient
from service.errors import ActionQError, ConfigError
from service.events.control import Command, ControlReport
from service.events.models import describe, reference_markdown
from service.events.models import write_docs as rewrite_docs

__all__ = ["dead", "plugin_app"]


@app.command()
def worker(
    ctx: typer.Context,
    concurrency: Annotated[int | None, typer.Option(help="Jobs one process runs at once (default: config)")] = None,
    processes: Annotated[
        int,
        typer.Option(
            min=1,
            help="Worker processes, supervised: one that crashes is restarted, one stopped or drained on request "
            "is not (the pool exits when none is left); SIGTERM drains all.",
        ),
    ] = 1,
) -> None:
    """Run a worker (or a pool of them) for the plugins config.yml lists; Ctrl-C / SIGTERM drains and stops."""
    from service.client.caller import ClientCaller
    from service.worker.adapter import main as run_worker

    options = shared(ctx)
    try:
        settings = options.settings(concurrency=concurrency)
        if processes > 1:
            raise typer.Exit(_run_pool(processes, options.argv(), settings, concurrency))
        run_worker(settings, ClientCaller.on)  # plugins' self.execute submits through a client
    except ConfigError as exc:
        raise fail(exc, 2) from exc
    except ActionQError as exc:
        raise fail(exc, 1) from exc


def _run_pool(processes: int, argv: list[str], settings: Any, concurrency: int | None) -> int:
    from service.logs import configure_logging
    from service.processes.spawn import worker_command
    from service.processes.supervisor import WorkerPool

    configure_logging(settings.log_format)
    own = ["--concurrency", str(concurrency)] if concurrency is not None else []
    return WorkerPool(worker_command(options=argv, worker_options=[*own, "--processes", "1"]), processes).run()


@app.command()
def plugins(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List the plugins live workers serve, with their actions and arguments."""

    async def go(client: JobClient) -> None:
        entries = await client.plugins()
        if as_json:
            out.print_json(dump([e.model_dump(mode="json", by_alias=True) for e in entries]))
            return
        rows = [
            [m.name, m.version, "yes" if entry.live else "no", action.name,
             ", ".join(_describe_argument(a) for a in action.arguments), action.description]
            for entry in entries
            for m in [entry.manifest]
            for action in m.actions or []
        ]  # fmt: skip
        columns: list[Column | str] = [ident("plugin"), "version", "live", ident("action"), "arguments", "description"]
        print_table(out, columns, rows, empty="no plugins registered (is a worker running?)", notes=err)

    client_run(ctx, go)


def _describe_argument(arg: Any) -> str:
    text = f"{arg.name}: {arg.type}"
    return text if arg.required else f"{text} = {json.dumps(arg.default)}"


@app.command()
def workers(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List the live workers."""

    async def go(client: JobClient) -> None:
        infos = await client.workers()
        if as_json:
            out.print_json(dump([w.model_dump(mode="json") for w in infos]))
            return
        rows = [
            [w.worker_id, w.hostname, str(w.pid), _state(w),
             ", ".join(f"{n} {v}" for n, v in sorted(w.plugins.items())), str(w.running_jobs),
             ", ".join(sorted(w.failed_plugins)) or "-"]
            for w in infos
        ]  # fmt: skip
        columns: list[Column | str] = [
            ident("worker"),
            ident("host"),
            "pid",
            "state",
            "plugins",
            "running",
            "failed plugins",
        ]
        print_table(out, columns, rows, empty="no live workers", notes=err)

    client_run(ctx, go)


@app.command()
def health(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Only a worker on this host counts (e.g. $(hostname))")] = None,
    worker_id: Annotated[str | None, typer.Option("--worker", help="Only this worker counts")] = None,
) -> None:
    """Exit 0 if Redis answers and a live worker is registered (on --host, or --worker); 1 if not.

    For container health checks, as arq's ``--check``: ``actionq health --host "$(hostname)"`` in
    a worker's container; a worker is live while its heartbeat is fresh (``heartbeat_s``).
    """

    async def go(client: JobClient) -> int:
        live = [
            w
            for w in await client.workers()  # Redis unreachable: BrokerError, exit 1
            if (host is None or w.hostname == host) and (worker_id is None or w.worker_id == worker_id)
        ]
        where = "".join(f" {label} {value!r}" for label, value in (("on host", host), ("named", worker_id)) if value)
        if not live:
            err.print(f"unhealthy: Redis answers, but no live worker{where}")
            return 1
        states = ", ".join(f"{w.worker_id} ({_state(w)}, {w.running_jobs} running)" for w in live)
        out.print(f"healthy: {len(live)} live worker(s){where}: {states}")
        return 0

    raise typer.Exit(client_run(ctx, go))


def _state(worker: Any) -> str:
    return "draining" if worker.draining else "paused" if worker.paused else "active"


@app.command()
def up(
    ctx: typer.Context,
    demo: Annotated[bool, typer.Option(help="Submit the demo jobs and print their results.")] = True,
    exit_after_demo: Annotated[bool, typer.Option(help="Stop everything once the demo jobs are done.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show the worker's info logs.")] = False,
) -> None:
    """Run the service: Redis (a private one if none is configured), a worker, demo jobs. Ctrl-C stops."""
    from service.cli.up import run_up

    options = shared(ctx)
    with reported_errors(options.verbose):
        try:
            code = run_up(
                options.config,
                redis_url=options.redis_url,
                namespace=options.namespace,
                demo=demo,
                exit_after_demo=exit_after_demo,
                verbose=verbose,
            )
        except ActionQError as exc:
            raise fail(exc, 2, verbose=options.verbose) from exc
    raise typer.Exit(code)


@app.command()
def events(
    ctx: typer.Context,
    kind: Annotated[list[str] | None, typer.Option("--kind", "-k", help="Only this kind (repeatable).")] = None,
    plugin: Annotated[str | None, typer.Option(help="Only events of this plugin.")] = None,
    job: Annotated[str | None, typer.Option("--job", help="Only events of this job.")] = None,
    since: Annotated[
        str, typer.Option(help="now, replay:N (the last N matching) or an event id (resume after it).")
    ] = "replay:50",
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep following new events (Ctrl-C stops).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help='One JSON line per event: {"id", "event"}.')] = False,
    reference: Annotated[bool, typer.Option("--reference", help="Print the event reference and exit.")] = False,
    write_docs: Annotated[
        Path | None, typer.Option("--write-docs", hidden=True, help="Rewrite a docs page's event reference.")
    ] = None,
) -> None:
    """Print the workers' events: the recent past, then with --follow new ones as they happen."""
    if write_docs is not None:
        print(f"{write_docs}: {'updated' if rewrite_docs(write_docs) else 'unchanged'}")
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
        client_run(ctx, go)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


dead = typer.Typer(help="Dead letters: jobs whose attempts ran out.", no_args_is_help=True)
app.add_typer(dead, name="dead")


@dead.command("list")
def dead_list(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List dead letters."""

    async def go(client: JobClient) -> None:
        letters = await client.dead.list(limit)
        if as_json:
            out.print_json(dump([letter.model_dump(mode="json") for letter in letters]))
            return
        rows = []
        for letter in letters:
            error = f"{letter.error.type}: {letter.error.message}" if letter.error else "-"
            # ISO 8601 without the space: one field for awk, as for a piped table's every value.
            when = datetime.fromtimestamp(letter.dead_at_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            job = f"{letter.request.plugin}.{letter.request.action}" if letter.request else "(malformed)"
            rows.append([letter.job_id, job, letter.state.value, str(len(letter.attempts)), error, when])
        columns: list[Column | str] = [ident("job"), ident("plugin.action"), "state", "attempts", "error", "dead at"]
        print_table(out, columns, rows, empty="no dead letters", notes=err)

    client_run(ctx, go)


@dead.command("show")
def dead_show(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="Job id")],
) -> None:
    """Show a dead letter: request, every attempt, final error (JSON)."""

    async def go(client: JobClient) -> None:
        out.print_json((await client.dead.get(job_id)).model_dump_json())

    client_run(ctx, go)


@dead.command("replay")
def dead_replay(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="Job id")],
    new_id: Annotated[bool, typer.Option("--new-id", help="Replay under a new id (default: the same id).")] = False,
) -> None:
    """Submit a dead job again as a fresh attempt series; prints the job id."""

    async def go(client: JobClient) -> None:
        handle = await client.dead.replay(job_id, new_id=new_id)
        out.print(handle.job_id, highlight=False)

    client_run(ctx, go)


@dead.command("purge")
def dead_purge(
    ctx: typer.Context,
    job_ids: Annotated[list[str] | None, typer.Argument(help="Job ids (none: use --all)")] = None,
    purge_all: Annotated[bool, typer.Option("--all", help="Purge every dead letter.")] = False,
) -> None:
    """Delete dead letters; prints how many."""
    if not job_ids and not purge_all:
        raise typer.BadParameter("name the job ids to purge, or pass --all")

    async def go(client: JobClient) -> None:
        out.print(str(await client.dead.purge(None if purge_all else job_ids)), highlight=False)

    client_run(ctx, go)


WorkerOpt = Annotated[str | None, typer.Option("--worker", help="Only this worker (id from `actionq workers`).")]
HostOpt = Annotated[str | None, typer.Option("--host", help="Only the workers on this host.")]
TimeoutOpt = Annotated[float, typer.Option(help="Seconds to wait for acknowledgements.")]


def _control(
    ctx: typer.Context, command: Command, worker: str | None, host: str | None, args: dict[str, Any] | None,
    timeout: float,
) -> None:  # fmt: skip
    async def go(client: JobClient) -> ControlReport:
        report = await client.control(command, worker=worker, host=host, args=args, timeout=timeout)
        rows = [
            [ack.worker_id, ack.hostname, "acted" if ack.ok else f"refused: {ack.error}",
             json.dumps(ack.result, sort_keys=True, default=str) if ack.result is not None else ""]
            for ack in report.acks
        ]  # fmt: skip
        rows += [[missing, "", f"no answer within {timeout:g}s", ""] for missing in report.missing]
        columns: list[Column | str] = [ident("worker"), ident("host"), "answer", "result"]
        print_table(out, columns, rows, empty="no live worker matches the target", notes=err)
        return report

    report = client_run(ctx, go)
    if report.missing or report.refused:
        raise typer.Exit(1)


def _make_control_command(command: Command, doc: str) -> None:
    def run(ctx: typer.Context, worker: WorkerOpt = None, host: HostOpt = None, timeout: TimeoutOpt = 3.0) -> None:
        _control(ctx, command, worker, host, None, timeout)

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
        ctx: typer.Context,
        name: Annotated[str, typer.Argument(help="Plugin name")],
        path: Annotated[str | None, typer.Option(help="Plugin folder (default: config.yml's entry).")] = None,
        worker: WorkerOpt = None,
        host: HostOpt = None,
        timeout: TimeoutOpt = 10.0,
    ) -> None:
        args = {"name": name, **({"path": path} if path else {})}
        _control(ctx, command, worker, host, args, timeout)

    run.__doc__ = doc
    plugin_app.command(verb)(run)


_make_plugin_command("load_plugin", "load", "Load (and enable) a plugin on running workers.")
_make_plugin_command("disable_plugin", "disable", "Disable and unload a plugin on running workers.")
_make_plugin_command("reload_plugin", "reload", "Reload a plugin from its folder (a new version serves the next job).")
