"""A logged exception on the console: one line with its type and message; a plain traceback if verbose.

A delegate that fails on every event used to print a rich traceback with its locals each time
(~40 lines and ~120 ms per event). JSON logs keep the traceback, as one string field.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Literal

import pytest
import structlog

from service.logs import configure_logging, set_verbose

Format = Literal["auto", "console", "json"]


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level, config = root.handlers[:], root.level, structlog.get_config()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.configure(**config)
    set_verbose(False)


def _delegate() -> None:
    secret_local = "s3cr3t-local-value"  # a rich traceback with locals printed this
    raise ValueError(f"delegate broke\non two lines ({len(secret_local)})")


def log_failure(
    capsys: pytest.CaptureFixture[str], fmt: Format = "console", *, level: str = "INFO", verbose: bool | None = None
) -> str:
    """Configure logging (stderr is capsys's now), log a delegate's failure as the worker does, return stderr."""
    configure_logging(fmt, level, verbose=verbose)
    try:
        _delegate()
    except ValueError as exc:
        structlog.get_logger("actionq.delegates").warning("delegate_failed", delegate="d", exc_info=exc)
    return capsys.readouterr().err


def test_a_logged_exception_is_one_line_with_its_type_and_message(capsys: pytest.CaptureFixture[str]) -> None:
    lines = log_failure(capsys).splitlines()
    assert len(lines) == 1, lines
    assert "delegate_failed" in lines[0]
    assert lines[0].endswith(r" exception=ValueError: delegate broke\non two lines (18)")


def test_a_stdlib_logger_exception_is_one_line_too(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("console")
    try:
        _delegate()
    except ValueError:
        logging.getLogger("arq.worker").exception("job failed")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert "exception=ValueError: delegate broke" in lines[0]


@pytest.mark.parametrize("how", ["verbose", "debug", "set_verbose"])
def test_verbose_logs_show_a_plain_traceback_without_locals(capsys: pytest.CaptureFixture[str], how: str) -> None:
    if how == "set_verbose":  # what `actionq -v ...` does before any command configures its logging
        set_verbose(True)
    text = log_failure(capsys, level="DEBUG" if how == "debug" else "INFO", verbose=True if how == "verbose" else None)
    assert "Traceback (most recent call last):" in text
    assert "in _delegate" in text
    assert text.rstrip().endswith("ValueError: delegate broke\non two lines (18)")
    assert "s3cr3t-local-value" not in text  # plain: no locals block
    assert "locals" not in text
    assert not set("│╭╮╰╯") & set(text)


@pytest.mark.parametrize("verbose", [False, True])
def test_json_logs_keep_the_traceback_as_one_string_field_on_one_line(
    capsys: pytest.CaptureFixture[str], verbose: bool
) -> None:
    lines = log_failure(capsys, "json", verbose=verbose).splitlines()
    assert len(lines) == 1, lines
    record = json.loads(lines[0])
    assert record["event"] == "delegate_failed"
    assert record["exception"].startswith("Traceback (most recent call last):")
    assert record["exception"].endswith("ValueError: delegate broke\non two lines (18)")
    assert "s3cr3t-local-value" not in record["exception"]
