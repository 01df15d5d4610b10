"""The operators' commands of the ``actionq`` CLI: cancel, dead letters, remote control, plugins.

Registered on :data:`service.cli.app` when :mod:`service.cli.app` is imported.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from service.cli.app import (
    ConfigOpt,
    JsonOpt,
    NamespaceOpt,
    RedisOpt,
    _client_run,
    _dump,
    app,
    out,
)
from service.client.client import JobClient
from service.events.control import Command, ControlReport
from service.events.models import describe, reference_markdown
from service.events.models import write_readme as rewrite_readme

__all__ = ["dead", "plugin_app"]


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
    since: Annotated[
        str, typer.Option(help="now, replay:N (the last N matching) or an event id (resume after it).")
    ] = "replay:50",
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
