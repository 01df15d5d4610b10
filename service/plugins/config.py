"""What a deployment gives each plugin it loads: its typed ``self.config`` and its ``self.storage``.

A plugin declares a pydantic model for its settings, and the loader fills it from the plugin's
``config:`` block in its ``plugins:`` entry (seed 002's typed plugin config)::

    class RenderConfig(PluginConfig):        # PluginConfig: a BaseModel refusing unknown keys
        api_key: SecretStr
        quality: int = 80

    class Render(Plugin):
        config_model = RenderConfig          # actionq's form; self.config is a RenderConfig

    class SeedRender(Plugin):                # the seed's form: the model as __init__'s config
        def __init__(self, config: RenderConfig = RenderConfig(api_key="-")):
            self.config = config             # the loader passes the validated config

A block that does not validate fails the plugin's load (a :class:`~service.errors.PluginLoadError`
naming the field, reported as every load failure is) while the other plugins load. Unknown keys
are refused even by a model that would ignore them. Without a model, ``self.config`` is the
block as a dict (``{}`` without one). ``SecretStr`` fields show as ``**********`` wherever the
config is printed, and a validation error never quotes the value it refused.
"""

from __future__ import annotations

import asyncio
import inspect
import typing
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from redis.asyncio import Redis

from service.errors import PluginLoadError, describe_validation
from service.keys import Keys
from service.plugins.plugin import Plugin
from service.plugins.storage import FileBackend, MemoryBackend, PluginStorage, RedisBackend, StorageBackend
from service.settings import Settings

__all__ = ["PluginConfig", "PluginEnvironment", "PluginSetup", "config_model_of"]


class PluginConfig(BaseModel):
    """Base of a plugin's config model (seed 002's ``PluginConfig``): a misspelt key is an error."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class PluginSetup:
    """One plugin's config and storage, ready for its instance."""

    config: Any
    storage: PluginStorage
    init_kwargs: dict[str, Any] = field(default_factory=dict)
    """What the class is instantiated with: ``{"config": ...}`` for the seed's ``__init__(config)``."""

    def apply(self, instance: Plugin) -> None:
        """Give ``instance`` its ``config`` and ``storage`` (before ``on_load``)."""
        if not (self.config == {} and "config" in vars(instance)):  # keep a config the plugin made itself
            instance.config = self.config
        instance.storage = self.storage


class PluginEnvironment:
    """Builds each plugin's :class:`PluginSetup` from the settings, on the worker's Redis connection.

    Without settings (a loader outside a worker), plugins get empty configs and memory storage.
    """

    def __init__(self, settings: Settings | None = None, redis: Redis | None = None) -> None:
        self.settings = settings
        self.redis = redis
        self._memory: dict[str, dict[str, bytes]] = {}  # per plugin; outlives a reload

    def setup(self, name: str, cls: type[Plugin]) -> PluginSetup:
        """Validate ``name``'s config block against ``cls``'s model and open its storage."""
        entry = self.settings.plugin_entry(name) if self.settings is not None else None
        block = dict(entry.config) if entry is not None else {}
        try:
            model, via_init = config_model_of(cls)
        except TypeError as exc:
            raise PluginLoadError(name, str(exc)) from None
        config: Any = block if model is None else validate_config(name, model, block)
        return PluginSetup(
            config=config, storage=self.storage(name), init_kwargs={"config": config} if via_init else {}
        )

    def storage(self, name: str) -> PluginStorage:
        """Plugin ``name``'s storage, with the backend its settings choose."""
        max_bytes = self.settings.max_payload_bytes if self.settings is not None else 1 << 20
        return PluginStorage(name, self._backend(name), max_bytes=max_bytes, loop=_running_loop())

    def _backend(self, name: str) -> StorageBackend:
        if self.settings is None:
            return MemoryBackend(self._memory.setdefault(name, {}))
        chosen = self.settings.plugin_storage(name)
        if chosen.backend == "redis":
            if self.redis is None:
                raise PluginLoadError(name, "storage backend redis needs the worker's Redis connection")
            return RedisBackend(self.redis, Keys(self.settings.namespace).plugin_storage(name))
        if chosen.backend == "file" and chosen.path is not None:
            return FileBackend(chosen.path / name)
        return MemoryBackend(self._memory.setdefault(name, {}))


def config_model_of(cls: type[Plugin]) -> tuple[type[BaseModel] | None, bool]:
    """``cls``'s config model, and whether its ``__init__`` takes the config (the seed's form).

    The model is ``cls.config_model``, else the type of ``__init__``'s ``config`` parameter (its
    default's class, or its annotation) when that is a pydantic model.
    """
    param = _init_config_param(cls)
    declared = getattr(cls, "config_model", None)
    if declared is not None:
        if not (isinstance(declared, type) and issubclass(declared, BaseModel)):
            raise TypeError(f"config_model must be a pydantic model class, not {declared!r}")
        return declared, param is not None
    if param is None:
        return None, False
    if isinstance(param.default, BaseModel):
        return type(param.default), True
    annotation = _annotation(cls, param)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, True
    return None, False


def validate_config(plugin: str, model: type[BaseModel], block: dict[str, Any]) -> BaseModel:
    """``block`` validated by ``model``; a :class:`PluginLoadError` naming each bad field otherwise."""
    unknown = [] if model.model_config.get("extra") in ("allow", "forbid") else _unknown_keys(model, block)
    if unknown:
        raise PluginLoadError(plugin, f"invalid config ({model.__name__}): {', '.join(unknown)}: unknown key")
    try:
        return model.model_validate(block)
    except ValidationError as exc:
        # `from None`: the pydantic error quotes the values it refused, secrets included.
        described = describe_validation(exc, unknown="unknown key", whole="(config)")
        raise PluginLoadError(plugin, f"invalid config ({model.__name__}): {described}") from None


def _unknown_keys(model: type[BaseModel], block: dict[str, Any]) -> list[str]:
    known = set(model.model_fields)
    known |= {f.alias for f in model.model_fields.values() if f.alias}
    known |= {f.validation_alias for f in model.model_fields.values() if isinstance(f.validation_alias, str)}
    return sorted(str(k) for k in block if k not in known)


def _init_config_param(cls: type[Plugin]) -> inspect.Parameter | None:
    if cls.__init__ is object.__init__:
        return None
    try:
        param = inspect.signature(cls.__init__).parameters.get("config")
    except (TypeError, ValueError):
        return None
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return param if param is not None and param.kind in keyword else None


def _annotation(cls: type[Plugin], param: inspect.Parameter) -> Any:
    """The annotation of ``param``, resolved if it is a string (``from __future__ import annotations``)."""
    if not isinstance(param.annotation, str):
        return param.annotation
    try:
        return typing.get_type_hints(cls.__init__).get("config")
    except Exception:  # an annotation that does not resolve: no model declared this way
        return None


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
