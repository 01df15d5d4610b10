"""Delegates, the event stream and remote control, with real worker processes."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest

from service import JobClient, JobState, UnservableJobError
from service.events.models import EventKind
from tests.conftest import FAST, REPO_ROOT, WorkerFactory, bundled_plugins_config, fixture_plugin

# On one Redis and on a 3-master Redis Cluster (DESIGN.md section 11).
pytestmark = pytest.mark.topologies

OBSERVER = fixture_plugin("observer")


def _config(**extra: Any) -> dict[str, Any]:
    config = bundled_plugins_config(**{**FAST, **extra})
    config["plugins"].append(OBSERVER)
    return config


async def _job_events(client: JobClient, job_id: str, since: str, until: EventKind) -> list[str]:
    kinds: list[str] = []
    async with asyncio.timeout(20):
        async for received in client.events(job_id=job_id, since=since):
            kinds.append(received.kind)
            if received.kind == until:
                break
    return kinds


async def test_the_full_event_sequence_of_a_job_and_replay(worker_process: WorkerFactory, client: JobClient) -> None:
    worker_process(_config())
    handle = await client.submit("long_running", "count_slowly", {"steps": 3, "delay_s": 0.05})
    live = await _job_events(client, handle.job_id, "replay:100", EventKind.JOB_SUCCEEDED)
    assert live[:2] == ["job_received", "job_started"]
    assert "job_progress" in live
    assert live[-1] == "job_succeeded"
    # A subscriber that reconnects later replays the same sequence from the stream.
    replayed = await _job_events(client, handle.job_id, "replay:1000", EventKind.JOB_SUCCEEDED)
    assert replayed == live
    # The in-process delegate registered by a plugin saw the job as well.
    seen = await (await client.submit("observer", "seen", {"kind": "job_succeeded"})).result(timeout=10)
    assert handle.job_id in seen


async def test_failure_retry_and_dead_letter_events(worker_process: WorkerFactory, client: JobClient) -> None:
    worker_process(_config())
    handle = await client.submit("long_running", "fail", {"message": "x"})
    kinds = await _job_events(client, handle.job_id, "replay:100", EventKind.JOB_FAILED)
    assert kinds[-1] == "job_failed"
    dead = [e.kind async for e in client.events(job_id=handle.job_id, since="replay:100", follow=False)]
    assert "job_dead_lettered" in dead


async def _unlisted(client: JobClient, worker_id: str, queue: str) -> None:
    """Wait until ``worker_id`` has left ``queue``'s idle set (so no submit hands it a job)."""
    idle = client.keys.idle_workers(queue)
    async with asyncio.timeout(20):
        while {worker_id, "~" + worker_id} & {m.decode() for m in await client.redis.zrange(idle, 0, -1)}:
            await asyncio.sleep(0.02)


async def _a_round_since_now(client: JobClient, worker_id: str) -> None:
    """Wait until the worker's loop has run a whole round that began after this call.

    Each round ends by rewriting arq's health line, with a TTL of ``heartbeat_s + 1``, once
    ``heartbeat_s`` has passed since the last rewrite: a rewrite shows as the TTL going up. The
    first rewrite may end a round that began before this call; the second ends one that began after.
    """
    key = client.keys.arq_health(worker_id)
    rewrites, last = 0, await client.redis.pttl(key)
    async with asyncio.timeout(20):
        while rewrites < 2:
            await asyncio.sleep(0.02)
            ttl = await client.redis.pttl(key)
            rewrites += ttl > last
            last = ttl


async def test_pause_then_resume(worker_process: WorkerFactory, client: JobClient) -> None:
    worker_process(_config(heartbeat_s=0.5))  # its loop rewrites its health line every 0.5 s
    report = await client.control("pause")
    assert len(report.acted) == 1
    assert report.missing == []
    [worker] = await client.workers()
    assert worker.paused
    await _unlisted(client, worker.worker_id, client.keys.queue("PluginB"))
    handle = await client.submit("PluginB", "calculate_square", {"x": 7})
    await _a_round_since_now(client, worker.worker_id)  # a round that would have taken it, were it not paused
    assert await handle.state() is JobState.QUEUED  # a paused worker takes nothing
    assert (await client.control("resume")).acted
    assert await handle.result(timeout=10) == 49
    # Both changes are events too, for whoever follows the events stream (the dashboard's workers page).
    kinds = [EventKind.WORKER_PAUSED, EventKind.WORKER_RESUMED]
    seen = []
    async with asyncio.timeout(10):  # the events go out with the bridge's next batch: wait for them
        async for received in client.events(kinds=kinds, since="replay:10", follow=True):
            seen.append(received.event)
            if len(seen) == 2:
                break
    assert [(e.kind, e.worker_id) for e in seen] == [
        ("worker_paused", worker.worker_id),
        ("worker_resumed", worker.worker_id),
    ]
    assert getattr(seen[0], "draining", None) is False


async def test_a_control_delegate_can_veto(worker_process: WorkerFactory, client: JobClient) -> None:
    worker_process(_config())
    assert await (await client.submit("observer", "set_veto", {"veto": True})).result(timeout=10) is True
    report = await client.control("pause")
    assert report.refused == [w.worker_id for w in await client.workers()]
    assert report.acks[0].error == "vetoed by a control delegate"
    assert not (await client.workers())[0].paused


async def test_drain_with_a_running_job(worker_process: WorkerFactory, client: JobClient) -> None:
    worker = worker_process(_config())
    handle = await client.submit("long_running", "count_slowly", {"steps": 10, "delay_s": 0.1})
    async with asyncio.timeout(20):
        while await handle.state() is not JobState.RUNNING:
            await asyncio.sleep(0.02)
    report = await client.control("drain")
    assert report.acks[0].ok
    assert report.acks[0].result == {"running_jobs": 1}
    async with await JobClient.connect(settings=client.settings) as fresh:  # no cached registry reads
        with pytest.raises(UnservableJobError):  # a draining worker takes nothing new: refused at submit
            await fresh.submit("PluginB", "calculate_square", {"x": 2})
    later = await client.submit("PluginB", "calculate_square", {"x": 2}, validate=False)
    assert (await handle.result(timeout=20))["steps"] == 10  # the running job finished...
    assert worker.wait(timeout=20) == 0  # ...then the worker stopped by itself
    assert await later.state() is JobState.QUEUED  # and took nothing new


async def test_a_plugin_reloaded_at_runtime_serves_the_next_job(
    worker_process: WorkerFactory, client: JobClient, tmp_path: Path
) -> None:
    folder = tmp_path / "versioned"
    shutil.copytree(REPO_ROOT / "plugins" / "PluginB", folder)
    (folder / "plugin.py").write_text((folder / "plugin.py").read_text().replace("return x * x", "return x * x + 1000"))
    config = {**_config(), "allowed_plugin_dirs": [str(tmp_path)]}
    worker_process(config)
    report = await client.control("load_plugin", args={"name": "versioned", "path": str(folder)}, timeout=10)
    assert report.acks[0].result == {"plugin": "versioned", "loaded": True, "version": "1.0.0"}
    assert await (await client.submit("versioned", "calculate_square", {"x": 3})).result(timeout=10) == 1009

    manifest = folder / "plugin_config.yml"
    manifest.write_text(manifest.read_text().replace("version: 1.0.0", "version: 2.0.0"))
    (folder / "plugin.py").write_text((folder / "plugin.py").read_text().replace("+ 1000", "+ 2000"))
    report = await client.control("reload_plugin", args={"name": "versioned"}, timeout=10)
    assert report.acks[0].result["version"] == "2.0.0"
    assert await (await client.submit("versioned", "calculate_square", {"x": 3})).result(timeout=10) == 2009
    assert (await client.workers())[0].plugins["versioned"] == "2.0.0"

    assert (await client.control("disable_plugin", args={"name": "versioned"})).acted
    assert "versioned" not in (await client.workers())[0].plugins


async def test_a_command_to_a_dead_worker_is_reported_unanswered(
    worker_process: WorkerFactory, client: JobClient
) -> None:
    worker = worker_process(_config())
    worker_id = (await client.workers())[0].worker_id
    worker.kill()
    report = await client.control("pause", worker=worker_id, timeout=1.0)
    assert report.acks == []
    assert report.missing == [worker_id]
