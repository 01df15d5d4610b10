"""Redis Cluster: the ``redis+cluster://`` URL, the client, and its pub/sub connection.

::

    redis+cluster://[user:password@]host[:port][,host[:port]...][/0][?option=value&...]
    rediss+cluster://...   (TLS to every node)

The hosts are some of the cluster's nodes (port 6379 unless given): redis-py's asyncio
``RedisCluster`` asks the first that answers for the slot map, then sends each command to the node
owning its keys' slot, following ``MOVED`` and ``ASK`` redirections (a resharding) and reloading the
map when a node fails. A script call goes where its keys' slot is: every call actionq makes names
keys of one slot (:mod:`service.keys`, the partitions). Options: the nodes' ``socket_timeout``,
``socket_connect_timeout``, ``socket_keepalive``, ``health_check_interval``, ``max_connections`` (per
node), and with ``rediss+cluster`` the TLS ones. A cluster has database 0 only.

redis-py 5.3's ``RedisCluster`` has no ``pubsub()``. A classic ``PUBLISH`` on any node reaches the
subscribers of every node (the cluster bus carries it), so the process's one classic subscription
connection (:class:`service.redis.pubsub.PubSubMultiplexer`) is a plain connection to one node:
:func:`pubsub_client` gives one that connects to the URL's nodes in turn, so a reconnect after that
node failed goes to the next one (and subscribes every channel again there). The sharded channels
(``SPUBLISH``, :mod:`service.redis.sharded`) are subscribed on their slot's master instead:
:func:`channel_nodes` says where to try, :func:`node_connection` connects there.

Only this module knows ``RedisCluster``. The rest of actionq holds it as a ``Redis``: the commands
it sends are the same, and the few places where a cluster differs — no ``MULTI``, ``MGET`` within one
slot, scripts per slot, no ``pubsub()`` — ask :func:`is_cluster`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection, ConnectionPool, SSLConnection
from redis.exceptions import ClusterError, RedisClusterException, SlotNotCoveredError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError

from service.errors import BrokerError, ConfigError
from service.keys import Keys, is_sharded_channel
from service.redis.batching import PartlyFailed
from service.redis.transport import lean_send
from service.redis.urls import host_list, parse_options, redact_multi_host, split_url, userinfo
from service.settings import Settings

__all__ = [
    "ClusterURL",
    "channel_nodes",
    "check_layout",
    "check_settings",
    "cluster_client",
    "is_cluster",
    "is_cluster_url",
    "layout",
    "parse_cluster_url",
    "node_connection",
    "per_slot",
    "publish",
    "pubsub_client",
    "ready",
    "redact_cluster_url",
    "while_slots_move",
]

T = TypeVar("T")
R = TypeVar("R")

SCHEMES = ("redis+cluster", "rediss+cluster")
DEFAULT_PORT = 6379
FORM = "redis+cluster://[user:password@]host[:port][,host[:port]...][/0][?option=value&...]"
_HINTS = {
    "ssl": "TLS is the scheme: rediss+cluster://",
    "db": "a cluster has database 0 only",
    "password": "the password goes before the hosts (user:password@)",
    "retry_on_timeout": "a cluster client retries on timeouts and failed nodes by itself",
}
# Options of a redis:// URL the cluster client does not take (it retries by itself).
_NOT_FOR_CLUSTER = frozenset({"retry_on_timeout"})


@dataclass(frozen=True, slots=True)
class ClusterURL:
    """A parsed ``redis+cluster://`` URL (the password left out of its ``repr``)."""

    nodes: tuple[tuple[str, int], ...]
    """The startup nodes' ``(host, port)``, in the URL's order."""
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    options: Mapping[str, object] = field(default_factory=dict)

    def node_kwargs(self) -> dict[str, object]:
        """redis-py's keyword arguments for the node connections."""
        kwargs: dict[str, object] = dict(self.options)
        if self.username is not None:
            kwargs["username"] = self.username
        if self.password is not None:
            kwargs["password"] = self.password
        if self.tls:
            kwargs["ssl"] = True
        return kwargs


def is_cluster_url(url: str) -> bool:
    """True for a ``redis+cluster://`` or ``rediss+cluster://`` URL (the scheme alone is looked at)."""
    return url.partition("://")[0].lower() in SCHEMES and "://" in url


def parse_cluster_url(url: str) -> ClusterURL:
    """``url`` parsed; ``ValueError`` naming what is wrong (never a password) when it is malformed."""
    scheme, info, hosts, path, query = split_url(url)
    if scheme.lower() not in SCHEMES:
        raise ValueError(f"not a Cluster URL (expected {FORM})")
    if "#" in query or "#" in path:
        raise ValueError("a Cluster URL has no #fragment")
    if path.strip("/") not in ("", "0"):
        raise ValueError(f"the path is {path!r}: a cluster has database 0 only (/0 or nothing)")
    tls = scheme.lower() == "rediss+cluster"
    username, password = userinfo(info)
    options = parse_options(query, {}, tls=tls, tls_scheme="rediss+cluster", hints=_HINTS)
    for name in _NOT_FOR_CLUSTER & set(options):
        raise ValueError(f"unknown option {name} ({_HINTS[name]})")
    nodes = host_list(hosts, what="cluster node", default_port=DEFAULT_PORT, form=FORM)
    return ClusterURL(nodes=nodes, username=username, password=password, tls=tls, options=options)


def redact_cluster_url(url: str) -> str:
    """``url`` with its password (and any ``*password`` option) replaced by ``***``."""
    return redact_multi_host(url)


def cluster_client(url: str, options: Mapping[str, object]) -> Redis:
    """A redis-py asyncio ``RedisCluster`` for ``url``, typed as the ``Redis`` the rest of actionq holds.

    ``options`` are the caller's connection options; the URL's own win, as in ``from_url``. Lazy:
    the slot map is read by the first command. ``ValueError`` for a malformed URL.
    """
    target = parse_cluster_url(url)
    kwargs: dict[str, Any] = {
        name: value for name, value in options.items() if name not in _NOT_FOR_CLUSTER and name != "db"
    }
    kwargs.update(target.node_kwargs())
    nodes = [ClusterNode(host, port) for host, port in target.nodes]
    return cast(Redis, _Cluster(url, startup_nodes=nodes, **kwargs))  # type: ignore[abstract]  # redis-py types a mixin as abstract


class _Cluster(RedisCluster):
    """redis-py's cluster client, remembering the URL it was made from (:func:`pubsub_client` needs
    it), and made to survive a resharding and a failed node.

    redis-py 5.3 answers a connection error or a timeout on one node by dropping that node from its
    startup nodes and closing *every* connection of the client, in-flight ones of other tasks
    included — which then fail the same way and drop their nodes, until none is left and the client
    says "cannot be connected" for good (redis-py#3693, #2555). And every fifth ``MOVED`` it closes
    everything again to reload the slot map, which during a resharding is often. Here the URL's own
    nodes are never dropped (a reload can always start from them), and a ``MOVED`` only corrects
    the slot it names (``reinitialize_steps=0``); a failed node still reloads the whole map.
    """

    def __init__(self, url: str, **kwargs: Any) -> None:
        kwargs.setdefault("reinitialize_steps", 0)
        super().__init__(**kwargs)
        self.actionq_url = url
        manager = self.nodes_manager
        manager.startup_nodes = _KeptNodes(manager.startup_nodes, keep=frozenset(manager.startup_nodes))
        # Every node's connections send through lean_send (service.redis.transport): the nodes
        # made from now on get the class from these kwargs, the startup nodes (no connection yet) here.
        lost_aware = _lost_aware(self.connection_kwargs["connection_class"])
        for held in (self.connection_kwargs, manager.connection_kwargs):
            held["connection_class"] = lost_aware
        for node in manager.startup_nodes.values():
            node.connection_class = lost_aware


def _lost_aware(base: type[Connection]) -> type[Connection]:
    """``base`` with its sends through :func:`~service.redis.transport.lean_send`."""

    def __init__(self: Connection, *args: Any, **kwargs: Any) -> None:
        base.__init__(self, *args, **kwargs)
        self.send_packed_command = lean_send(self)  # type: ignore[method-assign]

    return type(f"LostAware{base.__name__}", (base,), {"__init__": __init__})


class _KeptNodes(dict[str, ClusterNode]):
    """The startup nodes, less the ability to lose the ones the URL named."""

    def __init__(self, nodes: Mapping[str, ClusterNode], *, keep: frozenset[str]) -> None:
        super().__init__(nodes)
        self._keep = keep

    def pop(self, name: str, default: Any = None) -> Any:
        """Drop a discovered node; keep one the URL named (it is what a reload starts from)."""
        if name in self._keep:
            return self.get(name, default)
        return super().pop(name, default)


def is_cluster(redis: object) -> bool:
    """True if ``redis`` is a cluster client (:func:`cluster_client`)."""
    return isinstance(redis, RedisCluster)


class _NodesConnection(Connection):
    """A plain connection to one of several nodes: each connect tries them in turn from the last good one."""

    def __init__(self, *, nodes: tuple[tuple[str, int], ...], **kwargs: Any) -> None:
        self._nodes = nodes
        self._next = 0
        super().__init__(host=nodes[0][0], port=nodes[0][1], **kwargs)

    async def _connect(self) -> None:
        last: BaseException | None = None
        for _ in self._nodes:
            self.host, self.port = self._nodes[self._next]
            try:
                await super()._connect()  # type: ignore[no-untyped-call]
            except (OSError, TimeoutError) as exc:
                last = exc
                self._next = (self._next + 1) % len(self._nodes)
            else:
                return
        assert last is not None
        raise last


class _NodesSSLConnection(_NodesConnection, SSLConnection):
    """:class:`_NodesConnection` over TLS."""


def pubsub_client(redis: Redis) -> Redis:
    """The client whose ``pubsub()`` a process subscribes with: ``redis`` itself, or for a cluster
    client a plain one on its URL's nodes (any node hears every classic ``PUBLISH``)."""
    if not isinstance(redis, _Cluster):
        return redis
    cluster = redis
    target = parse_cluster_url(cluster.actionq_url)
    kwargs = {
        name: value
        for name, value in cluster.get_connection_kwargs().items()
        if name not in ("host", "port", "connection_class", "response_callbacks", "retry")
        and not (name.startswith("ssl") and not target.tls)
    }
    connection_class = _NodesSSLConnection if target.tls else _NodesConnection
    pool = ConnectionPool(connection_class=connection_class, nodes=target.nodes, **kwargs)
    return Redis.from_pool(pool)


async def ready(redis: Redis) -> None:
    """Read the slot map of cluster ``redis`` if it has not been read yet (``redis.ConnectionError``
    when no node answers: redis-py raises an exception of its own there, not a ``RedisError``)."""
    try:
        await cast(RedisCluster, redis).initialize()
    except RedisClusterException as exc:
        raise RedisConnectionError(f"the cluster cannot be reached: {exc}") from exc


def channel_nodes(redis: Redis, channel: str) -> list[tuple[str, int]]:
    """Where to subscribe to sharded ``channel`` of cluster ``redis``, best first: the master of its slot
    in the client's slot map, every other master it knows, the URL's nodes (any node answers
    ``MOVED`` with the owner, :mod:`service.redis.sharded`)."""
    cluster = cast(_Cluster, redis)
    found: list[tuple[str, int]] = []
    with contextlib.suppress(SlotNotCoveredError, KeyError, IndexError):
        owner = cluster.get_node_from_key(channel)
        if owner is not None:
            found.append((str(owner.host), int(owner.port)))
    found += [(str(node.host), int(node.port)) for node in cluster.get_primaries()]
    found += list(parse_cluster_url(cluster.actionq_url).nodes)
    return list(dict.fromkeys(found))


def node_connection(redis: Redis, host: str, port: int) -> Connection:
    """A connection of its own to node ``host:port`` of cluster ``redis``, with the nodes' options (auth,
    TLS, timeouts) and the cluster's reply parser (``MOVED`` is a ``MovedError``); not connected yet."""
    kwargs: dict[str, Any] = dict(cast(RedisCluster, redis).get_connection_kwargs())
    connection_class = cast(type[Connection], kwargs.pop("connection_class"))
    for name in ("max_connections", "response_callbacks", "host", "port"):
        kwargs.pop(name, None)
    return connection_class(host=host, port=port, **kwargs)


def layout(redis: Redis, namespace: str, partitions: int) -> Keys:
    """The key names for ``namespace`` on ``redis``: with ``partitions`` on a cluster, none on one Redis."""
    return Keys(namespace, partitions if is_cluster(redis) else 0)


# Errors of a call a cluster did not run: its slot was moving (TRYAGAIN while a script's keys were
# split between two nodes, redirections past redis-py's limit: "TTL exhausted") or had no master.
_NOT_RUN = (TryAgainError, ClusterError, SlotNotCoveredError)
# How long a call keeps trying while its slot moves: the keys of one slot migrate in well under a
# second in the tests; a resharding of a big slot can take longer, and a failover a few seconds.
_SLOT_MOVE_S = 10.0
_SLOT_MOVE_PAUSE_S = 0.05


async def while_slots_move(call: Callable[[], Awaitable[R]], *, for_s: float = _SLOT_MOVE_S) -> R:
    """``call()``, tried again while the cluster says it did not run it because its slot is moving.

    Safe for any call, writes included: TRYAGAIN, an exhausted redirection and a slot without a
    master all mean the command was not executed. (redis-py retries these itself, for about half a
    second; a slot whose keys migrate a few at a time is split for longer.) On one Redis none occurs.
    """
    loop = asyncio.get_running_loop()
    deadline, pause = loop.time() + for_s, _SLOT_MOVE_PAUSE_S
    while True:
        try:
            return await call()
        except (BrokerError, *_NOT_RUN) as exc:
            cause = exc.__cause__ if isinstance(exc, BrokerError) else exc
            if not isinstance(cause, _NOT_RUN) or loop.time() + pause > deadline:
                raise
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.5)


async def per_slot(
    items: Sequence[T], slot_of: Callable[[T], int], call: Callable[[list[T]], Awaitable[list[R]]]
) -> list[R]:
    """``call`` once per group of ``items`` that share a slot (at once, concurrently), the replies put
    back in the items' order. One group, and so one call, on one Redis (every slot is 0 there). Each
    call is tried again while its slot moves (:func:`while_slots_move`). If some calls fail and
    others do not, :class:`~service.redis.batching.PartlyFailed` carries the replies there are
    (a :class:`~service.redis.batching.Batcher` gives each caller its own outcome)."""
    groups: dict[int, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(slot_of(item), []).append(index)
    if len(groups) == 1:
        return await while_slots_move(lambda: call(list(items)))

    async def one(indexes: list[int]) -> list[R]:
        group = [items[i] for i in indexes]
        return await while_slots_move(lambda: call(group))

    replies = await asyncio.gather(*(one(indexes) for indexes in groups.values()), return_exceptions=True)
    errors = [reply for reply in replies if isinstance(reply, BaseException)]
    if errors and len(errors) == len(replies):
        raise errors[0]
    out: list[R | None] = [None] * len(items)
    for indexes, reply in zip(groups.values(), replies, strict=True):
        if not isinstance(reply, BaseException):
            for index, value in zip(indexes, reply, strict=True):
                out[index] = value
    if errors:  # the calls that went through wrote: their callers must hear so (a submit told it
        raise PartlyFailed(out, errors[0]) from errors[0]  # failed would be sent again, a second job)
    return cast(list[R], out)


async def publish(redis: Redis, channel: str, message: str | bytes) -> int:
    """``PUBLISH``, on one Redis and on a cluster alike (redis-py 5.3's cluster client has no ``publish()``;
    the command itself reaches every node's subscribers), or ``SPUBLISH`` for a sharded channel (sent to
    the node of its slot); the number of receivers on that node."""
    command = "SPUBLISH" if is_sharded_channel(channel) else "PUBLISH"
    receivers: int = await redis.execute_command(command, channel, message)  # type: ignore[no-untyped-call]
    return receivers


async def check_layout(redis: Redis, keys: Keys) -> None:
    """On a cluster, record the namespace's partition count, or refuse a different one (``ConfigError``).

    Every client and worker of a namespace must agree on it: a job's keys and queue set are chosen
    from it, so a worker counting otherwise would never see some jobs. Nothing to check on one Redis.
    """
    if not keys.partitions:
        return
    mine = str(keys.partitions).encode()
    await redis.set(keys.layout(), mine, nx=True)
    recorded = await redis.get(keys.layout())
    if recorded is not None and recorded != mine:
        raise ConfigError(
            f"namespace {keys.namespace!r} on this cluster has {recorded[:40].decode(errors='replace')!r} partitions "
            f"(cluster_partitions), and this process was given {keys.partitions}: use the same value everywhere"
        )


def check_settings(redis: Redis, settings: Settings) -> None:
    """Refuse what a cluster client cannot do (``ConfigError``): ``wait_replicas`` (``WAIT`` answers for
    one node's replicas, and a batch spans nodes)."""
    if settings.wait_replicas and is_cluster(redis):
        raise ConfigError(
            "wait_replicas is not supported on Redis Cluster (WAIT counts one node's replicas): "
            "set it to 0, or use one Redis or Sentinel"
        )
