"""The Redis boundary: connecting, and translating redis-py errors into :class:`BrokerError`.

Only this module knows redis-py's exception types; everything above it sees actionq errors.
"""

from __future__ import annotations

import asyncio
import random
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import hiredis
from redis import exceptions as redis_exc
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, ConnectionPool

from service.errors import BrokerError
from service.redis.cluster import cluster_client, is_cluster_url, redact_cluster_url
from service.redis.sentinel import MasterPool, is_sentinel_url, master_client, redact_sentinel_url
from service.redis.transport import lean_send

__all__ = ["LeanPool", "LeanSentinelPool", "broker_errors", "connect", "redact", "while_unreachable"]

T = TypeVar("T")

# Between two tries while Redis is unreachable: quick for a blip, capped, jittered (full jitter).
_RETRY_FIRST_S = 0.05
_RETRY_CAP_S = 1.0


def connect(url: str, **kwargs: object) -> Redis:
    """A redis-py asyncio client for ``url`` in bytes mode (what arq and fakeredis expect).

    The connection is lazy: nothing is sent until the first command. A ``redis+sentinel://`` URL
    gives a client whose pool asks the Sentinels for the master at each connect
    (:mod:`service.redis.sentinel`), so it follows a failover; a ``redis+cluster://`` URL gives a
    Redis Cluster client (:mod:`service.redis.cluster`).
    """
    options: dict[str, object] = {"health_check_interval": 30, "socket_keepalive": True}
    options.update(kwargs)
    try:
        if is_sentinel_url(url):
            return master_client(url, options, LeanSentinelPool)
        if is_cluster_url(url):
            return cluster_client(url, options)
        pool = LeanPool.from_url(url, **options)
    except ValueError as exc:
        raise BrokerError(f"invalid Redis URL {redact(url)!r}: {exc}") from exc
    return Redis.from_pool(pool)


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (in the userinfo and in a ``password=`` query).

    Every message and log line that names a Redis URL passes it through here first.
    """
    if is_sentinel_url(url):
        return redact_sentinel_url(url)
    if is_cluster_url(url):
        return redact_cluster_url(url)
    try:
        parts = urllib.parse.urlsplit(url)
        netloc, query = parts.netloc, parts.query
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user, has_password, _ = userinfo.partition(":")
            netloc = f"{user}:***@{host}" if has_password else netloc
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        if any(name.lower() == "password" for name, _ in pairs):
            query = urllib.parse.urlencode([(n, "***" if n.lower() == "password" else v) for n, v in pairs], safe="*")
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))
    except ValueError:
        return "<a Redis URL that cannot be parsed>"


class LeanPool(ConnectionPool):
    """redis-py's connection pool, less one event-loop turn per command and with a packer in C.

    Before it lends a connection, redis-py reads from the socket with a zero timeout, to catch a
    connection that was put back with unread data or that the server closed. That read costs a
    full loop turn per command: about 0.1 ms on an idle machine, on every submit's way to its job's
    start. Both cases show without a read: a closed connection as EOF (or an error) on its stream,
    which the loop records while the connection sits in the pool, and unread data as bytes in the
    stream's buffer. A connection showing either, or one of a kind this does not know (another
    parser, not yet open), gets redis-py's own check.

    redis-py's asyncio connections pack commands in Python, a few µs per argument; the scripts
    take several keys per job (they declare every key they touch), so a batch of settlements is
    hundreds of arguments. hiredis (redis-py's ``hiredis`` extra, a dependency of ours) does it in
    C, as redis-py's own synchronous connections do.

    A write to a connection whose transport was closed under it is a ``ConnectionError``, as on
    asyncio's own loop, and a socket timeout bounds only a write that waits for the peer, without
    the task redis-py's ``wait_for`` makes for every command (:mod:`service.redis.transport`).
    """

    def make_connection(self) -> AbstractConnection:
        """redis-py's connection, packing its commands with hiredis and sending through ``lean_send``."""
        connection: AbstractConnection = super().make_connection()  # type: ignore[no-untyped-call]
        connection.pack_command = _packer(connection.pack_command)  # type: ignore[method-assign]
        connection.send_packed_command = lean_send(connection)  # type: ignore[method-assign]
        return connection

    async def ensure_connection(self, connection: AbstractConnection) -> None:
        """Lend ``connection`` as it is if its stream is open and empty; else redis-py's check."""
        stream = getattr(connection, "_reader", None)
        if (
            connection.is_connected
            and isinstance(stream, asyncio.StreamReader)
            and not stream.at_eof()
            and stream.exception() is None
            and not getattr(stream, "_buffer", b"?")
        ):
            return
        await super().ensure_connection(connection)


class LeanSentinelPool(LeanPool, MasterPool):
    """:class:`LeanPool`'s savings on the pool of a ``redis+sentinel://`` URL, which finds the master
    through the Sentinels (:class:`service.redis.sentinel.MasterPool`)."""


def _packer(python_pack: Callable[..., list[bytes]]) -> Callable[..., list[bytes]]:
    """hiredis's ``pack_command``, with redis-py's handling of a multi-word command name; what
    hiredis refuses (a bool, say) goes to redis-py's packer, which raises the error redis-py would."""
    pack = hiredis.pack_command

    def packed(*args: Any) -> list[bytes]:
        if isinstance(args[0], str) and " " in args[0]:
            args = (*args[0].split(), *args[1:])
        try:
            return [pack(args)]
        except TypeError:
            return python_pack(*args)

    return packed


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


def unreachable(exc: BaseException) -> bool:
    """True for an error of Redis being unreachable (not of a command it refused)."""
    cause = exc.__cause__ if isinstance(exc, BrokerError) else exc
    return isinstance(cause, redis_exc.ConnectionError | redis_exc.TimeoutError | OSError)


async def while_unreachable(call: Callable[[], Awaitable[T]], *, for_s: float) -> T:
    """``call()``, tried again with growing, jittered pauses while Redis is unreachable, for ``for_s``.

    For reads, and for what is safe to send twice: a command whose reply was lost may have run.
    Other errors, and the last one once ``for_s`` is over, are raised as they are.
    """
    loop = asyncio.get_running_loop()
    deadline, pause = loop.time() + for_s, _RETRY_FIRST_S
    while True:
        try:
            return await call()
        except (BrokerError, redis_exc.ConnectionError, redis_exc.TimeoutError, OSError) as exc:
            wait = random.uniform(0, pause)
            if not unreachable(exc) or loop.time() + wait > deadline:
                raise
        await asyncio.sleep(wait)
        pause = min(pause * 2, _RETRY_CAP_S)
