"""The submit fast lane (service.gateway.fastlane) on fakeredis: the well-formed ``POST /v1/jobs`` is
answered by it, everything else by the declared route with the body replayed, in the same shape."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import pytest

from service.gateway import fastlane, jobs
from service.gateway.app import create_app
from service.settings import Settings
from tests.unit.fakes import register
from tests.unit.gateway.conftest import READ, SUBMIT, TOKENS, GatewayFactory, settings_for

TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
GOOD = {"plugin": "PluginB", "action": "calculate_square", "params": {"x": 3}}


def _spied(monkeypatch: pytest.MonkeyPatch, name: str) -> list[Any]:
    """The calls the fast lane makes to ``name`` (the route's own go through service.gateway.jobs,
    not counted)."""
    calls: list[Any] = []
    real = getattr(jobs, name)

    async def spy(*args: Any) -> Any:
        calls.append(args)
        return await real(*args)

    monkeypatch.setattr(fastlane, name, spy)
    return calls


@pytest.fixture
def lane_submits(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The submits the fast lane made."""
    return _spied(monkeypatch, "submit_body")


async def test_a_well_formed_submit_is_answered_by_the_fast_lane(
    gateway: GatewayFactory, lane_submits: list[Any]
) -> None:
    async with gateway() as gw:
        await register(gw.client, "PluginB")
        headers = {"Idempotency-Key": "lane-1", "traceparent": TRACE}
        first = await gw.http.post("/v1/jobs", json=GOOD, headers=headers)
        assert first.status_code == 202, first.text
        assert first.json() == {"job_id": "lane-1", "created": True, "location": "/v1/jobs/lane-1"}
        assert first.headers["location"] == "/v1/jobs/lane-1"
        again = await gw.http.post("/v1/jobs", json=GOOD, headers=headers)
        assert (again.status_code, again.json()["created"]) == (200, False)
        assert len(lane_submits) == 2
        request = (await gw.client.job("lane-1").record()).request
        assert (request.params, request.options.traceparent) == ({"x": 3}, TRACE)


@pytest.mark.parametrize(
    ("content", "content_type", "status", "error"),
    [
        (b'{"plugin": "PluginB", "action": ', "application/json", 400, "MalformedJSONError"),
        (b'{"plugin": "PluginB", "action": "calculate_square", "extra": 1}', "application/json", 422,
         "RequestValidationError"),
        (b'{"plugin": "PluginB"}', "application/json", 422, "RequestValidationError"),
        (b"[]", "application/json", 422, "RequestValidationError"),
    ],
)  # fmt: skip
async def test_a_body_the_fast_lane_cannot_take_gets_the_routes_answer(
    gateway: GatewayFactory, lane_submits: list[Any], content: bytes, content_type: str, status: int, error: str
) -> None:
    async with gateway() as gw:
        await register(gw.client, "PluginB")
        reply = await gw.http.post("/v1/jobs", content=content, headers={"Content-Type": content_type})
        assert reply.status_code == status, reply.text
        assert reply.json()["error"]["type"] == error
        assert lane_submits == []


async def test_a_body_that_is_not_declared_json_goes_to_the_route(
    gateway: GatewayFactory, lane_submits: list[Any]
) -> None:
    async with gateway() as gw:
        await register(gw.client, "PluginB")
        reply = await gw.http.post("/v1/jobs", content=b'{"plugin": "PluginB", "action": "calculate_square"}',
                                   headers={"Content-Type": "text/plain"})  # fmt: skip
        assert reply.status_code == 422, reply.text
        assert lane_submits == []


async def test_an_error_of_the_submit_is_answered_once_in_the_one_shape(
    gateway: GatewayFactory, lane_submits: list[Any]
) -> None:
    async with gateway() as gw:
        await register(gw.client, "PluginB")
        bad = await gw.http.post("/v1/jobs", json={**GOOD, "params": {"x": "three"}})
        assert bad.status_code == 422
        assert bad.json()["error"]["type"] == "InvalidParamsError"
        assert [f["field"] for f in bad.json()["error"]["fields"]] == ["x"]
        unknown = await gw.http.post("/v1/jobs", json={"plugin": "Nope", "action": "a"})
        assert (unknown.status_code, unknown.json()["error"]["type"]) == (422, "UnknownPluginError")
        assert len(lane_submits) == 2  # answered by the lane, not passed on to submit again


async def test_a_bug_in_the_lanes_submit_gets_the_apps_500_in_the_one_shape(
    gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(fastlane, "submit_body", broken)
    async with gateway() as gw:
        await register(gw.client, "PluginB")
        reply = await gw.http.post("/v1/jobs", json=GOOD)
        assert reply.status_code == 500
        error = reply.json()["error"]
        assert (error["type"], error["message"]) == ("InternalError", "unexpected RuntimeError; see the gateway's log")


def test_with_tracing_the_lane_is_inside_fastapis_stack() -> None:
    """Where FastAPI's HTTP spans cover it; else in front of the whole stack (its 500 is the lane's own, above)."""
    traced = create_app(Settings(redis_url="redis://fake", tracing={"enabled": True, "exporter": "none"}))
    assert traced.fast_lane is None
    assert any(m.cls is cast(Any, fastlane.FastLane) for m in traced.user_middleware)
    plain = create_app(settings_for())
    assert plain.fast_lane is not None
    assert not any(m.cls is cast(Any, fastlane.FastLane) for m in plain.user_middleware)


async def test_tokens_the_fast_lane_does_not_grant_on_get_the_routes_401_and_403(
    gateway: GatewayFactory, lane_submits: list[Any]
) -> None:
    async with gateway(tokens=TOKENS) as gw:
        await register(gw.client, "PluginB")
        missing = await gw.http.post("/v1/jobs", json=GOOD)
        assert (missing.status_code, missing.json()["error"]["type"]) == (401, "Unauthorized")
        wrong = await gw.http.post("/v1/jobs", json=GOOD, headers={"Authorization": "Bearer not-a-token"})
        assert wrong.status_code == 401
        reader = await gw.http.post("/v1/jobs", json=GOOD, headers={"Authorization": f"Bearer {READ}"})
        assert (reader.status_code, reader.json()["error"]["type"]) == (403, "Forbidden")
        assert lane_submits == []
        producer = await gw.http.post("/v1/jobs", json=GOOD, headers={"Authorization": f"bearer {SUBMIT}"})
        assert producer.status_code == 202, producer.text
        assert len(lane_submits) == 1


async def test_an_oversized_body_gets_the_limits_413(gateway: GatewayFactory, lane_submits: list[Any]) -> None:
    async with gateway(max_body_bytes=1024) as gw:
        reply = await gw.http.post("/v1/jobs", json={**GOOD, "params": {"x": "9" * 2000}})
        assert (reply.status_code, reply.json()["error"]["type"]) == (413, "BodyTooLarge")
        assert lane_submits == []


async def test_with_cors_every_submit_goes_through_the_route(gateway: GatewayFactory, lane_submits: list[Any]) -> None:
    async with gateway(cors_origins=["https://ui.example"]) as gw:
        await register(gw.client, "PluginB")
        reply = await gw.http.post("/v1/jobs", json=GOOD, headers={"Origin": "https://ui.example"})
        assert reply.status_code == 202, reply.text
        assert reply.headers["access-control-allow-origin"] == "https://ui.example"
        assert lane_submits == []


@pytest.fixture
def lane_batches(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The batches the fast lane submitted."""
    return _spied(monkeypatch, "submitted_batch")


async def test_a_batch_of_valid_items_is_answered_by_the_fast_lane(
    gateway: GatewayFactory, lane_batches: list[Any]
) -> None:
    async with gateway() as gw:
        await register(gw.client, "PluginB")
        items = [
            {**GOOD, "idempotency_key": "b-1"},
            {**GOOD, "params": {"x": "three"}},
            {"plugin": "Nope", "action": "a"},
        ]
        reply = await gw.http.post("/v1/jobs:batch", json=items, headers={"traceparent": TRACE})
        assert reply.status_code == 200, reply.text
        results = reply.json()["results"]
        assert [(r["index"], r["status"]) for r in results] == [(0, 202), (1, 422), (2, 422)]
        assert results[0]["job_id"] == "b-1"
        assert [r["error"]["type"] for r in results[1:]] == ["InvalidParamsError", "UnknownPluginError"]
        assert len(lane_batches) == 1
        assert (await gw.client.job("b-1").record()).request.options.traceparent == TRACE


async def test_a_batch_with_an_invalid_item_or_too_many_gets_the_routes_answer(
    gateway: GatewayFactory, lane_batches: list[Any]
) -> None:
    async with gateway(max_batch=2) as gw:
        await register(gw.client, "PluginB")
        mixed = await gw.http.post("/v1/jobs:batch", json=[GOOD, {"plugin": "PluginB"}])
        assert mixed.status_code == 200, mixed.text
        assert [r["status"] for r in mixed.json()["results"]] == [202, 422]
        assert mixed.json()["results"][1]["error"]["type"] == "RequestValidationError"
        too_many = await gw.http.post("/v1/jobs:batch", json=[GOOD] * 3)
        assert (too_many.status_code, too_many.json()["error"]["type"]) == (422, "BatchTooLargeError")
        not_a_list = await gw.http.post("/v1/jobs:batch", json={"plugin": "PluginB"})
        assert not_a_list.status_code == 422
        assert lane_batches == []


async def _passed_on(self: fastlane.FastLane, scope: Any, receive: Any, send: Any) -> None:
    await self.app(scope, receive, send)


def _lane_then_route(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``"lane"``, then ``"route"`` with the lane switched off (every request passed on to the app)."""
    yield "lane"
    monkeypatch.setattr(fastlane.FastLane, "__call__", _passed_on)
    yield "route"


_BODIES: list[Any] = [
    GOOD,
    {**GOOD, "params": [3]},
    {**GOOD, "params": 3},
    {**GOOD, "options": {"defer_s": 60, "result_ttl_s": 100, "timeout_s": 5, "author": "me", "watch": True}},
    {**GOOD, "options": {"at": "2099-01-01T00:00:00Z", "expires_s": 30}},
    {**GOOD, "options": {"host": "remote"}},
    {**GOOD, "options": {"defer_s": -1}},
    {**GOOD, "options": {"nope": 1}},
    {**GOOD, "params": {"x": "three"}},
    {**GOOD, "params": {"x": 3, "y": 4}},
    {"plugin": "PluginB", "action": "nope"},
    {"plugin": "PluginB", "action": "calculate_square", "params": {"x": 3}, "extra": True},
]


@pytest.mark.parametrize("index", range(len(_BODIES)))
async def test_the_fast_lane_answers_as_the_route_does(
    gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch, index: int
) -> None:
    """The same body through the lane and through the route (the lane switched off): the same status,
    the same reply (less the job id), the same job written."""
    body = _BODIES[index]
    answers: list[Any] = []
    async with gateway() as gw:
        await register(gw.client, "PluginB")
        for path in _lane_then_route(monkeypatch):
            key = f"{path}-{index}"
            reply = await gw.http.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
            written = await gw.client.redis.exists(gw.client.keys.job(key))
            answers.append((reply.status_code, reply.text.replace(key, "<id>"), written))
            if written:
                request = (await gw.client.job(key).record()).request
                answers.append(request.model_dump(exclude={"options": {"job_id", "at_ms"}}))
    lane, route = answers[: len(answers) // 2], answers[len(answers) // 2 :]
    assert lane == route


async def test_a_batch_through_the_fast_lane_answers_as_the_route_does(
    gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    valid = [body for body in _BODIES if "extra" not in body and "nope" not in body.get("options", {})]
    answers: list[Any] = []
    async with gateway() as gw:
        await register(gw.client, "PluginB")
        for path in _lane_then_route(monkeypatch):
            items = [{**body, "idempotency_key": f"{path}-{i}"} for i, body in enumerate(valid)]
            reply = await gw.http.post("/v1/jobs:batch", json=items)
            answers.append((reply.status_code, reply.text.replace(f"{path}-", "<id>-")))
    assert answers[0] == answers[1]
    assert answers[0][0] == 200
