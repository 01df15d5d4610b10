"""The gateway's operator API on fakeredis: the events firehose, queues, remote control, dead letters, redaction."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any, cast

import pytest
from fastapi.sse import ServerSentEvent

from service.client import queues
from service.client.client import JobClient
from service.client.deadletters import DeadLetter
from service.errors import ErrorInfo
from service.events.bridge import FIELD
from service.events.control import ControlAck, ControlCommand
from service.events.models import JobStartedEvent, JobSucceededEvent, WorkerStartedEvent
from service.gateway.firehose import EventQuery, event_stream, start_of
from service.gateway.redact import MASK, Redactor, redact_params, redact_request, secret_arguments
from service.gateway.sse import relay
from service.models import JobOptions, JobRequest, JobState, now_ms
from service.plugins.manifest import ActionSpec, ArgumentSpec, PluginManifest
from service.plugins.registry import RegisteredPlugin, Registry, WorkerInfo
from service.settings import GatewaySettings
from tests.unit.fakes import register
from tests.unit.gateway.conftest import ADMIN, CONTROL, READ, TOKENS, GatewayFactory
from tests.unit.gateway.sse_text import events_of


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- the events firehose ------------------------------------------------------------------------
def _started(job_id: str, plugin: str = "PluginB") -> dict[str, Any]:
    event = JobStartedEvent(worker_id="w1", job_id=job_id, plugin=plugin, action="a", attempt=1, queue="q")
    return event.model_dump(mode="json")


def _succeeded(job_id: str, plugin: str = "PluginB") -> dict[str, Any]:
    event = JobSucceededEvent(worker_id="w1", job_id=job_id, plugin=plugin, action="a", attempt=1, duration_ms=3)
    return event.model_dump(mode="json")


async def _batch(client: JobClient, *events: dict[str, Any]) -> str:
    """One stream entry holding ``events`` (as the bridge flushes a batch); its entry id."""
    entry: bytes = await client.redis.xadd(client.keys.events(), {FIELD: json.dumps(list(events)).encode()})
    return entry.decode()


def _ids(text: str) -> list[str]:
    return [e.id or "" for e in events_of(text) if e.comment is None]


async def test_the_firehose_ids_name_each_event_of_a_batch_and_resume_exactly(gateway: GatewayFactory) -> None:
    async with gateway() as gw:
        first = await _batch(gw.client, _started("j1"), _succeeded("j1"), _started("j2"))
        second = await _batch(gw.client, _succeeded("j2"))
        reply = await gw.http.get("/v1/events", params={"since": "replay:10", "follow": "false"})
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = [e for e in events_of(reply.text) if e.comment is None]
        assert [(e.event, e.id) for e in events] == [
            ("job_started", f"{first}.0"), ("job_succeeded", f"{first}.1"), ("job_started", f"{first}.2"),
            ("job_succeeded", f"{second}.0"),
        ]  # fmt: skip
        assert [e.json()["job_id"] for e in events] == ["j1", "j1", "j2", "j2"]
        # Resume in the middle of a batch: the rest of that entry, then the later ones; nothing twice.
        resumed = await gw.http.get("/v1/events", params={"follow": "false"}, headers={"Last-Event-ID": f"{first}.0"})
        assert _ids(resumed.text) == [f"{first}.1", f"{first}.2", f"{second}.0"]
        # Last-Event-ID wins over since (an EventSource sends it on reconnect, with the page's original URL).
        again = await gw.http.get(
            "/v1/events", params={"since": "replay:10", "follow": "false"}, headers={"Last-Event-ID": f"{first}.2"}
        )
        assert _ids(again.text) == [f"{second}.0"]
        after_entry = await gw.http.get("/v1/events", params={"since": first, "follow": "false"})
        assert _ids(after_entry.text) == [f"{second}.0"]


async def test_the_firehose_filters_by_kind_plugin_and_job(gateway: GatewayFactory) -> None:
    async with gateway() as gw:
        entry = await _batch(gw.client, _started("j1"), _succeeded("j1", "Other"), _started("j2"), _succeeded("j2"))
        worker = WorkerStartedEvent(worker_id="w1", hostname="here", pid=1).model_dump(mode="json")
        await _batch(gw.client, worker)
        base = {"since": "replay:50", "follow": "false"}
        by_kind = await gw.http.get("/v1/events", params={**base, "kind": ["job_succeeded", "worker_started"]})
        assert [e.event for e in events_of(by_kind.text) if e.comment is None] == [
            "job_succeeded", "job_succeeded", "worker_started",
        ]  # fmt: skip
        by_plugin = await gw.http.get("/v1/events", params={**base, "plugin": "Other"})
        assert _ids(by_plugin.text) == [f"{entry}.1"]
        by_job = await gw.http.get("/v1/events", params={**base, "job": "j2"})
        assert _ids(by_job.text) == [f"{entry}.2", f"{entry}.3"]


async def test_the_firehose_follows_live_events_with_keepalives(gateway: GatewayFactory) -> None:
    # httpx's ASGI transport returns a body once it is complete, so the live part is driven here
    # through the route's own generator and relay (the integration test follows it over HTTP).
    async with gateway() as gw:
        settings = GatewaySettings(keepalive_s=0.05)
        query = EventQuery(None, None, None, None, start_of("now", None), follow=True)
        written = None
        relayed = cast(AsyncGenerator[ServerSentEvent, None], relay(event_stream(gw.client, query), settings, what="t"))
        async with aclosing(relayed) as events:
            async for event in events:
                if event.comment == "keep-alive" and written is None:  # open and idle: now write one
                    written = await _batch(gw.client, _started("live"))
                elif event.id is not None:
                    assert (event.event, event.id) == ("job_started", f"{written}.0")
                    assert json.loads(event.raw_data or "")["job_id"] == "live"
                    break


async def test_a_bad_since_kind_or_last_event_id_is_refused_before_the_stream_starts(gateway: GatewayFactory) -> None:
    async with gateway() as gw:
        bad_since = await gw.http.get("/v1/events", params={"since": "yesterday"})
        assert bad_since.status_code == 422
        assert bad_since.json()["error"]["fields"][0]["field"] == "since"
        bad_kind = await gw.http.get("/v1/events", params={"kind": "job_faild"})
        assert bad_kind.status_code == 422
        assert "job_faild" in bad_kind.json()["error"]["message"]
        bad_last = await gw.http.get("/v1/events", headers={"Last-Event-ID": "12"})
        assert bad_last.status_code == 400
        assert bad_last.json()["error"]["type"] == "InvalidLastEventIdError"
        at_time = await gw.http.get("/v1/events", params={"since": "2000-01-01T00:00:00+00:00", "follow": "false"})
        assert at_time.status_code == 200


async def test_the_firehose_needs_the_read_scope(gateway: GatewayFactory) -> None:
    async with gateway(tokens=TOKENS) as gw:
        params = {"follow": "false"}
        assert (await gw.http.get("/v1/events", params=params)).status_code == 401
        assert (await gw.http.get("/v1/events", params=params, headers=_auth(CONTROL))).status_code == 403
        assert (await gw.http.get("/v1/events", params=params, headers=_auth(READ))).status_code == 200


# -- queues -------------------------------------------------------------------------------------
async def test_queue_depths_tell_ready_deferred_and_running_apart(gateway: GatewayFactory) -> None:
    async with gateway() as gw:
        await register(gw.client, "PluginB")
        client, keys = gw.client, gw.client.keys
        queue = keys.queue("PluginB")
        now = now_ms()
        await client.redis.zadd(queue, {keys.arq_job_id("old"): now - 4000, keys.arq_job_id("new"): now - 1000})
        # Later: one deferred past any lease, one deferred inside the lease window but holding no lease,
        # and two taken by a worker (the score one lease ahead, the lease key held).
        later = {"far": now + 3_600_000, "soon": now + 500, "run1": now + 2000, "run2": now + 2500}
        await client.redis.zadd(queue, {keys.arq_job_id(j): score for j, score in later.items()})
        for job in ("run1", "run2"):
            await client.redis.set(keys.arq_in_progress(job), "w1", px=5000)
        reply = await gw.http.get("/v1/queues")
        assert reply.status_code == 200
        views = {v["queue"]: v for v in reply.json()}
        view = views["default:PluginB"]
        assert (view["ready"], view["deferred"], view["running"]) == (2, 2, 2)
        assert view["lane"] == "default"
        assert view["plugin"] == "PluginB"
        assert view["host"] is None
        assert 4.0 <= view["oldest_ready_age_s"] < 60
        assert view["served"] is True
        assert view["exact"] is True
        # The host's own queue is known (a worker reads it) and empty.
        mine = views["default:PluginB@here"]
        assert (mine["ready"], mine["deferred"], mine["running"], mine["oldest_ready_age_s"]) == (0, 0, 0, None)
        assert mine["host"] == "here"


async def test_entries_written_into_a_queue_by_hand_do_not_break_the_depths(gateway: GatewayFactory) -> None:
    async with gateway() as gw:
        await register(gw.client, "PluginB")
        client, keys = gw.client, gw.client.keys
        queue = keys.queue("PluginB")
        now = now_ms()
        # Not this namespace's arq ids, binary junk, a bare "ns:" and a taken job: only the last counts as running.
        junk = {b"other:job": now + 1000, b"\xff\xfe": now + 1500, f"{keys.namespace}:".encode(): now + 1800}
        await client.redis.zadd(queue, {**junk, keys.arq_job_id("run1"): now + 2000})
        await client.redis.set(keys.arq_in_progress("run1"), "w1", px=5000)
        reply = await gw.http.get("/v1/queues")
        assert reply.status_code == 200, reply.text
        view = {v["queue"]: v for v in reply.json()}["default:PluginB"]
        assert (view["running"], view["deferred"]) == (1, 3)


async def test_entries_that_move_between_the_two_looks_count_where_they_went(
    gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hand-off given back (its lease gone, due now) and a job ended (gone from its queue) after the
    counts were read are not counted as deferred: the second look at them says where they went."""
    real_counts = queues._counts

    async with gateway() as gw:
        await register(gw.client, "PluginB")
        redis, keys, now = gw.client.redis, gw.client.keys, now_ms()
        queue = keys.queue("PluginB")
        await redis.zadd(queue, {keys.arq_job_id(j): now + 2000 for j in ("handed", "ended", "running")})
        await redis.zadd(queue, {keys.arq_job_id("deferred"): now + 1500})
        for job in ("handed", "ended", "running"):
            await redis.set(keys.arq_in_progress(job), "w1", px=5000)

        async def counts_then_moved(*args: Any) -> Any:
            raws = await real_counts(*args)
            await redis.zadd(queue, {keys.arq_job_id("handed"): now - 1})  # given back, ready
            await redis.zrem(queue, keys.arq_job_id("ended"))
            await redis.delete(keys.arq_in_progress("handed"), keys.arq_in_progress("ended"))
            return raws

        monkeypatch.setattr(queues, "_counts", counts_then_moved)
        view = next(v for v in (await gw.http.get("/v1/queues")).json() if v["queue"] == "default:PluginB")
        assert (view["ready"], view["deferred"], view["running"]) == (1, 1, 1)
        assert view["oldest_ready_age_s"] is not None


async def test_a_queue_no_live_worker_reads_is_listed_as_unserved(gateway: GatewayFactory) -> None:
    async with gateway() as gw:
        keys = gw.client.keys
        gone = keys.queue("Gone", "batch")
        await gw.client.redis.zadd(keys.registry_queues(), {gone: now_ms() - 60_000})
        await gw.client.redis.zadd(gone, {keys.arq_job_id("waiting"): now_ms() - 1000})
        views = {v["queue"]: v for v in (await gw.http.get("/v1/queues")).json()}
        assert views["batch:Gone"]["served"] is False
        assert views["batch:Gone"]["ready"] == 1
        assert views["batch:Gone"]["last_served_ms"] is not None


async def test_past_the_lease_sample_running_is_a_floor_and_says_so(
    gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(queues, "LEASE_SAMPLE", 2)
    async with gateway() as gw:
        await register(gw.client, "PluginB")
        keys, now = gw.client.keys, now_ms()
        running = [f"r{i}" for i in range(3)]
        await gw.client.redis.zadd(
            keys.queue("PluginB"), {keys.arq_job_id(j): now + 1000 + i for i, j in enumerate(running)}
        )
        for job in running:
            await gw.client.redis.set(keys.arq_in_progress(job), "w1", px=5000)
        view = next(v for v in (await gw.http.get("/v1/queues")).json() if v["queue"] == "default:PluginB")
        assert view["exact"] is False
        assert view["running"] == 2  # the two checked
        assert view["deferred"] == 1  # the rest of the later entries


# -- remote control -----------------------------------------------------------------------------
@asynccontextmanager
async def _fake_worker(client: JobClient, worker_id: str, *, refuse: str | None = None) -> AsyncIterator[list[str]]:
    """A live registry entry for ``worker_id`` that answers every command aimed at it, as a worker does."""
    await Registry(client.redis, client.keys, heartbeat_s=5).publish(
        WorkerInfo(worker_id=worker_id, hostname="here"), []
    )
    received: list[str] = []
    pubsub = client.redis.pubsub()
    await pubsub.subscribe(client.keys.control_channel())

    async def answer() -> None:
        async for message in pubsub.listen():
            if message["type"] != "message":
                continue
            cmd = ControlCommand.model_validate_json(message["data"])
            if not cmd.targets(worker_id, "here"):
                continue
            received.append(cmd.command)
            ack = ControlAck(command_id=cmd.id, worker_id=worker_id, hostname="here", ok=refuse is None,
                             result={"running_jobs": 0} if refuse is None else None, error=refuse)  # fmt: skip
            await client.redis.rpush(client.keys.control_acks(cmd.id), ack.model_dump_json())  # type: ignore[misc]
            await client.redis.publish(client.keys.control_acks_channel(), ack.model_dump_json())

    task = asyncio.create_task(answer())
    try:
        yield received
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pubsub.aclose()  # type: ignore[no-untyped-call]


async def test_a_worker_command_returns_its_acknowledgement(gateway: GatewayFactory) -> None:
    async with gateway(tokens=TOKENS) as gw, _fake_worker(gw.client, "w-9") as received:
        reply = await gw.http.post("/v1/workers/w-9/pause", headers=_auth(CONTROL))
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["command"] == "pause"
        assert body["ok"] is True
        assert body["answers"] == [
            {"worker_id": "w-9", "hostname": "here", "answer": "acted", "result": {"running_jobs": 0}, "error": None}
        ]
        assert received == ["pause"]
        assert (await gw.http.post("/v1/workers/w-9/resume", headers=_auth(READ))).status_code == 403
        unknown = await gw.http.post("/v1/workers/nobody/stop", headers=_auth(CONTROL))
        assert unknown.status_code == 404
        assert unknown.json()["error"]["type"] == "WorkerNotFoundError"
        assert "w-9" in unknown.json()["error"]["message"]
        assert received == ["pause"]  # nothing was sent for the unknown worker


async def test_a_refused_worker_command_says_why(gateway: GatewayFactory) -> None:
    async with gateway() as gw, _fake_worker(gw.client, "w-9", refuse="vetoed by a control delegate"):
        body = (await gw.http.post("/v1/workers/w-9/drain", json={"timeout_s": 2})).json()
        assert body["ok"] is False
        assert [(a["answer"], a["error"]) for a in body["answers"]] == [("refused", "vetoed by a control delegate")]


async def test_a_plugin_command_refused_by_the_worker_is_an_error_with_its_reason(gateway: GatewayFactory) -> None:
    reason = "PermissionError: remote plugin commands are turned off on this worker (plugin_commands: false)"
    async with gateway(tokens=TOKENS) as gw, _fake_worker(gw.client, "w-9", refuse=reason) as received:
        forbidden = await gw.http.post("/v1/plugins/PluginB/reload", headers=_auth(CONTROL))
        assert forbidden.status_code == 403  # plugin commands load code: admin only
        reply = await gw.http.post("/v1/plugins/PluginB/reload", json={"host": "local"}, headers=_auth(ADMIN))
        assert reply.status_code == 409, reply.text
        error = reply.json()["error"]
        assert error["type"] == "ControlRefusedError"
        assert reason in error["message"]
        assert "w-9" in error["message"]
        assert received == ["reload_plugin"]
        elsewhere = await gw.http.post("/v1/plugins/PluginB/load", json={"host": "far"}, headers=_auth(ADMIN))
        assert elsewhere.status_code == 404
        assert received == ["reload_plugin"]


async def test_a_plugin_command_that_acted_lists_every_answer(gateway: GatewayFactory) -> None:
    async with gateway() as gw, _fake_worker(gw.client, "w-9") as received:
        reply = await gw.http.post("/v1/plugins/MyPlugin/load", json={"path": "/srv/plugins/MyPlugin"})
        assert reply.status_code == 200, reply.text
        assert reply.json()["ok"] is True
        assert received == ["load_plugin"]


# -- dead letters -------------------------------------------------------------------------------
def _letter(job_id: str, params: dict[str, Any], *, plugin: str = "PluginB", action: str = "calculate_square",
            at_ms: int | None = None) -> DeadLetter:  # fmt: skip
    request = JobRequest(plugin=plugin, action=action, params=params, options=JobOptions(job_id=job_id))
    error = ErrorInfo(type="ValueError", message="boom")
    return DeadLetter(job_id=job_id, request=request, queue="q", state=JobState.FAILED, error=error, attempts=[],
                      dead_at_ms=at_ms or now_ms())  # fmt: skip


async def _bury(client: JobClient, *letters: DeadLetter) -> None:
    """Write dead letters as the settle script does: the letter and its index entry."""
    for letter in letters:
        await client.redis.set(client.keys.dead_letter(letter.job_id), letter.model_dump_json(), ex=600)
        await client.redis.zadd(client.keys.dead_letters(), {letter.job_id: letter.dead_at_ms})


async def test_dead_letters_list_show_and_delete(gateway: GatewayFactory) -> None:
    async with gateway() as gw:
        now = now_ms()
        await _bury(gw.client, _letter("d1", {"x": 1}, at_ms=now - 2000), _letter("d2", {"x": 2}, at_ms=now - 1000))
        listed = await gw.http.get("/v1/dead-letters", params={"limit": 1})
        assert [letter["job_id"] for letter in listed.json()] == ["d2"]  # newest first
        shown = await gw.http.get("/v1/dead-letters/d1")
        assert shown.status_code == 200
        assert shown.json()["request"]["params"] == {"x": 1}
        assert shown.json()["error"]["message"] == "boom"
        missing = await gw.http.get("/v1/dead-letters/nope")
        assert missing.status_code == 404
        assert missing.json()["error"]["type"] == "DeadLetterNotFoundError"
        assert (await gw.http.delete("/v1/dead-letters/d1")).status_code == 204
        assert (await gw.http.delete("/v1/dead-letters/d1")).status_code == 404
        assert [letter["job_id"] for letter in (await gw.http.get("/v1/dead-letters")).json()] == ["d2"]


async def test_a_replay_is_202_with_the_new_jobs_location(gateway: GatewayFactory) -> None:
    async with gateway() as gw:
        await _bury(gw.client, _letter("d1", {"x": 3}), _letter("d2", {"x": 4}))
        same = await gw.http.post("/v1/dead-letters/d1/replay")
        assert same.status_code == 202, same.text
        assert same.headers["location"] == "/v1/jobs/d1"
        assert same.json() == {"replayed": "d1", "job_id": "d1", "location": "/v1/jobs/d1"}
        record = (await gw.http.get("/v1/jobs/d1")).json()
        assert record["state"] == "queued"
        assert record["request"]["params"] == {"x": 3}
        fresh = await gw.http.post("/v1/dead-letters/d2/replay", json={"new_id": True})
        new_id = fresh.json()["job_id"]
        assert new_id != "d2"
        assert fresh.headers["location"] == f"/v1/jobs/{new_id}"
        assert (await gw.http.get(f"/v1/jobs/{new_id}")).json()["state"] == "queued"
        assert (await gw.http.get("/v1/dead-letters/d2")).status_code == 404  # the letter is gone
        again = await gw.http.post("/v1/dead-letters/d2/replay")
        assert again.status_code == 404


async def test_a_bulk_replay_gives_each_letter_its_own_result(gateway: GatewayFactory) -> None:
    async with gateway() as gw:
        await _bury(gw.client, _letter("d1", {"x": 1}), _letter("d2", {"x": 2}))
        reply = await gw.http.post("/v1/dead-letters:replay", json={"ids": ["d1", "nope", "d2", "d1"]})
        assert reply.status_code == 200, reply.text
        results = reply.json()["results"]
        assert [(r["replayed"], r["status"]) for r in results] == [("d1", 202), ("nope", 404), ("d2", 202)]
        assert results[1]["error"]["type"] == "DeadLetterNotFoundError"
        assert results[0]["location"] == "/v1/jobs/d1"
        await _bury(gw.client, _letter("d3", {"x": 3}))
        everything = (await gw.http.post("/v1/dead-letters:replay", json={"all": True, "new_id": True})).json()
        assert [r["status"] for r in everything["results"]] == [202]
        assert (await gw.http.get("/v1/dead-letters")).json() == []
        neither = await gw.http.post("/v1/dead-letters:replay", json={})
        assert neither.status_code == 422
        both = await gw.http.post("/v1/dead-letters:replay", json={"ids": ["d1"], "all": True})
        assert both.status_code == 422


async def test_purge_named_letters_or_all(gateway: GatewayFactory) -> None:
    async with gateway() as gw:
        await _bury(gw.client, *(_letter(f"d{i}", {"x": i}) for i in range(4)))
        named = await gw.http.post("/v1/dead-letters:purge", json={"ids": ["d0", "d1", "nope"]})
        assert named.json() == {"purged": 2}
        assert (await gw.http.post("/v1/dead-letters:purge", json={"all": True})).json() == {"purged": 2}
        assert (await gw.http.get("/v1/dead-letters")).json() == []


async def test_dead_letters_need_read_to_look_and_control_to_change(gateway: GatewayFactory) -> None:
    async with gateway(tokens=TOKENS) as gw:
        await _bury(gw.client, _letter("d1", {"x": 1}))
        assert (await gw.http.get("/v1/dead-letters", headers=_auth(READ))).status_code == 200
        assert (await gw.http.get("/v1/dead-letters/d1", headers=_auth(CONTROL))).status_code == 403
        for method, path in (("POST", "/v1/dead-letters/d1/replay"), ("POST", "/v1/dead-letters:replay"),
                             ("DELETE", "/v1/dead-letters/d1"), ("POST", "/v1/dead-letters:purge")):  # fmt: skip
            refused = await gw.http.request(method, path, json={"all": True}, headers=_auth(READ))
            assert refused.status_code == 403, (method, path)
        assert (await gw.http.delete("/v1/dead-letters/d1", headers=_auth(CONTROL))).status_code == 204


# -- secret params ------------------------------------------------------------------------------
def _manifest_with_a_secret() -> PluginManifest:
    arguments = [ArgumentSpec(name="api_key", type="str", secret=True), ArgumentSpec(name="q", type="str")]
    action = ActionSpec(name="search", method="search", arguments=arguments)
    return PluginManifest(name="Search", version="1.0", actions=[action])


def test_secret_arguments_come_from_the_manifest_and_are_masked() -> None:
    manifest = _manifest_with_a_secret()
    secrets = secret_arguments(manifest, "search")
    assert secrets == {"api_key"}
    assert secret_arguments(manifest, "nope") == frozenset()
    assert secret_arguments(None, "search") == frozenset()
    assert redact_params({"api_key": "sk-123", "q": "cats"}, secrets) == {"api_key": MASK, "q": "cats"}
    request = JobRequest(plugin="Search", action="search", params={"api_key": "sk-123", "q": "cats"})
    masked = redact_request(request, secrets)
    assert masked.params == {"api_key": MASK, "q": "cats"}
    assert request.params["api_key"] == "sk-123"  # the job itself still carries it
    plain = JobRequest(plugin="Search", action="search", params={"q": "dogs"})
    assert redact_request(plain, secrets) is plain


async def test_responses_that_show_params_mask_the_secret_ones(
    gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with gateway() as gw:
        entry = RegisteredPlugin(manifest=_manifest_with_a_secret(), last_seen_ms=now_ms(), live=True)

        async def lookup(name: str) -> RegisteredPlugin | None:
            return entry if name == "Search" else None

        monkeypatch.setattr(gw.client.registry, "plugin", lookup)
        letter = _letter("d1", {"api_key": "sk-123", "q": "cats"}, plugin="Search", action="search")
        await _bury(gw.client, letter)
        shown = (await gw.http.get("/v1/dead-letters/d1")).json()
        assert shown["request"]["params"] == {"api_key": MASK, "q": "cats"}
        listed = (await gw.http.get("/v1/dead-letters")).json()
        assert listed[0]["request"]["params"] == {"api_key": MASK, "q": "cats"}
        assert "sk-123" not in (await gw.http.get("/v1/dead-letters")).text
        # The record of a job, as GET /v1/jobs/{id} shows it.
        handle = await gw.client.dead.replay("d1")
        shown_job = await gw.http.get(f"/v1/jobs/{handle.job_id}")
        assert shown_job.json()["request"]["params"] == {"api_key": MASK, "q": "cats"}
        assert "sk-123" not in shown_job.text
        record = await Redactor(gw.client).record(await handle.record())
        assert record.request.params == {"api_key": MASK, "q": "cats"}
        assert (await handle.record()).request.params["api_key"] == "sk-123"  # the job itself still has it
