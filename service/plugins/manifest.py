"""Plugin manifests: what a plugin declares, read without importing its code.

A manifest names the plugin, its version and the actions it serves, each with typed arguments,
defaults and a timeout. Workers load it next to the plugin code; producers get it from the
registry (as JSON) and validate params with :meth:`PluginManifest.validate_params` before anything
is written to Redis, so this module must never import plugin code.

Argument types are a small language parsed with :mod:`ast` (never ``eval``)::

    any  str  int  float  bool  list  dict  none      (also: string integer number boolean
    list[int]  dict[str, int]  int | None             array object null; number = int | float)
    Optional[int]  Union[int, str]  Literal["a", "b"]

Validation uses pydantic's lax mode, so the strings a command line sends are coerced
(``"6"`` → ``6`` for ``int``, ``"true"`` → ``True`` for ``bool``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, cast

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    create_model,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)

from service.errors import FieldError, InvalidParamsError, ManifestError, UnknownActionError, describe_validation
from service.models import Name
from service.plugins.argtypes import parse_type
from service.retry import RetryOverride

__all__ = ["MISSING", "ActionSpec", "ArgumentSpec", "PluginManifest", "load_manifest", "parse_type"]

MANIFEST_FILE: Final = "plugin.yml"
SEED_MANIFEST_FILE: Final = "plugin_config.yml"
# Hooks the loader calls itself; exposing them as actions would let a job re-enable a plugin.
_LIFECYCLE_METHODS: Final = frozenset({"on_load", "on_enable", "on_disable"})


class _Missing:
    """The type of :data:`MISSING`: an argument without a default (``default: null`` means None)."""

    def __repr__(self) -> str:
        return "MISSING"

    # Pydantic copies field defaults; MISSING must stay the one object `is` compares against.
    def __copy__(self) -> _Missing:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> _Missing:
        return self


MISSING: Final = _Missing()
"""The ``default`` of an :class:`ArgumentSpec` that has none (the argument is required)."""


def _normalize_arguments(value: Any) -> Any:
    """Accept ``arguments`` as a list of specs or as a mapping ``name: {type, default, ...}``."""
    if not isinstance(value, Mapping):
        return value
    out = []
    for name, spec in value.items():
        if spec is None:
            spec = {}
        elif isinstance(spec, str):
            spec = {"type": spec}
        out.append({"name": name, **spec} if isinstance(spec, Mapping) else spec)
    return out


def _version_text(value: Any) -> Any:
    # YAML reads `version: 1.0` as a float; a version is text.
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArgumentSpec(_Frozen):
    """One declared argument of an action: name, type string, description and optional default."""

    name: Name
    type: str = "any"
    description: str = ""
    default: Any = Field(default_factory=lambda: MISSING)
    secret: bool = False
    """An API key, a password: the gateway shows its value as ``"***"`` in every response (the job
    still gets it: the record keeps the request as submitted, so keep Redis private)."""

    @property
    def required(self) -> bool:
        """True when the argument has no default and callers must pass it."""
        return self.default is MISSING

    @property
    def annotation(self) -> Any:
        """The parsed Python annotation of :attr:`type`."""
        return parse_type(self.type)

    @field_validator("name")
    @classmethod
    def _not_ctx(cls, value: str) -> str:
        if value == "ctx":
            raise ValueError("'ctx' is reserved for the job context and cannot be a declared argument")
        return value

    @field_validator("type")
    @classmethod
    def _type_parses(cls, value: str, info: ValidationInfo) -> str:
        try:
            parse_type(value)
        except ValueError as exc:
            raise ValueError(f"argument {info.data.get('name', '?')!r}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _default_fits(self) -> ArgumentSpec:
        if not self.required:
            try:
                TypeAdapter(self.annotation).validate_python(self.default)
            except ValidationError as exc:
                msg = exc.errors()[0]["msg"]
                raise ValueError(f"default of argument {self.name!r} does not fit type {self.type!r}: {msg}") from None
        return self

    @field_serializer("default", mode="wrap")
    def _missing_as_none(self, value: Any, handler: SerializerFunctionWrapHandler) -> Any:
        return None if value is MISSING else handler(value)

    @model_serializer(mode="wrap")
    def _drop_missing(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if self.required and isinstance(data, dict):
            data.pop("default", None)
        return data


class ActionSpec(_Frozen):
    """One action: the name callers use, the Python method behind it, arguments, timeout, retries and
    its concurrency limit (:mod:`service.worker.limits`)."""

    name: Name
    method: str
    description: str = ""
    arguments: list[ArgumentSpec] = Field(default_factory=list)
    timeout_s: float | None = Field(default=None, gt=0)
    retry: RetryOverride | None = Field(default=None, description="Overrides the service's retry policy.")
    cancel_grace_s: float | None = Field(
        default=None, ge=0, description="How long a cancelled (or timed-out) run may take to stop by itself."
    )
    max_concurrent: int | None = Field(
        default=None, ge=1, description="At most this many jobs of the action run at once, across all workers."
    )
    tags: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _method_defaults_to_name(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("method") is None and "name" in data:
            return {**data, "method": data["name"]}
        return data

    @field_validator("arguments", mode="before")
    @classmethod
    def _arguments_shape(cls, value: Any) -> Any:
        return _normalize_arguments(value)

    @field_validator("method")
    @classmethod
    def _method_is_public(cls, value: str) -> str:
        if not value.isidentifier() or value.startswith("_") or value in _LIFECYCLE_METHODS:
            raise ValueError(f"{value!r} is not a public method name (no leading '_', not a lifecycle hook)")
        return value

    @field_validator("arguments")
    @classmethod
    def _unique_arguments(cls, value: list[ArgumentSpec]) -> list[ArgumentSpec]:
        _reject_duplicates([a.name for a in value], "argument")
        return value

    def argument_names(self) -> list[str]:
        """The declared argument names in declaration order (the positional order)."""
        return [a.name for a in self.arguments]


def _reject_duplicates(names: Sequence[str], what: str) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"duplicate {what} name(s): {', '.join(dupes)}")


class PluginManifest(_Frozen):
    """What a plugin declares: its identity, code location and actions (``plugin.yml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: Name
    version: str = "0.0.0"
    description: str = ""
    module: str = Field(default="plugin.py", pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.py)?$")
    class_name: str | None = Field(default=None, alias="class")
    actions: list[ActionSpec] = Field(default_factory=list)
    publish_job_channels: bool | None = Field(
        default=None,
        description="Publish every job's channel from its submit on (true) or only once followed (false), whatever "
        "the deployment's publish_job_channels says (unset: as it says).",
    )
    max_concurrent: int | None = Field(
        default=None,
        ge=1,
        description="At most this many jobs of the plugin (any action) run at once, across all workers.",
    )
    tags: list[str] = Field(default_factory=list)

    # Per action name: the spec the params model was built from (identity-checked, since
    # model_copy shares private attributes), the model, and the arguments' names in field order.
    _params_models: dict[str, tuple[ActionSpec, type[BaseModel], tuple[str, ...]]] = PrivateAttr(default_factory=dict)

    @field_validator("version", mode="before")
    @classmethod
    def _version_is_text(cls, value: Any) -> Any:
        return _version_text(value)

    @field_validator("actions")
    @classmethod
    def _unique_actions(cls, value: list[ActionSpec]) -> list[ActionSpec]:
        _reject_duplicates([a.name for a in value], "action")
        return value

    def action(self, name: str) -> ActionSpec:
        """The declared action ``name``; :class:`UnknownActionError` if there is none."""
        for spec in self.actions:
            if spec.name == name:
                return spec
        raise UnknownActionError(self.name, name, known=[a.name for a in self.actions])

    def validate_params(self, action: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """Coerce ``params`` to the action's declared types and fill in defaults.

        Raises :class:`InvalidParamsError` naming every bad field: missing required arguments,
        unknown ones and values of the wrong type.
        """
        spec = self.action(action)
        model, names = self._params_model(spec)
        try:
            validated = model.__pydantic_validator__.validate_python(params)
        except ValidationError as exc:
            raise InvalidParamsError(self.name, action, _field_errors(exc)) from exc
        # The fields arg_0, arg_1, ... in order: their values under the arguments' names.
        return dict(zip(names, validated.__dict__.values(), strict=True))

    def bind_positional(self, action: str, args: Sequence[Any]) -> dict[str, Any]:
        """Map positional ``args`` onto the declared argument order (the seed's call style)."""
        names = self.action(action).argument_names()
        if len(args) > len(names):
            message = f"takes at most {len(names)} positional argument(s) ({', '.join(names)}), got {len(args)}"
            raise InvalidParamsError(self.name, action, [FieldError(field="args", message=message)])
        return dict(zip(names, args, strict=False))

    def _params_model(self, spec: ActionSpec) -> tuple[type[BaseModel], tuple[str, ...]]:
        """The action's params model (built once), and its arguments' names in field order."""
        # Not self._params_models: pydantic's __getattr__ for a private attribute costs as much as
        # the validation itself (1.7 us of 3.5 per job, pydantic 2.14); its slot is a plain dict.
        built = cast(dict[str, Any], self.__pydantic_private__)["_params_models"]
        cached = built.get(spec.name)
        if cached is not None and cached[0] is spec:
            return cached[1], cached[2]
        # Field names are positional placeholders, the argument names are aliases: an argument may be
        # called `a-b` or `model_config`, which are not usable as pydantic field names.
        fields: dict[str, Any] = {
            f"arg_{i}": (arg.annotation, Field(... if arg.required else arg.default, alias=arg.name))
            for i, arg in enumerate(spec.arguments)
        }
        model: type[BaseModel] = create_model(
            f"{self.name}.{spec.name}.params", __config__=ConfigDict(extra="forbid"), **fields
        )
        names = tuple(arg.name for arg in spec.arguments)
        built[spec.name] = (spec, model, names)
        return model, names


def _field_errors(exc: ValidationError) -> list[FieldError]:
    """One :class:`FieldError` per bad top-level field, merging the messages of union branches."""
    merged: dict[str, list[str]] = {}
    for err in exc.errors():
        loc = err["loc"]
        field = str(loc[0]) if loc else "(params)"
        message = "unknown argument" if err["type"] == "extra_forbidden" else err["msg"]
        if len(loc) > 1:
            message = f"{'.'.join(str(p) for p in loc[1:])}: {message}"
        if message not in merged.setdefault(field, []):
            merged[field].append(message)
    return [FieldError(field=field, message="; ".join(messages)) for field, messages in merged.items()]


class _SeedEndpoint(_Frozen):
    internal_name: str
    access_name: str | None = None
    tags: list[str] = Field(default_factory=list)
    remote: bool = False
    accessible_by_other_plugins: bool = True
    description: str = ""
    arguments: list[ArgumentSpec] = Field(default_factory=list)

    @field_validator("arguments", mode="before")
    @classmethod
    def _arguments_shape(cls, value: Any) -> Any:
        return _normalize_arguments(value)


class _SeedManifest(_Frozen):
    description: str = ""
    version: str = "0.0.0"
    remote: bool = False
    arguments: list[Any] = Field(default_factory=list)
    endpoints: list[_SeedEndpoint] = Field(default_factory=list)

    @field_validator("version", mode="before")
    @classmethod
    def _version_is_text(cls, value: Any) -> Any:
        return _version_text(value)

    def to_manifest(self, name: str) -> PluginManifest:
        actions = [
            {
                "name": e.access_name or e.internal_name,
                "method": e.internal_name,
                "description": e.description,
                "arguments": e.arguments,
                "tags": e.tags,
            }
            for e in self.endpoints
        ]
        data = {"name": name, "version": self.version, "description": self.description, "actions": actions}
        return PluginManifest.model_validate(data)


def load_manifest(folder: Path, name: str | None = None) -> PluginManifest:
    """Read the manifest of the plugin in ``folder``.

    ``folder/plugin.yml`` is actionq's shape. Without it, ``folder/plugin_config.yml`` is read in
    the seed's shape (top-level ``description``, ``version``, ``remote``, ``arguments`` and an
    ``endpoints`` list whose ``internal_name`` becomes the action's ``method`` and ``access_name``
    its name). The seed's ``remote`` and ``accessible_by_other_plugins`` flags and its top-level
    ``arguments`` list are accepted and ignored: they belong to the seed's HTTP networking, which
    actionq replaces with Redis. The plugin's name is ``name`` (the config.yml entry), else the
    folder's name; a ``name`` in plugin.yml that differs from the configured one is an error.

    Every problem (missing file, bad YAML, unknown key, invalid field) raises
    :class:`ManifestError` naming the file and the field.
    """
    plugin = name or folder.name
    ours, seed = folder / MANIFEST_FILE, folder / SEED_MANIFEST_FILE
    if ours.is_file():
        data = _read_yaml(ours, plugin)
        declared = data.setdefault("name", plugin)
        if name is not None and declared != name:
            raise ManifestError(plugin, f"{ours.name}: name: {declared!r} differs from the configured name {name!r}")
        return _validated(ours.name, plugin, lambda: PluginManifest.model_validate(data))
    if seed.is_file():
        data = _read_yaml(seed, plugin)
        return _validated(seed.name, plugin, lambda: _SeedManifest.model_validate(data).to_manifest(plugin))
    raise ManifestError(plugin, f"no {MANIFEST_FILE} or {SEED_MANIFEST_FILE} in {folder}")


def _read_yaml(path: Path, plugin: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ManifestError(plugin, f"{path.name}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ManifestError(plugin, f"{path.name}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ManifestError(plugin, f"{path.name}: must be a mapping, not {type(data).__name__}")
    return data


def _validated(filename: str, plugin: str, build: Callable[[], PluginManifest]) -> PluginManifest:
    try:
        return build()
    except ValidationError as exc:
        raise ManifestError(plugin, f"{filename}: {_describe(exc)}") from exc


def _describe(exc: ValidationError) -> str:
    return describe_validation(exc, unknown="unknown key", whole="(manifest)")
