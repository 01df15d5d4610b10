"""A Sentinel set of the tests' own: a master, one replica and three Sentinels on free loopback ports.

All of them are the binary :func:`service.processes.embedded.find_server_binary` finds, the
Sentinels run as ``redis-server <config> --sentinel`` (Debian ships no separate ``redis-sentinel``
on ``PATH``; the two are one binary), each from a config file of its own that it may rewrite.
:meth:`SentinelSet.start` returns once every Sentinel sees the replica and the other Sentinels and
agrees a failover could be authorised (``SENTINEL CKQUORUM``); :meth:`SentinelSet.kill_master`
SIGKILLs the master and :meth:`SentinelSet.wait_failover` waits until the replica is the master
and every Sentinel names it; :meth:`SentinelSet.switch_over` is the planned kind (``SENTINEL
FAILOVER``), the old master demoted alive. :meth:`SentinelSet.stop` stops everything (also run by a finaliser).

Timings: ``down-after-milliseconds 1000`` (a master silent for 1 s is down), and a short
``failover-timeout``: on this machine the replica is the master about 4 s after the kill.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import redis as redis_sync

from service.processes.embedded import EmbeddedRedis, free_port

__all__ = ["MASTER_NAME", "SentinelSet"]

MASTER_NAME = "actionq-master"
QUORUM = 2
DOWN_AFTER_MS = 1000
# After a failover starts, how long before another may be tried (and the longest the promotion
# may take): short, so a test that lost a race to a slow promotion does not wait minutes.
FAILOVER_TIMEOUT_MS = 3000
# repl-diskless-sync-delay 0: a master waits 5 s by default for more replicas before a full sync.
DATA_NODE_ARGS = ("--appendonly", "yes", "--appendfsync", "always", "--repl-diskless-sync-delay", "0")
_POLL_S = 0.05


class _SentinelProcess(EmbeddedRedis):
    """A Sentinel: ``redis-server <config> --sentinel``, its settings in the config (it rewrites it)."""

    def __init__(self, binary: str, master_port: int) -> None:
        super().__init__(binary=binary)
        self.master_port = master_port

    def _command(self) -> list[str]:
        workdir = self.log_path.parent if self.log_path is not None else None
        assert workdir is not None
        config = workdir / "sentinel.conf"
        config.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    f"bind {self.host}",
                    "daemonize no",
                    f"dir {workdir}",
                    f"sentinel monitor {MASTER_NAME} {self.host} {self.master_port} {QUORUM}",
                    f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}",
                    f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}",
                    f"sentinel parallel-syncs {MASTER_NAME} 1",
                    "",
                ]
            )
        )
        return [self.binary, str(config), "--sentinel"]


class SentinelSet:
    """A master (append-only, ``min-replicas-to-write 1``), a replica and three Sentinels."""

    def __init__(self, binary: str, *, master_args: Sequence[str] = ()) -> None:
        self.binary = binary
        master_port, replica_port = free_port(), free_port()
        self.master = EmbeddedRedis(binary=binary, port=master_port, extra_args=[*DATA_NODE_ARGS, *master_args])
        """The first master (after :meth:`kill_master`, gone)."""
        self.replica = EmbeddedRedis(
            binary=binary, port=replica_port, extra_args=[*DATA_NODE_ARGS, "--replicaof", "127.0.0.1", str(master_port)]
        )
        """The replica (after a failover, the master)."""
        self.sentinels = [_SentinelProcess(binary, master_port) for _ in range(3)]

    # -- URLs ---------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The ``redis+sentinel://`` URL of the set (db 0)."""
        hosts = ",".join(f"{s.host}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}/0"

    @property
    def nodes(self) -> list[EmbeddedRedis]:
        """The data nodes, master first."""
        return [self.master, self.replica]

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, timeout_s: float = 30.0) -> None:
        """Start the nodes, then the Sentinels; return once the replica is in sync and the Sentinels agree."""
        try:
            self.master.start()
            self.replica.start()
            self._wait(self._replica_in_sync, timeout_s, "the replica to sync with the master")
            for sentinel in self.sentinels:
                sentinel.start()
            self._wait(self._quorum, timeout_s, "every Sentinel to see the replica and reach quorum")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the Sentinels and the nodes (idempotent)."""
        for server in [*self.sentinels, *self.nodes]:
            server.stop()

    def kill_master(self) -> None:
        """SIGKILL the master (its files stay until :meth:`stop`)."""
        self.master.kill()

    def wait_failover(self, timeout_s: float = 30.0) -> None:
        """Wait until the replica is the master and every Sentinel says so."""
        self._wait(self._failed_over, timeout_s, "the Sentinels to promote the replica")

    def switch_over(self, timeout_s: float = 30.0, *, demoted: bool = False) -> None:
        """A planned failover (``SENTINEL FAILOVER``), the master alive.

        Returns once the replica is the master and every Sentinel names it; with ``demoted``, once
        the old master follows it too (the Sentinels reconfigure it about 8 s later: until then it
        is a master with no replica, which ``min-replicas-to-write`` keeps from taking writes).
        """
        reply = _call(self.sentinels[0], "SENTINEL", "FAILOVER", MASTER_NAME)
        if isinstance(reply, Exception):
            raise AssertionError(f"SENTINEL FAILOVER refused: {reply}")
        if demoted:
            self._wait(self._switched, timeout_s, "the old master to follow the new one")
        else:
            self._wait(self._failed_over, timeout_s, "the Sentinels to promote the replica")

    # -- probes -------------------------------------------------------------------------------
    def _wait(self, ready: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}:\n{self.log_tails()}")
            time.sleep(_POLL_S)

    def _replica_in_sync(self) -> bool:
        info = _info(self.replica, "replication")
        return info.get("master_link_status") == "up"

    def _quorum(self) -> bool:
        for sentinel in self.sentinels:
            replies = _call(sentinel, "SENTINEL", "REPLICAS", MASTER_NAME)
            if not isinstance(replies, list) or not any(_replica_ok(fields, self.replica.port) for fields in replies):
                return False
            master = _pairs(_call(sentinel, "SENTINEL", "MASTER", MASTER_NAME))
            if int(master.get("num-other-sentinels", "0")) < len(self.sentinels) - 1:
                return False
            if not str(_call(sentinel, "SENTINEL", "CKQUORUM", MASTER_NAME)).startswith("OK"):
                return False
        return True

    def _failed_over(self) -> bool:
        if _info(self.replica, "replication").get("role") != "master":
            return False
        for sentinel in self.sentinels:
            address = _call(sentinel, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
            if not isinstance(address, list) or int(address[1]) != self.replica.port:
                return False
        return True

    def _switched(self) -> bool:
        info = _info(self.master, "replication")
        return self._failed_over() and info.get("role") == "slave" and info.get("master_link_status") == "up"

    def log_tails(self, lines: int = 15) -> str:
        """The end of every process's log, for a failure message."""
        out = []
        for name, server in [("master", self.master), ("replica", self.replica)] + [
            (f"sentinel {i + 1}", s) for i, s in enumerate(self.sentinels)
        ]:
            out.append(f"--- {name} ({server.port})\n{server.log_tail(lines)}")
        return "\n".join(out)


def _call(server: EmbeddedRedis, *command: str) -> object:
    """One command on a fresh connection, decoded; the error itself when it fails (for probes)."""
    client = redis_sync.Redis(host=server.host, port=server.port, socket_timeout=2, decode_responses=True)
    try:
        return client.execute_command(*command)  # type: ignore[no-untyped-call]
    except redis_sync.RedisError as exc:
        return exc
    finally:
        client.close()


def _info(server: EmbeddedRedis, section: str) -> dict[str, str]:
    reply = _call(server, "INFO", section)
    return {k: str(v) for k, v in reply.items()} if isinstance(reply, dict) else {}


def _pairs(reply: object) -> dict[str, str]:
    """A Sentinel's flat ``[name, value, ...]`` reply (or redis-py's dict of it) as a dict."""
    if isinstance(reply, dict):
        return {str(k): str(v) for k, v in reply.items()}
    if isinstance(reply, list):
        return {str(reply[i]): str(reply[i + 1]) for i in range(0, len(reply) - 1, 2)}
    return {}


def _replica_ok(fields: object, port: int) -> bool:
    replica = _pairs(fields)
    flags = replica.get("flags", "").split(",")
    return replica.get("port") == str(port) and "s_down" not in flags and replica.get("master-link-status") == "ok"
