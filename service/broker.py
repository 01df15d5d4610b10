"""The Redis boundary: connecting, and translating redis-py errors into :class:`BrokerError`.

Only this module knows redis-py's exception types; everything above it sees actionq errors.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

from redis import exceptions as redis_exc
from redis.asyncio import Redis

from service.errors import BrokerError

__all__ = ["broker_errors", "connect", "translating"]

P = ParamSpec("P")
T = TypeVar("T")


def connect(url: str, **kwargs: object) -> Redis:
    """A redis-py asyncio client for ``url`` in bytes mode (what arq and fakeredis expect).

    The connection is lazy: nothing is sent until the first command.
    """
    options: dict[str, object] = {"health_check_interval": 30, "socket_keepalive": True}
    options.update(kwargs)
    try:
        client: Redis = Redis.from_url(url, **options)  # type: ignore[arg-type]
    except ValueError as exc:
        raise BrokerError(f"invalid Redis URL {url!r}: {exc}") from exc
    return client


@contextmanager
def broker_errors(doing: str) -> Iterator[None]:
    """Translate redis-py errors raised in the block into :class:`BrokerError`."""
    try:
        yield
    except redis_exc.ConnectionError as exc:
        raise BrokerError(f"{doing}: cannot reach Redis ({exc})") from exc
    except redis_exc.TimeoutError as exc:
        raise BrokerError(f"{doing}: Redis timed out ({exc})") from exc
    except redis_exc.RedisError as exc:
        raise BrokerError(f"{doing}: Redis error: {exc}") from exc


def translating(doing: str) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Decorator form of :func:`broker_errors` for coroutine functions."""

    def wrap(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @functools.wraps(fn)
        async def inner(*args: P.args, **kwargs: P.kwargs) -> T:
            with broker_errors(doing):
                return await fn(*args, **kwargs)

        return inner

    return wrap
