"""Delegates belong to the plugin instance that registered them, and go when it is disabled or reloaded.

Also: delegates run as the code of the plugin that registered them, ``ctx.notify`` through the
loader, and the sender of job events (the worker runtime, as for worker and plugin events).
"""

from __future__ import annotations

import textwrap
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from service.events.delegates import DelegateManager
from service.events.models import JobSucceededEvent, PluginEvent
from service.events.origin import Origin, current_origin, running_as
from service.events.pluginevents import InvalidEventError
from service.models import JobRequest, JobState
from service.plugins.context import JobContext
from service.plugins.loader import PluginLoader
from service.settings import Settings
from service.worker.runtime import WorkerRuntime

pytestmark = pytest.mark.timeout(30)

WritePlugin = Callable[[str, str], Path]


def job(i: int) -> JobSucceededEvent:
    return JobSucceededEvent(worker_id="w1", job_id=f"j{i}", plugin="p", action="a", attempt=1, duration_ms=1)


def noop(*args: Any, **kwargs: Any) -> None:
    return None


# -- the manager ----------------------------------------------------------------------------------
async def test_registrations_made_as_a_plugin_belong_to_it() -> None:
    manager = DelegateManager()
    a, b = object(), object()
    with running_as(Origin(owner=a, plugin="A")):
        reg_a = manager.register("job_succeeded", noop)
        manager.register_control("pause", noop)
    with running_as(Origin(owner=b, plugin="B", job_id="j1", action="x", attempt=1)):
        reg_b = manager.register("*", noop)
        manager.register_control("pause", noop)
    unowned = manager.register("*", noop)
    manager.register_control("pause", noop)
    assert (reg_a.owner, reg_b.owner, unowned.owner) == (a, b, None)
    assert reg_b.origin is not None
    assert reg_b.origin.job_id is None  # a delegate registered in an action outlives that job
    assert manager.unregister_owner(a) == 2
    assert manager.registrations() == (reg_b, unowned)
    assert len(await manager.invoke_control("pause")) == 2
    assert manager.unregister_owner(a) == 0
    assert manager.unregister_owner(b) == 2
    assert manager.registrations() == (unowned,)
    assert len(await manager.invoke_control("pause")) == 1
    await manager.aclose()


async def test_a_removed_delegate_gets_no_later_events() -> None:
    manager = DelegateManager()
    plugin, got = object(), []
    with running_as(Origin(owner=plugin, plugin="A")):
        manager.register("job_succeeded", lambda sender, kind, **kw: got.append(kw["event"].job_id))
    manager.invoke_notification(job(1))  # queued before the plugin goes: still delivered
    manager.unregister_owner(plugin)
    manager.invoke_notification(job(2))
    await manager.aclose()
    assert got == ["j1"]


async def test_a_delegate_runs_as_the_plugin_that_registered_it() -> None:
    manager = DelegateManager()
    mine, other = Origin(owner=object(), plugin="A"), Origin(owner=object(), plugin="B", job_id="j9")
    seen: list[tuple[str, Origin | None]] = []
    thread_done = threading.Event()

    async def async_delegate(sender: Any, kind: str, **kwargs: Any) -> None:
        seen.append(("async", current_origin()))

    def sync_delegate(sender: Any, kind: str, **kwargs: Any) -> None:
        seen.append(("sync", current_origin()))
        thread_done.set()

    async def control(sender: Any, kind: str, **kwargs: Any) -> Origin | None:
        return current_origin()

    with running_as(mine):
        manager.register("job_succeeded", async_delegate)
        manager.register("job_succeeded", sync_delegate)
        manager.register_control("pause", control)
    unowned: list[Origin | None] = []
    manager.register("job_succeeded", lambda *a, **kw: unowned.append(current_origin()))
    with running_as(other):  # B's code emits the event and asks the control
        manager.invoke_notification(job(1))
        [answer] = await manager.invoke_control("pause")
    await manager.aclose()
    assert thread_done.is_set()
    assert sorted(seen, key=lambda s: s[0]) == [("async", mine), ("sync", mine)]
    assert answer is mine
    assert unowned == [None]  # nobody's delegate is not run as whoever emitted the event


# -- the loader -----------------------------------------------------------------------------------
@pytest.fixture
def write_plugin(tmp_path: Path) -> WritePlugin:
    def write(name: str, code: str) -> Path:
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        actions = (
            "actions:\n  - name: register_more\n  - name: notify\n    arguments: {tokens: {type: int}}\n"
            "  - name: emit\n    arguments: {fields: {type: dict}}\n"
        )
        (folder / "plugin.yml").write_text(f"name: {name}\nversion: 1.2.3\n{actions}")
        header = (
            "from __future__ import annotations\nfrom typing import Any\nfrom service.plugins.plugin import Plugin\n"
        )
        (folder / "plugin.py").write_text(header + textwrap.dedent(code))
        return folder

    return write


REGISTERS_IN_ON_ENABLE = """
import os

class Registers(Plugin):
    async def on_enable(self) -> None:
        self.delegates.register("job_succeeded", self.on_job)
        self.delegates.register_control("pause", self.on_pause)

    def on_job(self, sender: Any, kind: str, **kwargs: Any) -> None:
        # A file, not a module global: a reload imports the module afresh, the old delegates would not share it.
        with open(os.environ["OWNERSHIP_TEST_RUNS"], "a") as runs:
            runs.write(self.plugin_uuid + "\\n")

    def on_pause(self, sender: Any, kind: str, **kwargs: Any) -> str:
        return self.plugin_uuid

    def register_more(self) -> None:
        self.delegates.register("job_failed", self.on_job)

    def notify(self, tokens: int, ctx: Any) -> None:
        ctx.notify("ai_response_received", tokens_used=tokens)

    async def emit(self, fields: dict[str, Any], ctx: Any) -> None:
        ctx.notify("ai_x", **fields)
"""


@pytest.fixture
async def manager() -> AsyncIterator[DelegateManager]:
    delegates = DelegateManager()
    yield delegates
    await delegates.aclose()


async def test_a_plugin_reloaded_twice_has_its_delegates_once(
    write_plugin: WritePlugin, manager: DelegateManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs.log"
    monkeypatch.setenv("OWNERSHIP_TEST_RUNS", str(runs))
    folder = write_plugin("reg", REGISTERS_IN_ON_ENABLE)
    loader = PluginLoader(enable_timeout_s=5, delegates=manager)
    await loader.load("reg", folder)
    for _ in range(2):  # what the reload_plugin command does
        await loader.unload("reg")
        await loader.load("reg", folder)
    current = loader.loaded["reg"].instance
    assert [reg.owner for reg in manager.registrations()] == [current]
    assert await manager.invoke_control("pause") == [current.plugin_uuid]
    manager.invoke_notification(job(1))
    await manager.aclose()  # every delegate still registered has run
    assert runs.read_text().split() == [current.plugin_uuid]
    await loader.unload("reg")
    assert manager.registrations() == ()
    assert await manager.invoke_control("pause") == []


async def test_what_an_action_registers_goes_with_its_plugin(
    write_plugin: WritePlugin, manager: DelegateManager
) -> None:
    loader = PluginLoader(enable_timeout_s=5, delegates=manager)
    await loader.load("reg", write_plugin("reg", REGISTERS_IN_ON_ENABLE))
    ctx = JobContext.create(job_id="j1", plugin="reg", action="register_more", attempt=1, worker_id="w1")
    await loader.resolve("reg", "register_more").invoke({}, ctx)  # a plain def: run in a thread
    assert len(manager.registrations()) == 2
    await loader.unload("reg")
    assert manager.registrations() == ()


@pytest.mark.parametrize(
    "failing", ["on_enable", "on_load"], ids=["on_enable raises", "on_enable after on_load registered raises"]
)
async def test_a_plugin_that_fails_to_enable_leaves_no_delegates(
    write_plugin: WritePlugin, manager: DelegateManager, failing: str
) -> None:
    code = """
    class Fails(Plugin):
        def on_load(self) -> None:
            self.delegates.register("*", lambda *a, **kw: None)

        async def on_enable(self) -> None:
            self.delegates.register("job_failed", lambda *a, **kw: None)
            self.delegates.register_control("pause", lambda *a, **kw: False)
            raise RuntimeError("no")

        def register_more(self) -> None: ...
        def notify(self, tokens: int) -> None: ...
        def emit(self, fields: dict[str, Any]) -> None: ...
    """
    if failing == "on_load":
        code = code.replace("None)\n\n        async def", "None)\n            raise OSError\n\n        async def")
    loader = PluginLoader(enable_timeout_s=5, delegates=manager)
    with pytest.raises(Exception, match="raised"):
        await loader.load("fails", write_plugin("fails", code))
    assert manager.registrations() == ()
    assert await manager.invoke_control("pause") == []


async def test_ctx_notify_through_the_loader(write_plugin: WritePlugin, manager: DelegateManager) -> None:
    got: list[tuple[Any, dict[str, Any]]] = []
    manager.register("ai_response_received", lambda sender, kind, **kw: got.append((sender, kw)))
    loader = PluginLoader(enable_timeout_s=5, delegates=manager)
    await loader.load("reg", write_plugin("reg", REGISTERS_IN_ON_ENABLE))
    ctx = JobContext.create(job_id="j7", plugin="reg", action="notify", attempt=3, worker_id="w1")
    await loader.resolve("reg", "notify").invoke({"tokens": 812}, ctx)  # a plain def: its thread has the context
    with pytest.raises(LookupError, match="outside job j7"):
        ctx.notify("ai_response_received", tokens_used=1)  # not in the action
    await manager.aclose()
    [(sender, kwargs)] = got
    assert sender is loader.loaded["reg"].instance  # a plugin's event is sent by the plugin
    event = kwargs["event"]
    assert isinstance(event, PluginEvent)
    assert (event.plugin, event.version, event.job_id, event.action, event.attempt) == (
        "reg",
        "1.2.3",
        "j7",
        "notify",
        3,
    )
    assert kwargs["tokens_used"] == 812
    await loader.unload("reg")


async def test_ctx_notify_without_a_worker_checks_and_drops(write_plugin: WritePlugin) -> None:
    loader = PluginLoader(enable_timeout_s=5)  # a plugin loaded in a test, no delegates
    folder = write_plugin("reg", REGISTERS_IN_ON_ENABLE.replace("self.delegates.register", "pass  #"))
    await loader.load("reg", folder)
    ctx = JobContext.create(job_id="j7", plugin="reg", action="notify", attempt=1, worker_id="w1")
    await loader.resolve("reg", "notify").invoke({"tokens": 1}, ctx)  # nothing to tell: fine
    emit = JobContext.create(job_id="j8", plugin="reg", action="emit", attempt=1, worker_id="w1")
    with pytest.raises(InvalidEventError, match="event: reserved"):  # but a bad event is still an error
        await loader.resolve("reg", "emit").invoke({"fields": {"event": 1}}, emit)
    await loader.unload_all()


# -- the sender of job events ---------------------------------------------------------------------
async def test_job_events_are_sent_by_the_runtime(fake_redis: Redis) -> None:
    runtime = WorkerRuntime(Settings(), fake_redis)
    senders: list[tuple[str, Any]] = []
    runtime.delegates.register("*", lambda sender, kind, **kw: senders.append((kind, sender)))
    request = JobRequest(plugin="p", action="a", params={})
    runtime.executor.events.started("j1", request, 1, "q")
    runtime.executor.events.finished("j1", request, 1, state=JobState.SUCCEEDED, error=None, duration_ms=1)
    await runtime.delegates.aclose()
    await runtime.bridge.aclose()
    assert senders == [("job_started", runtime), ("job_succeeded", runtime)]
