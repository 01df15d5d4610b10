"""Seed 004's error decorators: log a function's exception and re-raise it, or log it and return a default.

::

    @log_errors                          # logs the exception, then re-raises it
    @handle_errors(default_return=0)     # logs the exception, then returns 0 instead
    @async_log_errors                    # the seed's names for coroutine functions:
    @async_handle_errors(default_return=None)   # the same decorators

Each decorator works on plain functions, coroutine functions and generators of either kind: the
wrapper it returns is of the same kind as the function, and ``functools.wraps`` keeps its name,
docstring and signature, so the plugin loader still sees a decorated ``async def`` action as async
and a generator as a generator, with the arguments it declares. That is why the ``async_`` forms
are the same decorators under the seed's names: a plain wrapper around a coroutine function would
return the coroutine and catch nothing, since its error is raised when it is awaited.

On a generator, the stream ends at the error: ``handle_errors`` ends it normally (nothing more is
yielded), ``log_errors`` passes the error on to whoever iterates it.

Only ``Exception`` is caught. actionq's control flow (``Retry``, ``CancellationRequested``) passes
through unlogged, and so do cancellation, ``KeyboardInterrupt``, ``SystemExit`` and a closed
generator's ``GeneratorExit``, which are not errors of the function. The line logged is
``function_failed`` with ``function`` (the qualified name), ``error_type``, ``error`` (the
message), ``outcome`` (``raised`` or ``default_returned``) and the traceback, through structlog:
on the running job's logger inside a job (so it carries the job id), else on the plugin's logger
for a plugin method, else on ``actionq.plugins``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncGenerator, Callable, Generator
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

import structlog

from service.errors import ActionQSignal
from service.plugins.context import current_job
from service.plugins.plugin import Plugin

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

__all__ = ["async_handle_errors", "async_log_errors", "handle_errors", "log_errors"]

F = TypeVar("F", bound=Callable[..., Any])

_log: FilteringBoundLogger = structlog.get_logger("actionq.plugins")


@overload
def log_errors(func: F, /) -> F: ...
@overload
def log_errors(func: None = None, /) -> Callable[[F], F]: ...
def log_errors(func: F | None = None, /) -> F | Callable[[F], F]:
    """Log an exception of the decorated function, then re-raise it (``@log_errors`` or ``@log_errors()``)."""
    if func is None:
        return lambda f: _wrap(f, handle=False, default=None)
    return _wrap(func, handle=False, default=None)


@overload
def handle_errors(func: F, /) -> F: ...
@overload
def handle_errors(func: None = None, /, *, default_return: Any = None) -> Callable[[F], F]: ...
def handle_errors(func: F | None = None, /, *, default_return: Any = None) -> F | Callable[[F], F]:
    """Log an exception of the decorated function and return ``default_return`` instead of raising.

    ``@handle_errors(default_return=0)``; bare ``@handle_errors`` returns ``None``.
    """
    if func is None:
        return lambda f: _wrap(f, handle=True, default=default_return)
    if not callable(func):
        raise TypeError("handle_errors takes the default by keyword: @handle_errors(default_return=...)")
    return _wrap(func, handle=True, default=default_return)


async_log_errors = log_errors
"""The seed's name of :func:`log_errors` for coroutine functions (both handle every kind)."""

async_handle_errors = handle_errors
"""The seed's name of :func:`handle_errors` for coroutine functions (both handle every kind)."""


def _wrap(func: F, *, handle: bool, default: Any) -> F:
    """A wrapper of ``func``'s own kind that reports its errors (see the module docstring)."""
    if not callable(func):
        raise TypeError(f"an error decorator needs a function, not {type(func).__name__}")
    report = functools.partial(_report, func, handle)
    if inspect.isasyncgenfunction(func):
        wrapper: Callable[..., Any] = _async_gen_wrapper(func, report)
    elif inspect.iscoroutinefunction(func):
        wrapper = _coroutine_wrapper(func, report, default)
    elif inspect.isgeneratorfunction(func):
        wrapper = _gen_wrapper(func, report, default)
    else:
        wrapper = _plain_wrapper(func, report, default)
    return cast(F, functools.wraps(func)(wrapper))


Report = Callable[[tuple[Any, ...], Exception], bool]
"""Logs the error: ``report(args, exc)``; True if it is handled (the wrapper returns the default), else re-raise."""


def _plain_wrapper(func: Callable[..., Any], report: Report, default: Any) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ActionQSignal:
            raise
        except Exception as exc:
            if not report(args, exc):
                raise
            return default

    return wrapper


def _coroutine_wrapper(func: Callable[..., Any], report: Report, default: Any) -> Callable[..., Any]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await func(*args, **kwargs)
        except ActionQSignal:
            raise
        except Exception as exc:
            if not report(args, exc):
                raise
            return default

    return wrapper


def _gen_wrapper(func: Callable[..., Any], report: Report, default: Any) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        try:
            return (yield from func(*args, **kwargs))  # forwards send, throw and close
        except ActionQSignal:
            raise
        except Exception as exc:
            if not report(args, exc):
                raise
            return default

    return wrapper


def _async_gen_wrapper(func: Callable[..., Any], report: Report) -> Callable[..., Any]:
    async def wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
        try:
            async with aclosing(func(*args, **kwargs)) as inner:  # closing the wrapper closes it too
                async for item in inner:
                    yield item
        except ActionQSignal:
            raise
        except Exception as exc:
            if not report(args, exc):
                raise

    return wrapper


def _report(func: Callable[..., Any], handle: bool, args: tuple[Any, ...], exc: Exception) -> bool:
    _logger(args).error(
        "function_failed",
        function=getattr(func, "__qualname__", repr(func)),
        error_type=type(exc).__name__,
        error=str(exc),
        outcome="default_returned" if handle else "raised",
        exc_info=exc,
    )
    return handle


def _logger(args: tuple[Any, ...]) -> FilteringBoundLogger:
    """The running job's logger, else the plugin's (a method's ``self``), else ``actionq.plugins``."""
    try:
        return current_job().logger
    except LookupError:
        pass
    owner = args[0] if args else None
    if isinstance(owner, Plugin) and hasattr(owner, "logger"):
        return owner.logger
    return _log
