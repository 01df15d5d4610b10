"""Settings: ``config.yml`` overridden by ``ACTIONQ_*`` environment variables.

Precedence, highest first: keyword arguments (the CLI's flags), environment variables
(``ACTIONQ_REDIS_URL``, ``ACTIONQ_CONCURRENCY``, ...; nested with ``__``), ``config.yml``, defaults.
An unknown or misspelt key, in the file or in the environment, is a :class:`ConfigError` naming
it: arq silently drops unknown settings, we do not.
"""

from __future__ import annotations

import os
import re
import socket
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from service.errors import ConfigError, describe_validation
from service.keys import DEFAULT_NAMESPACE
from service.models import NAME_PATTERN
from service.retry import RetryPolicy
from service.signing import Signer

__all__ = ["ENV_PREFIX", "PluginEntry", "Settings", "load_settings"]

ENV_PREFIX = "ACTIONQ_"
# Read by the CLI, not a setting: the path of config.yml.
CONFIG_ENV = "ACTIONQ_CONFIG"
# Set by a worker pool for its members, not a setting: the supervisor's pid (see service.processes.supervisor).
SUPERVISOR_ENV = "ACTIONQ_SUPERVISOR_PID"
_NOT_SETTINGS = frozenset({CONFIG_ENV, SUPERVISOR_ENV})

_yaml_data: ContextVar[dict[str, Any] | None] = ContextVar("actionq_yaml_data", default=None)


class PluginEntry(BaseModel):
    """One plugin to load: ``config.yml`` → ``plugins: [{name, enabled, path}]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    enabled: bool = True
    path: Path | None = Field(default=None, description="Plugin folder; default <plugin_dir>/<name>.")


class Settings(BaseSettings):
    """Every setting of the service (docs/configuration.md's settings table lists each; a test keeps it complete)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True)

    redis_url: str | None = Field(
        default=None, description="Redis to use; unset means `actionq up` starts a private server."
    )
    namespace: str = Field(
        default=DEFAULT_NAMESPACE, pattern=NAME_PATTERN, description="Prefix of every key and channel."
    )
    hostname: str = Field(default_factory=socket.gethostname, description="This host's name for host-targeted jobs.")
    plugin_dir: Path = Field(default=Path("plugins"), description="Where plugins without a path live.")
    plugins: list[PluginEntry] = Field(default_factory=list, description="Plugins a worker loads.")
    plugin_commands: bool = Field(
        default=True, description="Whether remote load/disable/reload plugin commands are carried out (false: refused)."
    )
    signing_keys: list[SecretStr] = Field(
        default_factory=list,
        description="HMAC-SHA256 keys for job requests, cancels and control commands: the first signs, any "
        "verifies; the same list on producers and workers (empty: nothing is signed or checked).",
    )
    allowed_plugin_dirs: list[Path] = Field(
        default_factory=list,
        description="Folders a remote load or reload may take plugins from, besides plugin_dir and the configured "
        "plugins' folders (anything else is refused).",
    )
    queues: list[str] = Field(default=["default"], min_length=1, description="Lanes a worker reads.")
    concurrency: int = Field(default=10, ge=1, le=10_000, description="Jobs one worker runs at once.")
    poll_delay_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="Fallback poll of an idle worker (new jobs wake it at once over pub/sub; deferred ones on time).",
    )
    lease_s: float = Field(
        default=3.0,
        ge=0.5,
        le=300,
        description="A running job's claim lasts this long unless renewed by its worker: a dead worker's job re-runs "
        "within it.",
    )
    default_timeout_s: float = Field(default=300, gt=0, description="Action timeout when none is declared.")
    max_timeout_s: float = Field(default=3600, gt=0, description="Largest timeout a job may ask for.")
    result_ttl_s: int = Field(default=86_400, gt=0, description="How long a finished job's record is kept.")
    pending_ttl_s: int = Field(
        default=7 * 86_400,
        gt=0,
        description="Lifetime of a running job's checkpoint and output stream past their last write.",
    )
    unserved_expire_s: float = Field(
        default=86_400,
        ge=0,
        description="A job waiting in a queue that no worker has served for this long (an unknown plugin submitted "
        "with validate=False, a lane or host nobody serves) fails with JobExpiredError once it has been due that "
        "long; 0: such jobs wait forever.",
    )
    reconnect_s: float = Field(
        default=30,
        ge=0,
        description="How long a client's reads (waiting for a result, following progress or a stream) keep trying "
        "while Redis is unreachable, before they raise BrokerError.",
    )
    heartbeat_s: float = Field(default=5, gt=0, le=300, description="Worker and registry heartbeat interval.")
    retry: RetryPolicy = Field(
        default_factory=RetryPolicy, description="Retry policy of actions that declare none (a mapping)."
    )
    cancel_grace_s: float = Field(
        default=5, ge=0, description="How long a cancelled or timed-out action may take to stop before it is forced."
    )
    dead_letter_ttl_s: int = Field(default=7 * 86_400, gt=0, description="How long dead letters are kept.")
    progress_interval_s: float = Field(
        default=0.05, ge=0, le=10, description="Per job, progress is written at most once per interval (coalesced)."
    )
    stream_max_items: int = Field(
        default=10_000, ge=10, description="Cap of a job's output stream; older items are trimmed past it."
    )
    events_max_len: int = Field(
        default=100_000,
        ge=100,
        description="Cap of the events stream, in events, approximately (replay depth); older ones are trimmed.",
    )
    max_payload_bytes: int = Field(default=1_048_576, ge=1024, description="Largest serialized job or result accepted.")
    plugin_enable_timeout_s: float = Field(
        default=30, gt=0, description="A plugin whose on_enable takes longer is reported as failed."
    )
    shutdown_grace_s: float = Field(
        default=10, ge=0, description="On SIGTERM, how long running jobs get before they are handed back."
    )
    log_format: Literal["auto", "console", "json"] = Field(
        default="auto", description="`auto`: readable on a terminal, JSON otherwise."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="Log level.")

    @field_validator("queues")
    @classmethod
    def _lanes_are_names(cls, value: list[str]) -> list[str]:
        bad = [lane for lane in value if not re.match(NAME_PATTERN, lane)]
        if bad:
            raise ValueError(f"lane names must be letters, digits, '_', '.', '-': {bad}")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _YamlSource(settings_cls)

    def plugin_path(self, entry: PluginEntry) -> Path:
        """The folder of a configured plugin (``path``, or ``<plugin_dir>/<name>``)."""
        return entry.path if entry.path is not None else self.plugin_dir / entry.name

    def signer(self) -> Signer:
        """The :class:`~service.signing.Signer` of ``signing_keys``."""
        return Signer([key.get_secret_value() for key in self.signing_keys])

    def may_load_from(self, folder: Path) -> bool:
        """Whether a remote command may load a plugin from ``folder``: inside ``plugin_dir``, a
        configured plugin's folder or one of ``allowed_plugin_dirs`` (symlinks resolved)."""
        target = folder.resolve()
        roots = [self.plugin_dir, *self.allowed_plugin_dirs, *(self.plugin_path(e) for e in self.plugins)]
        return any(target == root.resolve() or target.is_relative_to(root.resolve()) for root in roots)


class _YamlSource(PydanticBaseSettingsSource):
    """The lowest-priority source: the mapping read from config.yml by :func:`load_settings`."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        data = _yaml_data.get() or {}
        return data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_yaml_data.get() or {})


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping of settings, not {type(data).__name__}")
    return _resolve_paths(data, path.parent)


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make relative paths in config.yml relative to the file, not to the current directory."""
    out = dict(data)
    if isinstance(out.get("plugin_dir"), str):
        out["plugin_dir"] = str(base / out["plugin_dir"])
    if isinstance(out.get("allowed_plugin_dirs"), list):
        out["allowed_plugin_dirs"] = [str(base / d) if isinstance(d, str) else d for d in out["allowed_plugin_dirs"]]
    plugins = out.get("plugins")
    if isinstance(plugins, list):
        out["plugins"] = [
            {**p, "path": str(base / p["path"])} if isinstance(p, dict) and isinstance(p.get("path"), str) else p
            for p in plugins
        ]
    return out


def _check_environment(environ: dict[str, str]) -> None:
    known = set(Settings.model_fields)
    unknown = []
    for name in environ:
        if not name.startswith(ENV_PREFIX) or name in _NOT_SETTINGS:
            continue
        field = name[len(ENV_PREFIX) :].lower().split("__", 1)[0]
        if field not in known:
            unknown.append(name)
    if unknown:
        raise ConfigError(
            f"unknown setting(s) in the environment: {', '.join(sorted(unknown))} "
            f"(known: {', '.join(ENV_PREFIX + f.upper() for f in sorted(known))})"
        )


def _describe(exc: ValidationError, source: str) -> str:
    return f"invalid settings ({source}): " + describe_validation(exc, unknown="unknown setting", whole="(settings)")


def load_settings(config: Path | str | None = None, **overrides: Any) -> Settings:
    """Load settings from ``config`` (a config.yml path), the environment and ``overrides``.

    ``config`` defaults to ``$ACTIONQ_CONFIG`` when that is set. Keyword overrides whose value is
    ``None`` are ignored, so CLI flags can be passed through unconditionally.
    """
    _check_environment(dict(os.environ))
    env_path = os.environ.get(CONFIG_ENV)
    path = Path(config) if config is not None else (Path(env_path) if env_path else None)
    data = _read_yaml(path) if path is not None else {}
    token = _yaml_data.set(data)
    source = f"{path} + environment" if path is not None else "environment"
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from exc
    finally:
        _yaml_data.reset(token)
