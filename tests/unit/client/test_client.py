"""The producer side against fakeredis: validation, atomic submit, idempotency, records."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from service.client.client import JobClient, JobSpec, fresh_ids
from service.client.handle import JobHandle
from service.errors import (
    BrokerError,
    InvalidParamsError,
    JobConflictError,
    JobNotFoundError,
    PayloadTooLargeError,
    SubmissionError,
    UnknownActionError,
    UnknownPluginError,
)
from service.models import JobState
from service.plugins.manifest import load_manifest
from service.plugins.registry import Registry
from tests.conftest import REPO_ROOT
from tests.unit.fakes import fake_client, register, serving


@pytest_asyncio.fixture
async def client(fake_redis: aioredis.Redis) -> AsyncIterator[JobClient]:
    client = fake_client(fake_redis)
    yield client
    await client.close()


async def _all_keys(redis: aioredis.Redis) -> set[bytes]:
    return set(await redis.keys("*"))


async def test_submit_writes_the_record_and_the_queue_entry_together(client: JobClient) -> None:
    await register(client, "PluginB")
    handle = await client.submit("PluginB", "calculate_square", {"x": "6"}, job_id="j1")
    assert handle.created
    record = await handle.record()
    assert record.state is JobState.QUEUED
    assert record.request.params == {"x": 6}  # coerced before it was stored
    assert record.queue == "ut:queue:default:PluginB"
    assert await client.redis.zscore("ut:queue:default:PluginB", "ut:j1") is not None
    assert await client.redis.ttl("ut:job:j1") == -1  # a live job's record: no TTL until it ends
    assert {b"ut:job:j1", b"ut:queue:default:PluginB"} <= await _all_keys(client.redis)
    assert not [k for k in await _all_keys(client.redis) if k.startswith(b"arq:")]  # the request is in the record


async def test_rejections_write_nothing(client: JobClient) -> None:
    await register(client, "PluginB", "InteropTarget")
    before = await _all_keys(client.redis)
    with pytest.raises(UnknownPluginError, match=r"unknown plugin 'Nope' \(served: InteropTarget, PluginB\)"):
        await client.submit("Nope", "x")
    with pytest.raises(UnknownActionError, match="declared: calculate_square"):
        await client.submit("PluginB", "cube", {"x": 1})
    with pytest.raises(InvalidParamsError) as bad:
        # b is required here: its default comes from the Python signature, which only the worker's loader reads
        await client.submit("InteropTarget", "it_sync_add", {"a": "x", "b": 1, "zz": 1})
    assert {e.field for e in bad.value.errors} == {"a", "zz"}
    with pytest.raises(InvalidParamsError, match="at most 1 positional"):
        await client.submit("PluginB", "calculate_square", (1, 2))
    with pytest.raises(SubmissionError, match="timeout_s"):
        await client.submit("PluginB", "calculate_square", {"x": 1}, timeout_s=10**6)
    with pytest.raises(SubmissionError, match="job_id"):
        await client.submit("PluginB", "calculate_square", {"x": 1}, job_id="has space")
    with pytest.raises(PayloadTooLargeError):
        await client.submit("Big", "act", {"blob": "y" * 5000}, validate=False)
    assert await _all_keys(client.redis) == before


async def test_unvalidated_params_must_still_be_json(client: JobClient) -> None:
    with pytest.raises(InvalidParamsError, match="not JSON"):
        await client.submit("Any", "thing", {"s": {1, 2}}, validate=False)
    with pytest.raises(InvalidParamsError, match="positional"):
        await client.submit("Any", "thing", 5, validate=False)


async def test_stale_registry_entries_are_not_live(client: JobClient) -> None:
    await register(client, "PluginB")
    await client.redis.zadd(client.keys.registry_heartbeats(), {"PluginB": 1})
    with pytest.raises(UnknownPluginError):
        await client.submit("PluginB", "calculate_square", {"x": 1})


async def test_idempotent_resubmission_and_conflict(client: JobClient) -> None:
    await register(client, "PluginB")
    first = await client.submit("PluginB", "calculate_square", {"x": 2}, job_id="same")
    second = await client.submit("PluginB", "calculate_square", {"x": "2"}, job_id="same")  # same after coercion
    assert first.created
    assert not second.created
    assert await client.redis.zcard("ut:queue:default:PluginB") == 1
    with pytest.raises(JobConflictError, match="same"):
        await client.submit("PluginB", "calculate_square", {"x": 3}, job_id="same")


async def test_routing_by_lane_and_host(client: JobClient) -> None:
    await register(client, "PluginB", lanes=["default", "fast"])
    local = await client.submit("PluginB", "calculate_square", {"x": 1}, host="local", queue="fast")
    assert (await local.record()).queue == "ut:queue:fast:PluginB@here"
    other = await client.submit("PluginB", "calculate_square", {"x": 1}, host="box-2", validate=False)
    assert (await other.record()).queue == "ut:queue:default:PluginB@box-2"
    deferred = await client.submit("PluginB", "calculate_square", {"x": 1}, defer_s=60)
    record = await deferred.record()
    assert record.scheduled_at_ms - record.enqueued_at_ms >= 59_000


async def test_unknown_job(client: JobClient) -> None:
    with pytest.raises(JobNotFoundError, match="nope"):
        await client.job("nope").state()


def _count_batches(client: JobClient) -> list[int]:
    """The sizes of the submit script's calls from now on, as they are made."""
    sizes: list[int] = []
    send = client.store._create_batch

    async def counting(jobs: list[Any]) -> list[list[Any]]:
        sizes.append(len(jobs))
        return await send(jobs)

    client.store._creator._send = counting
    return sizes


async def test_concurrent_submits_share_round_trips(client: JobClient) -> None:
    await register(client, "PluginB")
    sizes = _count_batches(client)
    handles = await asyncio.gather(*(client.submit("PluginB", "calculate_square", {"x": i}) for i in range(50)))
    assert sum(sizes) == 50
    assert sizes[0] == 1  # the first alone, at once
    assert len(sizes) < 50  # the rest in batches behind it
    assert [(await h.record()).request.params["x"] for h in handles] == list(range(50))
    # Idempotency still holds inside one batch: the same id twice, the second is the existing job.
    twice = await asyncio.gather(
        *(client.submit("PluginB", "calculate_square", {"x": 7}, job_id="same") for _ in range(3)),
        return_exceptions=True,
    )
    assert [h.created for h in twice if isinstance(h, JobHandle)] == [True, False, False]
    clash = await asyncio.gather(
        client.submit("PluginB", "calculate_square", {"x": 1}, job_id="clash"),
        client.submit("PluginB", "calculate_square", {"x": 2}, job_id="clash"),
        return_exceptions=True,
    )
    assert isinstance(clash[0], JobHandle)
    assert isinstance(clash[1], JobConflictError)
    assert await client.redis.zcard(client.keys.queue("PluginB")) == 50 + 1 + 1


async def test_submit_many_gives_each_job_its_handle_or_its_error_in_order(client: JobClient) -> None:
    await register(client, "PluginB")
    sizes = _count_batches(client)
    square = "calculate_square"
    specs = [JobSpec("PluginB", square, {"x": i}) for i in range(300)]
    specs[3] = JobSpec("PluginB", square, {"x": "three"})  # invalid params: refuses only itself
    specs[5] = JobSpec("Nope", "x")
    specs[7] = JobSpec("PluginB", square, {"x": 7}, {"queue": "lane-b"})  # no worker reads that lane
    specs[9] = JobSpec("PluginB", square, {"x": 9}, {"colour": "red"})
    specs[11] = JobSpec("PluginB", square, {"x": 11}, {"job_id": "m-1", "defer_s": 60})
    specs[12] = JobSpec("PluginB", square, {"x": 11}, {"job_id": "m-1", "defer_s": 60})  # the same job again
    specs[13] = JobSpec("PluginB", square, {"x": 12}, {"job_id": "m-1"})  # another under its id
    results = await client.submit_many(specs)
    assert len(results) == 300
    assert isinstance(results[3], InvalidParamsError)
    assert isinstance(results[5], UnknownPluginError)
    assert "lane-b" in str(results[7])
    assert isinstance(results[9], SubmissionError)
    assert "colour: not an option of submit" in str(results[9])
    first, again, clash = results[11], results[12], results[13]
    assert isinstance(first, JobHandle)
    assert first.created
    assert first.job_id == "m-1"
    assert isinstance(again, JobHandle)
    assert not again.created
    assert isinstance(clash, JobConflictError)
    handles = [r for r in results if isinstance(r, JobHandle)]
    assert len(handles) == 300 - 5
    assert sum(sizes) == 300 - 4
    assert len(sizes) < 10
    records = [await h.record() for h in handles]
    refused = (3, 5, 7, 9, 13)
    assert [r.request.params for r in records] == [spec.params for i, spec in enumerate(specs) if i not in refused]
    deferred = await first.record()
    assert deferred.state is JobState.QUEUED
    assert deferred.request.options.defer_s == 60
    assert await client.redis.zcard(client.keys.queue("PluginB")) == 300 - 5 - 1
    assert len({h.job_id for h in handles}) == 300 - 5 - 1


async def test_submit_many_checks_a_shared_options_mapping_per_plugin(client: JobClient) -> None:
    # submit_many checks one options mapping once per plugin (a batch's jobs share theirs): what a
    # job's options become still depends on its plugin's manifest (publish_job_channels -> watch).
    manifest = load_manifest(REPO_ROOT / "plugins" / "PluginB", "PluginB")
    watched = manifest.model_copy(update={"name": "PluginW", "publish_job_channels": True})
    registry = Registry(client.redis, client.keys, heartbeat_s=5)
    await registry.publish(serving(client.keys, [manifest, watched]), [manifest, watched])
    shared, bad = {"queue": "default"}, {"queue": "default", "colour": "red"}
    square = "calculate_square"
    specs = [JobSpec(plugin, square, {"x": i}, shared) for i, plugin in enumerate(["PluginB", "PluginW"] * 2)]
    specs += [JobSpec("PluginB", square, {"x": 9}, bad), JobSpec("PluginW", square, {"x": 9}, bad)]
    results = await client.submit_many(specs)
    handles = [r for r in results[:4] if isinstance(r, JobHandle)]
    assert len(handles) == 4
    watches = [(await h.record()).request.options.watch for h in handles]
    assert watches == [client.settings.publish_job_channels, True] * 2
    assert all(isinstance(r, SubmissionError) and "colour" in str(r) for r in results[4:])


async def test_submit_many_on_a_broken_connection_gives_each_job_the_broker_error(
    client: JobClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await register(client, "PluginB")

    async def unreachable(jobs: list[Any]) -> list[list[Any]]:
        raise BrokerError("submitting: Redis unreachable")

    monkeypatch.setattr(client.store._creator, "_send", unreachable)
    results = await client.submit_many([JobSpec("PluginB", "calculate_square", {"x": i}) for i in range(3)])
    assert [type(r) for r in results] == [BrokerError] * 3


def test_fresh_ids_are_distinct_128_bit_hex() -> None:
    ids = fresh_ids(1000)
    assert len(set(ids)) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


async def test_gathered_submits_on_a_cold_cache_read_the_registry_once(
    client: JobClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await register(client, "PluginB")
    real, reads = client.registry.plugin, []

    async def counted(name: str) -> Any:
        reads.append(name)
        return await real(name)

    monkeypatch.setattr(client.registry, "plugin", counted)
    handles = await asyncio.gather(*(client.submit("PluginB", "calculate_square", {"x": i}) for i in range(200)))
    assert len(handles) == 200
    assert reads == ["PluginB"]


async def test_a_failed_registry_read_is_not_cached(client: JobClient, monkeypatch: pytest.MonkeyPatch) -> None:
    await register(client, "PluginB")
    real, calls = client.registry.plugin, []

    async def fails_once(name: str) -> Any:
        calls.append(name)
        if len(calls) == 1:
            raise SubmissionError("registry unreadable")
        return await real(name)

    monkeypatch.setattr(client.registry, "plugin", fails_once)
    results = await asyncio.gather(
        *(client.submit("PluginB", "calculate_square", {"x": i}) for i in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, SubmissionError) for r in results)  # the waiters share the one failed read
    assert (await client.submit("PluginB", "calculate_square", {"x": 1})).created  # read again, not cached
    assert len(calls) == 2


async def test_remote_jobs_go_to_other_hosts_least_loaded_or_in_turn(fake_redis: aioredis.Redis) -> None:
    from service.plugins.manifest import load_manifest
    from tests.conftest import REPO_ROOT
    from tests.unit.fakes import serving

    manifest = load_manifest(REPO_ROOT / "plugins" / "PluginB", "PluginB")
    # least_loaded: c runs nothing, b one job; then the jobs this client sent count too.
    for routing, expected in (("least_loaded", ["c", "b", "c", "b"]), ("round_robin", ["b", "c", "b", "c"])):
        settings = fake_client(fake_redis).settings.model_copy(update={"routing": routing})
        client = JobClient(fake_redis, settings, owns_redis=False)
        for worker_id, host, running in (("w1", "here", 0), ("w2", "b", 1), ("w3", "c", 0)):
            info = serving(client.keys, [manifest], worker_id=worker_id, hostname=host)
            info.running_jobs = running
            await client.registry.publish(info, [manifest])
        queues = []
        for i in range(4):
            handle = await client.submit("PluginB", "calculate_square", {"x": i}, host="remote")
            queues.append((await handle.record()).queue.rsplit("@", 1)[1])
        assert queues == expected, routing
        await client.close()
