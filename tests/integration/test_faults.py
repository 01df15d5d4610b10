"""Faults: Redis going away and coming back under a running worker."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError

from service import JobClient
from service.processes.embedded import EmbeddedRedis
from service.redis.connection import LeanPool, connect
from tests.clusterkit import ClusterSet
from tests.conftest import FAST as BASE_FAST
from tests.conftest import WorkerFactory, WorkerProc, bundled_plugins_config, until_logged

FAST = {**BASE_FAST, "heartbeat_s": 0.5}


async def _until_live(client: JobClient, plugin: str, timeout_s: float = 20) -> None:
    async with asyncio.timeout(timeout_s):
        while not any(p.live and p.name == plugin for p in await client.plugins()):
            await asyncio.sleep(0.1)


def _closed_by_server(connection: AbstractConnection) -> bool:
    """True once the loop has seen the server close ``connection`` (EOF or an error on its stream)."""
    stream = connection._reader
    return stream is not None and (stream.at_eof() or stream.exception() is not None)


async def _worker_on(server: EmbeddedRedis, worker_process: WorkerFactory, client: JobClient) -> WorkerProc:
    """A worker using ``server`` (not the session server), once its plugins are live."""
    worker = worker_process(bundled_plugins_config(**FAST), env={"ACTIONQ_REDIS_URL": server.url}, wait=False)
    await _until_live(client, "PluginB")
    return worker


@pytest.mark.parametrize("socket_timeout", [None, 5.0], ids=["no-timeout", "timeout"])
async def test_a_write_to_a_transport_closed_under_it_is_a_connection_error(
    redis_url: str, socket_timeout: float | None
) -> None:
    """uvloop raises RuntimeError when a reset closes the transport between the lending and the
    write (the fault suite's proxy did it to a worker's take): it must come out as redis-py's
    ConnectionError, which every caller backs off on, with the connection dropped for a fresh one.
    With a socket timeout (a worker's connections) the write is actionq's own, without one redis-py's."""
    pool = LeanPool.from_url(redis_url, socket_timeout=socket_timeout)
    connection = pool.make_connection()
    await _lost_on_a_closed_transport(connection)
    await connection.connect()  # type: ignore[no-untyped-call]  # a fresh transport works
    await connection.send_command("PING")
    assert await connection.read_response() == b"PONG"
    await connection.disconnect()
    await pool.disconnect()


async def test_on_a_cluster_too_a_write_to_a_closed_transport_is_a_connection_error(
    redis_cluster: ClusterSet,
) -> None:
    """redis-py's cluster client makes its own connections (its connection class is fixed): every
    node's, discovered or named in the URL, sends through the same mapping."""
    cluster = connect(redis_cluster.url)
    try:
        assert await cluster.ping()
        nodes = cast(RedisCluster, cluster).get_nodes()
        assert nodes
        for node in nodes:
            connection = node.acquire_connection()
            await _lost_on_a_closed_transport(connection)
            node._free.append(connection)
        assert await cluster.ping()  # fresh connections work
    finally:
        await cluster.aclose()


async def _lost_on_a_closed_transport(connection: AbstractConnection) -> None:
    """Connect ``connection``, close its transport under it the way uvloop reports it, and check that
    the next write is a ConnectionError that leaves it disconnected."""
    await connection.connect()  # type: ignore[no-untyped-call]
    writer = connection._writer
    assert writer is not None
    writer.writelines = _closed  # type: ignore[method-assign,assignment]
    with pytest.raises(RedisConnectionError, match="the handler is closed"):
        await connection.send_command("PING")
    assert not connection.is_connected


def _closed(_: Any) -> None:
    raise RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed")


# fresh_redis_server is requested before worker_process so that it is torn down after the worker.
async def test_worker_survives_a_redis_restart(
    fresh_redis_server: EmbeddedRedis, worker_process: WorkerFactory, namespace: str
) -> None:
    async with await JobClient.connect(fresh_redis_server.url, namespace=namespace) as client:
        worker = await _worker_on(fresh_redis_server, worker_process, client)
        assert await (await client.submit("PluginB", "calculate_square", {"x": 3})).result(timeout=20) == 9

        fresh_redis_server.stop()
        # It must not exit: its loop polls, fails and backs off, again and again; its heartbeat and
        # its pub/sub reader each fail too. until_logged fails the test if the worker exits meanwhile.
        for event, times in (("redis_unavailable", 3), ("heartbeat_failed", 1), ("pubsub_reconnecting", 1)):
            await until_logged(worker, event, times)
        assert worker.running, worker.log_tail()
        fresh_redis_server.start()  # same port, empty (no persistence)

        await _until_live(client, "PluginB")  # the worker's heartbeat re-publishes the registry
        handle = await client.submit("PluginB", "calculate_square", {"x": 4})
        assert await handle.result(timeout=20) == 16
    assert worker.running
    assert "redis_unavailable" in worker.log_text()


async def test_worker_stops_cleanly_while_redis_is_down(
    fresh_redis_server: EmbeddedRedis, worker_process: WorkerFactory, namespace: str
) -> None:
    async with await JobClient.connect(fresh_redis_server.url, namespace=namespace) as client:
        worker = await _worker_on(fresh_redis_server, worker_process, client)
    fresh_redis_server.stop()
    await until_logged(worker, "redis_unavailable")  # it knows: its loop is backing off
    assert worker.terminate() == 0, worker.log_tail()
    assert "plugin_unloaded" in worker.log_text()  # plugins were disabled even without Redis


async def test_a_pooled_connection_the_server_closed_is_replaced_before_use(
    fresh_redis_server: EmbeddedRedis, namespace: str
) -> None:
    # LeanPool lends a connection without redis-py's probing read: the server's close must still
    # be noticed (EOF on the idle stream), or the first command after a restart would fail.
    async with await JobClient.connect(fresh_redis_server.url, namespace=namespace) as client:
        assert isinstance(client.redis.connection_pool, LeanPool)
        assert await client.redis.ping()  # one connection, now idle in the pool
        fresh_redis_server.stop()
        fresh_redis_server.start()
        pool = client.redis.connection_pool
        assert pool._available_connections  # the ping's
        async with asyncio.timeout(10):  # the loop records the EOF of the idle connection
            while not all(_closed_by_server(connection) for connection in pool._available_connections):
                await asyncio.sleep(0.01)
        assert await client.redis.ping()  # first try, no error
        handle = await client.submit("PluginB", "calculate_square", {"x": 2}, validate=False)
        assert (await handle.record()).request.params == {"x": 2}
