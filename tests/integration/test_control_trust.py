"""Remote plugin commands load code only from the folders a worker's configuration allows, or not at all."""

from __future__ import annotations

import shutil
from pathlib import Path

from service import JobClient
from tests.conftest import FAST, REPO_ROOT, WorkerFactory, bundled_plugins_config


def _copy(tmp_path: Path) -> Path:
    folder = tmp_path / "outside" / "intruder"
    shutil.copytree(REPO_ROOT / "plugins" / "PluginB", folder)
    return folder


async def test_a_load_from_outside_the_allowed_folders_is_refused(
    worker_process: WorkerFactory, client: JobClient, tmp_path: Path
) -> None:
    folder = _copy(tmp_path)
    worker_process(bundled_plugins_config(**FAST))
    report = await client.control("load_plugin", args={"name": "intruder", "path": str(folder)}, timeout=10)
    [ack] = report.acks
    assert not ack.ok
    assert ack.error is not None
    assert "outside the folders this worker loads plugins from" in ack.error
    sneaky = REPO_ROOT / "plugins" / ".." / "tests" / "fixtures" / "plugins" / "probe"  # out by '..'
    report = await client.control("load_plugin", args={"name": "probe", "path": str(sneaky)}, timeout=10)
    assert report.refused
    assert "intruder" not in (await client.workers())[0].plugins


async def test_plugin_commands_can_be_turned_off(worker_process: WorkerFactory, client: JobClient) -> None:
    worker_process(bundled_plugins_config(plugin_commands=False, **FAST))
    for command in ("disable_plugin", "reload_plugin", "load_plugin"):
        report = await client.control(command, args={"name": "PluginB"}, timeout=10)
        [ack] = report.acks
        assert not ack.ok
        assert ack.error is not None
        assert "turned off" in ack.error
    assert "PluginB" in (await client.workers())[0].plugins
    assert await (await client.submit("PluginB", "calculate_square", {"x": 4})).result(timeout=20) == 16
