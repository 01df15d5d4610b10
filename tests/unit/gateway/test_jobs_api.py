"""The /v1/jobs routes on fakeredis: submit, idempotency, the client's own errors, results, cancel."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from service.errors import InvalidParamsError, UnknownActionError, UnknownPluginError
from service.models import JobState
from tests.unit.fakes import register
from tests.unit.gateway.conftest import GatewayFactory


async def _keys(gw_redis: object) -> set[bytes]:
    return set(await gw_redis.keys("*"))  # type: ignore[attr-defined]


async def test_submit_is_202_with_a_location_and_the_record_reads_back(gateway: GatewayFactory) -> None:
    async with gateway() as gw:
        await register(gw.client, "PluginB")
        reply = await gw.http.post("/v1/jobs", json={"plugin": "PluginB", "action": "calculate_square",
                                                     "params": {"x": "6"}})  # fmt: skip
        assert reply.status_code == 202, reply.text
        job_id = reply.json()["job_id"]
        assert reply.headers["location"] == f"/v1/jobs/{job_id}" == reply.json()["location"]
        assert reply.json()["created"] is True
        job = await gw.http.get(reply.headers["location"])
        assert job.status_code == 200
        body = job.json()
        assert body["state"] == "queued"
        assert body["request"]["params"] == {"x": 6}  # coerced by the client's validation, as stored
        assert body["attempts"] == []
        assert body["enqueued_at_ms"] > 0


async def test_positional_params_bind_as_in_the_seed(gateway: GatewayFactory) -> None:
    async with gateway() as gw:
        await register(gw.client, "PluginB")
        reply = await gw.http.post("/v1/jobs", json={"plugin": "PluginB", "action": "calculate_square", "params": 7})
        assert reply.status_code == 202
        assert (await gw.client.job(reply.json()["job_id"]).record()).request.params == {"x": 7}


async def test_an_idempotency_key_finds_the_same_job_and_never_enqueues_twice(gateway: GatewayFactory) -> None:
    async with gateway() as gw:
        await register(gw.client, "PluginB")
        body = {"plugin": "PluginB", "action": "calculate_square", "params": {"x": 2}}
        first = await gw.http.post("/v1/jobs", json=body, headers={"Idempotency-Key": "order-17"})
        again = await gw.http.post("/v1/jobs", json=body, headers={"Idempotency-Key": "order-17"})
        assert (first.status_code, again.status_code) == (202, 200)
        assert first.json()["job_id"] == again.json()["job_id"] == "order-17"
        assert again.json()["created"] is False
        assert again.headers["location"] == "/v1/jobs/order-17"
        assert await gw.client.redis.zcard("ut:queue:default:PluginB") == 1
        other = await gw.http.post(
            "/v1/jobs", json={**body, "params": {"x": 3}}, headers={"Idempotency-Key": "order-17"}
        )
        assert other.status_code == 409
        assert other.json()["error"]["type"] == "JobConflictError"
        bad = await gw.http.post("/v1/jobs", json=body, headers={"Idempotency-Key": "has space"})
        assert bad.status_code == 422
        assert "job_id" in bad.json()["error"]["message"]


async def test_refusals_are_the_python_clients_errors_and_write_nothing(gateway: GatewayFactory) -> None:
    async with gateway() as gw:
        await register(gw.client, "PluginB", "InteropTarget")
        before = await _keys(gw.client.redis)
        params = {"a": "x", "b": 1, "zz": 1}
        with pytest.raises(InvalidParamsError) as direct:
            await gw.client.submit("InteropTarget", "it_sync_add", params)
        reply = await gw.http.post("/v1/jobs", json={"plugin": "InteropTarget", "action": "it_sync_add",
                                                     "params": params})  # fmt: skip
        assert reply.status_code == 422
        error = reply.json()["error"]
        assert error["type"] == "InvalidParamsError"
        assert error["message"] == str(direct.value)
        assert error["fields"] == [{"field": e.field, "message": e.message} for e in direct.value.errors]
        assert {f["field"] for f in error["fields"]} == {"a", "zz"}

        with pytest.raises(UnknownPluginError) as no_plugin:
            await gw.client.submit("Nope", "x")
        reply = await gw.http.post("/v1/jobs", json={"plugin": "Nope", "action": "x"})
        assert reply.status_code == 422
        assert reply.json()["error"] == {"type": "UnknownPluginError", "message": str(no_plugin.value)}

        with pytest.raises(UnknownActionError) as no_action:
            await gw.client.submit("PluginB", "cube")
        reply = await gw.http.post("/v1/jobs", json={"plugin": "PluginB", "action": "cube"})
        assert reply.status_code == 422
        assert reply.json()["error"] == {"type": "UnknownActionError", "message": str(no_action.value)}
        assert await _keys(gw.client.redis) == before


async def test_malformed_bodies_get_a_4xx_naming_what_is_wrong(gateway: GatewayFactory) -> None:
    async with gateway() as gw:
        await register(gw.client, "PluginB")
        before = await _keys(gw.client.redis)
        broken = await gw.http.post(
            "/v1/jobs", content=b'{"plugin": "PluginB",', headers={"content-type": "application/json"}
        )
        assert broken.status_code == 400
        assert broken.json()["error"]["type"] == "MalformedJSONError"
        wrong_type = await gw.http.post("/v1/jobs", json={"plugin": 5, "action": "calculate_square"})
        assert wrong_type.status_code == 422
        assert wrong_type.json()["error"]["fields"][0]["field"] == "plugin"
        unknown_option = await gw.http.post(
            "/v1/jobs",
            json={
                "plugin": "PluginB",
                "action": "calculate_square",
                "params": {"x": 1},
                "options": {"timeout": 3},
            },
        )
        assert unknown_option.status_code == 422
        assert unknown_option.json()["error"]["fields"] == [{"field": "options.timeout", "message": "unknown field"}]
        over = await gw.http.post(
            "/v1/jobs",
            json={
                "plugin": "PluginB",
                "action": "calculate_square",
                "params": {"x": 1},
                "options": {"timeout_s": 10**7},
            },
        )
        assert over.status_code == 422
        assert "max" in over.json()["error"]["message"]
        not_an_array = await gw.http.post("/v1/jobs:batch", json={"jobs": []})
        assert not_an_array.status_code == 422
        assert await _keys(gw.client.redis) == before


async def test_a_body_over_the_limit_is_refused_unread(gateway: GatewayFactory) -> None:
    async with gateway(max_body_bytes=1024) as gw:
        await register(gw.client, "PluginB")
        before = await _keys(gw.client.redis)
        body = json.dumps({"plugin": "PluginB", "action": "calculate_square", "params": {"x": 1, "pad": "y" * 2000}})
        declared = await gw.http.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
        assert declared.status_code == 413
        assert declared.json()["error"]["type"] == "BodyTooLarge"
        assert "limit of 1024 bytes" in declared.json()["error"]["message"]

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
            for start in range(0, len(body), 256):
                yield body[start : start + 256].encode()

        chunked = await gw.http.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
        assert chunked.status_code == 413
        assert chunked.json()["error"]["type"] == "BodyTooLarge"
        assert await _keys(gw.client.redis) == before
        fine = await gw.http.post("/v1/jobs", json={"plugin": "PluginB", "action": "calculate_square", "params": [1]})
        assert fine.status_code == 202  # and the gateway is still serving


async def test_a_batch_gives_each_item_its_own_result(gateway: GatewayFactory) -> None:
    async with gateway(max_batch=5) as gw:
        await register(gw.client, "PluginB")
        items = [
            {"plugin": "PluginB", "action": "calculate_square", "params": {"x": 1}},
            {"plugin": "PluginB", "action": "calculate_square", "params": {"x": "nope"}},
            {"plugin": "PluginB", "action": "calculate_square", "params": {"x": 2}, "idempotency_key": "b-1"},
            {"plugin": "PluginB", "action": "calculate_square", "params": {"x": 2}, "idempotency_key": "b-1"},
            {"plugin": "PluginB", "verb": "x"},
        ]
        reply = await gw.http.post("/v1/jobs:batch", json=items)
        assert reply.status_code == 200, reply.text
        results = reply.json()["results"]
        assert [r["index"] for r in results] == [0, 1, 2, 3, 4]
        assert results[0]["status"] == 202
        assert results[0]["created"] is True
        assert results[1]["status"] == 422
        assert results[1]["error"]["type"] == "InvalidParamsError"
        assert results[1]["error"]["fields"][0]["field"] == "x"
        assert {results[2]["status"], results[3]["status"]} == {200, 202}  # one created it, the other found it
        assert results[2]["job_id"] == results[3]["job_id"] == "b-1"
        assert results[4]["status"] == 422
        assert results[4]["error"]["type"] == "RequestValidationError"
        assert {f["field"] for f in results[4]["error"]["fields"]} == {"action", "verb"}
        assert await gw.client.redis.zcard("ut:queue:default:PluginB") == 2
        too_many = await gw.http.post("/v1/jobs:batch", json=items + items)
        assert too_many.status_code == 422
        assert too_many.json()["error"]["type"] == "BatchTooLargeError"


async def test_results_long_poll_and_cancel(gateway: GatewayFactory) -> None:
    async with gateway(max_wait_s=0.05) as gw:
        await register(gw.client, "PluginB")
        missing = await gw.http.get("/v1/jobs/nope")
        assert missing.status_code == 404
        assert missing.json()["error"]["type"] == "JobNotFoundError"
        assert (await gw.http.get("/v1/jobs/nope/result")).status_code == 404
        job_id = (await gw.http.post("/v1/jobs", json={"plugin": "PluginB", "action": "calculate_square",
                                                       "params": [3]})).json()["job_id"]  # fmt: skip
        waiting = await gw.http.get(f"/v1/jobs/{job_id}/result", params={"wait": 60})  # capped at 0.05 s
        assert waiting.status_code == 202
        assert waiting.json() == {"job_id": job_id, "state": "queued", "done": False, "result": None, "error": None}
        cancelled = await gw.http.post(f"/v1/jobs/{job_id}/cancel", json={"reason": "changed my mind"})
        assert cancelled.status_code == 200
        assert cancelled.json() == {"job_id": job_id, "outcome": "cancelled_queued"}
        done = await gw.http.get(f"/v1/jobs/{job_id}/result")
        assert done.status_code == 200
        assert done.json()["state"] == JobState.CANCELLED
        assert done.json()["done"] is True
        assert done.json()["error"]["type"] == "JobCancelledError"
        assert "changed my mind" in done.json()["error"]["message"]
        again = await gw.http.post(f"/v1/jobs/{job_id}/cancel")
        assert again.json()["outcome"] == "already_finished"
        assert (await gw.http.post("/v1/jobs/nope/cancel")).status_code == 404


async def test_the_callers_traceparent_goes_with_the_job_and_a_malformed_one_is_ignored(
    gateway: GatewayFactory,
) -> None:
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    body = {"plugin": "PluginB", "action": "calculate_square", "params": {"x": 2}}
    async with gateway() as gw:
        await register(gw.client, "PluginB")
        traced = await gw.http.post("/v1/jobs", json=body, headers={"traceparent": trace})
        garbled = await gw.http.post("/v1/jobs", json=body, headers={"traceparent": "00-not-a-trace"})
        batch = await gw.http.post("/v1/jobs:batch", json=[body], headers={"traceparent": trace.upper()})
        assert (traced.status_code, garbled.status_code, batch.status_code) == (202, 202, 200)
        record = await gw.client.job(traced.json()["job_id"]).record()
        assert record.request is not None
        assert record.request.options.traceparent == trace
        ignored = await gw.client.job(garbled.json()["job_id"]).record()
        assert ignored.request is not None
        assert ignored.request.options.traceparent is None
        batched = await gw.client.job(batch.json()["results"][0]["job_id"]).record()
        assert batched.request is not None
        assert batched.request.options.traceparent == trace
