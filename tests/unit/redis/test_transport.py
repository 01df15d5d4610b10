"""How actionq's connections send (service.redis.transport): with a socket timeout, a write that
waits for the peer times out as redis-py's does, and one that does not wait takes no task."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis import exceptions as redis_exc
from redis.asyncio.connection import AbstractConnection

from service.redis.connection import LeanPool
from service.redis.transport import closed_is_lost

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve(handler: Handler) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A server that accepts and never reads: a client's writes pile up once the socket buffers are full."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    async for port in _serve(accept):
        yield port
    for writer in held:
        writer.close()


@pytest.fixture
async def pong_port() -> AsyncIterator[int]:
    """A server that answers each ``PING`` it reads with ``+PONG``."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(b"+PONG\r\n" * data.count(b"PING"))
        writer.close()

    async for port in _serve(answer):
        yield port


def _connection(port: int, *, lean: bool) -> AbstractConnection:
    """A LeanPool connection with a socket timeout (no handshake: no client name, library or db);
    ``lean=False`` sends through redis-py's own send instead, for comparison."""
    pool = LeanPool.from_url(f"redis://127.0.0.1:{port}", socket_timeout=0.2, lib_name=None, lib_version=None)
    connection: AbstractConnection = pool.make_connection()
    if not lean:
        redis_send = AbstractConnection.send_packed_command.__get__(connection)
        connection.send_packed_command = closed_is_lost(redis_send)  # type: ignore[method-assign]
    return connection


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "redis-py"])
async def test_a_write_the_peer_does_not_read_times_out_and_drops_the_connection(silent_port: int, lean: bool) -> None:
    connection = _connection(silent_port, lean=lean)
    await connection.connect()  # type: ignore[no-untyped-call]
    with pytest.raises(redis_exc.TimeoutError, match="Timeout writing to socket"):
        await connection.send_packed_command([b"x" * (64 << 20)])  # past any socket buffer
    assert not connection.is_connected


# CPython 3.12 rewrote wait_for on asyncio.timeout: redis-py's send makes no task there either.
WAIT_FOR_TASKS = 10 if sys.version_info < (3, 12) else 0


@pytest.mark.parametrize(("lean", "tasks"), [(True, 0), (False, WAIT_FOR_TASKS)], ids=["lean", "redis-py"])
async def test_a_command_whose_write_does_not_wait_takes_no_task(pong_port: int, lean: bool, tasks: int) -> None:
    connection = _connection(pong_port, lean=lean)
    await connection.connect()  # type: ignore[no-untyped-call]
    loop = asyncio.get_running_loop()
    created: list[object] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        created.append(coro)
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(factory)
    try:
        for _ in range(10):
            await connection.send_command("PING")
            assert await connection.read_response() == b"PONG"
    finally:
        loop.set_task_factory(None)
        await connection.disconnect()
    assert len(created) == tasks  # redis-py's on 3.11: one wait_for task a command
