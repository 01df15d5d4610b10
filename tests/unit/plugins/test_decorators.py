"""Seed 004's error decorators: log and re-raise, or log and return the default, for every kind of function."""

from __future__ import annotations

import asyncio
import inspect
import textwrap
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from service import async_handle_errors, async_log_errors, handle_errors, log_errors
from service.errors import CancellationRequested, Retry
from service.plugins.context import JobContext, job_context
from service.plugins.loader import PluginLoader
from service.plugins.plugin import Plugin


def _failed(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == "function_failed"]


def test_log_errors_logs_then_reraises() -> None:
    @log_errors
    def divide(x: int) -> float:
        return 1 / x

    assert divide(2) == 0.5
    with capture_logs() as logs, pytest.raises(ZeroDivisionError):
        divide(0)
    [line] = _failed(logs)
    assert line["function"].endswith("divide")
    assert (line["error_type"], line["error"], line["outcome"]) == ("ZeroDivisionError", "division by zero", "raised")
    assert line["log_level"] == "error"
    assert isinstance(line["exc_info"], ZeroDivisionError)


def test_handle_errors_logs_then_returns_the_default() -> None:
    @handle_errors(default_return=-1)
    def divide(x: int) -> float:
        return 1 / x

    @handle_errors
    def bare() -> int:
        raise ValueError("nope")

    with capture_logs() as logs:
        assert divide(0) == -1
        assert bare() is None
    assert [(e["error_type"], e["outcome"]) for e in _failed(logs)] == [
        ("ZeroDivisionError", "default_returned"),
        ("ValueError", "default_returned"),
    ]
    assert divide(4) == 0.25


async def test_the_async_forms_catch_what_the_coroutine_raises() -> None:
    @async_handle_errors(default_return=0)
    async def safe_calculation(x: int) -> float:
        await asyncio.sleep(0)
        return x / 0

    @async_log_errors
    async def logged_operation() -> None:
        raise KeyError("k")

    with capture_logs() as logs:
        assert await safe_calculation(3) == 0
        with pytest.raises(KeyError):
            await logged_operation()
    assert [e["outcome"] for e in _failed(logs)] == ["default_returned", "raised"]
    # The wrappers are coroutine functions themselves, and the plain names work on coroutines too.
    assert inspect.iscoroutinefunction(safe_calculation)
    assert inspect.iscoroutinefunction(log_errors(logged_operation))


async def test_generators_stay_generators_and_end_at_the_error() -> None:
    @handle_errors(default_return="ignored")
    def numbers(n: int) -> Iterator[int]:
        yield from range(n)
        raise RuntimeError("ran out")

    @log_errors
    async def letters() -> AsyncIterator[str]:
        yield "a"
        raise RuntimeError("no b")

    assert inspect.isgeneratorfunction(numbers)
    assert inspect.isasyncgenfunction(letters)
    with capture_logs() as logs:
        assert list(numbers(3)) == [0, 1, 2]  # handled: the stream ends normally
        seen: list[str] = []
        with pytest.raises(RuntimeError, match="no b"):
            await _collect(letters(), seen)
    assert seen == ["a"]
    assert [e["outcome"] for e in _failed(logs)] == ["default_returned", "raised"]


async def _collect(items: AsyncIterator[str], into: list[str]) -> None:
    async for item in items:
        into.append(item)


async def test_closing_a_wrapped_async_generator_closes_the_function() -> None:
    closed = []

    @log_errors
    async def forever() -> AsyncGenerator[int, None]:
        try:
            while True:
                yield 1
        finally:
            closed.append(True)

    stream = forever()
    assert await anext(stream) == 1
    with capture_logs() as logs:
        await stream.aclose()
    assert closed == [True]
    assert _failed(logs) == []  # GeneratorExit is no error of the function


async def test_control_flow_and_cancellation_pass_through_unlogged() -> None:
    @handle_errors(default_return=0)
    def retry() -> None:
        raise Retry(1.0)

    @async_handle_errors(default_return=0)
    async def stop() -> None:
        raise CancellationRequested("asked")

    @async_handle_errors(default_return=0)
    async def sleeps() -> None:
        await asyncio.sleep(10)

    with capture_logs() as logs:
        with pytest.raises(Retry):
            retry()
        with pytest.raises(CancellationRequested):
            await stop()
        task = asyncio.create_task(sleeps())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert _failed(logs) == []


def test_the_signature_and_name_are_kept() -> None:
    def act(a: int, b: str = "x", *, ctx: Any = None) -> str:
        """Doc."""
        return b * a

    wrapped = handle_errors(default_return="")(act)
    assert wrapped.__name__ == "act"
    assert wrapped.__doc__ == "Doc."
    assert inspect.signature(wrapped) == inspect.signature(act)
    with pytest.raises(TypeError, match="by keyword"):
        handle_errors(0)  # type: ignore[call-overload]


async def test_inside_a_job_the_line_carries_the_job_and_for_a_plugin_its_name() -> None:
    class P(Plugin):
        @log_errors
        def boom(self) -> None:
            raise ValueError("x")

    with capture_logs() as logs:
        ctx = JobContext.create(job_id="job-7", plugin="p", action="boom", attempt=1, worker_id="w")
        with job_context(ctx), pytest.raises(ValueError, match="x"):
            P().boom()
        plugin = P()
        plugin.logger = structlog.get_logger("test").bind(plugin="P")  # as the loader's _attach binds it
        with pytest.raises(ValueError, match="x"):
            plugin.boom()
    in_job, outside = _failed(logs)
    assert (in_job["job_id"], in_job["action"]) == ("job-7", "boom")
    assert outside["plugin"] == "P"
    assert "job_id" not in outside


PLUGIN = """
from __future__ import annotations
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, MutableMapping
from service import Plugin, async_handle_errors, async_log_errors, handle_errors, log_errors


class Decorated(Plugin):
    @async_log_errors
    async def on_enable(self) -> None:
        self.logger.info("enabled")

    @async_handle_errors(default_return=0)
    async def safe_div(self, x: int, y: int = 0) -> float:
        return x / y

    @log_errors
    def sync_add(self, a: int, b: int = 1) -> int:
        return a + b

    @handle_errors(default_return=None)
    def sync_gen(self, n: int = 2) -> Iterator[int]:
        yield from range(n)
        raise RuntimeError("end")

    @log_errors
    async def async_gen(self, n: int = 2) -> AsyncIterator[int]:
        for i in range(n):
            yield i
"""

MANIFEST = """
name: decorated
actions:
  - name: safe_div
    arguments: {x: {type: int}, y: {type: int}}
  - name: sync_add
    arguments: {a: {type: int}, b: {type: int}}
  - name: sync_gen
    arguments: {n: {type: int}}
  - name: async_gen
    arguments: {n: {type: int}}
"""


async def test_the_loader_sees_each_decorated_action_as_its_kind(tmp_path: Path) -> None:
    folder = tmp_path / "decorated"
    folder.mkdir()
    (folder / "plugin.yml").write_text(textwrap.dedent(MANIFEST))
    (folder / "plugin.py").write_text(textwrap.dedent(PLUGIN))
    loader = PluginLoader(enable_timeout_s=2)
    ctx = JobContext.create(job_id="j", plugin="decorated", action="a", attempt=1, worker_id="w")
    try:
        plugin = await loader.load("decorated", folder)
        kinds = {name: action.kind for name, action in plugin.actions.items()}
        assert kinds == {"safe_div": "async", "sync_add": "sync", "sync_gen": "sync_gen", "async_gen": "async_gen"}
        # Defaults come from the original signatures (functools.wraps keeps them).
        assert plugin.manifest.action("safe_div").arguments[1].default == 0
        assert plugin.manifest.action("sync_add").arguments[1].default == 1
        safe_div = loader.resolve("decorated", "safe_div")
        with capture_logs() as logs:
            assert await safe_div.invoke(safe_div.validate({"x": 1}), ctx) == 0
        assert _failed(logs)[0]["function"] == "Decorated.safe_div"
        sync_add = loader.resolve("decorated", "sync_add")
        assert await sync_add.invoke(sync_add.validate({"a": 2}), ctx) == 3
        sync_gen = loader.resolve("decorated", "sync_gen")
        assert [i async for i in sync_gen.iterate(sync_gen.validate({"n": 3}), ctx)] == [0, 1, 2]
        async_gen = loader.resolve("decorated", "async_gen")
        assert [i async for i in async_gen.iterate(async_gen.validate({}), ctx)] == [0, 1]
    finally:
        await loader.unload_all()
