"""Plugins' delegates and events with a real worker: ownership across reloads, senders, plugin-defined kinds."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from service import JobClient, PluginActionExecutionError, PluginEvent
from service.events.models import ReceivedEvent
from tests.conftest import FAST, REPO_ROOT, WorkerFactory, bundled_plugins_config, fixture_plugin


def _config(*plugins: str) -> dict[str, Any]:
    config = bundled_plugins_config(**FAST)
    config["plugins"] += [fixture_plugin(name) for name in plugins]
    return config


async def _first(client: JobClient, kind: str, **match: Any) -> ReceivedEvent:
    """The first event of ``kind`` (replayed or new) whose fields include ``match``."""
    async with asyncio.timeout(20):
        async for received in client.events(kinds=[kind], since="replay:100"):
            event = received.event
            assert isinstance(event, PluginEvent)
            if all(event.fields.get(k, getattr(event, k, None)) == v for k, v in match.items()):
                return received
    raise AssertionError("unreachable: the stream is followed until the timeout")


async def test_a_plugin_reloaded_twice_runs_its_delegates_once(
    worker_process: WorkerFactory, client: JobClient, tmp_path: Path
) -> None:
    runs = tmp_path / "delegate-runs.jsonl"
    worker = worker_process(_config("owned_delegates"), env={"OWNED_DELEGATES_LOG": str(runs)})
    first = await (await client.submit("owned_delegates", "whoami", {})).result(timeout=10)
    for _ in range(2):  # through the worker's control path, as `actionq plugin reload` does
        report = await client.control("reload_plugin", args={"name": "owned_delegates"}, timeout=10)
        assert report.acks[0].ok, report.acks[0].error
    current = await (await client.submit("owned_delegates", "whoami", {})).result(timeout=10)
    assert current != first

    job = await client.submit("PluginB", "calculate_square", {"x": 4})
    assert await job.result(timeout=10) == 16
    report = await client.control("resume")  # the plugin's control delegate answers "resume"
    assert report.acks[0].result["delegates"] == [{"answered_by": current}]  # once, by the current instance

    assert worker.terminate() == 0  # a stop delivers every pending notification before it exits
    lines = [json.loads(line) for line in runs.read_text().splitlines()]
    ran = [line for line in lines if line["job_id"] == job.job_id]
    assert ran == [{"job_id": job.job_id, "instance": current, "sender": "WorkerRuntime"}]


async def test_a_plugin_event_reaches_its_own_delegate_and_the_events_stream(
    worker_process: WorkerFactory, client: JobClient
) -> None:
    worker_process(_config("ai_events"))
    [worker] = await client.workers()
    job = await client.submit("ai_events", "respond", {"tokens": 812})
    assert await job.result(timeout=10) == 812

    # ctx.notify: the client (the API behind `actionq events --kind`) sees it, with its kind filter.
    received = (await _first(client, "ai_response_received", job_id=job.job_id)).event
    assert isinstance(received, PluginEvent)
    assert (received.plugin, received.version, received.action, received.attempt) == (
        "ai_events",
        "2.1.0",
        "respond",
        1,
    )
    assert received.worker_id == worker.worker_id
    assert received.fields == {"tokens_used": 812, "cost": 0.812, "model": "tiny"}
    # The seeds' form, invoke_notification(kind, sender, **kwargs), from the same action.
    prepared = (await _first(client, "ai_request_prepared", job_id=job.job_id)).event
    assert isinstance(prepared, PluginEvent)
    assert prepared.fields == {"target_model": "tiny"}

    # The plugin's delegate saw it, the seeds' way (fields as keywords, the plugin as sender) and
    # said so with an event of its own, emitted from the delegate: outside the job.
    seen = (await _first(client, "ai_response_seen", seen_job=job.job_id)).event
    assert isinstance(seen, PluginEvent)
    assert seen.fields == {
        "seen_kind": "ai_response_received",
        "seen_job": job.job_id,
        "tokens_used": 812,
        "sender_is_the_plugin": True,
    }
    assert (seen.plugin, seen.job_id, seen.action) == ("ai_events", None, None)

    sync_job = await client.submit("ai_events", "respond_sync", {"tokens": 5})  # a plain def, in its thread
    assert await sync_job.result(timeout=10) == 5
    from_thread = (await _first(client, "ai_response_received", job_id=sync_job.job_id)).event
    assert isinstance(from_thread, PluginEvent)
    assert from_thread.fields == {"tokens_used": 5, "model": "tiny-sync"}
    await _first(client, "ai_response_seen", seen_job=sync_job.job_id)


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"kind": "job_done"}, "names starting with job_ are reserved"),
        ({"kind": "AI-Response"}, "'AI-Response' is not a valid event kind"),
        ({"kind": "ai_x", "fields": {"event": 1}}, "event: reserved"),
        ({"kind": "ai_x", "fields": {"blob": "x" * 9000}}, "over the limit of 8192 bytes"),
    ],
)
async def test_a_bad_plugin_event_fails_the_action_naming_the_problem(
    worker_process: WorkerFactory, client: JobClient, params: dict[str, Any], named: str
) -> None:
    worker_process(_config("ai_events"))
    handle = await client.submit("ai_events", "emit", params)
    with pytest.raises(PluginActionExecutionError) as failed:
        await handle.result(timeout=10)
    assert failed.value.error.type == "InvalidEventError"
    assert named in failed.value.error.message


async def test_actionq_events_filters_a_plugin_kind(
    worker_process: WorkerFactory, client: JobClient, redis_url: str, namespace: str
) -> None:
    worker_process(_config("ai_events"))
    job = await client.submit("ai_events", "respond", {"tokens": 3})
    assert await job.result(timeout=10) == 3
    await _first(client, "ai_response_received", job_id=job.job_id)  # on the stream now
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTIONQ_")}
    env |= {"ACTIONQ_REDIS_URL": redis_url, "ACTIONQ_NAMESPACE": namespace}
    command = [sys.executable, "-m", "service", "events", "--kind", "ai_response_received", "--since", "replay:10"]
    listed = await asyncio.to_thread(
        subprocess.run, [*command, "--json"], env=env, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT
    )
    assert listed.returncode == 0, listed.stderr
    events = [json.loads(line)["event"] for line in listed.stdout.splitlines()]
    assert [(e["kind"], e["job_id"], e["fields"]["tokens_used"]) for e in events] == [
        ("ai_response_received", job.job_id, 3)
    ]
    plain = await asyncio.to_thread(
        subprocess.run, command, env=env, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT
    )
    assert plain.returncode == 0, plain.stderr
    assert "ai_response_received" in plain.stdout
    assert "tokens_used=3" in plain.stdout
