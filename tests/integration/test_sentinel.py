"""actionq on a Sentinel set of the test's own (tests/sentinelkit.py): master, replica, three Sentinels.

Everything is given the ``redis+sentinel://`` URL and nothing else: a worker subprocess, the client,
its pub/sub connection, the CLI and the gateway. Then the master goes: SIGKILLed (the pub/sub
subscriptions must come back on the new master; and, under load, with the append-only file and
``min-replicas-to-write 1`` that docs/topology.md recommends, every acknowledged job must end, none
lost and none started again after its success, counted by tests/faultkit.py's journal), or replaced
alive by ``SENTINEL FAILOVER`` (the worker and the client must move before it is demoted).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
import redis.exceptions
import yaml

from service import BrokerError, CancelOutcome, JobClient, JobState, ReplicationTimeoutError, UnservableJobError
from service.gateway.app import create_app
from service.keys import Keys
from service.processes.spawn import has_pid, spawn_worker
from service.redis.connection import LeanSentinelPool
from service.settings import Settings
from tests import faultkit
from tests.conftest import FAST, REPO_ROOT, bundled_plugins_config
from tests.sentinelkit import SentinelSet

pytestmark = pytest.mark.sentinel

# A plain-URL client's view of the data nodes, to check where the data went (never used by actionq).
_DIRECT_TIMEOUT_S = 2


@pytest.fixture
def sentinel_set(server_binary: str) -> Iterator[SentinelSet]:
    """A fresh Sentinel set; the master refuses writes while no replica is in sync.

    ``min-replicas-to-write`` on the master only: with one replica, the promoted one has no replica
    left and, with the setting, would refuse every write (docs/topology.md recommends two replicas).
    """
    sentinels = SentinelSet(server_binary, master_args=["--min-replicas-to-write", "1", "--min-replicas-max-lag", "10"])
    sentinels.start()
    yield sentinels
    sentinels.stop()


@pytest_asyncio.fixture
async def client(sentinel_set: SentinelSet, namespace: str) -> AsyncIterator[JobClient]:
    """A JobClient given the set's ``redis+sentinel://`` URL, and a reconnect window past a failover."""
    settings = Settings(redis_url=sentinel_set.url, namespace=namespace, reconnect_s=30)
    async with await JobClient.connect(settings=settings) as c:
        yield c


def _spawn_worker(url: str, namespace: str, tmp_path: Path, **extra: Any) -> subprocess.Popen[bytes]:
    config = tmp_path / "worker.yml"
    config.write_text(yaml.safe_dump(bundled_plugins_config(**FAST, **extra), sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTIONQ_")}
    env |= {"ACTIONQ_REDIS_URL": url, "ACTIONQ_NAMESPACE": namespace, "ACTIONQ_LOG_FORMAT": "json"}
    env |= {"PYTHONUNBUFFERED": "1"}
    return spawn_worker(config, env, log_path=tmp_path / "worker.log", cwd=REPO_ROOT)


async def _registered(client: JobClient, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not has_pid(await client.redis.zrange(client.keys.workers(), 0, -1), proc.pid):
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"worker {proc.pid} did not register (exit {proc.poll()}):\n{_tail(log)}")
        await asyncio.sleep(0.05)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


def _stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    proc.terminate()
    try:
        code = proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"worker {proc.pid} ignored SIGTERM:\n{log.read_text()[-3000:]}")
    assert code == 0, log.read_text()[-3000:]


async def test_the_spine_runs_through_sentinel(
    sentinel_set: SentinelSet, client: JobClient, namespace: str, tmp_path: Path
) -> None:
    assert isinstance(client.redis.connection_pool, LeanSentinelPool)
    worker = _spawn_worker(sentinel_set.url, namespace, tmp_path)
    try:
        await _registered(client, worker, tmp_path / "worker.log")
        square = await client.submit("PluginB", "calculate_square", {"x": 6})
        assert await square.result(timeout=20) == 36

        counted = await client.submit("long_running", "count_slowly", {"steps": 4, "delay_s": 0.05})
        snaps = [snap async for snap in counted.progress()]
        assert snaps[-1].state is JobState.SUCCEEDED
        steps = [s.progress.current_step for s in snaps if s.progress is not None and s.progress.current_step]
        assert steps
        assert steps[-1] == 4

        slow = await client.submit("long_running", "count_slowly", {"steps": 400, "delay_s": 0.05})
        async with asyncio.timeout(20):
            while await slow.state() is not JobState.RUNNING:
                await asyncio.sleep(0.02)
        assert await slow.cancel(reason="enough") is CancelOutcome.CANCELLED_RUNNING
        assert (await slow.record()).state is JobState.CANCELLED
    finally:
        await asyncio.to_thread(_stop, worker, tmp_path / "worker.log")

    # It all went to the master the Sentinels name, and reached the replica from there.
    master = aioredis.Redis(port=sentinel_set.master.port, socket_timeout=_DIRECT_TIMEOUT_S)
    replica = aioredis.Redis(port=sentinel_set.replica.port, socket_timeout=_DIRECT_TIMEOUT_S)
    try:
        record_key = Keys(namespace).arq_result(square.job_id)  # a finished job's final record
        assert await master.exists(record_key)
        await master.wait(1, 5000)
        assert await replica.exists(record_key)
    finally:
        await master.aclose()
        await replica.aclose()


async def test_the_cli_and_the_gateway_take_the_sentinel_url(
    sentinel_set: SentinelSet, client: JobClient, namespace: str, tmp_path: Path
) -> None:
    worker = _spawn_worker(sentinel_set.url, namespace, tmp_path)
    try:
        await _registered(client, worker, tmp_path / "worker.log")
        env = {k: v for k, v in os.environ.items() if not k.startswith("ACTIONQ_")}
        env |= {"ACTIONQ_REDIS_URL": sentinel_set.url, "ACTIONQ_NAMESPACE": namespace}
        command = [sys.executable, "-m", "service", "submit", "PluginB", "calculate_square", "x=6", "--wait"]
        done = await asyncio.to_thread(
            subprocess.run, [*command, "--timeout", "20"], env=env, capture_output=True, text=True, cwd=REPO_ROOT
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split()[1] == "36"

        app = create_app(Settings(redis_url=sentinel_set.url, namespace=namespace))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
                assert (await http.get("/readyz")).status_code == 200
                body = {"plugin": "PluginB", "action": "calculate_square", "params": {"x": 7}}
                job_id = (await http.post("/v1/jobs", json=body)).json()["job_id"]
                reply = await http.get(f"/v1/jobs/{job_id}/result", params={"wait": 20})
                assert reply.json()["result"] == 49
    finally:
        await asyncio.to_thread(_stop, worker, tmp_path / "worker.log")


async def test_subscriptions_move_to_the_new_master(sentinel_set: SentinelSet, client: JobClient) -> None:
    channel = f"{client.keys.namespace}:sentinel-probe"
    async with client.pubsub.subscribe(channel) as sub:
        await asyncio.to_thread(sentinel_set.kill_master)
        await asyncio.to_thread(sentinel_set.wait_failover)
        promoted = aioredis.Redis(port=sentinel_set.replica.port, socket_timeout=_DIRECT_TIMEOUT_S)
        try:
            # Until the multiplexer has re-subscribed on the new master, a publish reaches nobody:
            # publish until one arrives (the wait is the test's timeout, not an assertion on time).
            async with asyncio.timeout(30):
                while (message := await sub.get(timeout=0.2)) is None:
                    await promoted.publish(channel, b"after the failover")
        finally:
            await promoted.aclose()
    assert message == b"after the failover"
    # The client's commands follow too: the record store answers from the new master.
    await client.redis.set(f"{client.keys.namespace}:probe", b"1")
    assert (await client.redis.info("replication"))["role"] == "master"


async def test_a_planned_switchover_is_followed_at_once_by_the_worker_and_the_client(
    sentinel_set: SentinelSet, client: JobClient, namespace: str, tmp_path: Path
) -> None:
    """SENTINEL FAILOVER leaves the old master up, a master with no replica: with min-replicas-to-write
    it answers writes with NOREPLICAS, and the connections on it must move to the new master then,
    not when the Sentinels get round to demoting it (~8 s later)."""
    worker = _spawn_worker(sentinel_set.url, namespace, tmp_path)
    try:
        await _registered(client, worker, tmp_path / "worker.log")
        before = await client.submit("PluginB", "calculate_square", {"x": 3})
        assert await before.result(timeout=20) == 9
        await asyncio.to_thread(sentinel_set.switch_over)
        async with asyncio.timeout(30):
            while True:  # a submit cut off by the switch, or before the worker's heartbeat is back: again
                try:
                    after = await client.submit("PluginB", "calculate_square", {"x": 4}, job_id="after-switch")
                    break
                except (BrokerError, UnservableJobError):
                    await asyncio.sleep(0.1)
        assert await after.result(timeout=20) == 16
        assert int((await client.redis.info("server"))["tcp_port"]) == sentinel_set.replica.port
        old_master = aioredis.Redis(port=sentinel_set.master.port, socket_timeout=_DIRECT_TIMEOUT_S)
        try:  # the Sentinels had not demoted it yet: the worker and the client moved on their own
            assert (await old_master.info("replication"))["role"] == "master"
            # ...and min-replicas-to-write kept it from taking writes that its resync would throw away.
            with pytest.raises(redis.exceptions.ResponseError, match="NOREPLICAS"):
                await old_master.set(f"{namespace}:split-brain", b"lost")
        finally:
            await old_master.aclose()
    finally:
        await asyncio.to_thread(_stop, worker, tmp_path / "worker.log")


async def test_a_failover_under_load_loses_no_acknowledged_job(sentinel_set: SentinelSet, tmp_path: Path) -> None:
    """Kill -9 the master mid-run: every acknowledged submit ends, none lost, none run after its success."""

    def kill() -> None:
        sentinel_set.kill_master()
        sentinel_set.wait_failover()

    await faultkit.failover_under_load(sentinel_set.url, tmp_path, kill, "master killed, failover")


async def test_wait_replicas_holds_each_write_until_the_replica_has_it(
    sentinel_set: SentinelSet, namespace: str, tmp_path: Path
) -> None:
    """With wait_replicas 1, a submit returns once the replica has the job; with the replica frozen
    (SIGSTOP) it raises ReplicationTimeoutError, and the same job_id sent again once it is back
    finds the job that was written. The worker settles through WAIT as well."""
    settings = Settings(
        redis_url=sentinel_set.url, namespace=namespace, reconnect_s=30, wait_replicas=1, wait_replicas_timeout_s=0.5
    )
    proc = _spawn_worker(sentinel_set.url, namespace, tmp_path, wait_replicas=1)
    log = tmp_path / "worker.log"
    try:
        async with await JobClient.connect(settings=settings) as client:
            await _registered(client, proc, log)
            assert await (await client.submit("PluginB", "calculate_square", {"x": 3})).result(timeout=20) == 9
            replica = sentinel_set.replica.pid
            assert replica is not None
            os.kill(replica, signal.SIGSTOP)
            try:
                with pytest.raises(ReplicationTimeoutError, match="0 of 1 replica"):
                    await client.submit("PluginB", "calculate_square", {"x": 4}, job_id="held")
            finally:
                os.kill(replica, signal.SIGCONT)
            again = await client.submit("PluginB", "calculate_square", {"x": 4}, job_id="held")
            assert await again.result(timeout=20) == 16
    finally:
        _stop(proc, log)
