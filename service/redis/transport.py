"""How actionq's Redis connections send: through :func:`lean_send`.

**A closed transport is a lost connection, on every loop.** A reset that lands between a
connection's lending and its write closes the transport first: on uvloop the write then raises
``RuntimeError`` ("unable to perform operation on <TCPTransport closed=True ...>; the handler is
closed"), where asyncio's own loop drops the write. redis-py has disconnected the connection by
then (it does on any error of a send) and re-raises it as it is, which no caller of ours handles as
a connection error: a worker's poll loop died of it under the fault suite's resetting proxy.

**The socket timeout bounds a write that waits, without a task per command.** With a
``socket_timeout`` (every worker sets one), redis-py 5.3 sends each command through
``asyncio.wait_for``: on CPython 3.11 a task of its own and two more turns of the loop for a write
that almost never waits. A write waits only when the transport has more buffered than its
high-water mark, and then its drain gets the timeout; the error of a failed write is redis-py's own
(the connection disconnected, then ``TimeoutError`` or ``ConnectionError``). A command through
redis-py's send costs ~17 µs more CPU a round trip (``docs/benchmarks.md``).

Every connection actionq makes sends through :func:`lean_send`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from redis import exceptions as redis_exc
from redis.asyncio.connection import AbstractConnection

__all__ = ["closed_is_lost", "lean_send"]

Send = Callable[..., Coroutine[Any, Any, None]]


def lean_send(connection: AbstractConnection) -> Send:
    """``connection.send_packed_command``, with the socket timeout on a waiting drain alone and a
    closed transport's ``RuntimeError`` as a ``ConnectionError``.

    A connection with no socket timeout, or not connected yet, sends through redis-py's own (which
    connects it first)."""
    redis_send: Send = connection.send_packed_command

    async def send(command: bytes | str | Iterable[bytes], check_health: bool = True) -> None:
        timeout = connection.socket_timeout
        writer = connection._writer
        if not timeout or writer is None or not connection.is_connected:
            await redis_send(command, check_health)
            return
        if check_health:
            await connection.check_health()  # type: ignore[no-untyped-call]
        if isinstance(command, str):
            command = command.encode()
        await _write(connection, writer, [command] if isinstance(command, bytes) else command, timeout)

    return closed_is_lost(send)


async def _write(
    connection: AbstractConnection, writer: asyncio.StreamWriter, chunks: Iterable[bytes], timeout: float
) -> None:
    """Write ``chunks``; a drain that has to wait for the peer gets ``timeout``. The errors as redis-py's."""
    try:
        writer.writelines(chunks)
        if writer.transport.get_write_buffer_size():  # the socket took less than all: the drain may wait
            async with asyncio.timeout(timeout):
                await writer.drain()
        else:
            await writer.drain()  # never waits; raises if the connection was lost
    except TimeoutError:
        await connection.disconnect(nowait=True)
        raise redis_exc.TimeoutError("Timeout writing to socket") from None
    except OSError as exc:
        await connection.disconnect(nowait=True)
        err_no, message = ("UNKNOWN", exc.args[0]) if len(exc.args) == 1 else exc.args[:2]
        raise redis_exc.ConnectionError(f"Error {err_no} while writing to socket. {message}.") from exc
    except BaseException:
        await connection.disconnect(nowait=True)
        raise


def closed_is_lost(send: Send) -> Send:
    """``send_packed_command``, with the closed transport's ``RuntimeError`` as a ``ConnectionError``."""

    async def sent(*args: Any, **kwargs: Any) -> None:
        try:
            await send(*args, **kwargs)
        except RuntimeError as exc:  # the connection was disconnected before the error was re-raised
            raise redis_exc.ConnectionError(f"Error while writing to socket: {exc}") from exc

    return sent
