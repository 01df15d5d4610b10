"""PluginLoader: import by path, lifecycle, failure isolation, resolving and invoking actions."""

from __future__ import annotations

import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from service.errors import ManifestError, PluginLoadError, UnknownActionError, UnknownPluginError
from service.plugins.context import JobContext, current_job
from service.plugins.loader import LoadedPlugin, PluginLoader
from service.plugins.manifest import PluginManifest

ROOT = Path(__file__).resolve().parents[3]
PLUGINS = ROOT / "plugins"
FIXTURES = ROOT / "tests" / "fixtures" / "plugins"
BUNDLED = ("long_running", "PluginB", "InteropTarget")

WritePlugin = Callable[[str, str, str], Path]


@pytest.fixture
async def loader() -> AsyncIterator[PluginLoader]:
    plugin_loader = PluginLoader(enable_timeout_s=2)
    yield plugin_loader
    await plugin_loader.unload_all()


@pytest.fixture
def ctx() -> JobContext:
    return JobContext.create(job_id="job-1", plugin="p", action="a", attempt=1, worker_id="w-1")


@pytest.fixture
def write_plugin(tmp_path: Path) -> WritePlugin:
    """Write a plugin folder (plugin.yml + plugin.py) and return its path."""

    def write(name: str, manifest: str, code: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "plugin.yml").write_text(textwrap.dedent(manifest))
        header = (
            "from __future__ import annotations\nfrom typing import Any\nfrom service.plugins.plugin import Plugin\n"
        )
        (folder / "plugin.py").write_text(header + textwrap.dedent(code))
        return folder

    return write


def modules_of(plugin: LoadedPlugin) -> list[str]:
    return [name for name in sys.modules if name.startswith(plugin.package + ".") or name == plugin.package]


# --- the bundled plugins ---------------------------------------------------------------------


async def test_loads_bundled_plugins(loader: PluginLoader) -> None:
    await loader.load_all((name, PLUGINS / name) for name in BUNDLED)
    assert loader.failures == {}
    assert list(loader.loaded) == list(BUNDLED)
    for plugin in loader.loaded.values():
        assert plugin.instance.enabled
        assert plugin.instance.plugin_name == plugin.name
        assert plugin.instance.manifest is plugin.manifest
        assert plugin.instance._logger is plugin.instance.logger


async def test_plugin_b_squares_a_positional_six(loader: PluginLoader, ctx: JobContext) -> None:
    await loader.load("PluginB", PLUGINS / "PluginB")
    action = loader.resolve("PluginB", "calculate_square")
    params = action.validate(action.manifest.bind_positional("calculate_square", [6]))
    result = await action.invoke(params, ctx)
    assert result == 36
    assert type(result) is int


async def test_interop_defaults_come_from_the_python_signature(loader: PluginLoader, ctx: JobContext) -> None:
    plugin = await loader.load("InteropTarget", PLUGINS / "InteropTarget")
    for name in ("it_sync_add", "it_async_add"):
        b = plugin.manifest.action(name).arguments[1]
        assert (b.name, b.required, b.default) == ("b", False, 1)
        action = loader.resolve("InteropTarget", name)
        assert action.kind == ("sync" if name == "it_sync_add" else "async")
        assert await action.invoke(action.validate({"a": "2"}), ctx) == 3
        assert await action.invoke(action.validate({"a": 2, "b": 5}), ctx) == 7
    published = plugin.manifest.model_dump(mode="json", by_alias=True)
    assert PluginManifest.model_validate(published).action("it_sync_add").arguments[1].default == 1


async def test_long_running_actions(loader: PluginLoader, ctx: JobContext) -> None:
    await loader.load("long_running", PLUGINS / "long_running")
    count = loader.resolve("long_running", "count_slowly")
    assert (count.kind, count.wants_ctx, count.spec.timeout_s) == ("async", True, 120)
    result = await count.invoke(count.validate({"steps": "3", "delay_s": 0}), ctx)
    assert result["steps"] == 3
    blocking = loader.resolve("long_running", "blocking_sleep")
    assert blocking.kind == "sync"
    assert await blocking.invoke(blocking.validate({"seconds": 0.01}), ctx) == 0.01
    fail = loader.resolve("long_running", "fail")
    with pytest.raises(RuntimeError, match=r"^kaput$"):
        await fail.invoke(fail.validate({"message": "kaput"}), ctx)


# --- action kinds and the job context --------------------------------------------------------


async def test_sync_action_runs_in_a_thread_with_current_job(loader: PluginLoader, ctx: JobContext) -> None:
    await loader.load("probe", FIXTURES / "probe")
    action = loader.resolve("probe", "whoami")
    assert (action.kind, action.wants_ctx) == ("sync", False)
    result = await action.invoke({}, ctx)
    assert result["thread"] != threading.get_ident()
    assert result["job_id"] == "job-1"
    with pytest.raises(LookupError):
        current_job()


async def test_async_action_gets_ctx_and_current_job(loader: PluginLoader, ctx: JobContext) -> None:
    await loader.load("probe", FIXTURES / "probe")
    action = loader.resolve("probe", "async_ctx")
    assert action.wants_ctx
    assert await action.invoke(action.validate({"x": "4"}), ctx) == {"ctx_job": "job-1", "current_job": "job-1", "x": 4}


async def test_generators_are_iterated_not_invoked(loader: PluginLoader, ctx: JobContext) -> None:
    await loader.load("probe", FIXTURES / "probe")
    sync_gen = loader.resolve("probe", "sync_gen")
    async_gen = loader.resolve("probe", "async_gen")
    assert (sync_gen.kind, async_gen.kind) == ("sync_gen", "async_gen")
    assert sync_gen.is_generator
    assert async_gen.is_generator
    assert [item async for item in sync_gen.iterate(sync_gen.validate({}), ctx)] == [0, 1, 2]
    assert [item async for item in async_gen.iterate(async_gen.validate({"n": 2}), ctx)] == ["a0", "a1"]
    with pytest.raises(TypeError, match="iterate it"):
        await sync_gen.invoke({}, ctx)
    with pytest.raises(TypeError, match="invoke it"):
        await anext(loader.resolve("probe", "async_ctx").iterate({"x": 1}, ctx))


async def test_relative_import_and_method_alias(loader: PluginLoader, ctx: JobContext) -> None:
    await loader.load("probe", FIXTURES / "probe")
    assert await loader.resolve("probe", "sibling").invoke({}, ctx) == "from a sibling module"


# --- resolving -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["secret", "on_enable", "on_disable", "_attach", "sibling_value", "__init__"])
async def test_only_declared_actions_resolve(loader: PluginLoader, name: str) -> None:
    await loader.load("probe", FIXTURES / "probe")
    with pytest.raises(UnknownActionError) as info:
        loader.resolve("probe", name)
    assert "whoami" in info.value.known


async def test_unknown_plugin(loader: PluginLoader) -> None:
    await loader.load("probe", FIXTURES / "probe")
    with pytest.raises(UnknownPluginError) as info:
        loader.resolve("nope", "whoami")
    assert info.value.known == ("probe",)


# --- failures --------------------------------------------------------------------------------


async def test_failing_plugins_are_recorded_and_the_others_load() -> None:
    loader = PluginLoader(enable_timeout_s=0.2)
    entries = [
        ("probe", FIXTURES / "probe"),
        ("import_error", FIXTURES / "import_error"),
        ("enable_raises", FIXTURES / "enable_raises"),
        ("enable_hangs", FIXTURES / "enable_hangs"),
        ("missing_method", FIXTURES / "missing_method"),
        ("bad_manifest", FIXTURES / "bad_manifest"),
        ("PluginB", PLUGINS / "PluginB"),
    ]
    with capture_logs() as logs:
        await loader.load_all(entries)
    try:
        assert list(loader.loaded) == ["probe", "PluginB"]
        reasons = {name: exc.reason for name, exc in loader.failures.items()}
        assert set(reasons) == {"import_error", "enable_raises", "enable_hangs", "missing_method", "bad_manifest"}
        assert "RuntimeError: broken at import time" in reasons["import_error"]
        assert reasons["enable_raises"] == "on_enable raised ConnectionError: backend unreachable"
        assert reasons["enable_hangs"] == "on_enable did not finish within 0.2s"
        assert "'ghost'" in reasons["missing_method"]
        assert "is not defined on MissingMethod" in reasons["missing_method"]
        assert isinstance(loader.failures["bad_manifest"], ManifestError)
        assert "colour: unknown key" in reasons["bad_manifest"]
        assert "actions.0.timeout_s" in reasons["bad_manifest"]
        failed = {e["plugin"]: e["reason"] for e in logs if e["event"] == "plugin_failed"}
        assert failed == reasons
        assert not [
            m for m in sys.modules if m.startswith("actionq_plugins.") and "probe" not in m and "PluginB" not in m
        ]
    finally:
        await loader.unload_all()


async def test_load_raises_and_records(loader: PluginLoader) -> None:
    with pytest.raises(PluginLoadError, match="broken at import time"):
        await loader.load("import_error", FIXTURES / "import_error")
    assert "import_error" in loader.failures
    assert "import_error" not in loader.loaded


async def test_a_later_successful_load_clears_the_failure(loader: PluginLoader, write_plugin: WritePlugin) -> None:
    folder = write_plugin("flaky", "name: flaky\n", "class Flaky(Plugin):\n    pass\n")
    (folder / "plugin.py").write_text("raise ImportError('not yet')\n")
    with pytest.raises(PluginLoadError):
        await loader.load("flaky", folder)
    (folder / "plugin.py").write_text("from service.plugins.plugin import Plugin\n\nclass Flaky(Plugin):\n    pass\n")
    await loader.load("flaky", folder)
    assert "flaky" not in loader.failures


async def test_loading_a_loaded_plugin_is_refused(loader: PluginLoader) -> None:
    await loader.load("probe", FIXTURES / "probe")
    with pytest.raises(PluginLoadError, match="already loaded"):
        await loader.load("probe", FIXTURES / "probe")
    assert "probe" not in loader.failures


@pytest.mark.parametrize(
    ("manifest", "code", "message"),
    [
        (
            "name: sig\nactions: [{name: act, arguments: {a: {}}}]\n",
            "class P(Plugin):\n    def act(self, b: int) -> None: ...\n",
            "does not accept declared argument(s) a by keyword; requires parameter(s) the manifest does not declare: b",
        ),
        (
            "name: sig\nactions: [{name: act, arguments: {a: {}}}]\n",
            "class P(Plugin):\n    def act(self, a: int, /) -> None: ...\n",
            "does not accept declared argument(s) a by keyword",
        ),
        (
            "name: sig\nactions: [{name: act}]\n",
            "class P(Plugin):\n    act = 42\n",
            "method 'act' is not callable",
        ),
        (
            "name: sig\n",
            "class A(Plugin):\n    pass\nclass B(Plugin):\n    pass\n",
            "exactly one Plugin subclass (found: A, B)",
        ),
        ("name: sig\n", "X = 1\n", "exactly one Plugin subclass (found: none)"),
        (
            "name: sig\nactions: [{name: act}]\n",
            "class P(Plugin):\n    @property\n    def act(self) -> Any:\n        raise KeyError('x')\n",
            "unexpected KeyError: 'x'",
        ),
        ("name: sig\nclass: Nope\n", "class P(Plugin):\n    pass\n", "no Plugin subclass named 'Nope'"),
        ("name: sig\nmodule: other.py\n", "", "module other.py not found"),
        ("name: sig\n", "class P(Plugin):\n    def __init__(self, x: int) -> None: ...\n", "instantiating"),
        (
            "name: sig\n",
            "class P(Plugin):\n    def on_load(self, *a: Any, **k: Any) -> None:\n        raise ValueError('no')\n",
            "on_load raised ValueError: no",
        ),
    ],
)
async def test_code_that_does_not_match_the_manifest(
    loader: PluginLoader, write_plugin: WritePlugin, manifest: str, code: str, message: str
) -> None:
    folder = write_plugin("sig", manifest, code)
    with pytest.raises(PluginLoadError) as info:
        await loader.load("sig", folder)
    assert message in info.value.reason
    assert not [m for m in sys.modules if m.startswith("actionq_plugins.sig_")]


async def test_kwargs_accept_every_declared_argument(
    loader: PluginLoader, write_plugin: WritePlugin, ctx: JobContext
) -> None:
    code = "class P(Plugin):\n    async def act(self, **kw: Any) -> Any:\n        return kw\n"
    folder = write_plugin("kw", "name: kw\nactions: [{name: act, arguments: {a: int, b: {default: 2}}}]\n", code)
    await loader.load("kw", folder)
    action = loader.resolve("kw", "act")
    assert not action.wants_ctx
    assert await action.invoke(action.validate({"a": "1"}), ctx) == {"a": 1, "b": 2}


async def test_non_json_python_default_is_not_adopted(loader: PluginLoader, write_plugin: WritePlugin) -> None:
    code = "SENTINEL = object()\nclass P(Plugin):\n    def act(self, a: Any = SENTINEL) -> None: ...\n"
    folder = write_plugin("nj", "name: nj\nactions: [{name: act, arguments: {a: {}}}]\n", code)
    with capture_logs() as logs:
        plugin = await loader.load("nj", folder)
    assert plugin.manifest.action("act").arguments[0].required
    assert [e["argument"] for e in logs if e["event"] == "python_default_not_adopted"] == ["a"]


async def test_on_load_cannot_rename_the_plugin(loader: PluginLoader, write_plugin: WritePlugin) -> None:
    code = "class P(Plugin):\n    def on_load(self, *a: Any, **k: Any) -> None:\n        self.plugin_name = 'Other'\n"
    folder = write_plugin("named", "name: named\n", code)
    with capture_logs() as logs:
        plugin = await loader.load("named", folder)
    assert plugin.instance.plugin_name == "named"
    assert [e["set_by_on_load"] for e in logs if e["event"] == "plugin_name_overridden"] == ["Other"]


# --- unloading and fresh modules -------------------------------------------------------------


async def test_unload_disables_and_removes_modules(loader: PluginLoader) -> None:
    plugin = await loader.load("probe", FIXTURES / "probe")
    instance = plugin.instance
    assert f"{plugin.package}.plugin" in sys.modules
    assert f"{plugin.package}.helpers" in sys.modules
    await loader.unload("probe")
    assert getattr(instance, "disabled", False) is True
    assert not instance.enabled
    assert modules_of(plugin) == []
    assert "probe" not in loader.loaded
    with pytest.raises(UnknownPluginError):
        await loader.unload("probe")


async def test_on_disable_errors_are_logged_not_raised(loader: PluginLoader, write_plugin: WritePlugin) -> None:
    code = "class P(Plugin):\n    async def on_disable(self) -> None:\n        raise OSError('disk gone')\n"
    folder = write_plugin("dis", "name: dis\n", code)
    await loader.load("dis", folder)
    with capture_logs() as logs:
        await loader.unload("dis")
    assert [e["reason"] for e in logs if e["event"] == "plugin_disable_failed"] == ["OSError: disk gone"]
    assert "dis" not in loader.loaded


async def test_loading_twice_gives_distinct_modules(loader: PluginLoader) -> None:
    other = PluginLoader()
    first = await loader.load("probe", FIXTURES / "probe")
    second = await other.load("probe", FIXTURES / "probe")
    try:
        assert first.package != second.package
        assert sys.modules[f"{first.package}.plugin"] is not sys.modules[f"{second.package}.plugin"]
        assert type(first.instance) is not type(second.instance)
        assert first.instance.plugin_uuid != second.instance.plugin_uuid
    finally:
        await other.unload_all()
    await loader.unload("probe")
    third = await loader.load("probe", FIXTURES / "probe")
    assert third.package not in (first.package, second.package)
