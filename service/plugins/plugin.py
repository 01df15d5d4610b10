"""The base class of plugin code.

A plugin is a folder with a manifest (``plugin.yml``) and a module defining one subclass of
:class:`Plugin`. The loader instantiates it with no arguments, attaches the identity attributes
below, then calls ``on_load()`` and ``await on_enable()``; ``await on_disable()`` runs when the
plugin is unloaded. Subclasses need no ``__init__`` and never have to call ``super().__init__``.

Actions are ordinary methods declared in the manifest: ``async def``, plain ``def`` (run in a
thread), or generators. A method parameter named ``ctx`` receives the job's
:class:`~service.context.JobContext`.

Before ``on_load`` the loader also sets :attr:`Plugin.config` (the plugin's ``config:`` block,
validated by its :attr:`Plugin.config_model`: :mod:`service.plugins.config`) and
:attr:`Plugin.storage` (:mod:`service.plugins.storage`).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

import structlog

from service.plugins.context import current_job

if TYPE_CHECKING:
    from pydantic import BaseModel
    from structlog.typing import FilteringBoundLogger

    from service.events.delegates import DelegateManager
    from service.plugins.manifest import PluginManifest
    from service.plugins.storage import PluginStorage

__all__ = ["Plugin"]


class Plugin:
    """Base class of plugin code. Lifecycle: ``on_load`` (sync), ``await on_enable()``, ``await on_disable()``.

    The attributes are set by the loader before ``on_load`` runs; the manifest is authoritative
    for the name, so ``on_load`` setting a different ``plugin_name`` (as seed plugins do) is
    reverted with a warning.
    """

    manifest: PluginManifest
    """The effective manifest the plugin was loaded with."""
    delegates: DelegateManager | None
    """The worker's :class:`~service.delegates.DelegateManager` (register notification and control
    delegates in ``on_enable``); ``None`` when the plugin is loaded outside a worker."""
    plugin_name: str
    """The plugin's name (``manifest.name``)."""
    version: str
    """The manifest's version."""
    description: str
    """The manifest's description."""
    plugin_uuid: str
    """A random id of this loaded instance (a reload gets a new one)."""
    enabled: bool = False
    """True once ``on_enable`` has finished, False again once the plugin is disabled."""
    logger: FilteringBoundLogger
    """A structlog logger bound to ``plugin=<name>``."""

    _logger: FilteringBoundLogger
    """Alias of :attr:`logger` under the name seed plugins use."""

    config_model: ClassVar[type[BaseModel] | None] = None
    """The pydantic model of the plugin's settings (declare it on the subclass); ``None``: untyped."""
    config: Any
    """The plugin's ``config:`` block from its ``plugins:`` entry: a :attr:`config_model` instance,
    or the block as a dict without a model (annotate ``config: MyConfig`` on the subclass for typing)."""
    storage: PluginStorage
    """JSON values by key, kept for this plugin by the configured backend (``await self.storage.get(key)``)."""

    def _attach(self, manifest: PluginManifest, delegates: DelegateManager | None = None) -> None:
        """Set the identity attributes (called by the loader right after instantiation)."""
        self.manifest = manifest
        self.delegates = delegates
        self.plugin_name = manifest.name
        self.version = manifest.version
        self.description = manifest.description
        self.plugin_uuid = str(uuid.uuid4())
        self.enabled = False
        self.logger = structlog.get_logger("actionq.plugins").bind(plugin=manifest.name)
        self._logger = self.logger

    def on_load(self, *args: Any, **kwargs: Any) -> None:
        """Called once, synchronously, after the attributes are set. Default: nothing."""

    async def on_enable(self) -> None:
        """Called once after ``on_load``; the plugin serves jobs once it returns. Default: nothing."""

    async def on_disable(self) -> None:
        """Called when the plugin is unloaded; release resources here. Default: nothing."""

    async def report_progress(
        self,
        current_step: int | None,
        total_steps: int | None = None,
        message: str = "",
        additional_data: dict[str, Any] | None = None,
    ) -> None:
        """The seeds' progress call, for use inside an action: reaches the job being run.

        ``await self.report_progress(3, 10, "copying", {"file": name})`` is the same as
        ``current_job().progress(3, 10, "copying", {"file": name})``; ``total_steps=None`` means
        indeterminate progress. Raises :class:`LookupError` outside a running job.
        """
        current_job().progress(current_step, total_steps, message, additional_data)

    _report_progress = report_progress

    async def execute(self, plugin: str, method: str, args: Any = None, *, host: str = "any", **options: Any) -> Any:
        """Run another plugin's action as a child of the running job and return its result (seed 004).

        ``await self.execute("PluginB", "calculate_square", 5, host="local")``: ``args`` is a dict,
        a tuple of positional values or one value; ``host`` is ``"any"``, ``"local"``, ``"remote"``
        or a hostname; ``timeout`` bounds the wait. The child's error raises here; cancelling
        this job cancels the child. See :mod:`service.plugins.calls`. Raises ``LookupError``
        outside a running job.
        """
        return await current_job().calls.execute(plugin, method, args, host=host, **options)

    def execute_sync(self, plugin: str, method: str, args: Any = None, **options: Any) -> Any:
        """:meth:`execute` for a plain ``def`` action (its thread blocks until the child answers)."""
        return current_job().calls.execute_sync(plugin, method, args, **options)

    def execute_stream(self, plugin: str, method: str, args: Any = None, **options: Any) -> AsyncIterator[Any]:
        """The items of another plugin's generator action, run as a child job: ``async for item in ...``."""
        return current_job().calls.execute_stream(plugin, method, args, **options)

    def execute_stream_sync(self, plugin: str, method: str, args: Any = None, **options: Any) -> Iterator[Any]:
        """:meth:`execute_stream` for a plain ``def`` action: ``for item in ...``."""
        return current_job().calls.execute_stream_sync(plugin, method, args, **options)
