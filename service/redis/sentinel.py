"""Redis through Sentinel: the ``redis+sentinel://`` URL, and a client whose pool follows the master.

The form is the one the ``Redis-Sentinel-Url`` package defined and Prefect and docket accept (redis-py
itself has no URL for Sentinel; Kombu's ``sentinel://a;sentinel://b`` with the master name in
transport options cannot be one ``redis_url``)::

    redis+sentinel://[user:password@]host[:port][,host[:port]...]/<master name>[/<db>][?option=value&...]
    rediss+sentinel://...   (TLS to the data nodes and to the Sentinels)

The hosts are Sentinels (port 26379 unless given); the credentials are the data nodes', as in a
``redis://`` URL. Options: ``sentinel_username`` and ``sentinel_password`` (the Sentinels' own
auth), ``min_other_sentinels`` (ignore a Sentinel that sees fewer peers: one cut off from the rest
may name a stale master), the data nodes' ``socket_timeout``, ``socket_connect_timeout``,
``socket_keepalive``, ``health_check_interval``, ``max_connections``, ``retry_on_timeout``, and, with
``rediss+sentinel``, ``ssl_cert_reqs``, ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile`` and
``ssl_check_hostname`` (used for the Sentinels too, so one private CA covers the whole set). Any other
option is refused: a misspelt one must not be dropped silently.

Each connection asks the Sentinels for the master's address when it connects, so after a failover
the next connection (and each reconnect, the pub/sub one included) goes to the new master. A
connection still open to a demoted master gets ``READONLY`` on its next write, and one open to a
replaced master not yet demoted gets ``NOREPLICAS`` (with ``min-replicas-to-write``): both close
the connection and raise a connection error (redis-py does the first, :class:`FollowingConnection`
the second), and the callers' reconnect logic takes it from there.

Only the parsing and the building live here; :func:`service.redis.connection.connect` dispatches to
:func:`master_client` and :func:`service.redis.connection.redact` to :func:`redact_sentinel_url`.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from redis import exceptions as redis_exc
from redis.asyncio import Redis
from redis.asyncio.connection import SSLConnection
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection

from service.redis.urls import (
    TLS_OPTIONS,
    OptionParser,
    count,
    host_list,
    parse_options,
    redact_multi_host,
    split_url,
    userinfo,
)

__all__ = [
    "FollowingConnection",
    "MasterPool",
    "SentinelURL",
    "is_sentinel_url",
    "master_client",
    "parse_sentinel_url",
    "redact_sentinel_url",
]

SCHEMES = ("redis+sentinel", "rediss+sentinel")
DEFAULT_PORT = 26379
FORM = "redis+sentinel://[user:password@]host[:port][,host[:port]...]/<master name>[/<db>][?option=value&...]"

# A Sentinel answers SENTINEL MASTERS with a few hundred bytes from memory: one that takes longer
# than this is cut off or overloaded, and the next one is asked (each connect asks them in turn).
_SENTINEL_TIMEOUT_S = 2.0


_SENTINEL_OPTIONS: dict[str, OptionParser] = {
    "sentinel_username": str,
    "sentinel_password": str,
    "min_other_sentinels": count,
}
_SECRET_OPTIONS = frozenset({"sentinel_password"})
_HINTS = {
    "ssl": "TLS is the scheme: rediss+sentinel://",
    "db": "the db is the path after the master name: /<master name>/<db>",
    "password": "the data nodes' password goes before the hosts (user:password@); the Sentinels' is sentinel_password",
    "service_name": "the master name is the path: /<master name>",
}


@dataclass(frozen=True, slots=True)
class SentinelURL:
    """A parsed ``redis+sentinel://`` URL (the passwords are left out of its ``repr``)."""

    sentinels: tuple[tuple[str, int], ...]
    """The Sentinels' ``(host, port)``, in the URL's order."""
    master: str
    """The master's name, as the Sentinels' ``sentinel monitor <name> ...`` gives it."""
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    node_options: Mapping[str, object] = field(default_factory=dict)
    """Options of the data-node connections given in the URL (timeouts, TLS files)."""
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    min_other_sentinels: int = 0

    def node_kwargs(self) -> dict[str, object]:
        """redis-py's keyword arguments for the data-node connections (what a ``redis://`` URL would give)."""
        kwargs: dict[str, object] = {"db": self.db, **self.node_options}
        if self.username is not None:
            kwargs["username"] = self.username
        if self.password is not None:
            kwargs["password"] = self.password
        if self.tls:
            kwargs["ssl"] = True  # SentinelConnectionPool's switch to its TLS connection class
        return kwargs

    def sentinel_kwargs(self) -> dict[str, object]:
        """redis-py's keyword arguments for the connections to the Sentinels."""
        kwargs: dict[str, object] = {
            "socket_timeout": _SENTINEL_TIMEOUT_S,
            "socket_connect_timeout": _SENTINEL_TIMEOUT_S,
            "socket_keepalive": True,
        }
        if self.sentinel_username is not None:
            kwargs["username"] = self.sentinel_username
        if self.sentinel_password is not None:
            kwargs["password"] = self.sentinel_password
        if self.tls:
            kwargs["ssl"] = True
            kwargs.update({name: value for name, value in self.node_options.items() if name in TLS_OPTIONS})
        return kwargs


def is_sentinel_url(url: str) -> bool:
    """True for a ``redis+sentinel://`` or ``rediss+sentinel://`` URL (the scheme alone is looked at)."""
    return url.partition("://")[0].lower() in SCHEMES and "://" in url


def parse_sentinel_url(url: str) -> SentinelURL:
    """``url`` parsed; ``ValueError`` naming what is wrong (never a password) when it is malformed.

    Split by hand, not by :func:`urllib.parse.urlsplit`, which refuses a host list with an IPv6
    member and knows nothing of a list.
    """
    scheme, info, hosts, path, query = split_url(url)
    if scheme.lower() not in SCHEMES:
        raise ValueError(f"not a Sentinel URL (expected {FORM})")
    if "#" in query or "#" in path:
        raise ValueError("a Sentinel URL has no #fragment")
    tls = scheme.lower() == "rediss+sentinel"
    username, password = userinfo(info)
    master, db = _path(path)
    options = parse_options(
        query, _SENTINEL_OPTIONS, tls=tls, tls_scheme="rediss+sentinel", hints=_HINTS, secret=_SECRET_OPTIONS
    )
    sentinel_options = {name: options.pop(name) for name in list(options) if name in _SENTINEL_OPTIONS}
    others = sentinel_options.get("min_other_sentinels", 0)
    return SentinelURL(
        sentinels=host_list(hosts, what="Sentinel host", default_port=DEFAULT_PORT, form=FORM),
        master=master,
        db=db,
        username=username,
        password=password,
        tls=tls,
        node_options=options,
        sentinel_username=_str_or_none(sentinel_options.get("sentinel_username")),
        sentinel_password=_str_or_none(sentinel_options.get("sentinel_password")),
        min_other_sentinels=others if isinstance(others, int) else 0,
    )


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)


def _path(path: str) -> tuple[str, int]:
    parts = path[1:].split("/")
    if parts and parts[-1] == "" and len(parts) > 1:
        parts.pop()  # a trailing slash
    if not parts or not parts[0]:
        raise ValueError(f"no master name (the path is /<master name>[/<db>]: {FORM})")
    if len(parts) > 2:
        raise ValueError(f"the path has {len(parts)} parts; it is /<master name>[/<db>]")
    master = urllib.parse.unquote(parts[0])
    if len(parts) == 1:
        return master, 0
    if not parts[1].isdigit():
        raise ValueError(f"db {parts[1]!r} is not a number (the path is /<master name>[/<db>])")
    return master, int(parts[1])


def redact_sentinel_url(url: str) -> str:
    """``url`` with the password before the hosts and any ``*password`` option replaced by ``***``."""
    return redact_multi_host(url)


class FollowingConnection(SentinelManagedConnection):
    """redis-py's Sentinel-managed connection, which also asks the Sentinels again on ``NOREPLICAS``.

    A master the Sentinels replaced while it was alive (``SENTINEL FAILOVER``, or a partition that
    healed) goes on as a master until they reconfigure it, about 8 s later. With
    ``min-replicas-to-write`` it refuses every write meanwhile (its replica is the new master now),
    so nothing is written where it would be lost, but a connection left on it would get
    ``NOREPLICAS`` until it is killed. As redis-py does with ``READONLY``, this closes the
    connection and raises a connection error: the caller's retry reconnects, to the master the
    Sentinels name. (A master whose replicas are merely behind refuses the same way; reconnecting
    to it costs one connect.)
    """

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        """redis-py's read; ``NOREPLICAS`` from a master closes the connection (a connection error)."""
        try:
            return await super().read_response(*args, **kwargs)
        except redis_exc.ResponseError as exc:
            if not (self.connection_pool.is_master and str(exc).startswith("NOREPLICAS")):
                raise
            await self.disconnect()
            raise redis_exc.ConnectionError(f"the master refuses writes, asking the Sentinels again: {exc}") from exc


class FollowingSSLConnection(FollowingConnection, SSLConnection):
    """:class:`FollowingConnection` over TLS."""


class MasterPool(SentinelConnectionPool):
    """redis-py's Sentinel pool, with :class:`FollowingConnection` and closing its Sentinels' connections.

    redis-py's ``Sentinel`` holds a client per Sentinel and nothing closes them; a client that
    closes its pool (every actionq client and worker does, at the end) would leave those sockets
    for the garbage collector, with a ``ResourceWarning``. Only a full close (``disconnect()``,
    which is what ``Redis.aclose()`` calls) does it: the pool's own ``disconnect(inuse_connections=False)``
    when the master moves must keep them.
    """

    def __init__(self, service_name: str, sentinel_manager: Sentinel, **kwargs: Any) -> None:
        tls = kwargs.pop("ssl", False)
        kwargs.setdefault("connection_class", FollowingSSLConnection if tls else FollowingConnection)
        super().__init__(service_name, sentinel_manager, **kwargs)  # type: ignore[no-untyped-call]

    async def disconnect(self, inuse_connections: bool = True) -> None:
        """Disconnect the pool's connections; on a full close, the Sentinels' too."""
        await super().disconnect(inuse_connections)
        if inuse_connections:
            manager: Sentinel = self.sentinel_manager
            for sentinel in manager.sentinels:
                await sentinel.connection_pool.disconnect()


def master_client(
    url: str, options: Mapping[str, object], pool_class: type[SentinelConnectionPool] = MasterPool
) -> Redis:
    """A redis-py asyncio client of the master that ``url``'s Sentinels name, with ``pool_class``.

    ``options`` are the caller's connection options (socket timeouts, health checks); the URL's own
    win over them, as in redis-py's ``from_url``. ``ValueError`` for a malformed URL.
    """
    target = parse_sentinel_url(url)
    node_kwargs: dict[str, Any] = {**options, **target.node_kwargs()}
    manager = Sentinel(  # type: ignore[no-untyped-call]
        list(target.sentinels), min_other_sentinels=target.min_other_sentinels, sentinel_kwargs=target.sentinel_kwargs()
    )
    client: Redis = manager.master_for(target.master, connection_pool_class=pool_class, **node_kwargs)
    return client
