"""Load plugin code by path, run its lifecycle, and resolve declared actions to callables.

Plugin folders are not Python packages and are never imported by name (no ``import plugins``).
Each load creates a fresh synthetic package ``actionq_plugins.<name>_<n>`` whose ``__path__`` is the
plugin folder, and imports the manifest's module inside it, so plugin code can import sibling files
relatively (``from .helpers import x``) and a second load of the same plugin gets new module
objects. Unloading removes those modules from ``sys.modules``.

Only actions declared in the manifest are callable: :meth:`PluginLoader.resolve` looks names up in
the manifest, never with ``getattr`` on the plugin instance.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import types
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import structlog
from pydantic import ValidationError

from service.errors import PluginLoadError, UnknownActionError, UnknownPluginError
from service.events.delegates import DelegateManager
from service.plugins.config import PluginEnvironment
from service.plugins.context import JobContext, job_context, plugin_code, release
from service.plugins.importer import new_package, remove_modules
from service.plugins.manifest import ActionSpec, ArgumentSpec, PluginManifest, load_manifest
from service.plugins.plugin import Plugin
from service.plugins.threads import in_thread, iterate_in_thread

__all__ = ["ActionKind", "BoundAction", "LoadedPlugin", "PluginLoader"]

ActionKind = Literal["async", "sync", "async_gen", "sync_gen"]

_KEYWORD_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
_VAR_KINDS = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)

logger = structlog.get_logger("actionq.plugins")


@dataclass(frozen=True)
class BoundAction:
    """A declared action bound to the loaded plugin instance's method."""

    plugin: str
    name: str
    spec: ActionSpec
    manifest: PluginManifest
    func: Callable[..., Any]
    kind: ActionKind
    wants_ctx: bool
    owner: Plugin | None = field(default=None, repr=False, compare=False)
    """The plugin instance: the action runs as its code (its delegates and events are its own)."""

    def validate(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Coerce and complete ``params`` (see :meth:`PluginManifest.validate_params`)."""
        return self.manifest.validate_params(self.name, params)

    async def invoke(self, params: dict[str, Any], ctx: JobContext) -> Any:
        """Call the action with ``params`` (already validated) as keyword arguments.

        ``ctx`` is passed as the ``ctx`` argument when the method declares one, and is the
        :func:`~service.plugins.context.current_job` throughout. ``async def`` actions are awaited;
        plain ``def`` actions run in a worker thread with a copy of the context (so ``current_job()``
        works there); cancelled, the call stays until the thread returns
        (see :func:`service.plugins.threads.in_thread`).
        Generator actions are not invoked but iterated: see
        :meth:`iterate` (calling this for one raises ``TypeError``).
        """
        if self.is_generator:
            raise TypeError(f"action {self.plugin}.{self.name} is a generator: iterate it, do not invoke it")
        kwargs = self._kwargs(params, ctx)
        with job_context(ctx, self.owner):
            if self.kind == "async":
                return await self.func(**kwargs)
            result = await in_thread(self.func, kwargs)
            # A sync wrapper around a coroutine function (a decorator without functools.wraps
            # support for coroutines) hands back a coroutine: finish it on the loop.
            return await result if inspect.isawaitable(result) else result

    @property
    def is_generator(self) -> bool:
        """True for generator and async generator actions, whose items are streamed."""
        return self.kind in ("async_gen", "sync_gen")

    async def iterate(self, params: dict[str, Any], ctx: JobContext) -> AsyncGenerator[Any, None]:
        """The items a generator action yields, as an async generator (close it when done).

        Async generators are iterated on the loop; plain generators run in a thread of their own
        that stays at most a bounded number of items ahead (:func:`service.plugins.threads.iterate_in_thread`).
        ``ctx`` is passed and current as for :meth:`invoke`.
        """
        if not self.is_generator:
            raise TypeError(f"action {self.plugin}.{self.name} is not a generator: invoke it")
        kwargs = self._kwargs(params, ctx)
        with job_context(ctx, self.owner):
            items = self.func(**kwargs) if self.kind == "async_gen" else iterate_in_thread(self.func, kwargs)
            async with aclosing(items) as running:
                async for item in running:
                    yield item

    def _kwargs(self, params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        return {**params, "ctx": ctx} if self.wants_ctx else dict(params)


@dataclass
class LoadedPlugin:
    """A plugin that loaded and enabled: its effective manifest, instance and bound actions."""

    name: str
    manifest: PluginManifest
    instance: Plugin
    path: Path
    actions: dict[str, BoundAction]
    package: str = field(default="", repr=False)
    """The synthetic package its modules live under (removed from ``sys.modules`` on unload)."""


class PluginLoader:
    """Loads plugins from folders, keeps the ones that work, and records the ones that do not."""

    def __init__(
        self,
        *,
        enable_timeout_s: float = 30.0,
        delegates: DelegateManager | None = None,
        environment: PluginEnvironment | None = None,
    ) -> None:
        self.enable_timeout_s = enable_timeout_s
        self.delegates = delegates
        # Each plugin's config and storage (service.plugins.config); none given: empty configs, memory storage.
        self.environment = environment or PluginEnvironment()
        self.loaded: dict[str, LoadedPlugin] = {}
        self.failures: dict[str, PluginLoadError] = {}

    async def load(self, name: str, path: Path) -> LoadedPlugin:
        """Load, check and enable the plugin in ``path`` under ``name``.

        Raises :class:`PluginLoadError` (or its subclass :class:`ManifestError`) and records it in
        :attr:`failures`; nothing of a failed plugin stays registered or imported. A plugin that is
        already loaded is refused (without recording a failure): unload it first.
        """
        if name in self.loaded:
            raise PluginLoadError(name, "already loaded; unload it first")
        try:
            plugin = await self._load(name, _absolute(path))
        except PluginLoadError as exc:
            self.failures[name] = exc
            raise
        except _PLUGIN_FAILURES as exc:
            # Plugin code can fail in places no stage anticipates (a property raising on getattr):
            # it is still that plugin's failure, never the worker's.
            error = PluginLoadError(name, f"unexpected {_describe(exc)}")
            self.failures[name] = error
            raise error from exc
        self.failures.pop(name, None)
        self.loaded[name] = plugin
        logger.info("plugin_loaded", plugin=name, version=plugin.manifest.version, actions=sorted(plugin.actions))
        return plugin

    async def load_all(self, entries: Iterable[tuple[str, Path]]) -> None:
        """Load each ``(name, path)``; a failure is logged and recorded, and the others still load."""
        for name, path in entries:
            try:
                await self.load(name, path)
            except PluginLoadError as exc:
                logger.error("plugin_failed", plugin=name, reason=exc.reason)

    def resolve(self, plugin: str, action: str) -> BoundAction:
        """The declared ``action`` of a loaded ``plugin``; never an undeclared attribute."""
        loaded = self.loaded.get(plugin)
        if loaded is None:
            raise UnknownPluginError(plugin, known=list(self.loaded))
        bound = loaded.actions.get(action)
        if bound is None:
            raise UnknownActionError(plugin, action, known=list(loaded.actions))
        return bound

    async def unload(self, name: str) -> None:
        """Disable and forget a loaded plugin; an error in ``on_disable`` is logged, not raised."""
        plugin = self.loaded.pop(name, None)
        if plugin is None:
            raise UnknownPluginError(name, known=list(self.loaded))
        try:
            async with asyncio.timeout(self.enable_timeout_s):
                with plugin_code(plugin.instance, name):
                    await plugin.instance.on_disable()
        except TimeoutError:
            logger.error(
                "plugin_disable_failed", plugin=name, reason=f"on_disable timed out ({self.enable_timeout_s:g}s)"
            )
        except _PLUGIN_FAILURES as exc:
            logger.error("plugin_disable_failed", plugin=name, reason=_describe(exc))
        finally:
            plugin.instance.enabled = False
            release(plugin.instance)  # its delegates go with it: a reload must not run the old ones
            remove_modules(plugin.package)
        logger.info("plugin_unloaded", plugin=name)

    async def unload_all(self) -> None:
        """Unload every loaded plugin, the last loaded first."""
        for name in reversed(list(self.loaded)):
            await self.unload(name)

    async def _load(self, name: str, folder: Path) -> LoadedPlugin:
        manifest = load_manifest(folder, name)
        package = new_package(name, folder)
        try:
            module = _import_module(name, package, folder, manifest)
            cls = _find_class(name, module, manifest)
            setup = self.environment.setup(name, cls)  # config errors fail the load, naming the field
            instance = _run(name, "instantiating the plugin class", lambda: cls(**setup.init_kwargs))
            manifest, actions = _bind_actions(name, manifest, instance)
            instance._attach(manifest, self.delegates)
            setup.apply(instance)  # self.config and self.storage, before on_load
            with plugin_code(instance, name):  # what it registers is its own (and goes if it fails)
                _run(name, "on_load", instance.on_load)
            if instance.plugin_name != manifest.name:
                instance.logger.warning("plugin_name_overridden", set_by_on_load=instance.plugin_name)
                instance.plugin_name = manifest.name
            await self._enable(name, instance)
        except BaseException:
            remove_modules(package)
            raise
        return LoadedPlugin(
            name=name, manifest=manifest, instance=instance, path=folder, actions=actions, package=package
        )

    async def _enable(self, name: str, instance: Plugin) -> None:
        try:
            async with asyncio.timeout(self.enable_timeout_s):
                with plugin_code(instance, name):  # what it registers is its own (and goes if it fails)
                    await instance.on_enable()
        except TimeoutError as exc:
            raise PluginLoadError(name, f"on_enable did not finish within {self.enable_timeout_s:g}s") from exc
        except _PLUGIN_FAILURES as exc:
            raise PluginLoadError(name, f"on_enable raised {_describe(exc)}") from exc
        instance.enabled = True


def _absolute(path: Path) -> Path:
    # Resolved once, so the synthetic package's search path does not depend on a later chdir.
    return Path(path).resolve()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# What plugin code may raise while it loads and still be only that plugin's failure: a module
# calling sys.exit() or raising KeyboardInterrupt at import must not stop the worker.
_PLUGIN_FAILURES = (Exception, SystemExit, KeyboardInterrupt)


def _run(plugin: str, what: str, func: Callable[[], Any]) -> Any:
    try:
        return func()
    except _PLUGIN_FAILURES as exc:
        raise PluginLoadError(plugin, f"{what} raised {_describe(exc)}") from exc


def _import_module(plugin: str, package: str, folder: Path, manifest: PluginManifest) -> types.ModuleType:
    stem = manifest.module.removesuffix(".py")
    if not (folder / f"{stem}.py").is_file():
        raise PluginLoadError(plugin, f"module {stem}.py not found in {folder}")
    importlib.invalidate_caches()
    return _run(plugin, f"importing {stem}.py", lambda: importlib.import_module(f"{package}.{stem}"))  # type: ignore[no-any-return]


def _find_class(plugin: str, module: types.ModuleType, manifest: PluginManifest) -> type[Plugin]:
    if manifest.class_name is not None:
        cls = getattr(module, manifest.class_name, None)
        if not (isinstance(cls, type) and issubclass(cls, Plugin)):
            raise PluginLoadError(plugin, f"{manifest.module} has no Plugin subclass named {manifest.class_name!r}")
        return cls
    found = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, Plugin) and obj is not Plugin and obj.__module__ == module.__name__
    ]
    if len(found) != 1:
        names = ", ".join(sorted(c.__name__ for c in found)) or "none"
        raise PluginLoadError(
            plugin,
            f"{manifest.module} must define exactly one Plugin subclass (found: {names}); set `class` in the manifest",
        )
    return found[0]


def _bind_actions(
    plugin: str, manifest: PluginManifest, instance: Plugin
) -> tuple[PluginManifest, dict[str, BoundAction]]:
    """Check every declared action against its method and build the effective manifest."""
    specs: list[ActionSpec] = []
    methods: list[tuple[Callable[..., Any], bool]] = []
    for spec in manifest.actions:
        func = getattr(instance, spec.method, None)
        if func is None or not callable(func):
            what = "is not callable" if func is not None else f"is not defined on {type(instance).__name__}"
            raise PluginLoadError(plugin, f"action {spec.name!r}: method {spec.method!r} {what}")
        try:
            signature = inspect.signature(func)
        except (TypeError, ValueError) as exc:
            raise PluginLoadError(plugin, f"action {spec.name!r}: cannot inspect {spec.method!r}: {exc}") from exc
        methods.append((func, _check_signature(plugin, spec, signature)))
        specs.append(_adopt_defaults(plugin, spec, signature))
    effective = manifest.model_copy(update={"actions": specs}) if specs != manifest.actions else manifest
    actions = {
        spec.name: BoundAction(
            plugin=plugin,
            name=spec.name,
            spec=spec,
            manifest=effective,
            func=func,
            kind=_kind(func),
            wants_ctx=wants_ctx,
            owner=instance,
        )
        for spec, (func, wants_ctx) in zip(specs, methods, strict=True)
    }
    return effective, actions


def _check_signature(plugin: str, spec: ActionSpec, signature: inspect.Signature) -> bool:
    """Raise unless the method takes exactly the declared arguments; return whether it wants ``ctx``."""
    params = signature.parameters
    by_keyword = {n for n, p in params.items() if p.kind in _KEYWORD_KINDS}
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    declared = spec.argument_names()
    problems = []
    unaccepted = [a for a in declared if a not in by_keyword]
    if unaccepted and not accepts_any:
        problems.append(f"does not accept declared argument(s) {', '.join(unaccepted)} by keyword")
    undeclared = [
        n
        for n, p in params.items()
        if p.default is p.empty and p.kind not in _VAR_KINDS and n != "ctx" and n not in declared
    ]
    if undeclared:
        problems.append(f"requires parameter(s) the manifest does not declare: {', '.join(undeclared)}")
    if problems:
        raise PluginLoadError(plugin, f"action {spec.name!r}: method {spec.method!r} " + "; ".join(problems))
    return "ctx" in by_keyword


def _adopt_defaults(plugin: str, spec: ActionSpec, signature: inspect.Signature) -> ActionSpec:
    """Give declared arguments without a default the default of the Python signature, if any."""
    arguments = [_adopt_default(plugin, spec, arg, signature.parameters.get(arg.name)) for arg in spec.arguments]
    return spec.model_copy(update={"arguments": arguments}) if arguments != spec.arguments else spec


def _adopt_default(plugin: str, spec: ActionSpec, arg: ArgumentSpec, param: inspect.Parameter | None) -> ArgumentSpec:
    if not arg.required or param is None or param.default is param.empty:
        return arg
    try:
        # The manifest is published to producers as JSON: only a JSON value can be its default.
        json.dumps(param.default)
        return ArgumentSpec.model_validate({**arg.model_dump(), "default": param.default})
    except (TypeError, ValueError, ValidationError) as exc:
        logger.warning(
            "python_default_not_adopted", plugin=plugin, action=spec.name, argument=arg.name, reason=_describe(exc)
        )
        return arg


def _kind(func: Callable[..., Any]) -> ActionKind:
    if inspect.isasyncgenfunction(func):
        return "async_gen"
    if inspect.iscoroutinefunction(func):
        return "async"
    if inspect.isgeneratorfunction(func):
        return "sync_gen"
    return "sync"
