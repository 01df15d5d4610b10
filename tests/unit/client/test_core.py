"""Seed 004's ``PluginCore`` facade against fakeredis: configuration, submits, targeting, waiting, refusals."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
import yaml

from service import PluginCore, PluginsNotReadyError
from service.client.client import JobClient
from service.errors import (
    ActionQError,
    ConfigError,
    PluginError,
    ResultTimeoutError,
    SubmissionError,
    UnknownPluginError,
)
from service.models import JobState
from service.plugins.manifest import load_manifest
from service.plugins.registry import Registry
from service.settings import PluginEntry, Settings
from tests.conftest import REPO_ROOT
from tests.unit.fakes import fake_client, serving


@pytest_asyncio.fixture
async def client(fake_redis: aioredis.Redis) -> AsyncIterator[JobClient]:
    client = fake_client(fake_redis)
    yield client
    await client.close()


def _core(client: JobClient, *plugins: str) -> PluginCore:
    """A core on ``client`` whose config.yml lists ``plugins`` (enabled)."""
    settings = client.settings.model_copy(update={"plugins": [PluginEntry(name=name) for name in plugins]})
    return PluginCore(settings=settings, client=client)


async def _worker(
    client: JobClient, worker_id: str, hostname: str, *names: str, failed: dict[str, str] | None = None
) -> None:
    """Publish a live worker ``worker_id`` on ``hostname`` serving the bundled plugins ``names``."""
    manifests = [load_manifest(REPO_ROOT / "plugins" / name, name) for name in names]
    info = serving(client.keys, manifests, worker_id=worker_id, hostname=hostname)
    info.plugins = {m.name: m.version for m in manifests}
    info.failed_plugins = failed or {}
    await Registry(client.redis, client.keys, heartbeat_s=5).publish(info, manifests)


def _seed_config(tmp_path: Path, **extra: object) -> Path:
    """A config.yml in the seed's shape (plugins:, general:, networking:)."""
    config = {
        "plugins": [{"name": "PluginB", "enabled": True}, {"name": "PluginA", "enabled": False}],
        "general": {"hostname": "", "plugin_package": "plugins", "console_log_level": "INFO"},
        "networking": {"enabled": True, "node_ips": [], "discover_nodes": True},
        **extra,
    }
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_without_redis_the_core_refuses_and_says_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ACTIONQ_REDIS_URL", raising=False)
    monkeypatch.delenv("ACTIONQ_CONFIG", raising=False)
    path = _seed_config(tmp_path)
    with pytest.raises(
        ConfigError, match=r"no Redis is configured: set redis_url in .*config\.yml or ACTIONQ_REDIS_URL"
    ):
        PluginCore(str(path))
    with pytest.raises(ConfigError, match="a config_path or settings, not both"):
        PluginCore(str(path), settings=Settings(redis_url="redis://127.0.0.1:1/0"))


def test_the_seeds_config_names_the_plugins_to_wait_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ACTIONQ_REDIS_URL", raising=False)
    core = PluginCore(_seed_config(tmp_path, redis_url="redis://127.0.0.1:1/0"), namespace="other")
    assert core.configured_plugins == ["PluginB"]  # the disabled entry is not waited for
    assert core.settings.namespace == "other"
    assert core.settings.plugin_dir == tmp_path / "plugins"  # general.plugin_package


async def test_execute_records_the_author_and_a_caller_timeout_cancels_the_job(client: JobClient) -> None:
    await _worker(client, "w1", "here", "PluginB")
    core = _core(client)
    with pytest.raises(ResultTimeoutError):  # no worker runs it here: the wait ends, the job is abandoned
        await core.execute("PluginB", "calculate_square", 6, author="main_application", timeout=0.2, job_id="j1")
    record = await client.job("j1").record()
    assert record.request.params == {"x": 6}  # bound to the declared argument, as the seed's positional call
    assert record.request.options.author == "main_application"
    assert record.state is JobState.CANCELLED
    assert "timeout of 0.2s" in (record.error.message if record.error else "")


async def test_host_local_goes_to_this_hosts_queue_and_no_author_is_none(client: JobClient) -> None:
    await _worker(client, "w1", "here", "PluginB")
    with pytest.raises(ResultTimeoutError):
        await _core(client).execute("PluginB", "calculate_square", {"x": 2}, host="local", timeout=0.05, job_id="j2")
    record = await client.job("j2").record()
    assert record.queue == "ut:queue:default:PluginB@here"
    assert record.request.options.author is None


async def test_plugin_uuid_routes_the_job_to_that_workers_host(client: JobClient) -> None:
    await _worker(client, "w1", "here", "PluginB")
    await _worker(client, "w2", "there", "PluginB")
    core = _core(client)
    assert await core.plugin_uuids("PluginB") == ["w1", "w2"]
    with pytest.raises(ResultTimeoutError):
        await core.execute("PluginB", "calculate_square", 3, plugin_uuid="w2", timeout=0.05, job_id="j3")
    record = await client.job("j3").record()
    assert record.queue == "ut:queue:default:PluginB@there"
    assert record.request.options.host == "there"


async def test_a_plugin_uuid_that_is_no_live_instance_or_off_host_is_refused(client: JobClient) -> None:
    await _worker(client, "w1", "here", "PluginB")
    await _worker(client, "w2", "there", "PluginB")
    core = _core(client)
    before = set(await client.redis.keys("*"))
    with pytest.raises(
        SubmissionError, match=r"plugin_uuid 'nope' is no live worker serving 'PluginB' \(its instances: w1, w2\)"
    ):
        await core.execute("PluginB", "calculate_square", 3, plugin_uuid="nope")
    with pytest.raises(SubmissionError, match=r"no live worker serving 'InteropTarget' \(no live worker serves it\)"):
        await core.execute("InteropTarget", "it_sync_add", 3, plugin_uuid="w1")
    with pytest.raises(SubmissionError, match=r"'w2' is a worker on host 'there', which host='local' excludes"):
        await core.execute("PluginB", "calculate_square", 3, plugin_uuid="w2", host="local")
    with pytest.raises(SubmissionError, match=r"'w1' is a worker on host 'here', which host='remote' excludes"):
        await core.execute("PluginB", "calculate_square", 3, plugin_uuid="w1", host="remote")
    assert set(await client.redis.keys("*")) == before  # nothing written


async def test_unknown_options_and_a_bad_author_are_refused_by_name(client: JobClient) -> None:
    await _worker(client, "w1", "here", "PluginB")
    core = _core(client)
    with pytest.raises(SubmissionError, match="colour"):
        await core.execute("PluginB", "calculate_square", 3, colour="red")
    with pytest.raises(SubmissionError, match="author"):
        await core.execute("PluginB", "calculate_square", 3, author="x" * 201)
    with pytest.raises(UnknownPluginError, match="served: PluginB"):
        await core.execute("PluginA", "perform_operation", 3)


async def test_wait_until_ready_names_what_is_missing_and_why(client: JobClient) -> None:
    await _worker(client, "w1", "here", "PluginB", failed={"InteropTarget": "ImportError: no module named x"})
    core = _core(client, "PluginB", "InteropTarget")
    with pytest.raises(
        PluginsNotReadyError, match="no live worker serves InteropTarget: InteropTarget failed on w1: ImportError"
    ) as exc:
        await core.wait_until_ready(timeout=0.1)
    assert isinstance(exc.value, TimeoutError)
    assert exc.value.missing == ("InteropTarget",)


async def test_with_no_plugin_configured_there_is_nothing_to_wait_for(client: JobClient) -> None:
    await _core(client).wait_until_ready(timeout=0)


async def test_wait_until_ready_returns_once_live_workers_serve_the_plugins(client: JobClient) -> None:
    core = _core(client, "PluginB", "InteropTarget")
    waiting = asyncio.create_task(core.wait_until_ready(timeout=20))
    await _worker(client, "w1", "here", "PluginB")
    await _worker(client, "w2", "there", "InteropTarget")
    await client.redis.publish(client.keys.event_channel("plugin_enabled"), b"[]")  # what a worker sends
    await asyncio.wait_for(waiting, 20)
    assert not waiting.exception()


async def test_blocking_and_management_calls_refuse_what_they_cannot_do(client: JobClient) -> None:
    await _worker(client, "w2", "there", "PluginB")
    core = _core(client, "PluginB")
    with pytest.raises(ActionQError, match="would stall"):
        core.execute_sync("PluginB", "calculate_square", 3)  # in a running loop: refused, nothing awaited
    with pytest.raises(PluginError, match=r"no live worker on host 'local' .*\(live workers are on: there\)"):
        await core.get_plugins()
    with pytest.raises(PluginError, match="no live worker on host 'elsewhere'"):
        await core.purge_plugins(host="elsewhere")
    with pytest.raises(UnknownPluginError, match=r"unknown plugin 'PluginA' \(served: PluginB\)"):
        await core.pop_plugin("PluginA", host="there")
