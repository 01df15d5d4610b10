"""Settings: ``config.yml`` overridden by ``ACTIONQ_*`` environment variables.

Precedence, highest first: keyword arguments (the CLI's flags), environment variables
(``ACTIONQ_REDIS_URL``, ``ACTIONQ_CONCURRENCY``, ...; nested with ``__``), ``config.yml``, defaults.
An unknown or misspelt key, in the file or in the environment, is a :class:`ConfigError` naming
it: arq silently drops unknown settings, we do not.

config.yml may also carry seed 004's sections: ``general:`` (``hostname``, ``plugin_package``,
``console_log_level``: the settings ``hostname``, ``plugin_dir`` and ``log_level`` by other names)
and ``networking:``, whose keys are accepted only with the value that says what actionq does
anyway (Redis replaces the seed's HTTP mesh) and refused with the reason otherwise.
"""

from __future__ import annotations

import os
import re
import socket
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from service.errors import ConfigError, describe_validation
from service.keys import DEFAULT_NAMESPACE
from service.models import NAME_PATTERN, JobState
from service.retry import RetryPolicy
from service.signing import Signer

__all__ = [
    "ENV_PREFIX",
    "GatewaySettings",
    "GatewayToken",
    "PluginEntry",
    "PluginLimits",
    "Settings",
    "StorageSettings",
    "TracingSettings",
    "load_settings",
]

ENV_PREFIX = "ACTIONQ_"
# Read by the CLI, not a setting: the path of config.yml.
CONFIG_ENV = "ACTIONQ_CONFIG"
# Set by a worker pool and by `actionq up` for their workers, not a setting: the parent's pid, which
# the worker ends with (see service.processes.parent).
SUPERVISOR_ENV = "ACTIONQ_SUPERVISOR_PID"
# Set by a worker pool for each member, not a setting: the member's index (0, 1, ...), which it adds
# to metrics_port so that every member serves its own metrics port.
POOL_INDEX_ENV = "ACTIONQ_POOL_INDEX"
_NOT_SETTINGS = frozenset({CONFIG_ENV, SUPERVISOR_ENV, POOL_INDEX_ENV})

_yaml_data: ContextVar[dict[str, Any] | None] = ContextVar("actionq_yaml_data", default=None)


class StorageSettings(BaseModel):
    """Where plugins' ``self.storage`` keeps its values (:mod:`service.plugins.storage`).

    ``redis`` (the default): a hash per plugin in the deployment's Redis, shared by every worker
    serving the plugin; ``file``: a JSON file per key under ``<path>/<plugin>/``, for one host;
    ``memory``: this worker process only, gone when it exits.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["redis", "file", "memory"] = "redis"
    path: Path | None = Field(default=None, description="The file backend's folder (a sub-folder per plugin).")

    @model_validator(mode="after")
    def _path_only_for_files(self) -> StorageSettings:
        if self.backend == "file" and self.path is None:
            raise ValueError("the file backend needs a path (storage: {backend: file, path: ...})")
        if self.backend != "file" and self.path is not None:
            raise ValueError(f"path is for the file backend only (backend is {self.backend})")
        return self


class PluginLimits(BaseModel):
    """A plugin's concurrency limits in this deployment, over its manifest's ``max_concurrent``
    (:mod:`service.worker.limits`): ``limits: {max_concurrent: 3, actions: {render: 2}}``.

    A key left out keeps the manifest's limit; ``null`` lifts it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_concurrent: int | None = Field(
        default=None, ge=1, description="At most this many of the plugin's jobs run at once, across all workers."
    )
    actions: dict[str, Annotated[int, Field(ge=1)] | None] = Field(
        default_factory=dict, description="Per action: at most this many of its jobs run at once (null: no limit)."
    )


class PluginEntry(BaseModel):
    """One plugin to load: ``config.yml`` → ``plugins: [{name, enabled, path, config, storage}]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    enabled: bool = True
    path: Path | None = Field(default=None, description="Plugin folder; default <plugin_dir>/<name>.")
    # Not in repr: it may hold secrets, and settings objects end up in logs and tracebacks.
    config: dict[str, Any] = Field(
        default_factory=dict, repr=False, description="The plugin's own settings, checked by its config model."
    )
    storage: StorageSettings | None = Field(default=None, description="This plugin's storage, instead of `storage`.")
    limits: PluginLimits = Field(
        default_factory=PluginLimits, description="Concurrency limits over the manifest's `max_concurrent`."
    )


GatewayScope = Literal["read", "submit", "control", "admin"]


class GatewayToken(BaseModel):
    """One bearer token of the HTTP gateway and the scopes it grants (``admin`` implies every scope).

    ``name`` is what logs and errors call it; the token itself is a secret and never printed.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=100, description="What logs call this token (never the token).")
    token: SecretStr = Field(description="The bearer token clients send (`Authorization: Bearer <token>`).")
    scopes: list[GatewayScope] = Field(
        default=["read"], min_length=1, description="read, submit, control, admin (admin implies all)."
    )

    @field_validator("token")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 16:
            raise ValueError("a gateway token must be at least 16 characters")
        return value


class GatewaySettings(BaseModel):
    """The HTTP gateway (``actionq gateway``): where it listens, who may call it, its limits (docs/gateway.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(default="127.0.0.1", description="Address to bind; anything but loopback needs a token.")
    port: int = Field(default=8080, ge=1, le=65_535, description="Port to listen on.")
    tokens: list[GatewayToken] = Field(
        default_factory=list, description="Bearer tokens and their scopes; none: open, but bound to loopback only."
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins browsers may call the API from (empty: CORS off)."
    )
    max_body_bytes: int = Field(
        default=1_048_576, ge=1024, description="Largest request body; a larger one is refused (413) unread."
    )
    max_batch: int = Field(default=1000, ge=1, le=100_000, description="Most jobs one POST /v1/jobs:batch may carry.")
    max_wait_s: float = Field(
        default=30, gt=0, le=3600, description="Cap of a long-poll (`?wait=`) and of /execute's wait for its result."
    )
    keepalive_s: float = Field(
        default=5, gt=0, le=300, description="An idle event stream gets a keep-alive comment this often."
    )
    http_keep_alive_s: int = Field(
        default=75,
        ge=1,
        le=3600,
        description="An idle keep-alive HTTP connection is closed after this long (uvicorn's timeout_keep_alive). "
        "Longer than a load balancer's idle timeout (60 s on AWS's), so that the balancer closes first: a client "
        "that sends on a connection the server is closing that moment gets a reset, not an answer.",
    )
    sse_queue: int = Field(
        default=256, ge=1, le=100_000, description="Events held per event-stream connection for a slow client."
    )
    sse_stall_s: float = Field(
        default=10,
        gt=0,
        le=600,
        description="A client whose queue stays full this long has fallen behind: its stream is ended (it may "
        "reconnect with Last-Event-ID).",
    )
    access_log: bool = Field(
        default=False,
        description="Log a line per HTTP request (uvicorn's access log). Off by default: at full load it costs "
        "about a tenth of the gateway's CPU (and /metrics counts the jobs submitted).",
    )


class TracingSettings(BaseModel):
    """OpenTelemetry traces (docs/operations.md#traces): a span per submit and per attempt, one trace
    across processes, Redis commands inside them. Off by default, and then nothing of OpenTelemetry
    is imported (the ``otel`` extra need not be installed).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=False, description="Trace submits, attempts and their Redis commands.")
    exporter: Literal["otlp", "console", "file", "none"] = Field(
        default="otlp",
        description="Where spans go: otlp (OTLP/HTTP, configured by the standard OTEL_EXPORTER_OTLP_* variables), "
        "console (JSON lines on stderr), file (JSON lines appended to `file`), or none (the TracerProvider the "
        "application installed; actionq installs none).",
    )
    file: Path | None = Field(default=None, description="The file exporter's file (JSON lines, appended).")
    service_name: str | None = Field(
        default=None,
        max_length=200,
        description="The service.name of the spans; unset: OTEL_SERVICE_NAME, else actionq.",
    )

    @model_validator(mode="after")
    def _file_only_for_files(self) -> TracingSettings:
        if self.exporter == "file" and self.file is None:
            raise ValueError("the file exporter needs a file (tracing: {exporter: file, file: ...})")
        if self.exporter != "file" and self.file is not None:
            raise ValueError(f"file is for the file exporter only (exporter is {self.exporter})")
        return self


class Settings(BaseSettings):
    """Every setting of the service (docs/configuration.md's settings table lists each; a test keeps it complete)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True)

    redis_url: str | None = Field(
        default=None,
        description="Redis to use (redis://, rediss://, redis+sentinel:// for the Sentinels of a master, or "
        "redis+cluster:// for some nodes of a Redis Cluster); unset means `actionq up` starts a private server.",
    )
    cluster_partitions: int = Field(
        default=6,
        ge=1,
        le=1024,
        description="On Redis Cluster: how many partitions (hash tags) the jobs are spread over, each queue "
        "being one sorted set per partition. The same for every client and worker of a namespace (a worker "
        "refuses to start otherwise); at least the number of masters, to use them all.",
    )
    namespace: str = Field(
        default=DEFAULT_NAMESPACE, pattern=NAME_PATTERN, description="Prefix of every key and channel."
    )
    hostname: str = Field(default_factory=socket.gethostname, description="This host's name for host-targeted jobs.")
    routing: Literal["least_loaded", "round_robin"] = Field(
        default="least_loaded",
        description='How a client picks the host of a host="remote" job among those serving the plugin.',
    )
    plugin_dir: Path = Field(default=Path("plugins"), description="Where plugins without a path live.")
    plugins: list[PluginEntry] = Field(default_factory=list, description="Plugins a worker loads.")
    storage: StorageSettings = Field(
        default_factory=StorageSettings, description="Where plugins' self.storage keeps its values (a mapping)."
    )
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
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        default="auto",
        description="A worker's event loop: uvloop (installed with actionq on Linux and macOS; a third less CPU "
        "per job), asyncio's own, or auto (uvloop when importable).",
    )
    batch_window_ms: float = Field(
        default=4.0,
        ge=0,
        le=100,
        description="Under load, a worker's settlements, events and the takes refilling its freed slots go out in "
        "batches at most this often (a lone job's at once); 0: each batch as soon as the previous one returned.",
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
    failed_result_ttl_s: int | None = Field(
        default=None,
        gt=0,
        description="How long the record of a job that did not succeed (failed, timed out, cancelled) is kept; "
        "unset: result_ttl_s. A job's own result_ttl_s wins over both.",
    )
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
    wait_replicas: int = Field(
        default=0,
        ge=0,
        le=16,
        description="With Sentinel or a replicated Redis: every submit and every settlement waits (WAIT) until this "
        "many replicas have it, so a failover right after cannot lose it; a submit not acknowledged in time raises "
        "ReplicationTimeoutError (send it again with the same job_id). 0: Redis's asynchronous replication alone. "
        "Not on Redis Cluster.",
    )
    wait_replicas_timeout_s: float = Field(
        default=1.0, gt=0, le=60, description="How long a write waits for its wait_replicas acknowledgements."
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
    publish_job_channels: bool = Field(
        default=False,
        description="Publish every job's channel from its submit on (a `queued` message, then every change), for "
        "UIs that subscribe directly; false: only followed jobs publish. A plugin's manifest may say otherwise.",
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
    gateway: GatewaySettings = Field(
        default_factory=GatewaySettings,
        description="The HTTP gateway: host, port, tokens with scopes, CORS origins and limits (a mapping).",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65_535,
        description="A worker serves Prometheus metrics on this port (a pool's members on this port + their index); "
        "unset: no metrics endpoint.",
    )
    metrics_host: str = Field(
        default="127.0.0.1", description="Address a worker's metrics endpoint binds (0.0.0.0: every interface)."
    )
    tracing: TracingSettings = Field(
        default_factory=TracingSettings,
        description="OpenTelemetry traces: enabled, exporter, file, service_name (a mapping; off by default).",
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

    def kept_for_s(self, state: JobState) -> int:
        """How long the record of a job that ended ``state`` is kept (unless the job sets ``result_ttl_s``)."""
        if state is JobState.SUCCEEDED or self.failed_result_ttl_s is None:
            return self.result_ttl_s
        return self.failed_result_ttl_s

    def plugin_path(self, entry: PluginEntry) -> Path:
        """The folder of a configured plugin (``path``, or ``<plugin_dir>/<name>``)."""
        return entry.path if entry.path is not None else self.plugin_dir / entry.name

    def plugin_entry(self, name: str) -> PluginEntry | None:
        """The ``plugins:`` entry named ``name`` (a plugin loaded by a remote command may have none)."""
        return next((entry for entry in self.plugins if entry.name == name), None)

    def plugin_storage(self, name: str) -> StorageSettings:
        """The storage of plugin ``name``: its entry's ``storage``, else the deployment's."""
        entry = self.plugin_entry(name)
        return entry.storage if entry is not None and entry.storage is not None else self.storage

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


def _read_yaml(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The settings in ``path``, and the seed keys they came from (setting -> ``general.<key>``)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping of settings, not {type(data).__name__}")
    return _seed_sections(_resolve_paths(data, path.parent), path)


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make relative paths in config.yml relative to the file, not to the current directory."""
    out = dict(data)
    if isinstance(out.get("plugin_dir"), str):
        out["plugin_dir"] = str(base / out["plugin_dir"])
    if isinstance(out.get("allowed_plugin_dirs"), list):
        out["allowed_plugin_dirs"] = [str(base / d) if isinstance(d, str) else d for d in out["allowed_plugin_dirs"]]
    if "storage" in out:
        out["storage"] = _resolve_storage(out["storage"], base)
    tracing = out.get("tracing")
    if isinstance(tracing, dict) and isinstance(tracing.get("file"), str):
        out["tracing"] = {**tracing, "file": str(base / tracing["file"])}
    plugins = out.get("plugins")
    if isinstance(plugins, list):
        out["plugins"] = [_resolve_entry(p, base) if isinstance(p, dict) else p for p in plugins]
    return out


def _resolve_entry(entry: dict[str, Any], base: Path) -> dict[str, Any]:
    out = dict(entry)
    if isinstance(out.get("path"), str):
        out["path"] = str(base / out["path"])
    if "storage" in out:
        out["storage"] = _resolve_storage(out["storage"], base)
    return out


def _resolve_storage(storage: Any, base: Path) -> Any:
    if isinstance(storage, dict) and isinstance(storage.get("path"), str):
        return {**storage, "path": str(base / storage["path"])}
    return storage


# The seed's config.yml sections (seed 004): `general:` keys are actionq settings under other names.
_GENERAL: dict[str, str] = {"hostname": "hostname", "plugin_package": "plugin_dir", "console_log_level": "log_level"}
# `networking:` is the seed's HTTP mesh, which Redis replaces: a key is accepted only with the value
# that says what actionq does anyway; any other value is refused with the reason.
_APART = "to keep nodes apart, give them different namespaces or Redis servers"
_NETWORKING: dict[str, tuple[tuple[Any, ...], str]] = {
    "enabled": (
        (True,),
        "actionq has no local-only mode: every worker on the same Redis (redis_url) and namespace serves "
        f"the plugins it has; {_APART}, or submit with host='local'",
    ),
    "node_ips": (([],), "actionq nodes find each other through Redis, not by address: point them at one redis_url"),
    "port": ((), "actionq opens no port: workers and producers talk through Redis (redis_url)"),
    "discover_nodes": ((True,), f"every actionq worker is found through the registry in Redis; {_APART}"),
    "direct_discoverable": ((True,), f"every actionq worker is listed in the registry in Redis; {_APART}"),
    "auto_discoverable": ((True,), f"every actionq worker announces itself in the registry in Redis; {_APART}"),
}


def _seed_sections(data: dict[str, Any], path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Translate the seed's ``general:`` and check its ``networking:`` (both are then removed)."""
    out = {k: v for k, v in data.items() if k not in ("general", "networking")}
    problems: list[str] = []
    origins: dict[str, str] = {}
    for key, value in _section(data, "general", path).items():
        setting = _GENERAL.get(key)
        if setting is None:
            problems.append(f"general.{key}: unknown key (the seed's general section has {', '.join(_GENERAL)})")
            continue
        if key == "hostname" and value in ("", None):
            continue  # the seed's "no name given": this machine's hostname, actionq's default too
        if key == "plugin_package" and isinstance(value, str):
            value = str(path.parent / value)
        if setting in out and not _same(setting, out[setting], value):
            problems.append(f"general.{key} ({value!r}) and {setting} ({out[setting]!r}) disagree: give one of them")
            continue
        out[setting] = value
        origins[setting] = f"general.{key}"
    problems += _networking_problems(_section(data, "networking", path))
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems))
    return out, origins


def _section(data: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    section = data.get(name)
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: {name}: must be a mapping, not {type(section).__name__}")
    return section


def _same(setting: str, a: Any, b: Any) -> bool:
    """Whether two values of ``setting`` agree (a folder compared once normalized)."""
    if setting == "plugin_dir" and isinstance(a, str) and isinstance(b, str):
        return os.path.normpath(a) == os.path.normpath(b)
    return bool(a == b)


def _networking_problems(section: dict[str, Any]) -> list[str]:
    problems = []
    for key, value in section.items():
        rule = _NETWORKING.get(key)
        if rule is None:
            problems.append(
                f"networking.{key}: unknown key (the seed's networking section has {', '.join(_NETWORKING)})"
            )
        elif not any(value == ok and type(value) is type(ok) for ok in rule[0]):
            problems.append(f"networking.{key}: {value!r} has no meaning in actionq: {rule[1]}")
    return problems


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


def _describe(exc: ValidationError, source: str, origins: dict[str, str]) -> str:
    text = f"invalid settings ({source}): " + describe_validation(exc, unknown="unknown setting", whole="(settings)")
    given = sorted({origins[str(e["loc"][0])] for e in exc.errors() if e["loc"] and str(e["loc"][0]) in origins})
    if given:  # name the key as the file spells it
        text += " (given as " + ", ".join(f"{key} → {_GENERAL[key.split('.', 1)[1]]}" for key in given) + ")"
    return text


def load_settings(config: Path | str | None = None, **overrides: Any) -> Settings:
    """Load settings from ``config`` (a config.yml path), the environment and ``overrides``.

    ``config`` defaults to ``$ACTIONQ_CONFIG`` when that is set. Keyword overrides whose value is
    ``None`` are ignored, so CLI flags can be passed through unconditionally.
    """
    _check_environment(dict(os.environ))
    env_path = os.environ.get(CONFIG_ENV)
    path = Path(config) if config is not None else (Path(env_path) if env_path else None)
    data, origins = _read_yaml(path) if path is not None else ({}, {})
    token = _yaml_data.set(data)
    source = f"{path} + environment" if path is not None else "environment"
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source, origins)) from exc
    finally:
        _yaml_data.reset(token)
