"""A write to a connection whose transport was closed under it is a lost connection, on every loop.

A reset that lands between a connection's lending and its write closes the transport first: on
uvloop the write then raises ``RuntimeError`` ("unable to perform operation on <TCPTransport
closed=True ...>; the handler is closed"), where asyncio's own loop drops the write. redis-py has
disconnected the connection by then (it does on any error of a send) and re-raises it as it is,
which no caller of ours handles as a connection error: a worker's poll loop died of it under the
fault suite's resetting proxy. Every connection actionq makes sends through :func:`closed_is_lost`.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from redis import exceptions as redis_exc

__all__ = ["closed_is_lost"]


def closed_is_lost(send: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., Coroutine[Any, Any, None]]:
    """``send_packed_command``, with the closed transport's ``RuntimeError`` as a ``ConnectionError``."""

    async def sent(*args: Any, **kwargs: Any) -> None:
        try:
            await send(*args, **kwargs)
        except RuntimeError as exc:  # redis-py disconnected the connection before re-raising
            raise redis_exc.ConnectionError(f"Error while writing to socket: {exc}") from exc

    return sent
