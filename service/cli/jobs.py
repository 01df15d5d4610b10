"""The job commands: ``submit``, ``watch``, ``status``, ``result``, ``cancel``.

Params on the command line follow httpie's convention: ``key=value`` passes the string
``value`` (the action's declared type converts it: ``x=6`` gives the int 6 to an ``int``
argument) and ``key:=json`` passes a raw JSON value (``items:='[1, 2]'``, ``flag:=true``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer
from rich.text import Text

from service.cli.app import JsonOpt, app, client_run, dump, err, out
from service.cli.tables import piped, print_fields
from service.client.client import JobClient
from service.client.handle import JobHandle, outcome_of
from service.errors import ActionQError, ResultTimeoutError
from service.models import JobRecord

__all__ = ["parse_params"]


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
                raise typer.BadParameter(f"{key}: {_short(raw)} is not JSON ({exc.msg})", param_hint="PARAMS") from exc
            except (ValueError, RecursionError) as exc:  # an int of over 4,300 digits; nesting past the stack
                why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).split(";")[0]
                raise typer.BadParameter(f"{key}: {_short(raw)} cannot be read ({why})", param_hint="PARAMS") from None
        else:
            params[pair[:str_idx]] = pair[str_idx + 1 :]
    return params


def _short(raw: str, limit: int = 60) -> str:
    """``raw`` quoted, cut to ``limit`` characters (an error line stays one line)."""
    return repr(raw if len(raw) <= limit else raw[:limit] + "…")


@app.command()
def submit(
    ctx: typer.Context,
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
        bool,
        typer.Option(
            "--publish", help="Publish the job's changes from the start (for raw subscribers); default: as configured."
        ),
    ] = False,
) -> None:
    """Submit PLUGIN ACTION with params; prints the job id (and with --wait, the result)."""
    values = parse_params(params or [])

    async def go(client: JobClient) -> None:
        handle = await client.submit(
            plugin, action, values, job_id=job_id, timeout_s=job_timeout, queue=queue, defer_s=defer,
            host=host, watch=watch or None, validate=validate,
        )  # fmt: skip
        _report_submit(handle)
        if follow:
            await _follow(handle, timeout)
        elif wait:
            out.print_json(dump(await handle.result(timeout=timeout)))

    client_run(ctx, go)


def _report_submit(handle: JobHandle) -> None:
    if handle.created:
        err.print(Text.assemble("submitted job ", (handle.job_id, "bold")), highlight=False)
    else:
        err.print(f"job {handle.job_id} already exists: not submitted again", highlight=False)
    out.print(handle.job_id, highlight=False)


async def _follow(handle: JobHandle, timeout: float | None) -> None:
    from service.cli.progressbar import show

    try:
        async with asyncio.timeout(timeout):
            record = await show(handle, err)
    except TimeoutError as exc:
        if timeout is None or isinstance(exc, ActionQError):
            raise
        # The deadline passed: say so in one line, as `result --timeout` does.
        raise ResultTimeoutError(handle.job_id, timeout, (await handle.record()).state.value) from exc
    out.print_json(dump(outcome_of(record)))


@app.command()
def watch(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="Job id")],
    timeout: Annotated[float | None, typer.Option(help="Stop watching after this many seconds.")] = None,
) -> None:
    """Follow a job's progress (with sub-tasks) live, then print its result."""

    async def go(client: JobClient) -> None:
        await _follow(client.job(job_id), timeout)

    client_run(ctx, go)


@app.command()
def status(ctx: typer.Context, job_id: Annotated[str, typer.Argument(help="Job id")], as_json: JsonOpt = False) -> None:
    """Show a job's state and record."""

    async def go(client: JobClient) -> None:
        _print_record(await client.job(job_id).record(), as_json)

    client_run(ctx, go)


def _print_record(record: JobRecord, as_json: bool) -> None:
    if as_json:
        out.print_json(record.model_dump_json())
        return
    # Piped, a JSON value is compact: one line, so `grep` and `cut -f2` see it whole.
    as_text = _compact if piped(out) else dump
    fields = [
        ("job", record.job_id),
        ("state", record.state.value),
        ("plugin.action", f"{record.request.plugin}.{record.request.action}"),
        ("params", as_text(record.request.params)),
        ("attempt", str(record.attempt)),
        ("worker", record.worker or "-"),
        ("queue", record.queue),
        ("plugin version", record.plugin_version or "-"),
    ]
    if record.is_terminal:
        fields.append(("result", as_text(record.result) if record.error is None else "-"))
    if record.error is not None:
        fields.append(("error", f"{record.error.type}: {record.error.message}"))
    print_fields(out, fields)


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


@app.command()
def result(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="Job id")],
    timeout: Annotated[float | None, typer.Option(help="Wait at most this long for it to finish.")] = None,
) -> None:
    """Wait for a job and print its result as JSON (exit 1 if it failed)."""

    async def go(client: JobClient) -> None:
        out.print_json(dump(await client.job(job_id).result(timeout=timeout)))

    client_run(ctx, go)


@app.command()
def cancel(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="Job id")],
    reason: Annotated[str, typer.Option(help="Why (kept in the record).")] = "cancelled from the command line",
    timeout: Annotated[float, typer.Option(help="How long to wait for a running job to stop.")] = 30.0,
) -> None:
    """Cancel a job in any state and say what happened."""

    async def go(client: JobClient) -> None:
        outcome = await client.job(job_id).cancel(reason, timeout=timeout)
        out.print(outcome.value, highlight=False)

    client_run(ctx, go)
