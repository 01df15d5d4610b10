"""The ``actionq`` typer app: its one callback for the shared options, and how commands run.

The shared options come before the command, once for all of them::

    actionq --config prod.yml workers
    actionq --redis-url redis://r:6379/0 --namespace jobs submit PluginB calculate_square x=6 --wait

``--config`` (default ``$ACTIONQ_CONFIG``), ``--redis-url`` and ``--namespace`` override the
settings file and the ``ACTIONQ_*`` variables; ``-v`` / ``--verbose`` shows tracebacks (of a CLI
error, and of exceptions in the logs) where an error is otherwise one line. The commands live in
:mod:`service.cli.jobs` and :mod:`service.cli.operate`; tables print through
:mod:`service.cli.tables` (plain tab-separated lines when stdout is not a terminal).
"""

from __future__ import annotations

import asyncio
import json
import signal
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from service.client.client import JobClient
from service.errors import (
    ActionQError,
    ConfigError,
    PluginActionExecutionError,
    RecordUnreadableError,
    SubmissionError,
)
from service.logs import configure_logging, set_verbose
from service.settings import Settings, load_settings

__all__ = ["JsonOpt", "Shared", "app", "client_run", "dump", "err", "fail", "out", "reported_errors", "run", "shared"]

app = typer.Typer(
    name="actionq",
    help="A job execution service on Redis: submit plugin actions, run worker pools, follow jobs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# No markup: what is printed holds data (params, errors, ids) that may look like rich markup.
out = Console(markup=False)
err = Console(stderr=True, markup=False)
T = TypeVar("T")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@dataclass(frozen=True)
class Shared:
    """The options every command shares (given before the command)."""

    config: Path | None = None
    redis_url: str | None = None
    namespace: str | None = None
    verbose: bool = False

    def settings(self, **more: Any) -> Settings:
        """The settings: these options over ``ACTIONQ_*`` over the config file (``more``: a command's own)."""
        return load_settings(self.config, redis_url=self.redis_url, namespace=self.namespace, **more)

    def argv(self) -> list[str]:
        """These options as command-line arguments (for a child ``actionq``, such as a pool member)."""
        given = {"--config": self.config, "--redis-url": self.redis_url, "--namespace": self.namespace}
        parts = [str(part) for name, value in given.items() if value is not None for part in (name, value)]
        return [*parts, "--verbose"] if self.verbose else parts


@app.callback()
def _shared_options(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="config.yml (default: $ACTIONQ_CONFIG)", dir_okay=False)
    ] = None,
    redis_url: Annotated[
        str | None, typer.Option("--redis-url", help="Redis URL (default: config / $ACTIONQ_REDIS_URL)")
    ] = None,
    namespace: Annotated[str | None, typer.Option("--namespace", "-n", help="Key namespace (default: actionq)")] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show tracebacks: of an error, and of exceptions in the logs.")
    ] = False,
) -> None:
    """A job execution service on Redis: submit plugin actions, run worker pools, follow jobs."""
    ctx.obj = Shared(config, redis_url, namespace, verbose)
    set_verbose(verbose)  # for the logging a command configures later, the worker's included


def shared(ctx: typer.Context) -> Shared:
    """The shared options of this invocation."""
    root = ctx.find_root()
    return root.obj if isinstance(root.obj, Shared) else Shared()


def fail(exc: BaseException, code: int, *, label: str = "error", verbose: bool = False) -> typer.Exit:
    """Print ``exc`` as a one-line error (after its traceback if ``verbose``: ``-v``); the exit to raise."""
    if verbose:
        err.print("".join(traceback.format_exception(exc)).rstrip(), highlight=False, soft_wrap=True)
    reason = str(exc) if isinstance(exc, ActionQError) else _describe(exc)
    # soft_wrap: one line whatever the width (rich would wrap it at 80 columns in a pipe).
    err.print(Text.assemble((label, "red"), f": {reason}"), highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _describe(exc: BaseException) -> str:
    """An error that is not ours: its type and message (``ConnectionRefusedError: [Errno 111] ...``)."""
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


@contextmanager
def reported_errors(verbose: bool = False) -> Iterator[None]:
    """Turn an error escaping a command into a one-line message and an exit code (and, if
    ``verbose``, its traceback first).

    Exit codes: 1 a job failed or the service failed (or an unexpected error), 2 the request was
    refused (bad params, unknown plugin, bad settings) or the data in Redis is unreadable.
    typer's own exits and usage errors pass through.
    """
    try:
        yield
    except (typer.Exit, typer.Abort, typer.TyperException):
        raise
    except PluginActionExecutionError as exc:
        raise fail(exc, 1, label="job failed", verbose=verbose) from exc
    except (SubmissionError, ConfigError, RecordUnreadableError) as exc:
        raise fail(exc, 2, verbose=verbose) from exc
    except Exception as exc:  # ours (ActionQError) and anything else: one line, the traceback with -v
        raise fail(exc, 1, verbose=verbose) from exc


def run(make: Callable[[], Coroutine[Any, Any, T]], *, verbose: bool = False) -> T:
    """Run the coroutine ``make`` builds; an error becomes a one-line message and an exit code.

    See :func:`reported_errors` for the codes; ``verbose`` (``-v``) prints the traceback first.
    """
    with reported_errors(verbose):
        return asyncio.run(_interruptible(make()))


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


def client_run(ctx: typer.Context, body: Callable[[JobClient], Awaitable[T]]) -> T:
    """Load settings, connect a client, run ``body`` with it: the shape of every client command."""
    options = shared(ctx)
    return run(lambda: _with_client(options.settings(), body), verbose=options.verbose)


async def _with_client(settings: Settings, body: Callable[[JobClient], Awaitable[T]]) -> T:
    configure_logging(settings.log_format, settings.log_level)  # to stderr: stdout stays clean for --json
    client = await JobClient.connect(settings=settings)
    try:
        return await body(client)
    finally:
        await client.close()


def dump(value: Any) -> str:
    """Pretty JSON of ``value`` (what ``--json`` and results print)."""
    return json.dumps(value, indent=2, sort_keys=True, default=str)
