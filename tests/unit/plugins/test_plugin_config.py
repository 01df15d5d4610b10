"""A typed config per plugin and its storage, as the loader gives them (seed 002)."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from service.errors import PluginLoadError
from service.keys import Keys
from service.plugins.config import PluginEnvironment
from service.plugins.loader import PluginLoader
from service.plugins.registry import Registry, WorkerInfo
from service.settings import PluginEntry, Settings, StorageSettings

SECRET = "s3cr3t-api-key-value"

HEADER = """
from __future__ import annotations
from typing import Any
from pydantic import BaseModel, Field, SecretStr
from service import Plugin, PluginConfig
"""

TYPED = """
class RenderConfig(PluginConfig):
    api_key: SecretStr
    quality: int = Field(default=80, ge=1, le=100)
    formats: list[str] = ["png"]


class Render(Plugin):
    config_model = RenderConfig
    config: RenderConfig

    def on_load(self, *args: Any, **kwargs: Any) -> None:
        self.seen_in_on_load = self.config  # the config is there before on_load

    async def show(self) -> dict[str, Any]:
        return {"quality": self.config.quality, "formats": self.config.formats}
"""

SEED_FORM = """
class CustomPluginConfig(PluginConfig):
    enabled: bool = True
    name: str = "custom_plugin"
    timeout: float = 30.0


class CustomPlugin(Plugin):
    def __init__(self, config: CustomPluginConfig = CustomPluginConfig()):
        self.config = config
        self.given = config
"""

PLAIN_MODEL = """
class Loose(BaseModel):  # extra keys ignored by pydantic: the loader still refuses them
    level: int = 1


class P(Plugin):
    config_model = Loose
"""

UNTYPED = """
class P(Plugin):
    pass
"""

OWN_CONFIG = """
class P(Plugin):
    def __init__(self) -> None:
        self.config = {"made": "by the plugin"}
"""

BAD_MODEL = """
class P(Plugin):
    config_model = dict  # type: ignore[assignment]
"""


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str], Path]:
    def write_plugin(name: str, code: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        actions = "actions:\n  - name: show\n" if "def show" in code else ""
        (folder / "plugin.yml").write_text(f"name: {name}\n{actions}")
        (folder / "plugin.py").write_text(textwrap.dedent(HEADER) + textwrap.dedent(code))
        return folder

    return write_plugin


def _settings(tmp_path: Path, **configs: dict[str, Any]) -> Settings:
    return Settings(
        plugins=[PluginEntry(name=name, config=config) for name, config in configs.items()],
        storage=StorageSettings(backend="memory"),
        plugin_dir=tmp_path,
    )


@pytest.fixture
async def loaders() -> AsyncIterator[list[PluginLoader]]:
    made: list[PluginLoader] = []
    yield made
    for loader in made:
        await loader.unload_all()


def _loader(made: list[PluginLoader], settings: Settings | None = None, redis: Redis | None = None) -> PluginLoader:
    loader = PluginLoader(enable_timeout_s=2, environment=PluginEnvironment(settings, redis))
    made.append(loader)
    return loader


async def test_the_config_block_fills_the_model(
    tmp_path: Path, write: Callable[[str, str], Path], loaders: list[PluginLoader]
) -> None:
    settings = _settings(tmp_path, render={"api_key": SECRET, "quality": "95"})
    loader = _loader(loaders, settings)
    plugin = await loader.load("render", write("render", TYPED))
    config = plugin.instance.config
    assert type(config).__name__ == "RenderConfig"
    assert config.quality == 95  # coerced as pydantic does
    assert config.api_key.get_secret_value() == SECRET
    assert plugin.instance.seen_in_on_load is config  # type: ignore[attr-defined]
    assert SECRET not in repr(config)
    assert SECRET not in str(config)


async def test_defaults_apply(tmp_path: Path, write: Callable[[str, str], Path], loaders: list[PluginLoader]) -> None:
    loader = _loader(loaders, _settings(tmp_path, render={"api_key": SECRET}))
    plugin = await loader.load("render", write("render", TYPED))
    action = loader.resolve("render", "show")
    assert await action.invoke({}, _ctx()) == {"quality": 80, "formats": ["png"]}
    assert plugin.instance.config.formats == ["png"]


async def test_a_bad_field_fails_that_plugin_only_naming_the_field(
    tmp_path: Path, write: Callable[[str, str], Path], loaders: list[PluginLoader]
) -> None:
    settings = _settings(tmp_path, render={"api_key": SECRET, "quality": 500}, other={})
    loader = _loader(loaders, settings)
    with capture_logs() as logs:
        await loader.load_all([("render", write("render", TYPED)), ("other", write("other", UNTYPED))])
    assert list(loader.loaded) == ["other"]
    reason = loader.failures["render"].reason
    assert reason == "invalid config (RenderConfig): quality: Input should be less than or equal to 100"
    assert [e["reason"] for e in logs if e["event"] == "plugin_failed"] == [reason]


async def test_missing_unknown_and_mistyped_keys_are_named(
    tmp_path: Path, write: Callable[[str, str], Path], loaders: list[PluginLoader]
) -> None:
    settings = _settings(tmp_path, render={"qualty": 3, "formats": "png"})
    loader = _loader(loaders, settings)
    with pytest.raises(PluginLoadError) as failed:
        await loader.load("render", write("render", TYPED))
    assert "api_key: Field required" in failed.value.reason
    assert "qualty: unknown key" in failed.value.reason
    assert "formats: Input should be a valid list" in failed.value.reason
    assert failed.value.plugin == "render"


async def test_a_model_that_ignores_extra_keys_still_refuses_them(
    tmp_path: Path, write: Callable[[str, str], Path], loaders: list[PluginLoader]
) -> None:
    loader = _loader(loaders, _settings(tmp_path, p={"level": 2, "levle": 3}))
    with pytest.raises(PluginLoadError, match=r"invalid config \(Loose\): levle: unknown key"):
        await loader.load("p", write("p", PLAIN_MODEL))


async def test_secrets_are_in_no_log_reason_or_registry(
    tmp_path: Path, write: Callable[[str, str], Path], loaders: list[PluginLoader], fake_redis: Redis
) -> None:
    short = "tiny"  # refused by a constraint: the error names the field, never the value
    code = TYPED.replace("api_key: SecretStr", "api_key: SecretStr = Field(min_length=8)")
    settings = _settings(tmp_path, render={"api_key": SECRET}, broken={"api_key": short, "quality": "x"})
    loader = _loader(loaders, settings)
    with capture_logs() as logs:
        await loader.load_all([("render", write("render", code)), ("broken", write("broken", code))])
    assert list(loader.loaded) == ["render"]
    failure = loader.failures["broken"]
    assert failure.reason == (
        "invalid config (RenderConfig): api_key: Value should have at least 8 items after validation, not 4; "
        "quality: Input should be a valid integer, unable to parse string as an integer"
    )
    assert failure.__cause__ is None
    assert failure.__suppress_context__
    registry = Registry(fake_redis, Keys("ns"), heartbeat_s=1)
    info = WorkerInfo(worker_id="w", hostname="h", failed_plugins={"broken": failure.reason})
    await registry.publish(info, [p.manifest for p in loader.loaded.values()])
    stored = b"".join([await _dump(fake_redis, key) for key in await fake_redis.keys("ns:*")])
    assert b"render" in stored  # the manifest is there
    for secret in (SECRET, short):
        assert secret not in repr(logs)
        assert secret not in str(failure)
        assert secret.encode() not in stored
        assert secret not in repr(settings)
    assert SECRET not in repr(loader.loaded["render"].instance.config)


async def _dump(redis: Redis, key: bytes) -> bytes:
    kind = await redis.type(key)
    if kind == b"hash":
        return b"".join(k + v for k, v in (await redis.hgetall(key)).items())  # type: ignore[misc, arg-type]
    if kind == b"string":
        return bytes(await redis.get(key) or b"")
    return b""


async def test_the_seed_form_gets_the_validated_config_in_init(
    tmp_path: Path, write: Callable[[str, str], Path], loaders: list[PluginLoader]
) -> None:
    loader = _loader(loaders, _settings(tmp_path, custom={"timeout": "2.5"}))
    plugin = await loader.load("custom", write("custom", SEED_FORM))
    instance: Any = plugin.instance
    assert instance.given is instance.config
    assert (instance.config.timeout, instance.config.name, instance.config.enabled) == (2.5, "custom_plugin", True)
    loader2 = _loader(loaders, _settings(tmp_path, custom2={"timout": 1}))
    with pytest.raises(PluginLoadError, match=r"CustomPluginConfig\): timout: unknown key"):
        await loader2.load("custom2", write("custom2", SEED_FORM))


async def test_without_a_model_the_block_is_a_dict(
    tmp_path: Path, write: Callable[[str, str], Path], loaders: list[PluginLoader]
) -> None:
    loader = _loader(loaders, _settings(tmp_path, p={"any": ["thing"]}, own={}))
    assert (await loader.load("p", write("p", UNTYPED))).instance.config == {"any": ["thing"]}
    assert (await loader.load("q", write("q", UNTYPED))).instance.config == {}  # no entry: no block
    own = await loader.load("own", write("own", OWN_CONFIG))
    assert own.instance.config == {"made": "by the plugin"}  # nothing configured: the plugin's own stays
    outside = _loader(loaders)  # a loader outside a worker: no settings at all
    assert (await outside.load("p", tmp_path / "p")).instance.config == {}


async def test_a_config_model_that_is_no_model_fails_the_load(
    tmp_path: Path, write: Callable[[str, str], Path], loaders: list[PluginLoader]
) -> None:
    loader = _loader(loaders, _settings(tmp_path))
    with pytest.raises(PluginLoadError, match="config_model must be a pydantic model class"):
        await loader.load("p", write("p", BAD_MODEL))


async def test_storage_follows_the_settings_with_a_per_plugin_override(
    tmp_path: Path, write: Callable[[str, str], Path], loaders: list[PluginLoader], fake_redis: Redis
) -> None:
    settings = Settings(
        namespace="ns",
        storage=StorageSettings(backend="redis"),
        plugins=[
            PluginEntry(name="files", storage=StorageSettings(backend="file", path=tmp_path / "data")),
            PluginEntry(name="mem", storage=StorageSettings(backend="memory")),
        ],
    )
    loader = _loader(loaders, settings, fake_redis)
    plugins = {n: await loader.load(n, write(n, UNTYPED)) for n in ("shared", "files", "mem")}
    assert {n: p.instance.storage.backend.name for n, p in plugins.items()} == {
        "shared": "redis",
        "files": "file",
        "mem": "memory",
    }
    for name, plugin in plugins.items():
        await plugin.instance.storage.put("k", name)
    assert await fake_redis.hgetall("ns:storage:shared") == {b"k": b'"shared"'}  # type: ignore[misc]
    assert (tmp_path / "data" / "files" / "k.json").read_bytes() == b'"files"'
    # Memory storage outlives a reload of its plugin (a new instance, the same values).
    await loader.unload("mem")
    reloaded = await loader.load("mem", tmp_path / "mem")
    assert await reloaded.instance.storage.get("k") == "mem"


async def test_the_redis_backend_needs_a_connection(
    tmp_path: Path, write: Callable[[str, str], Path], loaders: list[PluginLoader]
) -> None:
    loader = _loader(loaders, Settings(), None)
    with pytest.raises(PluginLoadError, match="storage backend redis needs the worker's Redis connection"):
        await loader.load("p", write("p", UNTYPED))


def _ctx() -> Any:
    from service.plugins.context import JobContext

    return JobContext.create(job_id="j", plugin="render", action="show", attempt=1, worker_id="w")
