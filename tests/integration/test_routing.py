"""Where a submit may go: served queues only, host="remote", a disabled plugin (issue 13, items 5 and 6)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from service import JobClient, UnknownPluginError, UnservableJobError, WorkerInfo
from tests.conftest import FAST, WorkerFactory, bundled_plugins_config


async def registered(client: JobClient, count: int) -> list[WorkerInfo]:
    """The live workers, once there are ``count`` of them."""
    async with asyncio.timeout(30):
        while len(workers := await client.workers()) < count:
            await asyncio.sleep(0.05)
    return workers


async def test_a_submit_no_live_worker_would_take_is_refused_with_the_reason(
    worker_process: WorkerFactory, client: JobClient
) -> None:
    here = client.settings.hostname
    worker_process(bundled_plugins_config(**FAST, hostname=here))
    assert await (await client.submit("PluginB", "calculate_square", {"x": 2}, host=here)).result(timeout=20) == 4
    with pytest.raises(UnservableJobError, match=rf"on host 'nowhere' \(served on: {re.escape(here)}\)"):
        await client.submit("PluginB", "calculate_square", {"x": 2}, host="nowhere")
    with pytest.raises(UnservableJobError, match=r"in lane 'gpu'.*no live worker serves it in that lane"):
        await client.submit("PluginB", "calculate_square", {"x": 2}, queue="gpu")
    with pytest.raises(UnservableJobError, match="on another host"):
        await client.submit("PluginB", "calculate_square", {"x": 2}, host="remote")  # this host is the only one
    # Opting out of the check queues it anyway (for a worker that is not up yet).
    queued = await client.submit("PluginB", "calculate_square", {"x": 2}, host="nowhere", validate=False)
    assert queued.created


async def test_remote_means_a_worker_on_another_host(worker_process: WorkerFactory, client: JobClient) -> None:
    local = client.settings.hostname
    worker_process(bundled_plugins_config(**FAST, hostname=local), wait=False)
    worker_process(bundled_plugins_config(**FAST, hostname="elsewhere-1"), wait=False)
    worker_process(bundled_plugins_config(**FAST, hostname="elsewhere-2"))
    hosts = {w.worker_id: w.hostname for w in await registered(client, 3)}
    assert sorted(hosts.values()) == sorted([local, "elsewhere-1", "elsewhere-2"])
    handles = [await client.submit("PluginB", "calculate_square", {"x": i}, host="remote") for i in range(12)]
    for i, handle in enumerate(handles):
        assert await handle.result(timeout=20) == i * i
    ran_on = [hosts[(await h.record()).worker or ""] for h in handles]
    assert local not in ran_on
    assert set(ran_on) == {"elsewhere-1", "elsewhere-2"}  # spread over the remote hosts, not piled on one


async def test_a_disabled_plugin_stops_being_live_at_once(worker_process: WorkerFactory, client: JobClient) -> None:
    worker_process(bundled_plugins_config(**FAST))
    assert (await client.control("disable_plugin", args={"name": "PluginB"}, timeout=10)).acted
    # The heartbeat window (3 s here) has not passed: only the disable itself can have changed this.
    assert [p.live for p in await client.plugins() if p.name == "PluginB"] == [False]
    fresh = await JobClient.connect(settings=client.settings)  # no cached registry entry
    async with fresh:
        with pytest.raises(UnknownPluginError, match="PluginB"):
            await fresh.submit("PluginB", "calculate_square", {"x": 2})


async def test_a_plugin_another_worker_still_serves_stays_live(
    worker_process: WorkerFactory, client: JobClient
) -> None:
    worker_process(bundled_plugins_config(**FAST), wait=False)
    worker_process(bundled_plugins_config(**FAST))
    first = (await registered(client, 2))[0].worker_id
    assert (await client.control("disable_plugin", worker=first, args={"name": "PluginB"}, timeout=10)).acted
    assert [p.live for p in await client.plugins() if p.name == "PluginB"] == [True]
    handle = await client.submit("PluginB", "calculate_square", {"x": 3})
    async with asyncio.timeout(20):
        assert await handle.result() == 9
    assert (await handle.record()).worker != first


async def test_a_cold_cache_fan_out_reads_the_registry_once(
    worker_process: WorkerFactory, client: JobClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker_process(bundled_plugins_config(**FAST))
    async with await JobClient.connect(settings=client.settings) as fresh:  # nothing cached yet
        real, reads = fresh.registry.plugin, []

        async def counted(name: str) -> Any:
            reads.append(name)
            return await real(name)

        monkeypatch.setattr(fresh.registry, "plugin", counted)
        handles = await asyncio.gather(*(fresh.submit("PluginB", "calculate_square", {"x": i}) for i in range(2000)))
        assert reads == ["PluginB"]
        results = await asyncio.gather(*(h.result(timeout=60) for h in handles[::100]))
        assert results == [i * i for i in range(0, 2000, 100)]
