"""Logging: one structlog processor chain for our logs and for stdlib loggers such as arq's.

Context bound with ``structlog.contextvars`` (the executor binds job id, plugin and action per
job) is merged into every line. Output is JSON (one object per line) for production and
readable key=value lines on a terminal; ``auto`` picks by whether stderr is a terminal.

An exception logged with ``exc_info`` (a failing delegate, an unsettled job, arq's own
``log.exception``) costs one line on the console: ``exception=ValueError: boom`` at the end of
the event's line. A traceback per event would bury the log (a delegate failing on every event
printed ~40 lines of rich traceback with locals per event, at ~120 ms each). Verbose logging
(the CLI's ``-v``, or ``log_level: DEBUG``) adds the plain traceback, without locals. JSON logs
always keep the whole traceback as the string field ``exception``: still one line, since JSON
escapes its newlines.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

import structlog
from structlog.typing import ExcInfo, Processor

__all__ = ["configure_logging", "one_line_exception", "set_verbose"]

_verbose = False


def set_verbose(verbose: bool) -> None:
    """Make later :func:`configure_logging` calls in this process show tracebacks (the CLI's ``-v``).

    A process-wide default rather than an argument, because the worker command configures its
    logging deep inside the worker's entry point, far from the option that asked for it.
    """
    global _verbose
    _verbose = verbose


def one_line_exception(sio: TextIO, exc_info: ExcInfo) -> None:
    """Append ``exception=<type>: <message>`` to the console line (a ``ConsoleRenderer`` exception formatter)."""
    exc = exc_info[1]
    message = str(exc).replace("\r", "\\r").replace("\n", "\\n")
    sio.write(f" exception={exc_info[0].__name__}: {message}" if message else f" exception={exc_info[0].__name__}")


def configure_logging(
    fmt: Literal["auto", "console", "json"] = "auto", level: str = "INFO", *, verbose: bool | None = None
) -> None:
    """Route structlog and stdlib logging through one chain writing to stderr.

    ``verbose`` (default: :func:`set_verbose`'s, or ``level`` DEBUG) puts tracebacks on the console.
    """
    json_output = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    tracebacks = (_verbose or level == "DEBUG") if verbose is None else verbose
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(),
            exception_formatter=structlog.dev.plain_traceback if tracebacks else one_line_exception,
        )
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # format_exc_info: the traceback as one string field; the console renderer does its own.
            structlog.processors.format_exc_info if json_output else structlog.processors.StackInfoRenderer(),
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # arq logs every job start and end at INFO; ours already say the same with more context.
    logging.getLogger("arq").setLevel(max(logging.getLevelName(level), logging.WARNING))
