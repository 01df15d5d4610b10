"""The job bodies every contender of ``bench compare`` runs, and the settings a worker gets.

The same bodies for every contender (DESIGN.md §8): ``incr`` awaits one ``INCR`` of the run's
counter on the worker process's own Redis client (module level, created lazily on the first
job, so its connection is not the library's); ``noop`` does nothing; ``stamp`` returns
``time.time()`` when it started; ``hold`` says it started, waits to be cancelled and stamps when
it saw the cancel. The libraries whose jobs are plain functions run on threads (Dramatiq,
Celery, RQ) get the ``*_sync`` twins on a sync client: the same command on the same kind of
connection. A worker process learns the server, its queue, the counter key and its concurrency
from :class:`Workload`, passed in ``BENCH_*`` environment variables.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import cast

import redis
import redis.asyncio

__all__ = ["Workload", "hold", "incr", "incr_sync", "noop", "noop_sync", "stamp", "stamp_sync"]

_ENV = {
    "url": "BENCH_REDIS_URL",
    "queue": "BENCH_QUEUE",
    "counter": "BENCH_COUNTER",
    "concurrency": "BENCH_CONCURRENCY",
    "namespace": "BENCH_NAMESPACE",
}
# A held job gives up after this long (only a lost cancel reaches it).
HOLD_S = 60.0


@dataclass(frozen=True)
class Workload:
    """What a worker or producer process of a contender needs to know (``BENCH_*`` variables)."""

    url: str
    queue: str
    counter: str
    concurrency: int = 100
    namespace: str = ""

    def env(self) -> dict[str, str]:
        """The ``BENCH_*`` variables that :meth:`from_env` reads back."""
        return {name: str(getattr(self, field)) for field, name in _ENV.items()}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Workload:
        """Read the ``BENCH_*`` variables (a missing one is an error naming it)."""
        environ = os.environ if environ is None else environ
        missing = [name for field, name in _ENV.items() if field != "namespace" and name not in environ]
        if missing:
            raise RuntimeError(f"bench worker/producer: environment variable(s) not set: {', '.join(missing)}")
        return cls(
            url=environ[_ENV["url"]],
            queue=environ[_ENV["queue"]],
            counter=environ[_ENV["counter"]],
            concurrency=int(environ[_ENV["concurrency"]]),
            namespace=environ.get(_ENV["namespace"], ""),
        )


_async_client: redis.asyncio.Redis | None = None
_sync_client: redis.Redis | None = None


def _client() -> redis.asyncio.Redis:
    """The process's own async client, created on first use (inside the worker's event loop)."""
    global _async_client
    if _async_client is None:
        _async_client = redis.asyncio.Redis.from_url(Workload.from_env().url)
    return _async_client


def _client_sync() -> redis.Redis:
    """The process's own sync client (thread-safe: a connection per concurrent thread)."""
    global _sync_client
    if _sync_client is None:
        _sync_client = redis.Redis.from_url(Workload.from_env().url)
    return _sync_client


_counter_key: str | None = None


def _counter() -> str:
    """The run's counter key (read once: the environment does not change under a worker)."""
    global _counter_key
    if _counter_key is None:
        _counter_key = Workload.from_env().counter
    return _counter_key


async def incr() -> None:
    """The default workload's job: one ``INCR`` of the run's counter, awaited."""
    await _client().incr(_counter())


async def noop() -> None:
    """The second figure's job: nothing at all."""


async def stamp() -> float:
    """``time.time()`` when the job started (the latency phase subtracts its enqueue time)."""
    return time.time()


async def hold(key: str) -> str:
    """Push ``time.time()`` to ``<key>:started``, wait to be cancelled, push when that was seen.

    The cancel arrives as ``CancelledError`` at the ``sleep``; the stamp is taken at once and its
    push shielded, so a second cancel cannot lose it.
    """
    client = _client()
    await cast(Awaitable[int], client.lpush(f"{key}:started", repr(time.time())))
    try:
        await asyncio.sleep(HOLD_S)
    except asyncio.CancelledError:
        seen = time.time()
        await asyncio.shield(cast(Awaitable[int], client.lpush(f"{key}:seen", repr(seen))))
        raise
    return "not cancelled"


def incr_sync() -> None:
    """:func:`incr` for libraries whose jobs run on threads."""
    _client_sync().incr(_counter())


def noop_sync() -> None:
    """:func:`noop` for libraries whose jobs run on threads."""


def stamp_sync() -> float:
    """:func:`stamp` for libraries whose jobs run on threads."""
    return time.time()
