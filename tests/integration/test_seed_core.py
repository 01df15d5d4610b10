"""Seed 004's ``PluginCore`` facade against real workers: the seed's script, results, streams, control."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from service import (
    JobClient,
    JobState,
    PluginActionExecutionError,
    PluginActionTimeoutError,
    PluginCore,
    PluginsNotReadyError,
    ResultTimeoutError,
    SubmissionError,
)
from tests.conftest import FAST, REPO_ROOT, WorkerFactory, bundled_plugins_config, fixture_plugin

# On one Redis and on a 3-master Redis Cluster (DESIGN.md section 11).
pytestmark = pytest.mark.topologies

SEED_APP = REPO_ROOT / "tests" / "fixtures" / "seed_app"
PLUGIN_B = {"name": "PluginB", "path": str(REPO_ROOT / "plugins" / "PluginB")}


def _worker_config() -> dict[str, Any]:
    config = bundled_plugins_config(**FAST)
    config["plugins"].append(fixture_plugin("streamer"))
    return config


def _core(tmp_path: Path, redis_url: str, namespace: str, *plugins: dict[str, Any]) -> PluginCore:
    """A core whose config.yml lists ``plugins`` (the seed's ``plugins:`` entries)."""
    path = tmp_path / "core-config.yml"
    path.write_text(yaml.safe_dump({"plugins": list(plugins) or [PLUGIN_B]}))
    return PluginCore(path, redis_url=redis_url, namespace=namespace)


def _script_env(redis_url: str, namespace: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTIONQ_")}
    return env | {
        "ACTIONQ_REDIS_URL": redis_url,
        "ACTIONQ_NAMESPACE": namespace,
        "PYTHONPATH": str(REPO_ROOT),
        # An unclosed Redis connection is reported at exit: the script never closes its core.
        "PYTHONWARNINGS": "always::ResourceWarning",
    }


async def test_the_seeds_main_application_runs_with_its_import_line_changed(
    worker_process: WorkerFactory, redis_url: str, namespace: str
) -> None:
    worker_process(SEED_APP / "config.yml")  # the seed's single config.yml serves both sides
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "main_application.py", cwd=SEED_APP, env=_script_env(redis_url, namespace),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(40):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert out.decode() == "Result: 36\n"
    assert "nclosed" not in err.decode()  # the core closed its connection when asyncio.run ended
    assert not err.strip(), err.decode()


async def test_execute_results_errors_and_the_author_in_the_record(
    worker_process: WorkerFactory, client: JobClient, redis_url: str, namespace: str, tmp_path: Path
) -> None:
    worker_process(_worker_config())
    async with _core(tmp_path, redis_url, namespace) as core:
        await core.wait_until_ready(timeout=20)
        assert await core.execute("PluginB", "calculate_square", 6, host="local") == 36
        assert await core.execute("InteropTarget", "it_async_add", {"a": 2, "b": 3}, author="tests", job_id="a1") == 5
        assert (await client.job("a1").record()).request.options.author == "tests"
        with pytest.raises(PluginActionExecutionError) as failed:
            await core.execute("long_running", "fail", ("seed error",))
        assert (failed.value.error.type, failed.value.error.message) == ("RuntimeError", "seed error")
        with pytest.raises(PluginActionTimeoutError):  # the action's own timeout, as the seed describes
            await core.execute("long_running", "count_slowly", {"steps": 50, "delay_s": 0.2}, timeout_s=0.3)
        with pytest.raises(ResultTimeoutError):  # the caller's timeout: the wait ends and the job is cancelled
            await core.execute("long_running", "count_slowly", (50, 0.2), timeout=0.3, job_id="slow")
        assert (await client.job("slow").wait(timeout=20)).state is JobState.CANCELLED
        # From another thread while this loop runs: the seed's run_coroutine_threadsafe onto it.
        assert await asyncio.to_thread(core.execute_sync, "PluginB", "calculate_square", 7) == 49


async def test_execute_stream_yields_the_seeds_tuples_and_ends_with_the_error(
    worker_process: WorkerFactory, redis_url: str, namespace: str, tmp_path: Path
) -> None:
    worker_process(_worker_config())
    async with _core(tmp_path, redis_url, namespace, PLUGIN_B, fixture_plugin("streamer")) as core:
        await core.wait_until_ready(timeout=20)
        items = [t async for t in core.execute_stream("InteropTarget", "it_async_gen", {"n": 3, "delay_ms": 1})]
        assert [(result, error) for result, error, _ in items] == [("ag0", None), ("ag1", None), ("ag2", None)]
        assert len({request_id for _, _, request_id in items}) == 1
        failing = [t async for t in core.execute_stream("streamer", "fail_after", 2, author="tests")]
        assert [(result, error) for result, error, _ in failing[:2]] == [(0, None), (1, None)]
        result, error, request_id = failing[-1]
        assert len(failing) == 3
        assert result is None
        assert isinstance(error, PluginActionExecutionError)
        assert (error.error.type, error.error.message) == ("RuntimeError", "failed after 2 items")
        assert error.job_id == request_id == failing[0][2]
        # An action that is not a generator: its result is the one item.
        single = [t async for t in core.execute_stream("PluginB", "calculate_square", 5)]
        assert [(result, error) for result, error, _ in single] == [(25, None)]


async def test_plugin_uuid_targets_the_worker_serving_the_instance(
    worker_process: WorkerFactory, client: JobClient, redis_url: str, namespace: str, tmp_path: Path
) -> None:
    worker_process(_worker_config())
    async with _core(tmp_path, redis_url, namespace) as core:
        await core.wait_until_ready(timeout=20)
        [uuid] = await core.plugin_uuids("PluginB")
        assert await core.execute("PluginB", "calculate_square", 4, plugin_uuid=uuid, job_id="u1") == 16
        record = await client.job("u1").record()
        assert record.worker == uuid
        assert record.queue.endswith("@" + core.settings.hostname)
        with pytest.raises(SubmissionError, match=f"its instances: {uuid}"):
            await core.execute("PluginB", "calculate_square", 4, plugin_uuid="gone-123")


async def test_pop_purge_get_and_start_plugins_drive_the_workers(
    worker_process: WorkerFactory, client: JobClient, redis_url: str, namespace: str, tmp_path: Path
) -> None:
    worker_process(_worker_config())
    async with _core(tmp_path, redis_url, namespace) as core:
        await core.wait_until_ready(timeout=20)
        await core.pop_plugin("PluginB")
        [worker] = await client.workers()
        assert "PluginB" not in worker.plugins
        assert "InteropTarget" in worker.plugins
        await core.get_plugins()  # loads what config.yml lists and the workers lack
        await core.wait_until_ready(timeout=20)
        assert await core.execute("PluginB", "calculate_square", 3) == 9
        await core.purge_plugins()
        [worker] = await client.workers()
        assert worker.plugins == {}
        await core.start_plugins(timeout=20)  # back, and serving: only the plugins this config lists
        [worker] = await client.workers()
        assert set(worker.plugins) == {"PluginB"}
        assert await core.execute("PluginB", "calculate_square", 2) == 4


async def test_wait_until_ready_waits_for_a_worker_that_starts_later(
    worker_process: WorkerFactory, redis_url: str, namespace: str, tmp_path: Path
) -> None:
    async with _core(tmp_path, redis_url, namespace, PLUGIN_B, fixture_plugin("streamer")) as core:
        with pytest.raises(PluginsNotReadyError, match="no live worker serves PluginB, streamer"):
            await core.wait_until_ready(timeout=0.2)
        waiting = asyncio.create_task(core.wait_until_ready(timeout=40))
        worker_process(_worker_config(), wait=False)
        await waiting
        assert await core.plugin_uuids("streamer")  # served now


def test_execute_sync_from_plain_sync_code(worker_process: WorkerFactory, redis_url: str, namespace: str) -> None:
    worker_process(_worker_config())
    with PluginCore(redis_url=redis_url, namespace=namespace) as core:
        assert core.execute_sync("PluginB", "calculate_square", 9, author="sync code") == 81
        assert core.execute_sync("InteropTarget", "it_sync_add", (1, 2)) == 3
