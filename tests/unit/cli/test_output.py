"""What the CLI prints: complete identifiers, a plain format when piped, one-line errors unless ``-v``.

typer's CliRunner gives the commands a stdout that is not a terminal, so every table here comes
out in the piped format (:mod:`service.cli.tables`); ``JobClient.connect`` is patched to give a
client on fakeredis. The terminal format is checked by printing to a console whose file says it
is a terminal.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import fakeredis
import pytest
import structlog
from rich.console import Console
from typer.testing import CliRunner, Result

from service.cli import app
from service.cli.app import Shared
from service.cli.tables import Column, ident, print_table
from service.client.client import JobClient
from service.errors import BrokerError, DeadLetterNotFoundError
from service.keys import Keys
from service.logs import set_verbose
from service.plugins.manifest import PluginManifest
from service.plugins.registry import Registry, WorkerInfo
from service.settings import Settings

NAMESPACE = "cli-out"
ENV: dict[str, str | None] = {
    **{name: None for name in os.environ if name.startswith("ACTIONQ_")},
    "COLUMNS": "80",  # an 80-column terminal: what cut identifiers before
    "NO_COLOR": None,
    "FORCE_COLOR": "1",  # asks rich for colour and a terminal: a pipe must stay plain anyway
    "ACTIONQ_LOG_FORMAT": "console",
}
BASE = ["--redis-url", "redis://fake", "--namespace", NAMESPACE]
# 60 characters each: longer than any column an 80-column table gives them.
LONG_PLUGIN = "plugin_with_a_name_long_enough_to_be_cut_in_a_narrow_table_x"
LONG_ACTION = "calculate_square_of_a_number_given_with_a_rather_long_name_y"
LONG_WORKER = "build-host-17.eu-west-3.compute.internal.example-412345-9f3a2c"
BOX = set("│┃┆┊║─━┄┈═┌┏┐┓└┗┘┛├┣┤┫┬┳┴┻┼╋╇╈┡┩╭╮╯╰")


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """The commands configure logging for the process: put it back as it was."""
    root = logging.getLogger()
    handlers, level, config = root.handlers[:], root.level, structlog.get_config()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.configure(**config)
    set_verbose(False)


@contextmanager
def on_fakeredis(server: fakeredis.FakeServer) -> Iterator[None]:
    async def connect(cls: type[JobClient], /, redis_url: str | None = None, **kw: Any) -> JobClient:
        settings: Settings = kw["settings"]
        return cls(fakeredis.FakeAsyncRedis(server=server), settings)

    with mock.patch.object(JobClient, "connect", classmethod(connect)):
        yield


def actionq(server: fakeredis.FakeServer, *args: str) -> Result:
    with on_fakeredis(server):
        return CliRunner().invoke(app, [*BASE, *args], env=ENV)


def publish(server: fakeredis.FakeServer, *workers: tuple[WorkerInfo, list[PluginManifest]]) -> None:
    async def go() -> None:
        redis = fakeredis.FakeAsyncRedis(server=server)
        try:
            registry = Registry(redis, Keys(NAMESPACE), heartbeat_s=5)
            for info, manifests in workers:
                await registry.publish(info, manifests)
        finally:
            await redis.aclose()

    asyncio.run(go())


def manifest(name: str, *actions: str) -> PluginManifest:
    return PluginManifest.model_validate(
        {"name": name, "version": "1.2.3", "actions": [{"name": a, "description": "squares\tx"} for a in actions]}
    )


def stderr(result: Result) -> str:
    """The result's stderr without colour codes (the stderr console takes FORCE_COLOR from the caller's environment)."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", result.stderr)


def assert_plain(text: str) -> None:
    """No box drawing, no colour: what a pipe gets."""
    assert not BOX & set(text), text
    assert "\x1b[" not in text, text


# -- piped tables -------------------------------------------------------------------------------
def test_plugins_piped_are_tab_separated_lines_with_every_name_whole() -> None:
    server = fakeredis.FakeServer()
    publish(
        server, (WorkerInfo(worker_id="w1", hostname="h"), [manifest(LONG_PLUGIN, LONG_ACTION, "calculate_square")])
    )
    done = actionq(server, "plugins")
    assert done.exit_code == 0, done.output
    assert_plain(done.stdout)
    header, *rows = done.stdout.splitlines()
    assert header.split("\t") == ["plugin", "version", "live", "action", "arguments", "description"]
    # `actionq plugins | grep calculate_square`: the lines that name it, whole.
    assert [r.split("\t")[:4] for r in rows if "calculate_square" in r] == [
        [LONG_PLUGIN, "1.2.3", "yes", LONG_ACTION],
        [LONG_PLUGIN, "1.2.3", "yes", "calculate_square"],
    ]
    # An empty value is "-", a tab inside a value is written \t: every row has every field.
    assert all(r.split("\t")[4:] == ["-", "squares\\tx"] for r in rows)


def test_workers_piped_give_awk_the_whole_worker_id() -> None:
    server = fakeredis.FakeServer()
    plugins = [manifest("PluginB", "calculate_square")]
    publish(
        server,
        (
            WorkerInfo(
                worker_id=LONG_WORKER,
                hostname="build-host-17.eu-west-3.compute.internal",
                pid=412345,
                plugins={"PluginB": "1.2.3"},
            ),
            plugins,
        ),
        (WorkerInfo(worker_id="w-short", hostname="h", pid=7, paused=True), plugins),
    )
    done = actionq(server, "workers")
    assert done.exit_code == 0, done.output
    assert_plain(done.stdout)
    lines = done.stdout.splitlines()
    assert lines[0].split("\t")[:4] == ["worker", "host", "pid", "state"]
    # `actionq workers | awk '{print $1}'` (after the header): ids ready for --worker.
    assert sorted(line.split()[0] for line in lines[1:]) == sorted([LONG_WORKER, "w-short"])
    assert f"{LONG_WORKER}\tbuild-host-17.eu-west-3.compute.internal\t412345\tactive\tPluginB 1.2.3\t0\t-" in lines


def test_nothing_to_list_piped_is_the_header_and_a_note_on_stderr() -> None:
    done = actionq(fakeredis.FakeServer(), "workers")
    assert done.exit_code == 0, done.output
    assert done.stdout.splitlines() == ["worker\thost\tpid\tstate\tplugins\trunning\tfailed plugins"]
    assert "no live workers" in done.stderr


def test_status_piped_is_name_tab_value_lines_with_compact_json() -> None:
    server = fakeredis.FakeServer()
    job_id = "job-" + "7" * 56
    submitted = actionq(
        server, "submit", LONG_PLUGIN, LONG_ACTION, "x:=6", "s=a b", "--no-validate", "--job-id", job_id
    )
    assert submitted.exit_code == 0, submitted.output
    done = actionq(server, "status", job_id)
    assert done.exit_code == 0, done.output
    assert_plain(done.stdout)
    fields = dict(line.split("\t") for line in done.stdout.splitlines())
    assert fields["job"] == job_id
    assert fields["plugin.action"] == f"{LONG_PLUGIN}.{LONG_ACTION}"
    assert json.loads(fields["params"]) == {"s": "a b", "x": 6}
    assert (fields["state"], fields["worker"]) == ("queued", "-")
    assert fields["queue"] == f"{NAMESPACE}:queue:default:{LONG_PLUGIN}"


# -- the terminal format ------------------------------------------------------------------------
class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def terminal(width: int) -> tuple[Console, _Tty]:
    file = _Tty()
    return Console(file=file, width=width, color_system=None, markup=False), file


def test_a_terminal_table_keeps_identifiers_whole_on_80_columns() -> None:
    console, file = terminal(80)
    worker_id = "ip-10-0-12-34-412345-9f3a2c"  # rich's own layout cut it to "ip-10-0-1…"
    plugins = "PluginB 1.0.0, InteropTarget 1.0.0, long_running 1.0.0"
    rows = [[worker_id, "ip-10-0-12-34", "412345", "draining", plugins, "0", "-"]]
    columns: list[Column | str] = [ident("worker"), ident("host"), "pid", "state", "plugins", "running", "failed"]
    print_table(console, columns, rows)
    text = file.getvalue()
    assert not (BOX - {"─"}) & set(text), text  # the rule under the header is the only line drawn
    assert "…" not in text
    row = next(line for line in text.splitlines() if line.startswith(worker_id + " "))  # one line: copy-pasteable
    assert row.split()[2:4] == ["412345", "draining"], text  # short values are not split either
    squeezed = "".join(text.split())
    assert "ip-10-0-12-34" in squeezed  # the host: folded, no room was left
    assert "long_running" in squeezed


def test_identifiers_too_wide_for_the_terminal_fold_instead_of_being_cut() -> None:
    console, file = terminal(80)
    columns: list[Column | str] = [ident("job"), ident("plugin.action"), "params", "state", "result / error"]
    job_id = "0123456789abcdef" * 4  # 64 + 60 characters of identifiers cannot share 80 columns
    print_table(console, columns, [[job_id, f"{LONG_PLUGIN}", "{'x': 6}", "succeeded", "36"]])
    text = file.getvalue()
    assert "…" not in text
    lines = text.splitlines()
    rule = next(i for i, line in enumerate(lines) if "─" in line)
    body = lines[rule + 1 :]
    start, end = body[0].index(LONG_PLUGIN[:4]), body[0].index("{'x'")
    # Folded over lines, every character kept: the first identifier as wide as the room allows.
    assert "".join(line[:start].strip() for line in body) == job_id
    assert "".join(line[start:end].strip() for line in body) == LONG_PLUGIN
    assert len(body[0][:start].strip()) > 30


# -- errors ---------------------------------------------------------------------------------------
def _broken_connect(exc: Exception) -> Any:
    async def connect(cls: type[JobClient], *args: Any, **kw: Any) -> JobClient:
        raise exc

    return classmethod(connect)


@pytest.mark.parametrize(
    ("exc", "line"),
    [
        (
            BrokerError("connecting to redis://fake: cannot reach Redis"),
            "error: connecting to redis://fake: cannot reach Redis",
        ),
        (OSError(24, "Too many open files"), "error: OSError: [Errno 24] Too many open files"),
    ],
)
def test_an_error_is_one_line_and_v_adds_the_traceback(exc: Exception, line: str) -> None:
    with mock.patch.object(JobClient, "connect", _broken_connect(exc)):
        quiet = CliRunner().invoke(app, [*BASE, "workers"], env=ENV)
        loud = CliRunner().invoke(app, ["-v", *BASE, "workers"], env=ENV)
    assert quiet.exit_code == loud.exit_code == 1
    assert stderr(quiet).splitlines() == [line]
    assert quiet.stdout == ""
    assert stderr(loud).startswith("Traceback (most recent call last):")
    assert stderr(loud).splitlines()[-1] == line


def test_a_missing_record_is_one_line_with_its_reason() -> None:
    done = actionq(fakeredis.FakeServer(), "dead", "show", "nope")
    assert done.exit_code == 1
    assert stderr(done).splitlines() == [f"error: {DeadLetterNotFoundError('nope')}"]


def test_watch_past_its_timeout_is_one_line_naming_the_job_and_its_state() -> None:
    server = fakeredis.FakeServer()
    queued = actionq(server, "submit", "P", "a", "--no-validate", "--defer", "60", "--job-id", "w-1")
    assert queued.exit_code == 0, queued.output
    done = actionq(server, "watch", "w-1", "--timeout", "0.2")
    assert done.exit_code == 1
    assert stderr(done).splitlines()[-1] == "error: job w-1 still queued after waiting 0.2s"
    assert "Traceback" not in done.stderr


def test_verbose_reaches_a_pool_members_command_line() -> None:
    assert Shared(namespace="n", verbose=True).argv() == ["--namespace", "n", "--verbose"]
    assert Shared(namespace="n").argv() == ["--namespace", "n"]
