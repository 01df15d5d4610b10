"""The operator API of the real gateway (uvicorn subprocess) against the session's redis-server and real
workers: the events firehose followed live and resumed, queue depths by state, remote control of workers
and plugins (acted and refused), and dead letters listed, replayed and purged."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from service.keys import Keys
from tests.conftest import FAST, WorkerFactory, bundled_plugins_config
from tests.integration.test_gateway import GatewayProc, gateway_process  # noqa: F401 - the fixture
from tests.unit.gateway.sse_text import Event, events_of, follow

# On one Redis and on a 3-master Redis Cluster (DESIGN.md section 11).
pytestmark = pytest.mark.topologies

GatewayStarter = Callable[..., GatewayProc]
FAST_SSE = {"ACTIONQ_GATEWAY__KEEPALIVE_S": "0.2"}


@asynccontextmanager
async def _http(gw: GatewayProc) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
        yield http


async def _submit(
    http: httpx.AsyncClient, plugin: str, action: str, params: Any, *, key: str | None = None, **body: Any
) -> str:
    headers = {"Idempotency-Key": key} if key else {}
    body = {"plugin": plugin, "action": action, "params": params, **body}
    reply = await http.post("/v1/jobs", json=body, headers=headers)
    assert reply.status_code == 202, reply.text
    job_id: str = reply.json()["job_id"]
    return job_id


async def _until_state(http: httpx.AsyncClient, job_id: str, state: str) -> None:
    """Follow the job's events until it reaches ``state``."""
    async with http.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        async for event in follow(response):
            if event.data and event.json()["state"] == state:
                return
    raise AssertionError(f"job {job_id} ended without reaching {state}")


async def _worker_id(http: httpx.AsyncClient) -> str:
    workers = (await http.get("/v1/workers")).json()
    assert len(workers) == 1, workers
    worker_id: str = workers[0]["worker_id"]
    return worker_id


async def _newest_event_id(redis: aioredis.Redis, namespace: str) -> str:
    """The events stream's newest entry id now (a cursor that nothing written later can precede)."""
    newest = await redis.xrevrange(Keys(namespace).events(), count=1)
    return newest[0][0].decode() if newest else "0-0"


def _events(text: str) -> list[Event]:
    return [e for e in events_of(text) if e.comment is None]


async def test_the_events_firehose_follows_live_and_resumes_with_no_gap_and_no_duplicate(
    gateway_process: GatewayStarter,  # noqa: F811 - the fixture imported above
    worker_process: WorkerFactory,
    redis: aioredis.Redis,
    namespace: str,
) -> None:
    worker_process(bundled_plugins_config(**FAST))
    gw = gateway_process(FAST_SSE)
    async with _http(gw) as http:
        cursor = await _newest_event_id(redis, namespace)
        live: list[Event] = []
        params = {"job": "fh-1", "since": cursor}
        async with http.stream("GET", "/v1/events", params=params) as response:
            assert response.status_code == 200
            submitted = False
            async for event in follow(response):
                if event.comment is not None:
                    if not submitted:  # the stream is open: now the job's events can only come after the cursor
                        job_params = {"steps": 3, "delay_s": 0.05}
                        await _submit(http, "long_running", "count_slowly", job_params, key="fh-1")
                        submitted = True
                    continue
                live.append(event)
                if event.event == "job_succeeded":
                    break
        kinds = [e.event for e in live]
        assert kinds[0] == "job_received", kinds
        assert "job_started" in kinds
        assert kinds.count("job_succeeded") == 1
        assert all(e.json()["job_id"] == "fh-1" for e in live)
        ids = [e.id or "" for e in live]
        assert len(set(ids)) == len(ids), f"an event twice: {ids}"
        # Reconnect after the second event: exactly the rest, from the stream alone.
        headers = {"Last-Event-ID": ids[1]}
        rest = await http.get("/v1/events", params={"job": "fh-1", "follow": "false"}, headers=headers)
        assert [e.id for e in _events(rest.text)] == ids[2:]
        replay = await http.get("/v1/events", params={"job": "fh-1", "since": "replay:100", "follow": "false"})
        assert [e.id for e in _events(replay.text)] == ids
        only = await http.get(
            "/v1/events", params={"job": "fh-1", "kind": "job_succeeded", "since": "replay:10", "follow": "false"}
        )
        assert [e.id for e in _events(only.text)] == [ids[kinds.index("job_succeeded")]]


async def test_queue_depths_show_ready_deferred_and_running_jobs(
    gateway_process: GatewayStarter,  # noqa: F811 - the fixture imported above
    worker_process: WorkerFactory,
) -> None:
    worker_process(bundled_plugins_config(**FAST, concurrency=1))
    gw = gateway_process()
    async with _http(gw) as http:
        long_job = await _submit(http, "long_running", "count_slowly", {"steps": 300, "delay_s": 0.1})
        await _until_state(http, long_job, "running")  # the worker's one slot is taken
        await _submit(http, "PluginB", "calculate_square", {"x": 2})  # waits: no free slot
        await _submit(http, "PluginB", "calculate_square", {"x": 3}, options={"defer_s": 600})
        views = {v["queue"]: v for v in (await http.get("/v1/queues")).json()}
        plugin_b, long_running = views["default:PluginB"], views["default:long_running"]
        assert (plugin_b["ready"], plugin_b["deferred"], plugin_b["running"]) == (1, 1, 0), plugin_b
        assert plugin_b["oldest_ready_age_s"] >= 0
        assert (long_running["ready"], long_running["deferred"], long_running["running"]) == (0, 0, 1), long_running
        assert long_running["oldest_ready_age_s"] is None
        assert plugin_b["served"] is True
        assert long_running["exact"] is True
        cancel = await http.post(f"/v1/jobs/{long_job}/cancel", params={"wait": 10})
        assert cancel.status_code == 200


async def test_workers_are_paused_resumed_and_stopped_over_http(
    gateway_process: GatewayStarter,  # noqa: F811 - the fixture imported above
    worker_process: WorkerFactory,
) -> None:
    worker = worker_process(bundled_plugins_config(**FAST))
    gw = gateway_process()
    async with _http(gw) as http:
        worker_id = await _worker_id(http)
        paused = await http.post(f"/v1/workers/{worker_id}/pause")
        assert paused.status_code == 200, paused.text
        body = paused.json()
        assert body["ok"] is True
        assert [(a["worker_id"], a["answer"]) for a in body["answers"]] == [(worker_id, "acted")]
        assert body["answers"][0]["result"] == {"running_jobs": 0}
        assert (await http.get("/v1/workers")).json()[0]["paused"] is True  # published before the ack
        resumed = (await http.post(f"/v1/workers/{worker_id}/resume")).json()
        assert resumed["ok"] is True
        assert (await http.get("/v1/workers")).json()[0]["paused"] is False
        unknown = await http.post("/v1/workers/no-such-worker/pause")
        assert unknown.status_code == 404
        assert unknown.json()["error"]["type"] == "WorkerNotFoundError"
        reload = await http.post("/v1/plugins/PluginB/reload", json={"host": "local"})
        assert reload.status_code == 200, reload.text
        assert reload.json()["answers"][0]["result"]["plugin"] == "PluginB"
        outside = await http.post("/v1/plugins/Elsewhere/load", json={"path": "/definitely/not/allowed/Elsewhere"})
        assert outside.status_code == 409, outside.text
        assert outside.json()["error"]["type"] == "ControlRefusedError"
        assert "is outside the folders this worker loads plugins from" in outside.json()["error"]["message"]
        stopped = (await http.post(f"/v1/workers/{worker_id}/stop")).json()
        assert stopped["ok"] is True
        assert worker.wait() == 0


async def test_plugin_commands_refused_by_the_worker_say_why(
    gateway_process: GatewayStarter,  # noqa: F811 - the fixture imported above
    worker_process: WorkerFactory,
) -> None:
    worker_process(bundled_plugins_config(**FAST, plugin_commands=False))
    gw = gateway_process()
    async with _http(gw) as http:
        worker_id = await _worker_id(http)
        for verb in ("reload", "disable"):
            refused = await http.post(f"/v1/plugins/PluginB/{verb}", json={"worker": worker_id})
            assert refused.status_code == 409, refused.text
            message = refused.json()["error"]["message"]
            assert "plugin_commands: false" in message
            assert worker_id in message
        assert "PluginB" in (await http.get("/v1/workers")).json()[0]["plugins"]  # still served


async def test_dead_letters_are_listed_shown_replayed_and_purged(
    gateway_process: GatewayStarter,  # noqa: F811 - the fixture imported above
    worker_process: WorkerFactory,
) -> None:
    worker_process(bundled_plugins_config(**FAST))
    gw = gateway_process()
    async with _http(gw) as http:
        ids = []
        for n in range(3):
            job_id = await _submit(http, "long_running", "fail", {"message": f"boom {n}"})
            result = await http.get(f"/v1/jobs/{job_id}/result", params={"wait": 20})
            assert result.json()["state"] == "failed"
            ids.append(job_id)
        listed = (await http.get("/v1/dead-letters")).json()
        assert sorted(letter["job_id"] for letter in listed) == sorted(ids)
        shown = (await http.get(f"/v1/dead-letters/{ids[0]}")).json()
        assert shown["request"]["params"] == {"message": "boom 0"}
        assert shown["error"]["message"] == "boom 0"
        assert len(shown["attempts"]) == 1
        replay = await http.post(f"/v1/dead-letters/{ids[0]}/replay", json={"new_id": True})
        assert replay.status_code == 202, replay.text
        new_job = replay.json()["job_id"]
        assert replay.headers["location"] == f"/v1/jobs/{new_job}"
        again = await http.get(f"/v1/jobs/{new_job}/result", params={"wait": 20})
        assert again.json()["state"] == "failed"  # it ran again, and failed again: a new letter
        bulk = (await http.post("/v1/dead-letters:replay", json={"ids": [ids[1], "never-dead"]})).json()
        assert [(r["replayed"], r["status"]) for r in bulk["results"]] == [(ids[1], 202), ("never-dead", 404)]
        assert (await http.get(f"/v1/jobs/{ids[1]}/result", params={"wait": 20})).json()["state"] == "failed"
        assert (await http.delete(f"/v1/dead-letters/{ids[2]}")).status_code == 204
        remaining = {letter["job_id"] for letter in (await http.get("/v1/dead-letters")).json()}
        assert remaining == {new_job, ids[1]}
        purged = (await http.post("/v1/dead-letters:purge", json={"all": True})).json()
        assert purged == {"purged": 2}
        assert (await http.get("/v1/dead-letters")).json() == []
        assert json.loads((await http.get(f"/v1/dead-letters/{ids[1]}")).text)["error"]["type"] == (
            "DeadLetterNotFoundError"
        )
